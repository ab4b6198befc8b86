"""Autoencoder: shapes, padding never leaks, decoder locality/additivity, objective, checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ldns_cli.core.checkpoint import Checkpoint, save_checkpoint
from ldns_cli.core.data import SpikeData
from ldns_cli.core.errors import LdnsError
from ldns_cli.fit.autoencoder import (
    PoissonNLLFromLogits,
    ae_loss,
    bits_per_spike,
    calibrate_rate_bias,
    latent_penalty,
    mean_poisson_nll,
)
from ldns_cli.nn.autoencoder import AEConfig, Autoencoder, infer
from ldns_cli.nn.layers import masked_instance_norm
from ldns_cli.store import AE_KIND, ae_path, load_autoencoder

N, Z = 12, 4


def tiny(bidirectional: bool = True, **kw: object) -> Autoencoder:
    cfg = AEConfig(
        n_neurons=N, latent_dim=Z, width=16, blocks=2, state_dim=8,
        bidirectional=bidirectional, **kw,
    )  # fmt: skip
    return Autoencoder(cfg, torch.Generator().manual_seed(0)).eval()


def counts(b: int, length: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.poisson(torch.full((b, length, N), 0.5), generator=gen)


@pytest.mark.parametrize("length", [1, 7, 64, 129])
def test_shapes_for_any_length(length: int) -> None:
    model = tiny()
    with torch.no_grad():
        z = model.encode(counts(2, length))
        rates = model.decode(z)
        rates2, z2 = model(counts(2, length))
    assert z.shape == (2, length, Z) and rates.shape == (2, length, N)
    assert rates2.shape == rates.shape and z2.shape == z.shape
    assert (rates > 0).all()


def test_masked_instance_norm_matches_instance_norm_on_valid_bins() -> None:
    x = torch.randn(3, 5, 20)
    mask = torch.zeros(3, 20, dtype=torch.bool)
    lengths = [20, 11, 3]
    for i, n in enumerate(lengths):
        mask[i, :n] = True
    x_pad = x.clone()
    x_pad[~mask[:, None, :].expand_as(x)] = float("nan")  # padding may hold anything
    y = masked_instance_norm(x_pad, mask)
    for i, n in enumerate(lengths):
        ref = F.instance_norm(x[i : i + 1, :, :n], eps=1e-5)
        torch.testing.assert_close(y[i : i + 1, :, :n], ref, atol=1e-5, rtol=1e-5)
        assert (y[i, :, n:] == 0).all()


@pytest.mark.parametrize("bidirectional", [True, False])
def test_padding_does_not_leak_into_valid_bins(bidirectional: bool) -> None:
    model = tiny(bidirectional)
    valid = counts(1, 30, seed=3)  # one trial, 30 valid bins
    with torch.no_grad():
        z_ref = model.encode(valid)
        outs = []
        for pad_len, fill in [(0, 0.0), (5, 7.0), (40, 3.0), (97, 0.0)]:
            x = torch.cat([valid, torch.full((1, pad_len, N), fill)], dim=1)
            mask = torch.zeros(1, 30 + pad_len, dtype=torch.bool)
            mask[:, :30] = True
            z = model.encode(x, mask)
            assert (z[:, 30:] == 0).all()
            outs.append(z[:, :30])
    for z in outs:
        torch.testing.assert_close(z, z_ref, atol=2e-5, rtol=1e-4)


def test_decoder_is_time_local_and_additive_over_latents() -> None:
    model = tiny()
    gen = torch.Generator().manual_seed(5)
    z = torch.randn(1, 10, Z, generator=gen)
    with torch.no_grad():
        r = model.decode(z)
        z2 = z.clone()
        z2[:, 4] += 3.0  # change one bin only
        r2 = model.decode(z2)
    changed = (r - r2).abs().amax(dim=(0, 2)) > 0
    assert changed.tolist() == [t == 4 for t in range(10)]

    def pre(zz: torch.Tensor) -> torch.Tensor:  # inverse softplus of the rates
        r = model.decode(zz)
        return r + torch.log(-torch.expm1(-r))

    a, b = torch.randn(2, 1, 1, Z, generator=gen)
    ab = torch.cat([a[..., :2], b[..., 2:]], dim=-1)  # latents 0,1 from a; 2,3 from b
    ba = torch.cat([b[..., :2], a[..., 2:]], dim=-1)
    with torch.no_grad():
        # additive: u(a) + u(b) == u(a0 a1 b2 b3) + u(b0 b1 a2 a3)
        torch.testing.assert_close(pre(a) + pre(b), pre(ab) + pre(ba), atol=1e-4, rtol=1e-4)


class _LogitsStub(nn.Module):
    """Returns fixed leaf logits so the loss's gradient shows which entries it uses."""

    def __init__(self, cfg: AEConfig, logits: torch.Tensor) -> None:
        super().__init__()
        self.config = cfg
        self.logits = logits
        self.seen_inputs: torch.Tensor | None = None

    def forward(
        self, inputs: torch.Tensor, mask: torch.Tensor | None, logits: bool = False
    ) -> tuple:
        assert logits  # the loss fuses the softplus into the Poisson NLL
        self.seen_inputs = inputs
        return self.logits, torch.zeros(inputs.shape[0], inputs.shape[1], self.config.latent_dim)


def test_coordinated_dropout_loss_only_on_dropped_entries() -> None:
    p = 0.3
    cfg = AEConfig(n_neurons=N, latent_dim=Z, width=16, blocks=1, dropout_p=p, l2=0.0, smooth=0.0)
    x = counts(4, 25, seed=1)  # [B, L, N]
    x[0, 3, :4] = torch.tensor([2.0, 3.0, 5.0, 9.0])  # counts > 1 exercise the Stirling term
    mask = torch.ones(4, 25, dtype=torch.bool)
    mask[2, 20:] = False
    x[2, 20:] = 0
    logits = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), requires_grad=True)
    stub = _LogitsStub(cfg, logits)
    loss, logs = ae_loss(stub, {"counts": x, "mask": mask}, torch.Generator().manual_seed(11))
    loss.backward()
    keep = torch.rand(x.shape, generator=torch.Generator().manual_seed(11)) >= p
    torch.testing.assert_close(stub.seen_inputs, x * keep / (1 - p))
    dropped = (~keep) & mask[:, :, None]
    assert torch.equal(logits.grad != 0, dropped)
    # value: full Poisson NLL summed over dropped valid entries / (valid bins · N)
    rates = F.softplus(logits)
    nll = F.poisson_nll_loss(rates, x, log_input=False, full=True, eps=1e-8, reduction="none")
    expected = (nll * dropped).sum() / (mask.sum() * N)
    torch.testing.assert_close(loss, expected)
    per_target = float((nll * dropped).sum().detach() / dropped.sum())
    assert logs["nll_per_target"] == pytest.approx(per_target)
    # gradient: the autograd gradient of the same expression
    (grad_ref,) = torch.autograd.grad(expected, logits)
    torch.testing.assert_close(logits.grad, grad_ref, rtol=1e-5, atol=1e-9)


def test_fused_poisson_nll_passes_gradcheck() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(3, 5, 4, generator=gen, dtype=torch.float64)).requires_grad_(True)
    s = torch.poisson(torch.full((3, 5, 4), 1.5, dtype=torch.float64), generator=gen)
    w = (torch.rand(3, 5, 4, generator=gen, dtype=torch.float64) > 0.4).double()
    assert torch.autograd.gradcheck(PoissonNLLFromLogits.apply, (logits, s, w, w.sum()))
    r = F.softplus(logits)
    expected = (w * (r - s * torch.log(r + 1e-8))).sum()
    torch.testing.assert_close(PoissonNLLFromLogits.apply(logits, s, w, w.sum()), expected)


def test_latent_penalty_closed_form() -> None:
    gen = np.random.default_rng(0)
    z = gen.normal(size=(2, 9, 3))
    mask = np.ones((2, 9), bool)
    mask[1, 6:] = False
    expected = 0.5 * np.sum(z[mask] ** 2)
    for b in range(2):
        for k in range(1, 6):
            for t in range(9 - k):
                if mask[b, t] and mask[b, t + k]:
                    expected += 0.25 * np.sum((z[b, t] - z[b, t + k]) ** 2) / (1 + k)
    got = latent_penalty(torch.tensor(z), torch.tensor(mask), l2=0.5, smooth=0.25, lags=5)
    assert float(got) == pytest.approx(expected, rel=1e-10)


def test_a_few_training_steps_lower_the_loss() -> None:
    torch.manual_seed(0)  # nothing below uses the global RNG; this only pins stray defaults
    model = tiny(dropout_p=0.2).train()
    x = counts(16, 32, seed=2)
    x[:, :, : N // 2] *= 3  # structure to learn: two groups of neurons
    batch = {"counts": x, "mask": torch.ones(16, 32, dtype=torch.bool)}
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)

    def held_out_loss() -> float:
        with torch.no_grad():
            return float(ae_loss(model, batch, torch.Generator().manual_seed(99))[0])

    before = held_out_loss()
    gen = torch.Generator().manual_seed(1)
    for _ in range(25):
        loss, _ = ae_loss(model, batch, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert held_out_loss() < 0.95 * before  # measured: 0.351 -> 0.321


def _spike_data(n_trials: int, length: int, lengths: list[int] | None = None) -> SpikeData:
    c = counts(n_trials, length, seed=4).numpy().astype(np.int32)
    lens = np.array(lengths or [length] * n_trials)
    for i, n in enumerate(lens):
        c[i, n:] = 0
    return SpikeData(counts=c, lengths=lens, bin_size_s=0.01)


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path: Path) -> None:
    model = tiny()
    data = _spike_data(5, 20, [20, 20, 13, 7, 20])
    ckpt = Checkpoint(
        kind=AE_KIND,
        tensors={f"model.{k}": v for k, v in model.state_dict().items()},
        config={"ae": model.config.__dict__.copy()},
        fingerprint=data.fingerprint(),
    )
    save_checkpoint(ae_path(tmp_path), ckpt)
    loaded, meta = load_autoencoder(tmp_path, "cpu")
    assert loaded.config == model.config and meta.fingerprint["n_neurons"] == N
    z1, r1 = infer(model, data, batch_size=2)
    z2, r2 = infer(loaded, data, batch_size=3)
    np.testing.assert_allclose(z1, z2, atol=1e-6)
    np.testing.assert_allclose(r1, r2, atol=1e-6)
    assert (z1[3, 7:] == 0).all() and (r1[2, 13:] == 0).all()


def test_infer_batches_agree_with_single_trials() -> None:
    model = tiny()
    data = _spike_data(4, 24, [24, 10, 17, 24])
    z_all, r_all = infer(model, data, batch_size=4)
    for i, n in enumerate(data.lengths):
        with torch.no_grad():
            r, z = model(torch.tensor(data.counts[i : i + 1, :n], dtype=torch.float32))
        np.testing.assert_allclose(z_all[i, :n], z[0].numpy(), atol=2e-5)
        np.testing.assert_allclose(r_all[i, :n], r[0].numpy(), atol=2e-5)


def test_missing_checkpoint_is_a_clean_error(tmp_path: Path) -> None:
    with pytest.raises(LdnsError) as exc:
        load_autoencoder(tmp_path / "nowhere")
    assert "ldns fit-ae" in exc.value.hint


def test_bits_per_spike_zero_for_null_and_positive_for_truth() -> None:
    gen = np.random.default_rng(0)
    rates = gen.uniform(0.05, 1.0, size=(50, 40, 6))
    c = gen.poisson(rates)
    mask = np.ones((50, 40), bool)
    null = c.sum(axis=(0, 1)) / mask.sum()
    assert bits_per_spike(np.broadcast_to(null, rates.shape), c, mask, null) == pytest.approx(0)
    assert bits_per_spike(rates, c, mask, null) > 0.1


def test_calibration_with_a_constant_decoder_gives_each_neurons_mean_count() -> None:
    # with zero decoder weights every bin has the same rate, whose Poisson MLE is the mean count
    model = tiny()
    with torch.no_grad():
        model.decoder_out.weight.zero_()
        model.decoder_out.bias.fill_(-3.0)
    data = _spike_data(6, 30, [30, 30, 12, 30, 5, 30])
    mean_count = data.counts.sum(axis=(0, 1)) / data.lengths.sum()
    before, after = calibrate_rate_bias(model, data, batch_size=4)
    _, rates = infer(model, data)
    np.testing.assert_allclose(rates[0, 0], mean_count, rtol=1e-5)
    assert after == pytest.approx(1.0, abs=1e-6) and before < 0.2  # softplus(-3) = 0.049 vs 0.5


def test_calibration_solves_the_intercept_score_equation_and_lowers_the_nll() -> None:
    model = tiny()
    with torch.no_grad():
        model.decoder_out.bias.add_(0.7)  # rates far too high
    data = _spike_data(8, 40, [40, 33, 40, 40, 21, 40, 40, 9])
    mask = data.mask()
    _, r0 = infer(model, data)
    before, after = calibrate_rate_bias(model, data)
    _, r1 = infer(model, data)
    assert mean_poisson_nll(r1, data.counts, mask) < mean_poisson_nll(r0, data.counts, mask)
    assert before == pytest.approx(r0.sum() / data.counts.sum(), rel=1e-5)
    assert after == pytest.approx(r1.sum() / data.counts.sum(), rel=1e-5)
    # the likelihood's derivative in each intercept is zero: Σ σ(v)(1 − s/r) over valid bins
    r = torch.from_numpy(r1[mask]).double()
    s = torch.from_numpy(data.counts[mask]).double()
    sig = -torch.expm1(-r)  # σ(v) = 1 − e^(−softplus(v))
    score = (sig * (1 - s / r)).sum(0)
    np.testing.assert_allclose(score.numpy(), 0.0, atol=1e-4 * len(r))
