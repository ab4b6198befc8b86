"""The shared training loop: schedule, EMA, best-validation weights, exact resume after Ctrl-C."""

from __future__ import annotations

import itertools
import math
import os
import signal
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from ldns_cli.core.checkpoint import load_checkpoint
from ldns_cli.fit.trainer import CheckpointSpec, TrainConfig, fit, lr_factor
from ldns_cli.nn.s4 import S4Layer


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.s4 = S4Layer(3, 4, bidirectional=True, generator=gen)
        self.lin = nn.Linear(3, 1)
        with torch.no_grad():
            self.lin.weight.copy_(torch.randn(1, 3, generator=gen))
            self.lin.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:  # x [B, L, 3] -> [B, L]
        return self.lin(self.s4(x.transpose(1, 2)).transpose(1, 2))[..., 0]


def dataset(n: int, seed: int) -> dict[str, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 10, 3, generator=gen)
    return {"x": x, "y": x.sum(-1).cumsum(-1) * 0.1}


def noisy_loss(model: nn.Module, batch: dict[str, Tensor], gen: torch.Generator) -> tuple:
    noise = 0.1 * torch.randn(batch["x"].shape, generator=gen)  # randomness the resume must replay
    loss = (model(batch["x"] + noise) - batch["y"]).square().mean()
    return loss, {"mse": float(loss.detach())}


def params(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


CFG = TrainConfig(
    epochs=3, batch_size=8, lr=1e-2, warmup_epochs=1, final_lr_frac=0.2, ema_decay=0.8, seed=3,
    checkpoint_every_s=0.0,
)  # fmt: skip


def test_lr_factor_warmup_then_cosine() -> None:
    got = [lr_factor(s, 4, 14, 0.1) for s in range(15)]
    assert got[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert got[4] == pytest.approx(1.0)
    assert got[9] == pytest.approx(0.1 + 0.9 * 0.5)  # halfway through the decay
    assert got[14] == pytest.approx(0.1)
    assert all(a >= b for a, b in itertools.pairwise(got[3:]))
    assert lr_factor(100, 4, 14, 0.1) == pytest.approx(0.1)  # stays at the floor


def test_schedule_is_applied_per_step() -> None:
    res = fit(TinyNet(), dataset(40, 0), None, noisy_loss, CFG)
    spe = 5  # 40 trials / batch 8
    for i, row in enumerate(res.history):
        step = (i + 1) * spe - 1
        assert row["lr"] == pytest.approx(CFG.lr * lr_factor(step, spe, 3 * spe, 0.2))


def test_ema_is_the_warmed_up_fixed_decay_average_of_the_weights(tmp_path: Path) -> None:
    seen: list[dict[str, Tensor]] = []

    def recording_loss(model: nn.Module, batch: dict, gen: torch.Generator) -> tuple:
        seen.append(params(model))  # weights before each step
        return noisy_loss(model, batch, gen)

    net = TinyNet()
    spec = CheckpointSpec(tmp_path / "t.safetensors", "test", {}, {})
    res = fit(net, dataset(40, 0), None, recording_loss, CFG, checkpoint=spec)
    final = load_checkpoint(spec.path, "test").subset("state.model")
    trajectory = [*seen, final]  # p_0 ... p_K
    ema = dict(trajectory[0])
    for n, p in enumerate(trajectory[1:]):
        d = min(0.8, (1 + n) / (10 + n))  # warm-up, then the fixed decay
        ema = {k: d * ema[k] + (1 - d) * p[k] for k in ema}
    for k, v in params(res.model).items():
        torch.testing.assert_close(v, ema[k], atol=1e-6, rtol=1e-5)
    assert not torch.allclose(params(res.model)["lin.weight"], final["lin.weight"])


def test_best_validation_weights_are_kept() -> None:
    scores = iter([3.0, 1.0, 2.0])
    snapshots: list[dict[str, Tensor]] = []

    def val_once_per_epoch(model: nn.Module, batch: dict, gen: torch.Generator) -> tuple:
        # one validation batch per epoch (batch_size 8 >= 6 val trials)
        snapshots.append(params(model))
        return torch.tensor(next(scores)), {}

    res = fit(
        TinyNet(), dataset(40, 0), dataset(6, 1), noisy_loss, CFG, val_loss_fn=val_once_per_epoch
    )
    assert len(snapshots) == 3 and res.best_epoch == 2 and res.best_val == pytest.approx(1.0)
    for k, v in params(res.model).items():
        assert torch.equal(v, snapshots[1][k])


# mid-epoch by Ctrl-C; at an epoch boundary by SIGTERM (torchrun's forwarded stop, preemption)
@pytest.mark.parametrize(("stop_at_call", "sig"), [(7, signal.SIGINT), (10, signal.SIGTERM)])
def test_resume_after_ctrl_c_replays_the_same_trajectory(
    tmp_path: Path, stop_at_call: int, sig: int
) -> None:
    train, val = dataset(40, 0), dataset(6, 1)
    full = fit(TinyNet(), train, val, noisy_loss, CFG)

    calls = {"n": 0}

    def interrupting_loss(model: nn.Module, batch: dict, gen: torch.Generator) -> tuple:
        if model.training:
            calls["n"] += 1
            if calls["n"] == stop_at_call:
                os.kill(os.getpid(), sig)  # as a user's Ctrl-C
        return noisy_loss(model, batch, gen)

    spec = CheckpointSpec(tmp_path / "ae.safetensors", "test", {"m": 1}, {"n_neurons": 3})
    part = fit(TinyNet(), train, val, interrupting_loss, CFG, checkpoint=spec)
    assert part.interrupted and part.steps_done == stop_at_call
    ckpt = load_checkpoint(spec.path, "test")
    assert ckpt.extra["train"]["resume"]["complete"] is False
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL

    resumed = fit(TinyNet(), train, val, noisy_loss, CFG, checkpoint=spec, resume=ckpt)
    assert not resumed.interrupted and resumed.steps_done == 15
    assert [h["train_loss"] for h in resumed.history] == pytest.approx(
        [h["train_loss"] for h in full.history], rel=1e-6
    )
    assert [h["val_loss"] for h in resumed.history] == [h["val_loss"] for h in full.history]
    for k, v in params(full.model).items():
        assert torch.equal(v, params(resumed.model)[k]), k
    done = load_checkpoint(spec.path, "test")
    assert done.extra["train"]["resume"]["complete"] is True
    assert math.isfinite(done.extra["train"]["best_val"])


def test_min_steps_adds_epochs_for_small_datasets() -> None:
    cfg = TrainConfig(epochs=1, batch_size=8, min_steps=12, warmup_epochs=0, seed=0)
    res = fit(TinyNet(), dataset(40, 0), None, noisy_loss, cfg)  # 5 steps per epoch
    assert res.epochs_done == 3 and res.steps_done == 15
    res = fit(TinyNet(), dataset(40, 0), None, noisy_loss, TrainConfig(epochs=2, batch_size=8))
    assert res.epochs_done == 2 and res.steps_done == 10


def test_stop_rule_ends_after_patience_epochs_past_the_floor() -> None:
    scores = iter([3.0, 1.0, 2.0, 2.0, 2.0, 0.5, 2.0, 2.0, 2.0, 2.0])

    def val(model: nn.Module, batch: dict, gen: torch.Generator) -> tuple:
        return torch.tensor(next(scores)), {}

    cfg = TrainConfig(epochs=10, batch_size=8, patience=2, min_steps=0, seed=0)
    res = fit(TinyNet(), dataset(40, 0), dataset(6, 1), noisy_loss, cfg, val_loss_fn=val)
    # best at epoch 2, then 2 epochs without a better loss: stop after epoch 4
    assert res.epochs_done == 4 and res.best_epoch == 2
    assert "not improved for 2 epochs" in res.stop_reason and "epoch 4" in res.stop_reason
    # the step floor comes first: 5 steps per epoch, at least 30 steps = 6 epochs
    scores = iter([3.0, 1.0, 2.0, 2.0, 2.0, 0.5, 2.0, 2.0, 2.0, 2.0])
    cfg = TrainConfig(epochs=10, batch_size=8, patience=2, min_steps=30, seed=0)
    res = fit(TinyNet(), dataset(40, 0), dataset(6, 1), noisy_loss, cfg, val_loss_fn=val)
    assert res.epochs_done == 8 and res.best_epoch == 6  # a better loss at epoch 6 resets it
    plain = fit(TinyNet(), dataset(40, 0), None, noisy_loss, TrainConfig(epochs=2, batch_size=8))
    assert plain.stop_reason.startswith("trained all 2 epochs")


_FAULTS_PER_STEP = """
import resource, sys, torch
if sys.argv[1] == "tuned":
    from ldns_cli.core.runtime import keep_freed_memory
    assert keep_freed_memory()
from ldns_cli.fit.autoencoder import ae_loss
from ldns_cli.nn.autoencoder import AEConfig, Autoencoder
torch.set_num_threads(1)
cfg = AEConfig(n_neurons=128, latent_dim=8, width=64, blocks=1, state_dim=8)
model = Autoencoder(cfg, torch.Generator().manual_seed(0))
opt = torch.optim.AdamW(model.parameters())
gen = torch.Generator().manual_seed(0)
batch = {"counts": torch.poisson(torch.full((32, 256, 128), 0.2), generator=gen)}
def step():
    loss, _ = ae_loss(model, batch, gen)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
for _ in range(8):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 4)
"""


def test_allocator_tuning_stops_per_step_page_faults() -> None:
    import subprocess
    import sys

    from ldns_cli.core.runtime import keep_freed_memory

    if not keep_freed_memory():
        pytest.skip("not glibc: allocator tuning is a no-op here")

    def faults_per_step(mode: str) -> float:
        out = subprocess.run(
            [sys.executable, "-c", _FAULTS_PER_STEP, mode],
            capture_output=True, text=True, check=True, timeout=120,
        )  # fmt: skip
        return float(out.stdout.strip().splitlines()[-1])

    # 2–4 MB activations: glibc mmaps them afresh each step by default (thousands of page faults
    # per step); with the tuning the freed blocks are reused (at most one 1 MB block re-faults)
    default, tuned = faults_per_step("default"), faults_per_step("tuned")
    assert default > 200
    assert tuned < 0.25 * default  # measured: 0.25–257 against 2.3k–6.7k


def test_a_stop_event_ends_training_after_the_current_step() -> None:
    import threading

    stop = threading.Event()

    def stopping_loss(model: nn.Module, batch: dict[str, Tensor], gen: torch.Generator) -> tuple:
        stop.set()  # as if another thread asked during the first step
        return noisy_loss(model, batch, gen)

    result = fit(TinyNet(), dataset(32, 0), None, stopping_loss, CFG, stop=stop)
    assert result.interrupted and result.steps_done == 1
    ran = fit(TinyNet(), dataset(32, 0), None, noisy_loss, CFG, stop=threading.Event())
    assert not ran.interrupted and ran.steps_done == 3 * 4  # 3 epochs of 32 / 8 trials
