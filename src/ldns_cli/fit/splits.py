"""Latent diffusion training: the latent dataset, the loss, and the `diffusion` checkpoint.

The frozen autoencoder encodes every trial once (`autoencoder.infer`); each latent channel is
normalised with the masked mean/std of the *training* trials' valid bins (reused for validation and
stored in the checkpoint, since sampling must de-normalise with exactly these numbers). The
denoiser is then trained by the generic loop in `train.py` with `make_loss_fn`: t ~ U{0..T-1},
x_t = √ᾱ x_0 + √(1-ᾱ) ε, a masked MSE or smooth-L1 between the network output and ε (or v), and,
for conditional models, all conditions of a trial dropped with probability `cond_dropout` so the
same network also learns the unconditional path (classifier-free guidance).

Checkpoint `models/diffusion.safetensors` (kind "diffusion"): tensors `model.*` are the EMA
weights (used for sampling), `raw.*` the raw weights plus optimiser state for `--resume`;
metadata: the `DiffusionConfig`, the fingerprint of the AE it belongs to (`ae_id`, a hash of the
AE's weights, plus the data fingerprint), normalisation stats and the condition specs.
"""

from __future__ import annotations

import numpy as np

from ldns_cli.core.data import SpikeData


def split_masks(data: SpikeData, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) bool `[B]`: the file's train/val labels (test trials are never used); with
    no val labels a seeded random `val_fraction` of the candidates (as `fit-ae` does)."""
    if data.split is not None and np.any(data.split == "train"):
        train = data.split == "train"
        if np.any(data.split == "val"):
            return train, data.split == "val"
    else:
        train = np.ones(data.n_trials, bool)
    candidates = np.flatnonzero(train)
    n = len(candidates)
    n_val = min(n - 1, max(1, round(val_fraction * n))) if val_fraction > 0 and n >= 2 else 0
    order = np.random.default_rng(seed).permutation(n)
    val = np.zeros(data.n_trials, bool)
    val[candidates[order[:n_val]]] = True
    return train & ~val, val


def split_train_val(
    data: SpikeData, val_frac: float, seed: int
) -> tuple[SpikeData, SpikeData | None, str]:
    """Training and validation trials: the file's split labels if any (test never used for
    training), else a seeded random fraction. Returns (train, val or None, description)."""
    if data.split is not None and np.any(data.split == "train"):
        train = data.select(data.split == "train")
        if np.any(data.split == "val"):
            return train, data.select(data.split == "val"), "the file's train/val split"
        data = train  # no val labels: carve validation out of the training trials
        where = "the file's train split"
    else:
        where = "all trials"
    n = data.n_trials
    n_val = min(n - 1, max(1, round(val_frac * n))) if val_frac > 0 and n >= 2 else 0
    if n_val == 0:
        return data, None, f"{where}, no validation"
    order = np.random.default_rng(seed).permutation(n)
    val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
    desc = f"{where}, random {n_val}/{n} for validation"
    return data.select(train_idx), data.select(val_idx), desc
