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

import dataclasses
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ldns_cli import distributed as dist
from ldns_cli.calibration import (
    LatentCalibration,
    calibration_key,
    fit_latent_calibration,
    load_calibrations,
)
from ldns_cli.checkpoint import Checkpoint, check_data_matches, load_checkpoint, save_checkpoint
from ldns_cli.conditions import (
    condition_spec_from_data,
    embed_condition_values,
    fit_condition_values,
)
from ldns_cli.config import config_from_dict, config_to_dict, load_config_file
from ldns_cli.console import warn
from ldns_cli.data import SpikeData
from ldns_cli.denoiser import CondInput, Denoiser, DenoiserConfig
from ldns_cli.errors import LdnsError
from ldns_cli.schedule import NoiseSchedule, ScheduleConfig
from ldns_cli.train import TRAIN_KEYS, CheckpointSpec, FitResult, TrainConfig, fit

DIFFUSION_FILE = "diffusion.safetensors"
AE_FILE = "ae.safetensors"
PREDICTIONS = {"eps": "epsilon", "epsilon": "epsilon", "v": "v_prediction"}
LOSSES = ("mse", "smooth_l1")


@dataclass(frozen=True)
class DiffusionConfig:
    """Everything `fit-diffusion` needs; saved in the checkpoint (models are rebuilt from it)."""

    width: int = 64  # C, denoiser hidden channels
    blocks: int = 4  # adaLN-Zero S4 blocks
    state_dim: int = 64  # S4 state size per channel
    conv_out_scale: float = 0.1  # conv_out scaled at init (reference §2.2)
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
    # 256 / 1024 / 4096 bins (shipped Lorenz model, bench/length_drift.py; ldns-reference §2.6)
    kernel_bins: int = -1
    # latent trials sampled after the fit to calibrate each channel's mean and std to the
    # training latents' (calibration.py: sampled latents come out a few % too narrow); 0 = off
    calibration_trials: int = 1000

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


# Training defaults of the diffusion stage (train.TrainConfig keys): the reference's clipping at
# 1.0, a cosine ending near 13% of the peak (§2.3), and a fixed EMA decay instead of its warm-up.
TRAIN_DEFAULTS: dict[str, Any] = {
    "epochs": 300, "batch_size": 256, "lr": 1e-3, "weight_decay": 0.01, "warmup_epochs": 10,
    "final_lr_frac": 0.135, "grad_clip": 1.0, "ema_decay": 0.999,
}  # fmt: skip

# ldns-reference §2.2-2.4 (keys of DiffusionConfig or train.TrainConfig); `small` is a CPU demo
# and the default (as for fit-ae)
DEFAULT_PRESET = "small"
PRESETS: dict[str, dict[str, Any]] = {
    "small": {
        # v-prediction (not the paper's eps): with a linear schedule an eps-net must reproduce
        # x_t almost exactly at high noise, and a short CPU run cannot (x0 error x1/sqrt(abar)
        # ~ 150): eps gave latents 2-6x too wide and 49 Hz samples of 13 Hz data; v gave
        # normalised scores <= 0.05 on psc/corr/std-ISI/autocorr (demo data, same budget)
        "width": 32, "blocks": 2, "state_dim": 32, "epochs": 100, "batch_size": 64,
        "warmup_epochs": 5, "lr": 2e-3, "ema_decay": 0.995, "prediction": "v",
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
    """Raw condition values -> the network's input features (`conditions.embed_condition_values`).

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


def build_dataset(
    latents_norm: np.ndarray,
    mask: np.ndarray,
    cond: dict[str, torch.Tensor],
    index: np.ndarray,
) -> dict[str, torch.Tensor]:
    """A dict-of-tensors dataset for `train.py`: x `[B, L, Z]`, mask `[B, L]`, cond.<name>."""
    out = {
        "x": torch.from_numpy(latents_norm[index].astype(np.float32)),
        "mask": torch.from_numpy(mask[index]),
    }
    for name, feats in cond.items():
        out[f"cond.{name}"] = feats[torch.from_numpy(np.flatnonzero(index))]
    return out


# ---------------------------------------------------------------------------------------------
# The loss
# ---------------------------------------------------------------------------------------------


def diffusion_loss(
    model: Denoiser,
    batch: dict[str, torch.Tensor],
    schedule: NoiseSchedule,
    config: DiffusionConfig,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Masked denoising loss of one batch (mean over valid bins and latent channels)."""
    x0 = batch["x"]  # [B, L, Z]
    mask = batch["mask"].bool()  # [B, L]
    b = x0.shape[0]
    gen_device = generator.device if generator is not None else torch.device("cpu")
    t = schedule.sample_timesteps(b, generator, x0.device)  # [B]
    noise = torch.randn(x0.shape, generator=generator, device=gen_device).to(x0.device)
    x_t = schedule.add_noise(x0, noise, t)
    target = schedule.training_target(x0, noise, t)
    cond = {k[len("cond.") :]: v for k, v in batch.items() if k.startswith("cond.")}
    drop: dict[str, torch.Tensor] | None = None
    if cond and config.cond_dropout > 0:
        # all conditions of a trial dropped together with p (the unconditional path), and with
        # several conditions each also on its own with p, so that sampling with only some of
        # them given (the rest on their null embedding) is in distribution too
        p = config.cond_dropout
        u = torch.rand(b, generator=generator, device=gen_device).to(x0.device)
        drop_all = u < p
        drop = {}
        for name in sorted(cond):
            if len(cond) > 1:
                u = torch.rand(b, generator=generator, device=gen_device).to(x0.device)
                drop[name] = drop_all | (u < p)
            else:
                drop[name] = drop_all
    pred = model(x_t, t, mask, cond or None, drop)
    if config.loss == "mse":
        err = F.mse_loss(pred, target, reduction="none")
    else:
        err = F.smooth_l1_loss(pred, target, reduction="none", beta=config.smooth_l1_beta)
    m = mask[:, :, None].to(err.dtype)  # [B, L, 1]
    loss = (err * m).sum() / (m.sum() * err.shape[-1]).clamp_min(1.0)
    return loss, {"loss": float(loss.detach())}


def make_loss_fn(schedule: NoiseSchedule, config: DiffusionConfig):
    """`loss_fn(model, batch, generator) -> (loss, logs)` for the generic training loop."""

    def loss_fn(model, batch, generator):
        return diffusion_loss(model, batch, schedule, config, generator)

    return loss_fn


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
    # by `calibration_key(sampler, steps)`; empty: fitted before calibration existed, or without
    calibrations: dict[str, LatentCalibration] = field(default_factory=dict)

    @property
    def ae_id(self) -> str:
        return str(self.fingerprint.get("ae_id", ""))

    @property
    def id(self) -> str:
        assert self.checkpoint is not None
        return weights_id(self.checkpoint.tensors)

    def calibration_for(self, sampler: str, steps: int) -> LatentCalibration | None:
        """The latent calibration fitted for this sampler setting, if any."""
        return self.calibrations.get(calibration_key(sampler, steps))

    def condition(self, name: str) -> dict[str, Any] | None:
        return next((c for c in self.conditions if c["name"] == name), None)


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
        model.load_state_dict(ckpt.subset("model"), strict=True)
    except (KeyError, TypeError, RuntimeError, ValueError) as exc:
        raise LdnsError(
            f"'{ckpt.path}' does not hold a usable diffusion model ({type(exc).__name__}: {exc})",
            "refit it with `ldns fit-diffusion`",
        ) from None
    model.to(device).eval()
    return DiffusionModel(
        denoiser=model,
        config=config,
        schedule=NoiseSchedule(config.schedule_config()),
        latent_mean=np.asarray(extra["latent_mean"], dtype=np.float32),
        latent_std=np.asarray(extra["latent_std"], dtype=np.float32),
        conditions=specs,
        fingerprint=dict(ckpt.fingerprint),
        checkpoint=ckpt,
        calibrations=load_calibrations(ckpt.tensors),
    )


def check_belongs_to_ae(diff_fp: dict[str, Any], ae_ckpt: Checkpoint, where: Path) -> None:
    """Clean error if a diffusion checkpoint was trained on another autoencoder."""
    ae_id = weights_id(ae_ckpt.tensors)
    if diff_fp.get("ae_id") != ae_id:
        raise LdnsError(
            f"the diffusion model in '{where}' was trained on a different autoencoder "
            f"(AE {diff_fp.get('ae_id', '?')}, found {ae_id})",
            "refit it with `ldns fit-diffusion DATA -m "
            f"{where}` after fit-ae, or keep each model pair in its own folder",
        )


def load_diffusion(
    models_dir: str | Path, device: torch.device | str, ae_checkpoint: Checkpoint | None = None
) -> DiffusionModel:
    """Load `models_dir/diffusion.safetensors` and check it belongs to the AE next to it."""
    folder = Path(models_dir)
    ckpt = load_checkpoint(
        folder / DIFFUSION_FILE, "diffusion", fit_command="ldns fit-diffusion DATA"
    )
    if ae_checkpoint is None:
        ae_checkpoint = load_checkpoint(folder / AE_FILE, "ae", fit_command="ldns fit-ae DATA")
    check_belongs_to_ae(ckpt.fingerprint, ae_checkpoint, folder)
    return diffusion_from_checkpoint(ckpt, device)


# ---------------------------------------------------------------------------------------------
# Configs and the fit
# ---------------------------------------------------------------------------------------------


def resolve_configs(
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> tuple[DiffusionConfig, TrainConfig]:
    """defaults < preset < config file < flags, split into the model and the training config.

    Presets and the config file may mix keys of both (`DiffusionConfig`, `train.TrainConfig`);
    a key that belongs to neither is an error listing the known ones.
    """
    values: dict[str, Any] = dict(TRAIN_DEFAULTS)
    preset = preset or DEFAULT_PRESET
    if preset:
        if preset not in PRESETS:
            raise LdnsError(
                f"unknown preset '{preset}'", f"choose one of: {', '.join(sorted(PRESETS))}"
            )
        values.update(PRESETS[preset])
    values.update(load_config_file(config_file))
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    model_keys = set(DiffusionConfig.__dataclass_fields__)
    unknown = sorted(set(values) - model_keys - TRAIN_KEYS)
    if unknown:
        raise LdnsError(
            f"unknown setting(s): {', '.join(unknown)}",
            f"known settings: {', '.join(sorted(model_keys | TRAIN_KEYS))}",
        )
    source = str(config_file or "flags")
    try:
        dcfg = config_from_dict(
            DiffusionConfig, {k: v for k, v in values.items() if k in model_keys}, source
        )
        tcfg = config_from_dict(
            TrainConfig, {k: v for k, v in values.items() if k in TRAIN_KEYS}, source
        )
    except TypeError as exc:
        raise LdnsError(f"invalid settings: {exc}", "check the config file and flags") from None
    tcfg.validate()
    return dcfg, tcfg


@dataclass
class LatentData:
    """The diffusion stage's view of a recording: normalised latents, masks, condition features."""

    latents: np.ndarray  # normalised [B, L, Z]
    mask: np.ndarray  # [B, L] bool
    train: np.ndarray  # [B] bool
    val: np.ndarray  # [B] bool
    mean: np.ndarray  # [Z]
    std: np.ndarray  # [Z]
    specs: list[dict[str, Any]]
    features: dict[str, torch.Tensor]
    values: dict[str, np.ndarray] = field(default_factory=dict)  # raw condition values

    def dataset(self, which: np.ndarray) -> dict[str, torch.Tensor]:
        return build_dataset(self.latents, self.mask, self.features, which)


def prepare_latents(
    data: SpikeData,
    ae: torch.nn.Module,
    config: DiffusionConfig,
    device: torch.device | str,
    seed: int = 0,
    batch_size: int = 64,
    stats: tuple[np.ndarray, np.ndarray] | None = None,
    specs: list[dict[str, Any]] | None = None,
) -> LatentData:
    """Encode `data` with the frozen AE, normalise with training statistics, build features.

    `stats`/`specs` (from an existing checkpoint, for `--resume`) replace the recomputed ones.
    """
    from ldns_cli.autoencoder import infer

    train, val = split_masks(data, config.val_fraction, seed)
    latents, _ = infer(ae, data, batch_size=batch_size, device=device)  # [B, L, Z]
    mask = data.mask()
    if stats is None:
        mean, std = latent_stats(latents[train], mask[train])
    else:
        mean, std = (np.asarray(a, dtype=np.float64) for a in stats)
    z = normalise(latents, mean, std, config.clip_latents) * mask[:, :, None]
    if specs is None:  # the spec (ranges, scaling, categories) comes from training trials only
        specs = condition_spec_from_data(data, config.conditions, train)
    values, usable = fit_condition_values(specs, data)
    if not usable[train | val].all():
        n_out = int((~usable[train | val]).sum())
        warn(
            f"{n_out} trial(s) have a missing (NaN) or unseen value of a condition "
            f"({', '.join(s['name'] for s in specs)}); left out of the diffusion fit"
        )
        train, val = train & usable, val & usable
    features = {s["name"]: condition_features(s, values[s["name"]]) for s in specs}
    return LatentData(z.astype(np.float32), mask, train, val, mean, std, specs, features, values)


def fit_diffusion(
    data: SpikeData,
    models_dir: str | Path,
    config: DiffusionConfig,
    train_config: TrainConfig,
    device: str = "cpu",
    resume: bool = False,
    resume_epochs: int | None = None,
) -> tuple[FitResult, Path]:
    """Train the denoiser on `data`'s latents under the AE in `models_dir`; write the checkpoint.

    Returns the trainer's result and the checkpoint path. With `resume`, the existing checkpoint's
    configs, statistics and condition specs are used; `resume_epochs` changes the epoch count.
    """
    from ldns_cli.autoencoder import load_autoencoder

    folder = Path(models_dir)
    ae, ae_ckpt = load_autoencoder(folder, device)
    check_data_matches(ae_ckpt.fingerprint, data.fingerprint(), "autoencoder")
    path = folder / DIFFUSION_FILE
    previous: Checkpoint | None = None
    stats = specs = None
    if resume:
        previous = load_checkpoint(path, "diffusion", fit_command="ldns fit-diffusion DATA")
        check_belongs_to_ae(previous.fingerprint, ae_ckpt, folder)
        config = config_from_dict(DiffusionConfig, previous.config["diffusion"], str(path))
        train_config = config_from_dict(TrainConfig, previous.config["train"], str(path))
        if resume_epochs is not None:
            train_config = dataclasses.replace(train_config, epochs=resume_epochs)
        stats = (previous.extra["latent_mean"], previous.extra["latent_std"])
        specs = previous.extra.get("conditions", [])

    lat = prepare_latents(data, ae, config, device, train_config.seed, stats=stats, specs=specs)
    if not lat.train.any():
        raise LdnsError("no training trials", "the data's split labels hold no 'train' trials")
    if previous is not None:  # resume rebuilds the saved network (e.g. its resolved kernel reach)
        net_cfg = DenoiserConfig.from_dict(previous.extra["denoiser"])
    else:
        longest = int(lat.mask[lat.train].sum(axis=1).max())
        net_cfg = denoiser_config(config, lat.latents.shape[-1], lat.specs, longest)
    torch.manual_seed(train_config.seed)  # nn.Linear initialisers use the global RNG
    model = Denoiser(net_cfg)
    spec = CheckpointSpec(
        path=path,
        kind="diffusion",
        config={"diffusion": config_to_dict(config), "train": config_to_dict(train_config)},
        fingerprint={**data.fingerprint(), "ae_id": weights_id(ae_ckpt.tensors)},
        extra={
            "denoiser": config_to_dict(net_cfg),
            "latent_mean": lat.mean.tolist(),
            "latent_std": lat.std.tolist(),
            "conditions": lat.specs,
            "n_train": int(lat.train.sum()),
            "n_val": int(lat.val.sum()),
            "data_fingerprint": data.fingerprint(),
        },
    )
    schedule = NoiseSchedule(config.schedule_config())
    result = fit(
        model,
        lat.dataset(lat.train),
        lat.dataset(lat.val) if lat.val.any() else None,
        make_loss_fn(schedule, config),
        train_config,
        device=device,
        checkpoint=spec,
        resume=previous,
        description="fit-diffusion",
    )
    if not result.interrupted and config.calibration_trials > 0 and dist.is_main():
        assert result.checkpoint is not None
        add_calibration(
            result.checkpoint, lat, config.calibration_trials, train_config.seed, device
        )
        save_checkpoint(path, result.checkpoint)
    return result, path


def add_calibration(
    ckpt: Checkpoint,
    lat: LatentData,
    n_trials: int,
    seed: int,
    device: torch.device | str,
    sampler: str = "dpm++",
    steps: int | None = None,
) -> dict[str, Any]:
    """Fit the latent calibration of the model in `ckpt` for one sampler setting (see
    `calibration.py`) and store it there, next to those of other settings.

    Returns its summary (also in `ckpt.extra["latent_calibration"][key]`); the caller saves.
    """
    model = diffusion_from_checkpoint(ckpt, device)  # calibrations are never applied in the fit
    cal, summary = fit_latent_calibration(
        model, lat.latents, lat.mask, lat.train, lat.values, n_trials, seed, device, sampler, steps
    )
    ckpt.tensors.update(cal.tensors())  # replaces an earlier fit of the same setting
    ckpt.extra["latent_calibration"] = {
        **ckpt.extra.get("latent_calibration", {}),
        cal.key: summary,
    }
    return summary


def calibrate_diffusion(
    data: SpikeData,
    models_dir: str | Path,
    n_trials: int,
    seed: int,
    device: str = "cpu",
    sampler: str = "dpm++",
    steps: int | None = None,
) -> tuple[dict[str, Any], Path]:
    """Add (or refit) a latent calibration of an existing diffusion model, without training.

    For checkpoints fitted before calibration existed, for another sampler setting, or to change
    `n_trials`. Uses the checkpoint's own normalisation statistics and condition specs; writes the
    file in place.
    """
    from ldns_cli.autoencoder import load_autoencoder

    folder = Path(models_dir)
    ae, ae_ckpt = load_autoencoder(folder, device)
    check_data_matches(ae_ckpt.fingerprint, data.fingerprint(), "autoencoder")
    path = folder / DIFFUSION_FILE
    ckpt = load_checkpoint(path, "diffusion", fit_command="ldns fit-diffusion DATA")
    check_belongs_to_ae(ckpt.fingerprint, ae_ckpt, folder)
    config = config_from_dict(DiffusionConfig, ckpt.config["diffusion"], str(path))
    stats = (ckpt.extra["latent_mean"], ckpt.extra["latent_std"])
    specs = ckpt.extra.get("conditions", [])
    lat = prepare_latents(data, ae, config, device, seed, stats=stats, specs=specs)
    if not lat.train.any():
        raise LdnsError("no training trials", "the data's split labels hold no 'train' trials")
    summary = add_calibration(ckpt, lat, n_trials, seed, device, sampler, steps)
    save_checkpoint(path, ckpt)
    return summary, path
