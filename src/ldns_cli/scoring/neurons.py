"""Single-neuron statistics of generated spikes against data, neuron by neuron.

Two uses:
- choosing an observation model per neuron (`fit.history`): each candidate samples the held-out
  trials free-running, and `discrepancy` says how far each neuron's statistics land from the
  data's (rate, Fano factor, ISI mean and std, short-lag autocorrelation, maximum count), each
  in the units and on the scale `ldns evaluate` scores it;
- warning the user (`sample`, `evaluate`): `out_of_range` names neurons whose generated rate,
  Fano factor or maximum count fall outside what the data allows, given both sets' noise.

Inputs are counts `[B, L, N]` with `lengths [B]`, as in `scoring.metrics`, whose definitions
(windows, lags, ISI placement) are reused so the figures agree with `ldns evaluate`'s.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from ldns_cli.core.data import SpikeData
from ldns_cli.scoring.metrics import (
    MetricSettings,
    draw_naive,
    finalise,
    summarise,
    valid_mask,
)

# Rates and maximum counts are compared on fixed scales: an error of 10% in rate counts 1 (squared),
# as does each spike per bin above the data's maximum.
TOLERANCES = {"log_rate": 0.1, "max_count_excess": 1.0}
# The statistics `ldns evaluate` scores are compared as it scores them: in its units (Fano factor,
# ISI mean and std in seconds, autocorrelation at lags 1..K), on the scale of a homogeneous Poisson
# process's error net of the data's own noise (`ScoreScales`). Fixed per-neuron tolerances weighed
# a 10% Fano error like an autocorrelation off by 0.05, while the data's own autocorrelation was
# 0.02-0.04 and its noise floor close to that: on a simulated E/I
# network the choice kept Poisson for 65 of 100 neurons and scored autocorrelation 1.28 against
# 0.17 for the history model alone (`python bench/quality_realism.py --beds network`).
SCALED_STATS = ("fano", "isi_mean_s", "isi_std_s", "autocorr")
# smallest scales, in the statistics' units, for data a homogeneous Poisson process already fits
SCALE_FLOORS = {"fano": 0.02, "isi_mean_s": 1e-3, "isi_std_s": 1e-3, "autocorr": 0.002}
STATS = ("log_rate", *SCALED_STATS, "max_count_excess")
NOISE_SPLITS = 4  # random halvings of the data that estimate its sampling noise
CHOICE_Z = 2.0  # a neuron leaves the population's choice on a gain beyond this many SEs
# out-of-range warnings: a neuron is flagged when its generated statistic differs from the data's
# by more than OUT_OF_RANGE_Z combined standard errors AND by more than a practical margin
OUT_OF_RANGE_Z = 4.0
RATE_MARGIN = 0.2  # relative
FANO_MARGIN = 0.25  # absolute
RANGE_PARTS = 5  # trial blocks whose spread gives the standard errors


@dataclass(frozen=True)
class NeuronStats:
    """Per-neuron statistics of one set of trials (NaN where undefined, e.g. a silent neuron)."""

    rate_hz: np.ndarray  # [N]
    fano: np.ndarray  # [N] Fano factor of counts in fixed windows
    isi_mean_s: np.ndarray  # [N]
    isi_std_s: np.ndarray  # [N]
    autocorr: np.ndarray  # [K, N] lags 1..K
    max_count: np.ndarray  # [N] most spikes in one bin (float: the mean over draws of one size)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready lists (NaN as None), autocorrelation as its lag-1 value and RMS over lags."""

        def clean(a: np.ndarray) -> list[float | None]:
            return [None if not np.isfinite(v) else round(float(v), 6) for v in a]

        return {
            "rate_hz": clean(self.rate_hz),
            "fano": clean(self.fano),
            "isi_mean_s": clean(self.isi_mean_s),
            "isi_std_s": clean(self.isi_std_s),
            "autocorr_lag1": clean(self.autocorr[0]),
            "max_count": [
                int(v) if float(v).is_integer() else round(float(v), 3) for v in self.max_count
            ],
        }


def neuron_stats(
    counts: np.ndarray,
    lengths: np.ndarray,
    bin_size_s: float,
    settings: MetricSettings | None = None,
) -> NeuronStats:
    """`NeuronStats` of a set of trials (the definitions of `scoring.metrics`)."""
    settings = settings or MetricSettings()
    counts = np.asarray(counts)
    lengths = np.asarray(lengths, dtype=np.int64)
    s = finalise(summarise(counts, lengths, bin_size_s, settings))
    mask = valid_mask(lengths, counts.shape[1])[..., None]  # [B, L, 1]
    max_count = np.where(mask, counts, 0).max(axis=(0, 1)) if counts.size else np.zeros(0)
    return NeuronStats(
        rate_hz=s.rates_hz,
        fano=s.fano,
        isi_mean_s=s.isi_mean_s,
        isi_std_s=s.isi_std_s,
        autocorr=s.autocorr,
        max_count=np.asarray(max_count, dtype=np.int64),
    )


def _log_err(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        e = np.log(a) - np.log(b)
    return np.where(np.isfinite(e), e, 0.0)


def _rows(stats: NeuronStats) -> dict[str, np.ndarray]:
    """The statistics of SCALED_STATS as `[rows, N]` arrays (autocorrelation: one row per lag)."""
    return {
        "fano": stats.fano[None],
        "isi_mean_s": stats.isi_mean_s[None],
        "isi_std_s": stats.isi_std_s[None],
        "autocorr": stats.autocorr,
    }


def _mean_sq(diff: np.ndarray) -> np.ndarray:
    """Mean over rows of the squared differences `[rows, N]` -> [N], NaN where none is defined."""
    d = np.where(np.isfinite(diff), diff, np.nan)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: undefined neurons
        return np.nanmean(d**2, axis=0)


def _raw_sq_errors(model: NeuronStats, data: NeuronStats) -> dict[str, np.ndarray]:
    """Per-neuron squared differences in evaluate's units [N] (autocorrelation: mean over lags),
    NaN where either side is undefined."""
    m, d = _rows(model), _rows(data)
    return {k: _mean_sq(m[k] - d[k]) for k in SCALED_STATS}


@dataclass(frozen=True)
class ScoreScales:
    """How `ldns evaluate` will score each statistic of SCALED_STATS, estimated on a set of trials.

    naive / noise: RMSEs over the neurons against the data, in the statistic's units, of
    homogeneous Poisson trials at the data's rates and of a perfect model (what the data's own
    sampling noise leaves). On a large held-out set a model whose error has RMSE b over the
    neurons scores about b / `unit`, `unit` being the naive model's error net of the noise
    (√(naive² − noise²)). neuron_se: per neuron (and lag) standard errors of the data's
    statistics `[rows, N]`, for telling a neuron's real preference from noise.
    """

    naive: dict[str, float]
    noise: dict[str, float]
    neuron_se: dict[str, np.ndarray]

    def unit(self, stat: str) -> float:
        """The error (RMSE over neurons, net of noise) that makes one score point."""
        net = max(self.naive[stat] ** 2 - self.noise[stat] ** 2, 0.0)
        return max(math.sqrt(net), SCALE_FLOORS[stat])

    def informative(self, stat: str) -> bool:
        """Whether this set of trials can tell models apart on `stat`: a homogeneous Poisson
        draw lands farther from the data than two sets' sampling noise would put it
        (naive² > 2·noise²; the draw carries as much noise as the data). Otherwise every
        model's error on it is noise, as `ldns evaluate`, which then gives no score, says."""
        return self.naive[stat] ** 2 > 2.0 * self.noise[stat] ** 2

    def as_dict(self) -> dict[str, dict[str, float]]:
        return {
            "naive": {k: round(v, 6) for k, v in self.naive.items()},
            "noise": {k: round(v, 6) for k, v in self.noise.items()},
            "unit": {k: round(self.unit(k), 6) for k in SCALED_STATS},
            "informative": {k: self.informative(k) for k in SCALED_STATS},
        }


def _rmse(sq: np.ndarray) -> float:
    sq = sq[np.isfinite(sq)]
    return float(np.sqrt(np.mean(sq))) if sq.size else 0.0


def score_scales(
    counts: np.ndarray,
    lengths: np.ndarray,
    bin_size_s: float,
    data: NeuronStats | None = None,
    seed: int = 0,
    settings: MetricSettings | None = None,
) -> ScoreScales:
    """`ScoreScales` of a set of trials `[B, L, N]` (`data`: their `neuron_stats`, if computed).

    naive: one homogeneous Poisson draw with the data's rates and trial lengths, as evaluate's
    naive model. noise: the data split at random into halves A and B, NOISE_SPLITS times; a half's
    estimate varies twice as much as the whole set's, so A − B has four times the whole set's
    variance: the whole set's standard error is |A − B| / 2 (RMS over the splits).
    """
    counts = np.asarray(counts)
    lengths = np.asarray(lengths, dtype=np.int64)
    if data is None:
        data = neuron_stats(counts, lengths, bin_size_s, settings)
    rng = np.random.default_rng([int(seed), 7])
    rate_per_bin = np.nan_to_num(data.rate_hz) * bin_size_s
    naive_counts = draw_naive(rate_per_bin, lengths, counts.shape[1], rng)
    naive_stats = neuron_stats(naive_counts, lengths, bin_size_s, settings)
    naive = {k: _rmse(sq) for k, sq in _raw_sq_errors(naive_stats, data).items()}
    n = counts.shape[0]
    rows = _rows(data)
    half_sq = {k: np.zeros_like(v) for k, v in rows.items()}  # Σ over splits of (A − B)²
    if n >= 4:
        for _ in range(NOISE_SPLITS):
            perm = rng.permutation(n)
            a, b = np.sort(perm[: n // 2]), np.sort(perm[n // 2 :])
            ra, rb = (
                _rows(neuron_stats(counts[i], lengths[i], bin_size_s, settings)) for i in (a, b)
            )
            for k in rows:
                diff = ra[k] - rb[k]
                half_sq[k] += np.where(np.isfinite(diff), diff, 0.0) ** 2
        se = {k: np.sqrt(v / NOISE_SPLITS) / 2 for k, v in half_sq.items()}
    else:
        se = {k: np.zeros_like(v) for k, v in rows.items()}
    noise = {k: _rmse(_mean_sq(v)) for k, v in se.items()}
    return ScoreScales(naive=naive, noise=noise, neuron_se=se)


def discrepancy(
    model: NeuronStats,
    data: NeuronStats,
    scales: ScoreScales,
    stats: tuple[str, ...] | None = None,
) -> np.ndarray:
    """Per neuron [N], the sum over statistics (STATS, or `stats`) of squared errors: those of
    SCALED_STATS in score points (`ScoreScales.unit`), the log rate and the maximum-count
    excess in units of their TOLERANCES. Summed over neurons and divided by N it is the squared
    scores a large held-out set would give, summed over statistics, up to the data's noise (the
    same for every model), which makes it the criterion for choosing between models. A statistic
    the set cannot score (`ScoreScales.informative`) adds nothing: its errors are the data's
    noise, and their differences between models would decide by chance. Undefined statistics
    (a neuron silent in either set, too few ISIs) count 0; a neuron silent in one set only shows
    up in its rate error (floored at 1e-3 Hz).
    """
    names = STATS if stats is None else stats
    raw = _raw_sq_errors(model, data)
    total = np.zeros(data.rate_hz.size)
    for k in names:
        if k in SCALED_STATS:
            if scales.informative(k):
                total += np.nan_to_num(raw[k]) / scales.unit(k) ** 2
        elif k == "log_rate":
            rate_m, rate_d = np.maximum(model.rate_hz, 1e-3), np.maximum(data.rate_hz, 1e-3)
            total += (_log_err(rate_m, rate_d) / TOLERANCES["log_rate"]) ** 2
        else:
            excess = np.maximum(model.max_count - data.max_count, 0)
            total += (excess / TOLERANCES["max_count_excess"]) ** 2
    return total


def choose_per_neuron(
    candidates: list[NeuronStats],
    data: NeuronStats,
    scales: ScoreScales,
    stats: tuple[str, ...] = STATS,
) -> np.ndarray:
    """For each neuron, the index of the candidate it generates with [N].

    The candidate with the smallest `discrepancy` summed over the population is everyone's
    default (the first on ties). A neuron leaves it for another candidate only where its own
    gain is beyond CHOICE_Z standard errors of the data's noise: with a few dozen validation
    trials the per-neuron differences are mostly noise, and on a simulated E/I network choosing
    every neuron by its own discrepancy gave a mixture that scored worse on held-out trials than
    the history model for all (autocorrelation 0.6 against 0.17, `bench/quality_realism.py`).
    The standard error of a gain comes from the data's per-neuron standard errors
    (`ScoreScales.neuron_se`): for candidates a and b and a statistic's row l, the gain moves
    by 2·(a_l − b_l)·δd_l when the data move by δd_l. Rate and maximum-count gains count as
    exact: the rates are matched for every candidate, and a count above the data's maximum is
    no accident of noise once the candidates' maxima are taken over draws of the data's size
    (a larger sampled set shows larger maxima; the fit's free-running sets are repeated).
    """
    names = [k for k in stats if k in SCALED_STATS and scales.informative(k)]
    d = np.stack([discrepancy(c, data, scales, stats) for c in candidates])  # [C, N]
    default = int(np.argmin(d.sum(axis=1)))
    choice = np.full(d.shape[1], default, dtype=np.int64)
    best_gain = np.zeros(d.shape[1])
    base_rows = _rows(candidates[default])
    for c, cand in enumerate(candidates):
        if c == default:
            continue
        gain = d[default] - d[c]  # [N] > 0: c is better for the neuron
        var = np.zeros_like(gain)
        rows = _rows(cand)
        for k in names:
            delta = np.nan_to_num(base_rows[k] - rows[k])  # [rows, N]
            defined = np.maximum(np.isfinite(base_rows[k] - rows[k]).sum(axis=0), 1)
            var += np.sum((2 * delta * scales.neuron_se[k]) ** 2, axis=0) / (
                defined**2 * scales.unit(k) ** 4
            )
        clear = (gain > CHOICE_Z * np.sqrt(var)) & (gain > best_gain)
        choice[clear] = c
        best_gain[clear] = gain[clear]
    return choice


# ----------------------------------------------------------------------------- warnings
@dataclass(frozen=True)
class NeuronRange:
    """Rate, Fano factor and maximum count per neuron with standard errors from trial blocks."""

    rate_hz: np.ndarray  # [N]
    rate_se: np.ndarray  # [N]
    fano: np.ndarray  # [N]
    fano_se: np.ndarray  # [N]
    max_count: np.ndarray  # [N]

    def as_dict(self) -> dict[str, list[float | None]]:
        """JSON-ready lists (non-finite values as None)."""
        return {
            k: [float(x) if np.isfinite(x) else None for x in getattr(self, k)]
            for k in ("rate_hz", "rate_se", "fano", "fano_se", "max_count")
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NeuronRange:
        return cls(**{k: np.asarray(d[k], dtype=np.float64) for k in cls.__dataclass_fields__})


def neuron_range(
    counts: np.ndarray,
    lengths: np.ndarray,
    bin_size_s: float,
    settings: MetricSettings | None = None,
) -> NeuronRange:
    """`NeuronRange` of a set of trials: values from all trials, standard errors from the spread
    over RANGE_PARTS contiguous trial blocks (sd / √parts)."""
    settings = settings or MetricSettings()
    counts = np.asarray(counts)
    lengths = np.asarray(lengths, dtype=np.int64)
    parts = int(min(RANGE_PARTS, counts.shape[0]))
    sums = summarise(counts, lengths, bin_size_s, settings, n_units=parts)
    whole = finalise(sums)
    if parts >= 2:
        per = [finalise(sums.total(np.eye(parts)[u])) for u in range(parts)]
        with np.errstate(invalid="ignore"):
            rate_se = np.std([p.rates_hz for p in per], axis=0, ddof=1) / np.sqrt(parts)
            fano_se = np.nanstd([p.fano for p in per], axis=0, ddof=1) / np.sqrt(parts)
    else:
        rate_se = fano_se = np.full(counts.shape[2], np.inf)
    mask = valid_mask(lengths, counts.shape[1])[..., None]
    return NeuronRange(
        rate_hz=whole.rates_hz,
        rate_se=rate_se,
        fano=whole.fano,
        fano_se=fano_se,
        max_count=np.where(mask, counts, 0).max(axis=(0, 1)).astype(np.float64),
    )


@dataclass(frozen=True)
class OutOfRange:
    """One neuron's statistic outside the data's range."""

    neuron: int
    statistic: str  # "rate", "fano" or "max count"
    generated: float
    data: float


def out_of_range(
    generated: NeuronRange, data: NeuronRange, check_moments: bool = True
) -> list[OutOfRange]:
    """Neurons whose generated statistics fall outside the data's range.

    max count: more spikes in one bin than the data ever shows. rate / Fano factor (with
    `check_moments`): off by more than OUT_OF_RANGE_Z combined standard errors and by more than
    RATE_MARGIN (relative) / FANO_MARGIN (absolute).
    """
    found: list[OutOfRange] = []
    n = min(generated.rate_hz.size, data.rate_hz.size)
    with np.errstate(invalid="ignore"):
        if check_moments:
            se = np.sqrt(generated.rate_se[:n] ** 2 + data.rate_se[:n] ** 2)
            diff = np.abs(generated.rate_hz[:n] - data.rate_hz[:n])
            bad = (diff > OUT_OF_RANGE_Z * se) & (diff > RATE_MARGIN * data.rate_hz[:n])
            found += [
                OutOfRange(int(i), "rate", generated.rate_hz[i], data.rate_hz[i])
                for i in np.flatnonzero(bad)
            ]
            se = np.sqrt(generated.fano_se[:n] ** 2 + data.fano_se[:n] ** 2)
            diff = np.abs(generated.fano[:n] - data.fano[:n])
            bad = (diff > OUT_OF_RANGE_Z * se) & (diff > FANO_MARGIN)
            found += [
                OutOfRange(int(i), "fano", generated.fano[i], data.fano[i])
                for i in np.flatnonzero(bad)
            ]
        bad = generated.max_count[:n] > data.max_count[:n]
        found += [
            OutOfRange(int(i), "max count", generated.max_count[i], data.max_count[i])
            for i in np.flatnonzero(bad)
        ]
    return found


def describe_out_of_range(
    items: list[OutOfRange], unit_ids: np.ndarray | None = None, limit: int = 8
) -> list[str]:
    """One warning line per statistic, naming up to `limit` neurons (unit ids when given)."""
    lines = []
    units = {"rate": "Hz", "fano": "", "max count": "spikes/bin"}
    for stat in ("rate", "fano", "max count"):
        hits = [x for x in items if x.statistic == stat]
        if not hits:
            continue
        hits.sort(key=lambda x: -abs(x.generated - x.data))
        named = ", ".join(
            f"{x.neuron if unit_ids is None else unit_ids[x.neuron]} "
            f"({x.generated:.3g} vs {x.data:.3g}{' ' + units[stat] if units[stat] else ''})"
            for x in hits[:limit]
        )
        more = f" and {len(hits) - limit} more" if len(hits) > limit else ""
        lines.append(f"{len(hits)} neuron(s) with {stat} outside the data's range: {named}{more}")
    return lines


def realism_warnings(
    generated: SpikeData,
    reference: SpikeData | NeuronRange | dict[str, Any],
    check_moments: bool = True,
) -> list[str]:
    """Warning lines naming the neurons of `generated` outside `reference`'s range.

    `reference`: a recording, a `NeuronRange`, or its `as_dict()` (as the history checkpoint
    stores the training data's). `check_moments=False` checks only the maximum count (e.g. for
    conditioned samples, whose rates legitimately differ from the whole recording's).
    """
    if isinstance(reference, SpikeData):
        ref = neuron_range(reference.counts, reference.lengths, reference.bin_size_s)
    elif isinstance(reference, NeuronRange):
        ref = reference
    else:
        ref = NeuronRange.from_dict(reference)
    if ref.rate_hz.size != generated.n_neurons:
        return []
    gen = neuron_range(generated.counts, generated.lengths, generated.bin_size_s)
    found = out_of_range(gen, ref, check_moments)
    return describe_out_of_range(found, generated.unit_ids)
