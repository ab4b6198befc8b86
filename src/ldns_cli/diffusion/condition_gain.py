"""A per-neuron firing-rate gain driven by the trial conditions of a conditional model.

Why: a condition can shape spiking in a way the autoencoder's latents never carry. On `ldns
simulate network` the stimulus direction tunes 40% of the excitatory cells' input for half of
each trial; the tuning is worth about 0.01 bits/spike against 0.3-0.4 for the network's shared
fluctuations, so a per-bin likelihood never spends a latent on it, and Poisson draws of the
autoencoder's rates of held-out trials decode the angle about 4x worse than the trials themselves
(no latent size, training length or smoothness weight changed that: `python
bench/quality_ae_conditions.py`). Latents the denoiser samples for a condition cannot carry what
the autoencoder never put there. A conditional model knows each trial's condition, so it can add
the tuning after decoding:

    log λ_{b,t,n} = log r_{b,t,n} + Σ_{k,f} W_{k,f,n} φ_k(t) x_{b,f}

with r the decoded rates, φ_k Gaussian bumps in time since the trial's first bin (centres every
`spacing_bins` bins, σ = `spacing_bins`) and x_b the trial's condition embedding (circular:
cos/sin; continuous: z-scored with the training statistics; categorical: one-hot). W is a
ridge-penalised Poisson regression on the training trials with the decoded rates as offset; its
time resolution and ridge are chosen by held-out likelihood, and it is kept only when it explains
the validation spikes beyond their noise (`fit/condition_gain.py`). Where the latents already
carry the condition the gain comes out near zero: not kept, or kept at a size that changes
nothing measurable.

Bins past the last bump centre (samples longer than any training trial) fade to no gain. Time
series conditions are left to the latents (the gain reads one value per trial). Sampling without
a condition (the unconditional path of a conditional model) applies no gain.

Checkpoint: tensor `condition_gain.weight` `[K, F, N]` beside the denoiser's weights, with its
settings and figures in the checkpoint's `condition_gain` record.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ldns_cli.conditions.spec import embed_condition_values, fit_condition_values

PREFIX = "condition_gain"
# |log gain| at most this (a 20-fold rate change): a continuous condition far outside the
# training range would otherwise extrapolate the linear read-out into exploding rates (the
# fitted gains of `ldns simulate network`'s tuning stay within ±1)
MAX_LOG_GAIN = 3.0
TRIAL_KINDS = ("circular", "continuous", "categorical")  # kinds with one value per trial


def gain_conditions(specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The condition specs a gain can read: one value per trial (categorical ones need their
    categories)."""
    return [
        s
        for s in specs
        if s["kind"] in TRIAL_KINDS and (s["kind"] != "categorical" or s.get("values"))
    ]


def embed_for_gain(spec: Mapping[str, Any], values: np.ndarray) -> np.ndarray:
    """One condition's values -> gain features `[B, F]` float64 (categorical: one-hot)."""
    x = embed_condition_values(spec, values)
    if spec["kind"] == "categorical":
        return np.eye(len(spec["values"]))[x]  # [B, K] one-hot
    return np.asarray(x, dtype=np.float64).reshape(len(x), -1)


def feature_count(spec: Mapping[str, Any]) -> int:
    """Gain features of one condition: 2 per circular dimension, 1 per continuous dimension, one
    per category."""
    if spec["kind"] == "categorical":
        return len(spec["values"])
    return int(spec.get("dim", 1)) * (2 if spec["kind"] == "circular" else 1)


def gain_features(
    specs: Sequence[Mapping[str, Any]], values: Mapping[str, np.ndarray]
) -> np.ndarray:
    """The trials' gain features `[B, F]`, the conditions' features side by side."""
    return np.concatenate([embed_for_gain(s, values[s["name"]]) for s in specs], axis=1)


def time_basis(n_bins: int, spacing_bins: float, n_basis: int) -> np.ndarray:
    """Gaussian bumps `[L, K]`: centre k at k·spacing_bins, σ = spacing_bins."""
    t = np.arange(n_bins, dtype=np.float64)[:, None]  # [L, 1]
    centres = spacing_bins * np.arange(n_basis, dtype=np.float64)[None, :]  # [1, K]
    return np.exp(-0.5 * ((t - centres) / spacing_bins) ** 2)


def basis_size(longest_bins: int, spacing_bins: float) -> int:
    """Bumps needed to cover trials of up to `longest_bins` bins (one past the last bin)."""
    return int(np.ceil((longest_bins - 1) / spacing_bins)) + 1


@dataclass(frozen=True)
class ConditionGain:
    """The fitted gain (see the module docstring): the specs it reads, its bumps and weights."""

    specs: tuple[dict[str, Any], ...]  # the conditions read, in feature order
    spacing_bins: float
    weight: np.ndarray  # [K, F, N] float32

    @property
    def n_basis(self) -> int:
        return int(self.weight.shape[0])

    @property
    def names(self) -> list[str]:
        return [str(s["name"]) for s in self.specs]

    def features(self, conditions: Mapping[str, np.ndarray]) -> np.ndarray | None:
        """The trials' features `[B, F]`, or None when a condition the gain reads is absent."""
        if not all(name in conditions for name in self.names):
            return None
        return gain_features(self.specs, conditions)

    def log_gain(self, conditions: Mapping[str, np.ndarray], n_bins: int) -> np.ndarray | None:
        """log of the rate factor `[B, L, N]` for trials of `n_bins` bins (None: see features)."""
        x = self.features(conditions)  # [B, F]
        if x is None:
            return None
        phi = time_basis(n_bins, self.spacing_bins, self.n_basis)  # [L, K]
        per_trial = np.einsum("bf,kfn->bkn", x, self.weight.astype(np.float64))  # [B, K, N]
        return np.clip(np.einsum("lk,bkn->bln", phi, per_trial), -MAX_LOG_GAIN, MAX_LOG_GAIN)

    def apply(self, rates: torch.Tensor, conditions: Mapping[str, np.ndarray]) -> torch.Tensor:
        """rates `[B, L, N]` -> rates with the gain (unchanged without the conditions)."""
        g = self.log_gain(conditions, rates.shape[1])
        if g is None:
            return rates
        return rates * torch.exp(torch.as_tensor(g, dtype=rates.dtype, device=rates.device))

    def gained_rates(self, rates: np.ndarray, data: Any) -> np.ndarray:
        """The rates `[B, L, N]` of `data`'s trials times the gain of their own conditions, as
        the model samples from them; a trial whose value is missing or unseen in training gets
        no gain (`sample` refuses such values)."""
        values, usable = fit_condition_values(list(self.specs), data)
        log_gain = self.log_gain(values, rates.shape[1])  # [B, L, N]
        assert log_gain is not None  # fit_condition_values returns every condition
        log_gain[~usable] = 0.0
        return (rates * np.exp(log_gain)).astype(np.float32)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f"{PREFIX}.weight": torch.as_tensor(self.weight, dtype=torch.float32)}

    def record(self) -> dict[str, Any]:
        """What the checkpoint's `condition_gain` record needs besides the weights."""
        return {"conditions": self.names, "spacing_bins": float(self.spacing_bins)}


def load_condition_gain(
    tensors: Mapping[str, torch.Tensor], record: Any, specs: list[dict[str, Any]]
) -> ConditionGain | None:
    """The gain stored in a checkpoint, or None (not kept, or fitted before gains existed).

    Raises ValueError when the stored record and weights disagree (a damaged checkpoint)."""
    weight = tensors.get(f"{PREFIX}.weight")
    if weight is None or not isinstance(record, dict) or not record.get("kept"):
        return None
    by_name = {str(s["name"]): s for s in specs}
    read = tuple(by_name[str(name)] for name in record["conditions"])
    spacing = float(record["spacing_bins"])
    w = weight.detach().cpu().numpy().astype(np.float32)
    n_features = sum(feature_count(s) for s in read)
    if w.ndim != 3 or w.shape[1] != n_features or not (spacing > 0) or not np.isfinite(w).all():
        raise ValueError(f"condition gain weights {tuple(w.shape)} do not fit its record")
    return ConditionGain(specs=read, spacing_bins=spacing, weight=w)
