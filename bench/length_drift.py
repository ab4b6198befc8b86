"""Latent spread of samples at lengths beyond training (shipped Lorenz model, 256-bin training).

Prints the std of the sampled normalised latents (1.0 = the training distribution) for 256, 1024
and 4096 bins with DPM-Solver++ 20 and DDIM 50, for the model's own S4 kernel reach (capped at the
longest training trial, `fit-diffusion --kernel-bins -1`) and for global kernels (the paper's,
`--kernel-bins 0`; same weights, only the kernels' reach differs beyond the training length).

    python bench/length_drift.py     # ~2 min on 2 cores
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ldns_cli.diffusion.sampling import SampleSettings, sample_latents
from ldns_cli.nn.s4 import S4Layer
from ldns_cli.store import load_autoencoder, load_diffusion

MODELS = Path(__file__).parents[1] / "models" / "lorenz"


def main() -> None:
    torch.set_num_threads(2)
    _, ae_ckpt = load_autoencoder(MODELS, "cpu")
    model = load_diffusion(MODELS, "cpu", ae_ckpt)
    layers = [m for m in model.denoiser.modules() if isinstance(m, S4Layer)]
    own = model.denoiser.config.kernel_bins or None
    for label, reach in ((f"kernels capped at {own}", own), ("global kernels", None)):
        for layer in layers:
            layer.max_kernel_bins = reach
        for n_bins in (256, 1024, 4096):
            n_trials = 4 if n_bins == 4096 else 16
            for sampler, steps in (("dpm++", 20), ("ddim", 50)):
                settings = SampleSettings(sampler=sampler, steps=steps, seed=3)
                z, _ = sample_latents(model, np.full(n_trials, n_bins), None, settings, "cpu")
                per_trial = z.std(dim=(1, 2)).numpy().round(2)  # [B]
                print(
                    f"{label}: L={n_bins:5d} {sampler:5s} {steps:3d} steps: latent std "
                    f"{z.std().item():.3f} (per trial {per_trial[:4]})",
                    flush=True,
                )


if __name__ == "__main__":
    main()
