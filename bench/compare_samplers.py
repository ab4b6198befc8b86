"""DPM-Solver++ against 1000-step DDPM over several sampling seeds: metric spread and wall time.

One 100-trial sample set varies from seed to seed by more than `evaluate`'s own fold spread (on
the shipped Lorenz model DPM++ psc KL ranged 0.0014 to 0.0037 over seeds 2-6), so the samplers
are compared on the spread over seeds: for each seed both samplers start from the same noise,
each with its own latent calibration when the model has one, and every metric's model value
(`evaluate` against the held-out test trials) is reported as mean ± sd over seeds, with the
paired per-seed differences and the wall-time ratio of the two samplers.

    python bench/compare_samplers.py --data bench/results/quality_diffusion_work/lorenz.h5 \\
        --models bench/results/quality_diffusion_work/models --seeds 2 3 4

(the data and models `bench/quality_diffusion.py` leaves in its `--work` folder; any recording
with a test split and models fitted on it will do).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import write_results
from ldns_cli.diffusion.sampling import SampleSettings
from ldns_cli.generate import generate
from ldns_cli.io.formats import read_spikes
from ldns_cli.nn.observation import PoissonObservation
from ldns_cli.scoring.evaluation import evaluate
from ldns_cli.store import load_autoencoder, load_diffusion

KEYS = ("psc_kl", "corr_rmse", "mean_isi_rmse_s", "std_isi_rmse_s", "fano_rmse",
        "autocorr_rmse", "psd_log_mse")  # fmt: skip
SAMPLERS = (("dpm++", 20), ("ddpm", 1000))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="recording with a test split")
    ap.add_argument("--models", type=Path, required=True)
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--seeds", type=int, nargs="+", default=[2, 3, 4])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-calibration", action="store_true")
    ap.add_argument("--name", default="compare_samplers")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = read_spikes(args.data)
    test = data.select(data.split == "test")
    ae, ck = load_autoencoder(args.models, "cpu")
    model = load_diffusion(args.models, "cpu", ck)
    lengths = np.full(args.trials, data.n_bins)
    rows: dict[str, list[dict]] = {name: [] for name, _ in SAMPLERS}
    seconds = {name: 0.0 for name, _ in SAMPLERS}
    labels = {}
    for seed in args.seeds:
        for name, steps in SAMPLERS:
            settings = SampleSettings(sampler=name, steps=steps, seed=seed, batch_size=128,
                                      calibrate=not args.no_calibration)  # fmt: skip
            t0 = time.perf_counter()
            s = generate(ae, model, PoissonObservation(), lengths, settings, "cpu")
            seconds[name] += time.perf_counter() - t0
            labels[name] = s.provenance["latent_calibration"]
            m = evaluate(test, s, folds=5, seed=0)["metrics"]
            rows[name].append({k: m[k]["model"]["mean"] for k in KEYS})
            print(seed, name, labels[name], {k: round(v, 5) for k, v in rows[name][-1].items()},
                  flush=True)  # fmt: skip
    summary = {}
    for k in KEYS:
        a, b = (np.array([r[k] for r in rows[name]]) for name, _ in SAMPLERS)
        spread = a.std(ddof=1) + b.std(ddof=1)
        summary[k] = {
            "dpm++": [a.mean(), a.std(ddof=1)],
            "ddpm": [b.mean(), b.std(ddof=1)],
            "within_seed_spread": bool(abs(a.mean() - b.mean()) <= spread),
            "paired_diff": (a - b).tolist(),
        }
        print(f"{k:16s} dpm++ {a.mean():.5f}±{a.std(ddof=1):.5f}  ddpm {b.mean():.5f}±"
              f"{b.std(ddof=1):.5f}  within {summary[k]['within_seed_spread']}  "
              f"paired {np.round(a - b, 5).tolist()}")  # fmt: skip
    ratio = seconds["ddpm"] / seconds["dpm++"]
    print(f"wall-time ratio ddpm/dpm++: {ratio:.1f}x")
    results = {"args": {k: str(v) for k, v in vars(args).items()}, "calibration": labels,
               "rows": rows, "summary": summary, "seconds": seconds, "speed_ratio": ratio}  # fmt: skip
    print("wrote", write_results(args.name, results))


if __name__ == "__main__":
    main()
