"""Latent diffusion training: the latent dataset, the loss, and the `diffusion` checkpoint.

The frozen autoencoder encodes every trial once (`autoencoder.infer`); each latent channel is
normalised with the masked mean/std of the *training* trials' valid bins (reused for validation and
stored in the checkpoint, since sampling must de-normalise with exactly these numbers). The
denoiser is then trained by the generic loop in `fit/trainer.py` with `make_loss_fn`: t ~ U{0..T-1},
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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from ldns_cli.conditions.spec import condition_spec_from_data, fit_condition_values
from ldns_cli.core.checkpoint import (
    Checkpoint,
    check_data_matches,
    load_checkpoint,
    save_checkpoint,
)
from ldns_cli.core.config import (
    config_from_dict,
    config_to_dict,
    load_config_file,
    resolve_configs,
)
from ldns_cli.core.console import info, warn
from ldns_cli.core.data import SpikeData
from ldns_cli.core.errors import LdnsError
from ldns_cli.core.runtime import resolve_device
from ldns_cli.diffusion.calibration import (
    GUIDED_CALIBRATION_TRIALS,
    LatentCalibration,
    MomentAccumulator,
    load_calibrations,
)
from ldns_cli.diffusion.condition_gain import PREFIX as GAIN_PREFIX
from ldns_cli.diffusion.model import (
    DEFAULT_PRESET,
    PRESETS,
    DiffusionConfig,
    condition_features,
    denoiser_config,
    diffusion_from_checkpoint,
    latent_stats,
    normalise,
    weights_id,
)
from ldns_cli.diffusion.samplers import DEFAULT_SAMPLER
from ldns_cli.diffusion.schedule import NoiseSchedule
from ldns_cli.fit import distributed as dist
from ldns_cli.fit.condition_gain import describe_gain, fit_condition_gain
from ldns_cli.fit.splits import split_masks
from ldns_cli.fit.trainer import CheckpointSpec, FitResult, TrainConfig, fit
from ldns_cli.nn.denoiser import Denoiser, DenoiserConfig
from ldns_cli.store import check_belongs_to_ae, diffusion_path

if TYPE_CHECKING:
    from ldns_cli.diffusion.model import DiffusionModel


# Training defaults of the diffusion stage (`TrainConfig` keys): gradients clipped at 1.0, a
# cosine learning rate ending near 13% of its peak, and a fixed EMA decay (no EMA warm-up).
TRAIN_DEFAULTS: dict[str, Any] = {
    "epochs": 300, "batch_size": 256, "lr": 1e-3, "weight_decay": 0.01, "warmup_epochs": 10,
    "final_lr_frac": 0.135, "grad_clip": 1.0, "ema_decay": 0.999,
}  # fmt: skip


def build_dataset(
    latents_norm: np.ndarray,
    mask: np.ndarray,
    cond: dict[str, torch.Tensor],
    index: np.ndarray,
) -> dict[str, torch.Tensor]:
    """A dict-of-tensors dataset for `fit/trainer.py`: x `[B, L, Z]`, mask `[B, L]`, cond.<name>."""
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
# Configs and the fit
# ---------------------------------------------------------------------------------------------


# A conditional denoiser also has to learn how the latents depend on the condition, and after
# 2000 steps its validation loss was still falling. With 4000 steps, samples
# conditioned on the test trials' angles decoded 1.12x, 1.19x and 0.97x the real trials' error
# on 400, 600 and 1000 fixed-length and 1.21x on 800 variable-length reach trials, against
# 1.17x, 1.24x, 1.11x and 1.41x (`python bench/quality_pipeline_conditions.py --beds
# reach400,reach600,reach1000,reachvar800`).
CONDITIONAL_MIN_STEPS = 4000


def resolve_diffusion_configs(
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> tuple[DiffusionConfig, TrainConfig]:
    """defaults < preset < config file < flags, split into the model and the training config.

    An explicit `epochs` drops the preset's step floor (`min_steps`) unless the config file
    sets one; the stop rule (`patience`) still applies. A conditional model gets a floor of at
    least `CONDITIONAL_MIN_STEPS` where the preset has one, unless the config file sets it."""
    overrides = overrides or {}
    implied = {"min_steps": 0} if overrides.get("epochs") is not None else {}
    dcfg, tcfg = resolve_configs(
        (DiffusionConfig, TrainConfig),
        PRESETS,
        preset or DEFAULT_PRESET,
        config_file,
        overrides,
        base=TRAIN_DEFAULTS,
        implied=implied,
    )
    floor_given = bool(implied) or "min_steps" in load_config_file(config_file)
    if dcfg.conditions and tcfg.min_steps > 0 and not floor_given:
        tcfg = dataclasses.replace(tcfg, min_steps=max(tcfg.min_steps, CONDITIONAL_MIN_STEPS))
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
    from ldns_cli.nn.autoencoder import infer

    train, val, _ = split_masks(data, config.val_fraction, seed)
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


def train_diffusion(
    data: SpikeData,
    models_dir: str | Path,
    config: DiffusionConfig,
    train_config: TrainConfig,
    device: str = "cpu",
    resume: bool = False,
    resume_epochs: int | None = None,
    resume_calibration_trials: int | None = None,
) -> tuple[FitResult, Path]:
    """Train the denoiser on `data`'s latents under the AE in `models_dir`; write the checkpoint.

    Returns the trainer's result and the checkpoint path. With `resume`, the existing checkpoint's
    configs, statistics and condition specs are used; `resume_epochs` changes the epoch count.
    """
    from ldns_cli.store import load_autoencoder

    folder = Path(models_dir)
    ae, ae_ckpt = load_autoencoder(folder, device)
    check_data_matches(ae_ckpt.fingerprint, data.fingerprint(), "autoencoder")
    path = diffusion_path(folder)
    previous: Checkpoint | None = None
    stats = specs = None
    if resume:
        previous = load_checkpoint(path, "diffusion", fit_command="ldns fit-diffusion DATA")
        check_belongs_to_ae(previous.fingerprint, ae_ckpt, folder)
        config = config_from_dict(DiffusionConfig, previous.config["diffusion"], str(path))
        train_config = config_from_dict(TrainConfig, previous.config["train"], str(path))
        if resume_epochs is not None:
            train_config = dataclasses.replace(train_config, epochs=resume_epochs)
        if resume_calibration_trials is not None:  # calibration follows training: may change
            config = dataclasses.replace(config, calibration_trials=resume_calibration_trials)
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
            "train_lengths": _length_histogram(lat.mask[lat.train].sum(axis=1)),
            "n_val": int(lat.val.sum()),
            "data_fingerprint": data.fingerprint(),
        },
        # the denoiser's regression error in normalised-latent units (MSE or smooth L1)
        loss_name="denoising_loss_per_latent_bin",
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
    if not result.interrupted and config.condition_gain and lat.specs and dist.is_main():
        assert result.checkpoint is not None
        add_condition_gain(result.checkpoint, data, ae, lat, device)
        save_checkpoint(path, result.checkpoint)
    return result, path


def add_condition_gain(
    ckpt: Checkpoint, data: SpikeData, ae: torch.nn.Module, lat: LatentData, device: str
) -> dict[str, Any]:
    """Fit the conditions' rate gain on the training trials, choose it on the validation trials
    (`fit/condition_gain.py`) and store it in `ckpt` when kept; the caller saves. Returns the
    record (also `ckpt.extra["condition_gain"]`)."""
    from ldns_cli.nn.autoencoder import infer

    for name in [n for n in ckpt.tensors if n.startswith(GAIN_PREFIX + ".")]:
        del ckpt.tensors[name]  # a refit replaces the gain of an earlier fit
    train, val = data.select(lat.train), data.select(lat.val)
    _, train_rates = infer(ae, train, device=device)  # [B, L, N]
    _, val_rates = infer(ae, val, device=device)
    gain, record = fit_condition_gain(
        train,
        val,
        train_rates,
        val_rates,
        lat.specs,
        {k: v[lat.train] for k, v in lat.values.items()},
        {k: v[lat.val] for k, v in lat.values.items()},
    )
    if gain is not None:
        ckpt.tensors.update(gain.tensors())
    ckpt.extra["condition_gain"] = record
    return record


def _length_histogram(lengths: np.ndarray) -> dict[str, list[int]]:
    """Training trial lengths as {"bins": [...], "trials": [...]}: `sample` draws from it when
    no length is given."""
    bins, trials = np.unique(np.asarray(lengths, dtype=np.int64), return_counts=True)
    return {"bins": bins.tolist(), "trials": trials.tolist()}


def add_calibration(
    ckpt: Checkpoint,
    lat: LatentData,
    n_trials: int,
    seed: int,
    device: torch.device | str,
    sampler: str = DEFAULT_SAMPLER,
    steps: int | None = None,
) -> list[dict[str, Any]]:
    """Fit the latent calibrations of the model in `ckpt` for one sampler setting (see
    `calibration.py`): at W = 1, and for a conditional model at each weight of the guidance
    grid. They replace the setting's earlier ones, next to those of other settings.

    Returns their summaries, W = 1's first (also in `ckpt.extra["latent_calibration"]`); the
    caller saves.
    """
    from ldns_cli.fit.checks import GUIDANCE_GRID  # the weights the guidance choice samples at

    model = diffusion_from_checkpoint(ckpt, device)  # calibrations are never applied in the fit
    fitted = fit_latent_calibrations(
        model, lat.latents, lat.mask, lat.train, lat.values, n_trials, seed, device, sampler,
        steps, guidances=GUIDANCE_GRID,
    )  # fmt: skip
    setting = (fitted[0][0].sampler, fitted[0][0].steps)
    records = dict(ckpt.extra.get("latent_calibration", {}))
    for key, cal in load_calibrations(ckpt.tensors).items():
        if (cal.sampler, cal.steps) == setting:  # a refit replaces every weight of the setting
            for name in cal.tensors():
                del ckpt.tensors[name]
            records.pop(key, None)
    for cal, summary in fitted:
        ckpt.tensors.update(cal.tensors())
        records[cal.key] = summary
    ckpt.extra["latent_calibration"] = records
    return [summary for _, summary in fitted]


def calibrate_diffusion(
    data: SpikeData,
    models_dir: str | Path,
    n_trials: int,
    seed: int,
    device: str = "cpu",
    sampler: str = DEFAULT_SAMPLER,
    steps: int | None = None,
) -> tuple[list[dict[str, Any]], Path]:
    """Add (or refit) the latent calibrations of an existing diffusion model for one sampler
    setting, without training. Returns their summaries (W = 1's first) and the file.

    For checkpoints fitted before calibration existed, for another sampler setting, or to change
    `n_trials`. Uses the checkpoint's own normalisation statistics and condition specs; writes the
    file in place.
    """
    from ldns_cli.store import load_autoencoder

    folder = Path(models_dir)
    ae, ae_ckpt = load_autoencoder(folder, device)
    check_data_matches(ae_ckpt.fingerprint, data.fingerprint(), "autoencoder")
    path = diffusion_path(folder)
    ckpt = load_checkpoint(path, "diffusion", fit_command="ldns fit-diffusion DATA")
    check_belongs_to_ae(ckpt.fingerprint, ae_ckpt, folder)
    config = config_from_dict(DiffusionConfig, ckpt.config["diffusion"], str(path))
    stats = (ckpt.extra["latent_mean"], ckpt.extra["latent_std"])
    specs = ckpt.extra.get("conditions", [])
    lat = prepare_latents(data, ae, config, device, seed, stats=stats, specs=specs)
    if not lat.train.any():
        raise LdnsError("no training trials", "the data's split labels hold no 'train' trials")
    summaries = add_calibration(ckpt, lat, n_trials, seed, device, sampler, steps)
    save_checkpoint(path, ckpt)
    return summaries, path


CALIBRATION_SEED_STREAM = 7919  # keeps calibration draws apart from seeds a user samples with


def pick_calibration_trials(
    train_index: np.ndarray, n_trials: int, seed: int
) -> tuple[np.ndarray, int]:
    """Which training trials lend their lengths and conditions to the calibration samples.

    Returns (trial indices `[n]`, generator seed for the samples). Without replacement while the
    training set is large enough, so a small data set is covered evenly.
    """
    rng = np.random.default_rng([CALIBRATION_SEED_STREAM, int(seed)])
    replace = n_trials > len(train_index)
    picked = np.sort(rng.choice(train_index, size=n_trials, replace=replace))
    return picked, int(rng.integers(0, 2**31 - 1))


def pick_paired_trials(n_trials: int, seed: int) -> np.ndarray:
    """Positions into the calibration trials (`pick_calibration_trials`) that are drawn again at
    each further guidance weight `[min(GUIDED_CALIBRATION_TRIALS, n_trials)]`, sorted; their own
    stream, so W = 1's draws stay as they are."""
    rng = np.random.default_rng([CALIBRATION_SEED_STREAM, int(seed), 1])
    size = min(GUIDED_CALIBRATION_TRIALS, n_trials)
    return np.sort(rng.choice(n_trials, size, replace=False))


def fit_latent_calibrations(
    model: DiffusionModel,
    latents: np.ndarray,
    mask: np.ndarray,
    train: np.ndarray,
    condition_values: dict[str, np.ndarray],
    n_trials: int,
    seed: int,
    device: torch.device | str,
    sampler: str = DEFAULT_SAMPLER,
    steps: int | None = None,
    batch_size: int = 128,
    guidances: Sequence[float] = (),
) -> list[tuple[LatentCalibration, dict[str, Any]]]:
    """Fit the per-channel calibrations of `model` (a `DiffusionModel` without calibration):
    at W = 1, and at each further guidance weight of `guidances` (conditional models).

    Args:
        model: the freshly trained diffusion model (EMA weights); its own calibration is ignored.
        latents: normalised latents of the recording `[B, L, Z]` (as the denoiser trained on).
        mask: valid bins `[B, L]`.
        train: training trials `[B]` bool (the target moments and the lengths/conditions drawn).
        condition_values: raw condition values of every trial, by name (`fit_condition_values`).
        n_trials: calibration samples to draw at W = 1.
        seed: fixes the trials picked and the samples.
        device: where the denoiser runs.
        sampler: the sampler setting calibrated (the map is applied only when sampling with it).
        steps: its steps (None: the sampler's default).
        batch_size: trials per network batch.
        guidances: further weights to calibrate (ignored without conditions; 1 is skipped):
            each from `GUIDED_CALIBRATION_TRIALS` of the W = 1 trials, drawn from the same
            noise and compared with their W = 1 draws (see `calibration.py`).

    Returns:
        [(calibration, JSON summary)], W = 1's first, then by weight.
    """
    from ldns_cli.diffusion.sampling import SampleSettings, chunks, sample_latents

    n_lat = latents.shape[-1]
    train_index = np.flatnonzero(train)
    target = MomentAccumulator(n_lat)
    target.add(latents[train_index], mask[train_index])  # exact moments: a constant channel keeps
    # std 0 here (diffusion.latent_stats puts 1 there, fit for dividing by, not for matching)
    picked, sample_seed = pick_calibration_trials(train_index, n_trials, seed)
    lengths = mask[picked].sum(axis=1).astype(np.int64)
    weights = sorted({float(w) for w in guidances} - {1.0}) if condition_values else []
    paired = pick_paired_trials(n_trials, seed)
    in_paired = np.isin(np.arange(n_trials), paired)

    def draw(guidance: float, positions: np.ndarray) -> tuple[MomentAccumulator, ...]:
        """Moments of draws at `guidance` for `picked[positions]`: all, and the paired ones."""
        settings = SampleSettings(
            sampler=sampler, steps=steps, seed=sample_seed, batch_size=batch_size,
            guidance=guidance, calibrate=False,
        )  # fmt: skip
        every, pair = MomentAccumulator(n_lat), MomentAccumulator(n_lat)
        for chunk in chunks(lengths[positions], batch_size):
            idx = positions[chunk]  # the trial's position seeds its noise: the same at each W
            conds = {name: v[picked[idx]] for name, v in condition_values.items()}
            x0, m = sample_latents(model, lengths[idx], conds, settings, device, idx)
            x0, m = x0.cpu().numpy(), m.cpu().numpy()
            every.add(x0, m)
            keep = in_paired[idx]
            pair.add(x0[keep], m[keep])
        return every, pair

    probe = SampleSettings(sampler=sampler, steps=steps)
    name, n_steps = probe.sampler, probe.resolved_steps()
    all_1, paired_1 = draw(1.0, np.arange(n_trials))
    (m_1, s_1), (m_t, s_t) = all_1.moments(), target.moments()
    out = [_calibration_and_summary((m_1, s_1), (m_t, s_t), name, n_steps, 1.0, n_trials, seed)]
    if weights:
        m_1p, s_1p = paired_1.moments()
        for w in weights:
            _, paired_w = draw(w, paired)
            m_wp, s_wp = paired_w.moments()
            # W = 1's moments moved by what the same draws change at W (paired: little noise)
            ratio = np.where(s_1p > 1e-8, s_wp / np.maximum(s_1p, 1e-8), 1.0)
            moved = (m_1 + (m_wp - m_1p), s_1 * ratio)
            out.append(
                _calibration_and_summary(moved, (m_t, s_t), name, n_steps, w, len(paired), seed)
            )
    return out


def _calibration_and_summary(
    sampled: tuple[np.ndarray, np.ndarray],
    target: tuple[np.ndarray, np.ndarray],
    sampler: str,
    steps: int,
    guidance: float,
    n_trials: int,
    seed: int,
) -> tuple[LatentCalibration, dict[str, Any]]:
    (m_s, s_s), (m_t, s_t) = sampled, target
    cal = LatentCalibration.from_moments(sampled, target, sampler, steps, guidance)
    summary = {
        "trials": int(n_trials),
        "seed": int(seed),
        "sampler": sampler,
        "steps": int(steps),
        "guidance": float(guidance),
        "sampled_mean": m_s.tolist(),
        "sampled_std": s_s.tolist(),
        "target_mean": m_t.tolist(),
        "target_std": s_t.tolist(),
        "std_ratio_min": float(np.min(s_s / np.maximum(s_t, 1e-8))),
        "std_ratio_max": float(np.max(s_s / np.maximum(s_t, 1e-8))),
        "max_abs_mean_shift": float(np.max(np.abs(m_s - m_t))),
    }
    return cal, summary


# ---------------------------------------------------------------------------------------------
# The stage: `ldns fit-diffusion` and `ldns_cli.fit_diffusion`
# ---------------------------------------------------------------------------------------------


@dataclass
class DiffusionFit:
    """What `fit_diffusion` did: the trainer's result and the checkpoint it wrote."""

    result: FitResult
    path: Path
    is_main: bool = True  # rank 0 (or a single process): the rank that writes and reports

    @property
    def interrupted(self) -> bool:
        return self.result.interrupted

    @property
    def calibrations(self) -> list[dict[str, Any]]:
        """Summaries of the latent calibrations stored with the model (see `calibration_text`)."""
        ckpt = self.result.checkpoint
        return list(ckpt.extra.get("latent_calibration", {}).values()) if ckpt else []


def calibration_text(summary: dict[str, Any]) -> str:
    """One line on a fitted latent calibration."""
    guidance = float(summary.get("guidance", 1.0))
    at = "" if guidance == 1.0 else f" at guidance W={guidance:g}, paired with their W = 1 draws"
    return (
        f"latent calibration on {summary['trials']} sampled trials ({summary['sampler']} "
        f"{summary['steps']} steps{at}): sampled std {summary['std_ratio_min']:.3f}-"
        f"{summary['std_ratio_max']:.3f} x the training latents', largest mean offset "
        f"{summary['max_abs_mean_shift']:.3f} sd; both corrected per channel at sampling"
    )


def fit_diffusion(
    data: SpikeData,
    folder: str | Path,
    *,
    conditions: Sequence[str] = (),
    preset: str | None = None,
    config: str | Path | None = None,
    cond_dropout: float | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    width: int | None = None,
    blocks: int | None = None,
    prediction: str | None = None,
    schedule: str | None = None,
    loss: str | None = None,
    ema_decay: float | None = None,
    kernel_bins: int | None = None,
    calibration_trials: int | None = None,
    condition_gain: bool | None = None,
    resume: bool = False,
    force: bool = False,
    device: str = "auto",
    seed: int | None = None,
    source: str = "",
) -> DiffusionFit:
    """Fit the denoiser on the frozen autoencoder in `folder` (the `fit-diffusion` stage).

    Settings resolve as defaults < `preset` (default "small") < `config` (a JSON file) < the
    keyword arguments. `conditions` names trial covariates or behaviour series of `data` to
    condition on. Writes `folder/diffusion.safetensors` (replacing a fitted one only with
    `force`), then samples `calibration_trials` latent trials and stores the latent calibration
    for the default sampler. A conditional model then fits the conditions' rate gain
    (`condition_gain`, default on; see `diffusion/condition_gain.py`). `resume` continues an
    interrupted fit with its saved settings (only `epochs` and `calibration_trials` may change).
    Runs under torchrun as one rank. `source` names the data in messages.
    """
    from ldns_cli.store import check_fit_target

    dev = dist.init(resolve_device(device))
    try:
        if not resume:
            check_fit_target(folder, "diffusion", force)
        overrides = {
            "epochs": epochs, "batch_size": batch_size, "lr": lr, "width": width,
            "blocks": blocks, "prediction": prediction, "schedule": schedule, "loss": loss,
            "ema_decay": ema_decay, "cond_dropout": cond_dropout, "seed": seed,
            "kernel_bins": kernel_bins, "calibration_trials": calibration_trials,
            "condition_gain": condition_gain,
            "conditions": tuple(conditions) if conditions else None,
        }  # fmt: skip
        if resume and (
            preset or config or width or blocks or conditions or kernel_bins is not None
        ):
            raise LdnsError(
                "--resume continues the saved model; its architecture and conditions are fixed",
                "drop --preset/--config/--width/--blocks/--condition/--kernel-bins, or fit anew",
            )
        dcfg, tcfg = resolve_diffusion_configs(preset, config, overrides)
        for name in dcfg.conditions:
            if name not in data.covariates and name not in data.behavior:
                found = sorted(data.covariates) + sorted(data.behavior)
                raise LdnsError(
                    f"{f'{source!r}' if source else 'the recording'} has no covariate or "
                    f"behaviour series '{name}'",
                    f"conditions available in this recording: {', '.join(found)}"
                    if found
                    else "this recording has none; fit without --condition",
                )
        cond_text = ", ".join(dcfg.conditions) or "none (unconditional)"
        if resume:  # the saved checkpoint's settings apply, not the defaults resolved above
            what = "resuming the saved denoiser with its own architecture and settings" + (
                f" to {epochs} epochs" if epochs else ""
            )
        else:
            what = (
                f"denoiser width {dcfg.width}, {dcfg.blocks} blocks, {dcfg.prediction}-prediction, "
                f"{dcfg.schedule} schedule, {dcfg.loss} loss; conditions: {cond_text}; "
                f"{tcfg.epochs} epochs of batch {tcfg.batch_size}"
            )
        info(
            f"fit-diffusion: {data.n_trials} trials, {data.n_bins} bins of "
            f"{data.bin_size_s * 1e3:g} ms; {what}; device {dev}"
        )
        result, path = train_diffusion(
            data,
            folder,
            dcfg,
            tcfg,
            dev,
            resume=resume,
            resume_epochs=epochs,
            resume_calibration_trials=calibration_trials,
        )
        outcome = DiffusionFit(result, path, is_main=dist.is_main())
        if result.interrupted:
            return outcome
        if dist.is_main():
            val = f", best validation loss {result.best_val:.4f}" if result.best_val else ""
            info(
                f"saved {path} (best epoch {result.best_epoch}/{result.epochs_done}{val}, "
                f"{result.train_seconds:.0f} s); {result.stop_reason}"
            )
            for summary in outcome.calibrations:
                info(calibration_text(summary))
            gain_record = (
                result.checkpoint.extra.get("condition_gain") if result.checkpoint else None
            )
            if gain_record:
                info(describe_gain(gain_record))
            if result.checkpoint is not None and result.checkpoint.extra.get("conditions"):
                _condition_checks(data, folder, result.checkpoint, path, dev)
        dist.barrier()
        return outcome
    finally:
        dist.shutdown()


def _condition_checks(
    data: SpikeData, folder: str | Path, ckpt: Checkpoint, path: Path, device: str
) -> None:
    """Stage checks of the model's conditions and the measured guidance weight (`fit.checks`),
    printed and stored in the checkpoint (rank 0, after training and calibration)."""
    from ldns_cli.fit.checks import (
        GAINED_LABELS,
        STAGE_LABELS,
        autoencoder_checks,
        describe_guidance,
        diffusion_checks,
    )
    from ldns_cli.scoring.conditions import describe_checks
    from ldns_cli.store import load_models

    seed = int(ckpt.config["train"].get("seed", 0))
    val_fraction = float(ckpt.config["diffusion"].get("val_fraction", 0.1))
    train_mask, val_mask, _ = split_masks(data, val_fraction, seed)
    if not val_mask.any():
        info("no validation trials: the condition checks and guidance are not measured")
        return
    train, val = data.select(train_mask), data.select(val_mask)
    models = load_models(folder, device)
    names = [str(c["name"]) for c in models.diffusion.conditions]
    info(
        f"checking the conditions on {val.n_trials} validation trials and choosing the guidance "
        "weight (sampling at each weight)"
    )
    ae_checks = autoencoder_checks(
        models.ae,
        train,
        val,
        device,
        seed,
        names,
        observation=models.observation,
        condition_gain=models.diffusion.condition_gain,
    )
    checks, guidance = diffusion_checks(models, train, val, ae_checks, device, seed)
    if not guidance:
        return
    ckpt.extra["condition_checks"] = checks
    ckpt.extra["guidance"] = guidance
    save_checkpoint(path, ckpt)
    for line in describe_guidance(guidance):
        info(line)
    gained = models.diffusion.condition_gain is not None  # the rates the model samples from
    for line in describe_checks(checks, GAINED_LABELS if gained else STAGE_LABELS):
        info(line)


def calibrate_only(
    data: SpikeData,
    folder: str | Path,
    *,
    sampler: str | None = None,
    steps: int | None = None,
    calibration_trials: int | None = None,
    seed: int | None = None,
    device: str = "auto",
) -> tuple[list[dict[str, Any]], Path] | None:
    """Add or refit the latent calibrations of the fitted model in `folder` for one sampler
    setting, without training. A conditional model's calibrations at the default setting are
    what its guidance curve samples with, so the condition checks and the guidance weight are
    measured again. Returns (summaries, path) on rank 0, None on other ranks."""
    from ldns_cli.diffusion.samplers import resolve_sampler_name
    from ldns_cli.diffusion.sampling import SampleSettings

    n = DiffusionConfig.calibration_trials if calibration_trials is None else calibration_trials
    if n < 1:
        raise LdnsError(f"--calibration-trials must be >= 1 here, got {n}", "e.g. 1000")
    name = resolve_sampler_name(sampler or DEFAULT_SAMPLER)
    dev = dist.init(resolve_device(device))
    try:
        if not dist.is_main():
            return None
        summaries, path = calibrate_diffusion(
            data, folder, n, 0 if seed is None else seed, dev, name, steps
        )
        info(f"updated {path}")
        for summary in summaries:
            info(calibration_text(summary))
        default = SampleSettings()  # the setting the condition checks sample with
        ckpt = load_checkpoint(path, "diffusion", fit_command="ldns fit-diffusion DATA")
        calibrated = (summaries[0]["sampler"], summaries[0]["steps"])
        if ckpt.extra.get("conditions") and calibrated == (
            resolve_sampler_name(default.sampler),
            default.resolved_steps(),
        ):
            _condition_checks(data, folder, ckpt, path, dev)
        return summaries, path
    finally:
        dist.shutdown()
