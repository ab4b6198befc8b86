"""The memorisation check's feature space and its nearest-trial search.

Feature space. A trial becomes √(Gaussian-smoothed counts), σ = `SMOOTH_BINS` bins, kept at
every `STRIDE_BINS`-th bin: `[steps, N]`. Smoothing makes a copy with a few spikes jittered by a
bin still look like its original; the square root stabilises Poisson variance, so every neuron
contributes noise of about the same size whatever its rate (no per-neuron scaling is needed, and
none is fitted). With a model, the autoencoder's latents, each channel divided by its training
standard deviation, are a second space (`latent_features`).

Trials of unequal length. Trials are aligned at bin 0 (an alignment event or the trial start),
so two trials are compared over their common prefix, min(ℓ_a, ℓ_b) feature steps, and the
distance is the root-mean-square difference per step and feature:

    d(a, b) = √( Σ_{t < m} Σ_f (a_tf − b_tf)² / (m · F) ),   m = min(steps_a, steps_b).

Being a mean rather than a sum, it does not grow with the overlap, so a short pair and a long pair
are on the same scale (a shorter overlap is only noisier). A sample longer than every training
trial is compared on its first ℓ bins; a copy placed later inside a long sample is not looked for.

Computation. d² = (|a_{<m}|² + |b_{<m}|² − 2 a_{<m}·b_{<m}) / (m F): prefix norms come from a
cumulative sum over steps, and the prefix Gram matrix is accumulated segment by segment between
the distinct trial lengths, so unequal lengths cost what one matrix product costs (float32 GEMM).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ldns_cli.core.data import SpikeData
from ldns_cli.scoring.metrics import smooth_rates

SMOOTH_BINS = 2.0  # σ of the Gaussian smoothing, in bins
STRIDE_BINS = 2  # feature steps are every 2nd bin (the smoothing removes what lies between)
CHUNK_PAIRS = 4_000_000  # query rows per block so that a block's distance matrix stays ~16 MB


@dataclass
class TrialFeatures:
    """Per-trial feature sequences, aligned at bin 0."""

    values: np.ndarray  # float32 [B, T, F]; zero beyond a trial's valid steps
    steps: np.ndarray  # int64 [B], valid feature steps per trial (>= 1)

    @property
    def n_trials(self) -> int:
        return int(self.values.shape[0])

    def subset(self, index: np.ndarray) -> TrialFeatures:
        return TrialFeatures(self.values[index], self.steps[index])


def _steps(lengths: np.ndarray, stride: int) -> np.ndarray:
    return (np.asarray(lengths, dtype=np.int64) + stride - 1) // stride


def count_features(
    data: SpikeData, sigma_bins: float = SMOOTH_BINS, stride_bins: int = STRIDE_BINS
) -> TrialFeatures:
    """√(smoothed counts) at every `stride_bins`-th bin `[B, T, N]` (the memorisation space)."""
    smoothed = smooth_rates(data.counts, data.lengths, sigma_bins)  # [B, L, N], 0 at padding
    values = np.sqrt(np.maximum(smoothed[:, ::stride_bins], 0.0)).astype(np.float32)
    return TrialFeatures(values, _steps(data.lengths, stride_bins))


def latent_features(
    latents: np.ndarray, lengths: np.ndarray, scale: np.ndarray, stride_bins: int = STRIDE_BINS
) -> TrialFeatures:
    """Latents `[B, L, Z]` divided by a per-channel `scale` `[Z]`, every `stride_bins`-th bin."""
    values = latents[:, ::stride_bins] / np.asarray(scale, dtype=np.float32)  # [B, T, Z]
    steps = _steps(lengths, stride_bins)
    valid = np.arange(values.shape[1])[None, :] < steps[:, None]  # [B, T]
    return TrialFeatures((values * valid[:, :, None]).astype(np.float32), steps)


def _pad_time(values: np.ndarray, n_steps: int) -> np.ndarray:
    if values.shape[1] == n_steps:
        return values
    return np.pad(values, ((0, 0), (0, n_steps - values.shape[1]), (0, 0)))


def prefix_distances(query: TrialFeatures, ref: TrialFeatures) -> np.ndarray:
    """RMS prefix distances `[Bq, Br]` between every query and reference trial (see module)."""
    n_steps = max(query.values.shape[1], ref.values.shape[1])
    q = _pad_time(query.values, n_steps)  # [Bq, T, F]
    r = _pad_time(ref.values, n_steps)  # [Br, T, F]
    n_feat = q.shape[2]
    # cumulative squared norms: norm[i, m] = |trial i's first m steps|²
    zero_q = np.zeros((len(q), 1))
    zero_r = np.zeros((len(r), 1))
    norm_q = np.concatenate([zero_q, np.cumsum((q.astype(np.float64) ** 2).sum(-1), 1)], 1)
    norm_r = np.concatenate([zero_r, np.cumsum((r.astype(np.float64) ** 2).sum(-1), 1)], 1)
    out = np.empty((len(q), len(r)), dtype=np.float32)
    gram = np.zeros((len(q), len(r)), dtype=np.float64)  # prefix Gram up to the current boundary
    start = 0
    for m in np.unique(np.concatenate([query.steps, ref.steps])):  # ascending
        m = int(m)
        seg_q = q[:, start:m].reshape(len(q), -1)
        seg_r = r[:, start:m].reshape(len(r), -1)
        gram += seg_q @ seg_r.T  # float32 GEMM, accumulated in float64
        start = m
        # pairs whose common prefix ends here: min(steps_q, steps_r) == m
        rows_eq, rows_ge = query.steps == m, query.steps >= m
        cols_eq, cols_ge = ref.steps == m, ref.steps >= m
        for rows, cols in ((rows_eq, cols_ge), (rows_ge, cols_eq)):
            if rows.any() and cols.any():
                block = np.ix_(rows, cols)
                d2 = norm_q[rows, m][:, None] + norm_r[cols, m][None, :] - 2.0 * gram[block]
                out[block] = np.sqrt(np.maximum(d2, 0.0) / (m * n_feat))
    return out


@dataclass
class Nearest:
    """Per query trial: the distance to, and index of, its nearest reference trial."""

    distance: np.ndarray  # float64 [Bq]
    index: np.ndarray  # int64 [Bq], into the reference set (not into a subset)


def nearest(
    query: TrialFeatures, ref: TrialFeatures, subsets: Sequence[np.ndarray | None] = (None,)
) -> list[Nearest]:
    """The nearest reference trial of every query trial, once per subset of reference trials
    (None = all of them), in row blocks so memory stays bounded whatever the set sizes."""
    picks = [np.arange(ref.n_trials) if s is None else np.asarray(s) for s in subsets]
    dist = [np.empty(query.n_trials) for _ in picks]
    index = [np.empty(query.n_trials, dtype=np.int64) for _ in picks]
    rows = max(1, CHUNK_PAIRS // max(ref.n_trials, 1))
    for r0 in range(0, query.n_trials, rows):
        sl = slice(r0, r0 + rows)
        block = prefix_distances(query.subset(np.arange(query.n_trials)[sl]), ref)  # [b, Br]
        for k, pick in enumerate(picks):
            sub = block[:, pick]
            arg = np.argmin(sub, axis=1)
            dist[k][sl] = sub[np.arange(len(arg)), arg]
            index[k][sl] = pick[arg]
    return [Nearest(d, i) for d, i in zip(dist, index, strict=True)]
