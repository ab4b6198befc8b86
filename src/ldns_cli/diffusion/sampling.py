"""Sampling normalised latents from a diffusion model: the denoising loop and its settings.

`sample_loop` is the one unrolled denoising loop (pure noise -> x_0) that `sample_latents`, the
tests and the sampler benchmark share; it never sees a network, only a `denoise_fn` closure, and
drives any sampler from `diffusion.samplers`. `sample_latents` wraps it for a `DiffusionModel`:
per-trial seeded noise, the condition features, classifier-free guidance (`apply_guidance`), the
S4 kernel cache and the model's latent calibration. `SampleSettings` is what a run samples with
(recorded as provenance in the output file).

Typical use:
    sampler = make_sampler("dpm++", schedule, steps=20)
    x0 = sample_loop(lambda x, t: model(x, t), (B, L, Z), sampler, generator, device)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ldns_cli.core.errors import LdnsError
from ldns_cli.core.runtime import check_seed
from ldns_cli.diffusion.calibration import LatentCalibration, resolve_calibration
from ldns_cli.diffusion.model import DiffusionModel, condition_features
from ldns_cli.diffusion.samplers import (
    DEFAULT_SAMPLER,
    DEFAULT_STEPS,
    Sampler,
    StepOutput,
    make_sampler,
    randn_like,
    resolve_sampler_name,
)
from ldns_cli.diffusion.schedule import ScheduleError
from ldns_cli.nn.s4 import cached_kernels

DenoiseFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def apply_guidance(
    uncond_output: torch.Tensor, cond_output: torch.Tensor, scale: float
) -> torch.Tensor:
    """Classifier-free guidance (Ho & Salimans 2022): u + w·(c - u) on ε̂ or v̂ (both linear).

    w = 1 returns `cond_output` itself and w = 0 `uncond_output` (bit-exact, not recomputed),
    so "guidance 1 = the plain conditional model" holds exactly. Call it inside `denoise_fn`.
    """
    if scale == 1:
        return cond_output
    if scale == 0:
        return uncond_output
    return uncond_output + scale * (cond_output - uncond_output)


@torch.no_grad()
def sample_loop(
    denoise_fn: DenoiseFn,
    shape: tuple[int, ...],
    sampler: Sampler,
    generator: torch.Generator | None,
    device: torch.device | str,
    callback: Callable[[int, int, StepOutput], None] | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    initial_noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """The one unrolled denoising loop: pure noise -> x_0 (normalised latent space).

    Args:
        denoise_fn: `(x_t [B, ...], t_batch long [B]) -> model_output [B, ...]` (ε̂ or v̂, as the
            schedule's `prediction_type` says). Everything model-specific lives here: extra
            input channels (masks, velocity traces), the condition embedding, and classifier-free
            guidance, which the caller implements by combining its conditional and
            unconditional outputs, e.g. `u + w·(c - u)` (linear, so valid for ε and v alike).
            Anything expensive that does not depend on (x, t), e.g. S4 kernels and their FFTs,
            should be computed once before the loop and closed over.
        shape: of the sample, e.g. (B, L, Z).
        sampler: from `make_sampler`; its timesteps are reset here (so one sampler can be reused
            for many batches; multistep history never leaks between calls).
        generator: drives the starting noise and any ancestral noise; the same seed gives the
            same samples. A CPU generator may drive GPU sampling (noise is drawn on its device).
        device: where x and the network live.
        callback: called as `callback(i, t, step_output)` after each step (progress bars).
        dtype: of the sample.
        initial_noise: x_T to start from instead of drawing it (then only ancestral noise uses
            the generator).
    Returns:
        x_0 estimate, `shape`, on `device`.
    """
    if sampler.num_inference_steps is None:
        raise ScheduleError("sampler has no timesteps", "build it with make_sampler()")
    sampler.set_timesteps(sampler.num_inference_steps, device)
    if initial_noise is None:
        x = randn_like(torch.empty(shape, device=device, dtype=dtype), generator)
        x = x * sampler.init_noise_sigma
    else:
        x = initial_noise.to(device=device, dtype=dtype)
    for i, t in enumerate(sampler.timesteps.tolist()):
        t_batch = torch.full((shape[0],), t, device=device, dtype=torch.long)  # [B]
        model_output = denoise_fn(sampler.scale_model_input(x, t), t_batch)
        out = sampler.step(model_output, t, x, generator=generator)
        x = out.prev_sample
        if callback is not None:
            callback(i, t, out)
    return x


MAX_BINS_PER_CHUNK = 65_536  # trials x bins per network batch (bounds activation memory)

NOISE_STREAM, SPIKE_STREAM, ANCESTRAL_STREAM = 0, 1, 2


@dataclass(frozen=True)
class SampleSettings:
    """How to sample (recorded as provenance in the output file)."""

    sampler: str = DEFAULT_SAMPLER
    steps: int | None = None  # None: the sampler's default (DEFAULT_STEPS)
    guidance: float = 1.0  # classifier-free guidance weight W (1 = plain conditional)
    seed: int = 0
    batch_size: int = 64  # trials per network batch (also capped by MAX_BINS_PER_CHUNK)
    save_latents: bool = False
    save_rates: bool = False
    # apply the model's latent calibration (diffusion.calibration) when it has one
    calibrate: bool = True

    def resolved_steps(self) -> int:
        return self.steps or DEFAULT_STEPS[resolve_sampler_name(self.sampler)]

    def validate(self) -> None:
        """Clean errors for settings no sampler can run with."""
        check_seed(self.seed)
        if self.batch_size < 1:
            raise LdnsError(f"--batch-size must be >= 1, got {self.batch_size}", "e.g. 64")
        if not np.isfinite(self.guidance):
            raise LdnsError(
                f"--guidance must be a number, got {self.guidance}", "e.g. --guidance 2"
            )


def trial_generator(
    seed: int, stream: int, index: int, device: torch.device | str
) -> torch.Generator:
    """An independent generator for (seed, stream, trial index) (numpy SeedSequence mixing)."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, stream, int(index)]).generate_state(2)
    gen = torch.Generator(device=device)
    gen.manual_seed(int(state[0]) << 32 | int(state[1]) >> 1)
    return gen


def _calibration_weight(settings: SampleSettings, guided: bool) -> float:
    """The guidance weight the draws are made at: W only when conditions guide them."""
    return float(settings.guidance) if guided else 1.0


def active_calibration(
    model: DiffusionModel, settings: SampleSettings, guided: bool = True
) -> LatentCalibration | None:
    """The latent calibration `settings` sample with: the model's one for this sampler setting
    and guidance weight (`guided`: conditions are given, so the weight applies), or None
    (switched off, or none fitted for the setting)."""
    if not settings.calibrate:
        return None
    return model.calibration_for(
        resolve_sampler_name(settings.sampler),
        settings.resolved_steps(),
        _calibration_weight(settings, guided),
    )


def calibration_label(model: DiffusionModel, settings: SampleSettings, guided: bool = True) -> str:
    """Provenance of the latent calibration: 'applied (dpm++ 20 steps)', with the guidance
    weight it was fitted at when the model has calibrations for several ('applied (dpm++ 20
    steps, fitted at W=2)'), 'off' (asked), or 'none for <setting>' (the model has no
    calibration for this sampler setting)."""
    sampler, steps = resolve_sampler_name(settings.sampler), settings.resolved_steps()
    setting = f"{sampler} {steps} steps"
    if not settings.calibrate:
        return "off"
    found = resolve_calibration(
        model.calibrations, sampler, steps, _calibration_weight(settings, guided)
    )
    if found is None:
        return "none for " + setting
    weights = {
        c.guidance for c in model.calibrations.values() if (c.sampler, c.steps) == (sampler, steps)
    }
    return f"applied ({setting})" if weights == {1.0} else f"applied ({setting}, {found[1]})"


# ---------------------------------------------------------------------------------------------
# Sampling latents
# ---------------------------------------------------------------------------------------------


def chunks(lengths: np.ndarray, batch_size: int, max_bins: int = MAX_BINS_PER_CHUNK):
    """Trial index chunks, sorted by length, each at most `batch_size` trials and `max_bins` bins."""
    order = np.argsort(-lengths, kind="stable")
    i = 0
    while i < len(order):
        n_bins = int(lengths[order[i]])
        size = max(1, min(batch_size, max_bins // max(n_bins, 1)))
        yield order[i : i + size]
        i += size


@torch.no_grad()
def sample_latents(
    model: DiffusionModel,
    lengths: np.ndarray,
    conditions: dict[str, np.ndarray] | None,
    settings: SampleSettings,
    device: torch.device | str,
    index: np.ndarray | None = None,
    on_step: Callable[[int], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample normalised latents for one chunk of trials.

    Args:
        model: the loaded diffusion model (EMA weights).
        lengths: valid bins per trial `[B]`.
        conditions: checked raw values (see `check_conditions`), or None/{} for unconditional.
        settings: sampler, steps, guidance, seed.
        device: where the network runs.
        index: global trial indices `[B]` (seed the per-trial generators); default 0..B-1.
        on_step: called with the chunk size after each sampler step (progress).

    Returns:
        (normalised latents `[B, L_max, Z]` zero on padded bins, mask `[B, L_max]`).
    """
    index = np.arange(len(lengths)) if index is None else np.asarray(index)
    b, n_bins, n_lat = len(lengths), int(lengths.max()), model.denoiser.config.latent_dim
    mask = (
        torch.arange(n_bins, device=device)[None, :]
        < torch.as_tensor(lengths, device=device)[:, None]
    )
    noise = torch.zeros(b, n_bins, n_lat)
    for row, (i, n) in enumerate(zip(index, lengths, strict=True)):
        gen = trial_generator(settings.seed, NOISE_STREAM, i, "cpu")
        noise[row, :n] = torch.randn(int(n), n_lat, generator=gen)

    cond = None
    if conditions:
        cond = {}
        for spec in model.conditions:
            if spec["name"] in conditions:
                feats = condition_features(spec, conditions[spec["name"]])
                if spec["kind"] == "timeseries":
                    feats = feats[:, :n_bins]
                cond[spec["name"]] = feats.to(device)
    w = float(settings.guidance)
    net = model.denoiser

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if cond is None:
            return net(x, t, mask)
        if w == 1.0:
            return net(x, t, mask, cond)
        # one batched call for the conditional and unconditional halves
        both = net(
            torch.cat([x, x]),
            torch.cat([t, t]),
            torch.cat([mask, mask]),
            {k: torch.cat([v, v]) for k, v in cond.items()},
            torch.cat([torch.zeros(b, dtype=torch.bool), torch.ones(b, dtype=torch.bool)]).to(
                device
            ),
        )
        return apply_guidance(both[b:], both[:b], w)

    sampler = make_sampler(
        settings.sampler, model.schedule, settings.resolved_steps(), device=device
    )
    ancestral = trial_generator(settings.seed, ANCESTRAL_STREAM, int(index[0]), "cpu")
    callback = None if on_step is None else (lambda i, t, out: on_step(b))
    with cached_kernels(net):
        x0 = sample_loop(
            denoise, (b, n_bins, n_lat), sampler, ancestral, device, callback,
            initial_noise=noise.to(device),
        )  # fmt: skip
    calibration = active_calibration(model, settings, guided=cond is not None)
    if calibration is not None:
        x0 = calibration.apply(x0)  # the training latents' per-channel mean and std
    return x0 * mask[:, :, None].to(x0.dtype), mask
