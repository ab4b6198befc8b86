"""Latent size by co-smoothing (`fit-ae --latent-dim auto`): recovery and run-to-run spread.

1. Recovery: the size chosen on simulated recordings whose latent dimension is known (Lorenz: 3;
   reach: 6 latent channels), with the default autoencoder settings; bar: within ±2.
2. Spread: the co-smoothing score of 2 latents and of the true size, each fitted with
   SPREAD_SEEDS seeds, with the search's short fits (`fit.latent_size.SEARCH_STEPS`) and with
   the longer refits (x `LONG_FIT_FACTOR`) the search falls back on when short fits disagree:
   can fits of that length tell the sizes apart?

    python bench/quality_latent_size.py [--beds lorenz,reach,reach-refractory] [--no-spread]

`--no-spread` runs part 1 only.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))

from common import log, write_results
from ldns_cli.core.console import set_quiet
from ldns_cli.fit.autoencoder import ae_loss, resolve_ae_configs, tensors_from_data
from ldns_cli.fit.latent_size import (
    LONG_FIT_FACTOR,
    SEARCH_STEPS,
    choose_latent_dim,
    cosmoothing_per_trial,
)
from ldns_cli.fit.splits import split_train_val
from ldns_cli.fit.trainer import fit
from ldns_cli.io.simulate import simulate_lorenz, simulate_reach
from ldns_cli.nn.autoencoder import Autoencoder

BEDS = {
    "lorenz": (3, lambda: simulate_lorenz(400, 64, 128, seed=0)),
    "reach": (6, lambda: simulate_reach(600, 96, 140, seed=0)),
    # every unit refractory: the short fits' scores spread a fifth of their size
    "reach-refractory": (6, lambda: simulate_reach(600, 64, 140, seed=0, history="refractory")),
}
SPREAD_SEEDS = 3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--beds", default=",".join(BEDS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-spread", action="store_true", help="the choice only, not the spread")
    args = ap.parse_args()
    set_quiet(True)
    torch.set_num_threads(args.threads)
    results: dict = {}
    names = args.beds.split(",")
    tag = "quality_latent_size" + ("" if names == list(BEDS) else "_" + "_".join(names))
    for name in names:
        truth, make = BEDS[name]
        data = make()
        ae_cfg, train_cfg = resolve_ae_configs(None, None, {}, data.n_neurons)
        train, val, _ = split_train_val(data, 0.1, 0)
        train_t = tensors_from_data(train)
        t0 = time.perf_counter()
        z, record, _ = choose_latent_dim(ae_cfg, train_cfg, train_t, val, ae_loss, "cpu")
        seconds = time.perf_counter() - t0
        log(f"{name}: true {truth}, chosen {z} ({seconds:.0f} s); curve " + ", ".join(
            f"{p['latent_dim']}: {p['cobps']:.4f}" for p in record["curve"])
            + ("; refitted longer" if "long_fits" in record else ""))  # fmt: skip
        # run-to-run spread of fits of 2 latents and of the true size, short and long
        mean_rate = train_t["counts"].sum(dim=(0, 1)) / train_t["mask"].sum()
        spread: dict = {}
        for steps in () if args.no_spread else (SEARCH_STEPS, SEARCH_STEPS * LONG_FIT_FACTOR):
            for size in (2, truth):
                scores = []
                for seed in range(SPREAD_SEEDS):
                    cfg = dataclasses.replace(ae_cfg, latent_dim=size)
                    model = Autoencoder(cfg, torch.Generator().manual_seed(seed))
                    model.init_rate_bias(mean_rate)
                    tcfg = dataclasses.replace(train_cfg, epochs=1, min_steps=steps, seed=seed)
                    result = fit(model, train_t, None, ae_loss, tcfg, device="cpu")
                    gain, n_spikes = cosmoothing_per_trial(
                        result.model, val, mean_rate.numpy().astype(np.float64), "cpu"
                    )
                    scores.append(float(gain.sum() / (math.log(2) * n_spikes)))
                rel_sd = float(np.std(scores, ddof=1) / abs(np.mean(scores)))
                spread[f"z{size}_{steps}steps"] = {"scores": scores, "rel_sd": rel_sd}
                log(f"{name}: Z={size}, {steps} steps, {SPREAD_SEEDS} seeds "
                    f"{np.round(scores, 4).tolist()}, sd {100 * rel_sd:.1f}% of the mean")  # fmt: skip
        results[name] = {
            "true_dim": truth, "chosen": z, "search_s": seconds, "search": record,
            "spread": spread, "within_2": abs(z - truth) <= 2,
        }  # fmt: skip
        write_results(tag, results)


if __name__ == "__main__":
    main()
