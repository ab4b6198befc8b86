"""The audit's small statistics, written out with numpy/scipy: confidence intervals (Wilson for
proportions, DeLong for an AUC, paired bootstrap over trials), L2-penalised logistic regression
and stratified folds; ridge regression (penalty by exact leave-one-out error) is
`scoring.ridge`'s, re-exported here.

Every interval is a two-sided 95% interval. Nothing here draws random numbers without a
`numpy.random.Generator` passed in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import rankdata

from ldns_cli.core.runtime import single_threaded_torch
from ldns_cli.scoring.ridge import (  # noqa: F401 (re-exported for the audit's modules)
    RIDGE_ALPHAS,
    Ridge,
    RidgeBasis,
    _t,
    feature_moments,
    fit_ridge,
    standardise,
)

Z95 = 1.959963984540054  # two-sided 95% normal quantile
BOOTSTRAP_DRAWS = 1000


# ---------------------------------------------------------------------------- intervals
def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion `successes / n` (good coverage near 0 and 1)."""
    if n <= 0:
        return (math.nan, math.nan)
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # the interval holds p; min/max keep it so through float rounding at p = 0 or 1
    return (max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half)))


def auc_delong(positive: np.ndarray, negative: np.ndarray) -> tuple[float, float]:
    """(AUC, standard error): P(score of a positive > score of a negative), ties counting 1/2,
    with DeLong's variance (DeLong, DeLong & Clarke-Pearson 1988) from midranks."""
    pos = np.asarray(positive, dtype=np.float64)
    neg = np.asarray(negative, dtype=np.float64)
    m, n = len(pos), len(neg)
    if m == 0 or n == 0:
        return (math.nan, math.nan)
    pooled = rankdata(np.concatenate([pos, neg]))  # midranks [m + n]
    # per positive: the fraction of negatives below it; per negative: of positives above it
    v10 = (pooled[:m] - rankdata(pos)) / n  # [m]
    v01 = 1.0 - (pooled[m:] - rankdata(neg)) / m  # [n]
    auc = float(v10.mean())
    var = (v10.var(ddof=1) / m if m > 1 else 0.0) + (v01.var(ddof=1) / n if n > 1 else 0.0)
    return auc, math.sqrt(max(var, 0.0))


def normal_interval(value: float, se: float, lo: float = 0.0, hi: float = 1.0) -> list[float]:
    """value ± 1.96 se, clipped to [lo, hi]."""
    return [max(lo, value - Z95 * se), min(hi, value + Z95 * se)]


def bootstrap_weights(n: int, rng: np.random.Generator, draws: int = BOOTSTRAP_DRAWS) -> np.ndarray:
    """Trial resampling counts `[draws, n]` (each row a multinomial resample of n trials)."""
    return rng.multinomial(n, np.full(n, 1.0 / n), size=draws).astype(np.float64)


def percentile_interval(values: np.ndarray) -> list[float]:
    """The 2.5th and 97.5th percentiles of bootstrap replicates (NaN replicates dropped)."""
    ok = np.asarray(values, dtype=np.float64)
    ok = ok[np.isfinite(ok)]
    if ok.size == 0:
        return [math.nan, math.nan]
    return [float(np.percentile(ok, 2.5)), float(np.percentile(ok, 97.5))]


# ---------------------------------------------------------------------------- one thread
# The dense problems here are small (at most a few thousand rows by a few thousand features),
# where a second BLAS/LAPACK thread gains little; and when the cores are busy, multithreaded
# ---------------------------------------------------------------------------- logistic
@dataclass
class Logistic:
    """A fitted L2 logistic regression on standardised features."""

    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray  # [d]
    intercept: float

    def decision(self, x: np.ndarray) -> np.ndarray:
        """Log-odds of class 1 `[n]`."""
        return standardise(x, self.mean, self.scale) @ self.weights + self.intercept


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float, max_iter: int = 50) -> Logistic:
    """Minimise mean log-loss + (l2/2)|w|² (intercept unpenalised) by Newton's method with
    backtracking, from zero.

    x `[n, d]` features (standardised here), y `[n]` labels 0/1. Deterministic. Newton rather
    than a quasi-Newton library routine: the problems here are small (d ≲ 200) and strictly
    convex, so a handful of (d+1)² solves converge to machine precision.
    """
    mean, scale = feature_moments(x)
    n, d = np.shape(x)
    with single_threaded_torch():
        x1 = torch.cat([_t(standardise(x, mean, scale)), torch.ones(n, 1, dtype=torch.float64)], 1)
        yt = _t(y)
        sign = 2.0 * yt - 1.0  # ±1
        penalty = torch.full((d + 1,), float(l2), dtype=torch.float64)
        penalty[d] = 0.0  # the intercept

        def objective(theta: torch.Tensor) -> float:
            logit = F.logsigmoid(sign * (x1 @ theta))
            return float(-logit.mean() + 0.5 * (penalty * theta**2).sum())

        theta = torch.zeros(d + 1, dtype=torch.float64)
        value = objective(theta)
        for _ in range(max_iter):
            p = torch.sigmoid(x1 @ theta)  # [n]
            grad = x1.T @ (p - yt) / n + penalty * theta
            hess = (x1 * (p * (1 - p) / n)[:, None]).T @ x1 + torch.diag(penalty + 1e-12)
            step = torch.linalg.solve(hess, grad)
            t, decrease = 1.0, float(grad @ step)
            trial = value
            while t > 1e-10:  # backtracking (Armijo) keeps every step a descent
                trial = objective(theta - t * step)
                if trial <= value - 1e-4 * t * decrease:
                    break
                t *= 0.5
            theta, value = theta - t * step, trial
            if t * float(step.abs().max()) < 1e-10:
                break
    w = theta.numpy()
    return Logistic(mean, scale, w[:d], float(w[d]))


def stratified_folds(labels: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Fold index `[n]` in 0..k-1 with each label spread evenly over the folds."""
    labels = np.asarray(labels)
    fold = np.empty(len(labels), dtype=np.int64)
    for value in np.unique(labels):
        where = np.flatnonzero(labels == value)
        fold[rng.permutation(where)] = np.arange(len(where)) % k
    return fold
