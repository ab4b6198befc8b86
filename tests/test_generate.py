"""Generation pipeline: reproducibility, batching, guidance, lengths, conditions, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ldns_cli.conditions.spec import check_conditions
from ldns_cli.core.checkpoint import Checkpoint
from ldns_cli.core.errors import LdnsError
from ldns_cli.diffusion.model import DiffusionConfig, DiffusionModel, denoiser_config
from ldns_cli.diffusion.sampling import SampleSettings, sample_latents
from ldns_cli.diffusion.schedule import NoiseSchedule
from ldns_cli.generate import generate
from ldns_cli.nn.autoencoder import AEConfig, Autoencoder
from ldns_cli.nn.denoiser import Denoiser
from ldns_cli.nn.observation import PoissonObservation, SpikeHistoryObservation
from ldns_cli.store import check_belongs_to_ae

Z, N = 4, 6
SPECS = [
    {"name": "angle", "kind": "circular", "dim": 1, "unit": "rad", "min": [-3.1], "max": [3.1]},
    {
        "name": "speed", "kind": "continuous", "dim": 1, "unit": "m/s", "min": [0.0],
        "max": [2.0], "mean": [1.0], "std": [0.5],
    },
    {
        "name": "vel", "kind": "timeseries", "dim": 2, "unit": "m/s", "min": [-1, -1],
        "max": [1, 1], "mean": [0, 0], "std": [0.5, 0.5],
    },
]  # fmt: skip


def _models(specs=(), prediction: str = "eps"):
    torch.manual_seed(0)
    ae = Autoencoder(AEConfig(n_neurons=N, latent_dim=Z, width=8, blocks=1, state_dim=4)).eval()
    cfg = DiffusionConfig(width=16, blocks=2, state_dim=8, prediction=prediction)
    net = Denoiser(denoiser_config(cfg, Z, list(specs), n_bins=32)).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # adaLN-Zero starts as identity: give the blocks something to do
        for block in net.blocks:
            block.modulation.weight.copy_(torch.randn(block.modulation.weight.shape, generator=gen))
            block.modulation.bias.normal_(0, 0.3, generator=gen)
    model = DiffusionModel(
        denoiser=net,
        config=cfg,
        schedule=NoiseSchedule(cfg.schedule_config()),
        latent_mean=np.linspace(-1, 1, Z).astype(np.float32),
        latent_std=np.full(Z, 0.5, np.float32),
        conditions=list(specs),
        fingerprint={"bin_size_s": 0.01, "ae_id": "x"},
    )
    return ae, model


def _gen(ae, model, lengths, **kw):
    cond = kw.pop("conditions", None)
    settings = SampleSettings(**{"steps": 5, "save_latents": True, "save_rates": True, **kw})
    return generate(ae, model, PoissonObservation(), np.asarray(lengths), settings, "cpu", cond)


def test_same_seed_same_output_other_seed_differs():
    ae, model = _models()
    a = _gen(ae, model, [12, 12, 12], seed=3)
    b = _gen(ae, model, [12, 12, 12], seed=3)
    c = _gen(ae, model, [12, 12, 12], seed=4)
    assert np.array_equal(a.counts, b.counts) and np.array_equal(a.latents, b.latents)
    assert not np.allclose(a.latents, c.latents)
    assert a.counts.shape == (3, 12, N) and a.bin_size_s == 0.01
    assert a.provenance["seed"] == "3" and a.provenance["sampler"] == "dpm++"


@pytest.mark.parametrize("sampler", ["dpm++", "ddim"])
def test_batching_and_n_do_not_change_a_trial(sampler):
    # per-trial generators + exact masking: trial i is the same whatever it is batched with
    ae, model = _models()
    lengths = [9, 17, 5, 12]
    one = _gen(ae, model, lengths, sampler=sampler, batch_size=1, seed=7)
    all_ = _gen(ae, model, lengths, sampler=sampler, batch_size=4, seed=7)
    assert np.allclose(one.latents, all_.latents, atol=1e-4)
    assert np.array_equal(one.counts, all_.counts)
    prefix = _gen(ae, model, lengths[:2], sampler=sampler, batch_size=4, seed=7)
    assert np.allclose(prefix.latents, all_.latents[:2, :17], atol=1e-4)
    assert np.array_equal(all_.lengths, lengths)
    pad = ~all_.mask()
    assert np.all(all_.counts[pad] == 0) and np.all(all_.latents[pad] == 0)


def test_history_observation_spikes_do_not_depend_on_batching():
    # spikes of the whole chunk are drawn in one call with one generator per trial
    ae, model = _models()
    obs = SpikeHistoryObservation(N, history_bins=3, max_count=3)
    with torch.no_grad():
        obs.history.fill_(-0.5)
    lengths = np.array([9, 17, 5, 12])
    runs = [
        generate(ae, model, obs, lengths, SampleSettings(steps=3, seed=2, batch_size=bs), "cpu")
        for bs in (1, 4)
    ]
    assert np.array_equal(runs[0].counts, runs[1].counts)
    assert runs[1].counts.sum() > 0 and np.all(runs[1].counts[~runs[1].mask()] == 0)


def test_ddpm_is_reproducible_for_a_batch_size():
    ae, model = _models()
    a = _gen(ae, model, [8, 8], sampler="ddpm", steps=10, seed=1)
    b = _gen(ae, model, [8, 8], sampler="ddpm", steps=10, seed=1)
    assert np.array_equal(a.latents, b.latents)


def test_lengths_never_trained_and_16x_long():
    ae, model = _models()
    out = _gen(ae, model, [1, 3, 16 * 64], steps=2, batch_size=2)
    assert out.counts.shape == (3, 1024, N)
    assert np.isfinite(out.rates).all() and (out.rates[out.mask()] >= 0).all()


def test_guidance_one_equals_conditional_and_no_condition_is_unconditional():
    _, model = _models(SPECS)
    lengths = np.array([10, 10])
    vel = np.random.default_rng(0).normal(0, 0.3, (2, 10, 2))
    cond = {"angle": np.array([0.5, 2.0]), "speed": np.array([1.0, 1.5]), "vel": vel}
    s = SampleSettings(steps=4, seed=2)
    x_w1, _ = sample_latents(model, lengths, cond, s, "cpu")
    # W = 1 through the guidance formula, computed by hand with the same noise
    net = model.denoiser

    class Guided(torch.nn.Module):
        def __init__(self, w):
            super().__init__()
            self.net, self.w, self.config = net, w, net.config

        def forward(self, x, t, mask=None, cond=None, drop_cond=None):
            c = self.net(x, t, mask, cond)
            u = self.net(x, t, mask, None)
            return u + self.w * (c - u)

    guided = DiffusionModel(**{**model.__dict__, "denoiser": Guided(1.0)})
    x_manual, _ = sample_latents(guided, lengths, cond, s, "cpu")
    assert torch.allclose(x_w1, x_manual, atol=1e-5)
    # W = 3 through the batched path == the explicit formula
    x_w3, _ = sample_latents(
        model, lengths, cond, SampleSettings(steps=4, seed=2, guidance=3), "cpu"
    )
    guided3 = DiffusionModel(**{**model.__dict__, "denoiser": Guided(3.0)})
    assert torch.allclose(x_w3, sample_latents(guided3, lengths, cond, s, "cpu")[0], atol=1e-4)
    assert not torch.allclose(x_w1, x_w3, atol=1e-3)
    # no condition -> the null path; differs from the conditional samples
    x_u, _ = sample_latents(model, lengths, None, s, "cpu")
    uncond = DiffusionModel(**{**model.__dict__, "denoiser": _NullOnly(net)})
    assert torch.allclose(x_u, sample_latents(uncond, lengths, cond, s, "cpu")[0], atol=1e-5)
    assert not torch.allclose(x_u, x_w1, atol=1e-3)


class _NullOnly(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net, self.config = net, net.config

    def forward(self, x, t, mask=None, cond=None, drop_cond=None):
        return self.net(x, t, mask, cond, torch.ones(x.shape[0], dtype=torch.bool))


def test_conditions_land_in_output_and_are_checked():
    ae, model = _models(SPECS)
    vel = np.zeros((3, 8, 2), np.float32)
    cond = {"angle": np.array([0.1, 0.2, 0.3]), "speed": np.array([1, 1, 1.0]), "vel": vel}
    warnings: list[str] = []
    checked = check_conditions(model, cond, np.array([8, 8, 8]), warn=warnings.append)
    out = _gen(ae, model, [8, 8, 8], conditions=checked)
    assert np.allclose(out.covariates["angle"], [0.1, 0.2, 0.3])
    assert out.behavior["vel"].shape == (3, 8, 2)
    assert out.variable_info["angle"].kind == "circular" and not warnings
    check_conditions(
        model, {**cond, "speed": np.array([1, 1, 9.0])}, np.array([8] * 3), warnings.append
    )
    assert len(warnings) == 1 and "speed" in warnings[0] and "training range" in warnings[0]
    # time series: only valid bins count (a far value on a padded bin is not a warning)
    far = vel.copy()
    far[0, 6:] = 50.0
    check_conditions(model, {**cond, "vel": far}, np.array([6, 8, 8]), warnings.append)
    assert len(warnings) == 1
    check_conditions(model, {**cond, "vel": far}, np.array([7, 8, 8]), warnings.append)
    assert len(warnings) == 2 and "vel" in warnings[1]
    with pytest.raises(LdnsError, match="no condition 'colour'") as exc:
        check_conditions(model, {"colour": np.ones(3)}, np.array([8] * 3))
    assert "angle" in exc.value.hint
    with pytest.raises(LdnsError, match="vel"):
        check_conditions(model, {"angle": np.ones(3)}, np.array([8] * 3))
    with pytest.raises(LdnsError, match="1 value"):
        check_conditions(model, {**cond, "speed": np.ones((3, 2))}, np.array([8] * 3))
    with pytest.raises(LdnsError, match="bins"):
        check_conditions(model, cond, np.array([8, 9, 8]))


def test_diffusion_must_belong_to_its_ae(tmp_path):
    ae_ckpt = Checkpoint(kind="ae", tensors={"model.w": torch.ones(3)})
    from ldns_cli.diffusion.model import weights_id

    check_belongs_to_ae({"ae_id": weights_id(ae_ckpt.tensors)}, ae_ckpt, tmp_path)
    other = Checkpoint(kind="ae", tensors={"model.w": torch.zeros(3)})
    with pytest.raises(LdnsError, match="different autoencoder"):
        check_belongs_to_ae({"ae_id": weights_id(ae_ckpt.tensors)}, other, tmp_path)
