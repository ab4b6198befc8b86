"""Latent size by co-smoothing (`fit-ae --latent-dim auto`): recovery and run-to-run spread.

1. Recovery: the size chosen on simulated recordings whose latent dimension is known (Lorenz: 3;
   reach: 6 latent channels), with the default autoencoder settings; bar: within ±2.
2. Spread: the co-smoothing score of one size fitted with four seeds (the short search fits'
   own noise, which sets `fit.latent_size.RELATIVE_TOLERANCE`).

    python bench/quality_latent_size.py > bench/results/quality_latent_size.log 2>&1
"""

from __future__ import annotations

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
from ldns_cli.fit.latent_size import SEARCH_STEPS, choose_latent_dim, cosmoothing_per_trial
from ldns_cli.fit.splits import split_train_val
from ldns_cli.fit.trainer import fit
from ldns_cli.io.simulate import simulate_lorenz, simulate_reach
from ldns_cli.nn.autoencoder import Autoencoder

BEDS = {
    "lorenz": (3, lambda: simulate_lorenz(400, 64, 128, seed=0)),
    "reach": (6, lambda: simulate_reach(600, 96, 140, seed=0)),
}


def main() -> None:
    set_quiet(True)
    torch.set_num_threads(2)
    results: dict = {}
    for name, (truth, make) in BEDS.items():
        data = make()
        ae_cfg, train_cfg = resolve_ae_configs(None, None, {}, data.n_neurons)
        train, val, _ = split_train_val(data, 0.1, 0)
        train_t = tensors_from_data(train)
        t0 = time.perf_counter()
        z, record = choose_latent_dim(ae_cfg, train_cfg, train_t, val, ae_loss, "cpu")
        seconds = time.perf_counter() - t0
        log(f"{name}: true {truth}, chosen {z} ({seconds:.0f} s); curve " + ", ".join(
            f"{p['latent_dim']}: {p['cobps']:.4f}" for p in record["curve"]))  # fmt: skip
        # run-to-run spread of one size's short fit
        mean_rate = train_t["counts"].sum(dim=(0, 1)) / train_t["mask"].sum()
        scores = []
        for seed in range(4):
            cfg = dataclasses.replace(ae_cfg, latent_dim=8)
            model = Autoencoder(cfg, torch.Generator().manual_seed(seed))
            model.init_rate_bias(mean_rate)
            tcfg = dataclasses.replace(train_cfg, epochs=1, min_steps=SEARCH_STEPS, seed=seed)
            result = fit(model, train_t, None, ae_loss, tcfg, device="cpu")
            gain, n_spikes = cosmoothing_per_trial(
                result.model, val, mean_rate.numpy().astype(np.float64), "cpu"
            )
            scores.append(float(gain.sum() / (math.log(2) * n_spikes)))
        rel_sd = float(np.std(scores, ddof=1) / np.mean(scores))
        log(f"{name}: Z=8 over 4 seeds {np.round(scores, 4).tolist()}, sd {100 * rel_sd:.2f}%")
        results[name] = {
            "true_dim": truth, "chosen": z, "search_s": seconds, "curve": record["curve"],
            "spread_scores": scores, "spread_rel_sd": rel_sd, "within_2": abs(z - truth) <= 2,
        }  # fmt: skip
        write_results("quality_latent_size", results)


if __name__ == "__main__":
    main()
