"""S4 layer: FFT convolution == the explicit recurrence of the same diagonal SSM."""

from __future__ import annotations

import pytest
import torch

from ldns_cli.nn.s4 import (
    S4Layer,
    cached_kernels,
    fast_fft_size,
    kernel_factored,
    kernel_naive,
    ssm_param_groups,
)


def make_layer(
    bidirectional: bool, channels: int = 4, state_dim: int = 8, seed: int = 0
) -> S4Layer:
    gen = torch.Generator().manual_seed(seed)
    # Δ up to 0.5 so the kernel is far from zero over the short test lengths
    return S4Layer(channels, state_dim, bidirectional, dt_min=0.05, dt_max=0.5, generator=gen)


def step_reference(layer: S4Layer, u: torch.Tensor) -> torch.Tensor:
    """The layer's map by the explicit recurrence (slow; the oracle). u `[B, H, L]`."""
    dt_a, c_tilde = layer.discretised()
    decay = torch.exp(dt_a)  # [H, M]
    u32 = u.float()
    length = u.shape[-1]

    def scan(c_dir: torch.Tensor, seq: torch.Tensor) -> torch.Tensor:
        state = torch.zeros(seq.shape[0], *decay.shape, dtype=decay.dtype, device=u.device)
        outs = []
        for t in range(length):
            state = decay * state + seq[:, :, t, None]  # [B, H, M]
            outs.append(2.0 * (c_dir * state).sum(-1).real)  # [B, H]
        return torch.stack(outs, dim=-1)  # [B, H, L]

    y = scan(c_tilde[0], u32)
    if layer.bidirectional:
        rev = scan(c_tilde[1], u32.flip(-1))  # rev[s] = Σ_l Kᵇ[l] u'_{s−l}, u' reversed
        # backward term at t is rev at s − 1 with s = L−1−t (lag 0 skipped)
        back = torch.cat([rev.new_zeros(*rev.shape[:-1], 1), rev[..., :-1]], dim=-1)
        y = y + back.flip(-1)
    return y + layer.d.float()[:, None] * u32


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("length", [1, 2, 7, 16, 33, 64])
def test_fft_conv_equals_recurrence_values_and_gradients(bidirectional: bool, length: int) -> None:
    layer = make_layer(bidirectional)
    gen = torch.Generator().manual_seed(length)
    u = torch.randn(3, 4, length, generator=gen)
    w = torch.randn(3, 4, length, generator=gen)  # random cotangent

    u1 = u.clone().requires_grad_(True)
    y_fft = layer(u1)
    grads_fft = torch.autograd.grad((y_fft * w).sum(), [u1, *layer.parameters()])

    u2 = u.clone().requires_grad_(True)
    y_rec = step_reference(layer, u2)
    grads_rec = torch.autograd.grad((y_rec * w).sum(), [u2, *layer.parameters()])

    assert y_fft.shape == (3, 4, length)
    scale = y_rec.abs().max().item()
    torch.testing.assert_close(y_fft, y_rec, atol=2e-5 * max(1.0, scale), rtol=1e-4)
    for g_fft, g_rec in zip(grads_fft, grads_rec, strict=True):
        tol = 5e-5 * max(1.0, g_rec.abs().max().item())
        torch.testing.assert_close(g_fft, g_rec, atol=tol, rtol=1e-4)


def test_causal_layer_ignores_the_future() -> None:
    layer = make_layer(bidirectional=False)
    u = torch.randn(2, 4, 50, generator=torch.Generator().manual_seed(1))
    v = u.clone()
    v[..., 30:] += 5.0
    with torch.no_grad():
        torch.testing.assert_close(layer(u)[..., :30], layer(v)[..., :30], atol=1e-5, rtol=0)
        assert not torch.allclose(layer(u)[..., 30:], layer(v)[..., 30:])


def test_bidirectional_impulse_response_skips_lag_zero_backwards() -> None:
    # y_t = Σ_l Kf[l] u_{t−l} + Σ_{m≥1} Kb[m−1] u_{t+m} + D u_t  (reference off-by-one)
    layer = make_layer(bidirectional=True, channels=2)
    length, t0 = 40, 25
    u = torch.zeros(1, 2, length)
    u[0, :, t0] = 1.0
    with torch.no_grad():
        y = layer(u)[0]
        k = layer.kernel(length)  # [2, H, L]
        d = layer.d
    expected = torch.zeros(2, length)
    expected[:, t0:] = k[0][:, : length - t0]
    expected[:, :t0] = k[1][:, :t0].flip(-1)  # y_{t0−m} = Kb[m−1]
    expected[:, t0] += d
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize(("length", "cap"), [(40, 7), (41, 40), (33, 64), (100, 1)])
def test_capped_kernel_is_the_truncated_convolution(
    bidirectional: bool, length: int, cap: int
) -> None:
    # max_kernel_bins K: y_t = Σ_{0≤l<K} Kf[l] u_{t−l} + Σ_{1≤m<K} Kb[m−1] u_{t+m} + D u_t
    layer = make_layer(bidirectional, channels=3)
    u = torch.randn(2, 3, length, generator=torch.Generator().manual_seed(cap))
    with torch.no_grad():
        k = layer.kernel(length)  # [D, H, L]
        k_len = min(cap, length)
        expected = layer.d[:, None] * u
        for lag in range(k_len):
            expected[..., lag:] += k[0][:, lag, None] * u[..., : length - lag]
            if bidirectional and 1 <= lag:
                expected[..., : length - lag] += k[1][:, lag - 1, None] * u[..., lag:]
        layer.max_kernel_bins = cap
        y = layer(u)
    torch.testing.assert_close(y, expected, atol=2e-5, rtol=1e-4)
    if cap >= length:  # a cap at or beyond the input changes nothing
        layer.max_kernel_bins = None
        with torch.no_grad():
            torch.testing.assert_close(layer(u), y, atol=1e-6, rtol=0)


@pytest.mark.parametrize("length", [1, 63, 64, 1000, 4099])
def test_factored_kernel_equals_naive_vandermonde(length: int) -> None:
    layer = make_layer(bidirectional=True, channels=3, state_dim=16)
    with torch.no_grad():
        dt_a, c_tilde = layer.discretised()
        kf = kernel_factored(dt_a, c_tilde, length)
        kn = kernel_naive(dt_a, c_tilde, length)
    assert kf.shape == (2, 3, length)
    torch.testing.assert_close(kf, kn, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("length", [1, 5, 100, 257, 1031])
def test_any_length(length: int) -> None:
    for bidirectional in (False, True):
        layer = make_layer(bidirectional, channels=6)
        y = layer(torch.randn(2, 6, length))
        assert y.shape == (2, 6, length)
        assert torch.isfinite(y).all()


def test_fast_fft_size_is_smallest_7_smooth_at_least_n() -> None:
    def smooth(k: int) -> bool:
        for p in (2, 3, 5, 7):
            while k % p == 0:
                k //= p
        return k == 1

    for n in range(1, 600):
        got = fast_fft_size(n)
        assert got >= n and smooth(got)
        assert all(not smooth(k) for k in range(n, got))
    assert fast_fft_size(2 * 8191) == 16384


def test_cached_kernels_give_identical_outputs_and_reuse() -> None:
    model = torch.nn.Sequential(make_layer(True, seed=1), make_layer(False, seed=2))
    u = torch.randn(2, 4, 77)
    with torch.no_grad():
        plain = model(u)
        calls = []
        original = S4Layer.kernel_fft

        def counting(self: S4Layer, *a: object, **k: object) -> torch.Tensor:
            calls.append(1)
            return original(self, *a, **k)

        S4Layer.kernel_fft = counting  # type: ignore[method-assign]
        try:
            with cached_kernels(model):
                first = model(u)
                second = model(u)
                other = model(u[..., :50])  # a new length gets its own kernels
        finally:
            S4Layer.kernel_fft = original  # type: ignore[method-assign]
    assert torch.equal(plain, first) and torch.equal(first, second)
    torch.testing.assert_close(other, model(u[..., :50]))
    assert len(calls) == 4  # 2 layers × 2 lengths, not 2 × 3 calls
    assert all(m._cache is None for m in model)  # cache dropped on exit


def test_fp32_inside_autocast() -> None:
    layer = make_layer(True)
    u = torch.randn(2, 4, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(u.bfloat16())
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), layer(u.bfloat16().float()), atol=0.05, rtol=0.02)


def test_ssm_param_groups_follow_the_s4_rule() -> None:
    model = torch.nn.Sequential(make_layer(True), torch.nn.Linear(3, 3))
    groups = ssm_param_groups(model, lr=1e-3, weight_decay=0.01, ssm_lr=5e-4)
    by_name = {g["name"]: g for g in groups}
    ssm_ids = {id(p) for p in by_name["ssm"]["params"]}
    layer = model[0]
    assert ssm_ids == {id(layer.log_dt), id(layer.log_a_real), id(layer.a_imag)}
    assert by_name["ssm"]["weight_decay"] == 0.0 and by_name["ssm"]["lr"] == 5e-4
    assert by_name["default"]["weight_decay"] == 0.01 and by_name["default"]["lr"] == 1e-3
    all_ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(all_ids) == sorted(id(p) for p in model.parameters())  # each exactly once
    torch.optim.AdamW(groups)  # accepted as is


@pytest.mark.parametrize("bidirectional", [False, True])
def test_channels_last_layer_is_the_transposed_map(bidirectional: bool) -> None:
    cf = make_layer(bidirectional, seed=3)
    cl = make_layer(bidirectional, seed=3)
    cl.channels_last = True
    u = torch.randn(2, 4, 37, generator=torch.Generator().manual_seed(4), requires_grad=True)
    ut = u.detach().transpose(1, 2).clone().requires_grad_(True)
    w = torch.randn(2, 4, 37, generator=torch.Generator().manual_seed(5))
    y_cf, y_cl = cf(u), cl(ut)
    torch.testing.assert_close(y_cl, y_cf.transpose(1, 2))
    g_cf = torch.autograd.grad((y_cf * w).sum(), [u, *cf.parameters()])
    g_cl = torch.autograd.grad((y_cl * w.transpose(1, 2)).sum(), [ut, *cl.parameters()])
    torch.testing.assert_close(g_cl[0], g_cf[0].transpose(1, 2))
    for a, b in zip(g_cl[1:], g_cf[1:], strict=True):
        torch.testing.assert_close(a, b)
