"""Utility as train-on-synthetic, test-on-real (TSTR): is a decoder trained on samples any good?

For every condition the samples carry (a trial covariate, or a behaviour series such as hand
velocity) that the real sets carry too, the same decoder is trained three times and always
tested on the real held-out trials:

- real: on the real training trials (what the recording alone gives),
- synthetic: on the samples (TSTR),
- real + synthetic: on both (augmentation: does synthetic data add anything?).

Decoders: ridge regression (`stats.fit_ridge`, penalty by leave-one-out error) on √ of smoothed
counts. A trial-level condition is read from `DECODER_STEPS` time points over the first ℓ bins,
ℓ the shortest of the three sets' median trial lengths (a trial shorter than ℓ leaves its missing
time points at the training mean); a behaviour series is decoded bin by bin from the smoothed
counts at that bin. Scores on the held-out trials, by the condition's kind:

- circular (angles): mean cos(decoded − true), 1 = exact, ≈ 0 = chance for directions spread
  round the circle; the median absolute error in degrees is given too;
- continuous, behaviour series: R² = 1 − SSE/SST (SST about the held-out mean, over all columns);
- categorical: accuracy (the decoder regresses one-hot labels and takes the largest).

`chance`: the score of the best constant guess from the real training labels (their circular
mean, mean, or most frequent label). Intervals: 95% percentile bootstrap over held-out trials,
paired across the three decoders (so the differences synthetic − real and real + synthetic −
real get intervals too); they hold the decoders fixed, i.e. cover the test set's sampling only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ldns_cli.auditing.stats import RidgeBasis, bootstrap_weights, fit_ridge, percentile_interval
from ldns_cli.conditions.spec import ANGLE_UNIT_NAMES, ANGLE_UNITS, detect_kind
from ldns_cli.core.data import SpikeData
from ldns_cli.scoring.metrics import smooth_rates

DECODER_STEPS = 20  # time points the trial-level decoders read
SERIES_SMOOTH_BINS = 2.0  # σ (bins) of the counts a behaviour series is decoded from
MAX_SERIES_ROWS = 50_000  # training bins per series decoder (a random subset beyond this)
DECODERS = ("real", "synthetic", "real_plus_synthetic")
METRIC_NAMES = {
    "circular": "mean cos(error)",
    "continuous": "R²",
    "series": "R²",
    "categorical": "accuracy",
}


@dataclass(frozen=True)
class Target:
    """A condition to decode: its name, kind (circular, continuous, categorical, series), unit."""

    name: str
    kind: str
    unit: str = ""


def decoding_targets(
    train: SpikeData, heldout: SpikeData, samples: SpikeData, names: Sequence[str] | None
) -> tuple[list[Target], dict[str, str]]:
    """The conditions to decode, and the ones left out with the reason.

    `names`: the model's conditions; None: every covariate and behaviour series of the samples.
    """
    if names is None:
        names = [*samples.covariates, *samples.behavior]
    targets, skipped = [], {}
    for name in names:
        series = name in samples.behavior
        holder = "behavior" if series else "covariates"
        lacking = [
            label
            for label, d in (("training", train), ("held-out", heldout), ("sample", samples))
            if name not in getattr(d, holder)
        ]
        if lacking:
            skipped[name] = f"not in the {' and '.join(lacking)} trials"
            continue
        info = train.info(name)
        if series:
            targets.append(Target(name, "series", info.unit))
            continue
        values = np.asarray(train.covariates[name])
        kind = detect_kind(name, values, info.kind, info.unit)
        if kind != "categorical" and not np.issubdtype(values.dtype, np.number):
            skipped[name] = "not numeric"
        elif len(np.unique(values.reshape(len(values), -1), axis=0)) < 2:
            skipped[name] = "constant in the training trials"
        else:
            targets.append(Target(name, kind, info.unit))
    return targets, skipped


# ---------------------------------------------------------------------------- features
@dataclass(frozen=True)
class TimeGrid:
    """The trial-level decoders' time points: bins `stride·j + stride//2`, j < steps."""

    stride: int
    steps: int
    sigma_bins: float

    @classmethod
    def for_lengths(cls, *lengths: np.ndarray) -> TimeGrid:
        n_bins = max(1, int(min(np.median(x) for x in lengths)))
        stride = max(1, n_bins // DECODER_STEPS)
        return cls(stride, max(1, n_bins // stride), max(1.0, stride / 2))


def trial_decoder_features(data: SpikeData, grid: TimeGrid) -> np.ndarray:
    """√ smoothed counts at the grid's time points, flattened `[B, steps·N]`; NaN past a trial's
    end (the ridge standardisation sets those to the training mean)."""
    smoothed = smooth_rates(data.counts, data.lengths, grid.sigma_bins)  # [B, L, N]
    bins = grid.stride * np.arange(grid.steps) + grid.stride // 2  # [steps]
    inside = bins < data.n_bins
    feats = np.full((data.n_trials, grid.steps, data.n_neurons), np.nan)
    feats[:, inside] = np.sqrt(np.maximum(smoothed[:, bins[inside]], 0.0))
    feats[bins[None, :] >= data.lengths[:, None]] = np.nan
    return feats.reshape(data.n_trials, -1)


def series_rows(
    data: SpikeData, name: str, rng: np.random.Generator | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features `[rows, N]`, targets `[rows, k]`, trial of each row `[rows]`) over valid bins;
    with `rng`, at most MAX_SERIES_ROWS random rows."""
    mask = data.mask()
    trial = np.nonzero(mask)[0]
    smoothed = smooth_rates(data.counts, data.lengths, SERIES_SMOOTH_BINS)[mask]  # [rows, N]
    x = np.sqrt(np.maximum(smoothed, 0.0))
    y = data.behavior[name][mask].astype(np.float64)  # [rows, k]
    if rng is not None and len(x) > MAX_SERIES_ROWS:
        keep = np.sort(rng.permutation(len(x))[:MAX_SERIES_ROWS])
        x, y, trial = x[keep], y[keep], trial[keep]
    return x, y, trial


# ---------------------------------------------------------------------------- targets
def _radians(values: np.ndarray, unit: str) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    unit = ANGLE_UNIT_NAMES.get(unit.lower(), unit)
    return x.reshape(len(x), -1) * ANGLE_UNITS.get(unit, 1.0)  # [B, k]


def _encode(target: Target, values: np.ndarray, labels: list[str]) -> np.ndarray:
    """Regression targets `[B, c]` for a trial-level condition."""
    if target.kind == "circular":
        theta = _radians(values, target.unit)
        return np.concatenate([np.cos(theta), np.sin(theta)], axis=1)
    if target.kind == "categorical":
        index = {label: i for i, label in enumerate(labels)}
        codes = np.array([index[str(v)] for v in np.asarray(values).reshape(len(values), -1)[:, 0]])
        return np.eye(len(labels))[codes]
    return np.asarray(values, dtype=np.float64).reshape(len(values), -1)


class TrialMetric:
    """A held-out score as a function of per-trial bootstrap weights `[D, n]` (ones: the score)."""

    def __init__(self, value: Callable[[np.ndarray], np.ndarray]) -> None:
        self.value = value

    @classmethod
    def mean_of(cls, contrib: np.ndarray) -> TrialMetric:
        return cls(lambda w: (w @ contrib) / w.sum(1))

    @classmethod
    def r_squared(cls, sse: np.ndarray, sum_y: np.ndarray, sum_y2: np.ndarray, count: np.ndarray):
        """R² from per-trial SSE `[n]`, Σy `[n, k]`, Σ|y|² `[n]` and bins `[n]`."""

        def value(w: np.ndarray) -> np.ndarray:
            sy = w @ sum_y  # [D, k]
            sst = w @ sum_y2 - (sy * sy).sum(1) / (w @ count)
            return 1.0 - (w @ sse) / np.maximum(sst, 1e-12)

        return cls(value)


def _trial_level_metrics(
    target: Target, predictions: dict[str, np.ndarray], truth: np.ndarray, chance_guess: np.ndarray
) -> tuple[dict[str, TrialMetric], dict[str, float]]:
    """Per decoder (plus "chance"), the held-out metric; and median errors in degrees."""
    preds = {**predictions, "chance": np.broadcast_to(chance_guess, truth.shape)}
    metrics, extra = {}, {}
    for key, p in preds.items():
        if target.kind == "circular":
            k = truth.shape[1] // 2
            err = np.arctan2(p[:, k:], p[:, :k]) - np.arctan2(truth[:, k:], truth[:, :k])
            metrics[key] = TrialMetric.mean_of(np.cos(err).mean(1))
            wrapped = np.abs(np.angle(np.exp(1j * err)))
            extra[key] = float(np.degrees(np.median(wrapped.mean(1))))
        elif target.kind == "categorical":
            metrics[key] = TrialMetric.mean_of((p.argmax(1) == truth.argmax(1)).astype(float))
        else:
            metrics[key] = TrialMetric.r_squared(
                ((p - truth) ** 2).sum(1), truth, (truth**2).sum(1), np.ones(len(truth))
            )
    return metrics, extra


def _chance_guess(target: Target, y_train: np.ndarray) -> np.ndarray:
    """The best constant guess from real training targets, in the encoded space `[c]`."""
    if target.kind == "circular":
        k = y_train.shape[1] // 2
        mu = np.arctan2(y_train[:, k:].mean(0), y_train[:, :k].mean(0))
        return np.concatenate([np.cos(mu), np.sin(mu)])
    if target.kind == "categorical":
        return np.eye(y_train.shape[1])[np.argmax(y_train.sum(0))]
    return y_train.mean(0)


def _decode_trial_level(
    target: Target,
    sets: dict[str, SpikeData],
    bases: dict[str, RidgeBasis],
    test_features: np.ndarray,
) -> tuple[dict[str, TrialMetric], dict[str, float]]:
    """Fit the three decoders of one trial-level condition on their decomposed features
    (`bases`, shared by all conditions) and score them on the held-out trials."""
    labels: list[str] = []
    if target.kind == "categorical":
        pool = [
            np.asarray(d.covariates[target.name]).reshape(d.n_trials, -1)[:, 0]
            for d in sets.values()
        ]
        labels = sorted({str(v) for v in np.concatenate(pool)})
    y = {k: _encode(target, d.covariates[target.name], labels) for k, d in sets.items()}
    targets = {
        "real": y["train"],
        "synthetic": y["samples"],
        "real_plus_synthetic": np.concatenate([y["train"], y["samples"]]),
    }
    predictions = {k: bases[k].fit(t).predict(test_features) for k, t in targets.items()}
    return _trial_level_metrics(
        target, predictions, y["heldout"], _chance_guess(target, y["train"])
    )


def _decode_series(
    target: Target, sets: dict[str, SpikeData], rng: np.random.Generator
) -> dict[str, TrialMetric]:
    x_tr, y_tr, _ = series_rows(sets["train"], target.name, rng)
    x_s, y_s, _ = series_rows(sets["samples"], target.name, rng)
    x_te, y_te, trial = series_rows(sets["heldout"], target.name, None)
    both = np.concatenate([x_tr, x_s]), np.concatenate([y_tr, y_s])
    if len(both[0]) > MAX_SERIES_ROWS:
        keep = np.sort(rng.permutation(len(both[0]))[:MAX_SERIES_ROWS])
        both = both[0][keep], both[1][keep]
    training = {"real": (x_tr, y_tr), "synthetic": (x_s, y_s), "real_plus_synthetic": both}
    n = sets["heldout"].n_trials

    def per_trial(v: np.ndarray) -> np.ndarray:  # [rows, ...] summed into [n, ...]
        out = np.zeros((n, *v.shape[1:]))
        np.add.at(out, trial, v)
        return out

    sum_y, sum_y2, count = (
        per_trial(y_te),
        per_trial((y_te**2).sum(1)),
        per_trial(np.ones(len(y_te))),
    )
    preds = {k: fit_ridge(x, t).predict(x_te) for k, (x, t) in training.items()}
    preds["chance"] = np.broadcast_to(y_tr.mean(0), y_te.shape)
    return {
        k: TrialMetric.r_squared(per_trial(((p - y_te) ** 2).sum(1)), sum_y, sum_y2, count)
        for k, p in preds.items()
    }


def utility(
    train: SpikeData,
    heldout: SpikeData,
    samples: SpikeData,
    targets: list[Target],
    rng: np.random.Generator,
) -> list[dict[str, Any]]:
    """One entry per target: the three decoders' held-out scores with paired bootstrap intervals,
    chance, and the differences synthetic − real and real + synthetic − real."""
    if not targets:
        return []
    sets = {"train": train, "heldout": heldout, "samples": samples}
    grid = TimeGrid.for_lengths(train.lengths, heldout.lengths, samples.lengths)
    bases: dict[str, RidgeBasis] = {}
    test_features = np.empty(0)
    if any(t.kind != "series" for t in targets):
        # one decomposition per training set, shared by every trial-level condition
        feats = {k: trial_decoder_features(d, grid) for k, d in sets.items()}
        test_features = feats["heldout"]
        bases = {
            "real": RidgeBasis.of(feats["train"]),
            "synthetic": RidgeBasis.of(feats["samples"]),
            "real_plus_synthetic": RidgeBasis.of(
                np.concatenate([feats["train"], feats["samples"]])
            ),
        }
    weights = bootstrap_weights(heldout.n_trials, rng)  # [D, n], shared: paired intervals
    ones = np.ones((1, heldout.n_trials))
    out = []
    for target in targets:
        extra: dict[str, float] = {}
        if target.kind == "series":
            metrics = _decode_series(target, sets, rng)
        else:
            metrics, extra = _decode_trial_level(target, sets, bases, test_features)
        value = {k: float(m.value(ones)[0]) for k, m in metrics.items()}
        boot = {k: m.value(weights) for k, m in metrics.items()}
        entry: dict[str, Any] = {
            "name": target.name,
            "kind": target.kind,
            "metric": METRIC_NAMES[target.kind],
            "chance": value["chance"],
        }
        for key in DECODERS:
            entry[key] = {"value": value[key], "ci": percentile_interval(boot[key])}
            if key in extra:
                entry[key]["median_error_deg"] = extra[key]
        for key in ("synthetic", "real_plus_synthetic"):
            entry[f"{key}_minus_real"] = {
                "value": value[key] - value["real"],
                "ci": percentile_interval(boot[key] - boot["real"]),
            }
        entry["trials"] = {"real": train.n_trials, "synthetic": samples.n_trials}
        if target.kind != "series":
            entry["time_points"] = {"stride_bins": grid.stride, "steps": grid.steps}
        out.append(entry)
    return out
