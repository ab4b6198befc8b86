"""Oracle tests for `ldns_cli.scoring.metrics`: every statistic recomputed from its textbook
formula with explicit loops on small random inputs (variable-length trials, padding zeros)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal
import scipy.stats

from ldns_cli.scoring import metrics as M

BIN_S = 0.005


def random_counts(seed: int, b: int = 6, length: int = 40, n: int = 4, rate: float = 0.6):
    """Poisson counts with a slow rate modulation and variable lengths (padding zeroed)."""
    rng = np.random.default_rng(seed)
    t = np.arange(length)
    lam = (
        rate
        * (1 + 0.8 * np.sin(2 * np.pi * t / 17.0))[None, :, None]
        * rng.uniform(0.5, 1.5, (1, 1, n))
    )
    counts = rng.poisson(np.broadcast_to(lam, (b, length, n)))
    lengths = rng.integers(length // 2, length + 1, b)
    lengths[0] = length
    counts[np.arange(length)[None, :] >= lengths[:, None]] = 0
    return counts, lengths


def valid_rows(counts, lengths):
    """[V, N] bin counts of the valid bins, by explicit loop."""
    return np.concatenate([counts[b, : lengths[b]] for b in range(len(lengths))], axis=0)


# ---------------------------------------------------------------------------- psc densities
@pytest.mark.parametrize("seed", range(3))
def test_kde_on_grid_matches_scipy_gaussian_kde(seed):
    rng = np.random.default_rng(seed)
    values = rng.poisson(rng.uniform(2, 8), size=300)
    hist = np.bincount(values, minlength=values.max() + 3)
    grid = np.arange(hist.size)
    expected = scipy.stats.gaussian_kde(values.astype(float))(grid)
    expected /= expected.sum()
    np.testing.assert_allclose(M.kde_on_grid(hist), expected, rtol=1e-9, atol=1e-15)


def test_kde_degenerate_returns_histogram():
    hist = np.array([0, 5, 0])
    np.testing.assert_allclose(M.kde_on_grid(hist), [0, 1, 0])


def test_population_spike_counts_loop():
    counts, lengths = random_counts(1)
    expected = [counts[b, t].sum() for b in range(len(lengths)) for t in range(lengths[b])]
    np.testing.assert_array_equal(M.population_spike_counts(counts, lengths), expected)


def test_divergences_textbook():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(12))
    q = rng.dirichlet(np.ones(12))
    kl = sum(p[i] * np.log(p[i] / q[i]) for i in range(12))
    assert M.kl_divergence(p, q) == pytest.approx(kl, rel=1e-12)
    assert M.kl_divergence(p, p) == 0.0
    m = (p + q) / 2
    js = 0.5 * sum(p[i] * np.log(p[i] / m[i]) for i in range(12)) + 0.5 * sum(
        q[i] * np.log(q[i] / m[i]) for i in range(12)
    )
    assert M.js_divergence(p, q) == pytest.approx(js, rel=1e-12)
    assert M.js_divergence(p, q) == pytest.approx(M.js_divergence(q, p), rel=1e-12)
    assert M.js_divergence(np.eye(2)[0], np.eye(2)[1]) == pytest.approx(np.log(2))
    # zero model mass contributes nothing; zero data mass under model mass is floored, finite
    assert M.kl_divergence([0.5, 0.5, 0.0], [0.5, 0.5, 0.0]) == 0.0
    assert np.isfinite(M.kl_divergence([0.5, 0.5], [1.0, 0.0]))


def test_wasserstein_matches_scipy_on_samples():
    rng = np.random.default_rng(3)
    a, b = rng.poisson(4, 500), rng.poisson(5, 700)
    size = max(a.max(), b.max()) + 1
    pa = np.bincount(a, minlength=size) / a.size
    pb = np.bincount(b, minlength=size) / b.size
    assert M.wasserstein1_grid(pa, pb) == pytest.approx(
        scipy.stats.wasserstein_distance(a, b), rel=1e-9
    )


# ---------------------------------------------------------------------------- correlations
def test_correlation_matrix_matches_corrcoef_and_rmse_formulas():
    counts, lengths = random_counts(2, n=6)
    s = M.summary_of(counts, lengths, BIN_S)
    x = valid_rows(counts, lengths)
    np.testing.assert_allclose(s.corr, np.corrcoef(x.T), atol=1e-9)

    counts2, lengths2 = random_counts(7, n=6)
    c2 = M.summary_of(counts2, lengths2, BIN_S).corr
    n = 6
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    sq = [(s.corr[i, j] - c2[i, j]) ** 2 for i, j in pairs]
    assert M.corr_rmse(s.corr, c2) == pytest.approx(np.sqrt(np.mean(sq)), rel=1e-12)
    # the paper: diagonal and upper triangle zeroed, mean over all N² entries
    a, b = np.tril(s.corr, -1), np.tril(c2, -1)
    assert M.corr_rmse_paper(s.corr, c2) == pytest.approx(np.sqrt(np.mean((a - b) ** 2)))
    ratio = M.corr_rmse_paper(s.corr, c2) / M.corr_rmse(s.corr, c2)
    assert ratio == pytest.approx(np.sqrt((n - 1) / (2 * n)))
    assert M.corr_rmse(s.corr, s.corr) == 0.0


def test_silent_neuron_gives_zero_correlations_not_nan():
    counts, lengths = random_counts(4, n=5)
    counts[:, :, 2] = 0
    s = M.summary_of(counts, lengths, BIN_S)
    assert np.isfinite(s.corr).all()
    assert np.all(s.corr[2, [0, 1, 3, 4]] == 0) and s.corr[2, 2] == 1
    values = M.compare_counts(counts, lengths, counts, lengths, BIN_S)
    assert values["corr_rmse"] == 0.0 and np.isfinite(values["autocorr_rmse"])


# ---------------------------------------------------------------------------- ISIs
def test_isi_of_a_hand_built_spike_train():
    counts = np.zeros((2, 6, 1), dtype=np.int64)
    counts[0, :, 0] = [1, 0, 0, 2, 0, 1]  # centred times (bins): 0.5, 3.25, 3.75, 5.5
    counts[1, :4, 0] = [0, 1, 0, 1]  # second trial: 1.5, 3.5 — no ISI across trials
    lengths = np.array([6, 4])
    dt = 0.01
    s = M.summary_of(counts, lengths, dt)
    isis = np.array([2.75, 0.5, 1.75, 2.0]) * dt
    assert s.isi_n[0] == 4
    assert s.isi_mean_s[0] == pytest.approx(isis.mean())
    assert s.isi_std_s[0] == pytest.approx(isis.std())
    times, trial, neuron = M.spike_times(counts, lengths, dt)
    assert not neuron.any()
    np.testing.assert_allclose(times, np.array([0.5, 3.25, 3.75, 5.5, 1.5, 3.5]) * dt)
    np.testing.assert_array_equal(trial, [0, 0, 0, 0, 1, 1])
    # the paper's placement: c spikes at (j+1)/(c+1) of the bin
    paper = M.summary_of(counts, lengths, dt, M.MetricSettings(isi_placement="paper"))
    isis_p = np.array([3 + 1 / 3 - 0.5, 1 / 3, 5.5 - (3 + 2 / 3), 2.0]) * dt
    assert paper.isi_mean_s[0] == pytest.approx(isis_p.mean())
    assert paper.isi_std_s[0] == pytest.approx(isis_p.std())


def test_isi_of_spike_trains_with_at_most_one_spike_per_bin():
    # no bin holds several spikes (refractory cells, fine bins): only ISIs between bins
    counts = np.zeros((2, 8, 2), dtype=np.int32)
    counts[0, [1, 4, 6], 0] = 1  # ISIs 3 and 2 bins
    counts[1, [0, 7], 1] = 1  # ISI 7 bins
    s = M.summary_of(counts, np.array([8, 8]), 0.01)
    np.testing.assert_array_equal(s.isi_n, [2, 1])
    np.testing.assert_allclose(s.isi_mean_s, [0.025, 0.07])
    np.testing.assert_allclose(s.isi_std_s, [0.005, 0.0], atol=1e-12)


@pytest.mark.parametrize("placement", ["centred", "paper"])
def test_isi_statistics_match_loop(placement):
    counts, lengths = random_counts(5, b=5, length=30, n=3, rate=0.9)
    settings = M.MetricSettings(isi_placement=placement)
    s = M.summary_of(counts, lengths, BIN_S, settings)
    for n in range(3):
        isis = []
        for b in range(len(lengths)):
            times = []
            for t in range(lengths[b]):
                c = counts[b, t, n]
                for j in range(c):
                    off = (j + 0.5) / c if placement == "centred" else (j + 1) / (c + 1)
                    times.append((t + off) * BIN_S)
            isis.extend(np.diff(times))
        assert s.isi_n[n] == len(isis)
        assert s.isi_mean_s[n] == pytest.approx(np.mean(isis), rel=1e-10)
        assert s.isi_std_s[n] == pytest.approx(np.std(isis), rel=1e-8)


# ---------------------------------------------------------------------------- rates, Fano, AC
def test_rates_fano_autocorr_match_loops():
    counts, lengths = random_counts(6, b=5, length=36, n=3)
    settings = M.MetricSettings(fano_window_bins=4, autocorr_lags=3)
    s = M.summary_of(counts, lengths, BIN_S, settings)
    x = valid_rows(counts, lengths)
    np.testing.assert_allclose(s.rates_hz, x.mean(axis=0) / BIN_S)
    for n in range(3):
        windows = [
            counts[b, w * 4 : (w + 1) * 4, n].sum()
            for b in range(len(lengths))
            for w in range(lengths[b] // 4)
        ]
        assert s.fano[n] == pytest.approx(np.var(windows) / np.mean(windows), rel=1e-10)
        mu, var = x[:, n].mean(), x[:, n].var()
        for k in (1, 2, 3):
            prods = [
                (counts[b, t, n] - mu) * (counts[b, t + k, n] - mu)
                for b in range(len(lengths))
                for t in range(lengths[b] - k)
            ]
            assert s.autocorr[k - 1, n] == pytest.approx(np.mean(prods) / var, rel=1e-9)


def test_poisson_fano_factor_is_one():
    rng = np.random.default_rng(11)
    counts = rng.poisson(0.5, size=(400, 100, 20))
    s = M.summary_of(counts, np.full(400, 100), BIN_S)
    # 4000 windows of mean 5 per neuron: sd of each estimate ≈ sqrt(2/4000) ≈ 0.022
    assert np.all(np.abs(s.fano - 1) < 0.1)
    assert abs(s.fano.mean() - 1) < 0.02
    assert np.all(np.abs(s.autocorr) < 0.02)


# ---------------------------------------------------------------------------- PCA / PSD
def test_projection_commutes_with_smoothing_and_psd_matches_welch():
    counts, lengths = random_counts(8, b=6, length=48, n=5, rate=1.0)
    lengths[:] = 48  # equal lengths: Welch per trial then mean = pooled segment mean
    counts = counts.copy()
    settings = M.MetricSettings(psd_segment_bins=16, psd_components=3, smooth_sigma_s=0.01)
    proj = M.fit_projection(counts, lengths, BIN_S, settings)
    comps = proj.components
    np.testing.assert_allclose(comps.T @ comps, np.eye(3), atol=1e-10)
    z = M._project_smoothed(counts, lengths, proj)
    rates = M.smooth_rates(counts, lengths, proj.sigma_bins)
    direct = ((rates - proj.mean) / proj.scale) @ comps
    np.testing.assert_allclose(z, direct, atol=1e-5)

    sums = M.summarise(counts, lengths, BIN_S, settings, proj, segment_bins=16)
    s = M.finalise(sums)
    freqs, pxx = scipy.signal.welch(
        direct, fs=1 / BIN_S, nperseg=16, noverlap=8, detrend="constant", axis=1
    )  # [B, F, Z]
    np.testing.assert_allclose(s.psd_freqs_hz, freqs)
    np.testing.assert_allclose(s.psd, pxx.mean(axis=0), rtol=1e-4)
    assert s.psd_max_hz == pytest.approx(0.5 / (proj.sigma_bins * BIN_S))


# ---------------------------------------------------------------------------- additivity
def test_sums_are_additive_over_units_and_subsets():
    counts, lengths = random_counts(9, b=8, length=40, n=4)
    settings = M.MetricSettings(psd_segment_bins=16)
    proj = M.fit_projection(counts, lengths, BIN_S, settings)
    per_trial = M.summarise(counts, lengths, BIN_S, settings, proj, n_units=8, segment_bins=16)
    whole = M.summarise(counts, lengths, BIN_S, settings, proj, n_units=1, segment_bins=16)
    total = per_trial.total()
    for name in ("spikes", "gram", "psc_hist", "isi_sum", "isi_n", "ac_xy", "psd_sum"):
        np.testing.assert_allclose(getattr(total, name), getattr(whole, name), rtol=1e-6)
    pick = np.array([1, 0, 1, 1, 0, 0, 1, 0], dtype=bool)
    sub = M.summarise(counts[pick], lengths[pick], BIN_S, settings, proj, segment_bins=16)
    a, b = M.finalise(per_trial.total(pick)), M.finalise(sub)
    np.testing.assert_allclose(a.corr, b.corr, atol=1e-9)
    np.testing.assert_allclose(a.isi_mean_s, b.isi_mean_s, rtol=1e-12)
    np.testing.assert_allclose(a.autocorr, b.autocorr, rtol=1e-9)


def test_compare_identical_sets_is_zero():
    counts, lengths = random_counts(10, b=10, length=40, n=4)
    values = M.compare_counts(counts, lengths, counts, lengths, BIN_S)
    assert set(values) == set(M.METRIC_NAMES)
    for name, v in values.items():
        assert v == pytest.approx(0.0, abs=1e-12), name
