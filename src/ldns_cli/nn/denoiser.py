"""The latent denoiser: DiT-style blocks with bidirectional S4 in place of attention.

Follows LDNS (Kapoor et al. 2024): a 1x1 `conv_in` (grouped when Z divides C), `blocks`
adaLN-Zero blocks, a 1x1 `conv_out` scaled by 0.1 at initialisation. Each block:

    h <- h + a1 * GELU(S4_bi(IN(h) * (1 + g1) + b1))
    h <- h + a2 * MLP(IN(h) * (1 + g2) + b2)

with (b1, g1, a1, b2, g2, a2) = Linear(GELU(e)) zero-initialised, so every block starts as the
identity on the residual stream. `e` is the C/4-wide conditioning vector: a sinusoidal time-step
embedding through an MLP, plus one embedding per trial-level condition (continuous/circular
feature vectors through an MLP, categorical labels through `nn.Embedding`). Time-series
conditions (e.g. hand velocity) are concatenated as un-noised input channels (the paper's way),
each with a "present" indicator channel.

Classifier-free guidance: a dropped condition is replaced by a learned null embedding (trial-level)
or zeroed channels with the indicator off (time series). `cond=None` is the unconditional path.

Variable length (beyond the paper's centred replicate padding): instance norm statistics are
masked, the S4 input is zeroed on padded bins, and so is the output. Because the S4 kernel at a
given lag does not depend on the sequence length and the FFT convolution zero-pads, the output on a
trial's valid bins is exactly what the same trial gives unpadded: padding never leaks.

Public layout is `[B, L, Z]`; internally `[B, C, L]` (channels first, as S4 wants).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ldns_cli.nn.layers import ChannelMLP, Pointwise, masked_instance_norm
from ldns_cli.nn.s4 import S4Layer

COND_INPUT_KINDS = ("vector", "categorical", "series")
# which trials' conditions are dropped: all conditions `[B]` bool, or per condition name
DropCond = torch.Tensor | dict[str, torch.Tensor] | None


@dataclass(frozen=True)
class CondInput:
    """How one condition enters the network (built from the model's condition spec).

    kind: "vector" (trial-level float features `[B, dim]`, e.g. (cos, sin) of an angle),
    "categorical" (trial-level class index `[B]` in 0..n_classes-1), or "series" (a time series
    `[B, L, dim]` concatenated as input channels).
    """

    name: str
    kind: str
    dim: int = 1  # feature width (vector/series)
    n_classes: int = 0  # categorical only

    def __post_init__(self) -> None:
        if self.kind not in COND_INPUT_KINDS:
            raise ValueError(f"kind must be one of {COND_INPUT_KINDS}, got {self.kind!r}")


@dataclass(frozen=True)
class DenoiserConfig:
    latent_dim: int = 8  # Z, channels of the AE latents
    width: int = 64  # C, hidden channels
    blocks: int = 4  # number of adaLN-Zero S4 blocks
    state_dim: int = 64  # real S4 state size per channel
    time_freq_dim: int = 256  # sinusoidal time-step features (DiT)
    conv_out_scale: float = 0.1  # conv_out weights scaled at init ("initial values may be way off")
    conditions: tuple[CondInput, ...] = field(default_factory=tuple)
    kernel_bins: int = 0  # S4 kernel lags per direction; 0 = global (older checkpoints)

    def __post_init__(self) -> None:
        if self.width % 4 != 0:
            raise ValueError(f"width must be a multiple of 4 (C/4 conditioning), got {self.width}")
        if self.latent_dim < 1 or self.blocks < 1:
            raise ValueError("latent_dim and blocks must be >= 1")
        if self.kernel_bins < 0:
            raise ValueError(f"kernel_bins must be >= 0, got {self.kernel_bins}")

    @property
    def cond_width(self) -> int:
        return self.width // 4

    @property
    def series_channels(self) -> int:
        """Extra input channels: each time-series condition plus its indicator channel."""
        return sum(c.dim + 1 for c in self.conditions if c.kind == "series")

    @classmethod
    def from_dict(cls, d: dict) -> DenoiserConfig:
        d = dict(d)
        d["conditions"] = tuple(CondInput(**c) for c in d.get("conditions", ()))
        return cls(**d)


def timestep_features(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) time steps `[B]` -> `[B, dim]` (cos, sin)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None, :]  # [B, half]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def _mlp(d_in: int, d: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d), nn.SiLU(), nn.Linear(d, d))


class DenoiserBlock(nn.Module):
    """adaLN-Zero block: S4 time mixing + channel MLP, both gated by the conditioning vector."""

    def __init__(self, width: int, cond_width: int, state_dim: int, kernel_bins: int = 0) -> None:
        super().__init__()
        self.s4 = S4Layer(width, state_dim=state_dim, bidirectional=True)
        self.s4.max_kernel_bins = kernel_bins or None
        self.mlp = ChannelMLP(width, mult=2, bias=True)
        self.modulation = nn.Linear(cond_width, 6 * width)
        # adaLN-Zero: all gates start at 0, so the block is the identity at initialisation
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def forward(self, h: torch.Tensor, e: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        # h: [B, C, L]; e: [B, Cc]; mask: [B, L] bool or None
        mod = self.modulation(F.gelu(e))[:, :, None]  # [B, 6C, 1]
        shift1, scale1, gate1, shift2, scale2, gate2 = mod.chunk(6, dim=1)
        m = None if mask is None else mask[:, None, :].to(h.dtype)  # [B, 1, L]

        u = masked_instance_norm(h, mask) * (1 + scale1) + shift1
        if m is not None:
            u = u * m  # padded bins must not feed the (global) S4 convolution
        h = h + gate1 * F.gelu(self.s4(u))
        u = masked_instance_norm(h, mask) * (1 + scale2) + shift2
        h = h + gate2 * self.mlp(u)
        return h if m is None else h * m


class Denoiser(nn.Module):
    """Predicts the noise (or v) of noisy normalised latents `[B, L, Z]` at time steps `t`."""

    def __init__(self, config: DenoiserConfig) -> None:
        super().__init__()
        self.config = config
        c, z, cw = config.width, config.latent_dim, config.cond_width
        c_in = z + config.series_channels
        # grouped 1x1 convs (one group per latent) when possible, as in the authors' code
        groups = z if (config.series_channels == 0 and c % z == 0 and z < c) else 1
        self.conv_in = Pointwise(c_in, c, groups=groups)
        self.blocks = nn.ModuleList(
            DenoiserBlock(c, cw, config.state_dim, config.kernel_bins) for _ in range(config.blocks)
        )
        self.conv_out = Pointwise(c, z, groups=groups)
        with torch.no_grad():
            self.conv_out.weight.mul_(config.conv_out_scale)
            self.conv_out.bias.mul_(config.conv_out_scale)
        self.time_mlp = _mlp(config.time_freq_dim, cw)

        self.cond_mlps = nn.ModuleDict()
        self.cond_embeddings = nn.ModuleDict()
        self.null = nn.ParameterDict()
        for cond in config.conditions:
            if cond.kind == "vector":
                self.cond_mlps[cond.name] = _mlp(cond.dim, cw)
                self.null[cond.name] = nn.Parameter(torch.zeros(cw))
            elif cond.kind == "categorical":
                # index n_classes is the learned "null" class used when the label is dropped
                self.cond_embeddings[cond.name] = nn.Embedding(cond.n_classes + 1, cw)

    # ------------------------------------------------------------------ conditioning
    def _keep(
        self, name: str, cond: dict | None, drop: DropCond, b: int, device: torch.device
    ) -> torch.Tensor:
        """Bool `[B]`: trials where condition `name` is used (given and not dropped)."""
        if cond is None or name not in cond:
            return torch.zeros(b, dtype=torch.bool, device=device)
        keep = torch.ones(b, dtype=torch.bool, device=device)
        if isinstance(drop, dict):
            drop = drop.get(name)
        return keep if drop is None else keep & ~drop.to(device).bool()

    def embed(
        self,
        t: torch.Tensor,
        cond: dict[str, torch.Tensor] | None = None,
        drop_cond: DropCond = None,
        batch: int | None = None,
    ) -> torch.Tensor:
        """The conditioning vector `e` `[B, Cc]`: time-step embedding + trial-level conditions."""
        b = batch if batch is not None else t.shape[0]
        device = self.conv_in.weight.device
        t = t.to(device).float().expand(b) if t.ndim == 0 else t.to(device).float()
        e = self.time_mlp(timestep_features(t, self.config.time_freq_dim))  # [B, Cc]
        for spec in self.config.conditions:
            keep = self._keep(spec.name, cond, drop_cond, b, device)
            if spec.kind == "vector":
                null = self.null[spec.name].expand(b, -1)
                if keep.any():
                    vals = cond[spec.name].to(device).float().reshape(b, spec.dim)
                    emb = self.cond_mlps[spec.name](vals)  # [B, Cc]
                    e = e + torch.where(keep[:, None], emb, null)
                else:
                    e = e + null
            elif spec.kind == "categorical":
                idx = torch.full((b,), spec.n_classes, dtype=torch.long, device=device)
                if keep.any():
                    idx = torch.where(keep, cond[spec.name].to(device).long().reshape(b), idx)
                e = e + self.cond_embeddings[spec.name](idx)
        return e

    def series_inputs(
        self,
        cond: dict[str, torch.Tensor] | None,
        drop_cond: DropCond,
        b: int,
        n_bins: int,
    ) -> torch.Tensor | None:
        """Time-series conditions + indicator channels `[B, L, k]` (zeros where dropped)."""
        device = self.conv_in.weight.device
        parts = []
        for spec in self.config.conditions:
            if spec.kind != "series":
                continue
            keep = self._keep(spec.name, cond, drop_cond, b, device)
            k = keep[:, None, None].float()  # [B, 1, 1]
            if keep.any():
                vals = cond[spec.name].to(device).float().reshape(b, n_bins, spec.dim)
            else:
                vals = torch.zeros(b, n_bins, spec.dim, device=device)
            parts += [vals * k, k.expand(b, n_bins, 1)]
        return torch.cat(parts, dim=-1) if parts else None

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        mask: torch.Tensor | None = None,
        cond: dict[str, torch.Tensor] | None = None,
        drop_cond: DropCond = None,
    ) -> torch.Tensor:
        """Model output for noisy latents.

        Args:
            x: noisy normalised latents `[B, L, Z]`.
            t: time steps `[B]` (or a scalar), integers in 0..T-1 (fractions allowed).
            mask: valid bins `[B, L]` bool; None = all valid.
            cond: condition features by name: vector `[B, dim]`, categorical `[B]` long,
                series `[B, L, dim]`. Missing names (or None) take the null path.
            drop_cond: `[B]` bool, trials whose conditions are all dropped (guidance / training),
                or `{name: [B] bool}` to drop conditions one by one.

        Returns:
            `[B, L, Z]`, zero on padded bins.
        """
        b, n_bins, _ = x.shape
        e = self.embed(t, cond, drop_cond, batch=b)  # [B, Cc]
        inp = x
        series = self.series_inputs(cond, drop_cond, b, n_bins)
        if series is not None:
            inp = torch.cat([x, series.to(x.dtype)], dim=-1)  # [B, L, Z + k]
        if mask is not None:
            mask = mask.to(x.device).bool()
            if bool(mask.all()):
                # equal-length batches (the common sampling case): the unmasked norm is the same
                # value at ~half the cost (bench_pipeline "fixes": 1.1-1.2x per denoiser call)
                mask = None
            else:
                inp = inp * mask[:, :, None].to(x.dtype)
        h = self.conv_in(inp.transpose(1, 2))  # [B, C, L]
        if mask is not None:
            h = h * mask[:, None, :].to(h.dtype)
        for block in self.blocks:
            h = block(h, e, mask)
        out = self.conv_out(h).transpose(1, 2)  # [B, L, Z]
        if mask is not None:
            out = out * mask[:, :, None].to(out.dtype)
        return out
