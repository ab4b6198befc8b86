"""Fit the condition gain of a conditional model (`diffusion/condition_gain.py`).

A Poisson regression per neuron with the autoencoder's rates as offset, solved by Newton's method
(the weights of one neuron are a few dozen numbers; its Hessian is built from the bumps' and
features' outer products, so no `[B, L, K·F]` design is ever formed). Its settings are chosen on
the validation trials:

- time resolution `GAIN_SPACINGS_S` (bump spacing) and ridge `GAIN_RIDGES` (a Gaussian prior on
  each weight with variance 1/(2·ridge), against the summed log-likelihood of the training
  trials), fitted from the strongest ridge down, each fit warm-started from the last;
- the setting that predicts the validation spikes best is kept when its gain over the decoded
  rates alone exceeds `GAIN_KEEP_SE` standard errors of the per-trial gains. Otherwise the model
  has no gain and samples exactly as without one.

Measured with every default (`python bench/quality_pipeline_conditions.py --beds network400
[--seed 1]`, test trials): on two E/I networks of 400 trials the gain was kept (+0.0104 and
+0.0099 bits/spike of the validation trials, 5-7 standard errors), and Poisson draws of the
model's rates decoded the angle 1.03x and 1.14x the real trials' error against 4.15x and 4.23x
for the decoded rates alone. On simulated reach, whose latents carry the angle, it was not kept
at 800 variable-length trials (+0.0001) and kept at a size that changed nothing measurable at
1000 (+0.0002, ridge 300: 1.34x against 1.35x).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ldns_cli.core.data import SpikeData
from ldns_cli.diffusion.condition_gain import (
    ConditionGain,
    basis_size,
    feature_count,
    gain_conditions,
    gain_features,
    time_basis,
)

GAIN_SPACINGS_S = (0.1, 0.2)  # bump spacing (time resolution of the gain), seconds
GAIN_RIDGES = (300.0, 100.0, 30.0, 10.0, 3.0)  # strongest first: each fit starts from the last
GAIN_KEEP_SE = 2.0
# the regression reads at most this many neuron-bins of training (and of validation) trials,
# evenly spread over them: its float64 arrays then stay within about 0.5 GB
GAIN_MAX_ELEMENTS = 10_000_000
GAIN_MAX_WEIGHTS = 256  # per neuron (bumps x features): its Hessians are [N, P, P]
NEWTON_STEPS = 30
NEWTON_TOL = 1e-7  # stop when no weight moves by more than this
MIN_RATE = 1e-8  # spikes per bin: the floor of the offset's log


class _Problem:
    """One recording's regression: log-rate offsets, counts, bumps and features (float64)."""

    def __init__(self, rates: np.ndarray, data: SpikeData, x: np.ndarray, phi: np.ndarray):
        mask = torch.as_tensor(data.mask(), dtype=torch.float64)[..., None]  # [B, L, 1]
        self.mask = mask
        self.log_r = torch.log(torch.as_tensor(rates, dtype=torch.float64).clamp_min(MIN_RATE))
        self.y = torch.as_tensor(data.counts, dtype=torch.float64) * mask  # [B, L, N]
        self.x = torch.as_tensor(x, dtype=torch.float64)  # [B, F]
        self.phi = torch.as_tensor(phi[: data.counts.shape[1]], dtype=torch.float64)  # [L, K]

    def eta(self, w: torch.Tensor) -> torch.Tensor:
        """Log rates `[B, L, N]` with weights w `[K, F, N]`."""
        per_trial = torch.einsum("bf,kfn->bkn", self.x, w)
        return self.log_r + torch.einsum("lk,bkn->bln", self.phi, per_trial)

    def nll_per_trial(self, w: torch.Tensor) -> torch.Tensor:
        """Poisson negative log-likelihood per trial `[B]` (nats, without the log k! term)."""
        eta = self.eta(w)
        return ((torch.exp(eta) - self.y * eta) * self.mask).sum(dim=(1, 2))

    def newton(self, w: torch.Tensor, ridge: float) -> torch.Tensor:
        """Minimise Σ nll + ridge·|w|² from w, by damped Newton steps per neuron."""
        K, F, N = w.shape
        P = K * F
        phi2 = (self.phi[:, :, None] * self.phi[:, None, :]).reshape(-1, K * K)  # [L, K²]
        xx = (self.x[:, :, None] * self.x[:, None, :]).reshape(len(self.x), -1)  # [B, F²]
        # the counts enter the objective and gradient only through these sums: Σ y·η is
        # Σ y·log r plus Σ W·(Σ y φ x), so each evaluation needs one exp over the bins
        y_stat = torch.einsum("bkn,bf->kfn", torch.einsum("bln,lk->bkn", self.y, self.phi), self.x)
        y_log_r = (self.y * self.log_r).sum(dim=(0, 1))  # [N]

        def objective(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            lam = torch.exp(self.eta(v)) * self.mask  # [B, L, N]
            linear = y_log_r + (v * y_stat).sum(dim=(0, 1))
            return lam.sum(dim=(0, 1)) - linear + ridge * (v**2).sum(dim=(0, 1)), lam  # [N]

        current, lam = objective(w)
        for _ in range(NEWTON_STEPS):
            resid = torch.einsum("bln,lk->bkn", lam, self.phi)  # [B, K, N]
            grad = torch.einsum("bkn,bf->kfn", resid, self.x) - y_stat + 2 * ridge * w
            c = torch.einsum("bln,lq->bnq", lam, phi2).reshape(len(lam), -1)  # [B, N·K²]
            hess = (c.T @ xx).reshape(N, K, K, F, F).permute(0, 1, 3, 2, 4).reshape(N, P, P)
            hess = hess + 2 * ridge * torch.eye(P, dtype=hess.dtype)
            g = grad.permute(2, 0, 1).reshape(N, P, 1)
            step = torch.linalg.solve(hess, g).reshape(N, K, F).permute(1, 2, 0)  # [K, F, N]
            scale = torch.ones(N, dtype=w.dtype)
            for _ in range(20):  # halve the step of any neuron whose objective rose
                trial = w - step * scale
                value, lam = objective(trial)
                worse = value > current + 1e-9 * current.abs().clamp_min(1.0)
                if not bool(worse.any()):
                    break
                scale = torch.where(worse, scale / 2, scale)
            w, current = trial, value
            if float((step * scale).abs().max()) < NEWTON_TOL:
                break
        return w


def _spacing(spacing_s: float, data: SpikeData) -> float:
    """Bump spacing in bins (at least one bin)."""
    return max(spacing_s / data.bin_size_s, 1.0)


def _thinned(data: SpikeData, rates: np.ndarray, values: dict[str, np.ndarray]):
    """At most `GAIN_MAX_ELEMENTS` neuron-bins of `data`: evenly spaced trials (all when fewer)."""
    per_trial = data.counts.shape[1] * data.counts.shape[2]
    keep = max(GAIN_MAX_ELEMENTS // max(per_trial, 1), 2)
    if data.n_trials <= keep:
        return data, rates, values
    index = np.unique(np.linspace(0, data.n_trials - 1, keep).round().astype(np.int64))
    return data.select(index), rates[index], {k: v[index] for k, v in values.items()}


def fit_condition_gain(
    train: SpikeData,
    val: SpikeData,
    train_rates: np.ndarray,
    val_rates: np.ndarray,
    specs: list[dict[str, Any]],
    train_values: dict[str, np.ndarray],
    val_values: dict[str, np.ndarray],
) -> tuple[ConditionGain | None, dict[str, Any]]:
    """Fit and choose the gain (see the module docstring).

    Args:
        train, val: the training and validation trials (counts, lengths, bin size).
        train_rates, val_rates: the autoencoder's rates of them `[B, L, N]`, spikes per bin.
        specs: the model's condition specs (those a gain cannot read are skipped).
        train_values, val_values: each condition's raw values for those trials.

    Returns:
        the gain, or None when it does not explain the validation spikes beyond noise, and the
        record stored in the checkpoint (every setting's validation gain, the choice, why).
    """
    read = gain_conditions(specs)
    record: dict[str, Any] = {"kept": False, "conditions": [str(s["name"]) for s in read]}
    if not read:
        names = ", ".join(str(s["name"]) for s in specs)
        verb = "varies" if len(specs) == 1 else "vary"
        record["reason"] = f"it reads one value per trial, and {names} {verb} within trials"
        return None, record
    if train.n_trials < 2 or val.n_trials < 2:
        record["reason"] = "too few training or validation trials to choose it"
        return None, record
    longest = int(max(train.lengths.max(), val.lengths.max()))
    n_features = sum(feature_count(s) for s in read)
    n_weights = n_features * basis_size(longest, _spacing(min(GAIN_SPACINGS_S), train))
    if n_weights > GAIN_MAX_WEIGHTS:
        record["reason"] = (
            f"{n_weights} weights per neuron ({n_features} condition features) exceed "
            f"{GAIN_MAX_WEIGHTS}"
        )
        return None, record
    train, train_rates, train_values = _thinned(train, train_rates, train_values)
    val, val_rates, val_values = _thinned(val, val_rates, val_values)
    x_train = gain_features(read, train_values)  # [B, F]
    x_val = gain_features(read, val_values)
    val_spikes = float(val.counts.sum())
    curve, best = [], None
    for spacing_s in GAIN_SPACINGS_S:
        spacing = _spacing(spacing_s, train)
        n_basis = basis_size(longest, spacing)
        phi = time_basis(longest, spacing, n_basis)
        fit_problem = _Problem(train_rates, train, x_train, phi)
        val_problem = _Problem(val_rates, val, x_val, phi)
        w = torch.zeros(n_basis, x_train.shape[1], train.counts.shape[2], dtype=torch.float64)
        base = val_problem.nll_per_trial(w)  # [B_val] nats: the decoded rates alone
        for ridge in GAIN_RIDGES:
            w = fit_problem.newton(w, ridge)
            per_trial = (base - val_problem.nll_per_trial(w)) / math.log(2)  # bits [B_val]
            gain = float(per_trial.sum()) / max(val_spikes, 1.0)
            se = float(per_trial.std()) * math.sqrt(len(per_trial)) / max(val_spikes, 1.0)
            row = {"spacing_s": spacing_s, "ridge": ridge, "gain_bits_per_spike": gain, "se": se}
            curve.append(row)
            if best is None or gain > best[0]["gain_bits_per_spike"]:
                best = (row, spacing, w.clone())
    assert best is not None
    row, spacing, w = best
    record.update(
        curve=curve,
        spacing_s=row["spacing_s"],
        spacing_bins=spacing,
        ridge=row["ridge"],
        gain_bits_per_spike=row["gain_bits_per_spike"],
        se=row["se"],
    )
    if not row["gain_bits_per_spike"] > GAIN_KEEP_SE * row["se"]:
        record["reason"] = (
            f"its best validation gain ({row['gain_bits_per_spike']:+.2g} bits/spike) is within "
            f"{GAIN_KEEP_SE:g} standard errors ({row['se']:.2g}) of none"
        )
        return None, record
    record["kept"] = True
    record["reason"] = (
        f"it explains {row['gain_bits_per_spike']:+.4f} bits/spike of the validation trials "
        f"beyond the decoded rates (standard error {row['se']:.4f})"
    )
    gain = ConditionGain(specs=tuple(read), spacing_bins=spacing, weight=w.float().numpy())
    return gain, record


def describe_gain(record: dict[str, Any]) -> str:
    """One line on the gain's choice."""
    names = ", ".join(record.get("conditions", [])) or "no condition"
    if record.get("kept"):
        return (
            f"condition gain ({names}): kept, bumps every {record['spacing_s'] * 1e3:g} ms, "
            f"ridge {record['ridge']:g}: {record['reason']}"
        )
    return f"condition gain ({names}): not kept: {record.get('reason', '')}"
