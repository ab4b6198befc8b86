"""The Gaussian copula between units' counts: exact marginals, the dependence it promises, its
estimate from data, its choice on held-out trials and its storage."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from ldns_cli.core.data import SpikeData
from ldns_cli.core.errors import LdnsError
from ldns_cli.fit.history import (
    choose_count_correlation,
    fit_count_correlation,
    save_history,
    tensor_batches,
)
from ldns_cli.nn.observation import HistoryConfig, SpikeHistoryObservation, copula_hermite
from ldns_cli.store import load_history, load_observation

FP = {"n_neurons": 3, "n_trials": 1, "max_len": 1, "bin_size_s": 0.005, "sha256": "x"}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def poisson_model(N: int, cap: int | None = 5) -> SpikeHistoryObservation:
    """A history model at its Poisson reduction (no kernel): counts min(Poisson(r), cap)."""
    return SpikeHistoryObservation(N, 4, cap)


def block_correlation(N: int, groups: int, rho: float) -> torch.Tensor:
    """Units in `groups` equal groups, correlation `rho` within a group, 0 across."""
    label = torch.arange(N) * groups // N
    R = torch.where(label[:, None] == label[None, :], rho, 0.0)
    R.fill_diagonal_(1.0)
    return R


def varying_rates(B: int, L: int, N: int, seed: int) -> torch.Tensor:
    """Rates [B, L, N] between 0.02 and 0.6 spikes per bin, changing over bins and trials."""
    g = gen(seed)
    level = 0.05 + 0.25 * torch.rand(B, 1, N, generator=g)
    phase = torch.rand(B, 1, N, generator=g) * 6.3
    t = torch.arange(L, dtype=torch.float32)[None, :, None]
    return level * (1.0 + 0.9 * torch.sin(t / 9.0 + phase))


def test_perfectly_correlated_uniforms_give_identical_counts_and_anticorrelated_ones_mirror():
    """ρ = 1: both units invert the same uniform, so at equal rates they draw the same counts;
    ρ = −1: they invert u and 1 − u, so a unit fires most where the other fires least."""
    m = poisson_model(2)
    rates = torch.full((200, 30, 2), 0.7)
    m.set_count_correlation(torch.ones(2, 2))
    same = m.sample(rates, [gen(i) for i in range(200)])
    assert same.sum() > 0 and torch.equal(same[..., 0], same[..., 1])
    m.set_count_correlation(torch.tensor([[1.0, -1.0], [-1.0, 1.0]]))
    mirror = m.sample(rates, [gen(i) for i in range(200)]).reshape(-1, 2).numpy()
    # the antitone coupling: the most negative correlation two such counts can have
    u = (np.arange(200_000) + 0.5) / 200_000
    q = np.minimum(stats.poisson.ppf(u, 0.7), 5)
    lowest = np.corrcoef(q, q[::-1])[0, 1]
    assert abs(np.corrcoef(mirror.T)[0, 1] - lowest) < 0.03 and lowest < -0.6
    # the identity (or None) is independent draws: the copula's absence, bit for bit
    m.set_count_correlation(torch.eye(2))
    assert m.count_correlation is None
    plain = poisson_model(2).sample(rates, [gen(i) for i in range(200)])
    torch.testing.assert_close(m.sample(rates, [gen(i) for i in range(200)]), plain)


@pytest.mark.parametrize("per_trial", [True, False])
def test_copula_keeps_each_units_counts_and_gives_the_bivariate_normal_co_firing(per_trial):
    """Binary counts (cap 1) fire with p = 1 − e^{−λ}; under the copula two of them fire together
    with probability P(z₁ > a, z₂ > a) for normals correlated ρ, a = Φ⁻¹(e^{−λ}) (exact)."""
    lam, rho, B, L = 0.4, 0.5, 1000, 40
    m = poisson_model(2, cap=1)
    m.set_count_correlation(torch.tensor([[1.0, rho], [rho, 1.0]]))
    rates = torch.full((B, L, 2), lam)
    g = [gen(i) for i in range(B)] if per_trial else gen(0)
    s = m.sample(rates, g).reshape(-1, 2).numpy()
    n = len(s)
    p = 1.0 - math.exp(-lam)
    a = stats.norm.ppf(math.exp(-lam))
    both = stats.multivariate_normal([0, 0], [[1, rho], [rho, 1]]).cdf([-a, -a])  # P(z > a)²-like
    for unit in range(2):  # each unit's own law is unchanged
        assert abs(s[:, unit].mean() - p) < 4 * math.sqrt(p * (1 - p) / n)
    co = float((s[:, 0] * s[:, 1]).mean())
    assert abs(co - both) < 4 * math.sqrt(both * (1 - both) / n)
    assert both > p * p + 0.05  # the dependence is real, not within noise of independence


def test_copula_draws_depend_only_on_each_trials_generator():
    m = poisson_model(3)
    m.set_count_correlation(block_correlation(3, 1, 0.6))
    rates = varying_rates(3, 1100, 3, seed=1)  # crosses a uniform block boundary (1024 bins)
    batch = m.sample(rates, [gen(10), gen(11), gen(12)], torch.tensor([1100, 1050, 7]))
    alone = m.sample(rates[1:2, :1050], [gen(11)])
    torch.testing.assert_close(batch[1:2, :1050], alone)
    # and the copula is what drew them: independent draws from the same generators differ
    independent = poisson_model(3).sample(rates[1:2, :1050], [gen(11)])
    assert not torch.equal(alone, independent)


def test_hermite_coefficient_predicts_the_covariance_of_weakly_correlated_counts():
    """To first order in ρ a copula adds ρ·E[g₁g₂] to the counts' covariance: checked against
    sampled counts (Poisson, cap 5, rates varying over bins) at ρ = 0.1."""
    rho, B, L = 0.1, 800, 60
    m = poisson_model(2)
    m.set_count_correlation(torch.tensor([[1.0, rho], [rho, 1.0]]))
    rates = varying_rates(B, L, 2, seed=3)
    s = m.sample(rates, [gen(i) for i in range(B)]).reshape(-1, 2).numpy().astype(np.float64)
    g = copula_hermite(rates.reshape(-1, 2), None, torch.tensor([5, 5]))[0].numpy()
    predicted = rho * float((g[:, 0] * g[:, 1]).mean())
    measured = float(np.cov(s.T)[0, 1])
    se = float(np.std((s[:, 0] - s[:, 0].mean()) * (s[:, 1] - s[:, 1].mean())) / math.sqrt(len(s)))
    assert abs(measured - predicted) < 4 * se + 0.1 * predicted


def _draws(model: SpikeHistoryObservation, rates: torch.Tensor, seed: int) -> torch.Tensor:
    return model.sample(rates, [gen(seed * 100_000 + i) for i in range(rates.shape[0])])


def test_the_estimate_recovers_a_known_copula_and_finds_none_in_independent_counts():
    N, B, L = 12, 400, 50
    truth = block_correlation(N, 3, 0.4)
    rates = varying_rates(B, L, N, seed=5)
    mask = torch.ones(B, L, dtype=torch.bool)
    source = poisson_model(N)
    source.set_count_correlation(truth)
    correlated = _draws(source, rates, seed=1)
    R, figures = fit_count_correlation(
        poisson_model(N), tensor_batches(correlated, rates, mask), B, seed=3
    )
    assert R is not None and figures["reliability"] > 0.9
    off = ~torch.eye(N, dtype=torch.bool)
    within = truth[off] > 0
    assert abs(float(R[off][within].mean()) - 0.4) < 0.06
    assert float(R[off][~within].abs().mean()) < 0.05
    assert np.corrcoef(R[off].numpy(), truth[off].numpy())[0, 1] > 0.95
    # counts drawn independently: whatever the estimate finds is noise, and shrunk to near 0
    independent = _draws(poisson_model(N), rates, seed=2)
    R0, figures0 = fit_count_correlation(
        poisson_model(N), tensor_batches(independent, rates, mask), B, seed=3
    )
    assert figures0["reliability"] < 0.3
    assert R0 is None or float(R0[off].abs().max()) < 0.1


def _spike_data(counts: torch.Tensor) -> SpikeData:
    c = counts.numpy().astype(np.int32)
    return SpikeData(counts=c, lengths=np.full(len(c), c.shape[1]), bin_size_s=0.005)


@pytest.mark.parametrize("correlated", [True, False])
def test_the_copula_is_kept_only_where_held_out_samples_miss_the_correlations(correlated):
    N, B, L = 12, 300, 60
    rates = varying_rates(B, L, N, seed=7)
    mask = torch.ones(B, L, dtype=torch.bool)
    source = poisson_model(N)
    if correlated:
        source.set_count_correlation(block_correlation(N, 3, 0.5))
    counts = _draws(source, rates, seed=4)
    train, held = slice(0, 240), slice(240, None)

    def choose(trials: int, split: str | None, always: bool = False) -> SpikeHistoryObservation:
        model = poisson_model(N)
        model.fit_summary = {}
        choose_count_correlation(
            model,
            tensor_batches(counts[train], rates[train], mask[train]),
            240,
            (counts[held][:trials], rates[held][:trials], mask[held][:trials]),
            _spike_data(counts[train]),
            split,
            seed=9,
            quiet=True,
            always=always,
        )
        return model

    model = choose(60, "validation")
    figures = model.fit_summary["count_correlation"]
    assert figures["kept"] is correlated
    if correlated:
        assert model.count_correlation is not None
        before = figures["independent"]["scores"]["corr_rmse"]["score"]
        after = figures["correlated"]["scores"]["corr_rmse"]["score"]
        assert before > 0.5 and after < 0.3
    else:
        assert model.count_correlation is None and "≤" in figures["reason"]
    # with too few held-out trials, or none, nothing is tried
    few = choose(10, "validation")
    assert few.count_correlation is None
    assert "too few" in few.fit_summary["count_correlation"]["reason"]
    none = choose(60, None)
    assert none.count_correlation is None
    assert "no validation trials" in none.fit_summary["count_correlation"]["reason"]
    # "always": kept wherever the training halves agree, judged or not; the held-out figures
    # are still reported when there are enough held-out trials
    for trials, split in ((60, "validation"), (10, "validation"), (60, None)):
        forced = choose(trials, split, always=True)
        figures = forced.fit_summary["count_correlation"]
        if correlated:
            assert figures["kept"] and forced.count_correlation is not None
            assert "always" in figures["reason"]
            assert ("correlated" in figures) is (trials == 60 and split is not None)
        elif forced.count_correlation is not None:  # independent counts: shrunk to ~nothing
            off = ~torch.eye(N, dtype=torch.bool)
            assert float(forced.count_correlation[off].abs().max()) < 0.1


def test_the_count_correlation_setting_reads_its_earlier_on_off_form_and_refuses_others():
    assert HistoryConfig().count_correlation == "auto"
    assert HistoryConfig(count_correlation=True).count_correlation == "auto"
    assert HistoryConfig(count_correlation=False).count_correlation == "never"
    assert HistoryConfig(count_correlation="always").count_correlation == "always"
    with pytest.raises(LdnsError, match="count_correlation must be one of"):
        HistoryConfig(count_correlation="sometimes")


def test_the_copula_survives_a_save_and_load_and_a_damaged_one_is_refused(tmp_path):
    m = poisson_model(3)
    R = block_correlation(3, 1, 0.3)
    m.set_count_correlation(R)
    save_history(m, HistoryConfig(history_bins=4), FP, tmp_path)
    loaded, _ = load_history(tmp_path)
    torch.testing.assert_close(loaded.count_correlation, R)
    rates = varying_rates(4, 20, 3, seed=2)
    gens = [gen(i) for i in range(4)]
    torch.testing.assert_close(
        loaded.sample(rates, gens), m.sample(rates, [gen(i) for i in range(4)])
    )
    assert load_observation(tmp_path, "auto").count_correlation is not None
    # a stored matrix that is not a correlation (a negative eigenvalue) is refused on load
    m.count_correlation = torch.tensor([[1.0, 0.9, 0.9], [0.9, 1.0, -0.9], [0.9, -0.9, 1.0]])
    save_history(m, HistoryConfig(history_bins=4), FP, tmp_path)
    with pytest.raises(LdnsError, match="usable spike-history model"):
        load_history(tmp_path)


@pytest.mark.parametrize(
    "bad",
    [
        torch.tensor([[1.0, 0.2], [0.3, 1.0]]),  # not symmetric
        torch.tensor([[2.0, 0.0], [0.0, 1.0]]),  # not a unit diagonal
        torch.tensor([[1.0, float("nan")], [float("nan"), 1.0]]),
        torch.eye(3),  # wrong size
    ],
)
def test_a_matrix_that_is_not_a_correlation_is_refused(bad):
    with pytest.raises(ValueError):
        poisson_model(2).set_count_correlation(bad)


def test_stacked_variants_cannot_share_draws_with_a_copula():
    m = poisson_model(4)
    m.set_count_correlation(block_correlation(4, 1, 0.3))
    m.shared_draw_blocks = 2
    with pytest.raises(ValueError, match="one block"):
        m.sample(torch.full((2, 5, 4), 0.2), gen(0))


def test_hermite_moments_do_not_depend_on_the_chunk_size(monkeypatch):
    import ldns_cli.fit.history as history

    N, B, L = 5, 30, 40
    rates = varying_rates(B, L, N, seed=8)
    batches = tensor_batches(torch.zeros(B, L, N), rates, torch.ones(B, L, dtype=torch.bool))
    model = poisson_model(N)
    whole = history._hermite_moments(model, batches)
    monkeypatch.setattr(history, "HERMITE_CHUNK_ELEMENTS", 7 * N)  # 7 bins per chunk
    np.testing.assert_allclose(history._hermite_moments(model, batches), whole, rtol=1e-10)
    assert whole.shape == (history.HERMITE_ORDER, N, N) and (np.diag(whole[0]) > 0).all()
