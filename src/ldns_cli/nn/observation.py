"""Observation models: how spike counts are drawn from the decoded firing rates.

Two models share one interface, the `Observation` protocol, so sampling and evaluation code never
needs to know which one it holds (`kind` names it, for provenance and messages):

- `PoissonObservation`: s ~ Poisson(r), independent across bins and neurons (the plain LDNS).
- `SpikeHistoryObservation`: a per-neuron autoregressive GLM ("LDNS_sh", Kapoor et al. 2024)

      λ_{n,t} = softplus( Σ_{k=1..H} w_{n,k} s̃_{n,t−k} + a_n·softplus⁻¹(r_{n,t}) + b_n + c_{n,t} )
      s_{n,t} ~ min(Poisson(λ_{n,t}), max_count)   (or gamma-Poisson: over-dispersed counts)

  with s̃ the capped past counts (zero before bin 0) and c an optional low-rank coupling term
  between neurons (`coupling_rank` > 0; absent in the paper).

Stability. With `max_excitation` E set, the excitatory part of the history enters saturated:

      η = Σ_k w⁻_k s̃_{t−k} + E·tanh(Σ_k w⁺_k s̃_{t−k} / E) + a·softplus⁻¹(r) + b + c

  (w⁺/w⁻ the positive/negative parts of w). Past spikes can then raise the intensity to at most
  softplus(drive + E), about e^E times the history-free rate at low rates, whatever the weights
  and however many spikes came before: the free-running process cannot run away (its intensity
  is bounded by a fixed function of the input, so its mean is too), and small excitation is
  unchanged (tanh(x) ≈ x). A bound on the branching ratio Σ_k w⁺_k < 1 (softplus is
  1-Lipschitz) gives the same guarantee but clips real kernels: a refractory dip followed by a
  rebound, or a 5 ms burst kernel of 1.2 at lag 1, already sum above 1. The bound may differ per
  neuron (`set_excitation_bound`, E_n [N], chosen by `fit.history`'s dispersion matching from a
  few multiples of E): strongly bursting units need more room than the default gives, and the
  guarantee holds for any finite E_n. Checkpoints written before the bound existed have none
  (`max_excitation` None): only `max_count` stops a runaway.

History input. By default (`history_input` "spikes", the paper's model) the kernels filter the
past counts s̃. With "residuals" they filter the past counts' deviations from the rates,
x = s̃ − r, so that only departures from the decoder's rate feed back:

      η = Σ_k w_k (s̃_{t−k} − r_{t−k}) + a·softplus⁻¹(r) + b + c

  The decoder's rates are the spikes' conditional mean given the latents: they already carry the
  modulation that a neuron's own history adds to its input in the recording. Filtering raw
  counts adds it again once the model feeds on its own samples (refractoriness damps the shared
  modulation, self-excitation amplifies it); with a linear link, E[s] = r makes the residual
  feedback vanish on average, so the rates stay the free-running mean. Where the decoder's
  rates are smoother than the data's modulation (small recordings of latent dynamics), the
  raw-count feedback makes up for part of it, and "spikes" generates closer to held-out trials;
  the bound above still holds (Σ w⁺ x ≤ Σ w⁺ s̃, and Σ |w⁻| r is bounded by the input).

Over-dispersed counts. `set_count_dispersion(α)` draws neuron n's count in each bin from the
gamma-Poisson (negative binomial) with mean λ_{n,t} and variance λ + α_n·λ² instead of Poisson(λ):
a Poisson whose intensity is multiplied by a fresh mean-one gamma gain in every bin. It stands for
input fluctuations faster than the history kernel and the decoder's smooth rates resolve: in a
recurrent E/I network a unit's synaptic input changes from one 5 ms bin to the next, and its
counts vary more within a bin than any smooth rate gives (bin-wise variance/mean 1.17–1.25 in
`ldns simulate network` against 1.03–1.06 for Poisson or history draws from the decoder's rates).
A gain that is new in every bin adds that variance without adding correlation between bins, which
the kernels already match. α = 0 is Poisson; `fit.history` chooses α on free-running samples.
The log-likelihood stays exact (the pmf has a closed form).

Correlated counts. `set_count_correlation(R)` draws the neurons' counts of one bin through a
Gaussian copula: the uniforms that the inverse-CDF draw turns into counts are u = Φ(F·z) instead of
independent ones, z ~ N(0, I) fresh in every bin and F·Fᵀ = R a correlation matrix [N, N]. Each
neuron's u stays uniform and independent across bins, so every single-neuron law is unchanged
exactly (rates, Fano factors, ISIs, autocorrelations, and `log_prob`, which scores each neuron's
marginal); only the dependence between neurons within a bin changes. It stands for fast input
shared by particular pairs of units: in a recurrent E/I network the units a presynaptic spike
reaches fire together within a few milliseconds, a pair-specific correlation that the decoder's
low-dimensional rates do not carry and independent draws cannot give (the dichotomised-Gaussian
construction of correlated spike counts, Macke et al. 2009). `fit.history` estimates R from the
counts' covariance that the free-running samples miss.

Per-neuron choice. `set_selection(use_history, count_cap)` makes the neurons with
use_history = False plain Poisson(r) (w = 0, a = 1, b = 0, α = 0) and clamps every neuron's
samples at its `count_cap` (the most spikes the data ever shows in one of its bins);
`fit.history` picks both by comparing free-running samples with held-out trials.

Link choice. The authors feed `a·log r` into the softplus, so with w = 0, a = 1, b = 0 their model
gives softplus(log r) = log(1 + r) ≠ r, i.e. it does *not* contain plain Poisson(r). We feed the
rate through the inverse softplus instead: softplus⁻¹(r) = log(eʳ − 1) is exactly the decoder's
pre-softplus value (the AE outputs r = softplus(·)), and it equals log r + r/2 + O(r²), so for the
small per-bin rates of spiking data (r ≪ 1) it is the paper's regressor up to a small shift that
the bias absorbs. With w = 0, a = 1, b = 0 and no cap, λ = r exactly and the model *is*
Poisson(r). Fits start from that point, so a fitted history model can only improve on Poisson in
training likelihood.

Interface (all tensors on one device; legend B trials, L bins, N neurons):

- `kind`: "poisson" or "history", a class attribute.
- `log_prob(counts [B,L,N], rates [B,L,N], mask [B,L] | None) -> [B,L,N]`: per-element log
  probability in nats (the full log pmf, with the log s! term), 0 where `mask` is False. Sum it
  for a total. The history model scores under teacher forcing: each bin is conditioned on the
  observed past counts of the same trial. With a cap, counts ≥ cap are scored as the censored
  event {X ≥ cap}, the exact pmf of min(Poisson(λ), cap) (or of the gamma-Poisson). With a
  count correlation it is each neuron's marginal pmf: the copula's dependence within a bin is
  not scored.
- `mean(rates, counts=None) -> [B,L,N]`: expected counts. Poisson: `rates`. History: with
  `counts`, the exact conditional mean E[s_t | observed past] (teacher forcing); without, a
  deterministic mean-field approximation of the free-running mean (the recursion run with the
  expected count in place of each sample). The free-running mean has no closed form.
- `sample(rates [B,L,N], generator, lengths [B] | None) -> counts [B,L,N]`: float tensor holding
  whole numbers; bins at or beyond a trial's length are 0. `generator` is one `torch.Generator`,
  or a sequence of B generators, one per trial: then each trial's counts depend only on its own
  generator (not on the batch it is in or its padding), and the history model still runs one
  vectorised loop for the whole batch (per-trial uniforms, inverted to capped Poisson counts).
  Generators must live on the rates' device. The history model samples autoregressively; it
  starts H bins before bin 0 at the first bin's rates (a stationary start, see `_run`).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ldns_cli.core.errors import LdnsError

# rates are clamped here before softplus⁻¹ (log 0 = -inf would poison gradients and sums)
MIN_RATE = 1e-8
# `HistoryConfig.coupling_rank` "auto", and the rank it tries. On the E/I network bed (uncoupled:
# free-running test PSD score 0.26, Fano 0.26; Poisson PSD 0.19) rank 1 gave PSD 0.22-0.23 and
# Fano 0.27-0.29 over two seeds; rank 2 gave PSD 0.12-0.19 but Fano 0.32-0.37, and rank 4 (from
# a random start) PSD 0.09 with Fano 0.41 and population-count W1 0.13 against 0.05
# (python bench/quality_realism.py --beds network --coupling-rank R)
AUTO = "auto"
AUTO_COUPLING_RANK = 1
# what the history kernels filter (`history_input`): the past counts, or their deviations from
# the rates
SPIKES, RESIDUALS = "spikes", "residuals"
HISTORY_INPUTS = (SPIKES, RESIDUALS)
# HistoryConfig.count_correlation: AUTO, or the copula kept always (where the training trials
# show a repeatable deficit) or never
COPULA_ALWAYS, COPULA_NEVER = "always", "never"
COPULA_SETTINGS = (AUTO, COPULA_ALWAYS, COPULA_NEVER)


def kernel_input(capped: Tensor, rates: Tensor | None, history_input: str) -> Tensor:
    """What the history kernels filter (any shape): the capped counts, or with `history_input`
    "residuals" their deviations from the rates (which must then be given)."""
    if history_input == SPIKES:
        return capped
    if rates is None:
        raise ValueError("a history of residuals needs the rates")
    return capped - rates.to(capped.dtype)


def softplus_inverse(rates: Tensor) -> Tensor:
    """softplus⁻¹(r) = log(eʳ − 1), computed stably as r + log(1 − e⁻ʳ) (r clamped ≥ MIN_RATE)."""
    r = rates.clamp_min(MIN_RATE)
    if torch.is_grad_enabled() and r.requires_grad:
        return r + torch.log(-torch.expm1(-r))
    # the same operations in one buffer: on the free-running samplers' [256, 140, 1024] rates
    # a fresh tensor per step took twice as long (0.44 s against 0.22 s, 2 threads)
    out = torch.neg(r)
    out.expm1_().neg_().log_()
    return out.add_(r)


def poisson_log_pmf(counts: Tensor, lam: Tensor) -> Tensor:
    """log Poisson(counts; lam), elementwise, including −log(counts!)."""
    lam = lam.clamp_min(MIN_RATE)
    return counts * torch.log(lam) - lam - torch.lgamma(counts + 1.0)


def poisson_log_sf(k: int, lam: Tensor) -> Tensor:
    """log P(X ≥ k) for X ~ Poisson(lam), k ≥ 1 (the regularised lower incomplete gamma)."""
    lam = lam.clamp_min(MIN_RATE)
    kk = torch.full_like(lam, float(k))
    return torch.log(torch.special.gammainc(kk, lam).clamp_min(1e-38))


def capped_poisson_log_prob(counts: Tensor, lam: Tensor, max_count: int | None) -> Tensor:
    """log pmf of min(Poisson(lam), max_count) at `counts` (counts above the cap count as cap)."""
    if not max_count:
        return poisson_log_pmf(counts, lam)
    c = counts.clamp(max=float(max_count))
    at_cap = c >= max_count
    below = poisson_log_pmf(torch.where(at_cap, torch.zeros_like(c), c), lam)
    tail = poisson_log_sf(max_count, lam)
    return torch.where(at_cap, tail, below)


def capped_poisson_mean(lam: Tensor, max_count: int | None) -> Tensor:
    """E[min(X, cap)] = Σ_{j=1..cap} P(X ≥ j) for X ~ Poisson(lam); lam itself without a cap."""
    if not max_count:
        return lam
    lam = lam.clamp_min(MIN_RATE)
    j = torch.arange(1, max_count + 1, dtype=lam.dtype, device=lam.device)
    # [..., cap]
    return torch.special.gammainc(j.expand(*lam.shape, max_count), lam.unsqueeze(-1)).sum(-1)


# Over-dispersed counts. With a per-neuron count dispersion α ≥ 0 a bin's count is gamma-Poisson
# (negative binomial) with mean λ and variance λ + αλ²: Poisson(λ·g), g ~ Gamma(1/α, 1/α) fresh in
# every bin, so a bin holds more spikes than Poisson(λ) more often while its mean and every other
# bin are unchanged. α = 0 is Poisson(λ). The pmf is written so that α → 0 is continuous:
#   P(k) = λᵏ/k! · Π_{j<k}(1 + αj) · (1 + αλ)^−(k + 1/α),
#   P(k)/P(k−1) = λ(1 + α(k−1)) / (k(1 + αλ)),   P(0) = exp(−λ·log1p(αλ)/(αλ)).


def _log1p_over(x: Tensor) -> Tensor:
    """log1p(x)/x, with its limit 1 − x/2 near x = 0 (x ≥ 0)."""
    small = x < 1e-6
    return torch.where(small, 1.0 - 0.5 * x, torch.log1p(x) / torch.where(small, 1.0, x))


def gamma_poisson_log_pmf(counts: Tensor, lam: Tensor, alpha: Tensor) -> Tensor:
    """log P(counts) of the gamma-Poisson with mean `lam` and variance lam + alpha·lam²,
    elementwise (alpha broadcast, ≥ 0; alpha = 0 gives `poisson_log_pmf`)."""
    lam = lam.clamp_min(MIN_RATE)
    alpha = alpha.to(lam)
    x = alpha * lam
    lp = counts * (torch.log(lam) - torch.log1p(x)) - lam * _log1p_over(x)
    lp = lp - torch.lgamma(counts + 1.0)
    k_max = int(counts.max()) if counts.numel() else 0
    for j in range(1, k_max):  # Π_{j<k} (1 + αj)
        lp = lp + torch.log1p(alpha * j) * (counts > j)
    return lp


def _pmf_zero(lam64: Tensor, a: Tensor | None) -> Tensor:
    """P(X = 0), X Poisson (`a` None) or gamma-Poisson with dispersion `a` (float64)."""
    return torch.exp(-lam64 if a is None else -lam64 * _log1p_over(a * lam64))


def _pmf_next(p: Tensor, lam64: Tensor, a: Tensor | None, k: int) -> Tensor:
    """P(X = k) from p = P(X = k − 1), k ≥ 1 (float64)."""
    if a is None:
        return p * lam64 / k
    return p * lam64 * (1 + a * (k - 1)) / (k * (1 + a * lam64))


def _count_cdf(lam: Tensor, alpha: Tensor | None, k_max: int) -> Tensor:
    """P(X ≤ k) for k = 0..k_max−1, float64, [..., k_max] (X Poisson or gamma-Poisson)."""
    lam64 = lam.double().clamp_min(MIN_RATE)
    a = None if alpha is None else alpha.double()
    p = _pmf_zero(lam64, a)
    out = [p]
    for k in range(1, k_max):
        p = _pmf_next(p, lam64, a, k)
        out.append(out[-1] + p)
    return torch.stack(out, -1).clamp_max(1.0)


def copula_hermite(lam: Tensor, alpha: Tensor | None, caps: Tensor, order: int = 1) -> Tensor:
    """The Hermite coefficients c_1..c_order [order, ..., N] (float64) of counts min(X, cap_n)
    as functions of their copula normal z, X Poisson(lam) (or gamma-Poisson with `alpha` [N])
    and `caps` [N] each neuron's cap: the count is #{k < cap: z > z_k} with z_k = Φ⁻¹(P(X ≤ k)),
    so c_n = E[count·He_n(z)] = Σ_k φ(z_k)·He_{n−1}(z_k). Two counts whose normals correlate by
    ρ covary by Σ_n ρⁿ/n!·c_n,i·c_n,j (Mehler's expansion), ρ·c_1,i·c_1,j to first order."""
    k_max = int(caps.max())
    cdf = _count_cdf(lam, None if alpha is None else alpha.expand_as(lam), k_max)  # [..., N, K]
    z = torch.special.ndtri(cdf.clamp(1e-12, 1.0 - 1e-12))
    below = torch.arange(k_max, device=lam.device) < caps.to(lam.device)[:, None]  # [N, K]
    density = torch.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi) * below  # φ(z_k), 0 past the cap
    he_prev, he = torch.zeros_like(z), torch.ones_like(z)  # He_{-1} = 0, He_0 = 1
    out = []
    for n in range(order):
        out.append((density * he).sum(-1))
        he_prev, he = he, z * he - n * he_prev  # He_{n+1} = z·He_n − n·He_{n−1}
    return torch.stack(out)


def capped_count_log_prob(
    counts: Tensor, lam: Tensor, max_count: int | None, alpha: Tensor | None
) -> Tensor:
    """log pmf of min(X, max_count) at `counts`, X ~ Poisson(lam) (`alpha` None) or the
    gamma-Poisson with dispersion `alpha`."""
    if alpha is None:
        return capped_poisson_log_prob(counts, lam, max_count)
    if not max_count:
        return gamma_poisson_log_pmf(counts, lam, alpha)
    c = counts.clamp(max=float(max_count))
    at_cap = c >= max_count
    below = gamma_poisson_log_pmf(torch.where(at_cap, torch.zeros_like(c), c), lam, alpha)
    cdf = _count_cdf(lam, alpha.expand_as(lam), max_count)[..., -1]  # P(X ≤ cap − 1)
    tail = torch.log1p(-cdf).clamp_min(-87.0).to(lam.dtype)
    return torch.where(at_cap, tail, below)


def capped_count_mean(lam: Tensor, max_count: int | None, alpha: Tensor | None) -> Tensor:
    """E[min(X, cap)] = Σ_{j=1..cap} P(X ≥ j) (X as in `capped_count_log_prob`); lam without a
    cap (the gamma mixing keeps the mean)."""
    if alpha is None:
        return capped_poisson_mean(lam, max_count)
    if not max_count:
        return lam
    cdf = _count_cdf(lam, alpha.expand_as(lam), max_count)  # [..., cap]
    return (1.0 - cdf).sum(-1).to(lam.dtype)


def _valid(mask: Tensor | None, lengths: Tensor | None, shape: torch.Size, device) -> Tensor | None:
    """A bool [B, L, 1] validity mask from a [B, L] mask or [B] lengths (None if neither)."""
    if mask is not None:
        return mask.to(device=device, dtype=torch.bool).unsqueeze(-1)
    if lengths is not None:
        t = torch.arange(shape[1], device=device)
        return (t[None, :] < lengths.to(device)[:, None]).unsqueeze(-1)
    return None


Generators = torch.Generator | Sequence[torch.Generator]


@runtime_checkable
class Observation(Protocol):
    """What sampling (`generate`) and scoring (`log_prob`, `mean`) need of an observation model.

    `PoissonObservation` and `SpikeHistoryObservation` satisfy it (see the module docstring for
    the contract of each member); `kind` is the name a model is recorded under in provenance.
    `isinstance(x, Observation)` checks that the members exist, not their signatures.
    """

    kind: str

    def log_prob(self, counts: Tensor, rates: Tensor, mask: Tensor | None = None) -> Tensor: ...

    def mean(self, rates: Tensor, counts: Tensor | None = None) -> Tensor: ...

    def sample(
        self, rates: Tensor, generator: Generators, lengths: Tensor | None = None
    ) -> Tensor: ...


# the sampler pushes a bin's spikes into the future drive one by one when fewer than 1 in this
# many units spiked (a sparse add), else as one dense multiply-add over all units
SPARSE_PUSH_SHARE = 4

# with one generator per trial, uniforms are drawn per trial in blocks of this many bins, so a
# trial's stream depends only on its own generator (not on batch size or padded length)
UNIFORM_BLOCK_BINS = 1024
# the copula's uniforms are kept this far inside (0, 1): Φ⁻¹(0) is −∞, and a float32 Φ rounds
# to exactly 1 above z ≈ 5.4
COPULA_TINY = 2.0**-24


def _check_generator(generator: Generators, rates: Tensor) -> None:
    gens = [generator] if isinstance(generator, torch.Generator) else list(generator)
    if not isinstance(generator, torch.Generator) and len(gens) != rates.shape[0]:
        raise ValueError(f"got {len(gens)} generators for {rates.shape[0]} trials")
    for g in gens:
        if g.device.type != rates.device.type:
            raise ValueError(
                f"generator is on {g.device}, rates on {rates.device}; "
                "create the generator on the rates' device"
            )


def inverse_cdf_poisson(
    u: Tensor, lam: Tensor, max_count: int | None, alpha: Tensor | None = None
) -> Tensor:
    """min(Poisson(lam), cap) by inversion of uniforms `u` (exact in distribution); with
    `alpha` (broadcast to `lam`), min(X, cap) for X gamma-Poisson with that dispersion.

    s = #{k ≥ 0 : u > F(k)}, F the CDF, accumulated term by term in float64. With a cap
    only F(0..cap-1) are needed; without one the loop runs until no entry can go higher.
    Only the entries still above F(k − 1) compute the next term: at spiking rates most counts
    are 0 or 1, and each entry goes through the same float64 operations as over the whole
    array, so the counts are the same.
    """
    lam64, u64 = lam.double(), u.double().expand_as(lam)
    a = None if alpha is None else alpha.double().expand_as(lam64)
    p = _pmf_zero(lam64, a)  # P(X = 0)
    above = u64 > p  # the entries whose count is at least 1
    s = above.to(lam.dtype)
    flat = s.view(-1)
    live = above.view(-1).nonzero().squeeze(1)  # [K] entries still above F(k − 1)
    p = p.reshape(-1)[live]  # indexing copies: p and cdf are the live entries alone
    cdf = p.clone()
    lam_k, u_k = lam64.reshape(-1)[live], u64.reshape(-1)[live]
    a_k = None if a is None else a.reshape(-1)[live]
    k = 1
    while (max_count is None or k < max_count) and live.numel() > 0:
        p = _pmf_next(p, lam_k, a_k, k)
        cdf += p
        more = u_k > cdf  # [K] the entries whose count is at least k + 1
        live = live[more]
        flat.index_fill_(0, live, k + 1.0)
        p, cdf, lam_k, u_k = p[more], cdf[more], lam_k[more], u_k[more]
        a_k = None if a_k is None else a_k[more]
        k += 1
    return s


class PoissonObservation(nn.Module):
    """s ~ Poisson(r), independent per bin and neuron (no cap, no parameters)."""

    kind = "poisson"

    def log_prob(self, counts: Tensor, rates: Tensor, mask: Tensor | None = None) -> Tensor:
        lp = poisson_log_pmf(counts.to(rates.dtype), rates)  # [B, L, N]
        valid = _valid(mask, None, rates.shape, rates.device)
        return lp if valid is None else lp * valid

    def mean(self, rates: Tensor, counts: Tensor | None = None) -> Tensor:
        return rates

    @torch.no_grad()
    def sample(self, rates: Tensor, generator: Generators, lengths: Tensor | None = None) -> Tensor:
        _check_generator(generator, rates)
        rates = rates.clamp_min(0.0)
        if isinstance(generator, torch.Generator):
            s = torch.poisson(rates, generator=generator)  # [B, L, N]
        else:  # one generator per trial, each drawing only its trial's valid bins
            s = torch.zeros_like(rates)
            n_valid = [rates.shape[1]] * rates.shape[0] if lengths is None else lengths.tolist()
            for b, (g, n) in enumerate(zip(generator, n_valid, strict=True)):
                s[b, :n] = torch.poisson(rates[b, :n], generator=g)
        valid = _valid(None, lengths, rates.shape, rates.device)
        return s if valid is None else s * valid


class SpikeHistoryObservation(nn.Module):
    """Per-neuron spike-history GLM with a softplus link (see the module docstring).

    Parameters (all per neuron n): `history` w [N, H] with w[:, k-1] the weight of lag k;
    `rate_gain` a [N]; `bias` b [N]; with `coupling_rank` R > 0 also `coupling_in` V [N, R],
    `coupling_out` U [N, R] and `coupling_kernel` κ [R, H], giving
    c_{n,t} = Σ_r U_{n,r} Σ_k κ_{r,k} (Σ_m V_{m,r} s̃_{m,t−k}).
    Initialised at the Poisson reduction: w = 0, a = 1, b = 0 (U = 0, V small random).
    """

    kind = "history"

    def __init__(
        self,
        n_neurons: int,
        history_bins: int = 20,
        max_count: int | None = 5,
        coupling_rank: int = 0,
        generator: torch.Generator | None = None,
        max_excitation: float | None = None,
        history_input: str = SPIKES,
    ) -> None:
        super().__init__()
        if history_input not in HISTORY_INPUTS:
            raise ValueError(f"history_input must be one of {HISTORY_INPUTS}")
        if history_bins < 1:
            raise ValueError("history_bins must be ≥ 1")
        if max_count is not None and max_count < 1:
            raise ValueError("max_count must be ≥ 1 or None (no cap)")
        if max_excitation is not None and not max_excitation > 0:
            raise ValueError("max_excitation must be > 0 or None (unbounded)")
        self.max_excitation = None if max_excitation is None else float(max_excitation)
        # what the kernels filter: the past counts s̃, or their deviations s̃ − r from the rates
        self.history_input = history_input
        # per-neuron bound E_n [N] on the excitation (None = max_excitation for every neuron);
        # not a weight: see set_excitation_bound
        self.excitation_bound: Tensor | None = None
        # per-neuron sample ceiling [N] (None = only max_count); not a weight: see set_selection
        self.count_cap: Tensor | None = None
        # per-neuron count dispersion α [N] (None = Poisson counts); see set_count_dispersion
        self.count_dispersion: Tensor | None = None
        self.use_history: Tensor | None = None  # [N] bool, None = every neuron
        # the copula's correlation R [N, N] and a factor F with F·Fᵀ = R (None = independent
        # draws); see set_count_correlation
        self.count_correlation: Tensor | None = None
        self.copula_factor: Tensor | None = None
        # the neurons form this many equal blocks that draw from the same uniforms (neuron n of
        # every block sees the same random numbers): variants of one model side by side then
        # differ by their parameters, not by their draws (common random numbers, see sample)
        self.shared_draw_blocks = 1
        self.n_neurons = int(n_neurons)
        self.history_bins = int(history_bins)
        self.max_count = int(max_count) if max_count else None
        self.coupling_rank = int(coupling_rank)
        # sampling starts this many bins before bin 0 at the first bin's rates (see `_run`)
        self.burn_in_bins = int(history_bins)
        self.history = nn.Parameter(torch.zeros(n_neurons, history_bins))  # [N, H]
        self.rate_gain = nn.Parameter(torch.ones(n_neurons))  # [N]
        self.bias = nn.Parameter(torch.zeros(n_neurons))  # [N]
        if self.coupling_rank > 0:
            R = self.coupling_rank
            # U = 0 keeps the Poisson reduction at init; V random so gradients reach U
            v = torch.randn(n_neurons, R, generator=generator) / math.sqrt(n_neurons)
            self.coupling_in = nn.Parameter(v)  # V [N, R]
            self.coupling_out = nn.Parameter(torch.zeros(n_neurons, R))  # U [N, R]
            self.coupling_kernel = nn.Parameter(torch.ones(R, history_bins) / history_bins)

    # ------------------------------------------------------------------ pieces
    @property
    def bounded(self) -> bool:
        """Whether the excitatory part of the history saturates (see the module docstring)."""
        return self.max_excitation is not None or self.excitation_bound is not None

    def bounds(self) -> Tensor | None:
        """Each neuron's excitation bound E_n [N], or None when unbounded."""
        if self.excitation_bound is not None:
            return self.excitation_bound
        if self.max_excitation is None:
            return None
        return torch.full_like(self.bias.detach(), self.max_excitation)

    def dispersions(self) -> Tensor:
        """Each neuron's count dispersion α_n [N] (zeros for Poisson counts)."""
        if self.count_dispersion is None:
            return torch.zeros_like(self.bias.detach())
        return self.count_dispersion

    def combine(self, inhibition: Tensor, excitation: Tensor, neuron_axis: int = -1) -> Tensor:
        """History term from Σ w⁻ s̃ and Σ w⁺ s̃ (any shape, neurons along `neuron_axis`): the
        excitation saturated at each neuron's bound (E_n·tanh(x/E_n)), or the plain sum without
        a bound."""
        if self.excitation_bound is None:
            if self.max_excitation is None:
                return inhibition + excitation
            E: Tensor | float = self.max_excitation
        else:
            shape = [1] * excitation.dim()
            shape[neuron_axis] = -1
            E = self.excitation_bound.to(excitation).reshape(shape)
        return inhibition + E * torch.tanh(excitation / E)

    @torch.no_grad()
    def set_excitation_bound(self, bound: Tensor | None) -> None:
        """Give each neuron its own excitation bound E_n [N] (> 0; None: `max_excitation`)."""
        if bound is None:
            self.excitation_bound = None
            return
        bound = bound.to(device=self.history.device, dtype=self.history.dtype)
        if bound.shape != (self.n_neurons,) or not bool(((bound > 0) & bound.isfinite()).all()):
            raise ValueError("the excitation bound needs one finite value > 0 per neuron")
        self.excitation_bound = bound

    @torch.no_grad()
    def set_count_dispersion(self, alpha: Tensor | None) -> None:
        """Draw each neuron's counts gamma-Poisson with variance λ + α_n·λ² (α [N] ≥ 0; None or
        all zero: Poisson counts). Not a weight: the fit chooses it on free-running samples."""
        if alpha is None:
            self.count_dispersion = None
            return
        alpha = alpha.to(device=self.history.device, dtype=self.history.dtype)
        if alpha.shape != (self.n_neurons,) or not bool(((alpha >= 0) & alpha.isfinite()).all()):
            raise ValueError("the count dispersion needs one finite value ≥ 0 per neuron")
        self.count_dispersion = alpha if bool((alpha > 0).any()) else None

    @torch.no_grad()
    def set_count_correlation(self, correlation: Tensor | None) -> None:
        """Draw the neurons' counts of each bin through a Gaussian copula with correlation
        `correlation` [N, N] (symmetric, unit diagonal, positive semi-definite; None or the
        identity: independent draws). Not a weight: the fit estimates it from free-running
        samples (`fit.history.fit_count_correlation`)."""
        if correlation is None:
            self.count_correlation = self.copula_factor = None
            return
        R = correlation.to(device=self.history.device, dtype=torch.float64)
        N = self.n_neurons
        if R.shape != (N, N) or not bool(R.isfinite().all()):
            raise ValueError("the count correlation needs a finite [N, N] matrix")
        eye = torch.eye(N, dtype=R.dtype, device=R.device)
        if not torch.allclose(R, R.t(), atol=1e-6) or not torch.allclose(
            R.diagonal(), eye.diagonal(), atol=1e-5
        ):
            raise ValueError("the count correlation must be symmetric with a unit diagonal")
        values, vectors = torch.linalg.eigh(R)
        if float(values.min()) < -1e-4:
            raise ValueError("the count correlation must be positive semi-definite")
        if torch.equal(R, eye):
            self.count_correlation = self.copula_factor = None
            return
        dtype = self.history.dtype
        self.count_correlation = R.to(dtype)
        self.copula_factor = (vectors * values.clamp_min(0.0).sqrt()).to(dtype)  # [N, N]

    def _copula(self, u: Tensor) -> Tensor:
        """Independent uniforms [..., N] -> the copula's uniforms Φ(F·Φ⁻¹(u)) [..., N] (`u` as it
        is without a copula)."""
        if self.copula_factor is None:
            return u
        z = torch.special.ndtri(u.clamp_min(COPULA_TINY))  # [..., N] standard normals
        return torch.special.ndtr(z @ self.copula_factor.t()).clamp(COPULA_TINY, 1.0 - COPULA_TINY)

    @torch.no_grad()
    def set_selection(self, use_history: Tensor | None, count_cap: Tensor | None) -> None:
        """Make the neurons with `use_history` False plain Poisson (w = 0, a = 1, b = 0, no
        coupling out, Poisson counts) and cap each neuron's samples at `count_cap` [N] (None:
        leave as is)."""
        if use_history is not None:
            keep = use_history.to(device=self.history.device, dtype=torch.bool)  # [N]
            self.history[~keep] = 0.0
            self.rate_gain[~keep] = 1.0
            self.bias[~keep] = 0.0
            if self.count_dispersion is not None:
                self.set_count_dispersion(self.count_dispersion * keep)
            if self.coupling_rank > 0:
                self.coupling_out[~keep] = 0.0
            self.use_history = keep
        if count_cap is not None:
            self.count_cap = count_cap.to(device=self.history.device, dtype=self.history.dtype)

    def _cap(self, counts: Tensor) -> Tensor:
        return counts if self.max_count is None else counts.clamp(max=float(self.max_count))

    def drive(self, rates: Tensor) -> Tensor:
        """The history-free part a·softplus⁻¹(r) + b, [B, L, N]."""
        x = softplus_inverse(rates)
        if torch.is_grad_enabled() or x.dtype != self.rate_gain.dtype:
            return self.rate_gain * x + self.bias
        return x.mul_(self.rate_gain).add_(self.bias)  # a·x + b without two more buffers

    def history_term(self, counts: Tensor, rates: Tensor | None = None) -> Tensor:
        """Σ_k w_k x_{t−k} (+ coupling) from the observed past, zero before bin 0: [B, L, N],
        with x = s̃ (or s̃ − r, `history_input` "residuals", which needs `rates`).

        A grouped conv1d over time: one causal filter per neuron (flip(w) so lag 1 sits next to t).
        """
        L, N = counts.shape[1:]
        H = self.history_bins
        s = kernel_input(self._cap(counts.to(self.history.dtype)), rates, self.history_input)
        s = s.transpose(1, 2)  # [B, N, L]
        s = F.pad(s, (H, 0))  # [B, N, H+L]; output t sees s[t-H .. t-1]
        if not self.bounded:
            kernel = self.history.flip(-1).unsqueeze(1)  # [N, 1, H]
            h = F.conv1d(s, kernel, groups=N)[..., :L]  # [B, N, L]
        else:
            w = self.history.flip(-1).unsqueeze(1)  # [N, 1, H]
            neg = F.conv1d(s, w.clamp_max(0.0), groups=N)[..., :L]  # [B, N, L]
            pos = F.conv1d(s, w.clamp_min(0.0), groups=N)[..., :L]
            h = self.combine(neg, pos, neuron_axis=1)
        if self.coupling_rank > 0:
            proj = torch.einsum("bnl,nr->brl", s, self.coupling_in)  # [B, R, H+L]
            ck = self.coupling_kernel.flip(-1).unsqueeze(1)  # [R, 1, H]
            pc = F.conv1d(proj, ck, groups=self.coupling_rank)[..., :L]  # [B, R, L]
            h = h + torch.einsum("brl,nr->bnl", pc, self.coupling_out)
        return h.transpose(1, 2)  # [B, L, N]

    def intensity(self, counts: Tensor, rates: Tensor) -> Tensor:
        """Teacher-forced λ_t given the observed past counts, [B, L, N]."""
        return F.softplus(self.history_term(counts, rates) + self.drive(rates))

    # ------------------------------------------------------------------ interface
    def log_prob(self, counts: Tensor, rates: Tensor, mask: Tensor | None = None) -> Tensor:
        counts = counts.to(rates.dtype)
        lam = self.intensity(counts, rates)
        lp = capped_count_log_prob(counts, lam, self.max_count, self.count_dispersion)
        valid = _valid(mask, None, rates.shape, rates.device)
        return lp if valid is None else lp * valid

    @torch.no_grad()
    def mean(self, rates: Tensor, counts: Tensor | None = None) -> Tensor:
        alpha = self.count_dispersion
        if counts is not None:
            lam = self.intensity(counts.to(rates.dtype), rates)
            return capped_count_mean(lam, self.max_count, alpha)
        # mean-field recursion: the sampler with E[count] in place of each draw
        return self._run(rates, lambda lam, t: capped_count_mean(lam, self.max_count, alpha))

    @torch.no_grad()
    def sample(self, rates: Tensor, generator: Generators, lengths: Tensor | None = None) -> Tensor:
        _check_generator(generator, rates)
        cap = self.max_count
        alpha = self.count_dispersion  # [N] or None
        blocks = self.shared_draw_blocks
        N = rates.shape[-1]
        if N % blocks:
            raise ValueError(f"{N} neurons do not split into {blocks} blocks of shared draws")
        copula = self.copula_factor is not None
        if copula and blocks > 1:
            raise ValueError("a count correlation needs one block of draws per neuron")
        if isinstance(generator, torch.Generator) and (alpha is not None or blocks > 1 or copula):

            def draw(lam: Tensor, t: int) -> Tensor:
                shape = (lam.shape[0], N // blocks)
                u = torch.rand(shape, generator=generator, device=lam.device).repeat(1, blocks)
                return inverse_cdf_poisson(self._copula(u), lam, cap, alpha)

        elif isinstance(generator, torch.Generator):

            def draw(lam: Tensor, t: int) -> Tensor:
                s = torch.poisson(lam, generator=generator)
                return s if cap is None else s.clamp_(max=float(cap))

        else:
            # one generator per trial: uniforms drawn per trial in fixed blocks, then inverted
            # for all trials at once (the loop over trials is one rand call per block)
            gens = list(generator)
            block: list[Tensor] = []
            total = self.burn_in_bins + rates.shape[1]  # bins the loop runs

            def draw(lam: Tensor, t: int) -> Tensor:
                j = t % UNIFORM_BLOCK_BINS
                if j == 0:
                    # on the CPU a shorter draw is the prefix of the full block (the generator
                    # fills sequentially): the same uniforms without the unused tail
                    rows = UNIFORM_BLOCK_BINS
                    if lam.device.type == "cpu":
                        rows = min(rows, total - t)
                    width = N // blocks
                    u = [torch.rand(rows, width, generator=g, device=lam.device) for g in gens]
                    u = self._copula(torch.stack(u, 1))  # [block, B, N / blocks]
                    block[:] = [u.repeat(1, 1, blocks)]  # [block, B, N]
                return inverse_cdf_poisson(block[0][j], lam, cap, alpha)

        s = self._run(rates, draw)
        valid = _valid(None, lengths, rates.shape, rates.device)
        return s if valid is None else s * valid

    def _run(self, rates: Tensor, step) -> Tensor:
        """The autoregressive loop shared by `sample` and the mean-field `mean`.

        Stationary start: the loop begins `burn_in_bins` (= H) bins before bin 0, at each trial's
        first-bin rates, and those bins are discarded, so bin 0 already has a history drawn from
        the model. Starting from an empty history instead leaves the first bins without the
        suppression (refractoriness) or excitation (bursts) the gain a and intercept b were
        fitted with: on refractory Lorenz data (a ≈ 1.47) the first bin's population count was
        14.7 spikes against the data's 12.0, single first bins reached 58 against 28, and the
        population-count skewness was 2.7 against 1.55.

        Instead of re-reading a history window at every bin, each new count pushes its future
        contribution w_k·s_t into a time-major drive buffer at bins t+1..t+H (one fused addcmul);
        bin t then only needs softplus(drive[t]). Per bin: softplus, draw, store, push.
        `step(lam [B, N], t) -> counts [B, N]` turns the intensity of loop bin t into counts.
        """
        B, L, N = rates.shape
        H = self.history_bins
        W = self.burn_in_bins
        dtype = self.history.dtype
        drive = torch.zeros(W + L + H, B, N, dtype=dtype, device=rates.device)  # [W+L+H, B, N]
        if W > 0:
            drive[:W] = self.drive(rates[:, :1].to(dtype)).transpose(0, 1)  # [1, B, N] broadcast
        for t0 in range(0, L, 1024):  # in time chunks: bounded temporaries at any length
            chunk = rates[:, t0 : t0 + 1024].to(dtype)
            drive[W + t0 : W + t0 + chunk.shape[1]] = self.drive(chunk).transpose(0, 1)
        w = self.history.detach().t().unsqueeze(1)  # [H, 1, N]; row k-1 = lag k
        bounded = self.bounded
        if bounded:
            # excitation in its own buffer: it is saturated before it meets the rest
            excite = torch.zeros_like(drive)  # [W+L+H, B, N]
            w_pos, w = w.clamp_min(0.0), w.clamp_max(0.0)
        ceiling = None if self.count_cap is None else self.count_cap.to(rates.device, dtype)  # [N]
        out = torch.empty(B, L, N, dtype=dtype, device=rates.device)  # [B, L, N]
        if self.coupling_rank > 0:
            V = self.coupling_in.detach()
            # [H, R, N]: contribution to lag k of each projected count
            UK = torch.einsum("rk,nr->krn", self.coupling_kernel.detach(), self.coupling_out)
        # sparse pushes on the CPU only: a GPU's dense add is fast, and finding the spikes syncs
        dense = self.history_input != SPIKES or rates.device.type != "cpu"
        pushes = [(drive, w.squeeze(1))]  # (buffer, kernel [H, N]) pairs a spike adds to
        if bounded:
            pushes.append((excite, w_pos.squeeze(1)))
        for t in range(W + L):
            eta = self.combine(drive[t], excite[t]) if bounded else drive[t]
            s = step(F.softplus(eta), t)  # [B, N]
            if ceiling is not None:
                s = torch.minimum(s, ceiling)
            if t >= W:
                out[:, t - W] = s
            # future bins t+1..t+H receive w_k · x_t, x = s̃_t (already capped) or s̃_t − r_t
            x = kernel_input(s, rates[:, max(t - W, 0)], self.history_input)  # [B, N]
            spikes = None if dense else x.reshape(-1).nonzero().squeeze(1)  # [K]
            if spikes is not None and spikes.numel() * SPARSE_PUSH_SHARE < x.numel():
                # few units spiked: push their counts alone (w_k·0 adds nothing)
                neuron, count = spikes % N, x.reshape(-1)[spikes]  # [K], [K]
                for buffer, cols in pushes:
                    rows = buffer[t + 1 : t + 1 + H].view(H, B * N)
                    # the dense path's multiply-add on the spiking columns (its rounding too)
                    cur = rows.index_select(1, spikes).addcmul_(cols.index_select(1, neuron), count)
                    rows.index_copy_(1, spikes, cur)
            else:
                drive[t + 1 : t + 1 + H].addcmul_(w, x.unsqueeze(0))
                if bounded:
                    excite[t + 1 : t + 1 + H].addcmul_(w_pos, x.unsqueeze(0))
            if self.coupling_rank > 0:
                p = x @ V  # [B, R]
                drive[t + 1 : t + 1 + H] += torch.einsum("br,krn->kbn", p, UK)
        return out

    def extra_repr(self) -> str:
        return (
            f"n_neurons={self.n_neurons}, history_bins={self.history_bins}, "
            f"max_count={self.max_count}, coupling_rank={self.coupling_rank}, "
            f"max_excitation={self.max_excitation}, "
            f"per_neuron_bound={self.excitation_bound is not None}, "
            f"count_dispersion={self.count_dispersion is not None}, "
            f"count_correlation={self.count_correlation is not None}, "
            f"history_input={self.history_input}"
        )


def auto_selected(model: SpikeHistoryObservation) -> SpikeHistoryObservation:
    """What `--observation auto` samples with: a copy of `model` in which each neuron its fit
    judged to generate better as plain Poisson (`neuron_choice`, [N] bool, attached by the fit
    or the loader) is Poisson; `model` itself when no choice was made."""
    choice = getattr(model, "neuron_choice", None)
    if choice is None:
        return model
    chosen = copy.deepcopy(model)
    chosen.set_selection(torch.as_tensor(choice, dtype=torch.bool), None)
    return chosen


@dataclass(frozen=True)
class HistoryConfig:
    """Settings of the spike-history model and its fit (saved with the weights)."""

    history_bins: int = 20  # H, past bins per neuron (20 × 5 ms = 100 ms in the paper)
    history_ms: float | None = None  # if set, H = round(history_ms / bin size), overrides bins
    max_count: int | None = 5  # cap on counts in regressors, likelihood and samples; None = none
    # rank of a neuron-to-neuron coupling (0 = the paper's model), or "auto": fit without, and
    # with rank AUTO_COUPLING_RANK only when the uncoupled model's free-running validation
    # samples miss the population's shared structure; keep whichever generates closer to the
    # validation trials (fit.history.choose_coupling). A saved model stores the resolved rank.
    coupling_rank: int | str = AUTO
    # what the kernels filter: "spikes" (the paper: past counts s̃) or "residuals" (s̃ − r, see
    # the module docstring). With gamma-Poisson counts, residuals score the E/I network bed's
    # spectrum 0.20 against 0.22 (with --seed 1, 0.30 against 0.32, but Fano 0.30 against
    # 0.13) and the heterogeneous Lorenz bed's Fano factor 0.27 against 0.09:
    # python bench/quality_realism.py --history-input residuals --reuse
    history_input: str = SPIKES
    lr: float = 0.1  # AdamW peak learning rate (the authors' value)
    weight_decay: float = 0.01  # AdamW decoupled weight decay (the authors' value)
    iterations: int = 500  # optimiser steps (L-BFGS stops earlier; the authors ran AdamW 3000)
    batch_bins: int = 0  # valid bins per AdamW step; 0 = full batch (of the subsampled set)
    max_fit_elements: int = 2_000_000  # subsample trials above this many neuron·bin entries
    optimizer: str = "lbfgs"  # "lbfgs" (full batch, converged in seconds) or "adamw" (the authors')
    # rounds of matching each neuron's free-running (sampled) firing rate to the data after the
    # teacher-forced fit; 0 = the paper's plain fit
    rate_match_rounds: int = 4
    # saturation of the excitatory history term (see the module docstring): past spikes raise
    # the intensity to at most softplus(drive + max_excitation), ≈ e^2.5 ≈ 12x the history-free
    # rate at low rates, so free-running samples cannot run away; None = unbounded (the paper)
    max_excitation: float | None = 2.5
    # after the fit, per neuron, scale the excitatory and inhibitory parts of the kernel and the
    # excitation bound by the factors in fit.history.DISPERSION_SCALES whose free-running samples
    # best match the training data's Fano factor and autocorrelation. True/False: always/never;
    # None: on for training sets up to fit.history.DISPERSION_AUTO_ELEMENTS neuron-bins, since it
    # samples the set once per candidate and round (see fit.history.DISPERSION_AUTO_ELEMENTS).
    # On the 400-trial E/I network bed it took the free-running Fano score from 0.45 to 0.29 and
    # the autocorrelation score from 0.25 to 0.19 (python bench/quality_realism.py --beds network
    # --match-dispersion)
    match_dispersion: bool | None = None
    # with the dispersion matching, also give each neuron the gamma-Poisson count dispersion α
    # whose free-running samples match the data's Fano factor and autocorrelation best (α = 0:
    # Poisson counts; fit.history.match_count_dispersion). On the E/I network bed the test Fano
    # score went from 0.26 to 0.11 (0.51 to 0.13 with --seed 1); the latent beds' scores moved
    # by at most 0.02 but for two ISI scores (at most 0.09; python bench/quality_realism.py --reuse)
    match_count_dispersion: bool = True
    # a Gaussian copula between the units' counts (see the module docstring), estimated from
    # the training trials (fit.history.choose_count_correlation). "auto": tried where the
    # free-running validation samples miss the pairwise correlations, and kept when it generates
    # the validation trials' population statistics clearly better. "always": kept wherever the
    # two halves of the training trials agree on the covariance the samples miss (a validation
    # set of a few dozen trials can be too small to see it). "never": units drawn independently.
    # A saved true/false reads as auto/never.
    count_correlation: str = AUTO
    # clamp each neuron's samples at the most spikes the training data shows in one of its bins
    cap_from_data: bool = True
    # keep, per neuron, whichever of history and Poisson generates statistics closer to the
    # validation trials (free-running); `--observation auto` follows the choice
    select_per_neuron: bool = True

    def __post_init__(self) -> None:
        if self.history_bins < 1:
            raise LdnsError(f"history_bins must be ≥ 1, got {self.history_bins}", "e.g. 20")
        if self.history_ms is not None and self.history_ms <= 0:
            raise LdnsError(f"history_ms must be > 0, got {self.history_ms}", "e.g. 100")
        if self.max_count is not None and self.max_count < 1:
            raise LdnsError(
                f"max_count must be ≥ 1, got {self.max_count}", "e.g. 5; omit it for no cap"
            )
        if self.iterations < 0 or self.lr <= 0 or self.weight_decay < 0:
            raise LdnsError("iterations, lr and weight_decay must be ≥ 0 (lr > 0)", "e.g. lr 0.1")
        if self.batch_bins < 0 or self.max_fit_elements < 1:
            raise LdnsError("batch_bins ≥ 0 and max_fit_elements ≥ 1", "")
        rank = self.coupling_rank
        if rank != AUTO and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 0):
            raise LdnsError(
                f"coupling_rank must be a whole number ≥ 0 or 'auto', got {rank!r}",
                "e.g. 1; 0 = no coupling; auto = only where validation samples need it",
            )
        if isinstance(self.count_correlation, bool):  # the setting's earlier on/off form
            object.__setattr__(
                self, "count_correlation", AUTO if self.count_correlation else COPULA_NEVER
            )
        if self.count_correlation not in COPULA_SETTINGS:
            raise LdnsError(
                f"count_correlation must be one of {', '.join(COPULA_SETTINGS)}, got "
                f"{self.count_correlation!r}",
                "auto: kept where validation samples need it; always; never",
            )
        if self.history_input not in HISTORY_INPUTS:
            raise LdnsError(
                f"history_input must be one of {', '.join(HISTORY_INPUTS)}, got "
                f"{self.history_input!r}",
                "residuals: the kernels filter the past counts' deviations from the rates",
            )
        if self.rate_match_rounds < 0:
            raise LdnsError("rate_match_rounds must be ≥ 0", "e.g. 4; 0 turns it off")
        if self.optimizer not in ("adamw", "lbfgs"):
            raise LdnsError(f"unknown optimizer '{self.optimizer}'", "use adamw or lbfgs")
        if self.max_excitation is not None and not self.max_excitation > 0:
            raise LdnsError(
                f"max_excitation must be > 0, got {self.max_excitation}",
                "e.g. 2.5 (past spikes raise the rate at most ~e^2.5-fold); omit for none",
            )

    def resolve(self, bin_size_s: float) -> HistoryConfig:
        """The config with `history_bins` computed from `history_ms` for this bin size."""
        if self.history_ms is None:
            return self
        bins = max(1, round(self.history_ms / (bin_size_s * 1e3)))
        return dataclasses.replace(self, history_bins=bins)
