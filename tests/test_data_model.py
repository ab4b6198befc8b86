"""The data layer's pure pieces: binning, resampling, spike placement, trial selection, summary."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ldns_cli.cli.options import read_options
from ldns_cli.core.errors import LdnsError
from ldns_cli.io.common import ReadOptions, bin_spike_times, resample_series
from ldns_cli.io.inspect import render_text, summarize
from ldns_cli.io.nwb_write import place_spike_times
from ldns_cli.io.select import select_trials


def test_binning_matches_a_loop_with_overlapping_variable_windows():
    rng = np.random.default_rng(0)
    trains = [np.sort(rng.uniform(0, 3, rng.integers(0, 60))) for _ in range(5)]
    trains[2] = np.zeros(0)  # a silent unit
    flat = np.concatenate(trains)
    index = np.cumsum([len(t) for t in trains])
    starts = np.array([0.0, 0.5, 0.55, 2.0])  # trials 1 and 2 overlap
    lengths = np.array([10, 7, 10, 3])
    bin_s = 0.1
    counts = bin_spike_times(flat, index, starts, lengths, bin_s)
    expected = np.zeros((4, 10, 5), dtype=int)
    for u, train in enumerate(trains):
        for t in train:
            for b in range(4):
                k = int(np.floor((t - starts[b]) / bin_s))
                if 0 <= k < lengths[b]:
                    expected[b, k, u] += 1
    np.testing.assert_array_equal(counts, expected)
    assert counts.dtype == np.int32


def test_place_spike_times_inverts_binning():
    rng = np.random.default_rng(1)
    counts = rng.poisson(1.2, (3, 12, 4)).astype(np.int32)
    starts = np.array([5.0, 0.0, 2.0])  # not in time order: the writer must sort per unit
    times, index = place_spike_times(counts, starts, 0.01)
    assert index[-1] == counts.sum() == len(times)
    bounds = np.concatenate([[0], index])
    for u in range(4):
        assert np.all(np.diff(times[bounds[u] : bounds[u + 1]]) > 0)
    np.testing.assert_array_equal(
        bin_spike_times(times, index, starts, np.full(3, 12), 0.01), counts
    )
    # the at-most-one-spike-per-bin fast path: each spike at its bin centre
    binary = (rng.random((3, 12, 4)) < 0.3).astype(np.int32)
    times, index = place_spike_times(binary, starts, 0.01)
    np.testing.assert_allclose((times * 100) % 1, 0.5, atol=1e-6)
    np.testing.assert_array_equal(
        bin_spike_times(times, index, starts, np.full(3, 12), 0.01), binary
    )


def test_resample_series_bin_means_interpolation_and_gaps():
    times = np.arange(0, 1, 0.001)  # 1 kHz
    values = np.stack([times, 2 * times], axis=1)
    out = resample_series(times, values, np.array([0.1]), np.array([4]), 0.005, 5)
    # mean of 5 samples of a ramp starting at the bin edge: edge + 2 ms
    np.testing.assert_allclose(out[0, :4, 0], 0.1 + np.arange(4) * 0.005 + 0.002, atol=1e-6)
    np.testing.assert_allclose(out[0, :4, 1], 2 * out[0, :4, 0], rtol=1e-6)
    assert np.all(out[0, 4] == 0)  # padding
    # slower than the bins: a bin holding one sample takes it, empty bins interpolate
    slow_t = np.arange(0, 1, 0.05)
    slow = resample_series(slow_t, slow_t, np.array([0.2]), np.array([3]), 0.01, 3)
    np.testing.assert_allclose(slow[0, :, 0], [0.2, 0.215, 0.225], atol=1e-6)
    # sampled at the bins' own rate: every bin takes its sample exactly
    grid_t = np.arange(200) * 0.005
    grid = np.random.default_rng(1).normal(size=(200, 3)) * 1e3
    same = resample_series(grid_t, grid, np.array([0.0, 0.25]), np.array([40, 30]), 0.005, 40)
    np.testing.assert_array_equal(same[0], grid[:40].astype(np.float32))
    np.testing.assert_array_equal(same[1, :30], grid[50:80].astype(np.float32))
    # outside the signal: NaN, which readers turn into a skipped series
    late = resample_series(times, values, np.array([2.0]), np.array([2]), 0.005, 2)
    assert np.isnan(late).all()


def test_select_trials_by_split_and_range(tiny_data):
    data = tiny_data(8, 4, 2)
    assert select_trials(data, None) is data and select_trials(data, "all") is data
    train = select_trials(data, "train")
    assert set(train.split) == {"train"} and train.n_trials == 4
    np.testing.assert_array_equal(select_trials(data, "2:5").trial_ids, [2, 3, 4])
    np.testing.assert_array_equal(select_trials(data, ":2").trial_ids, [0, 1])
    assert select_trials(data, "valid").n_trials == 2
    for bad in ("banana", "5:2", "1-3"):
        with pytest.raises(LdnsError):
            select_trials(data, bad)


def test_read_options_from_flags():
    opts = read_options(5.0, "move_onset_time", (-0.25, 0.45), None)
    assert opts == ReadOptions(5.0, "move_onset_time", (-0.25, 0.45), None)
    assert opts.bin_size_s == 0.005
    assert read_options().bin_size_s is None


def test_summary_is_json_ready_and_correct(tiny_data):
    data = tiny_data(6, 10, 3, variable_lengths=True, behavior=True)
    s = summarize(data)
    json.dumps(s)  # plain types only
    assert (s["n_units"], s["n_trials"], s["n_bins"]) == (3, 6, 10)
    assert s["lengths"]["variable"] and s["lengths"]["max"] == 10
    assert s["spikes"]["total"] == int(data.counts.sum())
    np.testing.assert_allclose(s["firing_rate_hz"]["mean"], data.mean_rate_hz().mean())
    cov = {c["name"]: c for c in s["covariates"]}
    assert cov["angle"]["kind"] == "circular" and cov["angle"]["unit"] == "rad"
    assert cov["angle"]["min"] == pytest.approx(data.covariates["angle"].min())
    assert cov["target"]["shape"] == [2] and len(cov["target"]["min"]) == 2
    assert cov["label"]["values"] == {"c0": 3, "c1": 3}
    assert s["behavior"][0]["columns"] == ["x", "y"]
    text = render_text(s)
    assert "angle (circular [rad])" in text and "variable" in text


def test_spikedata_select_keeps_every_per_trial_field(tiny_data):
    data = tiny_data(6, 10, 3, variable_lengths=True, behavior=True, truth=True)
    sub = data.select(np.array([4, 1]))
    np.testing.assert_array_equal(sub.counts, data.counts[[4, 1]])
    np.testing.assert_array_equal(sub.lengths, data.lengths[[4, 1]])
    np.testing.assert_array_equal(sub.trial_ids, [4, 1])
    for name in data.covariates:
        np.testing.assert_array_equal(sub.covariates[name], data.covariates[name][[4, 1]])
    np.testing.assert_array_equal(sub.behavior["hand_vel"], data.behavior["hand_vel"][[4, 1]])
    np.testing.assert_array_equal(sub.latents, data.latents[[4, 1]])
    np.testing.assert_array_equal(sub.split, data.split[[4, 1]])
    # mean rate over valid bins only, in Hz
    expected = data.counts.sum(axis=(0, 1)) / (data.lengths.sum() * data.bin_size_s)
    np.testing.assert_allclose(data.mean_rate_hz(), expected)


def test_spikedata_fingerprint_names_covariates_and_kinds(tiny_data):
    fp = tiny_data(4, 8, 3, behavior=True).fingerprint()
    assert fp["n_neurons"] == 3 and fp["bin_size_s"] == 0.01
    assert fp["covariates"]["angle"]["kind"] == "circular"
    assert fp["covariates"]["target"]["shape"] == [2]
    assert fp["covariates"]["label"]["values"] == ["c0", "c1"]
    assert fp["behavior"]["hand_vel"]["dim"] == 2
