"""The noise process: β schedules, `ScheduleConfig` and `NoiseSchedule`.

The schedule is kept apart from the network and from the samplers (diffusers' scheduler shape):
training uses `add_noise` and `training_target`, the samplers in `diffusion.samplers` use the
ᾱ lookups, `split_model_output` and `posterior_mean_variance`.

Notation (Ho et al. 2020, "DDPM"; Salimans & Ho 2022, "v-prediction"):
    ᾱ_t = alphas_cumprod[t] for the integer training timesteps t = 0 .. T-1, ᾱ_{-1} := 1 (data),
    x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε,                  (forward process, DDPM eq. 4)
    v   = √ᾱ_t ε - √(1-ᾱ_t) x_0.
The β schedule and every coefficient are computed in float64 and only the product with the
sample is done in the sample's dtype, so fp32 sampling is not limited by fp32 ᾱ round-off near
t = 0 (where 1 - ᾱ ≈ 1e-4).

Typical use:
    schedule = NoiseSchedule(ScheduleConfig())                       # the paper's process
    x_t = schedule.add_noise(x0, noise, t)                           # training
    loss = mse(model(x_t, t), schedule.training_target(x0, noise, t))
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch

from ldns_cli.core.errors import LdnsError

PREDICTION_TYPES = ("epsilon", "v_prediction")
BETA_SCHEDULES = ("linear", "cosine")


class ScheduleError(LdnsError, ValueError):
    """A bad schedule or sampler setting: an `LdnsError` for the CLI, a `ValueError` for code."""


def _choice_error(what: str, value: Any, allowed: tuple[str, ...]) -> ScheduleError:
    return ScheduleError(f"unknown {what} '{value}'", f"choose one of: {', '.join(allowed)}")


# ---------------------------------------------------------------------------------------------
# β schedules and the schedule config
# ---------------------------------------------------------------------------------------------


def linear_betas(
    num_train_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02
) -> torch.Tensor:
    """β_t evenly spaced from `beta_start` to `beta_end` (DDPM; the paper's 1e-4..0.02, T=1000).

    Returns:
        `torch.float64` tensor [T].
    """
    return torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)


def cosine_alpha_bar(u: torch.Tensor, s: float = 0.008) -> torch.Tensor:
    """Nichol & Dhariwal (2021) eq. 17 without the f(0) normalisation: cos²((u + s)/(1 + s)·π/2).

    `u` is continuous time in [0, 1]; the small offset `s` keeps β_0 from being vanishingly small.
    """
    return torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2


def cosine_betas(
    num_train_timesteps: int, s: float = 0.008, max_beta: float = 0.999
) -> torch.Tensor:
    """β_t = 1 - ᾱ((t+1)/T)/ᾱ(t/T) from the cosine ᾱ, capped at `max_beta` (Nichol & Dhariwal).

    The cap only bites at the last few steps, where ᾱ → 0; without it β_{T-1} = 1 and every
    later quantity divides by zero. Uncapped steps telescope: ᾱ_t = ᾱ((t+1)/T)/ᾱ(0).

    Returns:
        `torch.float64` tensor [T].
    """
    t = torch.arange(num_train_timesteps, dtype=torch.float64)
    ratio = cosine_alpha_bar((t + 1) / num_train_timesteps, s) / cosine_alpha_bar(
        t / num_train_timesteps, s
    )
    return torch.clamp(1 - ratio, max=max_beta)


@dataclass(frozen=True)
class ScheduleConfig:
    """The noise process a denoiser is trained with; saved with its weights."""

    num_train_timesteps: int = 1000  # T: integer timesteps 0..T-1 (the paper's 1000)
    beta_schedule: str = "linear"  # "linear" (the paper's) or "cosine" (Nichol & Dhariwal)
    beta_start: float = 1e-4  # linear schedule only: β_0
    beta_end: float = 0.02  # linear schedule only: β_{T-1}
    prediction_type: str = "epsilon"  # what the network outputs: "epsilon" or "v_prediction"

    def __post_init__(self) -> None:
        if self.beta_schedule not in BETA_SCHEDULES:
            raise _choice_error("beta schedule", self.beta_schedule, BETA_SCHEDULES)
        if self.prediction_type not in PREDICTION_TYPES:
            raise _choice_error("prediction type", self.prediction_type, PREDICTION_TYPES)
        if not isinstance(self.num_train_timesteps, int) or self.num_train_timesteps < 2:
            raise ScheduleError(
                f"num_train_timesteps must be an integer ≥ 2, got {self.num_train_timesteps!r}",
                "the paper uses 1000",
            )
        if not (0 < self.beta_start < self.beta_end < 1):
            raise ScheduleError(
                f"need 0 < beta_start < beta_end < 1, got {self.beta_start}, {self.beta_end}",
                "the paper uses beta_start=1e-4, beta_end=0.02",
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ScheduleConfig:
        """Rebuild from `to_dict()` output; unknown keys are an error (`core.config`'s rule)."""
        from ldns_cli.core.config import config_from_dict

        return config_from_dict(cls, values, source="schedule config")


# ---------------------------------------------------------------------------------------------
# The forward process
# ---------------------------------------------------------------------------------------------


def _broadcast(coef: torch.Tensor, like: torch.Tensor) -> torch.Tensor | float:
    """float64 [B] coefficients -> like.dtype, shaped [B, 1, ...] to broadcast over `like`.

    A 0-d coefficient (one timestep for the whole batch, as in sampling) becomes a Python float,
    so no small tensor is copied to the device at every step.
    """
    if coef.ndim == 0:
        return float(coef)
    coef = coef.to(device=like.device, dtype=like.dtype)
    return coef.reshape(coef.shape[0], *([1] * (like.ndim - 1)))


class NoiseSchedule:
    """β_t, ᾱ_t and the conversions between x_0, ε and v for one `ScheduleConfig`.

    All tables are `torch.float64` on the CPU; lookups move the (small) coefficients to the
    sample's device and dtype, so one schedule serves every device.

    Attributes:
        config: the `ScheduleConfig`.
        betas, alphas, alphas_cumprod: float64 [T].
        num_train_timesteps: T.
        prediction_type: "epsilon" or "v_prediction".
    """

    def __init__(self, config: ScheduleConfig | None = None) -> None:
        self.config = config or ScheduleConfig()
        T = self.config.num_train_timesteps
        if self.config.beta_schedule == "linear":
            self.betas = linear_betas(T, self.config.beta_start, self.config.beta_end)
        else:
            self.betas = cosine_betas(T)
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        # lookup table with ᾱ_{-1} = 1 appended, so index -1 means "the data"
        self._alphas_cumprod_ext = torch.cat([self.alphas_cumprod, self.alphas_cumprod.new_ones(1)])
        self.num_train_timesteps = T
        self.prediction_type = self.config.prediction_type

    def __repr__(self) -> str:
        return f"NoiseSchedule({self.config})"

    # -- lookups ------------------------------------------------------------------------------

    def alpha_cumprod(self, t: int | torch.Tensor) -> torch.Tensor:
        """ᾱ_t in float64 for integer t in [-1, T-1]; t = -1 means "the data" (ᾱ = 1).

        Args:
            t: an int, a 0-d or a [B] integer tensor (any device).
        Returns:
            float64 tensor shaped like `t`, on the CPU.
        """
        t64 = torch.as_tensor(t).to("cpu", torch.long)
        if bool(((t64 < -1) | (t64 >= self.num_train_timesteps)).any()):
            raise ScheduleError(
                f"timestep out of range: {t64.tolist()}",
                f"timesteps must lie in 0..{self.num_train_timesteps - 1}",
            )
        return self._alphas_cumprod_ext[t64]

    def snr(self, t: int | torch.Tensor) -> torch.Tensor:
        """Signal-to-noise ratio ᾱ_t/(1-ᾱ_t), float64."""
        a = self.alpha_cumprod(t)
        return a / (1 - a)

    def half_log_snr(self, t: int | torch.Tensor) -> torch.Tensor:
        """λ_t = log(√ᾱ_t/√(1-ᾱ_t)), DPM-Solver's time variable, float64 (t ≥ 0)."""
        a = self.alpha_cumprod(t)
        return 0.5 * (torch.log(a) - torch.log1p(-a))

    def sample_timesteps(
        self, batch_size: int, generator: torch.Generator | None, device: torch.device | str
    ) -> torch.Tensor:
        """Training timesteps t ~ U{0..T-1}, one per sample (the paper's), long [B] on `device`."""
        gen_device = generator.device if generator is not None else torch.device("cpu")
        t = torch.randint(
            0, self.num_train_timesteps, (batch_size,), generator=generator, device=gen_device
        )
        return t.to(device)

    # -- forward process and targets ----------------------------------------------------------

    def add_noise(
        self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: int | torch.Tensor
    ) -> torch.Tensor:
        """x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε (DDPM eq. 4), per-sample t.

        Args:
            original_samples: x_0 [B, ...].
            noise: ε, same shape.
            timesteps: int or long [B].
        Returns:
            x_t, same shape and dtype as `original_samples`.
        """
        a = self.alpha_cumprod(timesteps)
        x0 = original_samples
        return _broadcast(a.sqrt(), x0) * x0 + _broadcast((1 - a).sqrt(), x0) * noise

    def get_velocity(
        self, sample: torch.Tensor, noise: torch.Tensor, timesteps: int | torch.Tensor
    ) -> torch.Tensor:
        """v = √ᾱ_t ε - √(1-ᾱ_t) x_0 (Salimans & Ho 2022), where `sample` is x_0."""
        a = self.alpha_cumprod(timesteps)
        return _broadcast(a.sqrt(), sample) * noise - _broadcast((1 - a).sqrt(), sample) * sample

    def training_target(
        self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: int | torch.Tensor
    ) -> torch.Tensor:
        """What the network should output at x_t: ε ("epsilon") or v ("v_prediction")."""
        if self.prediction_type == "epsilon":
            return noise
        return self.get_velocity(original_samples, noise, timesteps)

    def min_snr_weight(self, timesteps: torch.Tensor, gamma: float = 5.0) -> torch.Tensor:
        """Per-sample loss weight of Min-SNR-γ (Hang et al. 2023), for the configured target.

        An optional extra (not the paper's): it equalises the loss's emphasis across noise levels.
        Weight = min(SNR, γ)/SNR for ε-prediction and min(SNR, γ)/(SNR+1) for v-prediction.
        Returns float32 [B] on `timesteps.device`.
        """
        snr = self.snr(timesteps)
        denom = snr if self.prediction_type == "epsilon" else snr + 1
        return (torch.clamp(snr, max=gamma) / denom).to(timesteps.device, torch.float32)

    def split_model_output(
        self, model_output: torch.Tensor, sample: torch.Tensor, timesteps: int | torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x̂_0, ε̂) from the network output at x_t, whatever the prediction type.

        ε:  x̂_0 = (x_t - √(1-ᾱ) ε̂)/√ᾱ        (DDPM eq. 15, no clipping: the paper clips nothing)
        v:  x̂_0 = √ᾱ x_t - √(1-ᾱ) v̂,  ε̂ = √(1-ᾱ) x_t + √ᾱ v̂
        """
        a = self.alpha_cumprod(timesteps)
        alpha, sigma = _broadcast(a.sqrt(), sample), _broadcast((1 - a).sqrt(), sample)
        if self.prediction_type == "epsilon":
            eps = model_output
            x0 = (sample - sigma * eps) / alpha
        else:
            x0 = alpha * sample - sigma * model_output
            eps = sigma * sample + alpha * model_output
        return x0, eps

    def posterior_mean_variance(
        self,
        pred_original_sample: torch.Tensor,
        sample: torch.Tensor,
        timestep: int,
        prev_timestep: int,
    ) -> tuple[torch.Tensor, float]:
        """Mean and variance of q(x_s | x_t, x_0) for s = `prev_timestep` < t = `timestep`.

        DDPM eqs. 6-7, written for a strided chain: with ᾱ_t, ᾱ_s and the effective one-jump
        β' = 1 - ᾱ_t/ᾱ_s (so α' = ᾱ_t/ᾱ_s), the posterior of the Markov chain t -> s is
            μ = √ᾱ_s β'/(1-ᾱ_t) x_0 + √α' (1-ᾱ_s)/(1-ᾱ_t) x_t,   β̃ = (1-ᾱ_s)/(1-ᾱ_t) β'.
        With s = t-1 this is exactly the paper's; β̃ is the "fixed_small" variance.

        Returns:
            (mean in the sample's dtype, variance as a Python float).
        """
        a_t = float(self.alpha_cumprod(timestep))
        a_s = float(self.alpha_cumprod(prev_timestep))
        beta_eff = 1 - a_t / a_s
        coef_x0 = math.sqrt(a_s) * beta_eff / (1 - a_t)
        coef_xt = math.sqrt(a_t / a_s) * (1 - a_s) / (1 - a_t)
        variance = (1 - a_s) / (1 - a_t) * beta_eff
        return coef_x0 * pred_original_sample + coef_xt * sample, variance
