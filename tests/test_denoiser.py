"""Denoiser: shapes, adaLN-Zero identity at init, masking, conditioning, kernel caching."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from ldns_cli.core.config import config_to_dict
from ldns_cli.nn.denoiser import CondInput, Denoiser, DenoiserConfig, timestep_features
from ldns_cli.nn.s4 import cached_kernels

CONDS = (
    CondInput("angle", "vector", dim=2),
    CondInput("maze", "categorical", n_classes=3),
    CondInput("vel", "series", dim=2),
)


def _model(conditions=(), seed: int = 0, perturb: bool = True) -> Denoiser:
    torch.manual_seed(seed)  # nn.Linear's default init uses the global RNG
    cfg = DenoiserConfig(latent_dim=4, width=16, blocks=2, state_dim=8, conditions=conditions)
    model = Denoiser(cfg).eval()
    if perturb:
        # adaLN-Zero starts as the identity; give the gates weight so every path matters
        gen = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for block in model.blocks:
                block.modulation.weight.copy_(
                    torch.randn(block.modulation.weight.shape, generator=gen) * 0.3
                )
                block.modulation.bias.copy_(
                    torch.randn(block.modulation.bias.shape, generator=gen) * 0.3
                )
    return model


def _cond(b: int, n_bins: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    ang = torch.rand(b, generator=gen) * 6.28
    return {
        "angle": torch.stack([ang.cos(), ang.sin()], dim=-1),
        "maze": torch.randint(0, 3, (b,), generator=gen),
        "vel": torch.randn(b, n_bins, 2, generator=gen),
    }


@pytest.mark.parametrize("n_bins", [1, 7, 33])
def test_shapes_any_length(n_bins):
    model = _model(CONDS)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, n_bins, 4, generator=gen)
    t = torch.tensor([0, 500, 999])
    assert model(x, t).shape == (3, n_bins, 4)
    out = model(x, t, cond=_cond(3, n_bins, gen))
    assert out.shape == (3, n_bins, 4) and torch.isfinite(out).all()


def test_adaln_zero_blocks_start_as_identity():
    model = _model(perturb=False)
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(2, 16, 11, generator=gen)
    e = torch.randn(2, 4, generator=gen)
    for block in model.blocks:
        assert torch.equal(block(h, e, None), h)
    # with identity blocks the network is linear in conv_out: scaling it by 0.1 at init scales
    # the first prediction by exactly 0.1
    x = torch.randn(2, 11, 4, generator=gen)
    t = torch.tensor([3, 4])
    torch.manual_seed(0)
    cfg = dataclasses.replace(model.config, conv_out_scale=1.0)
    unscaled = Denoiser(cfg)
    assert torch.allclose(model(x, t), 0.1 * unscaled(x, t), atol=1e-6)


def test_padding_never_leaks_and_matches_unpadded():
    model = _model(CONDS)
    gen = torch.Generator().manual_seed(1)
    b, n_bins = 3, 20
    lengths = torch.tensor([20, 13, 5])
    mask = torch.arange(n_bins)[None, :] < lengths[:, None]
    x = torch.randn(b, n_bins, 4, generator=gen)
    cond = _cond(b, n_bins, gen)
    t = torch.tensor([10, 300, 900])
    out = model(x, t, mask, cond)
    # garbage in the padding (latents and the velocity series) changes nothing on valid bins
    x2 = torch.where(mask[:, :, None], x, torch.randn(x.shape, generator=gen) * 100)
    cond2 = dict(cond, vel=torch.where(mask[:, :, None], cond["vel"], 1e3))
    out2 = model(x2, t, mask, cond2)
    assert torch.allclose(out[mask], out2[mask], atol=1e-5)
    assert torch.all(out2[~mask] == 0)
    # ... and each trial gives what it gives alone, unpadded
    for i, n in enumerate(lengths.tolist()):
        alone = model(
            x[i : i + 1, :n],
            t[i : i + 1],
            cond={k: (v[i : i + 1, :n] if k == "vel" else v[i : i + 1]) for k, v in cond.items()},
        )
        assert torch.allclose(out[i, :n], alone[0], atol=1e-4)


def test_conditions_change_the_output_and_drop_gives_unconditional():
    model = _model(CONDS)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(4, 12, 4, generator=gen)
    t = torch.full((4,), 250)
    cond = _cond(4, 12, gen)
    uncond = model(x, t)
    full = model(x, t, cond=cond)
    assert not torch.allclose(full, uncond, atol=1e-4)
    for name in cond:  # each condition on its own moves the output
        only = model(x, t, cond={name: cond[name]})
        assert not torch.allclose(only, uncond, atol=1e-4), name
    other = _cond(4, 12, torch.Generator().manual_seed(99))
    assert not torch.allclose(model(x, t, cond=other), full, atol=1e-4)
    # dropped conditions == no conditions (the null path), per trial
    drop = torch.tensor([True, False, True, False])
    mixed = model(x, t, cond=cond, drop_cond=drop)
    assert torch.allclose(mixed[drop], uncond[drop], atol=1e-6)
    assert torch.allclose(mixed[~drop], full[~drop], atol=1e-6)


def test_time_embedding_is_sinusoidal_and_matters():
    feats = timestep_features(torch.tensor([0.0, 5.0]), 8)
    assert torch.allclose(feats[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    freqs = torch.exp(-torch.log(torch.tensor(1e4)) * torch.arange(4) / 4)
    assert torch.allclose(feats[1, :4], torch.cos(5 * freqs))
    model = _model()
    x = torch.randn(2, 9, 4, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(model(x, torch.tensor([1, 1])), model(x, torch.tensor([800, 800])))


def test_cached_kernels_identical():
    model = _model(CONDS)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 17, 4, generator=gen)
    t = torch.tensor([5, 600])
    cond = _cond(2, 17, gen)
    with torch.no_grad():
        ref = model(x, t, cond=cond)
        with cached_kernels(model):
            first = model(x, t, cond=cond)
            second = model(x, t, cond=cond)
    assert torch.equal(first, second)
    assert torch.allclose(ref, first, atol=1e-6)


def test_config_round_trip_rebuilds_same_model():
    model = _model(CONDS)
    d = config_to_dict(model.config)
    cfg = DenoiserConfig.from_dict(d)
    assert cfg == model.config
    twin = Denoiser(cfg)
    twin.load_state_dict(model.state_dict(), strict=True)
    x = torch.randn(1, 5, 4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(twin(x, torch.tensor([3])), model(x, torch.tensor([3])))
    with pytest.raises(ValueError):
        dataclasses.replace(model.config, width=18)


def test_per_condition_drop_equals_leaving_that_condition_out():
    model = _model(CONDS)
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(3, 10, 4, generator=gen)
    t = torch.tensor([100, 200, 300])
    cond = _cond(3, 10, gen)
    drop = {"angle": torch.tensor([True, False, False]), "vel": torch.tensor([True] * 3)}
    out = model(x, t, cond=cond, drop_cond=drop)
    without = model(x, t, cond={"maze": cond["maze"]})
    assert torch.allclose(out[0], without[0], atol=1e-6)
    without_vel = model(x, t, cond={"maze": cond["maze"], "angle": cond["angle"]})
    assert torch.allclose(out[1:], without_vel[1:], atol=1e-6)


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_diffusion_loss_is_zero_for_the_oracle_and_masked(prediction):
    from ldns_cli.diffusion.model import DiffusionConfig
    from ldns_cli.diffusion.schedule import NoiseSchedule
    from ldns_cli.fit.diffusion import diffusion_loss

    cfg = DiffusionConfig(prediction=prediction)
    schedule = NoiseSchedule(cfg.schedule_config())
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 12, 3, generator=gen)
    mask = torch.arange(12)[None, :] < torch.tensor([12, 7, 3, 12])[:, None]

    class Oracle(torch.nn.Module):
        """Knows x_0, so returns the exact ε (or v) of x_t: the loss must be 0."""

        def forward(self, x_t, t, mask=None, cond=None, drop_cond=None):
            a = schedule.alpha_cumprod(t).float()[:, None, None]
            eps = (x_t - a.sqrt() * x0) / (1 - a).sqrt()
            return eps if prediction == "eps" else a.sqrt() * eps - (1 - a).sqrt() * x0

    batch = {"x": x0, "mask": mask}
    loss, _ = diffusion_loss(Oracle(), batch, schedule, cfg, torch.Generator().manual_seed(1))
    assert float(loss) < 1e-8

    class Zero(torch.nn.Module):
        def forward(self, x_t, t, mask=None, cond=None, drop_cond=None):
            return torch.zeros_like(x_t)

    # padding content never enters the loss
    batch2 = {"x": torch.where(mask[:, :, None], x0, 50.0), "mask": mask}
    a, _ = diffusion_loss(Zero(), batch, schedule, cfg, torch.Generator().manual_seed(1))
    b, _ = diffusion_loss(Zero(), batch2, schedule, cfg, torch.Generator().manual_seed(1))
    assert torch.allclose(a, b)


def test_kernel_bins_caps_every_s4_layer_and_changes_only_longer_inputs():
    global_model = _model()
    capped_cfg = dataclasses.replace(global_model.config, kernel_bins=12)
    capped = Denoiser(capped_cfg).eval()
    capped.load_state_dict(global_model.state_dict(), strict=True)
    assert [b.s4.max_kernel_bins for b in capped.blocks] == [12, 12]
    assert [b.s4.max_kernel_bins for b in global_model.blocks] == [None, None]
    gen = torch.Generator().manual_seed(5)
    t = torch.tensor([400, 20])
    with torch.no_grad():
        short = torch.randn(2, 12, 4, generator=gen)  # within the cap: identical
        torch.testing.assert_close(capped(short, t), global_model(short, t), atol=1e-5, rtol=0)
        long = torch.randn(2, 64, 4, generator=gen)  # beyond it: a shorter receptive field
        assert not torch.allclose(capped(long, t), global_model(long, t), atol=1e-3)


def test_conditional_fits_get_the_larger_step_floor_unless_told_otherwise(tmp_path):
    """The default preset's step floor becomes CONDITIONAL_MIN_STEPS for a conditional model
    (named by flag or by config file); --epochs drops the floor and a config file's min_steps
    wins; presets without a floor keep none."""
    import json

    from ldns_cli.fit.diffusion import CONDITIONAL_MIN_STEPS, resolve_diffusion_configs

    floor = resolve_diffusion_configs()[1].min_steps
    assert 0 < floor < CONDITIONAL_MIN_STEPS
    angle = {"conditions": ("angle",)}
    assert resolve_diffusion_configs(overrides=angle)[1].min_steps == CONDITIONAL_MIN_STEPS
    in_file = tmp_path / "cond.json"
    in_file.write_text(json.dumps({"conditions": ["angle"]}))
    assert resolve_diffusion_configs(config_file=in_file)[1].min_steps == CONDITIONAL_MIN_STEPS
    assert resolve_diffusion_configs(overrides={**angle, "epochs": 5})[1].min_steps == 0
    floor = tmp_path / "floor.json"
    floor.write_text(json.dumps({"min_steps": 1500}))
    assert resolve_diffusion_configs(config_file=floor, overrides=angle)[1].min_steps == 1500
    assert resolve_diffusion_configs("lorenz", overrides=angle)[1].min_steps == 0
