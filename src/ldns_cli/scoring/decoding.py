"""Linear decoders of a trial's condition from its spikes: does a trial carry its condition?

One decoder per condition kind, each fitted on real trials and applied to any set of trials:

- circular (an angle): ridge regression of (cos θ, sin θ), decoded θ = atan2; scored by the
  median circular error in degrees (lower is better);
- categorical: a diagonal linear discriminant (nearest class mean, distances weighted by the
  pooled within-class variance of each feature: a linear classifier that stays well-posed with
  more features than trials, where least squares on one-hot labels was 0.51 against 0.74
  accuracy on 60 simulated reach trials of 8 classes); scored by accuracy (higher is better);
- continuous (a scalar or vector per trial): ridge regression; scored by R² pooled over columns;
- timeseries (a value per bin, e.g. hand velocity): ridge regression from the smoothed counts of
  the same bin; scored by R² pooled over bins and columns.

Trial-level features are Gaussian-smoothed counts (σ = `SMOOTH_S`) at `FEATURE_TIMES` evenly
spaced bins of the first `n_bins` bins (the set's common length), flattened; features are
standardised on the fitting trials. The ridge penalty is chosen by exact leave-one-out error
(`scoring.ridge`), so no setting has to be tuned per recording.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ldns_cli.scoring.metrics import smooth_rates, valid_mask
from ldns_cli.scoring.ridge import Ridge, fit_ridge

SMOOTH_S = 0.02  # Gaussian σ of the counts the decoders read (20 ms)
FEATURE_TIMES = 20  # trial-level decoders read the smoothed counts at this many bins
MAX_SERIES_ROWS = 200_000  # bins a time-series decoder is fitted on (evenly thinned beyond)
KINDS = ("circular", "categorical", "continuous", "timeseries")
LOWER_IS_BETTER = {"circular": True, "categorical": False, "continuous": False, "timeseries": False}
METRIC_OF_KIND = {
    "circular": ("angle_error_deg", "median circular error of the decoded angle (degrees)"),
    "categorical": ("accuracy", "fraction of trials whose decoded label is their condition"),
    "continuous": ("r2", "R² of the decoded value (pooled over columns)"),
    "timeseries": ("r2", "R² of the decoded series (pooled over bins and columns)"),
}


@dataclass
class DiagonalLDA:
    """Nearest class mean under per-feature weights 1/σ²_within (shared by every class)."""

    mean: np.ndarray  # [P]
    scale: np.ndarray  # [P]
    centroids: np.ndarray  # [K, P] standardised class means
    inv_var: np.ndarray  # [P] 1 / pooled within-class variance

    def predict(self, x: np.ndarray) -> np.ndarray:
        """`[n, P]` → class index `[n]`."""
        xs = (x - self.mean) / self.scale
        # |x − c|²_w = Σ w x² − 2 Σ w x c + Σ w c²; the first term is the same for every class
        score = 2.0 * (xs * self.inv_var) @ self.centroids.T  # [n, K]
        score -= ((self.centroids**2) * self.inv_var).sum(axis=1)[None, :]
        return score.argmax(axis=1)


def fit_lda(x: np.ndarray, classes: np.ndarray, n_classes: int) -> DiagonalLDA:
    """Fit `DiagonalLDA` on features `[n, P]` with class indices `[n]` in 0..n_classes−1."""
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale = np.where(scale > 1e-9, scale, 1.0)
    xs = (x - mean) / scale
    centroids = np.zeros((n_classes, x.shape[1]))
    for k in range(n_classes):
        if np.any(classes == k):
            centroids[k] = xs[classes == k].mean(axis=0)
    resid = xs - centroids[classes]
    # variance floor: features constant within classes would otherwise get infinite weight
    var = resid.var(axis=0) + 1e-3
    return DiagonalLDA(mean, scale, centroids, 1.0 / var)


def trial_features(
    counts: np.ndarray, lengths: np.ndarray, bin_size_s: float, n_bins: int
) -> np.ndarray:
    """Smoothed counts at `FEATURE_TIMES` evenly spaced bins of the first `n_bins`, flattened
    `[B, T·N]` (trials shorter than `n_bins` are read up to their end; padding reads as 0)."""
    sigma = max(SMOOTH_S / bin_size_s, 0.5)
    times = np.unique(np.linspace(0, max(n_bins - 1, 0), min(FEATURE_TIMES, n_bins)).round())
    rates = smooth_rates(counts[:, :n_bins], np.minimum(lengths, n_bins), sigma)  # [B, L, N]
    return rates[:, times.astype(np.int64)].reshape(len(counts), -1).astype(np.float64)


def series_features(counts: np.ndarray, lengths: np.ndarray, bin_size_s: float) -> np.ndarray:
    """Smoothed counts of every valid bin `[V, N]` (trials in order, bins in order)."""
    sigma = max(SMOOTH_S / bin_size_s, 0.5)
    rates = smooth_rates(counts, lengths, sigma)  # [B, L, N]
    return rates[valid_mask(lengths, counts.shape[1])].astype(np.float64)


def series_pairs(
    counts: np.ndarray, lengths: np.ndarray, values: np.ndarray, bin_size_s: float
) -> tuple[np.ndarray, np.ndarray]:
    """(features `[V, N]`, series values `[V, K]`) over the bins both the spikes and the series
    `[B, L', K]` cover: t < min(length, L')."""
    series = np.asarray(values).reshape(len(values), values.shape[1], -1)  # [B, L', K]
    n_bins = min(series.shape[1], counts.shape[1])
    cut = np.minimum(lengths, n_bins)
    x = series_features(counts[:, :n_bins], cut, bin_size_s)
    y = series[:, :n_bins][valid_mask(cut, n_bins)].astype(np.float64)
    return x, y


def circular_error_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a − b| on the circle, in degrees (0..180)."""
    return np.degrees(np.abs(np.angle(np.exp(1j * (np.asarray(a) - np.asarray(b))))))


def r2_pooled(pred: np.ndarray, true: np.ndarray) -> float:
    """1 − SSE/SST pooled over columns, SST about each column's mean."""
    true = np.asarray(true, dtype=np.float64).reshape(len(true), -1)
    pred = np.asarray(pred, dtype=np.float64).reshape(true.shape)
    sst = float(np.sum((true - true.mean(axis=0)) ** 2))
    if sst <= 0:
        return float("nan")
    return 1.0 - float(np.sum((pred - true) ** 2)) / sst


@dataclass
class Decoder:
    """A decoder of one condition: `score(counts, lengths, values)` on any set of trials."""

    kind: str
    model: Ridge | DiagonalLDA
    n_bins: int  # trial-level decoders: bins read from the start of each trial
    bin_size_s: float
    labels: list[Any] | None = None  # categorical: the label of each output column

    def predict(self, counts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Decoded values: angles `[B]`, labels `[B]`, values `[B, K]` or series `[V, K]`."""
        if self.kind == "timeseries":
            return self.model.predict(series_features(counts, lengths, self.bin_size_s))
        out = self.model.predict(trial_features(counts, lengths, self.bin_size_s, self.n_bins))
        if self.kind == "circular":
            return np.arctan2(out[:, 1], out[:, 0])
        if self.kind == "categorical":
            assert self.labels is not None
            return np.asarray(self.labels, dtype=object)[out]
        return out

    def pairs(
        self, counts: np.ndarray, lengths: np.ndarray, values: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(decoded, true, trial of each row `[V]`): one row per trial, or per valid bin of a
        time series (its bins stay with their trial)."""
        if self.kind == "timeseries":
            values = np.asarray(values)
            x, y = series_pairs(counts, lengths, values, self.bin_size_s)
            cut = np.minimum(lengths, min(values.shape[1], counts.shape[1]))  # as series_pairs
            return self.model.predict(x), y, np.repeat(np.arange(len(cut)), cut)
        return self.predict(counts, lengths), np.asarray(values), np.arange(len(values))

    def score(self, counts: np.ndarray, lengths: np.ndarray, values: np.ndarray) -> float:
        """The kind's metric (see `METRIC_OF_KIND`) of the decoded against the true values."""
        pred, true, _ = self.pairs(counts, lengths, values)
        return score_values(self.kind, pred, true)


def trial_stats(
    kind: str, pred: np.ndarray, true: np.ndarray, trial: np.ndarray, n_trials: int
) -> np.ndarray:
    """Per-trial pieces of the metric `[B, C]` from `Decoder.pairs`, from which
    `metric_of_trials` gives it for any multiset of the trials (a bootstrap resamples rows):
    the circular error (C = 1), the 0/1 hit (C = 1), or for R² the rows, squared error, Σy and
    Σy² per column (C = 2 + 2K)."""
    if kind == "circular":
        return circular_error_deg(pred, true.astype(np.float64))[:, None]
    if kind == "categorical":
        hit = [str(p) == str(t) for p, t in zip(pred, true, strict=True)]
        return np.asarray(hit, dtype=np.float64)[:, None]
    return _r2_pieces(pred, true, trial, n_trials)


def _r2_pieces(pred: np.ndarray, true: np.ndarray, trial: np.ndarray, n_trials: int) -> np.ndarray:
    """Per trial `[B, 2 + 2K]`: its rows, Σ squared error, Σy and Σy² per column."""
    true = np.asarray(true, dtype=np.float64).reshape(len(true), -1)  # [V, K]
    pred = np.asarray(pred, dtype=np.float64).reshape(true.shape)
    rows = np.concatenate(
        [np.ones((len(true), 1)), ((pred - true) ** 2).sum(1, keepdims=True), true, true**2], 1
    )  # [V, 2 + 2K]
    out = np.zeros((n_trials, rows.shape[1]))
    np.add.at(out, trial, rows)
    return out


def metric_of_trials(kind: str, stats: np.ndarray, picks: np.ndarray | None = None) -> np.ndarray:
    """The kind's metric from `trial_stats` rows, for each row of trial indices `picks`
    `[R, n]` (a bootstrap's resamples; None: all trials once) → `[R]`: the median error, the
    mean hit, or R² pooled as `r2_pooled` (SST about each column's mean); NaN without trials."""
    picks = np.arange(len(stats))[None, :] if picks is None else picks
    if picks.shape[1] == 0:
        return np.full(len(picks), np.nan)
    if kind == "circular":
        return np.median(stats[picks, 0], axis=1)
    if kind == "categorical":
        return stats[picks, 0].mean(axis=1)
    total = stats[picks].sum(axis=1)  # [R, 2 + 2K]
    k = (total.shape[1] - 2) // 2
    n, sse = total[:, 0], total[:, 1]
    sst = np.sum(total[:, 2 + k :] - total[:, 2 : 2 + k] ** 2 / np.maximum(n, 1.0)[:, None], 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(sst > 0, 1.0 - sse / sst, np.nan)


def score_values(kind: str, pred: np.ndarray, true: np.ndarray) -> float:
    """The kind's metric of decoded `pred` against `true` (same shapes as `Decoder.predict`)."""
    if len(true) == 0:
        return float("nan")
    if kind == "circular":
        return float(np.median(circular_error_deg(pred, np.asarray(true, dtype=np.float64))))
    if kind == "categorical":
        return float(np.mean([str(p) == str(t) for p, t in zip(pred, true, strict=True)]))
    return r2_pooled(pred, true)


def fit_decoder(
    kind: str,
    counts: np.ndarray,
    lengths: np.ndarray,
    values: np.ndarray,
    bin_size_s: float,
    n_bins: int,
) -> Decoder:
    """Fit the decoder of a condition of `kind` on trials (`values`: `[B]`, `[B, K]` or series
    `[B, L, K]`); trial-level decoders read the first `n_bins` bins."""
    if kind not in KINDS:
        raise ValueError(f"unknown condition kind {kind!r}")
    values = np.asarray(values)
    if kind == "timeseries":
        x, y = series_pairs(counts, lengths, values, bin_size_s)
        step = max(1, len(x) // MAX_SERIES_ROWS)
        return Decoder(kind, fit_ridge(x[::step], y[::step]), n_bins, bin_size_s)
    x = trial_features(counts, lengths, bin_size_s, n_bins)
    if kind == "categorical":
        keys = np.asarray([str(v) for v in values.reshape(len(values), -1)[:, 0]])
        labels = sorted(set(keys.tolist()))
        classes = np.searchsorted(np.asarray(labels), keys)
        return Decoder(kind, fit_lda(x, classes, len(labels)), n_bins, bin_size_s, labels)
    if kind == "circular":
        theta = values.astype(np.float64).reshape(-1)
        y = np.stack([np.cos(theta), np.sin(theta)], axis=1)
    else:
        y = values.astype(np.float64).reshape(len(values), -1)
    return Decoder(kind, fit_ridge(x, y), n_bins, bin_size_s)
