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
adds one for another setting.

A conditional model's calibration also belongs to a guidance weight. Guidance W > 1 pushes each
draw away from the unconditional one and widens the latents: on 400 simulated reach trials the
sampled std was 0.96-1.01x the training latents' at W = 1, 0.99-1.10x at 1.5, 1.03-1.18x at 2 and
1.12-1.34x at 3 (`fit-diffusion`'s printed calibration lines, `python
bench/quality_pipeline_conditions.py --beds reach400`), and with W = 1's map at W = 2 the samples'
population-count score was 2.16, worse than homogeneous Poisson. So conditional models are
calibrated at W = 1 on `calibration_trials` draws with the training trials' conditions, and at
each further weight of the guidance grid on `GUIDED_CALIBRATION_TRIALS` of the same trials, drawn
from the same initial noise: the weight's moments are W = 1's times (std) or plus (mean) the
change the paired draws show. That is less noisy than the draws' own moments: against the std
of all 1000 draws at the weight, the paired estimate was off by at most 0.5-1.8% per channel,
the same 256 draws' own std by 1.3-2.3% (reach400 and reachvar800 models of
`bench/quality_pipeline_conditions.py`, `python bench/quality_guided_calibration.py DATA
MODELS`). A weight between two fitted ones gets the map interpolated
linearly between theirs, one outside them the nearest one's (`resolve_calibration`); a model
calibrated at W = 1 only (fitted before per-weight calibration) uses that map at every weight.

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


# paired draws per further guidance weight (see the module docstring)
GUIDED_CALIBRATION_TRIALS = 256
_GUIDANCE_MARK = "@w"


def calibration_key(sampler: str, steps: int, guidance: float = 1.0) -> str:
    """Calibrations are per sampler setting and guidance weight: how narrow the draws come out
    depends on both. W = 1 keeps the plain `sampler/steps` key."""
    key = f"{sampler}/{int(steps)}"
    return key if float(guidance) == 1.0 else f"{key}{_GUIDANCE_MARK}{float(guidance):g}"


def parse_calibration_key(key: str) -> tuple[str, int, float] | None:
    """(sampler, steps, guidance) of a `calibration_key`, or None when it is not one."""
    setting, mark, weight = key.partition(_GUIDANCE_MARK)
    sampler, _, steps = setting.rpartition("/")
    if not sampler or not steps.isdigit():
        return None
    try:
        guidance = float(weight) if mark else 1.0
    except ValueError:
        return None
    return (sampler, int(steps), guidance) if np.isfinite(guidance) and guidance > 0 else None


@dataclass(frozen=True)
class LatentCalibration:
    """Per-channel affine map x → scale·x + shift on normalised latents `[..., Z]`, fitted on
    draws of one sampler setting (`sampler`, `steps`) at one guidance weight and valid for
    those only."""

    scale: np.ndarray  # [Z]
    shift: np.ndarray  # [Z]
    sampler: str = DEFAULT_SAMPLER
    steps: int = DEFAULT_STEPS[DEFAULT_SAMPLER]
    guidance: float = 1.0

    @property
    def key(self) -> str:
        return calibration_key(self.sampler, self.steps, self.guidance)

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
        guidance: float = 1.0,
    ) -> LatentCalibration:
        """The map taking per-channel (mean, std) `sampled` to `target`."""
        m_s, s_s = (np.asarray(a, dtype=np.float64) for a in sampled)
        m_t, s_t = (np.asarray(a, dtype=np.float64) for a in target)
        # a channel the sampler leaves constant keeps its scale (no division by ~0)
        scale = np.where(s_s > 1e-8, s_t / np.maximum(s_s, 1e-8), 1.0)
        return cls(
            scale=scale,
            shift=m_t - scale * m_s,
            sampler=sampler,
            steps=int(steps),
            guidance=float(guidance),
        )


def load_calibrations(tensors: dict[str, Tensor]) -> dict[str, LatentCalibration]:
    """The calibrations stored in a checkpoint's tensors, by `calibration_key` (may be empty:
    models fitted before calibration existed, or with `--calibration-trials 0`)."""
    out: dict[str, LatentCalibration] = {}
    for name in tensors:
        if not (name.startswith(PREFIX + ".") and name.endswith(".scale")):
            continue
        key = name[len(PREFIX) + 1 : -len(".scale")]
        shift = tensors.get(f"{PREFIX}.{key}.shift")
        parsed = parse_calibration_key(key)
        if shift is None or parsed is None:
            continue
        sampler, steps, guidance = parsed
        out[key] = LatentCalibration(
            scale=tensors[name].double().numpy(),
            shift=shift.double().numpy(),
            sampler=sampler,
            steps=steps,
            guidance=guidance,
        )
    return out


def resolve_calibration(
    calibrations: dict[str, LatentCalibration], sampler: str, steps: int, guidance: float = 1.0
) -> tuple[LatentCalibration, str] | None:
    """The calibration to sample with at this setting and weight, and where it comes from:
    the one fitted at the weight; between two fitted weights, their maps interpolated linearly
    (the widening grows smoothly with W); outside them, the nearest one's. None when the
    setting has none (the raw network's draws)."""
    fitted = sorted(
        (c for c in calibrations.values() if c.sampler == sampler and c.steps == int(steps)),
        key=lambda c: c.guidance,
    )
    if not fitted:
        return None
    w = float(guidance)
    below = [c for c in fitted if c.guidance <= w]
    above = [c for c in fitted if c.guidance >= w]
    if below and above:
        lo, hi = below[-1], above[0]
        if lo.guidance == hi.guidance:
            return lo, f"fitted at W={lo.guidance:g}"
        f = (w - lo.guidance) / (hi.guidance - lo.guidance)
        mixed = LatentCalibration(
            scale=(1 - f) * lo.scale + f * hi.scale,
            shift=(1 - f) * lo.shift + f * hi.shift,
            sampler=lo.sampler,
            steps=lo.steps,
            guidance=w,
        )
        return mixed, f"interpolated between W={lo.guidance:g} and W={hi.guidance:g}"
    nearest = above[0] if above else below[-1]
    return nearest, f"fitted at W={nearest.guidance:g}, the nearest fitted weight"


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
