"""`make bench`: run every benchmark script, then collect their JSON into one summary.

Each `bench/bench_*.py` writes `bench/results/<name>.json` (see `common.write_results`). This
runner executes them one after another in fresh processes (so peak-memory figures are their own),
with `--quick` shapes unless `--full` is given, and writes `bench/results/summary.json` plus a
plain-text table. Quality scripts (`quality_*.py`) take minutes to tens of minutes and are run
separately; their latest JSON is included in the summary if present.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
RESULTS = HERE / "results"
SPEED = ["bench_io", "bench_s4", "bench_samplers", "bench_evaluate", "bench_pipeline"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="paper-size shapes (slow)")
    parser.add_argument("--only", nargs="*", help="subset of benchmark names")
    args = parser.parse_args()
    names = args.only or SPEED
    RESULTS.mkdir(parents=True, exist_ok=True)
    status: dict[str, dict] = {}
    for name in names:
        script = HERE / f"{name}.py"
        if not script.exists():
            status[name] = {"status": "missing"}
            continue
        quick = not args.full and "--quick" in script.read_text()
        cmd = [sys.executable, str(script)] + (["--quick"] if quick else [])
        print(f"== {name}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=HERE.parent)
        status[name] = {
            "status": "ok" if proc.returncode == 0 else f"failed ({proc.returncode})",
            "wall_s": round(time.perf_counter() - t0, 2),
        }
    summary = {"runs": status, "results": {}}
    for path in sorted(RESULTS.glob("*.json")):
        if path.name == "summary.json":
            continue
        summary["results"][path.stem] = json.loads(path.read_text())
    out = RESULTS / "summary.json"
    out.write_text(json.dumps(summary, indent=2))
    print(f"\n{'benchmark':<22} {'status':<14} wall_s")
    for name, st in status.items():
        print(f"{name:<22} {st['status']:<14} {st.get('wall_s', '')}")
    print(f"\nresults: {out}")
    return 0 if all(s["status"] in ("ok",) for s in status.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
