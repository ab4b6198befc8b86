"""Training and validation trials: one rule for every fitted stage.

The file's split labels win when it has them (test trials are never used for fitting); without
validation labels, a seeded random fraction of the training candidates is held out. The
autoencoder, the spike-history model and the denoiser all split with this function, so with the
same seed they validate on the same trials.
"""

from __future__ import annotations

import numpy as np

from ldns_cli.core.data import SpikeData


def split_masks(data: SpikeData, val_frac: float, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """(train, val, description): bool masks `[B]` and how they were chosen.

    The file's train/val labels if it has both; with train labels only, validation is carved
    out of the training trials; without labels, out of all trials. `val` is empty when
    `val_frac` is 0 or there is a single candidate.
    """
    if data.split is not None and np.any(data.split == "train"):
        train = data.split == "train"
        if np.any(data.split == "val"):
            return train, data.split == "val", "the file's train/val split"
        where = "the file's train split"
    else:
        train = np.ones(data.n_trials, bool)
        where = "all trials"
    candidates = np.flatnonzero(train)
    n = len(candidates)
    n_val = min(n - 1, max(1, round(val_frac * n))) if val_frac > 0 and n >= 2 else 0
    val = np.zeros(data.n_trials, bool)
    if n_val == 0:
        return train, val, f"{where}, no validation"
    order = np.random.default_rng(seed).permutation(n)
    val[candidates[order[:n_val]]] = True
    return train & ~val, val, f"{where}, random {n_val}/{n} for validation"


def split_train_val(
    data: SpikeData, val_frac: float, seed: int
) -> tuple[SpikeData, SpikeData | None, str]:
    """`split_masks` applied: (train trials, validation trials or None, description)."""
    train, val, description = split_masks(data, val_frac, seed)
    return data.select(train), (data.select(val) if val.any() else None), description
