"""Latent calibration: the per-channel moment map, its fit on sampled latents, and its use."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ldns_cli.fit.diffusion as fit_diffusion_module
from ldns_cli.diffusion.calibration import (
    LatentCalibration,
    MomentAccumulator,
    calibration_key,
    load_calibrations,
    parse_calibration_key,
    resolve_calibration,
)
from ldns_cli.diffusion.model import DiffusionConfig, DiffusionModel, denoiser_config
from ldns_cli.diffusion.sampling import SampleSettings, calibration_label, sample_latents
from ldns_cli.diffusion.schedule import NoiseSchedule
from ldns_cli.fit.diffusion import fit_latent_calibrations, pick_calibration_trials
from ldns_cli.nn.denoiser import Denoiser

Z = 3
ANGLE = [{"name": "angle", "kind": "circular", "dim": 1, "unit": "rad", "min": [-3.1],
          "max": [3.1]}]  # fmt: skip


def _model(specs=()) -> DiffusionModel:
    torch.manual_seed(0)
    cfg = DiffusionConfig(width=8, blocks=1, state_dim=4, prediction="v")
    net = Denoiser(denoiser_config(cfg, Z, list(specs), n_bins=24)).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # adaLN-Zero starts as identity: give the block something to do
        for block in net.blocks:
            block.modulation.weight.copy_(torch.randn(block.modulation.weight.shape, generator=gen))
    return DiffusionModel(
        denoiser=net,
        config=cfg,
        schedule=NoiseSchedule(cfg.schedule_config()),
        latent_mean=np.zeros(Z, np.float32),
        latent_std=np.ones(Z, np.float32),
        conditions=list(specs),
        fingerprint={"bin_size_s": 0.01, "ae_id": "x"},
    )


def _masked_moments(x: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    v = x[mask].astype(np.float64)
    return v.mean(0), v.std(0)


def _training_set(n_trials: int = 30, n_bins: int = 24, seed: int = 0):
    """Normalised 'training latents' with known moments per channel, variable lengths."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(10, n_bins + 1, n_trials)
    mask = np.arange(n_bins)[None, :] < lengths[:, None]
    latents = rng.normal([0.3, -0.2, 0.0], [1.2, 0.8, 1.0], size=(n_trials, n_bins, Z))
    latents = (latents * mask[:, :, None]).astype(np.float32)
    train = np.ones(n_trials, bool)
    train[::5] = False  # validation trials: not part of the target
    return latents, mask, train


def test_moment_map_gives_target_moments_and_keeps_padding_zero():
    rng = np.random.default_rng(0)
    x = rng.normal([1.0, -2.0, 0.5], [0.5, 2.0, 0.1], size=(7, 11, Z))
    mask = np.arange(11)[None, :] < rng.integers(3, 12, 7)[:, None]
    acc = MomentAccumulator(Z)
    acc.add(x[:3], mask[:3])  # chunked accumulation = the masked moments of everything
    acc.add(x[3:], mask[3:])
    mean, std = acc.moments()
    ref_mean, ref_std = _masked_moments(x, mask)
    assert np.allclose(mean, ref_mean) and np.allclose(std, ref_std)
    target = (np.array([0.0, 0.1, -0.3]), np.array([1.0, 0.9, 1.1]))
    cal = LatentCalibration.from_moments((mean, std), target)
    out = cal.apply(torch.from_numpy(x), torch.from_numpy(mask)).numpy()
    got_mean, got_std = _masked_moments(out, mask)
    assert np.allclose(got_mean, target[0], atol=1e-12)
    assert np.allclose(got_std, target[1], atol=1e-12)
    assert np.all(out[~mask] == 0)
    # stored as float32 tensors under its sampler setting, read back as the same map
    tensors = {"model.w": torch.zeros(1), **cal.tensors()}
    other = LatentCalibration.from_moments((mean, std), target, "ddpm", 1000)
    tensors.update(other.tensors())
    back = load_calibrations(tensors)
    assert sorted(back) == ["ddpm/1000", "dpm++/20"]
    assert np.allclose(back["dpm++/20"].scale, cal.scale, rtol=1e-6)
    assert np.allclose(back["dpm++/20"].shift, cal.shift, atol=1e-6)
    assert back["ddpm/1000"].sampler == "ddpm" and back["ddpm/1000"].steps == 1000
    # refitting a setting replaces its tensors (same keys), the other setting stays
    refit = LatentCalibration.from_moments((mean, 2 * std), target, "ddpm", 1000)
    tensors.update(refit.tensors())
    again = load_calibrations(tensors)
    assert np.allclose(again["ddpm/1000"].scale, refit.scale, rtol=1e-6)
    assert np.allclose(again["dpm++/20"].scale, cal.scale, rtol=1e-6)
    assert load_calibrations({"model.w": torch.zeros(1)}) == {}
    # a channel the sampler left constant is shifted, not divided by its zero std
    flat = LatentCalibration.from_moments((np.zeros(Z), np.array([1.0, 0.0, 1.0])), target)
    assert flat.scale[1] == 1.0 and np.isfinite(flat.scale).all()


def test_calibration_trials_are_training_trials_and_seeded():
    train_index = np.array([0, 2, 3, 7, 9])
    a, seed_a = pick_calibration_trials(train_index, 4, seed=0)
    b, seed_b = pick_calibration_trials(train_index, 4, seed=0)
    c, _ = pick_calibration_trials(train_index, 12, seed=0)  # more than there are: with replacement
    assert np.array_equal(a, b) and seed_a == seed_b
    assert len(set(a.tolist())) == 4 and set(a) <= set(train_index)
    assert len(c) == 12 and set(c) <= set(train_index)
    assert pick_calibration_trials(train_index, 4, seed=1)[1] != seed_a


@pytest.mark.parametrize("specs", [(), ANGLE])
def test_fitted_calibration_maps_the_samplers_own_draws_onto_the_training_moments(specs):
    """Oracle: re-drawing the calibration's samples with the calibration applied gives exactly
    the training latents' per-channel moments; other seeds land close to them."""
    model = _model(specs)
    latents, mask, train = _training_set()
    angles = np.linspace(-3, 3, latents.shape[0])
    values = {"angle": angles} if specs else {}
    [(cal, summary)] = fit_latent_calibrations(
        model, latents, mask, train, values, n_trials=40, seed=3, device="cpu", batch_size=16
    )
    target = _masked_moments(latents[train], mask[train])
    assert np.allclose(summary["target_mean"], target[0]) and summary["trials"] == 40
    assert np.allclose(summary["target_std"], target[1])
    # the untrained network's samples are far from the targets, so the map is not trivial
    assert np.max(np.abs(np.log(cal.scale))) > 0.05

    picked, sample_seed = pick_calibration_trials(np.flatnonzero(train), 40, seed=3)
    lengths = mask[picked].sum(1)
    conds = {"angle": angles[picked]} if specs else None
    assert cal.key == "dpm++/20"
    model.calibrations = {cal.key: cal}
    settings = SampleSettings(seed=sample_seed)
    x0, m = sample_latents(model, lengths, conds, settings, "cpu")
    got = _masked_moments(x0.numpy(), m.numpy())
    assert np.allclose(got[0], target[0], atol=1e-4) and np.allclose(got[1], target[1], rtol=1e-4)
    assert calibration_label(model, settings) == "applied (dpm++ 20 steps)"
    # another sampler setting has no calibration: its draws are the raw network's
    other = SampleSettings(seed=sample_seed, steps=5)
    assert calibration_label(model, other) == "none for dpm++ 5 steps"
    raw5, _ = sample_latents(model, lengths, conds, other, "cpu")
    raw5_off, _ = sample_latents(model, lengths, conds, SampleSettings(seed=sample_seed, steps=5,
                                 calibrate=False), "cpu")  # fmt: skip
    assert torch.equal(raw5, raw5_off)
    # switched off: the raw network's draws, which the summary recorded
    raw, _ = sample_latents(
        model, lengths, conds, SampleSettings(seed=sample_seed, calibrate=False), "cpu"
    )
    raw_moments = _masked_moments(raw.numpy(), m.numpy())
    assert np.allclose(raw_moments[1], summary["sampled_std"], rtol=1e-4)
    assert np.allclose(cal.apply(raw, m).numpy(), x0.numpy(), atol=1e-5)
    # fresh draws (another seed) of the calibrated sampler: moments near the target
    x1, m1 = sample_latents(model, np.full(40, 24), conds, SampleSettings(seed=11), "cpu")
    mean1, std1 = _masked_moments(x1.numpy(), m1.numpy())
    assert np.all(np.abs(mean1 - target[0]) < 0.25) and np.all(
        np.abs(np.log(std1 / target[1])) < 0.15
    )


def test_calibration_keys_carry_the_guidance_weight_and_round_trip():
    assert calibration_key("dpm++", 20) == "dpm++/20"  # W = 1 keeps the plain key
    assert calibration_key("dpm++", 20, 1.5) == "dpm++/20@w1.5"
    assert parse_calibration_key("dpm++/20@w1.5") == ("dpm++", 20, 1.5)
    assert parse_calibration_key("ddpm/1000") == ("ddpm", 1000, 1.0)
    for junk in ("dpm++", "dpm++/x", "/20", "dpm++/20@wx", "dpm++/20@w-1", "dpm++/20@wnan"):
        assert parse_calibration_key(junk) is None
    one = LatentCalibration(np.ones(Z), np.zeros(Z))
    two = LatentCalibration(np.full(Z, 0.5), np.full(Z, 0.2), guidance=2.0)
    back = load_calibrations({**one.tensors(), **two.tensors()})
    assert sorted(back) == ["dpm++/20", "dpm++/20@w2"]
    assert back["dpm++/20@w2"].guidance == 2.0 and back["dpm++/20"].guidance == 1.0
    assert np.allclose(back["dpm++/20@w2"].scale, 0.5)


def test_resolve_calibration_exact_interpolated_nearest_and_per_setting():
    cals = {
        c.key: c
        for c in (
            LatentCalibration(np.full(Z, 1.0), np.zeros(Z)),
            LatentCalibration(np.full(Z, 0.9), np.full(Z, 0.1), guidance=2.0),
            LatentCalibration(np.full(Z, 0.7), np.full(Z, 0.3), guidance=3.0),
            LatentCalibration(np.full(Z, 2.0), np.zeros(Z), "ddim", 5),
        )
    }
    cal, how = resolve_calibration(cals, "dpm++", 20, 2.0)
    assert how == "fitted at W=2" and np.allclose(cal.scale, 0.9)
    cal, how = resolve_calibration(cals, "dpm++", 20, 1.5)  # halfway between W = 1 and 2
    assert how == "interpolated between W=1 and W=2"
    assert np.allclose(cal.scale, 0.95) and np.allclose(cal.shift, 0.05) and cal.guidance == 1.5
    cal, how = resolve_calibration(cals, "dpm++", 20, 5.0)  # beyond the grid: the nearest
    assert "nearest" in how and np.allclose(cal.scale, 0.7)
    cal, _ = resolve_calibration(cals, "dpm++", 20, 0.5)
    assert np.allclose(cal.scale, 1.0)
    # another setting fitted at W = 1 only serves every weight with that map
    cal, how = resolve_calibration(cals, "ddim", 5, 2.5)
    assert np.allclose(cal.scale, 2.0) and cal.sampler == "ddim"
    assert resolve_calibration(cals, "ddpm", 1000, 1.0) is None


def test_guided_calibration_maps_draws_at_the_weight_onto_the_training_moments():
    """Oracle: when the paired subset is every calibration trial, the weight's estimated
    moments are its draws' own, so redrawing at W with the map gives the training moments
    exactly; W = 1's map is the one an unguided fit gives, and unguided draws keep it."""
    model = _model(ANGLE)
    latents, mask, train = _training_set()
    angles = np.linspace(-3, 3, latents.shape[0])
    fitted = fit_latent_calibrations(
        model, latents, mask, train, {"angle": angles}, n_trials=40, seed=3, device="cpu",
        batch_size=16, guidances=(1.0, 2.0),
    )  # fmt: skip
    assert [c.key for c, _ in fitted] == ["dpm++/20", "dpm++/20@w2"]
    [(alone, _)] = fit_latent_calibrations(
        model, latents, mask, train, {"angle": angles}, n_trials=40, seed=3, device="cpu",
        batch_size=16,
    )  # fmt: skip
    assert np.array_equal(alone.scale, fitted[0][0].scale)
    assert fitted[1][1]["guidance"] == 2.0 and fitted[1][1]["trials"] == 40
    # guidance changes the draws here, so the two maps differ
    assert np.max(np.abs(fitted[1][0].scale - fitted[0][0].scale)) > 1e-3
    target = _masked_moments(latents[train], mask[train])
    picked, sample_seed = pick_calibration_trials(np.flatnonzero(train), 40, seed=3)
    lengths = mask[picked].sum(1)
    model.calibrations = {c.key: c for c, _ in fitted}
    settings = SampleSettings(seed=sample_seed, guidance=2.0)
    x0, m = sample_latents(model, lengths, {"angle": angles[picked]}, settings, "cpu")
    got = _masked_moments(x0.numpy(), m.numpy())
    assert np.allclose(got[0], target[0], atol=1e-4) and np.allclose(got[1], target[1], rtol=1e-4)
    assert calibration_label(model, settings) == "applied (dpm++ 20 steps, fitted at W=2)"
    # without conditions the weight does not apply: W = 1's map
    assert calibration_label(model, settings, guided=False) == (
        "applied (dpm++ 20 steps, fitted at W=1)"
    )
    raw, _ = sample_latents(model, lengths, None, SampleSettings(seed=1, calibrate=False), "cpu")
    cal, _ = sample_latents(model, lengths, None, SampleSettings(seed=1, guidance=2.0), "cpu")
    assert torch.allclose(fitted[0][0].apply(raw, m), cal, atol=1e-5)
    # an unconditional fit ignores the weights
    unconditional = fit_latent_calibrations(
        _model(), latents, mask, train, {}, n_trials=20, seed=3, device="cpu", batch_size=16,
        guidances=(1.0, 2.0),
    )  # fmt: skip
    assert [c.key for c, _ in unconditional] == ["dpm++/20"]


def test_guided_calibration_from_a_paired_subset_is_close_to_all_draws(monkeypatch):
    """With fewer paired trials than calibration trials, the weight's moments are W = 1's moved
    by the paired change: close to those of all draws at the weight, closer than the subset's
    own moments."""
    monkeypatch.setattr(fit_diffusion_module, "GUIDED_CALIBRATION_TRIALS", 12)
    model = _model(ANGLE)
    latents, mask, train = _training_set(n_trials=80)
    angles = np.linspace(-3, 3, latents.shape[0])
    kwargs = dict(n_trials=60, seed=3, device="cpu", batch_size=32)
    fitted = fit_latent_calibrations(
        model, latents, mask, train, {"angle": angles}, guidances=(3.0,), **kwargs
    )
    summary = fitted[1][1]
    assert summary["trials"] == 12 and summary["guidance"] == 3.0
    picked, sample_seed = pick_calibration_trials(np.flatnonzero(train), 60, seed=3)
    lengths = mask[picked].sum(1)
    settings = SampleSettings(seed=sample_seed, guidance=3.0, calibrate=False)
    every, m = sample_latents(model, lengths, {"angle": angles[picked]}, settings, "cpu")
    truth = _masked_moments(every.numpy(), m.numpy())[1]
    estimate = np.asarray(summary["sampled_std"])
    assert np.max(np.abs(estimate / truth - 1)) < 0.03
    # the paired trials' own moments (the same choice of positions) are much further off
    paired = fit_diffusion_module.pick_paired_trials(60, seed=3)
    assert len(paired) == 12
    own = _masked_moments(every.numpy()[paired], m.numpy()[paired])[1]
    assert np.max(np.abs(estimate / truth - 1)) < np.max(np.abs(own / truth - 1)) / 3
