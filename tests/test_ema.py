"""EMA of parameters: closed-form average, warm-up, swapping, safetensors round trip."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ldns_cli.core.errors import LdnsError
from ldns_cli.fit.ema import EMA


def tiny_model(seed: int = 0) -> nn.Module:
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # explicit generator, not the global RNG the default init uses
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    model[2].bias.requires_grad_(False)  # frozen: not tracked
    return model


def set_all(model: nn.Module, value: float) -> None:
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.fill_(value)


def test_fixed_decay_matches_closed_form():
    model = tiny_model()
    set_all(model, 0.0)
    d = 0.9
    ema = EMA(model, decay=d, warmup=False)
    values = [1.0, -2.0, 3.0, 0.5]
    for v in values:
        set_all(model, v)
        ema.update(model)
    # shadow_k = d^k·p_0 + Σ_i (1-d)·d^(k-i)·p_i with p_0 = 0
    k = len(values)
    want = sum((1 - d) * d ** (k - i) * v for i, v in enumerate(values, start=1))
    for name, shadow in ema.shadow.items():
        torch.testing.assert_close(shadow, torch.full_like(shadow, want), msg=name)
    assert ema.num_updates == k


def test_warmup_decay_sequence_and_cap():
    ema = EMA(tiny_model(), decay=0.999, warmup=True)
    seen = []
    for _ in range(3):
        seen.append(ema.current_decay())
        ema.num_updates += 1
    assert seen == pytest.approx([1 / 10, 2 / 11, 3 / 12])
    ema.num_updates = 8990  # (1+n)/(10+n) reaches 0.999 at n ≈ 8990
    assert ema.current_decay() == pytest.approx(0.999, abs=2e-7)
    ema.num_updates = 10**6
    assert ema.current_decay() == 0.999
    assert EMA(tiny_model(), decay=0.99, warmup=False).current_decay() == 0.99


def test_tracks_trainable_parameters_only():
    model = tiny_model()
    ema = EMA(model)
    assert "2.bias" not in ema.shadow  # frozen parameter
    assert not any("running_mean" in k for k in ema.shadow)  # buffers are not averaged
    assert set(ema.shadow) == {n for n, p in model.named_parameters() if p.requires_grad}


def test_copy_to_and_swapped_in_restore_training_weights():
    model = tiny_model()
    set_all(model, 1.0)
    ema = EMA(model, decay=0.5, warmup=False)
    set_all(model, 3.0)
    ema.update(model)  # shadow = 0.5·1 + 0.5·3 = 2
    x = torch.ones(2, 3)
    model.eval()
    with ema.swapped_in(model):
        assert all(float(p.detach().mean()) == 2.0 for p in model.parameters() if p.requires_grad)
        swapped_out = model(x)
    assert all(float(p.detach().mean()) == 3.0 for p in model.parameters() if p.requires_grad)
    with pytest.raises(RuntimeError), ema.swapped_in(model):
        raise RuntimeError("boom")
    assert all(float(p.detach().mean()) == 3.0 for p in model.parameters() if p.requires_grad)
    ema.copy_to(model)
    torch.testing.assert_close(model(x), swapped_out)


def test_state_dict_round_trips_through_safetensors(tmp_path):
    model = tiny_model()
    ema = EMA(model, decay=0.99)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=gen))
        ema.update(model)
    state = ema.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    path = tmp_path / "ema.safetensors"
    save_file({f"ema.{k}": v for k, v in state.items()}, str(path))
    loaded = {k.removeprefix("ema."): v for k, v in load_file(str(path)).items()}
    other = EMA(tiny_model(seed=1), decay=0.99)
    other.load_state_dict(loaded)
    assert other.num_updates == 5
    for k in ema.shadow:
        assert torch.equal(other.shadow[k], ema.shadow[k])


def test_load_state_dict_rejects_other_architectures():
    ema = EMA(tiny_model())
    state = ema.state_dict()
    with pytest.raises(LdnsError, match="does not match"):
        ema.load_state_dict({**state, "extra.weight": torch.zeros(1)})
    bad = dict(state)
    bad["0.weight"] = torch.zeros(5, 5)
    with pytest.raises(LdnsError, match="shape"):
        ema.load_state_dict(bad)
    with pytest.raises(LdnsError, match="decay"):
        EMA(tiny_model(), decay=1.0)


def test_half_precision_parameters_are_averaged_in_float32():
    model = nn.Linear(2, 2).to(torch.bfloat16)
    ema = EMA(model, decay=0.999, warmup=False)
    assert all(v.dtype == torch.float32 for v in ema.shadow.values())
    start = ema.shadow["weight"].clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    for _ in range(10):
        ema.update(model)
    # 10 tiny steps of 0.1% each must accumulate (they would round away in bf16)
    moved = (ema.shadow["weight"] - start).mean().item()
    assert moved == pytest.approx(1 - 0.999**10, rel=0.02)
