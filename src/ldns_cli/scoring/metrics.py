"""Sample-quality metrics for binned spike trains, as pure numpy functions.

Every statistic here is built from *additive* sufficient statistics (sums over trials), so a set of
trials is summarised once and any subset or resample of it is a weighted sum of per-unit sums
(`SpikeSums`, a unit being a block of trials). That is what makes the fold/floor/naive protocol in
`ldns_cli.scoring.evaluation` cheap: the data are read once, folds only re-weight sums.

Inputs are counts `[B, L, N]` (B trials, L bins, N neurons; bins at or beyond a trial's length are
zero and ignored) with `lengths [B]` and the bin width `bin_size_s`. Definitions follow the LDNS
paper's evaluation code where it is sound, and fix it where it misleads:

- population spike count (psc) x_{b,t} = Σ_n S_{b,t,n} over valid bins; densities on the integer grid
  0..M; KL(model‖data) of Gaussian-KDE densities (as the paper), Jensen-Shannon and 1-Wasserstein
  of the raw histograms;
- Pearson correlation of bin counts, pooled over valid bins of all trials; RMSE over unique pairs
  i<j (`corr_rmse`) and the paper's value over all N² entries with the diagonal and upper triangle
  zeroed (`corr_rmse_paper` = corr_rmse · sqrt((N-1)/(2N)) ≈ corr_rmse / √2);
- per-neuron mean and std of inter-spike intervals (seconds), spikes spread evenly in their bin,
  ISIs within trials only; RMSE across neurons;
- per-neuron mean rate (Hz), Fano factor of counts in fixed windows, autocorrelation at lags 1..k,
  and the log power spectrum of smoothed population PCs (PCA fitted on the reference).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter1d

# Floor on the data density inside KL(model‖data): a KDE's Gaussian tails underflow to 0 in float64
# far from the data, which would make KL infinite for any model mass there (the paper's `nansum`
# returns inf). 1e-12 keeps the value finite; a model bin with mass p where the data has none adds
# p·ln(p/1e-12) ≈ 27.6·p nats, a loud but finite penalty.
KL_EPS = 1e-12

METRIC_NAMES = (
    "psc_kl",
    "psc_js",
    "psc_w1",
    "corr_rmse",
    "corr_rmse_paper",
    "mean_isi_rmse_s",
    "std_isi_rmse_s",
    "rate_rmse_hz",
    "fano_rmse",
    "autocorr_rmse",
    "psd_log_mse",
)

METRIC_DESCRIPTIONS = {
    "psc_kl": "KL(model‖data), nats, Gaussian-KDE densities of the population spike count",
    "psc_js": "Jensen-Shannon divergence, nats, histograms of the population spike count",
    "psc_w1": "1-Wasserstein distance, spikes/bin, histograms of the population spike count",
    "corr_rmse": "RMSE of pairwise count correlations over unique pairs i<j",
    "corr_rmse_paper": "paper's correlation RMSE over all N² entries (upper triangle zeroed)",
    "mean_isi_rmse_s": "RMSE across neurons of the mean inter-spike interval, seconds",
    "std_isi_rmse_s": "RMSE across neurons of the std of inter-spike intervals, seconds",
    "rate_rmse_hz": "RMSE across neurons of the mean firing rate, Hz",
    "fano_rmse": "RMSE across neurons of the Fano factor of spike counts in fixed windows",
    "autocorr_rmse": "RMSE over neurons and lags 1..k of count autocorrelations",
    "psd_log_mse": "MSE of log10 spectra of smoothed population PCs (PCA on reference), f ≤ 0.5/σ",
}


@dataclass(frozen=True)
class MetricSettings:
    """Free parameters of the metrics (defaults follow the paper's monkey evaluation)."""

    fano_window_bins: int = 10  # window (bins) whose spike counts define the Fano factor
    autocorr_lags: int = 10  # autocorrelation at lags 1..k bins
    smooth_sigma_s: float = 0.03  # Gaussian smoothing std for the PCA/PSD metric (paper: 30 ms)
    psd_components: int = 5  # number of reference PCs whose spectra are compared (paper: 5)
    psd_segment_bins: int = 128  # Welch segment length (bins); shorter trials give no segment
    min_isi: int = 5  # neurons with fewer ISIs than this in either set are left out of ISI RMSEs
    isi_placement: str = "centred"  # "centred": (t+(j+0.5)/c)Δ; "paper": (t+(j+1)/(c+1))Δ

    def __post_init__(self) -> None:
        if self.isi_placement not in ("centred", "paper"):
            raise ValueError("isi_placement must be 'centred' or 'paper'")
        for name in ("fano_window_bins", "autocorr_lags", "psd_components", "psd_segment_bins"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.psd_segment_bins < 4:
            raise ValueError("psd_segment_bins must be >= 4")


@dataclass(frozen=True)
class Projection:
    """Standardise-then-PCA map fitted on the reference's smoothed rates.

    z = ((smooth(x) − mean) / scale) @ components, with `smooth` a Gaussian of std `sigma_bins`
    normalised by the smoothed valid-bin mask (so trial edges and padding do not bias it).
    """

    mean: np.ndarray  # [N] spikes/bin
    scale: np.ndarray  # [N] spikes/bin (1 for silent neurons)
    components: np.ndarray  # [N, Z] orthonormal columns
    sigma_bins: float
    explained: np.ndarray  # [Z] fraction of standardised variance per component

    def cutoff_hz(self, bin_size_s: float) -> float:
        """Highest frequency the smoothing leaves measurable: 0.5/σ (gain exp(−π²/2) ≈ 0.007).

        Above it the smoothed spectra are the Gaussian filter's tail (orders of magnitude down,
        then float noise), so log-PSD differences there would measure nothing about the model.
        """
        return 0.5 / (self.sigma_bins * bin_size_s)


# ----------------------------------------------------------------------------- basic helpers
def valid_mask(lengths: np.ndarray, n_bins: int) -> np.ndarray:
    """bool `[B, L]`: bin t of trial b is valid iff t < lengths[b]."""
    return np.arange(n_bins)[None, :] < np.asarray(lengths)[:, None]


def population_spike_counts(counts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """psc: x_{b,t} = Σ_n S_{b,t,n} over the valid bins of all trials, flattened `[Σ lengths]`."""
    psc = counts.sum(axis=2, dtype=np.int64)  # [B, L]
    return psc[valid_mask(lengths, counts.shape[1])]


def kde_on_grid(hist: np.ndarray) -> np.ndarray:
    """Gaussian KDE (Scott's rule) of integer data given as a histogram, on the grid 0..M.

    p(x) ∝ Σ_k h_k φ((x − k)/w), w = σ·n^(−1/5), σ the sample std (ddof 1) of the n values, then
    normalised so Σ_x p(x) = 1 over the grid (the paper's `scipy.stats.gaussian_kde` evaluated at
    0..M and normalised, computed exactly from the histogram in O(M²)). With fewer than 2 values
    or zero spread the KDE is undefined; the normalised histogram is returned.
    """
    hist = np.asarray(hist, dtype=np.float64)
    n = hist.sum()
    grid = np.arange(hist.size, dtype=np.float64)
    if n < 2:
        return hist / max(n, 1.0)
    mean = (hist * grid).sum() / n
    var = (hist * (grid - mean) ** 2).sum() / (n - 1)
    if var <= 0:
        return hist / n
    width = np.sqrt(var) * n ** (-1.0 / 5.0)
    support = np.flatnonzero(hist)
    kernel = np.exp(-0.5 * ((grid[:, None] - grid[None, support]) / width) ** 2)  # [M+1, S]
    dens = kernel @ hist[support]
    return dens / dens.sum()


def kl_divergence(p: np.ndarray, q: np.ndarray, eps: float = KL_EPS) -> float:
    """KL(p‖q) = Σ_{x: p(x)>0} p(x) ln(p(x) / max(q(x), eps)), in nats (p, q sum to 1)."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    keep = p > 0
    # ≥ 0 mathematically; clip the −1e-13 rounding residue of identical inputs
    return max(0.0, float(np.sum(p[keep] * np.log(p[keep] / np.maximum(q[keep], eps)))))


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence ½KL(p‖m) + ½KL(q‖m), m = (p+q)/2, nats (bounded by ln 2)."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    m = 0.5 * (p + q)
    return 0.5 * kl_divergence(p, m) + 0.5 * kl_divergence(q, m)


def wasserstein1_grid(p: np.ndarray, q: np.ndarray) -> float:
    """1-Wasserstein distance of two distributions on the integer grid: Σ_x |F_p(x) − F_q(x)|."""
    return float(np.abs(np.cumsum(p) - np.cumsum(q)).sum())


def nan_rmse(a: np.ndarray, b: np.ndarray) -> float:
    """sqrt(mean((a − b)²)) over the entries finite in both; NaN if there are none."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    if not ok.any():
        return float("nan")
    return float(np.sqrt(np.mean((a[ok] - b[ok]) ** 2)))


def _pad_to(a: np.ndarray, size: int) -> np.ndarray:
    return np.pad(a, (0, size - a.size)) if a.size < size else a


def corr_rmse(c_model: np.ndarray, c_data: np.ndarray) -> float:
    """sqrt( Σ_{i<j} (C^m_ij − C^d_ij)² / (N(N−1)/2) ): RMSE over unique neuron pairs."""
    iu = np.triu_indices(c_model.shape[0], k=1)
    return nan_rmse(c_model[iu], c_data[iu])


def corr_rmse_paper(c_model: np.ndarray, c_data: np.ndarray) -> float:
    """The paper's value: sqrt( Σ_{i<j} (C^m_ij − C^d_ij)² / N² ).

    The authors zero the diagonal and upper triangle and average over all N² entries, so this is
    `corr_rmse` · sqrt((N−1)/(2N)) ≈ `corr_rmse`/√2; kept only to compare with published numbers.
    """
    n = c_model.shape[0]
    iu = np.triu_indices(n, k=1)
    d = c_model[iu] - c_data[iu]
    return float(np.sqrt(np.sum(d**2) / n**2))


def _matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """float32 matrix product through torch, whose thread count the caller controls.

    numpy's OpenBLAS cannot be limited after import; with its threads on a busy machine the
    hundreds of mid-sized Gram products here ran 5-20x slower (measured) than single-threaded.
    `evaluation.evaluate_full` runs them one thread per data set instead.
    """
    import torch

    return (torch.from_numpy(a) @ torch.from_numpy(b)).numpy()  # strided views are fine


# ----------------------------------------------------------------------------- spike times
def _bin_offsets(c: np.ndarray, placement: str) -> np.ndarray:
    """Offset (in bins) of each spike inside its bin, for bins with counts `c` (repeated)."""
    rep = np.repeat(c, c)  # [S] count of the bin each spike sits in
    j = np.arange(rep.size) - np.repeat(np.cumsum(c) - c, c)  # index of the spike in its bin
    if placement == "paper":
        return (j + 1.0) / (rep + 1.0)
    return (j + 0.5) / rep


def spike_times(
    counts: np.ndarray, lengths: np.ndarray, bin_size_s: float, placement: str = "centred"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spike times (s from trial start) with their trial and neuron, sorted by (trial, neuron, time).

    c spikes in bin t are placed at (t + (j+0.5)/c)·Δ, j = 0..c−1 ("centred": each spike at the
    centre of an equal sub-interval), or at (t + (j+1)/(c+1))·Δ ("paper": as the LDNS evaluation
    code places them).
    """
    del lengths  # padding bins hold zeros, so they produce no spikes
    t_bins, key = _spike_bins(counts, placement)
    n_neurons = counts.shape[2]
    return t_bins * bin_size_s, key // n_neurons, key % n_neurons


def _spike_bins(counts: np.ndarray, placement: str) -> tuple[np.ndarray, np.ndarray]:
    """Spike times in bins and their key trial·N + neuron, sorted by key then time `[S]`.

    Vectorised: the nonzero bins of the [B, N, L]-ordered counts are repeated by their count.
    """
    n_bins = counts.shape[1]
    flat = np.ascontiguousarray(counts.transpose(0, 2, 1)).reshape(-1)  # [B*N*L]
    nz = np.flatnonzero(flat)
    c = flat[nz].astype(np.int64)
    key = np.repeat(nz // n_bins, c)  # trial*N + neuron per spike
    t = np.repeat(nz % n_bins, c) + _bin_offsets(c, placement)
    return t, key


def _isi_sums(
    counts: np.ndarray, bin_size_s: float, placement: str, group_of_trial: np.ndarray, n_groups: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Σ isi, Σ isi², #isi per (group, neuron) `[G, N]`; ISIs only between spikes of one trial.

    Works on non-empty bins rather than single spikes: a bin with c spikes holds c−1 equal ISIs of
    `step(c)` bins, and consecutive non-empty bins t1 < t2 of one (trial, neuron) add the ISI from
    the last spike of t1 to the first of t2. Same values as differencing `spike_times`, faster.
    """
    n_bins, n_neurons = counts.shape[1], counts.shape[2]
    if counts.size and counts.max() <= 255:  # the [B, N, L] copy is 4x cheaper in bytes
        counts = counts.astype(np.uint8)
    flat = np.ascontiguousarray(counts.transpose(0, 2, 1)).reshape(-1)  # [B*N*L]
    nz = np.flatnonzero(flat != 0)
    c = flat[nz].astype(np.float64)
    key = nz // n_bins  # trial*N + neuron, sorted
    t = (nz - key * n_bins).astype(np.float64)
    trial = key // n_neurons
    if placement == "paper":
        step = 1.0 / (c + 1.0)  # spikes at (j+1)/(c+1), j = 0..c−1
        first, last = step, c * step
    else:
        step = 1.0 / c  # spikes at (j+0.5)/c
        first, last = 0.5 * step, 1.0 - 0.5 * step
    same = key[1:] == key[:-1]
    gap = ((t[1:] + first[1:]) - (t[:-1] + last[:-1]))[same] * bin_size_s  # between bins
    # (group, neuron) key of every non-empty bin: group·N + (key − trial·N)
    g_in = key + (group_of_trial[trial] - trial) * n_neurons
    g_gap = g_in[1:][same]
    size = n_groups * n_neurons
    multi = c >= 2  # only bins with several spikes hold ISIs inside them (rare at ms bins)
    g_multi, c_multi, step_s = g_in[multi], c[multi], step[multi] * bin_size_s
    # float64 throughout: bincount of an empty array returns int64 even with weights, and
    # recordings with no bin of several spikes (refractory cells, 1 ms bins) have no g_multi
    s1 = np.bincount(g_multi, weights=(c_multi - 1.0) * step_s, minlength=size).astype(np.float64)
    s1 += np.bincount(g_gap, weights=gap, minlength=size)
    s2 = np.bincount(g_multi, weights=(c_multi - 1.0) * step_s**2, minlength=size).astype(
        np.float64
    )
    s2 += np.bincount(g_gap, weights=gap * gap, minlength=size)
    n = np.bincount(g_multi, weights=c_multi - 1.0, minlength=size).astype(np.float64)
    n += np.bincount(g_gap, minlength=size)
    shape = (n_groups, n_neurons)
    return s1.reshape(shape), s2.reshape(shape), n.reshape(shape)


def isi_histogram(counts: np.ndarray, lengths: np.ndarray, max_bins: int = 50) -> np.ndarray:
    """Pooled histogram of inter-spike intervals in whole bins `[max_bins + 1]`: entry k counts
    the ISIs of k bins (0: spikes sharing a bin); the last entry holds every longer one. ISIs are
    taken between successive spikes of one neuron within one trial."""
    del lengths  # padding bins hold zeros, so they produce no spikes
    n_bins = counts.shape[1]
    flat = np.ascontiguousarray(counts.transpose(0, 2, 1)).reshape(-1)  # [B*N*L]
    nz = np.flatnonzero(flat)
    c = flat[nz].astype(np.int64)
    key = nz // n_bins  # trial*N + neuron, sorted
    same = key[1:] == key[:-1]
    gaps = np.diff(nz)[same]  # bins between successive non-empty bins of one (trial, neuron)
    hist = np.bincount(np.minimum(gaps, max_bins), minlength=max_bins + 1).astype(np.int64)
    hist[0] += int(np.sum(c - 1))  # a bin with c spikes holds c − 1 zero-bin ISIs
    return hist


def fold_stats(values: list[float]) -> dict[str, float | None]:
    """Mean and sample sd over folds of the finite values (None when there are none)."""
    arr = np.asarray(values, dtype=np.float64)
    ok = arr[np.isfinite(arr)]
    if ok.size == 0:
        return {"mean": None, "sd": None}
    return {"mean": float(ok.mean()), "sd": float(ok.std(ddof=1)) if ok.size > 1 else 0.0}


# ----------------------------------------------------------------------------- smoothing / PCA
def smooth_rates(counts: np.ndarray, lengths: np.ndarray, sigma_bins: float) -> np.ndarray:
    """Gaussian-smoothed counts `[B, L, N]`, normalised by the smoothed valid mask at trial edges.

    r_t = Σ_s g(t−s) x_s m_s / Σ_s g(t−s) m_s; padding bins come back as 0.
    """
    mask = valid_mask(lengths, counts.shape[1]).astype(np.float32)  # [B, L]
    # float32: these are smoothed spike counts, 7 digits are plenty and it halves the traffic
    num = gaussian_filter1d(counts.astype(np.float32), sigma_bins, axis=1, mode="constant")
    den = gaussian_filter1d(mask, sigma_bins, axis=1, mode="constant")
    out = num / np.maximum(den, 1e-6)[:, :, None]
    out[~mask.astype(bool)] = 0.0
    return out


def fit_projection(
    counts: np.ndarray, lengths: np.ndarray, bin_size_s: float, settings: MetricSettings
) -> Projection:
    """Fit standardisation + PCA on smoothed rates of (a subset of) the reference trials."""
    sigma_bins = max(1.0, settings.smooth_sigma_s / bin_size_s)
    rates = smooth_rates(counts, lengths, sigma_bins)[valid_mask(lengths, counts.shape[1])]
    rates = rates.astype(np.float64)  # [V, N]
    mean = rates.mean(axis=0)  # [N]
    scale = rates.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    z = (rates - mean) / scale  # [V, N]
    cov = z.T @ z / max(len(z) - 1, 1)
    evals, evecs = np.linalg.eigh(cov)
    order = np.argsort(evals)[::-1][: min(settings.psd_components, counts.shape[2])]
    comps = evecs[:, order]
    # sign convention: largest-magnitude loading positive, so projections are deterministic
    flip = np.sign(comps[np.abs(comps).argmax(axis=0), np.arange(comps.shape[1])])
    comps = comps * np.where(flip == 0, 1.0, flip)
    total = max(float(np.trace(cov)), 1e-12)
    return Projection(mean, scale, comps, sigma_bins, evals[order] / total)


def _project_smoothed(counts: np.ndarray, lengths: np.ndarray, proj: Projection) -> np.ndarray:
    """z = ((smooth(x) − mean)/scale) @ W, done as smooth(x @ W')/smooth(mask) − mean @ W'.

    Smoothing and projection are both linear, so projecting first smooths Z channels instead of N.
    Returns `[B, L, Z]` (padding bins hold garbage-free zeros only after masking by the caller).
    """
    n_trials, n_bins, n_neurons = counts.shape
    w = proj.components / proj.scale[:, None]  # [N, Z]
    y = _matmul(counts.reshape(-1, n_neurons).astype(np.float32), w.astype(np.float32)).reshape(
        n_trials, n_bins, -1
    )  # [B, L, Z]
    mask = valid_mask(lengths, n_bins).astype(np.float32)
    num = gaussian_filter1d(y, proj.sigma_bins, axis=1, mode="constant")
    den = gaussian_filter1d(mask, proj.sigma_bins, axis=1, mode="constant")
    offset = (proj.mean @ w).astype(np.float32)
    return num / np.maximum(den, 1e-6)[:, :, None] - offset[None, None, :]


def psd_frequencies_hz(segment_bins: int, bin_size_s: float) -> np.ndarray:
    """One-sided frequency grid of a `segment_bins`-long periodogram at fs = 1/bin_size_s."""
    return np.fft.rfftfreq(segment_bins, d=bin_size_s)


def _psd_sums(
    z: np.ndarray,
    lengths: np.ndarray,
    segment_bins: int,
    bin_size_s: float,
    group_of_trial: np.ndarray,
    n_groups: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Σ over Welch segments of the one-sided PSD `[G, F, Z]` and #segments `[G]`.

    Segments of `segment_bins` bins with 50% overlap inside each trial's valid bins, mean removed,
    Hann window, density scaling |FFT|²/(fs·Σw²), doubled except at DC and Nyquist (as scipy.welch).
    """
    hop = max(segment_bins // 2, 1)
    n_seg = np.where(lengths >= segment_bins, (lengths - segment_bins) // hop + 1, 0)
    total = int(n_seg.sum())
    n_freq = segment_bins // 2 + 1
    sums = np.zeros((n_groups, n_freq, z.shape[2]))
    counts = np.bincount(group_of_trial, weights=n_seg, minlength=n_groups)
    if total == 0:
        return sums, counts
    trial = np.repeat(np.arange(len(lengths)), n_seg)
    start = (np.arange(total) - np.repeat(np.cumsum(n_seg) - n_seg, n_seg)) * hop
    seg = z[trial[:, None], start[:, None] + np.arange(segment_bins)[None, :]]  # [S, P, Z]
    seg = seg - seg.mean(axis=1, keepdims=True)
    window = _hann(segment_bins)
    spec = np.abs(np.fft.rfft(seg * window[None, :, None], axis=1)) ** 2  # [S, F, Z]
    spec *= bin_size_s / np.sum(window**2)
    spec[:, 1 : n_freq - (1 if segment_bins % 2 == 0 else 0)] *= 2.0
    g = group_of_trial[trial]
    for z_i in range(z.shape[2]):  # Z is small (≤ psd_components); bincount per (group, freq)
        key = (g[:, None] * n_freq + np.arange(n_freq)[None, :]).reshape(-1)
        sums[:, :, z_i] = np.bincount(
            key, weights=spec[:, :, z_i].reshape(-1), minlength=n_groups * n_freq
        ).reshape(n_groups, n_freq)
    return sums, counts


def _hann(n: int) -> np.ndarray:
    """Periodic Hann window (scipy.signal.get_window('hann', n), the Welch default)."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)


# ----------------------------------------------------------------------------- sufficient stats
@dataclass
class SpikeSums:
    """Additive sufficient statistics of a set of trials, one row per unit (block of trials).

    Summing rows (optionally weighted) gives the statistics of the union of those units' trials;
    `finalise` turns summed statistics into per-neuron quantities.
    """

    bin_size_s: float
    n_trials: np.ndarray  # [U]
    n_bins: np.ndarray  # [U] valid bins
    spikes: np.ndarray  # [U, N] Σ counts
    gram: np.ndarray  # [U, N(N+1)/2] float32 Σ_t x_i x_j, upper triangle incl. diagonal
    psc_hist: np.ndarray  # [U, M+1] histogram of the population spike count
    isi_sum: np.ndarray  # [U, N] Σ isi (s)
    isi_sq: np.ndarray  # [U, N] Σ isi² (s²)
    isi_n: np.ndarray  # [U, N] #isi
    win_sum: np.ndarray  # [U, N] Σ window counts
    win_sq: np.ndarray  # [U, N] Σ window counts²
    n_windows: np.ndarray  # [U]
    ac_xy: np.ndarray  # [U, K, N] Σ_t x_t x_{t+k}
    ac_first: np.ndarray  # [U, K, N] Σ x_t over pairs' first members
    ac_second: np.ndarray  # [U, K, N] Σ x_{t+k} over pairs' second members
    ac_pairs: np.ndarray  # [U, K] #pairs
    psd_sum: np.ndarray  # [U, F, Z] Σ periodograms
    n_segments: np.ndarray  # [U]
    psd_freqs_hz: np.ndarray  # [F]
    psd_max_hz: float  # upper end of the compared band (smoothing cutoff)

    @property
    def n_units(self) -> int:
        return int(self.n_trials.shape[0])

    def pad_psc(self, size: int) -> SpikeSums:
        """The same sums with the psc histogram zero-padded to `size` grid points."""
        if self.psc_hist.shape[1] >= size:
            return self
        pad = np.zeros((self.n_units, size - self.psc_hist.shape[1]), self.psc_hist.dtype)
        return dataclasses.replace(self, psc_hist=np.concatenate([self.psc_hist, pad], axis=1))

    def total(self, weights: np.ndarray | None = None) -> SpikeSums:
        """Σ_u w_u · row_u for every statistic (weights `[U]`, default all ones): one row."""
        w = np.ones(self.n_units) if weights is None else np.asarray(weights, dtype=np.float64)
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name in ("bin_size_s", "psd_freqs_hz", "psd_max_hz"):
                out[f.name] = v
            elif f.name == "gram":
                # float32 storage (memory), float64 accumulation in chunks (precision)
                acc = np.zeros(v.shape[1])
                for i in range(0, self.n_units, 256):
                    acc += np.einsum("u,uk->k", w[i : i + 256], v[i : i + 256].astype(np.float64))
                out[f.name] = acc[None]
            else:
                # einsum without optimize: no BLAS call (tiny sizes, thread wake-ups cost more)
                out[f.name] = np.einsum("u,u...->...", w, v)[None]
        return SpikeSums(**out)


def summarise(
    counts: np.ndarray,
    lengths: np.ndarray,
    bin_size_s: float,
    settings: MetricSettings,
    projection: Projection | None = None,
    n_units: int = 1,
    segment_bins: int | None = None,
    chunk_trials: int = 256,
) -> SpikeSums:
    """Additive statistics of `counts [B, L, N]` for `n_units` contiguous, near-equal trial blocks.

    Callers that want random units permute the trials first. Bins at or beyond `lengths` are
    ignored even if non-zero (so trials can be cropped by passing shorter lengths). Memory stays
    bounded: trials are processed in chunks of about `chunk_trials` whole units.
    """
    counts = np.asarray(counts)
    lengths = np.asarray(lengths, dtype=np.int64)
    n_trials, n_bins, n_neurons = counts.shape
    n_units = int(min(max(n_units, 1), n_trials))
    bounds = np.linspace(0, n_trials, n_units + 1).round().astype(np.int64)
    unit_of_trial = np.repeat(np.arange(n_units), np.diff(bounds))
    k_lags = settings.autocorr_lags
    w_bins = settings.fano_window_bins
    seg = segment_bins if segment_bins is not None else settings.psd_segment_bins
    n_comp = 0 if projection is None else projection.components.shape[1]
    n_freq = seg // 2 + 1
    mask = valid_mask(lengths, n_bins)

    psc = counts.sum(axis=2, dtype=np.int64)  # [B, L]
    m_max = int(psc.max(initial=0))
    psc_key = (unit_of_trial[:, None] * (m_max + 1) + psc)[mask]
    psc_hist = np.bincount(psc_key, minlength=n_units * (m_max + 1)).reshape(n_units, m_max + 1)

    iu = np.triu_indices(n_neurons)
    gram = np.empty((n_units, iu[0].size), dtype=np.float32)
    spikes = np.zeros((n_units, n_neurons))
    isi_sum, isi_sq, isi_n = (np.zeros((n_units, n_neurons)) for _ in range(3))
    win_sum, win_sq = np.zeros((n_units, n_neurons)), np.zeros((n_units, n_neurons))
    n_windows = np.zeros(n_units)
    ac_xy, ac_first, ac_second = (np.zeros((n_units, k_lags, n_neurons)) for _ in range(3))
    ac_pairs = np.zeros((n_units, k_lags))
    psd_sum = np.zeros((n_units, n_freq, n_comp))
    n_segments = np.zeros(n_units)

    # chunks of whole units
    u0 = 0
    while u0 < n_units:
        u1 = u0 + 1
        while u1 < n_units and bounds[u1 + 1] - bounds[u0] <= chunk_trials:
            u1 += 1
        b0, b1 = bounds[u0], bounds[u1]
        lens = lengths[b0:b1]
        # one float32 copy per chunk, zero at or beyond each trial's length (callers may pass
        # cropped lengths); float32 holds integer counts and their per-trial sums exactly
        xf = counts[b0:b1].astype(np.float32)  # [b, L, N]
        xf *= mask[b0:b1, :, None]
        x = xf
        local = unit_of_trial[b0:b1] - u0
        n_local = u1 - u0
        for u in range(u0, u1):
            xu = xf[bounds[u] - b0 : bounds[u + 1] - b0].reshape(-1, n_neurons)  # [b_u*L, N]
            gram[u] = _matmul(xu.T, xu)[iu]
        per_trial = x.sum(axis=1).astype(np.float64)  # [b, N], exact: integer sums < 2^24
        starts = bounds[u0:u1] - b0  # units are contiguous: per-unit sums by reduceat, no BLAS

        def by_unit(a: np.ndarray, starts: np.ndarray = starts) -> np.ndarray:
            return np.add.reduceat(np.asarray(a, dtype=np.float64), starts, axis=0)

        spikes[u0:u1] = by_unit(per_trial)

        s1, s2, n = _isi_sums(x, bin_size_s, settings.isi_placement, local, n_local)
        isi_sum[u0:u1], isi_sq[u0:u1], isi_n[u0:u1] = s1, s2, n

        n_win = n_bins // w_bins
        if n_win > 0:
            wc = xf[:, : n_win * w_bins].reshape(len(x), n_win, w_bins, n_neurons).sum(axis=2)
            full = ((np.arange(n_win)[None, :] + 1) * w_bins <= lens[:, None]).astype(np.float32)
            wc = wc * full[:, :, None]  # [b, W, N], only windows inside the trial
            win_sum[u0:u1] = by_unit(wc.sum(axis=1))
            win_sq[u0:u1] = by_unit((wc * wc).sum(axis=1))
            n_windows[u0:u1] = by_unit(full.sum(axis=1))

        # first_k = Σ_{t < len−k} x_t and second_k = Σ_{k ≤ t < len} x_t, peeled one bin per lag
        rows = np.arange(len(x))
        first = per_trial.copy()  # [b, N]
        second = per_trial.copy()
        for k in range(1, k_lags + 1):
            if k >= n_bins:
                break
            last = lens - k  # index of the bin leaving the first members' range
            first -= np.where((last >= 0)[:, None], x[rows, np.clip(last, 0, None)], 0)
            second -= np.where((k - 1 < lens)[:, None], x[:, k - 1], 0)
            # float32 sums of integer products are exact below 2^24 per trial
            xy = np.einsum("btn,btn->bn", xf[:, :-k], xf[:, k:]).astype(np.float64)  # [b, N]
            ac_xy[u0:u1, k - 1] = by_unit(xy)
            ac_first[u0:u1, k - 1] = by_unit(first)
            ac_second[u0:u1, k - 1] = by_unit(second)
            ac_pairs[u0:u1, k - 1] = by_unit(np.clip(lens - k, 0, None))

        if projection is not None:
            z = _project_smoothed(x, lens, projection)
            ps, ns = _psd_sums(z, lens, seg, bin_size_s, local, n_local)
            psd_sum[u0:u1], n_segments[u0:u1] = ps, ns
        u0 = u1

    return SpikeSums(
        bin_size_s=float(bin_size_s),
        n_trials=np.diff(bounds).astype(np.float64),
        n_bins=np.bincount(unit_of_trial, weights=lengths, minlength=n_units),
        spikes=spikes,
        gram=gram,
        psc_hist=psc_hist,
        isi_sum=isi_sum,
        isi_sq=isi_sq,
        isi_n=isi_n,
        win_sum=win_sum,
        win_sq=win_sq,
        n_windows=n_windows,
        ac_xy=ac_xy,
        ac_first=ac_first,
        ac_second=ac_second,
        ac_pairs=ac_pairs,
        psd_sum=psd_sum,
        n_segments=n_segments,
        psd_freqs_hz=psd_frequencies_hz(seg, bin_size_s),
        psd_max_hz=0.0 if projection is None else projection.cutoff_hz(bin_size_s),
    )


# ----------------------------------------------------------------------------- finalised stats
@dataclass
class Summary:
    """Per-neuron / population statistics of one set of trials (from summed `SpikeSums`)."""

    n_trials: int
    rates_hz: np.ndarray  # [N]
    corr: np.ndarray  # [N, N], 0 where a neuron is silent (zero variance), 1 on the diagonal
    psc_hist: np.ndarray  # [M+1] counts
    isi_mean_s: np.ndarray  # [N] NaN without ISIs
    isi_std_s: np.ndarray  # [N]
    isi_n: np.ndarray  # [N]
    fano: np.ndarray  # [N] NaN for neurons without spikes in any window
    autocorr: np.ndarray  # [K, N] NaN for silent neurons
    psd: np.ndarray  # [F, Z] mean periodogram (NaN without segments)
    psd_freqs_hz: np.ndarray  # [F]
    psd_max_hz: float  # the PSD metric compares 0 < f ≤ psd_max_hz


def finalise(sums: SpikeSums) -> Summary:
    """Turn summed statistics (all units added) into per-neuron statistics.

    rate_n = Σx_n / (V·Δ) with V valid bins; corr_ij = cov_ij / (σ_i σ_j) with cov = Σx_i x_j/V −
    μ_i μ_j (pooled over bins of all trials, ddof 0); ISI mean = Σisi/n, std = sqrt(Σisi²/n −
    mean²) (ddof 0, as np.std); Fano_n = var/mean of window counts (ddof 0); autocorr_n(k) =
    [Σ(x_t − μ)(x_{t+k} − μ)/P_k] / σ², pairs within trials; PSD = mean periodogram.
    """
    s = sums if sums.n_units == 1 else sums.total()
    n_neurons = s.spikes.shape[1]
    n_bins = float(s.n_bins[0])
    mu = s.spikes[0] / max(n_bins, 1.0)  # [N] spikes/bin
    g = np.zeros((n_neurons, n_neurons))
    iu = np.triu_indices(n_neurons)
    g[iu] = s.gram[0]
    g = g + np.triu(g, 1).T
    cov = g / max(n_bins, 1.0) - np.outer(mu, mu)
    var = np.clip(np.diag(cov).copy(), 0.0, None)
    sd = np.sqrt(var)
    live = sd > 1e-12 * np.maximum(mu, 1.0)
    denom = np.outer(np.where(live, sd, 1.0), np.where(live, sd, 1.0))
    corr = np.where(np.outer(live, live), cov / denom, 0.0)
    corr = np.clip(corr, -1.0, 1.0)
    np.fill_diagonal(corr, 1.0)

    with np.errstate(invalid="ignore", divide="ignore"):
        n_isi = s.isi_n[0]
        isi_mean = np.where(n_isi > 0, s.isi_sum[0] / n_isi, np.nan)
        isi_var = np.where(n_isi > 0, s.isi_sq[0] / n_isi - isi_mean**2, np.nan)
        isi_std = np.sqrt(np.clip(isi_var, 0.0, None))
        n_win = float(s.n_windows[0])
        w_mean = s.win_sum[0] / n_win if n_win > 0 else np.full(n_neurons, np.nan)
        w_var = s.win_sq[0] / n_win - w_mean**2 if n_win > 0 else np.full(n_neurons, np.nan)
        fano = np.where(w_mean > 0, np.clip(w_var, 0.0, None) / w_mean, np.nan)
        pairs = s.ac_pairs[0][:, None]  # [K, 1]
        cov_k = (s.ac_xy[0] - mu * (s.ac_first[0] + s.ac_second[0])) / pairs + mu**2
        autocorr = np.where((pairs > 0) & live[None, :], cov_k / np.where(live, var, 1.0), np.nan)
        n_seg = float(s.n_segments[0])
        psd = s.psd_sum[0] / n_seg if n_seg > 0 else np.full(s.psd_sum.shape[1:], np.nan)
    return Summary(
        n_trials=round(float(s.n_trials[0])),
        rates_hz=mu / s.bin_size_s,
        corr=corr,
        psc_hist=s.psc_hist[0],
        isi_mean_s=isi_mean,
        isi_std_s=isi_std,
        isi_n=n_isi,
        fano=fano,
        autocorr=autocorr,
        psd=psd,
        psd_freqs_hz=s.psd_freqs_hz,
        psd_max_hz=s.psd_max_hz,
    )


def compare(model: Summary, data: Summary, settings: MetricSettings) -> dict[str, float]:
    """Every metric of `METRIC_NAMES` for `model` against `data` (lower is better, 0 = equal).

    psc densities are compared on the shared grid 0..max(M_model, M_data); ISI RMSEs use neurons
    with at least `settings.min_isi` ISIs in both sets; the PSD metric is
    mean over PCs z and frequencies 0 < f ≤ psd_max_hz of (log10 P^m_z(f) − log10 P^d_z(f))².
    """
    size = max(model.psc_hist.size, data.psc_hist.size)
    h_m = _pad_to(model.psc_hist.astype(np.float64), size)
    h_d = _pad_to(data.psc_hist.astype(np.float64), size)
    p_m, p_d = h_m / max(h_m.sum(), 1.0), h_d / max(h_d.sum(), 1.0)
    out = {
        "psc_kl": kl_divergence(kde_on_grid(h_m), kde_on_grid(h_d)),
        "psc_js": js_divergence(p_m, p_d),
        "psc_w1": wasserstein1_grid(p_m, p_d),
        "corr_rmse": corr_rmse(model.corr, data.corr),
        "corr_rmse_paper": corr_rmse_paper(model.corr, data.corr),
    }
    both = (model.isi_n >= settings.min_isi) & (data.isi_n >= settings.min_isi)
    out["mean_isi_rmse_s"] = nan_rmse(model.isi_mean_s[both], data.isi_mean_s[both])
    out["std_isi_rmse_s"] = nan_rmse(model.isi_std_s[both], data.isi_std_s[both])
    out["rate_rmse_hz"] = nan_rmse(model.rates_hz, data.rates_hz)
    out["fano_rmse"] = nan_rmse(model.fano, data.fano)
    out["autocorr_rmse"] = nan_rmse(model.autocorr, data.autocorr)
    band = (model.psd_freqs_hz > 0) & (model.psd_freqs_hz <= model.psd_max_hz)
    with np.errstate(divide="ignore", invalid="ignore"):
        lm = np.log10(model.psd[band])
        ld = np.log10(data.psd[band])
    ok = np.isfinite(lm) & np.isfinite(ld)
    out["psd_log_mse"] = float(np.mean((lm[ok] - ld[ok]) ** 2)) if ok.any() else float("nan")
    return out


def isi_neurons_used(model: Summary, data: Summary, settings: MetricSettings) -> int:
    """Number of neurons entering the ISI RMSEs (≥ min_isi ISIs in both sets)."""
    return int(np.sum((model.isi_n >= settings.min_isi) & (data.isi_n >= settings.min_isi)))


# ----------------------------------------------------------------------------- convenience API
def summary_of(
    counts: np.ndarray,
    lengths: np.ndarray,
    bin_size_s: float,
    settings: MetricSettings | None = None,
    projection: Projection | None = None,
) -> Summary:
    """`finalise(summarise(...))` for a whole set of trials."""
    settings = settings or MetricSettings()
    return finalise(summarise(counts, lengths, bin_size_s, settings, projection))


def compare_counts(
    counts_model: np.ndarray,
    lengths_model: np.ndarray,
    counts_data: np.ndarray,
    lengths_data: np.ndarray,
    bin_size_s: float,
    settings: MetricSettings | None = None,
) -> dict[str, float]:
    """All metrics of one generated set against one data set (PCA for the PSD fitted on data)."""
    settings = settings or MetricSettings()
    proj = fit_projection(counts_data, lengths_data, bin_size_s, settings)
    seg = int(min(settings.psd_segment_bins, np.max(lengths_data)))
    s_m = summarise(counts_model, lengths_model, bin_size_s, settings, proj, segment_bins=seg)
    s_d = summarise(counts_data, lengths_data, bin_size_s, settings, proj, segment_bins=seg)
    return compare(finalise(s_m), finalise(s_d), settings)


def draw_naive(
    rate_per_bin: np.ndarray,
    lengths: np.ndarray,
    n_bins: int,
    rng: np.random.Generator,
    chunk_trials: int = 256,
) -> np.ndarray:
    """Homogeneous Poisson counts `[B, L, N]`: neuron n fires at `rate_per_bin[n]` in valid bins.

    Drawn exactly but cheaply through the Poisson process's conditional structure: per chunk of
    trials, neuron n's total T_n ~ Poisson(λ_n·V) over the chunk's V valid bins, and its spikes
    fall in bins chosen uniformly at random (so bin counts are iid Poisson(λ_n)).
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    n_trials, n_neurons = len(lengths), len(rate_per_bin)
    dtype = np.int16 if float(np.max(rate_per_bin, initial=0)) < 1000 else np.int32
    out = np.zeros((n_trials, n_bins, n_neurons), dtype=dtype)
    mask = np.arange(n_bins)[None, :] < lengths[:, None]  # [B, L]
    for b0 in range(0, n_trials, chunk_trials):
        b1 = min(b0 + chunk_trials, n_trials)
        pos = np.flatnonzero(mask[b0:b1])  # valid (trial, bin) positions, flat b*L + t
        totals = rng.poisson(np.asarray(rate_per_bin, dtype=np.float64) * pos.size)  # [N]
        where = pos[rng.integers(0, pos.size, size=int(totals.sum()))]
        flat = where * n_neurons + np.repeat(np.arange(n_neurons), totals)
        chunk = np.bincount(flat, minlength=(b1 - b0) * n_bins * n_neurons)
        out[b0:b1] = chunk.reshape(b1 - b0, n_bins, n_neurons)
    return out
