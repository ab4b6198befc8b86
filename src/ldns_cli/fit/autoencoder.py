"""The LDNS autoencoder: spike counts -> smooth time-aligned latents -> Poisson rates.

Architecture (ldns-reference.md §1.2–1.3; channels-last `[B, L, C]` throughout, so every 1×1
layer is one GEMM over B·L rows and the counts need no transpose):

    counts [B, L, N] -> 1×1 in-projection N→C
      -> blocks × (masked InstanceNorm over time, unconditional adaLN shift/scale, S4, GELU,
                   per-channel scale+bias, residual; then norm, channel MLP C→2C→C, residual)
      -> grouped 1×1 bottleneck C→Z (latent j reads its own block of C/Z channels)   = z
    z -> grouped 1×1 unbottleneck Z→Z·k (each hidden unit sees one latent) -> GELU
      -> dense 1×1 → N -> softplus                                                  = rates

The decoder is time-local and additive over latents (§8.1), so decoding padded or long samples is
safe and all temporal structure lives in z. Norm statistics use valid bins only and padded bins
are zeroed before every S4 convolution, so padding never leaks into valid outputs (§8.4).

Objective (§1.4): coordinated dropout (elementwise keep-mask, kept counts rescaled by 1/(1−p)),
Poisson NLL (with Stirling term) on the *dropped* entries only, divided by the number of valid
neuron-bins; plus [β1·Σz² + β2·Σ_{k=1..5} Σ_t ‖z_t − z_{t+k}‖²/(1+k)] / (N·valid bins).
The public API is `[B, L, ·]` (trial, time, feature) like `SpikeData`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ldns_cli.core.data import SpikeData
from ldns_cli.nn.autoencoder import AEConfig, Autoencoder, infer_latents


# ---------------------------------------------------------------------------- objective
def poisson_nll(rates: Tensor, counts: Tensor) -> Tensor:
    """Elementwise Poisson NLL with the Stirling term of torch's `full=True`, rates in spikes/bin.

    Same values as `F.poisson_nll_loss(rates, counts, log_input=False, full=True, eps=1e-8)`,
    but ~8× faster on sparse counts: torch's version takes log(0) for every empty bin, a slow
    path on CPU; here the Stirling term only takes logs of counts clamped to ≥ 1.
    """
    with torch.no_grad():
        k = counts.clamp_min(1.0)
        stirling = k * torch.log(k) - k + 0.5 * torch.log(2 * math.pi * k)
        stirling = torch.where(counts > 1, stirling, 0.0)
    return rates - counts * torch.log(rates + 1e-8) + stirling


def latent_penalty(z: Tensor, mask: Tensor | None, l2: float, smooth: float, lags: int) -> Tensor:
    """β1·Σz² + β2·Σ_k Σ_t ‖z_t − z_{t+k}‖²/(1+k) over valid bins (unnormalised sum).

    z `[B, L, Z]`; pairs (t, t+k) count only when both bins are valid.
    """
    m = None if mask is None else mask.to(z.dtype)[..., None]  # [B, L, 1]
    zz = z if m is None else z * m
    total = l2 * zz.square().sum()
    if smooth > 0:
        for k in range(1, min(lags, z.shape[1] - 1) + 1):
            diff = (z[:, k:] - z[:, :-k]).square()  # [B, L−k, Z]
            if m is not None:
                diff = diff * m[:, k:] * m[:, :-k]
            total = total + smooth * diff.sum() / (1 + k)
    return total


def crop_to_longest(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """Drop time bins that are padding in every trial of the batch (saves FFT work)."""
    mask = batch.get("mask")
    if mask is None:
        return batch
    longest = int(mask.any(dim=0).nonzero().max().item()) + 1 if mask.any() else 1
    if longest == mask.shape[1]:
        return batch
    return {k: (v[:, :longest] if v.ndim >= 2 else v) for k, v in batch.items()}


class PoissonNLLFromLogits(torch.autograd.Function):
    """Σ w·(r − s·log(r + 1e-8)) with r = softplus(logits): the Poisson NLL without its Stirling
    term, weighted per entry, as one op with a hand-written gradient.

        ∂/∂logits = w · σ(logits) · (1 − s / (r + 1e-8))

    Why: on the `[B, L, N]` decoder output (the largest tensors of a training step) autograd
    through softplus, log, mul, sub and where allocates a full-size temporary per op and keeps
    several for the backward; this keeps r + ε once and fuses the weighting into a dot product.
    """

    @staticmethod
    def forward(
        ctx: Any, logits: Tensor, counts: Tensor, weight: Tensor, weight_sum: Tensor
    ) -> Tensor:
        """`weight_sum` = weight.sum(), passed in because the caller needs it too."""
        shifted = F.softplus(logits).add_(1e-8)  # r + ε
        term = torch.log(shifted).mul_(counts)
        torch.sub(shifted, term, out=term)  # r + ε − s·log(r + ε)
        ctx.save_for_backward(logits, shifted, counts, weight)
        # the ε inside the first r is taken back once, over the weights
        return torch.dot(term.reshape(-1), weight.reshape(-1)) - 1e-8 * weight_sum

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None]:
        logits, shifted, counts, weight = ctx.saved_tensors
        g = torch.div(counts, shifted).neg_().add_(1.0)  # 1 − s/(r + ε)
        g.mul_(torch.sigmoid(logits)).mul_(weight).mul_(grad)
        return g, None, None, None


def ae_loss(
    model: Autoencoder, batch: dict[str, Tensor], generator: torch.Generator | None
) -> tuple[Tensor, dict[str, float]]:
    """Training objective on a batch {"counts": [B, L, N] float, "mask": [B, L] bool}.

    The `train.fit` loss contract: returns (scalar loss, logs). Normalised by the number of valid
    neuron-bins (= B·N·L without padding), as the reference divides by B·N·T.
    """
    net = model.module if hasattr(model, "module") else model  # DDP-wrapped or bare
    cfg: AEConfig = net.config
    batch = crop_to_longest(batch)
    mask = batch.get("mask")
    if mask is not None and bool(mask.all()):
        mask = None  # no padding: skip the masking work
    counts = batch["counts"].float()  # [B, L, N]
    n_neurons, n_bins = counts.shape[2], counts.shape[1]
    n_valid_bins = counts.shape[0] * n_bins if mask is None else mask.sum().clamp_min(1)
    n_valid = n_valid_bins * n_neurons  # valid neuron-bins
    p = cfg.dropout_p
    if p > 0:
        keep = torch.rand(counts.shape, generator=generator, device=counts.device) >= p
        inputs = torch.where(keep, counts * (1.0 / (1.0 - p)), 0.0)
        weight = torch.where(keep, 0.0, 1.0)  # loss only on dropped entries...
    else:
        inputs = counts
        weight = torch.ones_like(counts)
    if mask is not None:
        weight = weight * mask[:, :, None]  # ...inside the trials
    logits, z = model(inputs, mask, logits=True)  # [B, L, N], [B, L, Z]
    # Poisson NLL r − s·log(r) plus the Stirling term of log(s!) (torch's full=True); the latter
    # is constant, so it is summed only over its few non-zero entries (counts > 1)
    big = torch.nonzero(counts.reshape(-1) > 1).squeeze(1)  # flat indices of counts > 1
    k = counts.reshape(-1)[big]
    w_big = weight.reshape(-1)[big]
    stirling = ((k * torch.log(k) - k + 0.5 * torch.log(2 * math.pi * k)) * w_big).sum()
    weight_sum = weight.sum()
    rec_sum = PoissonNLLFromLogits.apply(logits.float(), counts, weight, weight_sum) + stirling
    rec = rec_sum / n_valid
    lat = latent_penalty(z.float(), mask, cfg.l2, cfg.smooth, cfg.smooth_lags) / n_valid
    n_target = weight_sum.clamp_min(1)
    logs = {
        "rec": float(rec.detach()),
        "latent": float(lat.detach()),
        "nll_per_target": float(rec_sum.detach() / n_target),
    }
    return rec + lat, logs


def ae_val_loss(
    model: Autoencoder, batch: dict[str, Tensor], generator: torch.Generator | None
) -> tuple[Tensor, dict[str, float]]:
    """Validation criterion: the training objective under a fixed-seed CD mask.

    The loss counts only entries the encoder did not see, so it cannot be lowered by copying
    inputs; the trainer re-seeds the generator identically every epoch, so epochs compare, and
    the value is on the same scale as the training loss shown next to it.
    """
    loss, logs = ae_loss(model, batch, generator)
    return loss.detach(), logs


# ---------------------------------------------------------------------------- data <-> tensors
def tensors_from_data(data: SpikeData) -> dict[str, Tensor]:
    """SpikeData -> the trainer's in-memory dataset {"counts": [B, L, N] f32, "mask": [B, L]}."""
    return {
        "counts": torch.from_numpy(np.ascontiguousarray(data.counts, dtype=np.float32)),
        "mask": torch.from_numpy(data.mask()),
    }


@torch.no_grad()
def calibrate_rate_bias(
    model: Autoencoder,
    data: SpikeData,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    max_iter: int = 50,
    tol: float = 1e-7,
) -> tuple[float, float]:
    """Refit each neuron's decoder intercept by Poisson maximum likelihood, inputs not dropped.

    Why: coordinated dropout trains the decoder on inputs with a fraction p of the counts zeroed
    (and the rest scaled by 1/(1-p)); at inference every count is seen, the latents shift, and
    the rates come out biased (the shipped Lorenz AE ran +2.0% above the training counts, which
    alone puts the mean-ISI score of its own Poisson spikes at 0.20; after this refit: 0.01).
    Only `decoder_out.bias` changes, so the latents and everything fitted on them stay valid.

    Fisher scoring per neuron on the intercept b of r = softplus(u + b):
    gradient Σ σ(u+b)(1 − s/r), expected information Σ σ(u+b)²/r.

    Returns:
        Σ rates / Σ counts over `data`'s valid bins, before and after.
    """
    latents = infer_latents(model, data, batch_size, device)  # [B, L, Z]: the encoder stays
    mask = data.mask()
    z_valid = torch.from_numpy(latents[mask])  # [V, Z], valid bins only
    s_valid = torch.from_numpy(data.counts[mask])  # [V, N], the data's own integer dtype
    layer = model.decoder_out
    start = layer.bias.detach().double().cpu()  # [N], the intercept inside the logits below
    bias = start.clone()
    total_counts = max(float(s_valid.sum(dtype=torch.float64)), 1.0)
    chunk = 32768  # bins per pass step: bounds memory at ~chunk·N·8 bytes per temporary

    def pass_over_data(b: Tensor) -> tuple[Tensor, Tensor, float]:
        """(score [N], Fisher information [N], Σ rates) at intercepts b, streamed over chunks."""
        grad = torch.zeros_like(b)
        fisher = torch.zeros_like(b)
        rate_sum = 0.0
        for i in range(0, z_valid.shape[0], chunk):
            z = z_valid[i : i + chunk].to(device)  # [V', Z]
            # the logits carry the current intercept: swap it for the candidate b
            v = model.decoder_logits(z).double().cpu() - start + b  # [V', N]
            r = F.softplus(v).clamp_min(1e-12)
            sig = torch.sigmoid(v)
            s = s_valid[i : i + chunk].double()
            grad += (sig * (1 - s / r)).sum(0)
            fisher += (sig.square() / r).sum(0)
            rate_sum += float(r.sum())
        return grad, fisher.clamp_min(1e-12), rate_sum

    before = after = float("nan")
    for it in range(max_iter + 1):
        grad, fisher, rate_sum = pass_over_data(bias)
        if it == 0:
            before = rate_sum / total_counts
        after = rate_sum / total_counts
        step = (grad / fisher).clamp(-2.0, 2.0)
        if float(step.abs().max()) < tol or it == max_iter:
            break
        bias -= step
    layer.bias.copy_(bias.to(layer.bias.dtype))
    return before, after


def bits_per_spike(
    rates: np.ndarray, counts: np.ndarray, mask: np.ndarray, null_rate: np.ndarray
) -> float:
    """Log-likelihood gain over a per-neuron constant-rate null, in bits per spike.

    rates/counts `[B, L, N]`, mask `[B, L]`, null_rate `[N]` (spikes per bin).
    """
    m = mask[..., None]
    r = np.clip(rates.astype(np.float64), 1e-9, None)
    r0 = np.clip(null_rate.astype(np.float64), 1e-9, None)[None, None, :]
    ll = np.sum(m * (counts * np.log(r) - r))
    ll0 = np.sum(m * (counts * np.log(r0) - r0))
    n_spikes = float(np.sum(m * counts))
    return float((ll - ll0) / (max(n_spikes, 1.0) * math.log(2)))


def mean_poisson_nll(rates: np.ndarray, counts: np.ndarray, mask: np.ndarray) -> float:
    """Full Poisson NLL (with Stirling term) per valid neuron-bin."""
    nll = poisson_nll(torch.from_numpy(rates), torch.from_numpy(counts.astype(np.float32)))
    m = torch.from_numpy(mask)[..., None]
    return float((nll * m).sum() / (m.sum() * counts.shape[-1]))
