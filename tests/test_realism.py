"""Single-neuron realism: heterogeneous and network test beds, a history model that cannot run
away, the free-running per-neuron choice of observation model, out-of-range warnings."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from ldns_cli.core.data import SpikeData
from ldns_cli.core.errors import LdnsError
from ldns_cli.fit.history import data_draw_max, draw_sized_max, save_history, select_neurons
from ldns_cli.io.formats import read_spikes, write_spikes
from ldns_cli.io.simulate import (
    CELL_TYPES,
    MIXED_SPIKE_CAP,
    parse_cell_types,
    simulate,
)
from ldns_cli.nn.observation import HistoryConfig, SpikeHistoryObservation, softplus_inverse
from ldns_cli.scoring.metrics import draw_naive
from ldns_cli.scoring.neurons import (
    SCALE_FLOORS,
    SCALED_STATS,
    NeuronStats,
    ScoreScales,
    choose_per_neuron,
    discrepancy,
    neuron_range,
    neuron_stats,
    out_of_range,
    score_scales,
)
from ldns_cli.store import load_observation


def gens(n: int, seed: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed * 1000 + i) for i in range(n)]


# ---------------------------------------------------------------- test beds
@pytest.fixture(scope="module")
def mixed():
    return simulate("reach", trials=60, neurons=40, history="mixed", seed=3)


def test_mixed_population_stores_its_truth_and_reproduces(mixed, tmp_path):
    types = mixed.unit_info["cell_type"]
    kernels = mixed.unit_info["history_kernel"]
    assert kernels.shape == (40, 10)
    fractions = parse_cell_types(None)
    for kind in CELL_TYPES:  # counts per type follow the fractions
        assert abs(np.sum(types == kind) - fractions[kind] * 40) < 1
    assert np.all(kernels[types == "poisson"] == 0)
    assert np.all(kernels[types == "refractory"][:, 0] <= -3)
    assert np.all(kernels[types == "bursting"][:, 0] > 0.4)
    assert mixed.counts.max() <= MIXED_SPIKE_CAP
    same = simulate("reach", trials=60, neurons=40, history="mixed", seed=3)
    other = simulate("reach", trials=60, neurons=40, history="mixed", seed=4)
    np.testing.assert_array_equal(same.counts, mixed.counts)
    np.testing.assert_array_equal(same.unit_info["cell_type"], types)
    assert not np.array_equal(other.unit_info["history_kernel"], kernels)
    # the truth survives the file
    path = tmp_path / "mixed.h5"
    write_spikes(mixed, str(path), save_latents=True, save_rates=True)
    back = read_spikes(str(path))
    np.testing.assert_array_equal(back.unit_info["cell_type"].astype(str), types)
    np.testing.assert_allclose(back.unit_info["history_kernel"], kernels)


def test_mixed_cell_types_have_their_dispersion():
    """Regular units are under-dispersed, bursting units over-dispersed, at the same rates."""
    data = simulate(
        "lorenz", trials=80, neurons=24, length=128, history="mixed", seed=1,
        cell_types="bursting=0.5,regular=0.5",
    )  # fmt: skip
    stats = neuron_stats(data.counts, data.lengths, data.bin_size_s)
    types = data.unit_info["cell_type"]
    assert np.nanmedian(stats.fano[types == "regular"]) < 0.9
    assert np.nanmedian(stats.fano[types == "bursting"]) > 1.1


def test_cell_type_fractions_are_checked():
    with pytest.raises(LdnsError, match="sum to"):
        parse_cell_types("bursting=0.5")
    with pytest.raises(LdnsError, match="unknown cell type"):
        parse_cell_types("chattering=1")
    with pytest.raises(LdnsError, match="mixed populations"):
        simulate("lorenz", trials=2, cell_types="poisson=1")


def test_network_has_no_latents_and_stores_its_truth():
    a = simulate("network", trials=40, neurons=30, length=60, seed=2)
    b = simulate("network", trials=40, neurons=30, length=60, seed=2)
    np.testing.assert_array_equal(a.counts, b.counts)
    assert a.latents is None and a.rates.shape == a.counts.shape
    info = a.unit_info
    exc = info["cell_type"] == "excitatory"
    assert exc.sum() == 24
    J = info["coupling"]  # [post, pre]
    assert J.shape == (30, 30) and np.all(np.diag(J) == 0)
    assert np.all(J[:, exc] >= 0) and np.all(J[:, ~exc] <= 0) and (J != 0).any()
    assert not info["tuned"][~exc].any()
    assert a.counts.max() <= MIXED_SPIKE_CAP
    assert "angle" in a.covariates
    with pytest.raises(LdnsError, match="own per-cell history"):
        simulate("network", trials=2, history="bursting")


# ---------------------------------------------------------------- stability
def test_bounded_excitation_cannot_run_away():
    """Maximal self-excitation, no count cap, extreme inputs: the intensity stays below
    softplus(drive + max_excitation) at every bin, for thousands of bins."""
    cfg = HistoryConfig()
    E = cfg.max_excitation
    m = SpikeHistoryObservation(2, history_bins=10, max_count=None, max_excitation=E)
    with torch.no_grad():
        m.history.fill_(50.0)  # far beyond any real kernel
    L = 4000
    rates = torch.tensor([0.02, 30.0]).expand(4, L, 2).contiguous()  # [B, L, N] spikes/bin
    lam = []
    s = m._run(rates, lambda x, t: (lam.append(x.clone()), torch.poisson(x))[1])
    bound = torch.nn.functional.softplus(softplus_inverse(torch.tensor([0.02, 30.0])) + E)
    assert torch.isfinite(s).all()
    assert torch.stack(lam).amax((0, 1)).le(bound * (1 + 1e-5)).all()
    assert s[..., 1].mean() < 1.05 * bound[1]
    # without the bound the same weights explode within a few bins
    free = SpikeHistoryObservation(2, history_bins=10, max_count=None)
    with torch.no_grad():
        free.history.fill_(50.0)
    peak = free._run(rates[:, :5], lambda x, t: x).amax()
    assert peak > 1e6


# ---------------------------------------------------------------- per-neuron choice
def refractory_and_poisson_truth() -> SpikeHistoryObservation:
    m = SpikeHistoryObservation(2, history_bins=6, max_count=5)
    with torch.no_grad():
        m.history[0] = -4.0 * torch.exp(-torch.arange(6.0) / 1.5)  # refractory neuron 0
    return m


def test_selection_keeps_history_for_refractory_and_poisson_for_a_runaway_fit():
    B, L = 120, 100
    rates = torch.full((B, L, 2), 0.15)
    counts = refractory_and_poisson_truth().sample(rates, gens(B, 1))
    # the candidate: the true kernel for neuron 0, a deliberately unstable one for neuron 1
    cand = refractory_and_poisson_truth()
    with torch.no_grad():
        cand.history[1] = 3.0
    mask = torch.ones(B, L, dtype=torch.bool)
    use, figures = select_neurons(cand, counts, rates, mask, 0.005, seed=5)
    assert use.tolist() == [True, False]
    d_h, d_p = figures["discrepancy_history"], figures["discrepancy_poisson"]
    assert d_h[0] < d_p[0] and d_p[1] < d_h[1]
    assert figures["stats_history"]["rate_hz"][1] > 3 * figures["stats_data"]["rate_hz"][1]
    # with training trials at hand, the data's maximum is that of draws of the held-out size
    train = refractory_and_poisson_truth().sample(torch.full((4 * B, L, 2), 0.15), gens(4 * B, 2))
    more = SpikeData(counts=train.numpy().astype(np.int32), lengths=np.full(4 * B, L),
                     bin_size_s=0.005)  # fmt: skip
    expected = data_draw_max(counts.numpy(), np.full(B, L), more, seed=5)
    use, figures = select_neurons(cand, counts, rates, mask, 0.005, seed=5, data_max=expected)
    assert use.tolist() == [True, False]
    np.testing.assert_allclose(figures["stats_data"]["max_count"], expected, atol=1e-3)


def test_the_sampled_maximum_count_is_compared_at_the_data_s_size():
    """Free-running sets repeat each held-out trial R times, and a maximum grows with the
    number of trials: draws of the data's own law, R = 8 times as many, show more than the
    data's maximum; `draw_sized_max` (the mean of the R draws' maxima) does not."""
    rng = np.random.default_rng(3)
    B, L, N, R = 60, 100, 40, 8

    def heavy_tailed(trials: int) -> np.ndarray:  # gamma-Poisson counts, mean 0.2 per bin
        lam = rng.gamma(0.5, 0.4, size=(trials, L, N))
        return rng.poisson(lam)

    data = heavy_tailed(B)
    data_max = data.max(axis=(0, 1))
    # the layout of `sample_free_running`: chunks of trials, each chunk's repeats in turn
    chunks = [np.arange(0, 25), np.arange(25, B)]
    source = np.concatenate([np.tile(c, R) for c in chunks])
    sampled = heavy_tailed(len(source))
    s_len = np.full(len(source), L)
    whole = sampled.max(axis=(0, 1))
    sized = draw_sized_max(sampled, s_len, source)
    assert np.mean(whole - data_max) > 1.0  # the bias the comparison must not have
    assert abs(np.mean(sized - data_max)) < 0.4
    # oracle: R exact copies of the data give its maximum exactly, whatever the layout
    np.testing.assert_array_equal(draw_sized_max(data[source], s_len, source), data_max)
    # bins past a trial's length do not count
    short = draw_sized_max(data[source], np.full(len(source), L // 2), source)
    np.testing.assert_array_equal(short, data[:, : L // 2].max(axis=(0, 1)))


def test_the_data_s_maximum_count_is_averaged_over_draws_of_the_held_out_size():
    """The held-out maximum is one draw of a noisy statistic; `data_draw_max` averages it with
    blocks of as many training trials: the same expectation, a fraction of the spread."""
    rng = np.random.default_rng(5)
    L, N, n_val, n_train = 100, 30, 60, 480

    def bursty(trials: int) -> np.ndarray:  # gamma-Poisson counts: a heavy, noisy maximum
        return rng.poisson(rng.gamma(0.3, 0.6, size=(trials, L, N))).astype(np.uint8)

    def spikes(counts: np.ndarray) -> SpikeData:
        return SpikeData(counts=counts, lengths=np.full(len(counts), L), bin_size_s=0.005)

    single, averaged = [], []
    for _ in range(12):  # twelve recordings of the same law
        held_out, train = bursty(n_val), spikes(bursty(n_train))
        single.append(held_out.max(axis=(0, 1)))
        averaged.append(data_draw_max(held_out, np.full(n_val, L), train, seed=1))
    single, averaged = np.array(single, dtype=float), np.array(averaged)  # [12, N]
    assert abs(np.mean(averaged) - np.mean(single)) < 0.3  # the same expectation
    assert np.mean(averaged.std(axis=0)) < 0.5 * np.mean(single.std(axis=0))
    # oracle: training trials that each peak at exactly 7 spikes, 8 blocks of 60 trials
    held_out = np.zeros((n_val, L, N), dtype=np.uint8)
    held_out[0, 3] = 3
    flat = np.zeros((n_train, L, N), dtype=np.uint8)
    flat[:, 10] = 7
    got = data_draw_max(held_out, np.full(n_val, L), spikes(flat), seed=2)
    np.testing.assert_allclose(got, (3 + 8 * 7) / 9)
    # too few training trials for a block: the held-out maximum alone
    few = data_draw_max(held_out, np.full(n_val, L), spikes(flat[:59]), seed=2)
    np.testing.assert_array_equal(few, 3.0)
    # held-out bins past a trial's length do not count
    got = data_draw_max(held_out, np.full(n_val, 3), spikes(flat), seed=2)
    np.testing.assert_allclose(got, 8 * 7 / 9)


def test_score_scales_measure_the_naive_error_and_the_data_noise():
    """naive is the RMSE of the same homogeneous Poisson draw against the data, so its
    discrepancy summed over neurons is N·Σ_k naive²/unit² with unit² = naive² − noise²; the
    noise shrinks as 1/sqrt(trials); the data scored against itself has discrepancy 0."""
    data = simulate("reach", trials=160, neurons=30, length=100, history="mixed", seed=4)
    d = neuron_stats(data.counts, data.lengths, data.bin_size_s)
    scales = score_scales(data.counts, data.lengths, data.bin_size_s, d, seed=9)
    rng = np.random.default_rng([9, 7])  # the naive draw score_scales makes first
    naive_counts = draw_naive(d.rate_hz * data.bin_size_s, data.lengths, data.n_bins, rng)
    naive = neuron_stats(naive_counts, data.lengths, data.bin_size_s)
    for k in SCALED_STATS:
        total = discrepancy(naive, d, scales, (k,)).sum()
        # undefined neurons count 0 in the discrepancy but are left out of the RMSE
        defined = np.isfinite(getattr(naive, k) - getattr(d, k)) if k != "autocorr" else (
            np.isfinite(naive.autocorr - d.autocorr).any(axis=0)
        )  # fmt: skip
        expected = defined.sum() * scales.naive[k] ** 2 / scales.unit(k) ** 2
        assert total == pytest.approx(expected, rel=1e-6), k
        if scales.unit(k) > SCALE_FLOORS[k]:
            net = scales.naive[k] ** 2 - scales.noise[k] ** 2
            assert scales.unit(k) == pytest.approx(np.sqrt(net))
    # bursting units put the data far from Poisson in Fano factor
    assert scales.naive["fano"] > 5 * scales.noise["fano"]
    quarter = data.select(np.arange(data.n_trials) < 40)
    small = score_scales(quarter.counts, quarter.lengths, quarter.bin_size_s, seed=9)
    for k in ("fano", "autocorr"):  # a quarter of the trials: about twice the noise
        assert 1.4 < small.noise[k] / scales.noise[k] < 2.8, k
    assert np.all(discrepancy(d, d, scales) == 0)


def _stats(n: int, fano: float = 1.0, ac: float = 0.0) -> NeuronStats:
    return NeuronStats(
        rate_hz=np.full(n, 10.0), fano=np.full(n, fano), isi_mean_s=np.full(n, 0.1),
        isi_std_s=np.full(n, 0.1), autocorr=np.full((3, n), ac), max_count=np.full(n, 3),
    )  # fmt: skip


def _scales(n: int, naive_isi_mean_s: float = 0.05) -> ScoreScales:
    """Scales of 40 trials: every statistic's noise 0.01 per neuron (Fano 0.05 overall)."""
    se = {"fano": np.full((1, n), 0.01), "isi_mean_s": np.full((1, n), 0.01),
          "isi_std_s": np.full((1, n), 0.01), "autocorr": np.full((3, n), 0.01)}  # fmt: skip
    return ScoreScales(
        naive=dict(zip(SCALED_STATS, (0.5, naive_isi_mean_s, 0.05, 0.04), strict=True)),
        noise=dict(zip(SCALED_STATS, (0.05, 0.01, 0.01, 0.01), strict=True)),
        neuron_se=se,
    )


def test_neurons_leave_the_population_choice_only_on_clear_evidence():
    n = 40
    data = _stats(n)
    scales = _scales(n)
    # candidate 1 is 0.1 off in Fano factor everywhere, candidate 0 is 0.02 off in
    # autocorrelation: 0.1²/0.2475 = 0.04 score points against 0.02²/0.0015 = 0.27
    fano_off = _stats(n, fano=1.1)
    ac_off = _stats(n, ac=0.02)
    assert np.all(choose_per_neuron([ac_off, fano_off], data, scales) == 1)
    # neuron 3 of candidate 0 fits exactly: a gain of 0.04 against a standard error of 0.008;
    # neuron 5 is slightly better than the default (0.0075²/0.0015 = 0.0375 points against
    # 0.0404) but within the noise: only neuron 3 leaves the default
    ac = ac_off.autocorr.copy()
    ac[:, 3] = 0.0
    ac[:, 5] = 0.0075
    mixed = dataclasses.replace(ac_off, autocorr=ac)
    choice = choose_per_neuron([mixed, fano_off], data, scales)
    assert choice[3] == 0 and choice[5] == 1
    assert np.sum(choice == 0) == 1
    # identical candidates: every neuron keeps the first (the simpler model in `select_neurons`)
    assert np.all(choose_per_neuron([data, data], data, scales) == 0)


def test_statistics_the_held_out_set_cannot_score_do_not_decide_the_choice():
    # an ISI mean whose homogeneous-Poisson error is no larger than two sets' noise
    # (0.012² < 2·0.01²) tells models apart only by chance: on the 40 validation trials of a
    # simulated E/I network such a statistic (the ISI spread) outweighed a fourfold
    # autocorrelation error
    n = 40
    data = _stats(n)
    scales = _scales(n, naive_isi_mean_s=0.012)
    assert [scales.informative(k) for k in SCALED_STATS] == [True, False, True, True]
    assert scales.as_dict()["informative"]["isi_mean_s"] is False
    # candidate 1 is off in ISI mean by 3 score units of an informative ISI mean (below) for
    # every neuron, candidate 0 off in autocorrelation by 0.02 (0.27 score points)
    sharp = _scales(n)
    late = 0.1 + 3 * sharp.unit("isi_mean_s")
    isi_off = dataclasses.replace(_stats(n), isi_mean_s=np.full(n, late))
    ac_off = _stats(n, ac=0.02)
    assert np.all(discrepancy(isi_off, data, scales) == 0)
    assert np.all(choose_per_neuron([ac_off, isi_off], data, scales) == 1)
    # were the ISI mean informative, its 9 points per neuron would keep candidate 0
    assert np.all(choose_per_neuron([ac_off, isi_off], data, sharp) == 0)


def test_auto_follows_the_stored_choice(tmp_path):
    m = refractory_and_poisson_truth()
    with torch.no_grad():
        m.history[1] = 1.0
        m.bias.fill_(0.1)
    m.neuron_choice = np.array([True, False])
    m.set_selection(None, torch.tensor([2.0, 3.0]))
    fp = {"n_neurons": 2, "bin_size_s": 0.005}
    save_history(m, HistoryConfig(history_bins=6), fp, tmp_path)
    auto = load_observation(tmp_path, "auto")
    hist = load_observation(tmp_path, "history")
    torch.testing.assert_close(hist.history, m.history)
    torch.testing.assert_close(auto.history[0], m.history[0])
    assert auto.history[1].abs().sum() == 0 and auto.bias[1] == 0 and auto.rate_gain[1] == 1
    # the per-neuron ceiling holds for both
    big = torch.full((8, 50, 2), 4.0)
    for obs in (auto, hist):
        s = obs.sample(big, gens(8, 2))
        assert s[..., 0].max() <= 2 and s[..., 1].max() <= 3


# ---------------------------------------------------------------- warnings
def test_out_of_range_names_the_neurons_that_are_off():
    rng = np.random.default_rng(0)
    rates = np.full((200, 50, 4), 0.1)
    data = rng.poisson(rates).clip(max=2)
    same = rng.poisson(rates).clip(max=2)
    off = rng.poisson(rates * np.array([1.0, 3.0, 1.0, 1.0])).clip(max=2)
    off[0, 0, 3] = 6  # more spikes in a bin than the data ever shows
    lengths = np.full(200, 50)
    ref = neuron_range(data, lengths, 0.005)
    assert out_of_range(neuron_range(same, lengths, 0.005), ref) == []
    found = {(x.neuron, x.statistic) for x in out_of_range(neuron_range(off, lengths, 0.005), ref)}
    assert found == {(1, "rate"), (3, "max count")}


def test_the_choice_names_the_statistics_it_leaves_out(capsys):
    from ldns_cli.fit.history import _STAT_LABELS, _validate

    # homogeneous Poisson data and a model that is Poisson too: a homogeneous Poisson draw lands
    # as close to the data as their own noise does, so some statistics cannot be scored
    B, L, N = 40, 100, 32
    rates = torch.full((B, L, N), 0.1)
    counts = torch.poisson(rates, generator=torch.Generator().manual_seed(3))
    mask = torch.ones(B, L, dtype=torch.bool)
    model = SpikeHistoryObservation(N, history_bins=5, max_count=5)
    model.fit_summary = {}
    _validate(model, True, counts, rates, mask, 0.005, "validation", 7, quiet=False)
    flags = model.fit_summary["selection"]["scales"]["informative"]
    left = [k for k, informative in flags.items() if not informative]
    assert left, flags
    line = next(x for x in capsys.readouterr().err.splitlines() if "left out of the choice" in x)
    assert all(_STAT_LABELS[k] in line for k in left)
    assert not any(_STAT_LABELS[k] in line for k in flags if k not in left)
