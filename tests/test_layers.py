"""Pointwise layers and the time norm: every path (no-grad matmul, conv1d, channels-last) agrees."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ldns_cli.nn.layers import Pointwise, _TimeNorm, masked_instance_norm


@pytest.mark.parametrize("groups", [1, 4])
@pytest.mark.parametrize("bias", [True, False])
def test_pointwise_no_grad_path_matches_conv_path(groups, bias):
    gen = torch.Generator().manual_seed(0)
    layer = Pointwise(8, 16, groups=groups, bias=bias, generator=gen)
    x = torch.randn(3, 8, 11, generator=gen)  # [B, C_in, L]
    with_grad = layer(x)  # conv1d path
    with torch.no_grad():
        without = layer(x)  # grouped matmul path
    assert without.shape == (3, 16, 11)
    torch.testing.assert_close(without, with_grad.detach(), rtol=1e-5, atol=1e-6)
    # group g's outputs depend only on group g's inputs
    if groups > 1:
        x2 = x.clone()
        x2[:, :2] += 1.0  # perturb group 0's inputs
        with torch.no_grad():
            diff = (layer(x2) - without).abs().amax(dim=(0, 2))
        assert diff[:4].max() > 0 and diff[4:].max() == 0


@pytest.mark.parametrize(("c_in", "c_out", "groups"), [(8, 16, 1), (8, 4, 4), (4, 8, 4), (8, 8, 2)])
@pytest.mark.parametrize("bias", [True, False])
def test_channels_last_pointwise_is_the_same_map(c_in, c_out, groups, bias):
    # same weights, same generator draws: [B, L, C] layout gives the transposed [B, C, L] map
    cf = Pointwise(
        c_in, c_out, groups=groups, bias=bias, generator=torch.Generator().manual_seed(1)
    )
    cl = Pointwise(
        c_in, c_out, groups=groups, bias=bias, generator=torch.Generator().manual_seed(1),
        channels_last=True,
    )  # fmt: skip
    x = torch.randn(3, c_in, 11, generator=torch.Generator().manual_seed(2), requires_grad=True)
    xt = x.detach().transpose(1, 2).clone().requires_grad_(True)
    y_cf, y_cl = cf(x), cl(xt)
    torch.testing.assert_close(y_cl, y_cf.transpose(1, 2), rtol=1e-5, atol=1e-6)
    g = torch.randn(3, c_out, 11, generator=torch.Generator().manual_seed(3))
    grads_cf = torch.autograd.grad(y_cf, [x, *cf.parameters()], g)
    grads_cl = torch.autograd.grad(y_cl, [xt, *cl.parameters()], g.transpose(1, 2))
    torch.testing.assert_close(grads_cl[0], grads_cf[0].transpose(1, 2), rtol=1e-5, atol=1e-6)
    for a, b in zip(grads_cl[1:], grads_cf[1:], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("with_mask", [False, True])
def test_channels_last_norm_matches_channels_first(with_mask):
    x = torch.randn(3, 5, 17, generator=torch.Generator().manual_seed(0))  # [B, C, L]
    mask = None
    if with_mask:
        mask = torch.ones(3, 17, dtype=torch.bool)
        mask[1, 9:] = False
    y_cf = masked_instance_norm(x, mask)
    y_cl = masked_instance_norm(x.transpose(1, 2).contiguous(), mask, channels_last=True)
    torch.testing.assert_close(y_cl, y_cf.transpose(1, 2), rtol=1e-5, atol=1e-5)
    if mask is None:  # torch's own on the unpadded case
        torch.testing.assert_close(y_cf, F.instance_norm(x), rtol=1e-4, atol=1e-5)


def test_time_norm_gradient_passes_gradcheck():
    # the hand-written backward of the unmasked norm, in float64 (the public function computes
    # in float32), over the time axis of either layout
    x = torch.randn(2, 3, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for dim in (1, 2):
        assert torch.autograd.gradcheck(
            lambda t, d=dim: _TimeNorm.apply(t, d, 1e-5), (x.clone().requires_grad_(True),)
        )
