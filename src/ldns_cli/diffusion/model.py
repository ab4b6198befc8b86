"""The diffusion model as stored: its config and presets, condition features, latent
normalisation, and `DiffusionModel`, rebuilt from a `diffusion` checkpoint for sampling.

Each latent channel is normalised with the masked mean/std of the *training* trials' valid bins
(stored in the checkpoint, since sampling must de-normalise with exactly these numbers). Training
itself (the latent dataset, the loss, condition dropout for classifier-free guidance) is
`fit.diffusion`.

Checkpoint `models/diffusion.safetensors` (kind "diffusion"): tensors `model.*` are the EMA
weights (used for sampling), `raw.*` the raw weights plus optimiser state for `--resume`;
metadata: the `DiffusionConfig`, the fingerprint of the AE it belongs to (`ae_id`, a hash of the
AE's weights, plus the data fingerprint), normalisation stats and the condition specs.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ldns_cli.conditions.spec import embed_condition_values
from ldns_cli.core.checkpoint import DAMAGED_HINT, Checkpoint, load_weights
from ldns_cli.core.config import config_from_dict
from ldns_cli.core.errors import LdnsError
from ldns_cli.diffusion.calibration import (
    LatentCalibration,
    load_calibrations,
    resolve_calibration,
)
from ldns_cli.diffusion.condition_gain import ConditionGain, load_condition_gain
from ldns_cli.diffusion.schedule import NoiseSchedule, ScheduleConfig
from ldns_cli.nn.denoiser import CondInput, Denoiser, DenoiserConfig

PREDICTIONS = {"eps": "epsilon", "epsilon": "epsilon", "v": "v_prediction"}
LOSSES = ("mse", "smooth_l1")


@dataclass(frozen=True)
class DiffusionConfig:
    """Everything `fit-diffusion` needs; saved in the checkpoint (models are rebuilt from it)."""

    width: int = 64  # C, denoiser hidden channels
    blocks: int = 4  # adaLN-Zero S4 blocks
    state_dim: int = 64  # S4 state size per channel
    conv_out_scale: float = 0.1  # conv_out scaled at init (the paper's)
    schedule: str = "linear"  # β schedule: linear (the paper's, 1e-4..0.02) | cosine
    num_train_timesteps: int = 1000  # T
    prediction: str = "eps"  # network target: eps (the paper's) | v
    loss: str = "mse"  # mse | smooth_l1 (the paper's for real data)
    smooth_l1_beta: float = 0.04  # Huber transition point (monkey/speech: 0.04-0.05)
    cond_dropout: float = 0.1  # P(all conditions of a trial dropped) -> classifier-free guidance
    conditions: tuple[str, ...] = ()  # covariate / behaviour names to condition on
    clip_latents: float = 0.0  # clip normalised latents to ±this (Lorenz: 5); 0 = off
    val_fraction: float = 0.1  # used only when the data has no split labels
    # lags per direction of the denoiser's S4 kernels: -1 = half the longest training trial, 0 = as
    # long as the input (the paper's global kernels), > 0 = that many. With global kernels a bin of
    # a long sample sees far more context than any training bin did, and slow SSM modes (Δ down to
    # 1e-3, time constants ~2000 bins) never constrained by 256-bin training widen 4096-bin
    # latents to std 1.79; with a reach of half the training length every interior bin of a long
    # sample sees the span an interior training bin saw, and the std stays 0.96 / 0.97 / 1.00 at
    # 256 / 1024 / 4096 bins (shipped Lorenz model, `python bench/length_drift.py`)
    kernel_bins: int = -1
    # latent trials sampled after the fit to calibrate each channel's mean and std to the
    # training latents' (diffusion.calibration: sampled latents come out a few % too narrow);
    # 0 = off
    calibration_trials: int = 1000
    # conditional models: a per-neuron rate gain read from the trial conditions, fitted after the
    # denoiser and kept only when it predicts the validation spikes better
    # (diffusion/condition_gain.py); False = never fit one
    condition_gain: bool = True

    def __post_init__(self) -> None:
        if self.prediction not in PREDICTIONS:
            raise LdnsError(f"unknown prediction '{self.prediction}'", "use eps or v")
        if self.loss not in LOSSES:
            raise LdnsError(f"unknown loss '{self.loss}'", f"use one of {', '.join(LOSSES)}")
        if self.schedule not in ("linear", "cosine"):
            raise LdnsError(f"unknown schedule '{self.schedule}'", "use linear or cosine")
        if not 0.0 <= self.cond_dropout < 1.0:
            raise LdnsError(
                f"--cond-dropout must be in [0, 1), got {self.cond_dropout}", "e.g. 0.1"
            )
        if self.width < 4 or self.width % 4:
            raise LdnsError(f"--width must be a multiple of 4, got {self.width}", "e.g. 64")
        if self.blocks < 1:
            raise LdnsError(f"--blocks must be >= 1, got {self.blocks}", "e.g. 4")
        if self.smooth_l1_beta <= 0:
            raise LdnsError("smooth_l1_beta must be positive", "e.g. 0.04")
        if self.calibration_trials < 0:
            raise LdnsError(
                f"--calibration-trials must be >= 0, got {self.calibration_trials}",
                "e.g. 1000 (0 = no latent calibration)",
            )
        if self.kernel_bins < -1:
            raise LdnsError(
                f"--kernel-bins must be -1, 0 or positive, got {self.kernel_bins}",
                "-1 = half the longest training trial, 0 = global kernels",
            )

    def schedule_config(self) -> ScheduleConfig:
        return ScheduleConfig(
            num_train_timesteps=self.num_train_timesteps,
            beta_schedule=self.schedule,
            prediction_type=PREDICTIONS[self.prediction],
        )


# the paper's settings per dataset (Kapoor et al. 2024; keys of DiffusionConfig or
# fit.trainer.TrainConfig); `small` is a CPU demo and the default (as for fit-ae)
DEFAULT_PRESET = "small"
PRESETS: dict[str, dict[str, Any]] = {
    "small": {
        # v-prediction (not the paper's eps): with a linear schedule an eps-net must reproduce
        # x_t almost exactly at high noise, and a short CPU run cannot (x0 error x1/sqrt(abar)
        # ~ 150): eps gave latents 2-6x too wide and 49 Hz samples of 13 Hz data; v gave
        # normalised scores <= 0.05 on psc/corr/std-ISI/autocorr (demo data, same budget)
        # budget: at most 100 epochs, at least 1500 optimiser steps (small recordings get more
        # epochs: 600 trials at 10 steps per epoch ran only 1000 steps; a conditional model gets
        # at least fit.diffusion.CONDITIONAL_MIN_STEPS), and a stop once the validation loss has
        # not improved for 20 epochs past the floor. 1500 steps sample as well as 2000: on 600
        # simulated reach trials and 400 trials of the E/I network, the evaluate scores of
        # unconditional samples against the test trials (3 seeds) were within each other's
        # range over seeds on every statistic, with a quarter fewer steps
        # (`python bench/quality_diffusion_floor.py`)
        "width": 32, "blocks": 2, "state_dim": 32, "epochs": 100, "batch_size": 64,
        "warmup_epochs": 5, "lr": 2e-3, "ema_decay": 0.995, "prediction": "v",
        "min_steps": 1500, "patience": 20,
    },
    "lorenz": {
        "width": 64, "blocks": 4, "epochs": 1000, "batch_size": 512, "warmup_epochs": 50,
        "loss": "mse", "clip_latents": 5.0,
    },
    "mc_maze": {
        "width": 256, "blocks": 6, "epochs": 2000, "batch_size": 512, "warmup_epochs": 50,
        "loss": "smooth_l1", "smooth_l1_beta": 0.04,
    },
    "speech": {
        "width": 384, "blocks": 6, "epochs": 2000, "batch_size": 256, "warmup_epochs": 100,
        "loss": "smooth_l1", "smooth_l1_beta": 0.04, "ema_decay": 0.9999,
    },
}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Condition specs and features
# ---------------------------------------------------------------------------------------------


def cond_input(spec: dict[str, Any]) -> CondInput:
    """How a condition enters the denoiser."""
    kind, dim = spec["kind"], int(spec["dim"])
    if kind == "circular":
        return CondInput(spec["name"], "vector", dim=2 * dim)
    if kind == "continuous":
        return CondInput(spec["name"], "vector", dim=dim)
    if kind == "categorical":
        return CondInput(spec["name"], "categorical", n_classes=len(spec["values"]))
    return CondInput(spec["name"], "series", dim=dim)


def condition_features(spec: dict[str, Any], values: np.ndarray) -> torch.Tensor:
    """Raw condition values -> the network's input features (see `embed_condition_values`).

    circular `[B]`/`[B, k]` -> (cos, sin) `[B, 2k]`; continuous -> z-scored `[B, k]`;
    categorical labels -> class index `[B]` long; time series `[B, L, k]` -> z-scored `[B, L, k]`.
    """
    return torch.from_numpy(np.ascontiguousarray(embed_condition_values(spec, values)))


# ---------------------------------------------------------------------------------------------
# Latent normalisation and the dataset
# ---------------------------------------------------------------------------------------------


def latent_stats(latents: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std `[Z]` of `[B, L, Z]` latents over valid bins (`mask` `[B, L]`)."""
    valid = latents[mask].astype(np.float64)  # [n_valid, Z]
    mean, std = valid.mean(axis=0), valid.std(axis=0)
    return mean, np.where(std > 1e-8, std, 1.0)


def normalise(latents: np.ndarray, mean, std, clip: float = 0.0) -> np.ndarray:
    z = (latents - np.asarray(mean)) / np.asarray(std)
    return np.clip(z, -clip, clip) if clip > 0 else z


def denormalise(z: torch.Tensor, mean, std) -> torch.Tensor:
    """Normalised latents `[B, L, Z]` back to the AE's latent space."""
    m = torch.as_tensor(mean, dtype=z.dtype, device=z.device)
    s = torch.as_tensor(std, dtype=z.dtype, device=z.device)
    return z * s + m


# ---------------------------------------------------------------------------------------------
# Checkpoint identity and loading
# ---------------------------------------------------------------------------------------------


def weights_id(tensors: dict[str, torch.Tensor], prefix: str = "model.") -> str:
    """A short content hash of a checkpoint's model weights (the AE's identity)."""
    h = hashlib.sha256()
    for key in sorted(k for k in tensors if k.startswith(prefix)):
        t = tensors[key].detach().to("cpu").contiguous()
        h.update(key.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


@dataclass
class DiffusionModel:
    """A loaded diffusion checkpoint: the EMA denoiser and what sampling needs besides."""

    denoiser: Denoiser
    config: DiffusionConfig
    schedule: NoiseSchedule
    latent_mean: np.ndarray
    latent_std: np.ndarray
    conditions: list[dict[str, Any]] = field(default_factory=list)
    fingerprint: dict[str, Any] = field(default_factory=dict)
    checkpoint: Checkpoint | None = None
    # by `calibration_key(sampler, steps, guidance)`; empty: fitted before calibration existed,
    # or with `--calibration-trials 0`
    calibrations: dict[str, LatentCalibration] = field(default_factory=dict)
    # the conditions' rate gain applied after decoding; None: not kept or unconditional
    condition_gain: ConditionGain | None = None

    @property
    def ae_id(self) -> str:
        return str(self.fingerprint.get("ae_id", ""))

    @property
    def train_lengths(self) -> np.ndarray | None:
        """Lengths (bins) of the training trials, one per trial; None for models fitted before
        they were recorded."""
        extra = self.checkpoint.extra if self.checkpoint is not None else {}
        hist = extra.get("train_lengths")
        if not isinstance(hist, dict):
            return None
        try:
            bins = np.asarray(hist["bins"], dtype=np.int64)
            trials = np.asarray(hist["trials"], dtype=np.int64)
            lengths = np.repeat(bins, trials)
        except (KeyError, TypeError, ValueError):
            return None
        return lengths if lengths.size and (lengths >= 1).all() else None

    @property
    def bin_size_s(self) -> float:
        """Bin width of the training data in seconds (0 when the checkpoint does not say)."""
        return float(self.fingerprint.get("bin_size_s", 0) or 0)

    @property
    def id(self) -> str:
        assert self.checkpoint is not None
        return weights_id(self.checkpoint.tensors)

    def calibration_for(
        self, sampler: str, steps: int, guidance: float = 1.0
    ) -> LatentCalibration | None:
        """The latent calibration for this sampler setting and guidance weight (see
        `resolve_calibration`), if the setting has any."""
        found = resolve_calibration(self.calibrations, sampler, steps, guidance)
        return None if found is None else found[0]

    def condition(self, name: str) -> dict[str, Any] | None:
        return next((c for c in self.conditions if c["name"] == name), None)

    @property
    def measured_guidance(self) -> float | None:
        """The guidance weight `fit-diffusion` chose by measurement (None: none stored)."""
        record = self.checkpoint.extra.get("guidance") if self.checkpoint is not None else None
        try:
            weight = float(record["weight"]) if isinstance(record, dict) else None
        except (KeyError, TypeError, ValueError):
            return None
        return weight if weight is not None and math.isfinite(weight) and weight >= 0 else None


AUTO = "auto"


def parse_guidance(value: float | str) -> float | None:
    """A guidance weight from a number or a string; None for "auto"."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text == AUTO:
            return None
        try:
            value = float(text)
        except ValueError:
            raise LdnsError(
                f"--guidance must be a number or 'auto', got {value!r}", "e.g. --guidance 2"
            ) from None
    if not math.isfinite(value):
        raise LdnsError(f"--guidance must be a number, got {value}", "e.g. --guidance 2")
    return float(value)


def resolve_guidance(model: DiffusionModel, value: float | str) -> float:
    """The weight to sample with: `value`, or for "auto" the measured weight of a conditional
    model (`measured_guidance`), else 1 (plain conditional sampling)."""
    parsed = parse_guidance(value)
    if parsed is None:
        measured = model.measured_guidance if model.conditions else None
        return 1.0 if measured is None else measured
    return parsed


def denoiser_config(
    config: DiffusionConfig, latent_dim: int, specs: list[dict], n_bins: int
) -> DenoiserConfig:
    """The network's config; `n_bins` (longest training trial) resolves `kernel_bins = -1`."""
    reach = max(1, n_bins // 2) if config.kernel_bins == -1 else config.kernel_bins
    return DenoiserConfig(
        latent_dim=latent_dim,
        width=config.width,
        blocks=config.blocks,
        state_dim=config.state_dim,
        conv_out_scale=config.conv_out_scale,
        conditions=tuple(cond_input(s) for s in specs),
        kernel_bins=reach,
    )


def diffusion_from_checkpoint(ckpt: Checkpoint, device: torch.device | str) -> DiffusionModel:
    """Rebuild the EMA denoiser and its metadata from a loaded checkpoint."""
    try:
        config = config_from_dict(
            DiffusionConfig, ckpt.config["diffusion"], source="diffusion checkpoint"
        )
        extra = ckpt.extra
        specs = list(extra.get("conditions", []))
        net_cfg = DenoiserConfig.from_dict(extra["denoiser"])
        model = Denoiser(net_cfg)
        latent_mean = np.asarray(extra["latent_mean"], dtype=np.float32)  # [Z]
        latent_std = np.asarray(extra["latent_std"], dtype=np.float32)  # [Z]
        calibrations = load_calibrations(ckpt.tensors)
        gain = load_condition_gain(ckpt.tensors, extra.get("condition_gain"), specs)
    except (KeyError, TypeError, RuntimeError, ValueError) as exc:
        raise LdnsError(
            f"'{ckpt.path}' does not hold a usable diffusion model ({type(exc).__name__}: {exc})",
            "refit it with `ldns fit-diffusion`",
        ) from None
    load_weights(model, ckpt.subset("model"), ckpt, "diffusion model", "ldns fit-diffusion DATA")
    z = net_cfg.latent_dim
    stats_ok = latent_mean.shape == (z,) and latent_std.shape == (z,)
    if not (stats_ok and np.isfinite(latent_mean).all() and (latent_std > 0).all()):
        raise LdnsError(
            f"'{ckpt.path}' has damaged latent statistics (need {z} finite means and positive "
            "standard deviations)",
            DAMAGED_HINT,
        )
    for key, cal in calibrations.items():
        if cal.scale.shape != (z,) or cal.shift.shape != (z,):
            raise LdnsError(
                f"'{ckpt.path}': latent calibration {key} has {cal.scale.shape[0]} channels, "
                f"the model {z}",
                DAMAGED_HINT,
            )
    model.to(device).eval()
    return DiffusionModel(
        denoiser=model,
        config=config,
        schedule=NoiseSchedule(config.schedule_config()),
        latent_mean=latent_mean,
        latent_std=latent_std,
        conditions=specs,
        fingerprint=dict(ckpt.fingerprint),
        checkpoint=ckpt,
        calibrations=calibrations,
        condition_gain=gain,
    )
