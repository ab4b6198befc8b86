"""Pointwise layers: the inference (matmul) path equals the training (conv1d) path."""

from __future__ import annotations

import pytest
import torch

from ldns_cli.layers import Pointwise


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
