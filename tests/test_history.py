"""Spike-history observation model: reduction to Poisson, kernel recovery, cap, seeds, storage."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from ldns_cli.core.errors import LdnsError
from ldns_cli.fit.history import _Design, fit_history, fit_trials, save_history
from ldns_cli.nn.observation import (
    HistoryConfig,
    PoissonObservation,
    SpikeHistoryObservation,
    capped_count_log_prob,
    capped_count_mean,
    capped_poisson_log_prob,
    capped_poisson_mean,
    gamma_poisson_log_pmf,
    poisson_log_pmf,
    softplus_inverse,
)
from ldns_cli.store import load_history, load_observation


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def smooth_rates(B: int, L: int, N: int, seed: int = 0, scale: float = 0.4) -> torch.Tensor:
    """Slowly varying positive rates [B, L, N] (spikes per bin)."""
    g = gen(seed)
    phase = torch.rand(B, 1, N, generator=g) * 6.3
    level = 0.05 + scale * torch.rand(B, 1, N, generator=g)
    t = torch.arange(L, dtype=torch.float32)[None, :, None]
    return level * (1.0 + 0.8 * torch.sin(t / 15.0 + phase))


def known_model(N: int, H: int = 20, cap: int | None = 5) -> SpikeHistoryObservation:
    """Alternating refractory and refractory-then-bursting kernels, a = 1.1, b = 0.2."""
    m = SpikeHistoryObservation(N, H, cap)
    k = torch.arange(1, H + 1, dtype=torch.float32)
    rows = [
        -3.0 * torch.exp(-k / 2.0) + (0.8 * torch.exp(-((k - 6.0) ** 2) / 8.0) if n % 2 else 0.0)
        for n in range(N)
    ]
    with torch.no_grad():
        m.history.copy_(torch.stack(rows))
        m.rate_gain.fill_(1.1)
        m.bias.fill_(0.2)
    return m


# ---------------------------------------------------------------- link and reduction to Poisson
def test_softplus_inverse_is_exact_inverse():
    r = torch.logspace(-6, 1.7, 200, dtype=torch.float64)
    torch.testing.assert_close(F.softplus(softplus_inverse(r)), r, rtol=1e-10, atol=0)


def test_reduction_to_poisson_intensity_and_log_prob():
    B, L, N = 3, 40, 5
    rates = smooth_rates(B, L, N, scale=3.0)
    counts = torch.poisson(rates, generator=gen(1))
    counts[0, 3, 0] = 9.0  # above the default cap: must still be scored as Poisson without a cap
    m = SpikeHistoryObservation(N, history_bins=7, max_count=None)  # w = 0, a = 1, b = 0
    torch.testing.assert_close(m.intensity(counts, rates), rates, rtol=1e-5, atol=1e-7)
    lp_h = m.log_prob(counts, rates)
    lp_p = PoissonObservation().log_prob(counts, rates)
    torch.testing.assert_close(lp_h, lp_p, rtol=1e-5, atol=1e-5)
    oracle = stats.poisson.logpmf(counts.numpy(), rates.numpy())
    np.testing.assert_allclose(lp_h.detach().numpy(), oracle, rtol=1e-4, atol=1e-5)


def test_reduction_to_poisson_in_distribution():
    """Autoregressive samples with w = 0, a = 1, b = 0, no cap match torch.poisson draws."""
    levels = torch.tensor([0.05, 0.4, 1.5, 6.0])  # one rate per neuron
    B, L = 100, 50  # 5000 draws per level
    rates = levels.expand(B, L, 4).contiguous()
    m = SpikeHistoryObservation(4, history_bins=20, max_count=None)
    hist = m.sample(rates, gen(2)).numpy()
    pois = torch.poisson(rates, generator=gen(3)).numpy()
    for n, lam in enumerate(levels.tolist()):
        a, b = hist[..., n].ravel(), pois[..., n].ravel()
        # moments against the closed form (5000 draws: s.e. of the mean sqrt(lam/5000))
        assert abs(a.mean() - lam) < 5 * np.sqrt(lam / a.size)
        assert abs(a.var() - lam) < 5 * lam * np.sqrt(2 / a.size) + 5 * np.sqrt(lam / a.size)
        # histograms: two-sample chi-square on the pooled support
        top = int(max(a.max(), b.max())) + 1
        ha, hb = (
            np.bincount(a.astype(int), minlength=top),
            np.bincount(b.astype(int), minlength=top),
        )
        keep = (ha + hb) >= 10
        _, p, _, _ = stats.chi2_contingency(np.stack([ha[keep], hb[keep]]))
        assert p > 1e-3, (lam, p)


def test_capped_likelihood_is_a_distribution_and_mean_matches():
    lam = torch.tensor([0.01, 0.3, 2.0, 7.0], dtype=torch.float64)
    cap = 5
    support = torch.arange(0, cap + 1, dtype=torch.float64)[:, None].expand(-1, 4)
    probs = capped_poisson_log_prob(support, lam.expand(cap + 1, 4), cap).exp()
    torch.testing.assert_close(probs.sum(0), torch.ones(4, dtype=torch.float64))
    mean = (support * probs).sum(0)
    torch.testing.assert_close(capped_poisson_mean(lam, cap), mean)


# ---------------------------------------------------------------- sampler
def naive_run(m: SpikeHistoryObservation, rates: torch.Tensor, step) -> torch.Tensor:
    """Reference loop: re-read the history window at every bin (no buffers, no tricks)."""
    B, L, N = rates.shape
    out = torch.zeros(B, L, N, dtype=m.history.dtype)
    base = m.drive(rates.to(m.history.dtype))
    # what the kernels filter: the past counts, or their deviations from the rates
    offset = rates.to(m.history.dtype) if m.history_input == "residuals" else 0.0 * rates
    for t in range(L):
        eta = base[:, t].clone()
        for k in range(1, m.history_bins + 1):
            if t - k >= 0:
                x = out[:, t - k] - offset[:, t - k]  # [B, N]
                eta += m.history[:, k - 1] * x
                if m.coupling_rank:
                    proj = x @ m.coupling_in  # [B, R]
                    eta += (proj * m.coupling_kernel[:, k - 1]) @ m.coupling_out.t()
        out[:, t] = step(F.softplus(eta))
    return out


@pytest.mark.parametrize("history_input", ["spikes", "residuals"])
@pytest.mark.parametrize("rank", [0, 2])
def test_sampler_recursion_matches_naive_loop_and_teacher_forcing(rank, history_input):
    """With a deterministic 'draw' the fast loop, a naive loop and the conv1d path agree."""
    N, H = 6, 5
    m = SpikeHistoryObservation(
        N, H, max_count=3, coupling_rank=rank, generator=gen(4), history_input=history_input
    ).double()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=gen(5), dtype=p.dtype))
    rates = smooth_rates(3, 30, N, scale=1.0).double()

    def step(lam):
        return torch.floor(3.0 * lam).clamp(max=3.0)

    with torch.no_grad():
        fast = m._run(rates, lambda lam, t: step(lam))
        # stationary start: the naive loop over H burn-in bins at the first bin's rates, cut off
        W = m.burn_in_bins
        assert W == H
        ext = torch.cat([rates[:, :1].expand(-1, W, -1), rates], dim=1)
        slow = naive_run(m, ext, step)
        torch.testing.assert_close(fast, slow[:, W:])
        assert fast.sum() > 0 and fast.max() == 3  # the check is not vacuous
        # the sampled counts are a fixed point of the teacher-forced intensity
        torch.testing.assert_close(step(m.intensity(slow, ext)), slow)
        # without the stationary start: the loop from an empty history
        m.burn_in_bins = 0
        torch.testing.assert_close(
            m._run(rates, lambda lam, t: step(lam)), naive_run(m, rates, step)
        )


def test_residual_history_keeps_the_free_running_mean_near_the_rates():
    """Kernels that filter s̃ − r feed back only departures from the rates: a refractory and a
    self-exciting unit, run free on slowly modulated rates with no intercept matching, fire
    within 15% of the rates, where the same kernels on raw counts move the mean by over 20%
    (the refractory one down, the self-exciting one up)."""
    B, L, H = 256, 200, 10
    t = torch.arange(L, dtype=torch.float32)
    rates = (0.1 * (1 + 0.8 * torch.sin(2 * math.pi * t / 50)))[None, :, None].expand(B, L, 2)
    k = torch.arange(1, H + 1, dtype=torch.float32)
    ratio = {}
    for history_input in ("spikes", "residuals"):
        m = SpikeHistoryObservation(2, H, 5, max_excitation=2.5, history_input=history_input)
        with torch.no_grad():
            m.history[0] = -3.0 * torch.exp(-k / 2.0)
            m.history[1] = 0.8 * torch.exp(-k / 3.0)
        s = m.sample(rates.contiguous(), [gen(i) for i in range(B)])
        ratio[history_input] = (s.mean((0, 1)) / rates.mean((0, 1))).tolist()
    assert all(abs(r - 1.0) < 0.15 for r in ratio["residuals"]), ratio
    assert ratio["spikes"][0] < 0.8 and ratio["spikes"][1] > 1.2, ratio


def test_stationary_start_has_no_first_bin_transient():
    """Constant rates and a refractory kernel: from an empty history the first bins fire above
    the steady state (nothing suppresses them); the stationary start removes that transient."""
    m = SpikeHistoryObservation(1, history_bins=4, max_count=5)
    with torch.no_grad():
        m.history.copy_(torch.tensor([[-3.0, -1.5, -0.5, -0.1]]))
    rates = torch.full((20000, 24, 1), 0.4)
    first, steady = {}, {}
    for stationary in (True, False):
        m.burn_in_bins = 4 if stationary else 0
        s = m.sample(rates, gen(11))[..., 0]  # [B, L]
        first[stationary] = s[:, 0].mean().item()
        steady[stationary] = s[:, 12:].mean().item()
    se = (0.4 / 20000) ** 0.5  # Poisson-ish standard error of a bin mean
    assert abs(first[True] - steady[True]) < 4 * se
    assert first[False] - steady[False] > 20 * se  # the transient the start removes


def test_sampling_respects_cap_and_lengths():
    N = 4
    m = SpikeHistoryObservation(N, history_bins=3, max_count=2)
    with torch.no_grad():
        m.history.fill_(2.0)  # strong self-excitation: unbounded without the cap
    rates = torch.full((5, 60, N), 0.5)
    lengths = torch.tensor([60, 10, 1, 33, 59])
    s = m.sample(rates, gen(6), lengths)
    assert s.max() == 2 and (s == 2).float().mean() > 0.5
    for b, n in enumerate(lengths.tolist()):
        assert s[b, n:].sum() == 0 and s[b, :n].sum() > 0
    p = PoissonObservation().sample(rates, gen(6), lengths)
    assert p[1, 10:].sum() == 0 and p[1, :10].sum() >= 0


def test_sampling_reproducible_with_seed():
    m = known_model(5)
    rates = smooth_rates(4, 50, 5)
    a, b = m.sample(rates, gen(7)), m.sample(rates, gen(7))
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, m.sample(rates, gen(8)))
    pa, pb = PoissonObservation().sample(rates, gen(7)), PoissonObservation().sample(rates, gen(7))
    torch.testing.assert_close(pa, pb)


def test_generator_device_must_match():
    if not torch.cuda.is_available():
        pytest.skip("needs a second device")
    with pytest.raises(ValueError):
        PoissonObservation().sample(torch.ones(1, 2, 3, device="cuda"), gen(0))


def test_mean_modes():
    m = known_model(3)
    rates = smooth_rates(2, 40, 3)
    counts = m.sample(rates, gen(9))
    tf = m.mean(rates, counts)
    torch.testing.assert_close(tf, capped_poisson_mean(m.intensity(counts, rates), 5))
    mf = m.mean(rates)  # mean-field free-running mean: below the rates (refractory kernels)
    assert mf.shape == rates.shape and (mf < rates * 1.2 + 0.2).all()
    mc = torch.stack([m.sample(rates, gen(s)) for s in range(200)]).mean(0)
    # refractoriness lowers the free-running mean, and mean-field tracks that direction
    assert mc.mean() < m.drive(rates).exp().mean()
    assert abs(float(mf.mean() - mc.mean())) < 0.25 * float(mc.mean())


# ---------------------------------------------------------------- fitting
@pytest.mark.parametrize("history_input", ["spikes", "residuals"])
@pytest.mark.parametrize("dispersion", [False, True])
def test_design_likelihood_matches_conv_path(history_input, dispersion):
    m = known_model(4, H=6, cap=2)
    m.history_input = history_input
    if dispersion:  # gamma-Poisson counts for three of the four neurons
        m.set_count_dispersion(torch.tensor([0.0, 0.5, 2.0, 1.0]))
    rates = smooth_rates(3, 25, 4)
    counts = torch.poisson(rates * 3, generator=gen(10))  # some counts above the cap
    mask = torch.ones(3, 25, dtype=torch.bool)
    mask[1, 20:] = False
    counts = counts * mask[..., None]
    rates = rates * mask[..., None]  # as the fit's rates: zero in padding
    d = _Design(counts, rates, mask, 6, 2, history_input)
    ref = -m.log_prob(counts, rates, mask).sum() / (mask.sum() * 4)
    torch.testing.assert_close(d.nll(m), ref)


def test_fit_recovers_known_kernel():
    N = 6
    truth = known_model(N)
    rates = smooth_rates(40, 250, N, seed=11)
    counts = truth.sample(rates, gen(12))
    cfg = HistoryConfig(iterations=200)
    fitted = fit_history(counts, rates, None, cfg, gen(13))
    w, wt = fitted.history.detach(), truth.history.detach()
    for n in range(N):
        r = np.corrcoef(w[n].numpy(), wt[n].numpy())[0, 1]
        assert r >= 0.9, (n, r)
    assert fitted.fit_summary["train_nll"] < fitted.fit_summary["train_nll_start"]
    torch.testing.assert_close(fitted.rate_gain.detach(), torch.full((N,), 1.1), atol=0.25, rtol=0)
    # the reference optimiser (AdamW) reaches the same kernels
    adam = fit_history(counts, rates, None, dataclasses.replace(cfg, optimizer="adamw"), gen(13))
    corr = np.corrcoef(adam.history.detach().flatten(), w.flatten())[0, 1]
    assert corr > 0.98


def test_fit_ignores_padding_and_minibatches_work():
    N = 3
    truth = known_model(N, H=8)
    rates = smooth_rates(12, 80, N, seed=14)
    lengths = torch.tensor([80, 40, 80, 17, 80, 60, 80, 80, 25, 80, 80, 70])
    mask = torch.arange(80)[None, :] < lengths[:, None]
    counts = truth.sample(rates, gen(15), lengths)
    junk_counts = torch.where(mask[..., None], counts, torch.full_like(counts, 4.0))
    junk_rates = torch.where(mask[..., None], rates, torch.full_like(rates, 9.0))
    cfg = HistoryConfig(history_bins=8, iterations=100)
    clean = fit_history(counts, rates, mask, cfg, gen(16))
    junk = fit_history(junk_counts, junk_rates, mask, cfg, gen(16))
    for a, b in zip(clean.parameters(), junk.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    mini = fit_history(
        counts, rates, mask, dataclasses.replace(cfg, optimizer="adamw", batch_bins=256), gen(16)
    )
    assert mini.fit_summary["train_nll"] < mini.fit_summary["train_nll_start"]


def test_fit_with_coupling_improves_likelihood():
    N = 4
    truth = known_model(N, H=5)
    rates = smooth_rates(20, 100, N, seed=17)
    counts = truth.sample(rates, gen(18))
    cfg = HistoryConfig(history_bins=5, coupling_rank=1, iterations=100, match_dispersion=False)
    m = fit_history(counts, rates, None, cfg, gen(19))
    assert m.coupling_rank == 1
    assert m.fit_summary["train_nll"] < m.fit_summary["train_nll_start"] - 0.01


def test_config_history_ms_and_validation():
    assert HistoryConfig(history_ms=100).resolve(0.005).history_bins == 20
    assert HistoryConfig(history_ms=1).resolve(0.02).history_bins == 1
    assert HistoryConfig(history_bins=7).resolve(0.005).history_bins == 7
    for bad in ({"history_bins": 0}, {"max_count": 0}, {"optimizer": "sgd"}, {"lr": -1.0}):
        with pytest.raises(LdnsError):
            HistoryConfig(**bad)


# ---------------------------------------------------------------- storage and selection
FP = {"n_neurons": 3, "bin_size_s": 0.005, "covariates": {}, "behavior": {}}


def test_save_load_round_trip_and_selection(tmp_path):
    m = known_model(3, H=4, cap=4)
    cfg = HistoryConfig(history_bins=4, max_count=4)
    save_history(m, cfg, FP, tmp_path)
    loaded, ckpt = load_history(tmp_path)
    assert ckpt.kind == "history" and ckpt.fingerprint["n_neurons"] == 3
    for a, b in zip(m.parameters(), loaded.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    rates = smooth_rates(2, 30, 3)
    torch.testing.assert_close(m.sample(rates, gen(1)), loaded.sample(rates, gen(1)))
    assert isinstance(load_observation(tmp_path, "auto"), SpikeHistoryObservation)
    assert isinstance(load_observation(tmp_path, "history"), SpikeHistoryObservation)
    assert isinstance(load_observation(tmp_path, "poisson"), PoissonObservation)
    with pytest.raises(LdnsError, match="neurons"):
        load_observation(tmp_path, "history", fingerprint={**FP, "n_neurons": 4})


def test_history_input_survives_a_save_and_load_and_older_models_filter_spikes(tmp_path):
    from ldns_cli.core.checkpoint import load_checkpoint, save_checkpoint

    m = known_model(3, H=4, cap=4)
    m.history_input = "residuals"
    # the model's own input is stored, whatever the settings passed say
    save_history(m, HistoryConfig(history_bins=4, max_count=4), FP, tmp_path)
    loaded, ckpt = load_history(tmp_path)
    assert ckpt.config["history_input"] == "residuals" and loaded.history_input == "residuals"
    rates = smooth_rates(2, 30, 3)
    torch.testing.assert_close(m.sample(rates, gen(1)), loaded.sample(rates, gen(1)))
    # settings written before the choice existed: the kernels filtered the past counts
    del ckpt.config["history_input"]
    save_checkpoint(ckpt.path, ckpt)
    assert load_history(tmp_path)[0].history_input == "spikes"
    assert load_checkpoint(ckpt.path, "history").config.get("history_input") is None
    with pytest.raises(LdnsError, match="history_input"):
        HistoryConfig(history_input="rates")


def test_load_observation_errors(tmp_path):
    assert isinstance(load_observation(tmp_path, "auto"), PoissonObservation)
    with pytest.raises(LdnsError) as exc:
        load_observation(tmp_path, "history")
    assert "ldns fit-history" in exc.value.hint and "--spike-history" in exc.value.hint
    with pytest.raises(LdnsError, match="unknown observation"):
        load_observation(tmp_path, "gaussian")
    (tmp_path / "history.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(LdnsError):
        load_observation(tmp_path, "auto")


def test_fit_subsamples_whole_trials_within_budget():
    valid = torch.tensor([100, 50, 100, 100, 20, 100, 100, 100])
    cfg = HistoryConfig(history_bins=10, max_fit_elements=2 * 300)  # N = 2: 300 bins of budget
    keep = fit_trials(valid, 2, cfg, gen(0))
    assert keep is not None and int(valid[keep].sum()) <= 300
    assert torch.equal(keep, keep.sort().values) and len(set(keep.tolist())) == len(keep)
    assert torch.equal(keep, fit_trials(valid, 2, cfg, gen(0)))  # seeded
    assert fit_trials(valid, 2, HistoryConfig(history_bins=10), gen(0)) is None


def test_per_trial_generators_are_batch_independent():
    """One generator per trial: a trial's sample does not depend on its batch or padding."""
    m = known_model(4)
    rates = smooth_rates(3, 1100, 4)  # crosses a uniform block boundary (1024 bins)
    gens = [gen(10), gen(11), gen(12)]
    batch = m.sample(rates, gens, torch.tensor([1100, 1050, 7]))
    alone = m.sample(rates[1:2, :1050], [gen(11)])
    torch.testing.assert_close(batch[1:2, :1050], alone)
    assert batch[2, 7:].sum() == 0 and batch.max() <= 5
    again = m.sample(rates, [gen(10), gen(11), gen(12)], torch.tensor([1100, 1050, 7]))
    torch.testing.assert_close(batch, again)
    p = PoissonObservation()
    pb = p.sample(rates, [gen(1), gen(2), gen(3)], torch.tensor([1100, 30, 7]))
    torch.testing.assert_close(pb[1:2, :30], p.sample(rates[1:2, :30], [gen(2)]))
    with pytest.raises(ValueError):
        m.sample(rates, [gen(0)])


@pytest.mark.parametrize("dispersed", [False, True])
@pytest.mark.parametrize("cap", [None, 5, 1])
def test_inversion_counts_every_cdf_step_the_uniform_lies_above(cap, dispersed):
    """Counts by inversion equal #{k : u > F(k)} (capped), F from scipy, at low and high rates:
    the entries that stop early and the few that go on are both counted right."""
    from ldns_cli.nn.observation import inverse_cdf_poisson

    g = gen(5)
    lam = torch.cat([torch.rand(300, 8, generator=g) * 0.1, torch.rand(300, 8, generator=g) * 6])
    u = torch.rand(lam.shape, generator=g)
    alpha = torch.rand(8, generator=g) * 3 if dispersed else None
    s = inverse_cdf_poisson(u, lam, cap, alpha).numpy()
    k = np.arange(80)[None, None, :]
    lam64 = lam.double().numpy()[..., None]
    if dispersed:
        n = 1.0 / alpha.double().numpy()[None, :, None]
        cdf = stats.nbinom.cdf(k, n, n / (n + lam64))
    else:
        cdf = stats.poisson.cdf(k, lam64)
    uncapped = (u.double().numpy()[..., None] > cdf).sum(-1)
    assert (uncapped == 0).mean() > 0.3 and (uncapped > 2).sum() > 100  # both kinds of entry
    want = uncapped if cap is None else np.minimum(uncapped, cap)
    assert s.dtype == np.float32
    np.testing.assert_array_equal(s, want)


@pytest.mark.parametrize("cap", [None, 2])
def test_inversion_sampler_matches_capped_poisson(cap):
    """The per-trial-generator path (inversion) draws min(Poisson(r), cap) exactly."""
    levels = torch.tensor([0.1, 0.8, 3.0])
    rates = levels.expand(40, 100, 3).contiguous()  # 4000 draws per level
    m = SpikeHistoryObservation(3, history_bins=4, max_count=cap)
    s = m.sample(rates, [gen(100 + b) for b in range(40)]).numpy()
    for n, lam in enumerate(levels.tolist()):
        x = s[..., n].ravel().astype(int)
        top = cap if cap is not None else max(int(x.max()), 1)
        pmf = stats.poisson.pmf(np.arange(top + 1), lam)
        if cap is not None:
            pmf[-1] = stats.poisson.sf(cap - 1, lam)
        else:
            pmf[-1] += stats.poisson.sf(top, lam)
        observed = np.bincount(np.minimum(x, top), minlength=top + 1)
        expected = pmf * x.size
        keep = expected >= 5
        rest = (observed[~keep].sum(), expected[~keep].sum())
        obs = np.append(observed[keep], rest[0]) if rest[1] > 0 else observed[keep]
        exp = np.append(expected[keep], rest[1]) if rest[1] > 0 else expected[keep]
        _, p = stats.chisquare(obs, exp * obs.sum() / exp.sum())
        assert p > 1e-3, (lam, cap, p)


def test_rate_matching_makes_free_running_samples_fire_at_the_data_rate():
    # exp-link bursting data (the simulator's) fitted with the softplus model: teacher forcing
    # alone leaves free-running samples firing too fast; the matching rounds remove that
    from ldns_cli.io.simulate import draw_spikes

    N = 8
    rates = smooth_rates(60, 200, N, seed=21, scale=0.3)
    counts = torch.from_numpy(
        draw_spikes(rates.numpy().astype(np.float64), "bursting", np.random.default_rng(22))
    ).float()
    data_mean = counts.mean((0, 1))

    def sampled_mean(m: SpikeHistoryObservation) -> torch.Tensor:
        reps = 8  # other uniforms than the fit's own, and enough draws to average out
        gens = [gen(10_000 + i) for i in range(reps * rates.shape[0])]
        return m.sample(rates.repeat(reps, 1, 1), gens).mean((0, 1))

    cfg = HistoryConfig(iterations=200, rate_match_rounds=0, match_dispersion=False)
    plain = fit_history(counts, rates, None, cfg, gen(23))
    matched = fit_history(
        counts, rates, None, dataclasses.replace(cfg, rate_match_rounds=4), gen(23)
    )
    err_plain = (sampled_mean(plain) / data_mean - 1).abs()
    err_matched = (sampled_mean(matched) / data_mean - 1).abs()
    assert err_plain.mean() > 0.02  # the misfit the rounds exist for
    assert err_matched.mean() < 0.5 * err_plain.mean()
    s = matched.fit_summary
    assert abs(s["free_running_rate_ratio"] - 1) < abs(s["free_running_rate_ratio_before"] - 1)
    # only the intercepts move: the kernels are the teacher-forced fit's
    torch.testing.assert_close(matched.history, plain.history)
    torch.testing.assert_close(matched.rate_gain, plain.rate_gain)


def test_rate_matching_converges_for_units_whose_self_excitation_amplifies_the_intercept():
    # strongly self-exciting units (the history raises their rate 8-fold) started 0.6 above the
    # intercept that generated the data: their free-running rate moves several times faster
    # than the intercept, so plain log-ratio steps overshoot and oscillate (they end at 0.6,
    # firing 6-8x too much); secant steps recover the true intercept in 4 rounds
    from ldns_cli.fit.history import match_free_running_rates, tensor_batches

    N, B, L = 4, 128, 100
    rates = torch.full((B, L, N), 0.05)
    mask = torch.ones(B, L, dtype=torch.bool)
    kernel = 1.2 * torch.exp(-torch.arange(10.0) / 3.0)

    def model_with(bias: float) -> SpikeHistoryObservation:
        m = SpikeHistoryObservation(N, 10, 5, max_excitation=10.0)
        with torch.no_grad():
            m.history.copy_(kernel.expand(N, 10))
            m.bias.fill_(bias)
        return m

    data = model_with(0.0).sample(rates, [gen(400 + i) for i in range(B)])
    assert data.mean() > 5 * 0.05  # the self-excitation dominates
    model = model_with(0.6)
    match_free_running_rates(model, tensor_batches(data, rates, mask), B, 4, seed=5)
    assert model.bias.abs().max() < 0.2, model.bias


def test_matching_and_sampling_in_one_go_gives_the_separate_steps_results():
    """`match_and_sample` keeps the rate matching's last draws instead of sampling again: the
    same intercepts and the same samples, data side and trial sources as matching, then
    `sample_free_running` (with the trials repeated and in chunks of several batches)."""
    from ldns_cli.fit.history import (
        match_and_sample,
        match_free_running_rates,
        sample_free_running,
        tensor_batches,
    )

    B, L, N = 24, 50, 8
    rates = smooth_rates(B, L, N, scale=0.3)
    mask = torch.arange(L)[None, :] < torch.randint(30, L + 1, (B, 1), generator=gen(3))
    data = known_model(N).sample(rates, [gen(100 + i) for i in range(B)], mask.sum(1))
    batches = tensor_batches(data, rates, mask, trials_per_batch=10)
    separate, together = known_model(N), known_model(N)
    with torch.no_grad():
        separate.bias.add_(0.4)
        together.bias.add_(0.4)
    ratios = match_free_running_rates(separate, batches, B, 3, seed=7, min_sampled_trials=60)
    sets = sample_free_running(separate, batches, B, seed=7, min_trials=60)
    *ratios_one_go, sets_one_go = match_and_sample(together, batches, batches, B, 3, 7, 60)
    assert tuple(ratios_one_go) == ratios
    assert torch.equal(separate.bias, together.bias)
    assert sets[0].shape[0] == 3 * B  # each trial drawn 3 times
    for a, b in zip(sets, sets_one_go, strict=True):
        np.testing.assert_array_equal(a, b)


def poisson_data_and_refractory_kernel(seed: int):
    """6 units of Poisson data (64 trials x 80 bins at 0.15 spikes per bin) and a strongly
    refractory 10-bin kernel: N, B, rates, counts, mask, kernel."""
    N, B, L = 6, 64, 80
    rates = torch.full((B, L, N), 0.15)
    counts = torch.from_numpy(np.random.default_rng(seed).poisson(0.15, (B, L, N))).float()
    mask = torch.ones(B, L, dtype=torch.bool)
    return N, B, rates, counts, mask, -4.0 * torch.exp(-torch.arange(10.0) / 1.5)


def test_dispersion_matching_weakens_inhibition_that_makes_samples_too_regular():
    # Poisson data (Fano 1, no autocorrelation) and a model whose fit put a strong refractory
    # kernel on every neuron: its free-running samples are too regular, and of the kernel pairs
    # tried the weakest inhibition brings them closest; a model that matches the data keeps its
    # kernel
    from ldns_cli.fit.history import (
        DISPERSION_SCALES,
        match_free_running_dispersion,
        tensor_batches,
    )

    N, B, rates, counts, mask, refractory = poisson_data_and_refractory_kernel(31)

    def model_with(kernel: torch.Tensor) -> SpikeHistoryObservation:
        m = SpikeHistoryObservation(N, 10, 5, max_excitation=2.5)
        with torch.no_grad():
            m.history.copy_(kernel.expand(N, 10))
        return m

    model = model_with(refractory)
    batches = tensor_batches(counts, rates, mask)
    scales, _, after, _ = match_free_running_dispersion(model, batches, B, 2, seed=0)
    weakest = min(inh for _, inh, _ in DISPERSION_SCALES)
    assert scales.shape == (N, 3)
    assert (scales[:, 1] == weakest).all(), scales
    torch.testing.assert_close(model.history, weakest * refractory.expand(N, 10))
    assert abs(after - 1) < 0.1  # the intercepts still match the data's rates
    # ... and the model the matching leaves behind carries them
    final = model.sample(rates, [gen(500 + i) for i in range(B)]).sum()
    assert abs(float(final / counts.sum()) - 1) < 0.1
    # no excitation: a raised bound would change nothing, so none is reported or kept
    assert (scales[:, 2] == 1).all()
    torch.testing.assert_close(model.excitation_bound, torch.full((N,), 2.5))
    # data drawn from the refractory model itself: its full inhibition is kept
    own = model_with(refractory).sample(rates, [gen(100 + i) for i in range(B)])
    model = model_with(refractory)
    own_batches = tensor_batches(own.float(), rates, mask)
    scales, _, _, _ = match_free_running_dispersion(model, own_batches, B, 2, seed=0)
    assert (scales[:, 1] == 1.0).sum() >= N - 1, scales


def test_dispersion_matching_runs_candidates_in_turn_for_coupled_neurons():
    # the refractory-model-on-Poisson-data case with a weak coupling between the neurons: they
    # are no longer independent, so each candidate runs as its own model; the choice is the same
    from ldns_cli.fit.history import (
        DISPERSION_SCALES,
        match_free_running_dispersion,
        tensor_batches,
    )

    N, B, rates, counts, mask, refractory = poisson_data_and_refractory_kernel(32)
    model = SpikeHistoryObservation(N, 10, 5, coupling_rank=1, generator=gen(3), max_excitation=2.5)
    with torch.no_grad():
        model.history.copy_(refractory.expand(N, 10))
        model.coupling_out.fill_(0.05)
    coupling = [p.detach().clone() for p in (model.coupling_in, model.coupling_out)]
    scales, _, after, _ = match_free_running_dispersion(
        model, tensor_batches(counts, rates, mask), B, 2, seed=0
    )
    weakest = min(inh for _, inh, _ in DISPERSION_SCALES)
    assert (scales[:, 1] == weakest).all(), scales
    torch.testing.assert_close(model.history, weakest * refractory.expand(N, 10))
    assert abs(after - 1) < 0.1  # the mixture still fires at the data's rates
    torch.testing.assert_close(model.coupling_in, coupling[0])  # the coupling is left as fitted
    torch.testing.assert_close(model.coupling_out, coupling[1])


def test_dispersion_matching_raises_the_bound_of_units_whose_bursts_it_cuts_short():
    # data from strongly self-exciting units with room for long bursts (bound 4E); the same
    # kernel under the default bound E bursts too little, and the matching gives those units the
    # raised bound back. Data drawn under the default bound keep it.
    from ldns_cli.fit.history import match_free_running_dispersion, tensor_batches
    from ldns_cli.scoring.metrics import summary_of

    N, B, L, E = 6, 64, 120, 2.5
    rates = torch.full((B, L, N), 0.04)
    mask = torch.ones(B, L, dtype=torch.bool)
    kernel = 1.6 * torch.exp(-torch.arange(10.0) / 4.0)  # Σ w⁺ ≈ 7 > E

    def model_with(bound: float) -> SpikeHistoryObservation:
        m = SpikeHistoryObservation(N, 10, 5, max_excitation=E)
        with torch.no_grad():
            m.history.copy_(kernel.expand(N, 10))
        m.set_excitation_bound(torch.full((N,), bound))
        return m

    def fano(counts: torch.Tensor) -> float:
        c = counts.numpy().astype(np.int32)
        return float(np.nanmean(summary_of(c, np.full(B, L), 0.005).fano))

    data = model_with(4 * E).sample(rates, [gen(200 + i) for i in range(B)])
    model = model_with(E)
    low = fano(model.sample(rates, [gen(900 + i) for i in range(B)]))
    scales, _, _, _ = match_free_running_dispersion(model, tensor_batches(data, rates, mask), B, 2)
    assert scales.shape == (N, 3)
    assert (scales[:, 2] > 1).sum() >= N - 1, scales
    torch.testing.assert_close(model.excitation_bound, E * torch.as_tensor(scales[:, 2]).float())
    high = fano(model.sample(rates, [gen(900 + i) for i in range(B)]))
    assert abs(high - fano(data)) < abs(low - fano(data)), (low, high, fano(data))
    # data drawn under the default bound: the default bound is kept
    own = model_with(E).sample(rates, [gen(300 + i) for i in range(B)])
    model = model_with(E)
    scales, _, _, _ = match_free_running_dispersion(model, tensor_batches(own, rates, mask), B, 2)
    assert (scales[:, 2] == 1).sum() >= N - 1, scales


def test_per_neuron_excitation_bound_survives_a_save_and_load(tmp_path):
    m = SpikeHistoryObservation(3, 4, 5, max_excitation=2.5)
    with torch.no_grad():
        m.history.fill_(3.0)
    m.set_excitation_bound(torch.tensor([2.5, 5.0, 10.0]))
    save_history(m, HistoryConfig(history_bins=4), {"n_neurons": 3}, tmp_path)
    back, _ = load_history(tmp_path)
    torch.testing.assert_close(back.excitation_bound, m.excitation_bound)
    rates = torch.full((2, 50, 3), 0.1)
    counts = torch.poisson(rates, generator=gen(1))
    torch.testing.assert_close(back.intensity(counts, rates), m.intensity(counts, rates))
    # each neuron saturates at its own bound: the intensity after a long burst
    burst = torch.full((1, 50, 3), 5.0)
    lam = m.intensity(burst, torch.full((1, 50, 3), 1e-3))[0, -1]  # [N]
    bound = torch.tensor([2.5, 5.0, 10.0])
    excitation = 3.0 * 4 * 5  # w · H bins · 5 spikes
    expected = F.softplus(
        softplus_inverse(torch.tensor(1e-3)) + bound * torch.tanh(excitation / bound)
    )
    torch.testing.assert_close(lam, expected)
    assert lam[0] < lam[1] < lam[2]
    with pytest.raises(ValueError, match="one finite value"):
        m.set_excitation_bound(torch.tensor([1.0, float("nan"), 1.0]))


def test_dispersion_matching_is_on_by_default_only_for_sets_it_can_sample_quickly():
    from ldns_cli.fit.history import DISPERSION_AUTO_ELEMENTS, dispersion_on

    auto = HistoryConfig()
    assert auto.match_dispersion is None
    assert dispersion_on(auto, DISPERSION_AUTO_ELEMENTS)
    assert not dispersion_on(auto, DISPERSION_AUTO_ELEMENTS + 1)
    assert dispersion_on(HistoryConfig(match_dispersion=True), 10 * DISPERSION_AUTO_ELEMENTS)
    assert not dispersion_on(HistoryConfig(match_dispersion=False), 1)
    assert dispersion_on(HistoryConfig(coupling_rank=2), 1)  # coupled: candidates in turn


# ---------------------------------------------------------------- coupling between units ("auto")
def population(dataset: str, trials: int = 240, **kw):
    """`ldns simulate` counts [B, L, N] with the rates the simulator drove them with [B, L, N]:
    for the network, the input-driven rates, without the fluctuations the units' coupling adds
    (like an autoencoder's smooth rates); elsewhere the units are independent given the rates."""
    from ldns_cli.io.simulate import simulate

    d = simulate(dataset, trials=trials, neurons=40, length=100, seed=3, **kw)
    counts = torch.as_tensor(d.counts, dtype=torch.float32)
    return counts, torch.as_tensor(d.rates, dtype=torch.float32), d


def test_population_scores_put_other_real_trials_near_0_and_homogeneous_poisson_near_1():
    from ldns_cli.scoring.population import SCORED_METRICS, population_scores

    _, _, d = population("network", trials=480)
    c, lengths = d.counts, d.lengths
    data, floor, same = c[:120], c[120:300], c[300:]  # three sets of one recording
    naive = np.random.default_rng(0).poisson(data.mean(axis=(0, 1)), same.shape)
    args = (data, lengths[:120], floor, lengths[120:300], d.bin_size_s)
    like = population_scores([same], lengths[300:], *args, seed=1)[0]
    flat = population_scores([naive], lengths[300:], *args, seed=1)[0]
    # candidates scored together share the data, floor and naive sets: the same figures
    assert population_scores([same, naive], lengths[300:], *args, seed=1) == [like, flat]
    assert set(like) == set(SCORED_METRICS)
    for metric in SCORED_METRICS:
        assert abs(like[metric]["score"]) < 0.2, (metric, like[metric])
        assert 0.8 < flat[metric]["score"] < 1.2, (metric, flat[metric])


@pytest.mark.parametrize("dataset", ["network", "reach"])
def test_auto_coupling_is_fitted_and_kept_only_where_samples_miss_shared_structure(dataset):
    from ldns_cli.core.data import SpikeData
    from ldns_cli.fit.history import choose_coupling

    kw = {"history": "refractory"} if dataset == "reach" else {}
    counts, rates, d = population(dataset, **kw)
    train, held = slice(0, 180), slice(180, None)
    cfg = HistoryConfig(history_bins=10, max_count=3, match_dispersion=False, iterations=60)
    mask = torch.ones(counts.shape[:2], dtype=torch.bool)
    uncoupled = fit_history(counts[train], rates[train], mask[train], cfg, gen(33))
    fitted = []

    def fit_coupled(rank: int) -> SpikeHistoryObservation:
        fitted.append(rank)
        c = dataclasses.replace(cfg, coupling_rank=rank)
        return fit_history(counts[train], rates[train], mask[train], c, gen(34))

    other = SpikeData(counts=d.counts[train], lengths=d.lengths[train], bin_size_s=d.bin_size_s)
    held_out = (counts[held], rates[held], mask[held])
    kept = choose_coupling(
        uncoupled, fit_coupled, lambda m: None, held_out, other, "validation", seed=5, quiet=True
    )
    figures = kept.fit_summary["coupling"]
    before = figures["uncoupled"]["scores"]
    if dataset == "network":  # independent units miss the network's shared fluctuations
        assert before["corr_rmse"]["score"] > 0.5 and before["psd_log_mse"]["score"] > 0.5
        assert fitted == [1]
        assert kept.coupling_rank == 1 and figures["rank"] == 1
        assert figures["coupled"]["cost"] < 0.5 * figures["uncoupled"]["cost"]
        gain = figures["uncoupled"]["cost"] - figures["coupled"]["cost"]
        assert 0 < figures["cost_difference_se"] < gain / 2  # a gain well beyond its noise
    else:  # nothing shared beyond the rates: the uncoupled model, and no coupled fit at all
        assert before["psd_log_mse"]["score"] < 0.1
        assert fitted == []
        assert kept is uncoupled and figures["rank"] == 0
        assert "coupled" not in figures
    # without held-out trials, or with too few, nothing can judge a coupling
    none = choose_coupling(uncoupled, fit_coupled, lambda m: None, held_out, other, None, 5, True)
    assert none is uncoupled and none.fit_summary["coupling"]["rank"] == 0
    few = tuple(t[:10] for t in held_out)
    none = choose_coupling(
        uncoupled, fit_coupled, lambda m: None, few, other, "validation", 5, True
    )
    assert none is uncoupled and "too few" in none.fit_summary["coupling"]["reason"]
    assert len(fitted) == (1 if dataset == "network" else 0)


def test_coupling_rank_setting_takes_auto_or_a_whole_number():
    assert HistoryConfig().coupling_rank == "auto"
    assert HistoryConfig(coupling_rank=2).coupling_rank == 2
    for bad in (-1, "two", 1.5, True):
        with pytest.raises(LdnsError, match="coupling_rank"):
            HistoryConfig(coupling_rank=bad)


def test_given_dispersion_factors_are_applied_instead_of_searched():
    N, B, rates, counts, mask, _ = poisson_data_and_refractory_kernel(37)
    cfg = HistoryConfig(history_bins=10, iterations=40, match_dispersion=True)
    plain = fit_history(counts, rates, mask, cfg, gen(5))
    factors = np.tile([0.6, 0.4, 2.0], (N, 1))
    factors[0] = (1.0, 1.0, 1.0)
    given = fit_history(counts, rates, mask, cfg, gen(5), dispersion_factors=factors)
    s = given.fit_summary
    assert s["dispersion_factors_given"] and s["dispersion_scale"][1:] == [0.6] * (N - 1)
    assert s["inhibition_scale"] == [1.0] + [0.4] * (N - 1)
    torch.testing.assert_close(
        given.excitation_bound, torch.tensor([2.5] + [5.0] * (N - 1)), check_dtype=False
    )
    assert "dispersion_factors_given" not in plain.fit_summary
    # the rates are still matched after the factors change the kernel
    sampled = given.sample(rates, [gen(900 + i) for i in range(B)]).sum()
    assert abs(float(sampled / counts.sum()) - 1) < 0.1


# ---------------------------------------------------------------- over-dispersed counts
def test_gamma_poisson_pmf_is_the_negative_binomial_and_zero_dispersion_is_poisson():
    lam = torch.tensor([0.02, 0.3, 2.5], dtype=torch.float64)
    alpha = torch.tensor([0.0, 1.5, 4.0], dtype=torch.float64)
    k = torch.arange(0, 12, dtype=torch.float64)[:, None].expand(-1, 3)
    lp = gamma_poisson_log_pmf(k, lam.expand(12, 3), alpha).numpy()
    np.testing.assert_allclose(lp[:, 0], stats.poisson.logpmf(k[:, 0].numpy(), 0.02), rtol=1e-10)
    size = 1.0 / alpha[1:].numpy()  # scipy: n = 1/α, p = n / (n + λ)
    ref = stats.nbinom.logpmf(k[:, 1:].numpy(), size, size / (size + lam[1:].numpy()))
    np.testing.assert_allclose(lp[:, 1:], ref, rtol=1e-9)
    # continuous at α → 0
    tiny = gamma_poisson_log_pmf(k, lam.expand(12, 3), torch.full((3,), 1e-12, dtype=torch.float64))
    torch.testing.assert_close(tiny, poisson_log_pmf(k, lam.expand(12, 3)))
    # capped: a distribution whose mean is the capped mean; no dispersion is the Poisson code
    cap = 5
    support = torch.arange(0, cap + 1, dtype=torch.float64)[:, None].expand(-1, 3)
    probs = capped_count_log_prob(support, lam.expand(cap + 1, 3), cap, alpha).exp()
    torch.testing.assert_close(probs.sum(0), torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(capped_count_mean(lam, cap, alpha), (support * probs).sum(0))
    torch.testing.assert_close(capped_count_mean(lam, None, alpha), lam)
    torch.testing.assert_close(
        capped_count_log_prob(support, lam.expand(cap + 1, 3), cap, None),
        capped_poisson_log_prob(support, lam.expand(cap + 1, 3), cap),
    )


@pytest.mark.parametrize("per_trial", [False, True])
def test_over_dispersed_samples_have_the_gamma_poisson_moments(per_trial):
    # no history, no cap: each neuron's counts are i.i.d. with mean λ and variance λ + αλ²
    N, B, L, lam = 3, 400, 50, 0.4
    m = SpikeHistoryObservation(N, 4, None)
    alpha = torch.tensor([0.0, 1.0, 3.0])
    m.set_count_dispersion(alpha)
    rates = torch.full((B, L, N), lam)
    g = [gen(i) for i in range(B)] if per_trial else gen(3)
    s = m.sample(rates, g).reshape(-1, N).double()  # [B·L, N]
    n = s.shape[0]
    var = lam + alpha.double() * lam**2
    assert ((s.mean(0) - lam).abs() < 4 * (var / n).sqrt()).all(), s.mean(0)
    # the sample variance's standard error from the gamma-Poisson's fourth moment, bounded
    # generously by 2·var·(1 + α)·sqrt(2/n)
    assert ((s.var(0) - var).abs() < 4 * var * (1 + alpha.double()) * math.sqrt(2 / n)).all()
    # a neuron with α = 0 draws exactly what the Poisson-count model draws from the same uniforms
    if per_trial:
        plain = SpikeHistoryObservation(N, 4, None).sample(rates, [gen(i) for i in range(B)])
        torch.testing.assert_close(s[:, 0].float(), plain.reshape(-1, N)[:, 0])


def test_count_dispersion_survives_a_save_and_load_and_poisson_neurons_drop_it(tmp_path):
    m = known_model(3, H=4, cap=4)
    m.set_count_dispersion(torch.tensor([0.0, 0.7, 2.0]))
    cfg = HistoryConfig(history_bins=4, max_count=4, max_excitation=None)  # as `m`: unbounded
    save_history(m, cfg, FP, tmp_path)
    back, _ = load_history(tmp_path)
    torch.testing.assert_close(back.count_dispersion, m.count_dispersion)
    rates = smooth_rates(4, 40, 3)
    torch.testing.assert_close(back.sample(rates, gen(2)), m.sample(rates, gen(2)))
    counts = torch.poisson(rates, generator=gen(4))
    torch.testing.assert_close(back.log_prob(counts, rates), m.log_prob(counts, rates))
    # neurons made Poisson by the per-neuron choice draw Poisson counts too
    m.set_selection(torch.tensor([True, False, True]), None)
    torch.testing.assert_close(m.count_dispersion, torch.tensor([0.0, 0.0, 2.0]))
    with pytest.raises(ValueError, match="one finite value"):
        m.set_count_dispersion(torch.tensor([0.0, -1.0, 1.0]))
    # a model saved without one has Poisson counts
    save_history(known_model(3, H=4, cap=4), HistoryConfig(history_bins=4), FP, tmp_path)
    assert load_history(tmp_path)[0].count_dispersion is None


def test_count_dispersion_matching_finds_the_over_dispersed_units_and_leaves_poisson_ones():
    # 4 units whose counts are gamma-Poisson (α = 2) and 4 Poisson units, all at their true
    # rates, and a model without history: the matching gives dispersion to the first four and
    # none (or next to none) to the others, and their free-running Fano factors come near the
    # data's
    from ldns_cli.fit.history import match_count_dispersion, tensor_batches
    from ldns_cli.scoring.neurons import neuron_stats

    N, B, L, lam = 8, 160, 80, 0.15
    rng = np.random.default_rng(7)
    alpha_true = np.array([2.0] * 4 + [0.0] * 4)
    gain = np.where(
        alpha_true > 0, rng.gamma(1 / np.maximum(alpha_true, 1e-9), alpha_true, (B, L, N)), 1.0
    )
    counts = torch.from_numpy(rng.poisson(lam * gain)).float()
    rates = torch.full((B, L, N), lam)
    mask = torch.ones(B, L, dtype=torch.bool)
    model = SpikeHistoryObservation(N, 10, 5, max_excitation=2.5)
    alpha, estimate = match_count_dispersion(
        model, tensor_batches(counts, rates, mask), B, 2, seed=0
    )
    assert (alpha[:4] >= 1.0).all() and (alpha[:4] <= 4.0).all(), alpha
    assert (alpha[4:] <= 0.5).all(), alpha
    assert (estimate[:4] > 1.0).all() and (estimate[4:] < 0.6).all(), estimate
    torch.testing.assert_close(model.count_dispersion.numpy(), alpha.astype(np.float32))
    lengths = np.full(B, L)
    data = neuron_stats(counts.numpy(), lengths, 1.0)
    sampled = model.sample(rates, [gen(700 + i) for i in range(B)])
    free = neuron_stats(sampled.numpy(), lengths, 1.0)
    poisson = neuron_stats(torch.poisson(rates, generator=gen(9)).numpy(), lengths, 1.0)
    assert (
        np.abs(free.fano[:4] - data.fano[:4]).mean()
        < 0.5 * np.abs(poisson.fano[:4] - data.fano[:4]).mean()
    )
    # the intercepts keep the data's rates
    assert abs(float(sampled.sum() / counts.sum()) - 1) < 0.05


def test_bin_moments_count_only_valid_bins():
    from ldns_cli.fit.history import bin_moments

    rng = np.random.default_rng(0)
    counts = rng.poisson(0.3, (50, 40, 7)).astype(np.uint8)
    lengths = rng.integers(10, 41, 50)
    counts[np.arange(40)[None, :] >= lengths[:, None]] = 9  # padding must not count
    mean, ratio = bin_moments(counts, lengths)
    x = counts[np.arange(40)[None, :] < lengths[:, None]].astype(np.float64)  # [M, N]
    np.testing.assert_allclose(mean, x.mean(0))
    np.testing.assert_allclose(ratio, x.var(0) / x.mean(0))
    # the factorial moment the dispersion estimate divides by, from the two
    np.testing.assert_allclose(mean * (ratio - 1 + mean), (x * (x - 1)).mean(0))


@pytest.mark.parametrize("bounded", [False, True])
def test_sparse_and_dense_spike_pushes_sample_the_same_counts(monkeypatch, bounded):
    """The sampler adds a bin's few spikes to the future drive one by one, or all units at once
    when many spiked: the two give the same samples and the same drive, bit for bit."""
    import ldns_cli.nn.observation as observation

    m = known_model(16)
    if bounded:
        m.set_excitation_bound(torch.full((16,), 0.5))
    rates = smooth_rates(12, 80, 16, scale=0.2)

    def above(lam: torch.Tensor, t: int) -> torch.Tensor:
        # a 'draw' that passes the intensity on where it is high: any difference in the
        # drive shows in the output
        return torch.where(lam > 0.25, lam, 0.0)

    runs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name, share in (("sparse", 0), ("dense", 10**9)):
        monkeypatch.setattr(observation, "SPARSE_PUSH_SHARE", share)
        with torch.no_grad():
            drawn = m.sample(rates, [gen(i) for i in range(12)])
            runs[name] = (drawn, m._run(rates, above))
    assert 0 < float(runs["dense"][0].mean()) < 0.3  # mostly silent bins: the sparse case
    assert 0 < float((runs["dense"][1] > 0).float().mean()) < 0.25
    assert torch.equal(runs["sparse"][0], runs["dense"][0])
    assert torch.equal(runs["sparse"][1], runs["dense"][1])
