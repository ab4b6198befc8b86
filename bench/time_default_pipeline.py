"""Wall time of the default pipeline on 600 simulated reach trials (the 5-minute goal).

`ldns simulate reach --trials 600 --seed 0`, then `ldns fit-ae`, `ldns fit-diffusion` and
`ldns sample` with every default (`--seed 0`), each a fresh process with OMP_NUM_THREADS set.
With --baseline (the `src` folder of another checkout) the two trees alternate, A B A B, so both
see the same machine; the models and samples of the two are compared tensor by tensor.

Usage: python bench/time_default_pipeline.py [--baseline OTHER/src] [--repeats 1] [--threads 2]
Prints each stage's seconds and the median total per tree; writes
bench/results/default_pipeline.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from common import log, write_results  # noqa: E402

STAGES = ("fit-ae", "fit-diffusion", "sample")
MODEL_FILES = ("ae.safetensors", "history.safetensors", "diffusion.safetensors")


def ldns(src: Path, threads: int, *args: str) -> float:
    """Seconds one `ldns` command takes in a fresh process on the package under `src`."""
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": str(threads)}
    code = "from ldns_cli.cli import main; main()"
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, *args], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    seconds = time.perf_counter() - t0
    if done.returncode != 0:  # say why: a bench that only says "exit 1" wastes the next run
        raise SystemExit(f"ldns {args[0]} on {src} failed:\n{done.stderr[-2000:]}")
    return seconds


def pipeline(src: Path, data: Path, models: Path, threads: int) -> dict[str, float]:
    seconds = {
        "fit-ae": ldns(src, threads, "fit-ae", str(data), "-m", str(models), "--seed", "0"),
        "fit-diffusion": ldns(
            src, threads, "fit-diffusion", str(data), "-m", str(models), "--seed", "0"
        ),
        "sample": ldns(
            src, threads, "sample", "-m", str(models), "--seed", "0", "-o", str(models / "out.nwb")
        ),
    }
    seconds["total"] = sum(seconds[s] for s in STAGES)
    return seconds


def same_outputs(a: Path, b: Path) -> dict[str, bool]:
    """Whether two model folders hold equal tensors and equal sampled counts."""
    from safetensors.numpy import load_file

    from ldns_cli.io.formats import read_spikes

    same = {}
    for name in MODEL_FILES:
        ta, tb = load_file(a / name), load_file(b / name)
        same[name] = ta.keys() == tb.keys() and all(np.array_equal(ta[k], tb[k]) for k in ta)
    counts_a = read_spikes(str(a / "out.nwb")).counts
    same["samples"] = bool(np.array_equal(counts_a, read_spikes(str(b / "out.nwb")).counts))
    return same


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, help="src folder of another checkout")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    trees = {"this": HERE.parent / "src"}
    if args.baseline is not None:
        trees["baseline"] = args.baseline.resolve()
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "reach600.nwb"
        ldns(trees["this"], args.threads, "simulate", "reach", "--trials", "600", "--seed", "0",
             "-o", str(data))  # fmt: skip
        for k in range(args.repeats):
            for name, src in trees.items():
                models = Path(tmp) / f"{name}{k}"
                runs[name].append(pipeline(src, data, models, args.threads))
                stages = ", ".join(f"{s} {v:.1f} s" for s, v in runs[name][-1].items())
                log(f"{name} run {k + 1}: {stages}")
        same = same_outputs(Path(tmp) / "this0", Path(tmp) / "baseline0") if len(trees) > 1 else {}
    medians = {name: statistics.median(r["total"] for r in rs) for name, rs in runs.items()}
    for name, total in medians.items():
        log(f"{name}: median total {total:.1f} s over {len(runs[name])} run(s)")
    if same:
        log(f"the same outputs as the baseline: {same}")
    write_results(
        "default_pipeline",
        {"threads": args.threads, "runs": runs, "median_total_s": medians, "same_outputs": same},
    )


if __name__ == "__main__":
    main()
