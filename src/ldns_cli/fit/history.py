"""Fitting and storing the spike-history observation model ("LDNS_sh", Kapoor et al. 2024).

The model (`nn.observation.SpikeHistoryObservation`) is fitted after the autoencoder, on
its inferred rates with the true past spikes as regressors (teacher forcing), by minimising the
mean Poisson negative log-likelihood over valid bins. The authors use full-batch AdamW (lr 0.1,
wd 0.01, 3000 iterations); that is available (`optimizer="adamw"`, mini-batches optional), but the
default is full-batch L-BFGS: without coupling the loss is convex in the 22 parameters per neuron
(softplus link, Poisson likelihood), and L-BFGS reaches the same optimum in tens of iterations
(measured on 2M neuron·bins, one busy CPU core: L-BFGS reached train NLL 0.3903036 in 13 s;
200 AdamW steps reached 0.3903058 in 35 s, so the authors' 3000 would take ~9 min). Differences
from the authors' code, each for a reason:

- start from the Poisson reduction (w = 0, a = 1, b = 0) instead of N(0, 1) draws, so the fit
  starts at the plain-Poisson solution;
- all valid bins are targets, with a zero history before bin 0, instead of dropping the first H
  bins (the sampler, unlike the fit, starts from a stationary history:
  `SpikeHistoryObservation._run`);
- the cap enters the likelihood exactly (a count at the cap scores P(X ≥ cap));
- AdamW gets a cosine learning-rate decay (to 1% of `lr`) so mini-batch fits settle; L-BFGS uses
  `weight_decay` as a weak Gaussian prior centred on the Poisson reduction;
- very large training sets are subsampled (whole trials) to `max_fit_elements` neuron·bin
  entries: 22 parameters per neuron need far fewer bins than an AE does, and it keeps a CPU fit
  to seconds.

Teacher forcing is the wrong judge of a model that will feed back its own spikes: on recordings
with bursting units the teacher-forced fit won on validation likelihood and still generated
samples worse than Poisson (bursts that re-excite themselves). So after the likelihood fit, every
step is judged on free-running samples:

1. the excitatory part of the history term saturates (`max_excitation`: past spikes raise the
   rate at most ~e^E-fold, so the free-running process cannot run away, see `nn.observation`);
2. each neuron's samples are capped at the most spikes the training data shows in one bin
   (`cap_from_data`);
3. the intercepts are shifted until free-running samples fire at the data's rates
   (`match_free_running_rates`), and the excitatory and inhibitory parts of the kernel and the
   excitation bound are scaled, per neuron, by the factors of DISPERSION_SCALES whose
   free-running Fano factor and autocorrelation come closest to the training data's
   (`match_dispersion`; by default on training sets of at most DISPERSION_AUTO_ELEMENTS
   unit-bins, `dispersion_on`); with it, each neuron's counts become gamma-Poisson where that
   brings the same statistics closer (`match_count_dispersion`: a unit whose input fluctuates
   faster than the kernel and the rates resolve holds more spikes per bin than Poisson);
4. `select_neurons` samples the validation trials free-running with the history model and with
   Poisson and compares rate, Fano factor, ISI mean/std, autocorrelation and maximum count with
   the held-out trials' as `ldns evaluate` scores them: the model that does better over the
   population is every neuron's default, and a neuron leaves it only on clear evidence
   (`scoring.neurons.choose_per_neuron`); the choice and its figures are stored with the model
   and `--observation auto` follows it;
5. with `coupling_rank` "auto" (the default), where those free-running validation samples miss
   the population's shared structure (spectrum of the leading PCs, pairwise correlations), a
   model with a coupling between units is fitted the same way and kept if it generates the
   validation trials' population statistics clearly better (`choose_coupling`): when the units
   drive one another, the autoencoder's smooth rates lack the fast shared fluctuations that
   independent units cannot put back;
6. with `count_correlation` "auto" (the default), where the free-running validation samples
   still miss the pairwise correlations, a Gaussian copula between the units' counts is
   estimated from the covariance the training trials' free-running samples miss and kept if it
   generates the validation trials' population statistics clearly better
   (`choose_count_correlation`; "always" keeps it wherever the training trials show that
   covariance repeatably): it leaves every unit's own law exactly as it is, so nothing chosen
   before changes.

Stored as checkpoint kind "history" at `<models>/history.safetensors`; `store.load_observation`
loads it back.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ldns_cli.core import console
from ldns_cli.core.checkpoint import Checkpoint, save_checkpoint
from ldns_cli.core.config import config_to_dict
from ldns_cli.core.data import SpikeData
from ldns_cli.nn.observation import (
    AUTO,
    AUTO_COUPLING_RANK,
    COPULA_ALWAYS,
    COPULA_NEVER,
    MIN_RATE,
    SPIKES,
    HistoryConfig,
    Observation,
    PoissonObservation,
    SpikeHistoryObservation,
    auto_selected,
    capped_count_log_prob,
    copula_hermite,
    kernel_input,
    poisson_log_sf,
    softplus_inverse,
)
from ldns_cli.scoring.neurons import (
    NeuronStats,
    choose_per_neuron,
    discrepancy,
    neuron_range,
    neuron_stats,
    score_scales,
)
from ldns_cli.scoring.population import population_scores
from ldns_cli.store import history_path

# per-neuron (excitation, inhibition, bound) factors tried by the dispersion matching: the
# history kernel's positive and negative parts are scaled by the first two, the excitation bound
# E (`max_excitation`) by the third; (1, 1, 1) is the likelihood fit. Weaker excitation tames
# bursts that compound when the model feeds on its own spikes; weaker inhibition gives back the
# variability the fit's refractoriness takes when the decoder's rates are smoother than the
# data's: on `ldns simulate network` (E/I cells, refractory kernels, fluctuations from the
# coupling) most neurons keep (1, 0.7, 1), and the free-running test trials' Fano score is 0.29
# (python bench/quality_realism.py --beds network --match-dispersion); with the excitation
# scales alone it was 0.44, and without the matching 0.45. A raised bound serves strongly
# bursting units, whose bursts the default E cuts short: with the likelihood fit's kernel on the
# true rates of `ldns simulate reach --history bursting`, free-running samples reach a Fano
# factor of 2.80 at E = 2.5, 3.35 at 5 (2E), 3.80 at 10 (4E) and 4.00 unbounded, against the
# data's 4.81 (python bench/quality_history_bound.py); the matching from E = 2.5 raises the bound
# of 56 of 64 units and reaches 4.02 (--bounds 2.5 --match-dispersion)
DISPERSION_SCALES = (
    (1.0, 1.0, 1.0),
    (0.6, 1.0, 1.0),
    (0.3, 1.0, 1.0),
    (0.0, 1.0, 1.0),
    (1.0, 0.7, 1.0),
    (1.0, 0.4, 1.0),
    (1.0, 1.0, 2.0),
    (1.0, 1.0, 4.0),
)
# statistics the dispersion matching compares (rates are matched separately, through b)
DISPERSION_STATS = ("fano", "autocorr")
# multiples of each neuron's moment estimate of its count dispersion α tried by
# `match_count_dispersion` (0: Poisson counts), and the largest α it gives
COUNT_DISPERSION_SCALES = (0.0, 0.5, 1.0, 1.5)
MAX_COUNT_DISPERSION = 10.0
COUNT_DISPERSION_RATE_ROUNDS = 1
# free-running sets are repeated up to this many trials, so the model side adds little noise
# (the dispersion matching runs on the whole training set, which needs fewer repeats)
MIN_SAMPLED_TRIALS = 512
MIN_DISPERSION_TRIALS = 256
# `match_dispersion` None (the default) turns the matching on for matching sets of at most this
# many neuron-bins: it samples the set once per candidate and round, which `ldns fit-history`
# measured at +19 s on 420 reach trials x 140 bins x 128 units (7.5M; 22.5 s -> 41.5 s) and +71 s
# on the demo's 700 training trials x 256 bins x 128 units (22.9M; 30.5 s -> 101.7 s), 2 threads,
# with the six candidates that leave the bound alone; the two raised bounds add about 12 s on the
# reach set (whole fit-history 94 s -> 106 s, median of 2)
DISPERSION_AUTO_ELEMENTS = 10_000_000


def dispersion_on(cfg: HistoryConfig, elements: int) -> bool:
    """Whether the fit matches dispersion: `cfg.match_dispersion`, or when None (auto) whether
    the matching set has at most DISPERSION_AUTO_ELEMENTS neuron-bins."""
    wanted = cfg.match_dispersion
    if wanted is None:
        wanted = elements <= DISPERSION_AUTO_ELEMENTS
    return bool(wanted)


# ---------------------------------------------------------------------------- fitting
class _Design:
    """Teacher-forcing regressors for the valid bins of a set of trials, built once per fit.

    Only valid (trial, bin) pairs are kept, so padding costs nothing and can never enter the loss.
    M = number of valid bins. The history regressors are materialised (X [N, M, H]) so that each
    step is one batched matmul instead of a convolution.
    """

    def __init__(
        self,
        counts: Tensor,
        rates: Tensor,
        mask: Tensor,
        H: int,
        cap: int | None,
        history_input: str = SPIKES,
    ):
        L = counts.shape[1]
        s = counts if cap is None else counts.clamp(max=float(cap))  # [B, L, N]
        # zero in padding, where counts and rates are both zero
        x = kernel_input(s, rates * mask[..., None].to(rates.dtype), history_input)
        padded = torch.nn.functional.pad(x, (0, 0, H, 0))  # [B, H+L, N]
        # window j of bin t covers s[t-H+j]; flip so that [..., k-1] is lag k
        windows = padded.unfold(1, H, 1)[:, :L].flip(-1)  # [B, L, N, H]
        self.X = windows[mask].permute(1, 0, 2).contiguous()  # [N, M, H]
        self.target = s[mask].t().contiguous()  # [N, M]
        self.rate_in = softplus_inverse(rates[mask].t()).contiguous()  # [N, M]
        self.log_fact = torch.lgamma(self.target + 1.0)  # [N, M], constant
        self.cap = cap
        self.at_cap = self._at_cap()

    @property
    def n_bins(self) -> int:
        return int(self.target.shape[1])

    def subset(self, idx: Tensor) -> _Design:
        """The same design restricted to bins `idx` (for mini-batches)."""
        sub = object.__new__(_Design)
        sub.X, sub.target = self.X[:, idx], self.target[:, idx]
        sub.rate_in, sub.log_fact = self.rate_in[:, idx], self.log_fact[:, idx]
        sub.cap = self.cap
        sub.at_cap = sub._at_cap()
        return sub

    def _at_cap(self) -> Tensor:
        """Flat indices of the entries at the cap, scored as the censored event {X ≥ cap}."""
        if self.cap is None:
            return torch.empty(0, dtype=torch.long, device=self.target.device)
        return torch.nonzero((self.target >= self.cap).flatten()).squeeze(-1)

    def nll(self, model: SpikeHistoryObservation) -> Tensor:
        """Mean negative log-likelihood in nats per neuron-bin (the full log pmf)."""
        w = model.history.unsqueeze(-1)  # [N, H, 1]
        if not model.bounded:
            h = torch.bmm(self.X, w).squeeze(-1)  # [N, M]
        else:  # the excitation saturates (nn.observation: stability)
            # two matrix-vector products: 36 against 85 ms per forward + backward with one
            # two-column product on [6, 10000, 20] regressors (CPU, 2 threads)
            inhibition = torch.bmm(self.X, w.clamp_max(0.0)).squeeze(-1)  # [N, M]
            excitation = torch.bmm(self.X, w.clamp_min(0.0)).squeeze(-1)  # [N, M]
            h = model.combine(inhibition, excitation, neuron_axis=0)
        if model.coupling_rank > 0:
            # c = U · (V^T (κ ⋆ past)): project the kernel-filtered past of every neuron
            filt = torch.einsum("nmh,rh->rnm", self.X, model.coupling_kernel)  # [R, N, M]
            proj = torch.einsum("rnm,nr->rm", filt, model.coupling_in)  # [R, M]
            h = h + model.coupling_out @ proj  # [N, M]
        eta = h + model.rate_gain[:, None] * self.rate_in + model.bias[:, None]
        lam = torch.nn.functional.softplus(eta).clamp_min(MIN_RATE)  # [N, M]
        if model.count_dispersion is not None:  # gamma-Poisson counts (fixed α, not fitted here)
            alpha = model.count_dispersion[:, None]  # [N, 1]
            lp = capped_count_log_prob(self.target, lam, self.cap, alpha)
            return -lp.sum() / self.target.numel()
        nll = lam - self.target * torch.log(lam) + self.log_fact  # [N, M]
        total = nll.sum()
        if self.at_cap.numel():
            lam_c = lam.flatten()[self.at_cap]
            total = total - nll.flatten()[self.at_cap].sum()
            total = total - poisson_log_sf(self.cap, lam_c).sum()
        return total / self.target.numel()


def fit_trials(
    valid_bins: Tensor, n_neurons: int, cfg: HistoryConfig, generator: torch.Generator
) -> Tensor | None:
    """A random subset of trials within the fit budget (sorted indices), or None for all.

    Whole trials keep their history windows intact. The budget bounds the neuron·bin entries to
    `max_fit_elements`, and the regressor matrix X [N, M, H] to about 20·max_fit_elements floats.
    """
    budget = min(cfg.max_fit_elements, cfg.max_fit_elements * 20 // cfg.history_bins)
    n_trials = int(valid_bins.shape[0])
    order = torch.randperm(n_trials, generator=generator)
    cum = torch.cumsum(valid_bins[order].long() * n_neurons, 0)
    n_keep = max(1, int((cum <= budget).sum()))
    return None if n_keep >= n_trials else order[:n_keep].sort().values


def fit_history(
    counts: Tensor,
    rates: Tensor,
    mask: Tensor | None,
    cfg: HistoryConfig,
    generator: torch.Generator,
    progress: bool = False,
    match_set: tuple[MatchBatches, int] | None = None,
    dispersion_factors: np.ndarray | None = None,
) -> SpikeHistoryObservation:
    """Fit a spike-history model by teacher forcing: targets `counts`, regressors their past.

    Args:
        counts: observed spike counts [B, L, N] (any numeric dtype).
        rates: rates for the same bins [B, L, N] (spikes per bin, e.g. AE-inferred).
        mask: valid bins [B, L] (None = all valid); padding never enters the loss.
        cfg: settings; `cfg.history_ms` must already be resolved to bins (`cfg.resolve`);
            `coupling_rank` "auto" fits without coupling (`fit_history_for_ae` chooses).
        generator: CPU generator for the trial subsample, mini-batch order and coupling init.
        progress: show a progress bar on stderr.
        match_set: (batches, number of trials) for the free-running rate matching; None = all
            of `counts`/`rates` (the fit itself may use a subsample of them).
        dispersion_factors: per-neuron (excitation, inhibition, bound) factors [N, 3] to apply
            where the dispersion matching would run, instead of searching them (e.g. those
            matched for an uncoupled fit of the same data); the rates are matched after.
    Returns the fitted model (on the device of `rates`), with `fit_summary` set as an attribute.
    """
    device = rates.device
    B, L, N = counts.shape
    H = cfg.history_bins
    if mask is None:
        mask = torch.ones(B, L, dtype=torch.bool, device=device)
    mask = mask.to(device=device, dtype=torch.bool)
    counts = counts.to(device=device, dtype=torch.float32)
    rates = rates.to(device=device, dtype=torch.float32)
    # padding bins must not act as (zero) history either
    counts = counts * mask.unsqueeze(-1)

    if match_set is None:  # match on every trial given, not only the fit subsample
        match_set = (tensor_batches(counts, rates, mask), B)
    keep = fit_trials(mask.sum(1).cpu(), N, cfg, generator)
    if keep is not None:
        keep = keep.to(device)
        counts, rates, mask = counts[keep], rates[keep], mask[keep]
    design = _Design(counts, rates, mask, H, cfg.max_count, cfg.history_input)

    model = SpikeHistoryObservation(
        N,
        H,
        cfg.max_count,
        0 if cfg.coupling_rank == AUTO else int(cfg.coupling_rank),
        generator=generator,
        max_excitation=cfg.max_excitation,
        history_input=cfg.history_input,
    ).to(device)
    if model.coupling_rank > 0:
        _init_coupling(model, design)
    with torch.no_grad():
        start_nll = float(design.nll(model))
    t0 = time.perf_counter()
    if cfg.optimizer == "lbfgs":
        _fit_lbfgs(model, design, cfg)
    else:
        _fit_adamw(model, design, cfg, generator, progress)
    with torch.no_grad():
        end_nll = float(design.nll(model))
    summary: dict[str, Any] = {}
    if cfg.cap_from_data:
        model.set_selection(None, data_max_counts(*match_set))
        summary["count_cap"] = [int(c) for c in model.count_cap.tolist()]  # type: ignore[union-attr]
    match_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    dispersion = dispersion_on(cfg, match_set[1] * L * N)
    summary["match_dispersion"] = dispersion
    if dispersion and dispersion_factors is not None:  # matched before, for this data
        scales = np.asarray(dispersion_factors, dtype=np.float64)
        apply_dispersion_factors(model, scales)
        before, after = match_free_running_rates(
            model, match_set[0], match_set[1], cfg.rate_match_rounds, match_seed
        )
        summary["dispersion_factors_given"] = True
    elif dispersion:
        scales, before, after, moments = match_free_running_dispersion(
            model, match_set[0], match_set[1], cfg.rate_match_rounds, match_seed
        )
        if cfg.match_count_dispersion:
            _, estimate = match_count_dispersion(
                model, match_set[0], match_set[1], cfg.rate_match_rounds, match_seed, moments
            )
            summary["count_dispersion_estimate"] = [round(float(x), 4) for x in estimate]
    if dispersion and model.count_dispersion is not None:
        summary["count_dispersion"] = [round(float(x), 4) for x in model.count_dispersion]
    if dispersion:
        summary["dispersion_scale"] = [round(float(x), 3) for x in scales[:, 0]]
        summary["inhibition_scale"] = [round(float(x), 3) for x in scales[:, 1]]
        if model.excitation_bound is not None:
            summary["excitation_bound"] = [round(float(x), 3) for x in model.excitation_bound]
    elif cfg.rate_match_rounds > 0:
        before, after = match_free_running_rates(
            model, match_set[0], match_set[1], cfg.rate_match_rounds, match_seed
        )
    if cfg.rate_match_rounds > 0:
        summary.update(
            {
                "train_nll_teacher_forced_fit": end_nll,
                "free_running_rate_ratio_before": before,
                "free_running_rate_ratio": after,
            }
        )
    if cfg.rate_match_rounds > 0 or dispersion:
        with torch.no_grad():
            end_nll = float(design.nll(model))
    summary["excitation_max"] = float(model.history.detach().clamp_min(0.0).sum(-1).max())
    model.fit_summary = {  # type: ignore[attr-defined]
        "train_nll_start": start_nll,
        "train_nll": end_nll,
        "fit_trials": int(counts.shape[0]),
        "fit_bins": design.n_bins,
        "fit_seconds": round(time.perf_counter() - t0, 3),
        **summary,
    }
    return model


@torch.no_grad()
def _init_coupling(model: SpikeHistoryObservation, design: _Design) -> None:
    """Start the coupling's input weights V [N, R] at the leading principal axes of the counts'
    residuals from the rates, so the coupled fit starts from the population's largest shared
    fluctuation instead of a random projection (the loss is not convex in V and U: from random
    V, two seeds of rank-1 fits on `ldns simulate network` ended at free-running test Fano scores
    of 0.23 and 0.38). Signs make each axis's loadings sum to ≥ 0, for a deterministic start."""
    resid = design.target - F.softplus(design.rate_in)  # [N, M] counts − rates
    resid = resid - resid.mean(1, keepdim=True)
    cov = resid @ resid.t() / max(resid.shape[1] - 1, 1)  # [N, N]
    _, vecs = torch.linalg.eigh(cov.double())  # ascending eigenvalues
    axes = vecs[:, -model.coupling_rank :].flip(-1).to(model.coupling_in.dtype)  # [N, R]
    sign = torch.where(axes.sum(0) < 0, -1.0, 1.0)
    model.coupling_in.copy_(axes * sign)


# the matching set, streamed: a callable returning fresh (counts, rates, mask) chunks
# ([b, L, N], [b, L, N], [b, L] bool) over the same trials in the same order on every call
MatchBatches = Callable[[], Iterator[tuple[Tensor, Tensor, Tensor]]]


def tensor_batches(
    counts: Tensor, rates: Tensor, mask: Tensor, trials_per_batch: int = 256
) -> MatchBatches:
    """`MatchBatches` over in-memory tensors, `trials_per_batch` trials at a time."""

    def batches() -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        for i in range(0, counts.shape[0], trials_per_batch):
            sl = slice(i, i + trials_per_batch)
            yield counts[sl], rates[sl], mask[sl]

    return batches


@torch.no_grad()
def match_free_running_rates(
    model: SpikeHistoryObservation,
    batches: MatchBatches,
    n_trials: int,
    rounds: int,
    seed: int = 0,
    min_sampled_trials: int = 512,
) -> tuple[float, float]:
    """Shift each neuron's intercept b until the model, sampling freely, fires at the data's rate.

    Why: teacher forcing fits λ_t given the *observed* past; sampling feeds back the model's own
    spikes, and any misfit compounds through the loop (on bursting data, with the kernel recovered
    at r = 0.97, free-running samples still fired 4% above the data). Each round samples every
    trial of the matching set from its own rates with fixed uniforms (common random numbers, so
    the rounds see a smooth function of b) and sets b += log(data spikes / sampled spikes) per
    neuron: the exact correction for an exp link, close to it for softplus at these rates.

    The matching set should be large: the per-neuron spike totals of a small set are noisy, and
    matching copies that noise into b. On bursting Lorenz data (true rates, 2100 training trials)
    the test mean-ISI RMSE was 2.38 ms unmatched, 2.10 ms matched on the 122-trial fit subset and
    1.21 ms matched on all training trials, against a train-vs-test floor of 1.20 ms.

    `n_trials` is the number of trials `batches` yields in all.
    Returns the population ratio sampled/data before the first round and after the last (both
    1.0 when `rounds` is 0 and nothing is run).
    """
    if rounds <= 0:
        return 1.0, 1.0
    before, after, _ = _match_rates(model, batches, n_trials, rounds, seed, min_sampled_trials)
    return before, after


@torch.no_grad()
def match_and_sample(
    model: SpikeHistoryObservation,
    batches: MatchBatches,
    data_batches: MatchBatches,
    n_trials: int,
    rounds: int,
    seed: int,
    min_trials: int,
) -> tuple[float, float, FreeRunningSets]:
    """`match_free_running_rates`, then `sample_free_running` of the matched model, in one go:
    the last round's check already samples the matched model with the sampling's own streams,
    so those draws are kept instead of drawn again (the same counts, one pass fewer).
    `data_batches` yields the data side's counts (`batches_for_data`)."""
    if rounds <= 0:
        return 1.0, 1.0, sample_free_running(model, data_batches, n_trials, seed, min_trials)
    before, after, sets = _match_rates(
        model, batches, n_trials, rounds, seed, min_trials, data_batches
    )
    assert sets is not None
    return before, after, sets


def _match_rates(
    model: SpikeHistoryObservation,
    batches: MatchBatches,
    n_trials: int,
    rounds: int,
    seed: int,
    min_sampled_trials: int,
    data_batches: MatchBatches | None = None,
) -> tuple[float, float, FreeRunningSets | None]:
    """The rounds of `match_free_running_rates` (`rounds` ≥ 1); with `data_batches`, the last
    round's draws are also returned as `sample_free_running` returns them."""
    # the sampled side repeats the trials up to `min_sampled_trials`, so its own draw adds
    # little noise when the matching set is small
    repeats = _repeats(min_sampled_trials, n_trials)
    data_sum = torch.zeros(())
    before = after = 1.0
    last: tuple[Tensor, Tensor] | None = None  # (b, log sampled) of the previous round
    sets: FreeRunningSets | None = None
    for r in range(rounds + 1):
        kept = _SampleSets() if data_batches is not None and r == rounds else None
        sampled = torch.zeros(())
        first = 0  # global index of the chunk's first trial: its uniforms are fixed across rounds
        for counts, rates, mask in batches():
            valid = mask[..., None].to(rates.dtype)  # [b, L, 1]
            if r == 0:
                data_sum = data_sum + (counts.to(rates.dtype) * valid).sum((0, 1))  # [N]
            for k in range(repeats):
                draws = _draw_chunk(model, rates, mask, seed, first, repeats, k) * valid
                sampled = sampled + draws.sum((0, 1))
                if kept is not None:
                    kept.add_sampled(draws, mask, first)
            first += rates.shape[0]
        if kept is not None:
            assert data_batches is not None
            for counts, _, mask in data_batches():
                kept.add_data(counts, mask)
            sets = kept.arrays()
        target = data_sum * repeats  # [N]
        ratio = float(sampled.sum() / target.sum().clamp_min(1.0))
        if r == 0:
            before = ratio
        after = ratio
        if r == rounds:
            break
        # +0.5: neurons silent in both sets keep their intercept
        log_sampled = torch.log(sampled + 0.5)
        error = torch.log(target + 0.5) - log_sampled  # [N]
        bias = model.bias.detach().clone()
        # secant steps: the free-running rate's gain d log(rate)/db is 1 for an exp link without
        # history, but self-excitation amplifies it (units whose history raises their rate 8-fold
        # stayed at 6-8x the data's rate after 4 plain log-ratio steps, which overshoot and
        # oscillate; tests/test_history.py), and softplus at high rates damps it; common random
        # numbers make the rounds' secants smooth
        gain = torch.ones_like(error)
        if last is not None:
            moved = bias - last[0]
            ok = moved.abs() > 1e-4
            secant = (log_sampled - last[1]) / torch.where(ok, moved, torch.ones_like(moved))
            gain = torch.where(ok & (secant > 0), secant.clamp(0.2, 10.0), gain)
        last = (bias, log_sampled)
        step = (error / gain).clamp(-1.0, 1.0)
        model.bias.add_(step.to(model.bias.dtype))
    return before, after, sets


def _repeats(min_trials: int, n_trials: int) -> int:
    """How many times each of `n_trials` trials is drawn to reach `min_trials` draws (at least
    once). `match_and_sample` keeps the matching's draws as the free-running samples, so both
    must repeat alike."""
    return max(1, math.ceil(min_trials / max(n_trials, 1)))


def _draw_chunk(
    model: Observation, rates: Tensor, mask: Tensor, seed: int, first: int, repeats: int, k: int
) -> Tensor:
    """Repeat k of a chunk of trials whose first has global index `first`, free-running: trial
    i draws from the generator seeded seed + i·repeats + k, whatever the chunking. [b, L, N]"""
    gens = [torch.Generator(device=rates.device).manual_seed(seed + i * repeats + k)
            for i in range(first, first + rates.shape[0])]  # fmt: skip
    return model.sample(rates, gens, mask.sum(1))


@torch.no_grad()
def data_max_counts(batches: MatchBatches, n_trials: int) -> Tensor:
    """The most spikes each neuron shows in one valid bin of the matching set, [N]."""
    del n_trials
    top: Tensor | None = None
    for counts, _, mask in batches():
        m = (counts * mask[..., None].to(counts.dtype)).amax((0, 1))  # [N]
        top = m if top is None else torch.maximum(top, m)
    assert top is not None, "empty matching set"
    return top.clamp_min(1.0)  # a neuron silent in training may still spike once per bin


# `sample_free_running`'s output: sampled counts and lengths, data counts and lengths, and the
# data trial each sampled trial was drawn for
FreeRunningSets = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


@torch.no_grad()
def sample_free_running(
    model: Observation, batches: MatchBatches, n_trials: int, seed: int, min_trials: int
) -> FreeRunningSets:
    """Free-running samples of every trial of `batches`, each repeated up to `min_trials`.

    Trial i, repeat k draws from the generator seeded seed + i·repeats + k (the streams of
    `match_free_running_rates`). Returns sampled counts [R·B, L, N] and lengths [R·B] (uint8/int
    numpy), the data's counts [B, L, N] and lengths [B], and for each sampled trial the index of
    the data trial it was drawn for [R·B].
    """
    repeats = _repeats(min_trials, n_trials)
    sets = _SampleSets()
    first = 0
    for counts, rates, mask in batches():
        valid = mask[..., None].to(rates.dtype)
        sets.add_data(counts, mask)
        for k in range(repeats):
            sets.add_sampled(_draw_chunk(model, rates, mask, seed, first, repeats, k) * valid,
                             mask, first)  # fmt: skip
        first += rates.shape[0]
    return sets.arrays()


class _SampleSets:
    """`FreeRunningSets` gathered chunk by chunk (counts stored in their smallest dtype)."""

    def __init__(self) -> None:
        self.sampled: list[np.ndarray] = []
        self.s_len: list[np.ndarray] = []
        self.data: list[np.ndarray] = []
        self.d_len: list[np.ndarray] = []
        self.source: list[np.ndarray] = []

    def add_sampled(self, draws: Tensor, mask: Tensor, first: int) -> None:
        """Draws [b, L, N] (zero past each trial's end) of trials first..first + b − 1."""
        self.sampled.append(_as_counts(draws))
        self.s_len.append(mask.sum(1).cpu().numpy())
        self.source.append(np.arange(first, first + draws.shape[0]))

    def add_data(self, counts: Tensor, mask: Tensor) -> None:
        self.data.append(_as_counts(counts * mask[..., None].to(counts.dtype)))
        self.d_len.append(mask.sum(1).cpu().numpy())

    def arrays(self) -> FreeRunningSets:
        return (
            np.concatenate(self.sampled),
            np.concatenate(self.s_len),
            np.concatenate(self.data),
            np.concatenate(self.d_len),
            np.concatenate(self.source),
        )


def draw_sized_max(counts: np.ndarray, lengths: np.ndarray, source: np.ndarray) -> np.ndarray:
    """Each neuron's most spikes in one bin, as a draw of the data's size shows it [N] (float).

    Free-running sets repeat every data trial (`sample_free_running`; `source` [R·B] names the
    trial each sampled one was drawn for), and the maximum grows with the number of trials:
    over R repeats a model exactly like the data shows more than the data's maximum. So the
    sampled trials are split into the R draws of one trial each, and the draws' maxima are
    averaged."""
    if not source.size:
        return np.zeros(counts.shape[2])
    n_sources = int(source.max()) + 1
    repeats = len(source) // n_sources
    order = np.argsort(source, kind="stable")  # the repeats of each trial, in drawing order
    draw = np.empty(len(source), dtype=np.int64)
    draw[order] = np.tile(np.arange(repeats), n_sources)  # [R·B] which draw a row belongs to
    valid = np.arange(counts.shape[1])[None, :] < np.asarray(lengths)[:, None]  # [R·B, L]
    per_trial = np.where(valid[..., None], counts, 0).max(axis=1)  # [R·B, N]
    per_draw = np.zeros((repeats, counts.shape[2]))
    np.maximum.at(per_draw, draw, per_trial)  # [R, N]
    return per_draw.mean(axis=0)


def data_draw_max(
    held_out: np.ndarray, held_out_lengths: np.ndarray, more: SpikeData, seed: int
) -> np.ndarray:
    """Each neuron's most spikes in one bin, as a draw of the held-out set's size shows it [N]
    (float), from every trial at hand: the held-out set's maximum averaged with those of
    disjoint random blocks of as many trials of `more` (the training trials).

    The held-out maximum alone is one draw of a noisy statistic: on a bursting unit it moves by
    a spike between two sets of 60 trials, so a model that reaches the unit's true maximum
    showed an "excess" over about half of such sets, which `choose_per_neuron` counts as exact,
    and the unit went to Poisson, whose lighter tail never exceeds it. Averaged over the
    training set's blocks as well, the reference has the expectation of the held-out draw with a
    fraction of its spread."""
    n = len(held_out_lengths)
    valid = np.arange(held_out.shape[1])[None, :] < held_out_lengths[:, None]  # [B, L]
    maxima = [np.where(valid[..., None], held_out, 0).max(axis=(0, 1)).astype(np.float64)]
    blocks = more.n_trials // max(n, 1)
    if n and blocks:
        order = np.random.default_rng([int(seed), 29]).permutation(more.n_trials)
        mask = more.mask()
        per_trial = np.stack(  # [B', N] the most spikes of each trial
            [np.where(mask[i][:, None], more.counts[i], 0).max(axis=0) for i in order[: blocks * n]]
        )
        maxima.extend(per_trial.reshape(blocks, n, -1).max(axis=1).astype(np.float64))
    return np.mean(maxima, axis=0)


def _as_counts(x: Tensor) -> np.ndarray:
    a = x.detach().cpu().numpy()
    return a.astype(np.uint8 if a.max(initial=0) <= 255 else np.int32)


def _stacked(models: list[SpikeHistoryObservation]) -> SpikeHistoryObservation:
    """One model whose neurons are those of `models` side by side ([N·S] neurons).

    Without coupling the neurons of a history model are independent given the rates, so S
    variants of an N-neuron model run as one N·S-neuron model on rates repeated S times: one
    sampling loop instead of S (the loop's cost is per bin, nearly flat in width). Neuron n of
    every variant draws from the same uniforms (`shared_draw_blocks`), so the variants' samples
    differ by what the variants change, not by chance: with independent draws the sampling noise
    of the units a change leaves alone decided between gamma-Poisson candidates (8 units, 160
    trials: the autocorrelation noise of 4 Poisson units outweighed the 4 others' Fano gain).
    """
    first = models[0]
    wide = SpikeHistoryObservation(
        first.n_neurons * len(models),
        first.history_bins,
        first.max_count,
        max_excitation=first.max_excitation,
        history_input=first.history_input,
    ).to(first.history.device)
    with torch.no_grad():
        wide.history.copy_(torch.cat([m.history for m in models]))
        wide.rate_gain.copy_(torch.cat([m.rate_gain for m in models]))
        wide.bias.copy_(torch.cat([m.bias for m in models]))
    wide.shared_draw_blocks = len(models)
    caps = [m.count_cap for m in models]
    if all(c is not None for c in caps):
        wide.set_selection(None, torch.cat(caps))  # type: ignore[arg-type]
    if any(m.excitation_bound is not None for m in models):
        wide.set_excitation_bound(torch.cat([m.bounds() for m in models]))  # type: ignore[misc]
    if any(m.count_dispersion is not None for m in models):
        wide.set_count_dispersion(torch.cat([m.dispersions() for m in models]))
    return wide


def _repeated(batches: MatchBatches, copies: int) -> MatchBatches:
    """`batches` with counts and rates repeated `copies` times along the neuron axis."""

    def wide() -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        for counts, rates, mask in batches():
            yield counts.repeat(1, 1, copies), rates.repeat(1, 1, copies), mask

    return wide


@torch.no_grad()
def match_free_running_dispersion(
    model: SpikeHistoryObservation,
    batches: MatchBatches,
    n_trials: int,
    rate_rounds: int,
    seed: int = 0,
) -> tuple[np.ndarray, float, float]:
    """Scale each neuron's history kernel so free-running samples match the data's dispersion.

    Why: the teacher-forced fit explains a burst's later spikes by its earlier *observed* spikes;
    sampling, the model re-excites itself from its own spikes and, where the fit is misspecified
    (the decoder's rates already carry part of the burst), the bursts compound: on held-back
    recordings bursting units came out at Fano 1.96 against the data's 1.14. For every triple of
    DISPERSION_SCALES the positive and negative parts of w and the excitation bound are scaled
    and the intercepts matched to the data's rates (`match_free_running_rates`; all candidates
    side by side in one model, `_stacked`), then the matching set is sampled free-running; each
    neuron keeps the candidate that
    brings the population's Fano factors and autocorrelations (DISPERSION_STATS) closest to the
    data's, as `ldns evaluate` scores them (`scoring.neurons.choose_per_neuron`). Neurons
    without excitation are unaffected by the excitation factor. Weakened inhibition serves the
    opposite misfit: the fit's refractory kernel also absorbs the variability of fast
    fluctuations the decoder's rates smooth away, and free-running samples come out
    under-dispersed. A raised bound serves strongly bursting units whose bursts the default bound
    cuts short; an unbounded model (`max_excitation` None) has no bound to raise. With coupling
    (`coupling_rank` > 0) the neurons are not independent, so the candidates run one after
    another, each with the same factors for every neuron; the per-neuron mixture is then matched
    to the data's rates once more. Modifies `model` in place (its `excitation_bound` set per
    neuron when bounded); returns the chosen (excitation, inhibition, bound) factors per neuron
    `[N, 3]`, the sampled/data spike ratio before and after the rate matching (over all
    candidates; of the mixture with coupling) and the chosen candidates' single-bin moments
    (for `match_count_dispersion`).
    """
    bounds = model.bounds()  # [N] or None
    # an unbounded model has no bound to raise
    candidates = [c for c in DISPERSION_SCALES if bounds is not None or c[2] == 1.0]
    N = model.n_neurons
    w = model.history.detach()
    variants = []
    for excitation, inhibition, bound in candidates:
        v = copy.deepcopy(model)  # rate gain, intercepts, cap, coupling
        v.history.copy_(inhibition * w.clamp_max(0.0) + excitation * w.clamp_min(0.0))
        if bounds is not None:
            v.set_excitation_bound(bound * bounds)
        variants.append(v)
    best, before, after, moments = _choose_variants(variants, batches, n_trials, rate_rounds, seed)
    rows = torch.as_tensor(np.arange(N), device=w.device)
    pick = torch.as_tensor(best, device=w.device)
    model.history.copy_(torch.stack([v.history.detach() for v in variants])[pick, rows])
    model.bias.copy_(torch.stack([v.bias.detach() for v in variants])[pick, rows])
    if bounds is not None:
        chosen = torch.stack([v.bounds() for v in variants])[pick, rows]  # type: ignore[misc]
        # where no history in the data brings the excitation near the default bound, a raised
        # bound changes the intensity by < 5% at the data's largest burst: its choice was
        # noise, and the unit keeps the default
        most = _largest_excitation(model, batches)  # [N]
        inert = bounds * torch.tanh(most / bounds) >= 0.95 * most
        model.set_excitation_bound(torch.where(inert, bounds, chosen))
    if model.coupling_rank > 0:  # the mixture's neurons drive one another: match it as a whole
        before, after = match_free_running_rates(
            model, batches, n_trials, rate_rounds, seed, MIN_DISPERSION_TRIALS
        )
    factors = np.asarray(candidates)[best]  # [N, 3]
    if bounds is not None:
        factors[inert.cpu().numpy(), 2] = 1.0
    return factors, before, after, moments


class BinMoments(NamedTuple):
    """Single-bin count moments per neuron [N] of the data and of a model's free-running
    samples of the same trials (`bin_moments`)."""

    data_ratio: np.ndarray  # variance/mean of the data's counts
    mean: np.ndarray  # the samples' mean count
    ratio: np.ndarray  # the samples' variance/mean


def bin_moments(counts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per neuron over the valid bins of `counts` [B, L, N]: the mean count and the
    variance/mean of single bins' counts, each [N] (variance/mean NaN for a silent neuron)."""
    valid = np.arange(counts.shape[1])[None, :] < np.asarray(lengths)[:, None]  # [B, L]
    x = counts[valid]  # [M, N], the counts' own (small) dtype
    total = np.zeros(x.shape[1])
    square = np.zeros(x.shape[1])
    for i in range(0, x.shape[0], 16384):  # float64 in row blocks: the stacked sets are wide
        block = x[i : i + 16384].astype(np.float64)
        total += block.sum(0)
        square += (block * block).sum(0)
    n = max(x.shape[0], 1)
    mean = total / n
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(mean > 0, np.clip(square / n - mean**2, 0.0, None) / mean, np.nan)
    return mean, ratio


def _choose_variants(
    variants: list[SpikeHistoryObservation],
    batches: MatchBatches,
    n_trials: int,
    rate_rounds: int,
    seed: int,
) -> tuple[np.ndarray, float, float, BinMoments]:
    """Per neuron, the variant whose free-running samples of the matching set bring the Fano
    factors and autocorrelations (DISPERSION_STATS) closest to the data's, each variant first
    matched to the data's rates (its intercepts changed in place). Without coupling all variants
    run side by side in one sampling loop (`_stacked`); with it, one after another. Ties go to
    the first. Returns the chosen variant per neuron [N], the sampled/data spike ratio before
    and after the rate matching (over all variants; of the last with coupling) and the chosen
    variants' single-bin moments."""
    N, S = variants[0].n_neurons, len(variants)
    moments = []  # (mean, ratio) per variant
    if variants[0].coupling_rank == 0:
        wide = _stacked(variants)
        wide_batches = _repeated(batches, S)
        before, after, (s, s_len, d, d_len, _) = match_and_sample(
            wide,
            wide_batches,
            batches_for_data(batches, wide_batches),
            n_trials,
            rate_rounds,
            seed,
            MIN_DISPERSION_TRIALS,
        )
        sampled = neuron_stats(s, s_len, 1.0)  # Fano and autocorrelation: any bin width
        per_variant = [_neuron_slice(sampled, j * N, (j + 1) * N) for j in range(S)]
        wide_moments = bin_moments(s, s_len)  # each [S·N]
        moments = [tuple(m[j * N : (j + 1) * N] for m in wide_moments) for j in range(S)]
        for j, v in enumerate(variants):  # the matched intercepts
            v.bias.copy_(wide.bias.detach()[j * N : (j + 1) * N])
    else:
        per_variant = []
        for v in variants:
            before, after, (s, s_len, d, d_len, _) = match_and_sample(
                v, batches, batches, n_trials, rate_rounds, seed, MIN_DISPERSION_TRIALS
            )
            per_variant.append(neuron_stats(s, s_len, 1.0))
            moments.append(bin_moments(s, s_len))
    data_stats = neuron_stats(d[..., :N], d_len, 1.0)
    scales = score_scales(d[..., :N], d_len, 1.0, data_stats, seed)
    best = choose_per_neuron(per_variant, data_stats, scales, DISPERSION_STATS)  # [N]
    rows = np.arange(N)
    chosen = [np.stack([m[k] for m in moments])[best, rows] for k in range(2)]
    return best, before, after, BinMoments(bin_moments(d[..., :N], d_len)[1], *chosen)


@torch.no_grad()
def match_count_dispersion(
    model: SpikeHistoryObservation,
    batches: MatchBatches,
    n_trials: int,
    rate_rounds: int,
    seed: int = 0,
    moments: BinMoments | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Give each neuron the count dispersion α (`nn.observation`, over-dispersed counts) whose
    free-running samples match the data's Fano factor and autocorrelation best.

    Why: where a unit's input fluctuates faster than its kernel and the decoder's rates resolve
    (recurrent E/I networks), its counts vary more within a bin than the model's: on
    `ldns simulate network` the data's single-bin variance/mean is 1.17-1.25 and the model's
    1.03-1.06, and that deficit is what leaves the free-running Fano factors short (history
    1.01-1.10 against the data's 1.12-1.26). Gamma-Poisson counts add α·E[λ²]/E[λ] to a bin's
    variance/mean, and for Poisson counts E[λ²] = E[s(s − 1)] = mean·(variance/mean − 1 + mean),
    so the moment estimate from one free-running draw is
    α̂ = (data's − samples' variance/mean) / (samples' variance/mean − 1 + mean), clipped to
    [0, MAX_COUNT_DISPERSION];
    the multiples COUNT_DISPERSION_SCALES of it are then tried side by side, rates matched, and
    each neuron keeps the one its free-running Fano factor and autocorrelation choose (the first,
    α = 0, on ties). The gamma gain keeps a bin's mean, so the candidates' rates are matched in
    at most COUNT_DISPERSION_RATE_ROUNDS rounds (what the cap and the feedback move). `moments`:
    the model's free-running moments when already sampled (`match_free_running_dispersion`
    returns them); None draws them. Modifies `model` in place (count dispersion and intercepts);
    returns the chosen α [N] and the moment estimates α̂ [N].
    """
    N = model.n_neurons
    if moments is None:
        s, s_len, d, d_len, _ = sample_free_running(
            model, batches, n_trials, seed, MIN_DISPERSION_TRIALS
        )
        moments = BinMoments(bin_moments(d, d_len)[1], *bin_moments(s, s_len))
    with np.errstate(invalid="ignore", divide="ignore"):
        estimate = (moments.data_ratio - moments.ratio) / (moments.ratio - 1.0 + moments.mean)
    estimate = np.clip(np.nan_to_num(estimate, nan=0.0, posinf=0.0), 0.0, MAX_COUNT_DISPERSION)
    if not (estimate > 0).any():
        return np.zeros(N), estimate
    base = model.dispersions()
    alpha_hat = torch.as_tensor(estimate, dtype=base.dtype, device=base.device)
    variants = []
    for scale in COUNT_DISPERSION_SCALES:
        v = copy.deepcopy(model)
        v.set_count_dispersion(base + scale * alpha_hat)
        variants.append(v)
    rounds = min(rate_rounds, COUNT_DISPERSION_RATE_ROUNDS)
    best, _, _, _ = _choose_variants(variants, batches, n_trials, rounds, seed)
    rows = torch.as_tensor(np.arange(N), device=base.device)
    pick = torch.as_tensor(best, device=base.device)
    alpha = torch.stack([v.dispersions() for v in variants])[pick, rows]
    model.set_count_dispersion(alpha)
    model.bias.copy_(torch.stack([v.bias.detach() for v in variants])[pick, rows])
    if model.coupling_rank > 0:  # the mixture's neurons drive one another: match it as a whole
        match_free_running_rates(model, batches, n_trials, rate_rounds, seed, MIN_DISPERSION_TRIALS)
    return alpha.cpu().numpy().astype(np.float64), estimate


@torch.no_grad()
def apply_dispersion_factors(model: SpikeHistoryObservation, factors: np.ndarray) -> None:
    """Scale each neuron's excitatory and inhibitory kernel parts and its excitation bound by
    its row of `factors` [N, 3] (`match_free_running_dispersion`'s result), in place; a fourth
    column is the count dispersion α (`match_count_dispersion`'s)."""
    f = torch.as_tensor(factors, dtype=model.history.dtype, device=model.history.device)
    w = model.history.detach()
    model.history.copy_(f[:, 1:2] * w.clamp_max(0.0) + f[:, 0:1] * w.clamp_min(0.0))
    bounds = model.bounds()
    if bounds is not None:
        model.set_excitation_bound(f[:, 2] * bounds)
    if f.shape[1] > 3:
        model.set_count_dispersion(f[:, 3])


@torch.no_grad()
def _largest_excitation(model: SpikeHistoryObservation, batches: MatchBatches) -> Tensor:
    """Per neuron, the largest Σ_k w⁺_k s̃_{t−k} over the observed histories of `batches` [N]."""
    plain = SpikeHistoryObservation(
        model.n_neurons, model.history_bins, model.max_count, history_input=model.history_input
    )
    plain = plain.to(model.history.device)
    plain.history.copy_(model.history.detach().clamp_min(0.0))
    most = torch.zeros(model.n_neurons, device=model.history.device)
    for counts, rates, mask in batches():
        valid = mask[..., None].to(counts.dtype)
        x = plain.history_term(counts * valid, rates * valid)  # [b, L, N]
        most = torch.maximum(most, x.amax((0, 1)))
    return most


def batches_for_data(batches: MatchBatches, wide: MatchBatches) -> MatchBatches:
    """`wide`'s rates with `batches`' counts (the data side keeps its own neurons)."""

    def paired() -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        for (counts, _, _), (_, rates, mask) in zip(batches(), wide(), strict=True):
            yield counts, rates, mask

    return paired


def _neuron_slice(stats: NeuronStats, lo: int, hi: int) -> NeuronStats:
    return NeuronStats(
        rate_hz=stats.rate_hz[lo:hi],
        fano=stats.fano[lo:hi],
        isi_mean_s=stats.isi_mean_s[lo:hi],
        isi_std_s=stats.isi_std_s[lo:hi],
        autocorr=stats.autocorr[:, lo:hi],
        max_count=stats.max_count[lo:hi],
    )


@torch.no_grad()
def select_neurons(
    model: SpikeHistoryObservation,
    counts: Tensor,
    rates: Tensor,
    mask: Tensor,
    bin_size_s: float,
    seed: int = 0,
    data_max: np.ndarray | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Per neuron, history or Poisson: whichever generates statistics closer to held-out trials.

    Both candidates sample the held-out trials free-running from the same rates (each trial
    repeated up to MIN_SAMPLED_TRIALS times); the Poisson candidate carries the history model's
    per-neuron count cap, as `--observation auto` applies it. Each neuron's rate, Fano factor,
    ISI mean and std, autocorrelation (lags 1..10) and maximum count (as a draw of the held-out
    set's size shows it, `draw_sized_max`) are compared with the held-out trials' (the maximum:
    `data_max` [N] where given, `data_draw_max`), choosing for the population as `ldns evaluate`
    will score it
    (`scoring.neurons.choose_per_neuron`: the squared scores summed over statistics, each RMSE
    over the neurons on the scale between the data's noise and a homogeneous Poisson process);
    ties go to Poisson, the simpler model. `discrepancy_*` record how far each neuron lands.
    Returns use_history [N] bool and the figures (per-neuron statistics of data and both
    candidates, their discrepancies) for the checkpoint.
    """
    N = model.n_neurons
    poisson = SpikeHistoryObservation(
        N, model.history_bins, model.max_count, max_excitation=model.max_excitation
    ).to(rates.device)
    poisson.set_selection(None, model.count_cap)
    batches = tensor_batches(counts, rates, mask)
    n = int(counts.shape[0])
    candidates = [model, poisson]
    if model.coupling_rank == 0:  # both candidates in one sampling loop
        wide = _stacked(candidates)
        s, s_len, d, d_len, source = sample_free_running(
            wide, batches_for_data(batches, _repeated(batches, 2)), n, seed, MIN_SAMPLED_TRIALS
        )
        sampled = neuron_stats(s, s_len, bin_size_s)
        sampled = dataclasses.replace(sampled, max_count=draw_sized_max(s, s_len, source))
        stats = {
            "data": neuron_stats(d, d_len, bin_size_s),
            "history": _neuron_slice(sampled, 0, N),
            "poisson": _neuron_slice(sampled, N, 2 * N),
        }
    else:
        stats = {}
        for name, candidate in zip(("history", "poisson"), candidates, strict=True):
            s, s_len, d, d_len, source = sample_free_running(
                candidate, batches, n, seed, MIN_SAMPLED_TRIALS
            )
            stats[name] = dataclasses.replace(
                neuron_stats(s, s_len, bin_size_s), max_count=draw_sized_max(s, s_len, source)
            )
            stats["data"] = neuron_stats(d, d_len, bin_size_s)
    if data_max is not None:
        stats["data"] = dataclasses.replace(stats["data"], max_count=data_max)
    scales = score_scales(d, d_len, bin_size_s, stats["data"], seed)
    # Poisson first: ties keep the simpler model
    use_history = (
        choose_per_neuron([stats["poisson"], stats["history"]], stats["data"], scales) == 1
    )
    d_hist = discrepancy(stats["history"], stats["data"], scales)
    d_pois = discrepancy(stats["poisson"], stats["data"], scales)
    figures: dict[str, Any] = {
        "trials": n,
        "sampled_trials": n * _repeats(MIN_SAMPLED_TRIALS, n),
        "use_history": [bool(x) for x in use_history],
        "discrepancy_history": [round(float(x), 4) for x in d_hist],
        "discrepancy_poisson": [round(float(x), 4) for x in d_pois],
        "scales": scales.as_dict(),
        **{f"stats_{k}": v.as_dict() for k, v in stats.items()},
    }
    return use_history, figures


def free_running_rmse(figures: dict[str, Any]) -> dict[str, dict[str, float]]:
    """RMSE across neurons of each statistic, per candidate and for the per-neuron choice."""
    use = np.asarray(figures["use_history"], dtype=bool)
    out: dict[str, dict[str, float]] = {}
    data = figures["stats_data"]
    for stat in ("rate_hz", "fano", "isi_mean_s", "isi_std_s", "autocorr_lag1"):
        d = np.asarray(data[stat], dtype=np.float64)
        h = np.asarray(figures["stats_history"][stat], dtype=np.float64)
        p = np.asarray(figures["stats_poisson"][stat], dtype=np.float64)
        c = np.where(use, h, p)

        def rmse(x: np.ndarray, d: np.ndarray = d) -> float:
            e = (x - d)[np.isfinite(x - d)]
            return float(np.sqrt(np.mean(e**2))) if e.size else float("nan")

        out[stat] = {"history": rmse(h), "poisson": rmse(p), "chosen": rmse(c)}
    return out


def _fit_adamw(
    model: SpikeHistoryObservation,
    design: _Design,
    cfg: HistoryConfig,
    generator: torch.Generator,
    progress: bool,
) -> None:
    """AdamW, full batch or mini-batches of `batch_bins` bins, cosine decay to 1% of `lr`."""
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n_iter = max(1, cfg.iterations)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(i, n_iter) / n_iter))
    )
    M = design.n_bins
    full_batch = cfg.batch_bins == 0 or cfg.batch_bins >= M
    perm, pos = torch.empty(0, dtype=torch.long), 0
    with console.progress("history fit", total=cfg.iterations) as bar:
        task = bar.add_task("fit-history", total=cfg.iterations, status="", visible=progress)
        for it in range(cfg.iterations):
            if full_batch:
                batch = design
            else:
                if pos + cfg.batch_bins > len(perm):
                    perm, pos = torch.randperm(M, generator=generator), 0
                idx = perm[pos : pos + cfg.batch_bins].to(design.X.device)
                pos += cfg.batch_bins
                batch = design.subset(idx)
            opt.zero_grad(set_to_none=True)
            loss = batch.nll(model)
            loss.backward()
            opt.step()
            sched.step()
            if progress and (it % 25 == 0 or it == cfg.iterations - 1):
                bar.update(task, completed=it + 1, status=f"nll {float(loss):.5f}")


def _fit_lbfgs(model: SpikeHistoryObservation, design: _Design, cfg: HistoryConfig) -> None:
    """Full-batch L-BFGS with a strong-Wolfe line search (the loss is convex without coupling).

    `iterations` bounds the L-BFGS iterations (it stops earlier once the loss stops changing).
    `weight_decay` becomes a weak Gaussian prior wd/2·‖θ − θ_Poisson‖² on the summed NLL, centred
    on the Poisson reduction (w = 0, a = 1, b = 0), so silent neurons keep finite parameters.
    """
    params = list(model.parameters())
    anchors = [p.detach().clone() for p in params]
    opt = torch.optim.LBFGS(
        params,
        lr=1.0,
        max_iter=max(1, cfg.iterations),
        history_size=20,
        tolerance_grad=1e-9,
        tolerance_change=1e-10,
        line_search_fn="strong_wolfe",
    )
    n = design.target.numel()

    def closure() -> Tensor:
        opt.zero_grad(set_to_none=True)
        loss = design.nll(model)
        if cfg.weight_decay:
            prior = sum(((p - a) ** 2).sum() for p, a in zip(params, anchors, strict=True))
            loss = loss + 0.5 * cfg.weight_decay * prior / n
        loss.backward()
        return loss

    opt.step(closure)


@torch.no_grad()
def validation_nll(model: Observation, counts: Tensor, rates: Tensor, mask: Tensor | None) -> float:
    """Mean negative log-likelihood per valid neuron-bin (nats), teacher-forced for history."""
    B, L, N = counts.shape
    if mask is None:
        mask = torch.ones(B, L, dtype=torch.bool, device=rates.device)
    lp = model.log_prob(counts.to(rates), rates, mask)
    return float(-lp.sum() / (mask.sum() * N).clamp_min(1))


def save_history(
    model: SpikeHistoryObservation,
    cfg: HistoryConfig,
    fingerprint: dict[str, Any],
    models_dir: Path,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write `<models>/history.safetensors` (weights, resolved config, data fingerprint, and the
    per-neuron choice `selection.use_history` / ceiling `selection.count_cap` when made). The
    config is saved with the model's own coupling rank, which "auto" resolved to, and its own
    history input."""
    path = history_path(models_dir)
    cfg = dataclasses.replace(
        cfg, coupling_rank=model.coupling_rank, history_input=model.history_input
    )
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    choice = getattr(model, "neuron_choice", None)
    if choice is not None:
        tensors["selection.use_history"] = torch.as_tensor(choice, dtype=torch.uint8).cpu()
    if model.count_cap is not None:
        tensors["selection.count_cap"] = model.count_cap.detach().float().cpu()
    if model.excitation_bound is not None:
        tensors["selection.excitation_bound"] = model.excitation_bound.detach().float().cpu()
    if model.count_dispersion is not None:
        tensors["selection.count_dispersion"] = model.count_dispersion.detach().float().cpu()
    if model.count_correlation is not None:
        tensors["selection.count_correlation"] = model.count_correlation.detach().float().cpu()
    summary = dict(getattr(model, "fit_summary", {}))
    summary.update(extra or {})
    save_checkpoint(
        path,
        Checkpoint(
            kind="history",
            tensors=tensors,
            config=config_to_dict(cfg),
            fingerprint=fingerprint,
            extra=summary,
        ),
    )
    return path


# ---------------------------------------------------------------------------- AE glue
def _tensors(data: SpikeData, rates: np.ndarray, device: str) -> tuple[Tensor, Tensor, Tensor]:
    counts = torch.as_tensor(np.asarray(data.counts, dtype=np.float32), device=device)
    r = torch.as_tensor(np.asarray(rates, dtype=np.float32), device=device)
    mask = torch.as_tensor(data.mask(), device=device)
    return counts, r, mask


def fit_history_for_ae(
    ae: Any,
    train: SpikeData,
    val: SpikeData | None,
    models_dir: Path,
    device: str,
    seed: int,
    quiet: bool = False,
    cfg: HistoryConfig | None = None,
    batch_size: int = 64,
) -> SpikeHistoryObservation:
    """Fit the history model on a fitted AE's rates for `train`, report, and save it.

    Reports on stderr the validation NLL (nats per neuron-bin, teacher-forced) of history vs
    Poisson on the AE's rates for `val` (or `train` when there is no validation split) and, with
    `select_per_neuron`, the free-running comparison that decides, per neuron, which of the two
    `--observation auto` samples with (`select_neurons`). With `coupling_rank` "auto" the model
    is fitted without coupling and, where its free-running validation samples miss the
    population's shared structure, again with a coupling; `choose_coupling` keeps one.
    """
    from ldns_cli.nn.autoencoder import infer, infer_latents

    cfg = (cfg or HistoryConfig()).resolve(train.bin_size_s)
    gen = torch.Generator().manual_seed(int(seed))
    if not quiet:
        on = "" if cfg.history_input == SPIKES else "; kernels on the deviations from the rates"
        console.info(
            f"spike history: {cfg.history_bins} bins ({cfg.history_bins * train.bin_size_s * 1e3:g}"
            f" ms), cap {cfg.max_count}, {cfg.iterations} iterations{on}"
        )
    fingerprint = train.fingerprint()  # of all training trials, before any subsampling
    # rate matching runs over every training trial: the encoder runs once (latents [B, L, Z]
    # are N/Z times smaller than rates), the cheap per-bin decoder once per round and chunk
    all_train = train
    encoded: list[Tensor] = []  # filled on the first round (none with 0 rounds)

    def match_batches(chunk: int = 256) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        if not encoded:
            encoded.append(torch.from_numpy(infer_latents(ae, all_train, batch_size, device)))
        all_latents = encoded[0]
        for i in range(0, all_train.n_trials, chunk):
            part = all_train.counts[i : i + chunk]
            counts = torch.as_tensor(part, dtype=torch.float32, device=device)  # [b, L, N]
            mask = torch.as_tensor(all_train.mask()[i : i + chunk], device=device)  # [b, L]
            with torch.no_grad():
                rates = ae.decode(all_latents[i : i + chunk].to(device)) * mask[..., None]
            yield counts, rates, mask

    auto_coupling = cfg.coupling_rank == AUTO
    fit_cfg = dataclasses.replace(cfg, coupling_rank=0) if auto_coupling else cfg
    # pick the fit trials first, so the AE only runs on trials that are used
    keep = fit_trials(torch.as_tensor(train.lengths), train.n_neurons, cfg, gen)
    train = train if keep is None else train.select(keep.numpy())
    _, train_rates = infer(ae, train, batch_size, device)
    counts, rates, mask = _tensors(train, train_rates, device)

    def fit(
        c: HistoryConfig, g: torch.Generator, factors: np.ndarray | None = None
    ) -> SpikeHistoryObservation:
        m = fit_history(
            counts, rates, mask, c, g, progress=not quiet,
            match_set=(match_batches, all_train.n_trials), dispersion_factors=factors,
        )  # fmt: skip
        if not quiet:
            _report_matching(m, c)
        return m

    model = fit(fit_cfg, gen)
    # validation on at most the same budget of trials
    ref = val if val is not None else train
    keep = fit_trials(torch.as_tensor(ref.lengths), ref.n_neurons, cfg, gen)
    ref = ref if keep is None else ref.select(keep.numpy())
    ref_rates = train_rates if val is None else infer(ae, ref, batch_size, device)[1]
    vc, vr, vm = _tensors(ref, ref_rates, device)
    split = "validation" if val is not None else "training"
    sel_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
    select = cfg.select_per_neuron
    # the training trials refine the data's maximum counts (once for every candidate); without a
    # validation split they are the held-out set themselves
    data_max = None
    if select and val is not None:
        held_out = (vc * vm[..., None].to(vc.dtype)).cpu().numpy()  # [B, L, N]
        data_max = data_draw_max(held_out, vm.sum(1).cpu().numpy(), all_train, sel_seed)
    _validate(model, select, vc, vr, vm, ref.bin_size_s, split, sel_seed, quiet, data_max)
    if auto_coupling:
        coupling_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
        # the coupled candidate takes the uncoupled fit's dispersion factors: searching them
        # again samples the training set once per candidate in turn, the costliest step of a
        # coupled fit
        factors = _matched_factors(model, cfg)
        model = choose_coupling(
            model,
            lambda rank: fit(
                dataclasses.replace(cfg, coupling_rank=rank),
                torch.Generator().manual_seed(coupling_seed),
                factors,
            ),
            lambda m: _validate(
                m, select, vc, vr, vm, ref.bin_size_s, split, sel_seed, quiet, data_max
            ),
            (vc, vr, vm),
            all_train,
            None if val is None else split,
            coupling_seed,
            quiet,
        )
    if cfg.count_correlation != COPULA_NEVER:
        copula_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
        choose_count_correlation(
            model,
            match_batches,
            all_train.n_trials,
            (vc, vr, vm),
            all_train,
            None if val is None else split,
            copula_seed,
            quiet,
            always=cfg.count_correlation == COPULA_ALWAYS,
        )
    # the training data's per-neuron range, for `sample`'s out-of-range warnings
    model.fit_summary["data_range"] = neuron_range(  # type: ignore[attr-defined]
        all_train.counts, all_train.lengths, all_train.bin_size_s
    ).as_dict()
    model.fit_summary.update(  # type: ignore[attr-defined]
        {"nll_split": split, "history_bins": cfg.history_bins, "seed": int(seed)}
    )
    path = save_history(model, cfg, fingerprint, models_dir)
    if not quiet:
        console.info(f"spike history: wrote {path}")
    return model


def _matched_factors(model: SpikeHistoryObservation, cfg: HistoryConfig) -> np.ndarray | None:
    """The (excitation, inhibition, bound) factors and count dispersion α [N, 4] the
    dispersion matching chose for `model`, from its summary; None where it did not run."""
    summary = model.fit_summary  # type: ignore[attr-defined]
    if not summary.get("match_dispersion") or "dispersion_scale" not in summary:
        return None
    exc = np.asarray(summary["dispersion_scale"], dtype=np.float64)
    inh = np.asarray(summary["inhibition_scale"], dtype=np.float64)
    bound = np.ones_like(exc)
    if "excitation_bound" in summary and cfg.max_excitation:
        bound = np.asarray(summary["excitation_bound"], dtype=np.float64) / cfg.max_excitation
    alpha = np.asarray(summary.get("count_dispersion", np.zeros_like(exc)), dtype=np.float64)
    return np.stack([exc, inh, bound, alpha], axis=1)


def _report_matching(model: SpikeHistoryObservation, cfg: HistoryConfig) -> None:
    """One line on what the dispersion matching changed (when it ran)."""
    summary = model.fit_summary  # type: ignore[attr-defined]
    if not summary.get("match_dispersion"):
        return
    if summary.get("dispersion_factors_given"):
        console.info("spike history: the uncoupled fit's dispersion factors applied")
        return
    exc = np.asarray(summary["dispersion_scale"])
    inh = np.asarray(summary["inhibition_scale"])
    raised = np.asarray(summary.get("excitation_bound", [])) > (cfg.max_excitation or 0.0)
    alpha = np.asarray(summary.get("count_dispersion", []))
    console.info(
        f"spike history: dispersion matched on free-running samples; of {exc.size} units, "
        f"{int((exc < 1).sum())} with weaker excitation, {int((inh < 1).sum())} with weaker "
        f"inhibition, {int(raised.sum())} with a raised excitation bound, "
        f"{int((alpha > 0).sum())} with over-dispersed counts"
    )


_STAT_LABELS = {
    "fano": "Fano factor",
    "isi_mean_s": "ISI mean",
    "isi_std_s": "ISI spread",
    "autocorr": "autocorrelation",
}


def _validate(
    model: SpikeHistoryObservation,
    select: bool,
    vc: Tensor,
    vr: Tensor,
    vm: Tensor,
    bin_size_s: float,
    split: str,
    sel_seed: int,
    quiet: bool,
    data_max: np.ndarray | None = None,
) -> None:
    """Teacher-forced NLL against Poisson and, with `select` (`select_per_neuron`), the
    free-running per-neuron choice on the held-out tensors (`data_max`: the data's maximum counts,
    `data_draw_max`); reported and added to `fit_summary`."""
    nll_h = validation_nll(model, vc, vr, vm)
    nll_p = validation_nll(PoissonObservation(), vc, vr, vm)
    n_spikes = float(vc.sum())
    gain_bits = (nll_p - nll_h) * float(vm.sum()) * vc.shape[-1] / max(n_spikes, 1.0) / math.log(2)
    summary = model.fit_summary  # type: ignore[attr-defined]
    summary.update({"nll_history": nll_h, "nll_poisson": nll_p, "gain_bits_per_spike": gain_bits})
    if not quiet:
        console.info(
            f"spike history: {split} NLL {nll_h:.5f} vs Poisson {nll_p:.5f} nats/bin/neuron "
            f"({gain_bits:+.4f} bits/spike)"
        )
    if not select:
        return
    use_history, figures = select_neurons(model, vc, vr, vm, bin_size_s, sel_seed, data_max)
    model.neuron_choice = use_history  # type: ignore[attr-defined]
    rmse = free_running_rmse(figures)
    figures["rmse"] = rmse
    summary["selection"] = figures
    if quiet:
        return
    console.info(
        f"spike history, free-running on {figures['trials']} {split} trials: history "
        f"kept for {int(use_history.sum())}/{use_history.size} neurons, Poisson for the "
        "rest (`--observation auto`)"
    )
    ignored = [k for k, v in figures["scales"]["informative"].items() if not v]
    if ignored:
        names = ", ".join(_STAT_LABELS.get(k, k) for k in ignored)
        console.info(
            f"  left out of the choice, the {split} trials cannot score them (a homogeneous "
            f"Poisson draw lands as close to them as noise): {names}"
        )
    for stat, label in (
        ("rate_hz", "rate (Hz)"),
        ("fano", "Fano factor"),
        ("isi_mean_s", "ISI mean (s)"),
        ("autocorr_lag1", "lag-1 autocorrelation"),
    ):
        r = rmse[stat]
        console.info(
            f"  {label} RMSE over neurons vs held-out: history {r['history']:.3g}, "
            f"Poisson {r['poisson']:.3g}, chosen {r['chosen']:.3g}"
        )


# the coupling choice ("auto"): a coupling is tried when the uncoupled model's free-running
# validation samples score above COUPLING_TRIGGER (the goal of `ldns evaluate`'s scores) on the
# spectrum of the population PCs or on pairwise correlations, the shared structure independent
# units cannot produce; it is kept when the squared scores of COUPLING_METRICS, summed, fall
# clearly below the uncoupled model's. Measured on the validation trials of the realism beds
# (python bench/quality_realism.py): the E/I network's uncoupled PSD score 0.28 triggers it;
# on reach-bursting, whose shared structure comes from the latents, rank 1 would raise the
# correlation score from 0.04 to 0.18, and the other beds' spectrum and correlation scores stay
# below 0.1.
COUPLING_TRIGGER = 0.1
COUPLING_TRIGGER_METRICS = ("psd_log_mse", "corr_rmse")
COUPLING_METRICS = ("psc_w1", "corr_rmse", "psd_log_mse", "fano_rmse", "autocorr_rmse")
# the coupled model is kept when its cost is lower by more than COUPLING_Z standard errors of
# the difference, from COUPLING_BOOTSTRAP paired resamples of the validation trials. With 16 the
# estimate itself was noisy enough to decide: on 400 E/I network trials (`ldns simulate network
# --seed 1`) the copula's standard error came out 0.036 and 0.050 in two fits differing in a few
# units' history/Poisson choice, against 0.026 and 0.031 with 64 resamples, and the copula was
# kept in one fit and not the other (its cost fell 0.08 in both). The price: where a choice is
# tried, each standard error takes about 35 s instead of 10 s on that bed's 35 validation
# trials repeated to 512 (1 thread, a shared box; synthetic counts of its size)
COUPLING_Z = 2.0
COUPLING_BOOTSTRAP = 64
# fewer held-out trials than this cannot judge a coupling: their population scores are noise
# (the spectrum's Welch segments and the pairwise correlations come from a few thousand bins)
MIN_COUPLING_TRIALS = 20


def population_check(
    model: SpikeHistoryObservation,
    held_out: tuple[Tensor, Tensor, Tensor],
    other: SpikeData,
    seed: int,
    metrics: tuple[str, ...] = COUPLING_METRICS,
) -> tuple[dict[str, Any], FreeRunningSets]:
    """`scoring.population.population_scores` of `--observation auto`'s free-running samples of
    the held-out trials (each repeated up to MIN_SAMPLED_TRIALS times), with `other` trials of the
    recording as the floor, and `cost`: the sum of the squared positive scores of `metrics` (a
    metric without a score adds nothing). Returns those figures and the
    samples (`sample_free_running`'s output), for `_cost_difference_se`."""
    counts, rates, mask = held_out
    n = int(counts.shape[0])
    sets = sample_free_running(
        auto_selected(model), tensor_batches(counts, rates, mask), n, seed, MIN_SAMPLED_TRIALS
    )
    scores, cost = _population_costs([sets], other, seed, metrics)[0]
    return {"scores": scores, "cost": cost}, sets


def _population_costs(
    candidates: list[FreeRunningSets],
    other: SpikeData,
    seed: int,
    metrics: tuple[str, ...],
    trials: np.ndarray | None = None,
    rows: np.ndarray | None = None,
) -> list[tuple[dict[str, dict[str, float | None]], float]]:
    """Scores and cost of each candidate's free-running sets, all sampled for the same held-out
    trials in the same order (the data, floor and naive sets are scored once); with `trials`
    (held-out trial indices, repeats allowed) and `rows` (the sampled trials drawn for them),
    of that resample only."""
    _, s_len, d, d_len, _ = candidates[0]
    sampled = [c[0] for c in candidates]
    if trials is not None:
        sampled, s_len, d, d_len = [s[rows] for s in sampled], s_len[rows], d[trials], d_len[trials]
    all_scores = population_scores(
        sampled, s_len, d, d_len, other.counts, other.lengths, other.bin_size_s, seed
    )
    return [
        (scores, float(sum(max(scores[m]["score"] or 0.0, 0.0) ** 2 for m in metrics)))
        for scores in all_scores
    ]


def _cost_difference_se(
    first: FreeRunningSets,
    second: FreeRunningSets,
    other: SpikeData,
    seed: int,
    metrics: tuple[str, ...] = COUPLING_METRICS,
) -> float:
    """Standard error of cost(second) − cost(first) over the held-out trials: the spread of the
    paired difference over COUPLING_BOOTSTRAP resamples of the trials (each with the samples
    drawn for it, for both models alike: both sample the same trials in the same order)."""
    rng = np.random.default_rng([int(seed), 11])
    source = first[4]
    n = first[2].shape[0]
    by_trial = [np.flatnonzero(source == i) for i in range(n)]
    diffs = []
    for _ in range(COUPLING_BOOTSTRAP):
        trials = rng.integers(0, n, n)
        rows = np.concatenate([by_trial[i] for i in trials])
        (_, a), (_, b) = _population_costs([first, second], other, seed, metrics, trials, rows)
        diffs.append(b - a)
    return float(np.std(diffs, ddof=1))


def _cannot_judge(
    held_out: tuple[Tensor, Tensor, Tensor], split: str | None, what: str
) -> str | None:
    """Why the held-out trials cannot judge `what` (none, or fewer than MIN_COUPLING_TRIALS),
    or None when they can."""
    n_held = int(held_out[0].shape[0])
    if split is None:
        return f"no validation trials to judge {what} on"
    if n_held < MIN_COUPLING_TRIALS:
        return (
            f"{n_held} {split} trials are too few to judge {what} on "
            f"(at least {MIN_COUPLING_TRIALS})"
        )
    return None


def choose_coupling(
    uncoupled: SpikeHistoryObservation,
    fit_coupled: Callable[[int], SpikeHistoryObservation],
    validate: Callable[[SpikeHistoryObservation], None],
    held_out: tuple[Tensor, Tensor, Tensor],
    other: SpikeData,
    split: str | None,
    seed: int,
    quiet: bool = False,
) -> SpikeHistoryObservation:
    """`coupling_rank` "auto": the uncoupled model, or one with a rank-AUTO_COUPLING_RANK
    coupling where that generates the held-out trials' population statistics clearly better.

    `fit_coupled(rank)` fits the coupled candidate, `validate(model)` runs its held-out
    selection; `held_out` are the (counts, rates, mask) both are judged on, free-running, and
    `other` the trials whose scores against them are the floor (the training trials). `split`
    None (no held-out trials) keeps the uncoupled model, since the training trials cannot judge
    a model fitted on them, and so do fewer than MIN_COUPLING_TRIALS held-out trials. The
    figures go to the kept model's `fit_summary["coupling"]`.
    """
    summary: dict[str, Any] = {"rank": 0}

    def uncoupled_because(reason: str) -> SpikeHistoryObservation:
        summary["reason"] = reason
        uncoupled.fit_summary["coupling"] = summary  # type: ignore[attr-defined]
        if not quiet:
            console.info(f"spike history: no coupling between units: {reason}")
        return uncoupled

    unjudged = _cannot_judge(held_out, split, "a coupling")
    if unjudged:
        return uncoupled_because(unjudged)
    before, before_sets = population_check(uncoupled, held_out, other, seed)
    summary["uncoupled"] = before
    missed = {
        m: before["scores"][m]["score"]
        for m in COUPLING_TRIGGER_METRICS
        if (before["scores"][m]["score"] or 0.0) > COUPLING_TRIGGER
    }
    if not missed:
        return uncoupled_because(
            f"free-running {split} samples score ≤ {COUPLING_TRIGGER} on population spectrum "
            "and correlations"
        )
    names = ", ".join(f"{_POPULATION_LABELS[m]} {v:.2f}" for m, v in missed.items())
    if not quiet:
        console.info(
            f"spike history: free-running {split} samples score above {COUPLING_TRIGGER} on "
            f"{names}: fitting a rank-{AUTO_COUPLING_RANK} coupling between units"
        )
    coupled = fit_coupled(AUTO_COUPLING_RANK)
    validate(coupled)
    after, after_sets = population_check(coupled, held_out, other, seed)
    summary["coupled"] = after
    se = _cost_difference_se(before_sets, after_sets, other, seed)
    summary["cost_difference_se"] = se
    keep = before["cost"] - after["cost"] > COUPLING_Z * se
    detail = (
        f"population score² sum {after['cost']:.3f} coupled vs {before['cost']:.3f} uncoupled on "
        f"{split} trials (kept when lower by more than {COUPLING_Z:g} standard errors, "
        f"{COUPLING_Z * se:.3f})"
    )
    summary["reason"] = detail
    summary["rank"] = AUTO_COUPLING_RANK if keep else 0
    chosen = coupled if keep else uncoupled
    chosen.fit_summary["coupling"] = summary  # type: ignore[attr-defined]
    if not quiet:
        verdict = f"rank-{AUTO_COUPLING_RANK} coupling kept" if keep else "coupling not kept"
        console.info(f"spike history: {verdict}: {detail}")
    return chosen


# what the copula is judged on: it leaves every unit's own law unchanged, so of COUPLING_METRICS
# only those of the population can move (the others would add their sampling noise alone)
COPULA_METRICS = ("psc_w1", "corr_rmse", "psd_log_mse")
# the copula's correlations are clipped to this magnitude before the matrix is made positive
# semi-definite (a pair at ±1 would draw one unit's uniforms from the other's)
COPULA_MAX_CORRELATION = 0.95
# thresholds a neuron without any cap sums in its Hermite coefficient (P(X ≤ 15) ≈ 1 at rates
# below a few spikes per bin)
HERMITE_UNCAPPED_COUNTS = 16
# terms of the copula's covariance series used to solve for its correlations: the first alone
# puts a correlation of 0.4 between Poisson units at 0.53 (the skewed counts' second term is
# large), four recover it (tests/test_count_correlation.py)
HERMITE_ORDER = 4
# bins × units per chunk of the Hermite moments: their float64 buffers [bins, N, cap] stay within
# tens of MB whatever the recording's size
HERMITE_CHUNK_ELEMENTS = 1_000_000


def _pooled_covariance(counts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Covariance [N, N] of the counts over all valid bins pooled (as `ldns evaluate`'s pairwise
    correlations pool them), float64."""
    valid = np.arange(counts.shape[1])[None, :] < lengths[:, None]  # [B, L]
    return np.cov(counts[valid].astype(np.float64), rowvar=False)


@torch.no_grad()
def _hermite_moments(model: SpikeHistoryObservation, batches: MatchBatches) -> np.ndarray:
    """E[c_n,i·c_n,j]/n! [HERMITE_ORDER, N, N] over the valid bins of `batches`, c_n the Hermite
    coefficients of each neuron's count (`copula_hermite`) at the bin's rate with the neuron's
    dispersion and cap: a copula correlation ρ_ij adds Σ_n ρ_ijⁿ·moments[n−1, i, j] to the
    covariance of the two counts. (A history neuron's intensity varies around its rate; its
    mean is matched to it.)"""
    caps = torch.full((model.n_neurons,), float(model.max_count or HERMITE_UNCAPPED_COUNTS))
    if model.count_cap is not None:
        caps = torch.minimum(caps, model.count_cap.detach().cpu().float())
    caps = caps.clamp_min(1).long()
    alpha = None if model.count_dispersion is None else model.count_dispersion.detach().cpu()
    N = model.n_neurons
    total, bins = np.zeros((HERMITE_ORDER, N, N)), 0
    rows = max(1, HERMITE_CHUNK_ELEMENTS // N)  # bins per chunk: [M, N, cap] float64 buffers
    for _, rates, mask in batches():
        lam = rates[mask].detach().cpu()  # [M, N]
        for lo in range(0, lam.shape[0], rows):
            c = copula_hermite(lam[lo : lo + rows], alpha, caps, HERMITE_ORDER).numpy()
            total += np.einsum("omi,omj->oij", c, c)  # c [order, m, N]
            bins += c.shape[1]
    factorial = np.array([math.factorial(n + 1) for n in range(HERMITE_ORDER)])[:, None, None]
    return total / max(bins, 1) / factorial


def _solve_copula_correlation(target: np.ndarray, moments: np.ndarray) -> np.ndarray:
    """ρ [N, N] with Σ_n ρⁿ·moments[n−1] = target, per pair, by bisection within
    ±COPULA_MAX_CORRELATION (the covariance rises with ρ); 0 where a unit cannot covary."""
    lo = np.full(target.shape, -COPULA_MAX_CORRELATION)
    hi = np.full(target.shape, COPULA_MAX_CORRELATION)
    for _ in range(40):
        mid = (lo + hi) / 2
        covariance = sum(mid ** (n + 1) * moments[n] for n in range(len(moments)))
        above = covariance > target
        hi, lo = np.where(above, mid, hi), np.where(above, lo, mid)
    return np.where(moments[0] > 0, (lo + hi) / 2, 0.0)


def _unit_diagonal_psd(R: np.ndarray) -> tuple[np.ndarray, float]:
    """The nearest correlation matrix by eigenvalue clipping (negative eigenvalues set to 0, the
    diagonal rescaled to 1), and the share of |eigenvalues| that were negative."""
    values, vectors = np.linalg.eigh((R + R.T) / 2)
    clipped = (vectors * np.clip(values, 0.0, None)) @ vectors.T
    scale = np.sqrt(np.clip(np.diag(clipped), 1e-12, None))
    out = clipped / np.outer(scale, scale)
    np.fill_diagonal(out, 1.0)
    share = float(-np.clip(values, None, 0.0).sum() / max(np.abs(values).sum(), 1e-12))
    return out, share


def fit_count_correlation(
    model: SpikeHistoryObservation, batches: MatchBatches, n_trials: int, seed: int
) -> tuple[Tensor | None, dict[str, Any]]:
    """The copula correlation R [N, N] that gives the free-running samples the count covariance
    they miss on the trials of `batches`, or None where what they miss is noise.

    The model (without a copula) samples every trial free-running (repeated up to
    MIN_SAMPLED_TRIALS trials); the missing covariance is Δ = Cov(data) − Cov(samples), both
    pooled over valid bins. A copula correlation ρ_ij adds Σ_n ρ_ijⁿ·E[c_n,i·c_n,j]/n! to it
    (`copula_hermite`, HERMITE_ORDER terms), and R_ij solves that for κ·Δ_ij. Δ comes from a
    few hundred trials, and on held-out trials the full estimate overshoots (the E/I network
    bed, a first-order estimate: test correlation score 0.30 without a copula, 0.27 at κ = 1,
    0.16 at κ = 0.5; ad hoc probe), so κ is Δ's reliability: with Δ_A and Δ_B from two halves
    of the trials, κ = mean(Δ_A·Δ_B) / mean(Δ·Δ) over the pairs, the share of Δ's spread that
    both halves agree on (the best linear shrinkage when the halves' errors are independent),
    within [0, 1]. The correlations stay within ±COPULA_MAX_CORRELATION, and the matrix is made
    positive semi-definite with a unit diagonal (`_unit_diagonal_psd`). Returns R and figures
    (κ, the pairs' spread, the clipped eigenvalue share).
    """
    if model.count_correlation is not None:
        model = copy.deepcopy(model)
        model.set_count_correlation(None)
    s, s_len, d, d_len, source = sample_free_running(
        model, batches, n_trials, seed, MIN_SAMPLED_TRIALS
    )
    delta = _pooled_covariance(d, d_len) - _pooled_covariance(s, s_len)  # [N, N]
    half = np.random.default_rng([int(seed), 13]).permutation(len(d)) % 2  # [B] 0/1
    halves = [
        _pooled_covariance(d[half == h], d_len[half == h])
        - _pooled_covariance(s[half[source] == h], s_len[half[source] == h])
        for h in (0, 1)
    ]
    off = ~np.eye(len(delta), dtype=bool)
    agreed = float(np.mean(halves[0][off] * halves[1][off]))
    spread = float(np.mean(delta[off] ** 2))
    kappa = float(np.clip(agreed / spread, 0.0, 1.0)) if spread > 0 else 0.0
    figures: dict[str, Any] = {"reliability": round(kappa, 4)}
    if kappa <= 0.0:
        return None, figures
    R = _solve_copula_correlation(kappa * delta, _hermite_moments(model, batches))  # [N, N]
    np.fill_diagonal(R, 1.0)
    R, negative = _unit_diagonal_psd(R)
    figures.update(
        {
            "correlation_sd": round(float(R[off].std()), 4),
            "correlation_max": round(float(np.abs(R[off]).max()), 4),
            "negative_eigenvalue_share": round(negative, 4),
        }
    )
    return torch.as_tensor(R, dtype=torch.float32), figures


def choose_count_correlation(
    model: SpikeHistoryObservation,
    batches: MatchBatches,
    n_trials: int,
    held_out: tuple[Tensor, Tensor, Tensor],
    other: SpikeData,
    split: str | None,
    seed: int,
    quiet: bool = False,
    always: bool = False,
) -> None:
    """Give `model` a copula between its units' counts where that generates the held-out trials'
    population statistics clearly better (`HistoryConfig.count_correlation`).

    Tried when `--observation auto`'s free-running samples of the held-out trials score above
    COUPLING_TRIGGER on pairwise correlations; estimated on the trials of `batches` (the
    training trials, `fit_count_correlation`) and kept when the summed squared scores of
    COPULA_METRICS fall by more than COUPLING_Z standard errors of the paired difference, as
    for a coupling (`choose_coupling`). With `always` it is tried whatever the held-out score
    and kept wherever the estimate finds a repeatable deficit; the held-out figures are still
    measured and reported when there are enough held-out trials. Sets the copula in place; the
    figures go to `fit_summary["count_correlation"]`.
    """
    summary: dict[str, Any] = {"kept": False}
    model.fit_summary["count_correlation"] = summary  # type: ignore[attr-defined]

    def without(reason: str) -> None:
        summary["reason"] = reason
        if not quiet:
            console.info(f"spike history: units drawn independently: {reason}")

    unjudged = _cannot_judge(held_out, split, "a count correlation")
    if unjudged and not always:
        return without(unjudged)
    before = before_sets = None
    if not unjudged:
        # the coupling choice has scored this model's free-running held-out samples already
        coupling = model.fit_summary.get("coupling", {})  # type: ignore[attr-defined]
        scored = (
            None if always else coupling.get("coupled" if coupling.get("rank") else "uncoupled")
        )
        if scored is None:
            before, before_sets = population_check(model, held_out, other, seed, COPULA_METRICS)
        score = (scored or before)["scores"]["corr_rmse"]["score"] or 0.0
        if score <= COUPLING_TRIGGER and not always:
            return without(
                f"free-running {split} samples score {score:.2f} ≤ {COUPLING_TRIGGER} on "
                "correlations"
            )
        if before is None:  # this seed's samples, for the paired comparison below
            before, before_sets = population_check(model, held_out, other, seed, COPULA_METRICS)
        summary["independent"] = before
    R, figures = fit_count_correlation(auto_selected(model), batches, n_trials, seed)
    summary.update(figures)
    if R is None:
        return without(
            "the covariance the samples miss does not repeat between halves of the training trials"
        )
    if before is None or before_sets is None:  # always, with no held-out trials to judge on
        keep, detail = True, f"always; {unjudged}"
    else:
        candidate = copy.deepcopy(model)
        candidate.set_count_correlation(R)
        after, after_sets = population_check(candidate, held_out, other, seed, COPULA_METRICS)
        se = _cost_difference_se(before_sets, after_sets, other, seed, COPULA_METRICS)
        summary.update({"correlated": after, "cost_difference_se": se})
        keep = always or before["cost"] - after["cost"] > COUPLING_Z * se
        rule = "kept always" if always else (
            f"kept when lower by more than {COUPLING_Z:g} standard errors, {COUPLING_Z * se:.3f}"
        )  # fmt: skip
        detail = (
            f"population score² sum {after['cost']:.3f} with vs {before['cost']:.3f} without on "
            f"{split} trials ({rule}); correlations {score:.2f} → "
            f"{after['scores']['corr_rmse']['score'] or 0.0:.2f}"
        )
    summary.update({"kept": bool(keep), "reason": detail})
    if keep:
        model.set_count_correlation(R)
    if not quiet:
        verdict = "count correlation kept" if keep else "count correlation not kept"
        console.info(f"spike history: {verdict}: {detail}")


_POPULATION_LABELS = {
    "psc_w1": "population count",
    "corr_rmse": "correlations",
    "psd_log_mse": "population spectrum",
    "fano_rmse": "Fano factor",
    "autocorr_rmse": "autocorrelation",
}


def refit_history(
    data: SpikeData,
    folder: str | Path,
    *,
    history_bins: int | None = None,
    history_ms: float | None = None,
    max_count: int | None = None,
    iterations: int | None = None,
    optimizer: str | None = None,
    lr: float | None = None,
    coupling_rank: int | str | None = None,
    rate_match_rounds: int | None = None,
    max_excitation: float | None = None,
    count_correlation: str | None = None,
    config: str | Path | None = None,
    seed: int | None = None,
    device: str = "auto",
    quiet: bool = False,
) -> SpikeHistoryObservation:
    """Fit the spike-history model alone on the autoencoder in `folder` (the `fit-history`
    stage), on the training trials the autoencoder used; writes `folder/history.safetensors`.
    The autoencoder's stored condition checks draw their spikes through the observation model,
    so when it has any they are measured again with the new one and saved with it.

    Settings: defaults < `config` (a JSON file) < keyword arguments; `max_count=0` means no cap;
    `coupling_rank="auto"` (the default) fits a coupling only where it generates the validation
    trials better (`choose_coupling`); `count_correlation` is "auto" (the default), "always" or
    "never" (`HistoryConfig.count_correlation`).
    `seed` defaults to the autoencoder's. The fit summary is the model's `fit_summary`.
    """
    from ldns_cli.core.checkpoint import check_data_matches
    from ldns_cli.core.config import resolve_config
    from ldns_cli.core.errors import LdnsError
    from ldns_cli.core.runtime import resolve_device
    from ldns_cli.fit.checks import autoencoder_checks, report_checks
    from ldns_cli.fit.splits import split_train_val
    from ldns_cli.store import ae_path, load_autoencoder

    device = resolve_device(device)
    ae, ckpt = load_autoencoder(folder, device)
    overrides: dict[str, Any] = {
        "history_bins": history_bins,
        "history_ms": history_ms,
        "iterations": iterations,
        "optimizer": optimizer,
        "lr": lr,
        "coupling_rank": coupling_rank,
        "rate_match_rounds": rate_match_rounds,
        "max_excitation": max_excitation,
        "count_correlation": count_correlation,
    }
    if max_count is not None:
        if max_count < 0:
            raise LdnsError(f"--max-count must be ≥ 0, got {max_count}", "e.g. 5, or 0 for no cap")
        overrides["max_count"] = max_count or None
    cfg = resolve_config(HistoryConfig, None, None, config, overrides)
    if max_count == 0:  # None means "not given" to resolve_config; force "no cap" here
        cfg = dataclasses.replace(cfg, max_count=None)
    check_data_matches(ckpt.fingerprint, data.fingerprint(), "autoencoder")
    # the same train/validation trials the autoencoder used
    ae_seed = int(ckpt.config.get("train", {}).get("seed", 0))
    val_frac = float(ckpt.extra.get("data", {}).get("val_frac", 0.1))
    train, val, _ = split_train_val(data, val_frac, ae_seed)
    model = fit_history_for_ae(
        ae, train, val, Path(folder), device, ae_seed if seed is None else seed, quiet, cfg=cfg
    )
    summary = ckpt.extra.get("summary")
    if val is not None and isinstance(summary, dict) and "condition_checks" in summary:
        # the autoencoder's stored condition checks draw through the observation model
        summary["condition_checks"] = autoencoder_checks(
            ae, train, val, device, ae_seed, observation=auto_selected(model)
        )
        save_checkpoint(ae_path(folder), ckpt)
        if not quiet:
            report_checks(summary["condition_checks"])
    return model
