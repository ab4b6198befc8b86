"""Does the unconditional denoiser's step floor change what it generates? Scores by floor.

For each test bed, one autoencoder (with its history model) is fitted with every default, then
one denoiser per floor on it, each as a user would run them:

    ldns simulate NAME ... -o data.h5
    ldns fit-ae data.h5 -m M                                   (once per bed)
    ldns fit-diffusion data.h5 -m M/fFLOOR --config {"min_steps": FLOOR}
    ldns sample -m M/fFLOOR -n <test trials> --length L --seed k      (k = 1..SAMPLE_SEEDS)
    ldns evaluate data.h5 samples --reference-trials test

and reported per floor: each `evaluate` score's mean and range over the sampling seeds, the
best validation loss, the steps trained and the wall time of `fit-diffusion`. A floor is as good
as another when every score's mean lies within the other's range over seeds. `--work DIR` keeps
the model folders; with `--reuse` a bed whose autoencoder is there is not refitted.

    python bench/quality_diffusion_floor.py [--beds reach600 network400] [--floors 2000 1500]
        [--threads 1] [--work DIR] [--reuse]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import log, write_results

SAMPLE_SEEDS = 3
BEDS = {  # name: simulate arguments, trial length
    "reach600": (["reach", "--trials", "600", "--seed", "0"], 140),
    "network400": (
        ["network", "--trials", "400", "--neurons", "100", "--length", "120", "--seed", "0"],
        120,
    ),
}


def ldns(threads: int, *args: str) -> str:
    """One `ldns` command in a fresh process with `threads` torch threads; its stdout."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run([sys.executable, "-m", "ldns_cli", *args], env=env,
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"ldns {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return done.stdout


def test_trials(data: Path) -> int:
    from ldns_cli.io.formats import read_spikes

    return int((read_spikes(data).split == "test").sum())


def floor_run(data: Path, bed: Path, floor: int, length: int, threads: int) -> dict:
    folder = bed / f"f{floor}"
    folder.mkdir(exist_ok=True)
    for name in ("ae.safetensors", "history.safetensors"):
        if (bed / name).exists():
            shutil.copy(bed / name, folder / name)
    config = bed / f"floor{floor}.json"
    config.write_text(json.dumps({"min_steps": floor}))
    t0 = time.perf_counter()
    ldns(threads, "fit-diffusion", str(data), "-m", str(folder), "--seed", "0",
         "--config", str(config), "--force", "-q")  # fmt: skip
    fit_s = time.perf_counter() - t0
    with (folder / "diffusion_training.csv").open() as f:
        rows = list(csv.DictReader(f))
    val_key = "val_denoising_loss_per_latent_bin"
    scores: dict[str, list[float]] = {}
    n_test = test_trials(data)
    for seed in range(1, SAMPLE_SEEDS + 1):
        samples = folder / f"samples{seed}.h5"
        ldns(threads, "sample", "-m", str(folder), "--seed", str(seed), "-n", str(n_test),
             "--length", str(length), "-o", str(samples), "-f", "-q")  # fmt: skip
        payload = ldns(threads, "evaluate", str(data), str(samples), "--reference-trials",
                       "test", "--json", "-q")  # fmt: skip
        for metric, v in json.loads(payload)["metrics"].items():
            if v["score"] is not None:
                scores.setdefault(metric, []).append(float(v["score"]))
    return {
        "fit_diffusion_seconds": round(fit_s, 1),
        "epochs": len(rows),
        "steps": int(rows[-1]["step"]),
        "best_val_loss": min(float(r[val_key]) for r in rows if r.get(val_key)),
        "scores": {
            m: {"mean": float(np.mean(v)), "min": float(np.min(v)), "max": float(np.max(v))}
            for m, v in scores.items()
            if len(v) == SAMPLE_SEEDS
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--beds", nargs="+", default=list(BEDS), choices=list(BEDS))
    parser.add_argument("--floors", nargs="+", type=int, default=[2000, 1500])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--reuse", action="store_true")
    args = parser.parse_args()
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        for name in args.beds:
            sim, length = BEDS[name]
            bed = work / name
            bed.mkdir(parents=True, exist_ok=True)
            data = bed / "data.h5"
            if not data.exists():
                ldns(args.threads, "simulate", *sim, "-o", str(data), "-q")
            if not (args.reuse and (bed / "ae.safetensors").exists()):
                ldns(args.threads, "fit-ae", str(data), "-m", str(bed), "--seed", "0",
                     "--force", "-q")  # fmt: skip
            results[name] = {}
            for floor in args.floors:
                results[name][floor] = run = floor_run(data, bed, floor, length, args.threads)
                worst = max(run["scores"].items(), key=lambda kv: kv[1]["mean"])
                log(f"{name} floor {floor}: {run['steps']} steps, best validation loss "
                    f"{run['best_val_loss']:.4f}, {run['fit_diffusion_seconds']} s; worst mean "
                    f"score {worst[0]} {worst[1]['mean']:.3f}")  # fmt: skip
                log("  " + ", ".join(f"{m} {s['mean']:.3f} ({s['min']:.2f}..{s['max']:.2f})"
                                     for m, s in run["scores"].items()))  # fmt: skip
    write_results("quality_diffusion_floor", {"beds": results, "seeds": SAMPLE_SEEDS})


if __name__ == "__main__":
    main()
