"""Ridge regression with its penalty chosen by exact leave-one-out error, shared by the
decoders of `evaluate` (`scoring.decoding`), the fits' condition checks and `audit`'s utility.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ldns_cli.core.runtime import single_threaded_torch

# ridge penalties tried, relative to the mean eigenvalue of the standardised Gram matrix (so the
# grid does not depend on the number of features or trials)
RIDGE_ALPHAS = tuple(10.0 ** np.arange(-3.0, 3.5, 0.5))


# BLAS threads wait on each other: on the shared 2-core box (load ~3.4) a 1000x1000 eigh took
# 9.7 s on two OpenBLAS threads and 0.27 s on one, 100 solves of 142x142 took 8 s against 0.02 s.
# So the regressions' linear algebra runs in one thread, through torch (numpy cannot change its
# BLAS thread count at run time), in float64.
def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))


# ---------------------------------------------------------------------------- ridge
@dataclass
class Ridge:
    """A fitted ridge regression on standardised features: predict(x) = ((x - mean)/scale) w + b."""

    mean: np.ndarray  # [d]
    scale: np.ndarray  # [d]
    weights: np.ndarray  # [d, k]
    intercept: np.ndarray  # [k]
    alpha: float  # the chosen penalty (absolute, on the standardised features)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predictions `[n, k]`; NaN features (values a trial does not have) count as the mean."""
        xs = standardise(x, self.mean, self.scale)
        return xs @ self.weights + self.intercept


def standardise(x: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """(x - mean)/scale with NaN entries set to 0 (i.e. to the training mean)."""
    xs = (np.asarray(x, dtype=np.float64) - mean) / scale
    return np.where(np.isfinite(xs), xs, 0.0)


def feature_moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column means and standard deviations ignoring NaN; constant columns get scale 1."""
    x = np.asarray(x, dtype=np.float64)
    finite = np.isfinite(x)
    count = np.maximum(finite.sum(axis=0), 1)
    mean = np.where(finite, x, 0.0).sum(axis=0) / count
    var = (np.where(finite, x - mean, 0.0) ** 2).sum(axis=0) / count
    sd = np.sqrt(var)
    return mean, np.where(sd > 1e-12, sd, 1.0)


@dataclass
class RidgeBasis:
    """The thin decomposition X = Q S Vᵀ of standardised features, shared by every target that
    is regressed on the same trials (see `fit_ridge`)."""

    mean: np.ndarray  # [d]
    scale: np.ndarray  # [d]
    q: np.ndarray  # [n, r]
    v: np.ndarray  # [d, r]
    lam: np.ndarray  # [r], the squared singular values s²

    @classmethod
    def of(cls, x: np.ndarray) -> RidgeBasis:
        """Decompose x `[n, d]` through the eigendecomposition of the smaller of XᵀX and XXᵀ."""
        mean, scale = feature_moments(x)
        n, d = np.shape(x)
        with single_threaded_torch():
            xs = _t(standardise(x, mean, scale))  # [n, d]
            lam, vecs = torch.linalg.eigh(xs.T @ xs if d <= n else xs @ xs.T)
            keep = lam > 1e-10 * max(float(lam.max()) if lam.numel() else 0.0, 1e-300)
            lam, vecs = lam[keep], vecs[:, keep]
            s = lam.sqrt()
            if d <= n:  # XᵀX = V S² Vᵀ
                q, v = (xs @ vecs) / s, vecs
            else:  # XXᵀ = Q S² Qᵀ
                q, v = vecs, (xs.T @ vecs) / s
        return cls(mean, scale, q.numpy(), v.numpy(), lam.numpy())

    def fit(self, y: np.ndarray, alphas: tuple[float, ...] = RIDGE_ALPHAS) -> Ridge:
        """Ridge regression of y `[n, k]` with its penalty chosen by leave-one-out error."""
        y = np.asarray(y, dtype=np.float64)
        if y.ndim == 1:
            y = y[:, None]
        n = len(y)
        y_mean = y.mean(axis=0)
        with single_threaded_torch():
            q, lam = _t(self.q), _t(self.lam)
            yc = _t(y - y_mean)  # [n, k]
            qty = q.T @ yc  # [r, k]
            q2 = q * q  # [n, r]
            base = float(lam.mean()) if lam.numel() else 1.0
            best: tuple[float, float] | None = None
            for rel in alphas:
                alpha = rel * base
                shrink = lam / (lam + alpha)  # [r]
                fitted = q @ (shrink[:, None] * qty)  # [n, k]
                leverage = q2 @ shrink + 1.0 / n  # [n]
                loo = (yc - fitted) / (1.0 - leverage).clamp_min(1e-9)[:, None]
                err = float((loo * loo).sum())
                if best is None or err < best[0]:
                    best = (err, alpha)
            alpha = best[1] if best is not None else base
            weights = _t(self.v) @ ((lam.sqrt() / (lam + alpha))[:, None] * qty)  # [d, k]
        return Ridge(self.mean, self.scale, weights.numpy(), y_mean, float(alpha))


def fit_ridge(x: np.ndarray, y: np.ndarray, alphas: tuple[float, ...] = RIDGE_ALPHAS) -> Ridge:
    """Ridge regression of y `[n, k]` on x `[n, d]` (standardised, with an unpenalised intercept),
    its penalty chosen from `alphas` (relative to the mean eigenvalue of the Gram matrix) by the
    exact leave-one-out squared error, summed over the k outputs.

    Works through the thin decomposition X = Q S Vᵀ (`RidgeBasis`), taken from the
    eigendecomposition of the smaller of XᵀX and XXᵀ, so both many-feature/few-trial and
    many-row/few-feature problems cost one small eigendecomposition: fitted values
    Q diag(s²/(s²+α)) Qᵀy, leverages Σ_k Q_ik² s_k²/(s_k²+α) + 1/n, weights
    V diag(s/(s²+α)) Qᵀy.
    """
    return RidgeBasis.of(x).fit(y, alphas)
