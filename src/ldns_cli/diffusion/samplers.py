"""The samplers: one class per solver and the registry `make_sampler` builds them from.

Nothing here is an `nn.Module` or ever sees the denoiser: the caller evaluates the network and
hands its output to `Sampler.step` (diffusers' scheduler shape). The unrolled denoising loop that
drives a sampler is `diffusion.sampling.sample_loop`; the noise process and its coefficients are
`diffusion.schedule.NoiseSchedule`.

Notation (Ho et al. 2020, "DDPM"; Song et al. 2021, "DDIM"; Lu et al. 2022, "DPM-Solver++"):
    ᾱ_t = alphas_cumprod[t] for the integer training timesteps t = 0 .. T-1, ᾱ_{-1} := 1 (data),
    x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε,                  (forward process, DDPM eq. 4)
    v   = √ᾱ_t ε - √(1-ᾱ_t) x_0                   (Salimans & Ho 2022, "v-prediction").
Every coefficient comes from the schedule in float64; only the product with the sample is done in
the sample's dtype.

`SAMPLERS` is the one registry: a canonical name -> the sampler class, its default step count
and its aliases. Adding a sampler means one `Sampler` subclass and one registry line here;
`make_sampler`, `resolve_sampler_name`, `SAMPLER_NAMES` and `DEFAULT_STEPS` follow from it.

Typical use:
    sampler = make_sampler("dpm++", schedule, steps=20)
    x0 = sample_loop(lambda x, t: model(x, t), (B, L, Z), sampler, generator, device)
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ldns_cli.diffusion.schedule import NoiseSchedule, ScheduleError, _choice_error

TIMESTEP_SPACINGS = ("trailing", "linspace", "logsnr")


# ---------------------------------------------------------------------------------------------
# Samplers
# ---------------------------------------------------------------------------------------------


@dataclass
class StepOutput:
    """One sampler step: x at the next (lower) noise level and the current x̂_0 estimate."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor


def randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise shaped like `x`, drawn on the generator's device then moved.

    Drawing on the generator's device lets a CPU generator drive GPU sampling, so one seed gives
    the same noise whatever device the network runs on.
    """
    gen_device = generator.device if generator is not None else x.device
    noise = torch.randn(x.shape, generator=generator, device=gen_device, dtype=x.dtype)
    return noise.to(x.device)


def make_timesteps(
    num_inference_steps: int,
    num_train_timesteps: int,
    spacing: str,
    log_snr: Sequence[float] | None = None,
) -> list[int]:
    """Descending integer timesteps in 0..T-1 for an n-step sampler.

    "trailing" (Lin et al. 2024, "Common diffusion noise schedules and sample steps are flawed"):
        round(T - k·T/n) - 1 for k = 0..n-1, so the chain always starts at T-1 (pure noise) and
        the last model call is at T/n - 1. n = T gives every step T-1..0.
    "linspace": round(linspace(T-1, 0, n)), both ends included (diffusers' DDIM "linspace"), so
        the last model call is at t = 0, where x̂_0 is nearly exact. n = T again gives T-1..0.
    "logsnr" (DPM-Solver's "logSNR" step type): equal steps in λ = log(α/σ) from t = T-1 to
        t = 0 (`log_snr[t]` = λ_t, falling with t), each rounded to the nearest integer timestep
        and kept strictly descending, so the last model call is at t = 0.
    Each sampler's final step goes from the last timestep to the data (ᾱ = 1).
    """
    n, T = num_inference_steps, num_train_timesteps
    if spacing == "trailing":
        steps = [round(T - k * T / n) - 1 for k in range(n)]
    elif spacing == "linspace":
        steps = [T - 1] if n == 1 else [round((T - 1) * (1 - k / (n - 1))) for k in range(n)]
    elif spacing == "logsnr":
        if log_snr is None or len(log_snr) != T:
            raise ScheduleError("logsnr spacing needs λ_t for every timestep", "pass log_snr")
        lam_up = np.asarray(log_snr, dtype=np.float64)[::-1]  # λ ascending = t descending
        targets = np.linspace(lam_up[0], lam_up[-1], n) if n > 1 else lam_up[:1]
        steps = []
        for k, target in enumerate(targets):
            j = int(np.clip(np.searchsorted(lam_up, target), 1, T - 1))
            j = j - 1 if abs(lam_up[j - 1] - target) <= abs(lam_up[j] - target) else j
            hi = T - 1 if not steps else steps[-1] - 1  # strictly below the previous step
            steps.append(int(min(max(T - 1 - j, n - 1 - k), hi)))  # room for the rest
    else:
        raise _choice_error("timestep spacing", spacing, TIMESTEP_SPACINGS)
    assert all(a > b for a, b in itertools.pairwise(steps)), steps
    return steps


class Sampler:
    """Common contract (diffusers' scheduler shape).

    Call `set_timesteps(n, device)` (it also resets any multistep state), then for each `t` in
    `timesteps` evaluate the network on `scale_model_input(x, t)` and call
    `step(model_output, t, x, generator)`. `order` is the solver's order; `init_noise_sigma` the
    std of the starting noise. Samplers do not own the network and are not `nn.Module`s.
    `from_options` is how `make_sampler` builds one; a subclass with options of its own
    (DDIM's η) overrides it.
    """

    name = "base"
    order = 1
    init_noise_sigma = 1.0
    default_spacing = "trailing"

    def __init__(self, schedule: NoiseSchedule, timestep_spacing: str | None = None) -> None:
        self.schedule = schedule
        self.timestep_spacing = timestep_spacing or self.default_spacing
        if self.timestep_spacing not in TIMESTEP_SPACINGS:
            raise _choice_error("timestep spacing", self.timestep_spacing, TIMESTEP_SPACINGS)
        self.num_inference_steps: int | None = None
        self.timesteps = torch.empty(0, dtype=torch.long)
        self._prev: dict[int, int] = {}

    @classmethod
    def from_options(
        cls, schedule: NoiseSchedule, *, eta: float = 0.0, timestep_spacing: str | None = None
    ) -> Sampler:
        """Build from `make_sampler`'s options; `eta` is ignored by samplers without one."""
        return cls(schedule, timestep_spacing)

    def __len__(self) -> int:
        return self.schedule.num_train_timesteps

    def set_timesteps(
        self, num_inference_steps: int, device: torch.device | str | None = None
    ) -> None:
        """Fill the descending `timesteps` (long, on `device`) and reset per-run state."""
        T = self.schedule.num_train_timesteps
        check_steps(num_inference_steps, T)
        log_snr = None
        if self.timestep_spacing == "logsnr":
            log_snr = self.schedule.half_log_snr(torch.arange(T)).tolist()
        steps = make_timesteps(num_inference_steps, T, self.timestep_spacing, log_snr)
        self.num_inference_steps = num_inference_steps
        self.timesteps = torch.tensor(steps, dtype=torch.long, device=device)
        self._prev = dict(zip(steps, [*steps[1:], -1], strict=True))
        self._reset()

    def _reset(self) -> None:
        """Clear multistep state (nothing for one-step samplers)."""

    def previous_timestep(self, timestep: int | torch.Tensor) -> int:
        """The timestep this step lands on (-1 = the data)."""
        t = int(timestep)
        if t not in self._prev:
            if self.num_inference_steps is None:
                raise ScheduleError("set_timesteps() was not called", "call it before step()")
            raise ScheduleError(
                f"timestep {t} is not in this sampler's timesteps",
                "iterate over sampler.timesteps",
            )
        return self._prev[t]

    def scale_model_input(self, sample: torch.Tensor, timestep: int | torch.Tensor) -> torch.Tensor:
        """Identity: these samplers feed x_t to the network unscaled (diffusers contract)."""
        return sample

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> StepOutput:
        raise NotImplementedError

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(steps={self.num_inference_steps}, "
            f"spacing={self.timestep_spacing!r}, schedule={self.schedule.config})"
        )


class DDPMSampler(Sampler):
    """Ancestral DDPM (Ho et al. 2020, Algorithm 2), "fixed_small" variance β̃ (the paper's).

    With n = T steps this is the reference sampler exactly (x̂_0 unclipped). With n < T the
    chain jumps between the strided timesteps and each jump uses the true posterior of that
    jump (`NoiseSchedule.posterior_mean_variance`), so the marginals stay right; it then equals
    DDIM with η = 1.
    """

    name = "ddpm"

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> StepOutput:
        """x_t -> x_s: posterior mean from x̂_0 plus √β̃ noise (none on the final step).

        Args:
            model_output: the network's ε̂ or v̂ at (x_t, t), shape of `sample`.
            timestep: t, an int from `timesteps` (the same for the whole batch).
            sample: x_t.
            generator: drives the added noise.
        """
        t = int(timestep)
        s = self.previous_timestep(t)
        # 1. x̂_0 from the network output (DDPM eq. 15 for ε)
        x0, _ = self.schedule.split_model_output(model_output, sample, t)
        # 2. posterior q(x_s | x_t, x̂_0) (DDPM eqs. 6-7, strided)
        mean, variance = self.schedule.posterior_mean_variance(x0, sample, t, s)
        # 3. add noise; β̃ = 0 on the final step into the data
        if s >= 0 and variance > 0:
            mean = mean + math.sqrt(variance) * randn_like(sample, generator)
        return StepOutput(prev_sample=mean, pred_original_sample=x0)


class DDIMSampler(Sampler):
    """DDIM (Song, Meng & Ermon 2021, eq. 12): deterministic at η = 0, ancestral DDPM at η = 1."""

    name = "ddim"

    def __init__(
        self, schedule: NoiseSchedule, eta: float = 0.0, timestep_spacing: str | None = None
    ) -> None:
        super().__init__(schedule, timestep_spacing)
        if not eta >= 0:
            raise ScheduleError(f"eta must be ≥ 0, got {eta}", "0 = deterministic, 1 = DDPM")
        self.eta = float(eta)

    @classmethod
    def from_options(
        cls, schedule: NoiseSchedule, *, eta: float = 0.0, timestep_spacing: str | None = None
    ) -> Sampler:
        return cls(schedule, eta=eta, timestep_spacing=timestep_spacing)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> StepOutput:
        """x_s = √ᾱ_s x̂_0 + √(1-ᾱ_s-σ²) ε̂ + σ z, σ = η √((1-ᾱ_s)/(1-ᾱ_t)) √(1-ᾱ_t/ᾱ_s)."""
        t = int(timestep)
        s = self.previous_timestep(t)
        # 1. x̂_0 and ε̂ (DDIM eq. 9)
        x0, eps = self.schedule.split_model_output(model_output, sample, t)
        a_t = float(self.schedule.alpha_cumprod(t))
        a_s = float(self.schedule.alpha_cumprod(s))
        # 2. σ_t(η) (DDIM eq. 16); η = 1 gives the DDPM posterior variance
        sigma = self.eta * math.sqrt((1 - a_s) / (1 - a_t) * (1 - a_t / a_s))
        # 3. direction pointing to x_t and the new sample (DDIM eq. 12)
        prev = math.sqrt(a_s) * x0 + math.sqrt(max(1 - a_s - sigma**2, 0.0)) * eps
        if sigma > 0:
            prev = prev + sigma * randn_like(sample, generator)
        return StepOutput(prev_sample=prev, pred_original_sample=x0)


class DPMSolverPPSampler(Sampler):
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): multistep, data prediction, deterministic.

    Works in λ = log(√ᾱ/√(1-ᾱ)) (half log-SNR). With h = λ_s - λ_t and the data predictions
    D_t = x̂_0 at the current and previous timesteps, one step t -> s is
        x_s = (σ_s/σ_t) x_t - α_s (e^{-h} - 1) D,
    where D = D_t for the first-order (DDIM-equivalent) step and, for the second-order step,
    D = D_t + (D_t - D_prev)/(2 r) with r = h_prev/h (the "midpoint" form used by diffusers).
    The first step is first order (no history yet) and so is the final step into the data
    (σ_s = 0, h = ∞: the update is exactly x̂_0, and extrapolating from the history there is
    what diffusers' `lower_order_final` avoids). n steps = n network evaluations.

    Default spacing, for the linear β schedule (the paper's and every preset's), is "logsnr"
    (equal steps in λ, the DPM-Solver paper's choice; "trailing" for cosine), which ends
    with a model call at t = 0. With "trailing" the last x̂_0 is the network's posterior mean at
    t = T/n - 1 (σ ≈ 0.16 at 20 steps of the linear schedule), which shrinks every latent
    component weaker than that noise. With "trailing", a width-32 Lorenz denoiser gave latents
    whose high band held 0.56 of the AE latents' power, std 0.96; the shipped one (models/lorenz,
    width 64, 20 steps, 1000 samples) gives rates 2% low and a mean-ISI score of 0.21, against
    1.2% low and 0.14 with "logsnr", every other score equal or better. The price, on the exact
    denoiser for unit-variance Gaussian data: sample variance +2.9% at 20 steps against +0.3%
    with "trailing" (`python bench/bench_samplers.py`).
    "linspace" is much worse for this solver: its last two intervals are very unequal in λ
    (t ≈ 50 -> 0 -> data), so the 2M extrapolation overshoots (variance +24% at 20 steps).
    """

    name = "dpm++"
    order = 2

    def __init__(self, schedule: NoiseSchedule, timestep_spacing: str | None = None) -> None:
        # "logsnr" for the linear schedule only: the cosine schedule's λ runs out far at its ends,
        # so 10 of 20 equal-λ steps land at t ≥ 991 or t ≤ 3 (exact Gaussian denoiser, 20 steps:
        # variance +6.1% with "logsnr", -0.8% with "trailing")
        if timestep_spacing is None:
            linear = schedule.config.beta_schedule == "linear"
            timestep_spacing = "logsnr" if linear else "trailing"
        super().__init__(schedule, timestep_spacing)

    def _reset(self) -> None:
        self._prev_x0: torch.Tensor | None = None
        self._prev_lambda: float | None = None

    def _lambda(self, t: int) -> float:
        return float(self.schedule.half_log_snr(t))

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> StepOutput:
        """One multistep update; `generator` is unused (the solver is deterministic)."""
        t = int(timestep)
        s = self.previous_timestep(t)
        x0, _ = self.schedule.split_model_output(model_output, sample, t)
        if s < 0:
            # σ_s = 0: x_s = α_s D with α_s = 1, i.e. the current data prediction
            self._reset()
            return StepOutput(prev_sample=x0, pred_original_sample=x0)
        a_t = float(self.schedule.alpha_cumprod(t))
        a_s = float(self.schedule.alpha_cumprod(s))
        lam_t, lam_s = self._lambda(t), self._lambda(s)
        h = lam_s - lam_t
        # 1. the derivative estimate: D_t (first order) or the 2M correction
        if self._prev_x0 is None:
            d = x0
        else:
            r = (lam_t - self._prev_lambda) / h
            d = x0 + (x0 - self._prev_x0) / (2 * r)
        # 2. the exponential-integrator update (DPM-Solver++ eq. 8 / Algorithm 2)
        sigma_ratio = math.sqrt((1 - a_s) / (1 - a_t))
        prev = sigma_ratio * sample - math.sqrt(a_s) * math.expm1(-h) * d
        self._prev_x0, self._prev_lambda = x0, lam_t
        return StepOutput(prev_sample=prev, pred_original_sample=x0)


# ---------------------------------------------------------------------------------------------
# The registry and the factory
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SamplerEntry:
    """One registered sampler: its class, the step count it samples with when none is given, and
    other names it answers to (lower case)."""

    sampler: type[Sampler]
    default_steps: int
    aliases: tuple[str, ...] = ()


# canonical name (= the class's `name`) -> (class, default steps, aliases); error messages list
# the names in this order
SAMPLERS: dict[str, SamplerEntry] = {
    "ddpm": SamplerEntry(DDPMSampler, 1000),
    "ddim": SamplerEntry(DDIMSampler, 50),
    "dpm++": SamplerEntry(DPMSolverPPSampler, 20, ("dpmpp", "dpm-solver++", "dpmsolver++")),
}
DEFAULT_SAMPLER = "dpm++"  # what sampling and latent calibration use when no sampler is named

SAMPLER_NAMES = tuple(SAMPLERS)
DEFAULT_STEPS = {name: entry.default_steps for name, entry in SAMPLERS.items()}
SAMPLER_ALIASES = {alias: name for name, entry in SAMPLERS.items() for alias in entry.aliases}


def check_steps(steps: Any, num_train_timesteps: int) -> int:
    """Validate a step count: an integer in 1..T (LdnsError otherwise)."""
    if (
        isinstance(steps, bool)
        or not isinstance(steps, int)
        or not (1 <= steps <= num_train_timesteps)
    ):
        raise ScheduleError(
            f"steps must be an integer between 1 and {num_train_timesteps}, got {steps!r}",
            "e.g. --steps 20 for dpm++, 50 for ddim, 1000 for ddpm (the paper's)",
        )
    return steps


def resolve_sampler_name(name: str) -> str:
    """Canonical sampler name for `name` (case-insensitive; `dpmpp` is an alias of `dpm++`)."""
    key = str(name).strip().lower()
    key = SAMPLER_ALIASES.get(key, key)
    if key not in SAMPLERS:
        raise ScheduleError(
            f"unknown sampler '{name}'",
            f"choose one of: {', '.join(SAMPLER_NAMES)} (dpmpp is an alias of dpm++)",
        )
    return key


def make_sampler(
    name: str,
    schedule: NoiseSchedule,
    steps: int,
    *,
    eta: float = 0.0,
    timestep_spacing: str | None = None,
    device: torch.device | str | None = None,
) -> Sampler:
    """Build a sampler by name with its timesteps already set.

    Args:
        name: a registered name ("ddpm", "ddim" or "dpm++") or alias ("dpmpp"); see `SAMPLERS`.
        schedule: the `NoiseSchedule` the denoiser was trained with.
        steps: number of network evaluations, 1..T. DDPM with steps < T is the strided chain.
        eta: DDIM only (0 = deterministic).
        timestep_spacing: "trailing", "linspace" or "logsnr"; None = the sampler's default.
        device: where `timesteps` live.
    Raises:
        LdnsError (`ScheduleError`) for an unknown name or a bad step count.
    """
    entry = SAMPLERS[resolve_sampler_name(name)]
    check_steps(steps, schedule.num_train_timesteps)
    sampler = entry.sampler.from_options(schedule, eta=eta, timestep_spacing=timestep_spacing)
    sampler.set_timesteps(steps, device)
    return sampler
