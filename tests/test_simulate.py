"""Built-in datasets: the Lorenz benchmark's statistics, the reach task, spike history."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter1d

from ldns_cli.core.errors import LdnsError
from ldns_cli.io.simulate import history_kernel, simulate_lorenz, simulate_reach, softplus_beta


@pytest.fixture(scope="module")
def lorenz():
    return simulate_lorenz(n_trials=200, seed=0)


def test_lorenz_mean_count_matches_the_reference(lorenz):
    # the LDNS Lorenz benchmark: the true mean is about 0.14 spikes/bin (exp(b) = 0.3 is not it)
    assert lorenz.counts.shape == (200, 256, 128)
    assert lorenz.counts.mean() == pytest.approx(0.14, abs=0.012)
    # Poisson counts: mean and variance of counts track the rates
    assert lorenz.counts.mean() == pytest.approx(lorenz.rates.mean(), rel=0.02)


def test_lorenz_latents_are_z_scored_per_trajectory(lorenz):
    z = lorenz.latents.astype(np.float64)  # [B, L, 3]
    np.testing.assert_allclose(z.mean(axis=1), 0, atol=1e-5)
    np.testing.assert_allclose(z.std(axis=1), 1, atol=1e-4)


def test_lorenz_readout_is_unit_norm_sorted_softplus_beta2(lorenz):
    # invert softplus_beta2 and regress on the latents: recovers C and b exactly
    r = lorenz.rates[:20].astype(np.float64).reshape(-1, 128)
    pre = np.log(np.expm1(2 * r)) / 2  # [T, N]
    z = lorenz.latents[:20].astype(np.float64).reshape(-1, 3)
    coef, *_ = np.linalg.lstsq(np.c_[z, np.ones(len(z))], pre, rcond=None)
    readout, bias = coef[:3].T, coef[3]  # [N, 3], [N]
    np.testing.assert_allclose(bias, np.log(0.3), atol=1e-3)
    np.testing.assert_allclose(np.linalg.norm(readout, axis=1), 1, atol=1e-3)
    assert np.all(np.diff(readout[:, 0]) >= -1e-4)
    np.testing.assert_allclose(softplus_beta(np.array([0.0]), 2.0), np.log(2) / 2)


def test_lorenz_split_and_seed(lorenz):
    values, counts = np.unique(lorenz.split, return_counts=True)
    assert dict(zip(values.tolist(), counts.tolist(), strict=True)) == {
        "train": 140,
        "val": 20,
        "test": 40,
    }
    a = simulate_lorenz(n_trials=3, n_neurons=4, n_bins=8, seed=5)
    b = simulate_lorenz(n_trials=3, n_neurons=4, n_bins=8, seed=5)
    c = simulate_lorenz(n_trials=3, n_neurons=4, n_bins=8, seed=6)
    np.testing.assert_array_equal(a.counts, b.counts)
    assert not np.array_equal(a.rates, c.rates)


@pytest.mark.parametrize(
    ("history", "low", "high"),
    [("none", 0.9, 1.1), ("refractory", 0.0, 0.05), ("bursting", 2.0, 10.0)],
)
def test_spike_history_changes_the_next_bin(history, low, high):
    data = simulate_lorenz(n_trials=60, n_neurons=32, seed=1, history=history)
    after_spike = data.counts[:, :-1] > 0  # [B, L-1, N]
    # observed spikes over the history-free rate, in bins right after a spike
    ratio = data.counts[:, 1:][after_spike].sum() / data.rates[:, 1:][after_spike].sum()
    assert low < ratio < high
    assert data.provenance["history"] == history
    if history != "none":
        kernel = [float(w) for w in data.provenance["history_kernel"].split(",")]
        np.testing.assert_allclose(kernel, history_kernel(history), rtol=1e-5)
        assert data.counts.max() <= 5


def test_reach_layout_matches_nlb():
    data = simulate_reach(n_trials=40, n_neurons=16, seed=0)
    assert data.counts.shape == (40, 140, 16)
    assert data.bin_size_s == 0.005 and data.align_offset_s == -0.25
    angle = data.covariates["angle"]
    assert data.info("angle").kind == "circular" and data.info("angle").unit == "rad"
    assert angle.min() >= 0 and angle.max() < 2 * np.pi
    np.testing.assert_allclose(data.covariates["move_onset_time"], 0.25)
    assert data.behavior["hand_vel"].shape == (40, 140, 2)
    # the reach goes along its angle: velocity at peak speed points at angle
    vel = data.behavior["hand_vel"][:, 80]  # 0.15 s after onset
    np.testing.assert_allclose(np.arctan2(vel[:, 1], vel[:, 0]) % (2 * np.pi), angle, atol=1e-4)
    assert np.all(np.diff(data.trial_start_s) > 0.7)


def test_reach_velocity_is_decodable_from_spikes():
    data = simulate_reach(n_trials=300, n_neurons=64, seed=0)
    x = gaussian_filter1d(data.counts.astype(np.float64), 3, axis=1)  # [B, L, N]
    y = data.behavior["hand_vel"].astype(np.float64)  # [B, L, 2]
    train, test = data.split != "test", data.split == "test"
    a = np.c_[x[train].reshape(-1, 64), np.ones(train.sum() * 140)]
    w, *_ = np.linalg.lstsq(a, y[train].reshape(-1, 2), rcond=None)
    pred = np.c_[x[test].reshape(-1, 64), np.ones(test.sum() * 140)] @ w
    truth = y[test].reshape(-1, 2)
    r2 = 1 - ((pred - truth) ** 2).sum(0) / ((truth - truth.mean(0)) ** 2).sum(0)
    assert np.all(r2 > 0.4), r2


def test_bad_simulation_arguments():
    with pytest.raises(LdnsError, match="history"):
        simulate_lorenz(n_trials=2, history="adapting")
    with pytest.raises(LdnsError, match="--trials"):
        simulate_reach(n_trials=0)


def test_length_range_makes_variable_length_trials_with_their_truth_cut():
    from ldns_cli.io.simulate import simulate

    a = simulate("reach", trials=40, neurons=12, length="50:90", seed=3)
    b = simulate("reach", trials=40, neurons=12, length=(50, 90), seed=3)
    assert a.n_bins == 90 and a.lengths.min() >= 50 and a.lengths.max() <= 90
    assert len(set(a.lengths.tolist())) > 5  # drawn, not fixed
    np.testing.assert_array_equal(a.counts, b.counts)  # the same seed: the same trials
    pad = np.arange(90)[None, :] >= a.lengths[:, None]  # [B, L]
    assert a.counts[pad].sum() == 0 and np.abs(a.rates[pad]).sum() == 0
    assert np.abs(a.behavior["hand_vel"][pad]).sum() == 0
    full = simulate("reach", trials=40, neurons=12, length=90, seed=3)
    inside = ~pad
    np.testing.assert_array_equal(a.counts[inside], full.counts[inside])  # cut, not resimulated


def test_bad_length_ranges_are_clean_errors():
    from ldns_cli.core.errors import LdnsError
    from ldns_cli.io.simulate import simulate

    for bad in ("90:50", "0:10", "a:b", "1:2:3"):
        with pytest.raises(LdnsError, match="--length"):
            simulate("reach", trials=4, neurons=4, length=bad)
