"""Pointwise layers: the inference (matmul) path equals the training (conv1d) path."""

from __future__ import annotations

import pytest
import torch

from ldns_cli.layers import Pointwise, masked_instance_norm, windowed_instance_norm


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


def test_windowed_instance_norm_matches_brute_force_and_masking():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(3, 4, 50, generator=gen)
    lengths = [50, 30, 12]
    mask = torch.arange(50)[None, :] < torch.tensor(lengths)[:, None]
    # a window covering every trial is exactly the masked instance norm
    assert torch.equal(windowed_instance_norm(x, 50, mask), masked_instance_norm(x, mask))
    window = 20
    y = windowed_instance_norm(x, window, mask)
    expected = torch.zeros_like(x)
    for b, n in enumerate(lengths):
        for t in range(n):
            s = min(max(t - window // 2, 0), max(n - window, 0))
            seg = x[b, :, s : min(s + window, n)].double()
            mu, var = seg.mean(-1), seg.var(-1, unbiased=False)
            expected[b, :, t] = ((x[b, :, t].double() - mu) / torch.sqrt(var + 1e-5)).float()
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)
    # padding never matters: garbage in padded bins leaves the output unchanged
    x_bad = x.clone()
    x_bad[~mask[:, None, :].expand_as(x)] = float("nan")
    torch.testing.assert_close(windowed_instance_norm(x_bad, window, mask), y)
