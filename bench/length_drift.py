"""Latent spread of samples at lengths beyond training (shipped Lorenz model, 256-bin training).

Prints the std of the sampled normalised latents (1.0 = the training distribution) for 256, 1024
and 4096 bins with DPM-Solver++ 20 and DDIM 50.

    python bench/length_drift.py     # ~1 min on 2 cores
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ldns_cli.autoencoder import load_autoencoder
from ldns_cli.diffusion import load_diffusion
from ldns_cli.generate import SampleSettings, sample_latents

MODELS = Path(__file__).parents[1] / "models" / "lorenz"


def main() -> None:
    torch.set_num_threads(2)
    _, ae_ckpt = load_autoencoder(MODELS, "cpu")
    model = load_diffusion(MODELS, "cpu", ae_ckpt)
    for n_bins in (256, 1024, 4096):
        n_trials = 4 if n_bins == 4096 else 16
        for sampler, steps in (("dpm++", 20), ("ddim", 50)):
            settings = SampleSettings(sampler=sampler, steps=steps, seed=3)
            z, _ = sample_latents(model, np.full(n_trials, n_bins), None, settings, "cpu")
            per_trial = z.std(dim=(1, 2)).numpy().round(2)  # [B]
            print(
                f"L={n_bins:5d} {sampler:5s} {steps:3d} steps: latent std {z.std().item():.3f}"
                f" (per trial {per_trial[:4]})",
                flush=True,
            )


if __name__ == "__main__":
    main()
