"""Latent calibration: match the sampler's per-channel latent moments to the training latents'.

Why: a denoiser trained for minutes (and, in the paper, for hours) returns latents that are a
little too narrow. The last steps of any sampler lean on the network's posterior mean, which
shrinks every component the network has not learned exactly, so the sampled normalised latents
come out with a per-channel std of 0.93–1.0 instead of 1 (four models measured). Through the
convex softplus decoder that lowers the firing rates (Jensen; 2.3% on the model below), and the
mean-ISI statistic, which is close to 1/rate, is the first to show it: on the default-size Lorenz
data (5000 trials, width-64 denoiser, 40 epochs, DPM-Solver++ 20) the mean-ISI score was 0.26 with
all else ≤ 0.05.

What: after `fit-diffusion`, sample `calibration_trials` latent trials with the default sampler
(DPM-Solver++, 20 steps), with the lengths and conditions of randomly chosen training trials,
measure each channel's mean m_s and std s_s over valid bins, and compare them with the same
moments of the training trials' normalised latents (m_t, s_t; 0 and 1 unless the latents were
clipped). Sampling then maps each channel x → a·x + c with a = s_t/s_s, c = m_t − a·m_s: the
sampled latents get the training latents' first two moments per channel, and nothing else of them
changes (temporal structure, cross-channel structure and condition dependence are the
network's). The correction is fitted on training trials only, stored in the checkpoint
(`calibration.<sampler>/<steps>.scale|shift`) and applied by `ldns sample` unless
`--no-calibration` is given.

A calibration belongs to one sampler setting: how narrow the draws come out depends on the
sampler and its steps (on that Lorenz model the dpm++ 20 map, applied to 1000-step DDPM draws,
over-widened them and made every metric worse). Sampling with a setting that has no calibration
gives the raw network's draws and says so; `fit-diffusion --calibrate-only --sampler S --steps K`
adds one for another setting. Conditional models are calibrated at guidance W = 1 with the
training trials' conditions; the same map is applied at any W (on the shipped reach model the
calibrated samples' largest |score| over six seeds averaged 0.21 at W = 2 against 0.24 raw).

Measured (bench/quality_diffusion.py on that Lorenz setup, 1000 samples vs the 1000 held-out
trials): the mean-ISI score went from 0.26 to 0.07, and psc W1, correlation, Fano factor and
autocorrelation scores all improved; a per-neuron rate gain fixed mean ISI too but left the
latents (and so the long-sample spectra and the history model's input) under-dispersed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ldns_cli.diffusion.samplers import DEFAULT_SAMPLER, DEFAULT_STEPS

PREFIX = "calibration"


def calibration_key(sampler: str, steps: int) -> str:
    """Calibrations are per sampler setting: how narrow the draws come out depends on it."""
    return f"{sampler}/{int(steps)}"


@dataclass(frozen=True)
class LatentCalibration:
    """Per-channel affine map x → scale·x + shift on normalised latents `[..., Z]`, fitted on
    draws of one sampler setting (`sampler`, `steps`) and valid for that setting only."""

    scale: np.ndarray  # [Z]
    shift: np.ndarray  # [Z]
    sampler: str = DEFAULT_SAMPLER
    steps: int = DEFAULT_STEPS[DEFAULT_SAMPLER]

    @property
    def key(self) -> str:
        return calibration_key(self.sampler, self.steps)

    def apply(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x `[B, L, Z]` (mask `[B, L]`: padded bins stay zero) -> calibrated `[B, L, Z]`."""
        scale = torch.as_tensor(self.scale, dtype=x.dtype, device=x.device)
        shift = torch.as_tensor(self.shift, dtype=x.dtype, device=x.device)
        out = x * scale + shift
        return out if mask is None else out * mask[:, :, None].to(x.dtype)

    def tensors(self) -> dict[str, Tensor]:
        """Checkpoint tensors `calibration.<sampler>/<steps>.scale|shift`."""
        return {
            f"{PREFIX}.{self.key}.scale": torch.as_tensor(self.scale, dtype=torch.float32),
            f"{PREFIX}.{self.key}.shift": torch.as_tensor(self.shift, dtype=torch.float32),
        }

    @classmethod
    def from_moments(
        cls,
        sampled: tuple[np.ndarray, np.ndarray],
        target: tuple[np.ndarray, np.ndarray],
        sampler: str = DEFAULT_SAMPLER,
        steps: int = DEFAULT_STEPS[DEFAULT_SAMPLER],
    ) -> LatentCalibration:
        """The map taking per-channel (mean, std) `sampled` to `target`."""
        m_s, s_s = (np.asarray(a, dtype=np.float64) for a in sampled)
        m_t, s_t = (np.asarray(a, dtype=np.float64) for a in target)
        # a channel the sampler leaves constant keeps its scale (no division by ~0)
        scale = np.where(s_s > 1e-8, s_t / np.maximum(s_s, 1e-8), 1.0)
        return cls(scale=scale, shift=m_t - scale * m_s, sampler=sampler, steps=int(steps))


def load_calibrations(tensors: dict[str, Tensor]) -> dict[str, LatentCalibration]:
    """The calibrations stored in a checkpoint's tensors, by `calibration_key` (may be empty:
    models fitted before calibration existed, or with `--calibration-trials 0`)."""
    out: dict[str, LatentCalibration] = {}
    for name in tensors:
        if not (name.startswith(PREFIX + ".") and name.endswith(".scale")):
            continue
        key = name[len(PREFIX) + 1 : -len(".scale")]
        shift = tensors.get(f"{PREFIX}.{key}.shift")
        sampler, _, steps = key.rpartition("/")
        if shift is None or not steps.isdigit():
            continue
        out[key] = LatentCalibration(
            scale=tensors[name].double().numpy(),
            shift=shift.double().numpy(),
            sampler=sampler,
            steps=int(steps),
        )
    return out


class MomentAccumulator:
    """Masked per-channel mean and std over (trials × bins), accumulated chunk by chunk."""

    def __init__(self, channels: int) -> None:
        self.n = 0.0
        self.sum = np.zeros(channels, np.float64)
        self.sum_sq = np.zeros(channels, np.float64)

    def add(self, x: np.ndarray | Tensor, mask: np.ndarray | Tensor) -> None:
        """x `[B, L, Z]`, mask `[B, L]` bool."""
        x = np.asarray(x, dtype=np.float64)
        m = np.asarray(mask, dtype=bool)
        valid = x[m]  # [n_valid, Z]
        self.n += valid.shape[0]
        self.sum += valid.sum(0)
        self.sum_sq += np.square(valid).sum(0)

    def moments(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean [Z], std [Z]) over everything added (population std)."""
        n = max(self.n, 1.0)
        mean = self.sum / n
        var = np.maximum(self.sum_sq / n - mean**2, 0.0)
        return mean, np.sqrt(var)
