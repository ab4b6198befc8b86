"""Wall time of `ldns audit` for 1000 training x 1000 held-out x 1000 sample trials (reach:
128 neurons, 140 bins of 5 ms), without a model and with the shipped reach model (-m models),
as the commands a user runs (imports and file reading included). Target: <= 60 s on 2 cores.

The box is shared, so the load average at the start of each run is recorded with it.

    OMP_NUM_THREADS=2 python bench/audit_runtime.py
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from audit_common import LDNS, audit_json
from common import log, run, write_results

ROOT = Path(__file__).parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=Path("bench/results/audit_runtime_work"))
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    rec, samples = work / "recording.h5", work / "samples.h5"
    # the samples are another session of the same simulator: only the time is measured here
    run([*LDNS, "simulate", "reach", "--trials", "2000", "--seed", "3", "-o", str(rec), "--force",
         "-q"])  # fmt: skip
    run([*LDNS, "simulate", "reach", "--trials", "1000", "--seed", "4", "-o", str(samples),
         "--force", "-q"])  # fmt: skip
    base = [str(rec), str(rec), str(samples), "--train-trials", "0:1000", "--heldout-trials",
            "1000:2000", "--device", "cpu", "-q"]  # fmt: skip
    results: dict = {}
    for name, extra in (("no_model", []), ("with_model", ["-m", str(ROOT / "models")])):
        times, loads = [], []
        for _ in range(args.repeats):
            loads.append(os.getloadavg()[0])
            _, wall = audit_json([*base, *extra])
            times.append(wall)
        results[name] = {"wall_s": times, "load_avg_1min_at_start": loads}
        log(f"{name}: {', '.join(f'{t:.1f} s' for t in times)} (load {loads})")
    log(f"wrote {write_results('audit_runtime', results)}")


if __name__ == "__main__":
    main()
