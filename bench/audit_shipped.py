"""`ldns audit` of the SHIPPED models against the recordings `make models` trained them on.

- reach (models/): `ldns simulate reach --seed 0` (train/val used for fitting, test held out);
  1000 samples conditioned on the held-out trials' angles (5 per test trial), so samples and
  held-out trials share one condition distribution (conditioning on the training trials' own
  angles would put samples next to training trials by design);
- Lorenz (models/lorenz/): `ldns simulate lorenz --trials 1000 --seed 0 --no-truth`, 1000
  unconditional samples of 256 bins.

Every step is an `ldns` command (logged); the audit's JSON goes to bench/results/audit_shipped.json.

    python bench/audit_shipped.py        # ~3 min on 2 cores
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from audit_common import LDNS, audit_json, print_verdict, summary
from common import log, run, write_results

ROOT = Path(__file__).parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=Path("bench/results/audit_shipped_work"))
    args = ap.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {}

    reach, reach_samples = work / "reach.h5", work / "reach_samples.h5"
    if not reach_samples.exists():  # simulating and sampling are deterministic: kept
        run([*LDNS, "simulate", "reach", "--seed", "0", "-o", str(reach), "--force", "-q"])
        run(
            [*LDNS, "sample", "-m", str(ROOT / "models"), "--condition-from", str(reach),
             "--trials", "test", "--per-condition", "5", "--seed", "1", "--device", "cpu",
             "-o", str(reach_samples), "--force", "-q"]
        )  # fmt: skip
    payload, wall = audit_json(
        [str(reach), str(reach), str(reach_samples), "-m", str(ROOT / "models"),
         "--device", "cpu", "--report", str(work / "reach_report"), "--force"]
    )  # fmt: skip
    results["reach"] = {"wall_s": wall, **summary(payload)}
    print_verdict(payload)

    lorenz, lorenz_samples = work / "lorenz.h5", work / "lorenz_samples.h5"
    if not lorenz_samples.exists():
        run(
            [*LDNS, "simulate", "lorenz", "--trials", "1000", "--seed", "0", "--no-truth",
             "-o", str(lorenz), "--force", "-q"]
        )  # fmt: skip
        run(
            [*LDNS, "sample", "-m", str(ROOT / "models" / "lorenz"), "-n", "1000", "--length",
             "256", "--seed", "1", "--device", "cpu", "-o", str(lorenz_samples), "--force", "-q"]
        )  # fmt: skip
    payload, wall = audit_json(
        [str(lorenz), str(lorenz), str(lorenz_samples), "-m", str(ROOT / "models" / "lorenz"),
         "--device", "cpu", "--report", str(work / "lorenz_report"), "--force"]
    )  # fmt: skip
    results["lorenz"] = {"wall_s": wall, **summary(payload)}
    print_verdict(payload)
    log(f"wrote {write_results('audit_shipped', results)}")


if __name__ == "__main__":
    main()
