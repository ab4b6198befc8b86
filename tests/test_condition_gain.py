"""The conditions' rate gain: its fit recovers a known tuning, is dropped where there is none,
round-trips through a checkpoint and is applied by generation only when the conditions are given."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from ldns_cli.conditions.spec import check_conditions
from ldns_cli.core.data import SpikeData
from ldns_cli.diffusion.condition_gain import (
    ConditionGain,
    gain_conditions,
    load_condition_gain,
    time_basis,
)
from ldns_cli.diffusion.sampling import SampleSettings
from ldns_cli.fit.condition_gain import fit_condition_gain
from ldns_cli.generate import generate
from ldns_cli.nn.observation import PoissonObservation

ANGLE = {"name": "angle", "kind": "circular", "dim": 1, "unit": "rad", "min": [0.0], "max": [6.3]}
LABEL = {"name": "label", "kind": "categorical", "dim": 1, "values": ["a", "b", "c"]}
SERIES = {"name": "vel", "kind": "timeseries", "dim": 2}
L, N, BASE = 60, 12, 0.1  # bins, neurons, spikes per bin
BIN_S = 0.01  # the gain's bumps are 10 or 20 bins apart
PEAK, WIDTH = 30, 6.0  # the tuning's time course: a Gaussian bump (bins)


def _tuned(n_trials: int, kappa: float, seed: int) -> tuple[SpikeData, np.ndarray, np.ndarray]:
    """Counts whose log rate is log BASE + w(t)·κ_n cos(θ − φ_n) for the first N/2 neurons, w a
    Gaussian bump at PEAK; returns the data, the angles and the true log gain `[B, L, N]`."""
    rng = np.random.default_rng(seed)
    theta = rng.uniform(0, 2 * np.pi, n_trials)
    pref = np.linspace(0, 2 * np.pi, N, endpoint=False)
    amp = np.where(np.arange(N) < N // 2, kappa, 0.0)
    window = np.exp(-0.5 * ((np.arange(L) - PEAK) / WIDTH) ** 2)  # [L]
    log_gain = window[None, :, None] * (amp * np.cos(theta[:, None] - pref))[:, None, :]
    counts = rng.poisson(BASE * np.exp(log_gain)).astype(np.int32)
    data = SpikeData(counts=counts, lengths=np.full(n_trials, L), bin_size_s=BIN_S)
    return data, theta, log_gain


def _fit(kappa: float):
    train, th_train, _ = _tuned(300, kappa, seed=0)
    val, th_val, _ = _tuned(80, kappa, seed=1)
    flat = np.full(train.counts.shape, BASE, np.float32)  # the "decoded rates": no tuning
    return fit_condition_gain(
        train,
        val,
        flat,
        np.full(val.counts.shape, BASE, np.float32),
        [ANGLE],
        {"angle": th_train},
        {"angle": th_val},
    )


def test_a_known_tuning_is_recovered_and_kept():
    gain, record = _fit(kappa=0.8)
    assert gain is not None and record["kept"]
    assert record["gain_bits_per_spike"] > 2 * record["se"] > 0
    _, th_test, truth = _tuned(100, 0.8, seed=2)
    fitted = gain.log_gain({"angle": th_test}, L)  # [B, L, N]
    tuned = np.arange(N) < N // 2
    r = np.corrcoef(fitted[..., tuned].ravel(), truth[..., tuned].ravel())[0, 1]
    assert r > 0.9
    # the untuned neurons and the bins far from the tuning get (almost) no gain
    # (the ridge is shared by all neurons: untuned ones keep a little fitted noise)
    assert np.abs(fitted[..., ~tuned]).mean() < 0.4 * np.abs(fitted[..., tuned]).mean()
    inside = np.abs(fitted[:, PEAK - 3 : PEAK + 4, tuned]).mean()
    assert np.abs(fitted[:, :5, tuned]).mean() < 0.2 * inside
    assert np.abs(fitted[:, -5:, tuned]).mean() < 0.2 * inside


def test_no_tuning_no_gain():
    gain, record = _fit(kappa=0.0)
    assert gain is None and not record["kept"]
    assert "standard errors" in record["reason"] and len(record["curve"]) >= 2


def test_only_trial_level_conditions_are_read():
    assert [s["name"] for s in gain_conditions([ANGLE, SERIES, LABEL])] == ["angle", "label"]
    assert gain_conditions([{**LABEL, "values": None}]) == []
    data, _, _ = _tuned(8, 0.0, seed=4)
    rates = np.full(data.counts.shape, BASE, np.float32)
    gain, record = fit_condition_gain(data, data, rates, rates, [SERIES], {}, {})
    assert gain is None and "vel varies within trials" in record["reason"]


def _gain() -> ConditionGain:
    rng = np.random.default_rng(0)
    weight = rng.normal(0, 0.3, (4, 5, N)).astype(np.float32)  # 2 angle + 3 label features
    return ConditionGain(specs=(ANGLE, LABEL), spacing_bins=10.0, weight=weight)


def test_log_gain_is_the_bumps_times_the_features():
    gain = _gain()
    theta, labels = np.array([0.3, 2.0]), np.array(["c", "a"])
    g = gain.log_gain({"angle": theta, "label": labels}, 30)
    phi = time_basis(30, 10.0, 4)
    x = np.array([[np.cos(0.3), np.sin(0.3), 0, 0, 1], [np.cos(2.0), np.sin(2.0), 1, 0, 0]])
    expected = np.einsum("lk,bf,kfn->bln", phi, x, gain.weight.astype(np.float64))
    assert np.allclose(g, expected, atol=1e-6)
    # a condition the gain reads is missing: no gain at all
    rates = torch.ones(2, 30, N)
    assert gain.log_gain({"angle": theta}, 30) is None
    assert torch.equal(gain.apply(rates, {"angle": theta}), rates)


def test_checkpoint_round_trip_and_damage():
    gain = _gain()
    record = {**gain.record(), "kept": True}
    back = load_condition_gain(gain.tensors(), record, [SERIES, LABEL, ANGLE])
    assert back is not None and back.names == ["angle", "label"]
    assert np.array_equal(back.weight, gain.weight) and back.spacing_bins == 10.0
    # not kept, or a model fitted before gains existed
    assert load_condition_gain(gain.tensors(), {**record, "kept": False}, [ANGLE, LABEL]) is None
    assert load_condition_gain({}, None, [ANGLE, LABEL]) is None
    with pytest.raises(ValueError, match="do not fit"):
        load_condition_gain(gain.tensors(), {**record, "conditions": ["angle"]}, [ANGLE, LABEL])
    with pytest.raises(KeyError):  # the record names a condition the model does not have
        load_condition_gain(gain.tensors(), record, [ANGLE])


def test_generation_applies_the_gain_only_with_the_conditions():
    from test_generate import SPECS, _models
    from test_generate import N as N_GEN

    ae, model = _models(SPECS)
    settings = SampleSettings(steps=3, seed=4, save_rates=True)
    lengths = np.array([24, 24, 24])
    cond = {
        "angle": np.array([0.1, 1.0, 2.0]),
        "speed": np.array([0.5, 1.0, 1.5]),
        "vel": np.zeros((3, 24, 2)),
    }
    checked = check_conditions(model, cond, lengths)
    obs = PoissonObservation()
    plain = generate(ae, model, obs, lengths, settings, "cpu", checked)
    weight = np.random.default_rng(1).normal(0, 0.5, (3, 3, N_GEN)).astype(np.float32)
    gain = ConditionGain(specs=(SPECS[0], SPECS[1]), spacing_bins=12.0, weight=weight)
    gained = generate(
        ae, dataclasses.replace(model, condition_gain=gain), obs, lengths, settings, "cpu", checked
    )
    factor = np.exp(gain.log_gain(checked, 24))
    assert np.allclose(gained.rates, plain.rates * factor, rtol=1e-4, atol=1e-7)
    # the unconditional path of the same model: no conditions, no gain
    a = generate(ae, model, obs, lengths, settings, "cpu")
    b = generate(ae, dataclasses.replace(model, condition_gain=gain), obs, lengths, settings, "cpu")
    assert np.array_equal(a.rates, b.rates) and np.array_equal(a.counts, b.counts)


def test_large_inputs_are_thinned_and_too_many_weights_refused(monkeypatch):
    import ldns_cli.fit.condition_gain as fit_gain

    # a quarter of the training trials still finds the tuning
    monkeypatch.setattr(fit_gain, "GAIN_MAX_ELEMENTS", 75 * L * N)
    thin, used = fit_gain._thinned, []

    def spy(data, rates, values):
        out = thin(data, rates, values)
        used.append(out[0].n_trials)
        return out

    monkeypatch.setattr(fit_gain, "_thinned", spy)
    gain, record = _fit(kappa=0.8)
    assert used == [75, 75]  # of 300 training and 80 validation trials
    assert gain is not None and record["kept"]
    # a categorical condition with 300 labels: 300 features x the bumps is too many weights
    data, _, _ = _tuned(20, 0.0, seed=3)
    labels = np.arange(20) % 300
    spec = {"name": "label", "kind": "categorical", "dim": 1, "values": list(range(300))}
    rates = np.full(data.counts.shape, BASE, np.float32)
    values = {"label": labels}
    gain, record = fit_condition_gain(data, data, rates, rates, [spec], values, values)
    assert gain is None and "exceed" in record["reason"]


def test_autoencoder_stage_draws_from_the_gained_rates_and_skips_unseen_values():
    from conftest import make_tiny_data
    from ldns_cli.fit.checks import autoencoder_checks
    from ldns_cli.nn.autoencoder import AEConfig, Autoencoder

    torch.manual_seed(0)
    ae = Autoencoder(AEConfig(n_neurons=3, latent_dim=2, width=8, blocks=1, state_dim=4)).eval()
    data = make_tiny_data(n_trials=40, n_bins=16)
    train, val = data.select(np.arange(30)), data.select(np.arange(30, 40))
    # label c1 (half the trials) is a category the gain never saw: those trials get none
    spec = {"name": "label", "kind": "categorical", "dim": 1, "values": ["c0", "c9"]}
    strong = ConditionGain((ANGLE, spec), 8.0, np.full((3, 4, 3), 3.0, np.float32))
    out = {}
    for name, gain in (("plain", None), ("gained", strong)):
        checks = autoencoder_checks(ae, train, val, "cpu", 0, ["angle"], condition_gain=gain)
        out[name] = checks["angle"]
    assert out["gained"]["autoencoder_condition_gain"]
    assert not out["plain"]["autoencoder_condition_gain"]
    assert np.isfinite(out["gained"]["autoencoder_draws"]).all()
    assert out["gained"]["autoencoder_draws"] != out["plain"]["autoencoder_draws"]


def test_the_gain_is_bounded_far_outside_the_training_range():
    from ldns_cli.diffusion.condition_gain import MAX_LOG_GAIN

    speed = {"name": "speed", "kind": "continuous", "dim": 1, "mean": [1.0], "std": [0.5]}
    gain = ConditionGain((speed,), 10.0, np.ones((1, 1, N), np.float32))  # one bump
    g = gain.log_gain({"speed": np.array([1.5, 1e6, -1e6])}, 20)
    assert np.allclose(g[0, 0], 1.0)  # one z-score at the first bump's centre
    assert g.max() == MAX_LOG_GAIN and g.min() == -MAX_LOG_GAIN


def test_feature_count_matches_the_embedding():
    from ldns_cli.diffusion.condition_gain import embed_for_gain, feature_count

    speed2 = {"name": "v", "kind": "continuous", "dim": 2, "mean": [0.0, 1.0], "std": [1.0, 2.0]}
    angle2 = {**ANGLE, "dim": 2, "min": [0.0, 0.0], "max": [6.3, 6.3]}
    cases = [
        (ANGLE, np.array([0.1, 2.0])),
        (angle2, np.zeros((2, 2))),
        (speed2, np.ones((2, 2))),
        (LABEL, np.array(["b", "c"])),
    ]
    for spec, values in cases:
        assert embed_for_gain(spec, values).shape == (2, feature_count(spec)), spec["name"]
