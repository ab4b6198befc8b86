"""The LDNS autoencoder: spike counts -> smooth time-aligned latents -> Poisson rates.

Architecture (LDNS, Kapoor et al. 2024; channels-last `[B, L, C]` throughout, so every 1×1
layer is one GEMM over B·L rows and the counts need no transpose):

    counts [B, L, N] -> 1×1 in-projection N→C
      -> blocks × (masked InstanceNorm over time, unconditional adaLN shift/scale, S4, GELU,
                   per-channel scale+bias, residual; then norm, channel MLP C→2C→C, residual)
      -> grouped 1×1 bottleneck C→Z (latent j reads its own block of C/Z channels)   = z
    z -> grouped 1×1 unbottleneck Z→Z·k (each hidden unit sees one latent) -> GELU
      -> dense 1×1 → N -> softplus                                                  = rates

The decoder is time-local and additive over latents, so decoding padded or long samples is safe
and all temporal structure lives in z. Norm statistics use valid bins only and padded bins are
zeroed before every S4 convolution, so padding never leaks into valid outputs (the paper's
unmasked InstanceNorm lets it leak).

The training objective (coordinated dropout, Poisson NLL on the dropped entries, latent L2 and
smoothness penalties) is `fit.autoencoder.ae_loss`. The public API is `[B, L, ·]` (trial, time,
feature) like `SpikeData`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ldns_cli.core.data import SpikeData
from ldns_cli.core.errors import LdnsError
from ldns_cli.nn.layers import ChannelMLP, Pointwise, apply_mask, masked_instance_norm
from ldns_cli.nn.s4 import S4Layer


@dataclass(frozen=True)
class AEConfig:
    """Architecture and objective of the autoencoder (saved with its weights).

    Attributes:
        n_neurons: N, input/output units (taken from the data).
        latent_dim: Z, latent channels.
        width: C, hidden channels of the encoder.
        blocks: number of encoder blocks.
        bidirectional: bidirectional S4 (True) or strictly causal S4 (False) in the encoder.
        state_dim: real state size of each S4 channel.
        mlp_mult: channel-MLP expansion (C → mult·C → C).
        decoder_hidden_per_latent: hidden units per latent in the additive decoder (0: C // Z).
        dropout_p: coordinated-dropout probability p (0 disables it: loss on all entries).
        l2: β1, weight of Σz².
        smooth: β2, weight of the temporal-smoothness penalty.
        smooth_lags: K, lags 1..K of the smoothness penalty.
    """

    n_neurons: int = 0
    latent_dim: int = 8
    width: int = 256
    blocks: int = 4
    bidirectional: bool = True
    state_dim: int = 64
    mlp_mult: int = 2
    decoder_hidden_per_latent: int = 0
    dropout_p: float = 0.2
    l2: float = 0.01
    smooth: float = 0.01
    smooth_lags: int = 5

    def validate(self) -> None:
        checks = [
            (self.n_neurons >= 1, f"n_neurons must be >= 1, got {self.n_neurons}"),
            (self.latent_dim >= 1, f"latent dim must be >= 1, got {self.latent_dim}"),
            (self.width >= 1, f"width must be >= 1, got {self.width}"),
            (self.blocks >= 0, f"blocks must be >= 0, got {self.blocks}"),
            (self.state_dim >= 2 and self.state_dim % 2 == 0, "state_dim must be even, >= 2"),
            (0.0 <= self.dropout_p < 1.0, f"dropout p must be in [0, 1), got {self.dropout_p}"),
            (self.l2 >= 0 and self.smooth >= 0, "penalty weights must be >= 0"),
            (self.smooth_lags >= 0, "smooth_lags must be >= 0"),
            (self.mlp_mult >= 1, "mlp_mult must be >= 1"),
        ]
        for ok, msg in checks:
            if not ok:
                raise LdnsError(msg, "check the fit-ae flags or --config file")

    @property
    def decoder_hidden(self) -> int:
        k = self.decoder_hidden_per_latent or max(1, self.width // self.latent_dim)
        return k * self.latent_dim


# The paper's settings per dataset (Kapoor et al. 2024) and a CPU demo preset. Keys may belong to
# AEConfig or to fit.trainer.TrainConfig; fit.autoencoder.resolve_ae_configs splits them.
AE_PRESETS: dict[str, dict[str, Any]] = {
    "lorenz": {
        "latent_dim": 8, "width": 256, "blocks": 4, "bidirectional": True,
        "dropout_p": 0.2, "l2": 0.01, "smooth": 0.01,
        "epochs": 200, "warmup_epochs": 10, "batch_size": 512, "lr": 1e-3,
        "final_lr_frac": 0.135, "grad_clip": 2.0,
    },
    "mc_maze": {
        "latent_dim": 16, "width": 256, "blocks": 4, "bidirectional": False,
        "dropout_p": 0.5, "l2": 0.001, "smooth": 0.2,
        "epochs": 140, "warmup_epochs": 10, "batch_size": 64, "lr": 1e-3,
        "final_lr_frac": 0.55, "grad_clip": 2.0,
    },
    "speech": {
        "latent_dim": 32, "width": 256, "blocks": 6, "bidirectional": False,
        "dropout_p": 0.2, "l2": 0.001, "smooth": 0.02,
        "epochs": 400, "warmup_epochs": 20, "batch_size": 256, "lr": 1e-3,
        "final_lr_frac": 0.26, "grad_clip": 2.0,
    },
    # CPU demo: bench/quality_ae.py measured R² 0.987 (latents -> Lorenz state), rate r 0.992 and
    # 100.1% of the oracle's bits/spike after 5 epochs on 3500 training trials (34 s wall on
    # 2 threads); min_steps gives small datasets enough optimiser steps: on 600 simulated reach
    # trials (4 latents) Poisson draws of the held-out trials' rates decoded the angle 1.58x worse
    # than the real trials after 250 steps and 1.27x after 600 (mean of 3 draws), on 1000 trials
    # (8 latents) 1.87x after 250 and 1.51x after 660; the steps of the latent-size search's
    # fit that fit-ae continues count towards it
    "small": {
        "latent_dim": 8, "width": 64, "blocks": 2, "bidirectional": True, "state_dim": 32,
        "dropout_p": 0.2, "l2": 0.01, "smooth": 0.01,
        "epochs": 5, "min_steps": 600, "warmup_epochs": 1, "batch_size": 64, "lr": 3e-3,
        "final_lr_frac": 0.1, "grad_clip": 2.0,
    },
}  # fmt: skip


class AEBlock(nn.Module):
    """The paper's residual S4 time-mixing + channel-MLP block, masked for padding; `[B, L, C]`."""

    def __init__(self, cfg: AEConfig, generator: torch.Generator | None = None) -> None:
        super().__init__()
        c = cfg.width
        # unconditional adaLN: shift/scale per sub-layer, zero init (LDNS's γ, β)
        self.modulation = nn.Parameter(torch.zeros(4, c))  # [shift1, scale1, shift2, scale2]
        self.s4 = S4Layer(
            c, cfg.state_dim, cfg.bidirectional, generator=generator, channels_last=True
        )
        self.post_scale = nn.Parameter(torch.ones(c))  # depthwise 1×1 after the time mixer
        self.post_bias = nn.Parameter(torch.zeros(c))
        self.mlp = ChannelMLP(c, cfg.mlp_mult, bias=False, generator=generator, channels_last=True)

    def forward(self, h: Tensor, mask: Tensor | None) -> Tensor:
        """h `[B, L, C]`, mask `[B, L]` -> `[B, L, C]`."""
        shift1, scale1, shift2, scale2 = self.modulation  # [C] each
        x = torch.addcmul(shift1, masked_instance_norm(h, mask, channels_last=True), 1 + scale1)
        # zero padding into the global convolution
        x = F.gelu(self.s4(apply_mask(x, mask, channels_last=True)))
        h = torch.addcmul(h + self.post_bias, x, self.post_scale)
        x = masked_instance_norm(h, mask, channels_last=True)
        return h + self.mlp.forward_affine(x, 1 + scale2, shift2)  # MLP(x·(1 + scale2) + shift2)


class Autoencoder(nn.Module):
    """Counts `[B, L, N]` -> latents `[B, L, Z]` -> rates `[B, L, N]` (spikes per bin)."""

    def __init__(self, cfg: AEConfig, generator: torch.Generator | None = None) -> None:
        super().__init__()
        cfg.validate()
        self.config = cfg
        c, z = cfg.width, cfg.latent_dim
        kw: dict[str, Any] = {"generator": generator, "channels_last": True}
        self.encoder_in = Pointwise(cfg.n_neurons, c, **kw)
        self.blocks = nn.ModuleList(AEBlock(cfg, generator) for _ in range(cfg.blocks))
        groups = z if (c % z == 0 and z < c) else 1
        self.bottleneck = Pointwise(c, z, groups=groups, **kw)
        self.unbottleneck = Pointwise(z, cfg.decoder_hidden, groups=z, **kw)
        self.decoder_out = Pointwise(cfg.decoder_hidden, cfg.n_neurons, **kw)

    def encode(self, counts: Tensor, mask: Tensor | None = None) -> Tensor:
        """counts `[B, L, N]` (float), mask `[B, L]` bool or None -> z `[B, L, Z]` (0 at padding)."""
        h = self.encoder_in(counts.float())  # [B, L, C]
        for block in self.blocks:
            h = block(h, mask)
        return apply_mask(self.bottleneck(h), mask, channels_last=True)  # [B, L, Z]

    def decoder_logits(self, z: Tensor) -> Tensor:
        """z `[..., Z]` -> pre-softplus rates `[..., N]` (with the intercept); acts per bin."""
        return self.decoder_out(F.gelu(self.unbottleneck(z)))

    def decode(self, z: Tensor) -> Tensor:
        """z `[B, L, Z]` -> rates `[B, L, N]` (spikes per bin, > 0); acts on each bin on its own."""
        return F.softplus(self.decoder_logits(z).float())

    def forward(
        self, counts: Tensor, mask: Tensor | None = None, logits: bool = False
    ) -> tuple[Tensor, Tensor]:
        """counts `[B, L, N]` -> (rates `[B, L, N]`, z `[B, L, Z]`).

        With `logits=True` the first output is the pre-softplus rates instead (the training loss
        fuses the softplus into the Poisson NLL; it goes through `forward` for DDP's hooks).
        """
        z = self.encode(counts, mask)
        return (self.decoder_logits(z) if logits else self.decode(z)), z

    @torch.no_grad()
    def init_rate_bias(self, mean_rate: Tensor) -> None:
        """Start the decoder at each neuron's mean rate `[N]` (spikes/bin): faster early training."""
        r = mean_rate.float().clamp_min(1e-4)
        inv_softplus = r + torch.log(-torch.expm1(-r))  # softplus⁻¹(r), stable for small r
        self.decoder_out.bias.copy_(inv_softplus - self._decoder_mean_preact())

    def _decoder_mean_preact(self) -> Tensor:
        # decoder_out bias is added to W·GELU(unbottleneck(z)); at init z ≈ 0, so offset by it
        zero = torch.zeros(1, self.config.latent_dim, device=self.decoder_out.weight.device)
        return self.decoder_logits(zero)[0] - self.decoder_out.bias


def infer(
    model: Autoencoder, data: SpikeData, batch_size: int = 64, device: str | torch.device = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """Encode and decode every trial (no dropout, no grad).

    Returns:
        latents `[B, L, Z]` and rates `[B, L, N]` (spikes per bin) as float32 arrays; both are 0
        at padded bins.
    """
    latents, rates = _infer(model, data, batch_size, device, with_rates=True)
    assert rates is not None
    return latents, rates


def infer_latents(
    model: Autoencoder, data: SpikeData, batch_size: int = 64, device: str | torch.device = "cpu"
) -> np.ndarray:
    """`infer` without the decoder: latents `[B, L, Z]` only (no `[B, L, N]` rates array)."""
    return _infer(model, data, batch_size, device, with_rates=False)[0]


@torch.no_grad()
def _infer(
    model: Autoencoder,
    data: SpikeData,
    batch_size: int,
    device: str | torch.device,
    with_rates: bool,
) -> tuple[np.ndarray, np.ndarray | None]:
    model.eval()
    counts_all, mask_all = data.counts, data.mask()
    n_trials, n_bins = data.n_trials, data.n_bins
    latents = np.zeros((n_trials, n_bins, model.config.latent_dim), np.float32)
    rates = np.zeros((n_trials, n_bins, data.n_neurons), np.float32) if with_rates else None
    for start in range(0, n_trials, max(1, batch_size)):
        sl = slice(start, start + batch_size)
        longest = int(data.lengths[sl].max())
        counts = torch.as_tensor(counts_all[sl, :longest], dtype=torch.float32, device=device)
        mask = torch.as_tensor(mask_all[sl, :longest], device=device)
        pad_mask = mask if not bool(mask.all()) else None
        keep = mask[..., None]
        if rates is None:
            z = model.encode(counts, pad_mask)
        else:
            r, z = model(counts, pad_mask)
            rates[sl, :longest] = torch.where(keep, r, 0.0).float().cpu().numpy()
        latents[sl, :longest] = torch.where(keep, z, 0.0).float().cpu().numpy()
    return latents, rates
