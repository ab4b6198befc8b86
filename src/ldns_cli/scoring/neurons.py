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

# Rates and maximum counts are compared on fixed scales: an error of 10% in rate counts 1 (squared,
# summed over statistics), as does each spike per bin above the data's maximum.
TOLERANCES = {"log_rate": 0.1, "max_count_excess": 1.0}
# The statistics `ldns evaluate` scores are compared in its units (Fano factor, ISI mean and std
# in seconds, autocorrelation at lags 1..K) and divided by how far a homogeneous Poisson process
# lands from the data over the population (`naive_scales`), so that the discrepancy summed over
# neurons is N·Σ_k (RMSE_k / RMSE_k of naive)², the sum of the squared evaluate scores (without
# their floor). Fixed scales weighed a 10% Fano error like an autocorrelation off by 0.05, while
# the data's own autocorrelation was 0.02-0.04: on a simulated E/I network the choice then kept
# Poisson for 65 of 100 neurons and scored autocorrelation 1.28 against 0.17 for the history
# model (`python bench/quality_realism.py --beds network`).
SCALED_STATS = ("fano", "isi_mean_s", "isi_std_s", "autocorr")
# smallest scales, in the statistics' units, for data a homogeneous Poisson process already fits
SCALE_FLOORS = {"fano": 0.02, "isi_mean_s": 1e-3, "isi_std_s": 1e-3, "autocorr": 0.002}
STATS = ("log_rate", *SCALED_STATS, "max_count_excess")
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
    max_count: np.ndarray  # [N] most spikes in one bin

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
            "max_count": [int(v) for v in self.max_count],
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


def _raw_errors(model: NeuronStats, data: NeuronStats) -> dict[str, np.ndarray]:
    """Per-neuron differences in evaluate's units [N], NaN where either side is undefined."""
    ac = model.autocorr - data.autocorr  # [K, N]
    with np.errstate(invalid="ignore"):
        ac_rms = np.sqrt(np.nanmean(np.where(np.isfinite(ac), ac, np.nan) ** 2, axis=0))
    return {
        "fano": model.fano - data.fano,
        "isi_mean_s": model.isi_mean_s - data.isi_mean_s,
        "isi_std_s": model.isi_std_s - data.isi_std_s,
        "autocorr": ac_rms,
    }


def naive_scales(
    data: NeuronStats,
    lengths: np.ndarray,
    n_bins: int,
    bin_size_s: float,
    seed: int = 0,
    settings: MetricSettings | None = None,
) -> dict[str, float]:
    """RMSE over neurons of homogeneous Poisson trials against `data`, per statistic of
    SCALED_STATS (at least SCALE_FLOORS): the scale of a score of 1 in `ldns evaluate`.

    The Poisson trials have `data`'s rates and trial lengths, one draw as evaluate's naive model.
    """
    rng = np.random.default_rng([int(seed), 7])
    rate_per_bin = np.nan_to_num(data.rate_hz) * bin_size_s
    counts = draw_naive(rate_per_bin, lengths, n_bins, rng)
    naive = neuron_stats(counts, lengths, bin_size_s, settings)
    out = {}
    for k, e in _raw_errors(naive, data).items():
        e = e[np.isfinite(e)]
        rmse = float(np.sqrt(np.mean(e**2))) if e.size else 0.0
        out[k] = max(rmse, SCALE_FLOORS[k])
    return out


def errors(
    model: NeuronStats, data: NeuronStats, scales: dict[str, float]
) -> dict[str, np.ndarray]:
    """Per-neuron errors of `model` against `data` [N]: log rate and maximum-count excess over
    their TOLERANCES, the statistics of SCALED_STATS over `scales` (`naive_scales`).

    Undefined statistics (a neuron silent in either set, too few ISIs) count 0; a neuron that is
    silent in one set but not the other shows up in its rate error (floored at 1e-3 Hz).
    """
    rate_m = np.maximum(model.rate_hz, 1e-3)
    rate_d = np.maximum(data.rate_hz, 1e-3)
    out = {"log_rate": _log_err(rate_m, rate_d) / TOLERANCES["log_rate"]}
    out.update({k: np.nan_to_num(e) / scales[k] for k, e in _raw_errors(model, data).items()})
    out["max_count_excess"] = (
        np.maximum(model.max_count - data.max_count, 0) / TOLERANCES["max_count_excess"]
    )
    return out


def discrepancy(
    model: NeuronStats,
    data: NeuronStats,
    scales: dict[str, float],
    stats: tuple[str, ...] | None = None,
) -> np.ndarray:
    """Σ over statistics (all of STATS, or `stats`) of the squared `errors`, per neuron [N]."""
    errs = errors(model, data, scales)
    names = STATS if stats is None else stats
    return np.sum([errs[k] ** 2 for k in names], axis=0)


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
