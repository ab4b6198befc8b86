"""Realism as a two-sample test: can a simple classifier tell held-out real trials from samples?

A classifier-based two-sample test (Lopez-Paz & Oquab 2017): equal numbers of real held-out
trials and of candidate trials, `FOLDS`-fold stratified cross-validation of a fixed, small model
(L2 logistic regression, penalty `L2`, on standardised features), accuracy over every held-out
prediction with a Wilson 95% interval. 0.5 = indistinguishable by these features.

Features per trial (`trial_features`, each a per-bin average, so they do not grow with length):
√ of each neuron's mean count per bin [N]; of the population count per bin: its mean, log Fano
factor, fraction of empty bins, lag-1 and lag-2 autocorrelation, the mean pairwise correlation
implied by its variance, and its time course in `SEGMENTS` equal parts of the trial relative to
its mean.

Lengths: trials are cropped, as `evaluate` does, to min(own length, length of a random trial of
the other set), so a length difference alone cannot give the sets away.

Reference points, through the same test: the *floor*, real training trials against held-out ones
(≈ 0.5: two samples of the same recording), and the *naive* homogeneous Poisson surrogate of
`evaluate` (each neuron at its mean training rate, the samples' lengths), which a working test
must catch.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ldns_cli.auditing.stats import fit_logistic, stratified_folds, wilson_interval

FOLDS = 5
L2 = 0.01  # penalty on the mean log-loss scale, features standardised
SEGMENTS = 8  # parts of the trial whose population rate describes its time course


def _autocorr(x: np.ndarray, valid: np.ndarray, lag: int) -> np.ndarray:
    """Per-trial autocorrelation of x `[B, L]` at `lag` over valid bins (0 when undefined)."""
    n = valid.sum(1)
    mean = (x * valid).sum(1) / np.maximum(n, 1)
    xc = (x - mean[:, None]) * valid
    var = (xc * xc).sum(1)
    if x.shape[1] <= lag:
        return np.zeros(len(x))
    cov = (xc[:, lag:] * xc[:, :-lag]).sum(1)
    return np.where(var > 0, cov / np.maximum(var, 1e-12), 0.0)


def trial_features(counts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Length-invariant summary features `[B, N + 6 + SEGMENTS]` of counts `[B, L, N]`."""
    n_trials, n_bins, n_neurons = counts.shape
    valid = (np.arange(n_bins)[None, :] < lengths[:, None]).astype(np.float64)  # [B, L]
    n = lengths.astype(np.float64)[:, None]  # [B, 1]
    x = counts.astype(np.float32)  # zero beyond each trial's length (SpikeData, `_crop`)
    neuron_mean = x.sum(1, dtype=np.float64) / n  # [B, N]
    neuron_var = (x * x).sum(1, dtype=np.float64) / n - neuron_mean**2  # [B, N]
    pop = x.sum(2, dtype=np.float64)  # [B, L]
    pop_mean = pop.sum(1) / n[:, 0]  # [B]
    pop_var = (pop * pop).sum(1) / n[:, 0] - pop_mean**2
    fano = np.log((pop_var + 1e-3) / (pop_mean + 1e-3))
    empty = ((pop == 0) * valid).sum(1) / n[:, 0]
    # var(Σx) = Σ var + Σ_{i≠j} cov: the mean pairwise covariance over the mean variance
    sum_var = neuron_var.sum(1)
    sync = (pop_var - sum_var) / np.maximum(sum_var * max(n_neurons - 1, 1), 1e-12)
    # time course: population rate in SEGMENTS equal parts of each trial, relative to its mean
    pos = np.arange(n_bins)[None, :] / n  # [B, L] position in the trial, 0..1
    segment = np.minimum((pos * SEGMENTS).astype(np.int64), SEGMENTS - 1)
    course = np.zeros((n_trials, SEGMENTS))
    for k in range(SEGMENTS):
        w = (segment == k) * valid
        course[:, k] = (pop * w).sum(1) / np.maximum(w.sum(1), 1)
    course = course / np.maximum(pop_mean, 1e-6)[:, None]
    scalars = np.stack(
        [pop_mean, fano, empty, _autocorr(pop, valid, 1), _autocorr(pop, valid, 2), sync], 1
    )
    return np.concatenate([np.sqrt(np.maximum(neuron_mean, 0.0)), scalars, course], axis=1)


def _crop(counts: np.ndarray, new_lengths: np.ndarray) -> np.ndarray:
    """Counts `[B, L, N]` with bins at or beyond `new_lengths` zeroed."""
    valid = np.arange(counts.shape[1])[None, :] < new_lengths[:, None]
    return counts * valid[:, :, None]


def two_sample_test(
    real: tuple[np.ndarray, np.ndarray],
    other: tuple[np.ndarray, np.ndarray],
    rng: np.random.Generator,
) -> dict[str, Any]:
    """Cross-validated accuracy of telling `real` from `other` trials, each `(counts, lengths)`.

    Uses m = min(sizes) trials of each (random), so chance is exactly 0.5.
    """
    (c_real, l_real), (c_other, l_other) = real, other
    m = min(len(l_real), len(l_other))
    pick_r = np.sort(rng.permutation(len(l_real))[:m])
    pick_o = np.sort(rng.permutation(len(l_other))[:m])
    l_r = np.minimum(l_real[pick_r], rng.choice(l_other[pick_o], m))
    l_o = np.minimum(l_other[pick_o], rng.choice(l_real[pick_r], m))
    x = np.concatenate(
        [
            trial_features(_crop(c_real[pick_r], l_r), l_r),
            trial_features(_crop(c_other[pick_o], l_o), l_o),
        ]
    )
    y = np.concatenate([np.zeros(m), np.ones(m)])
    folds = min(FOLDS, m)
    if folds < 2:
        return {"accuracy": None, "accuracy_ci": [None, None], "trials_per_set": m}
    fold = stratified_folds(y, folds, rng)
    correct = 0
    for k in range(folds):
        test = fold == k
        clf = fit_logistic(x[~test], y[~test], L2)
        correct += int(((clf.decision(x[test]) > 0) == (y[test] == 1)).sum())
    return {
        "accuracy": correct / (2 * m),
        "accuracy_ci": list(wilson_interval(correct, 2 * m)),
        "trials_per_set": m,
    }
