"""Fitting the autoencoder: its objective, the rate-intercept refit and the `fit-ae` stage.

Objective: coordinated dropout (elementwise keep-mask, kept counts rescaled by 1/(1−p)), Poisson
NLL (with Stirling term) on the *dropped* entries only, divided by the number of valid
neuron-bins; plus [β1·Σz² + β2·Σ_{k=1..5} Σ_t ‖z_t − z_{t+k}‖²/(1+k)] / (N·valid bins).

`fit_autoencoder` is the whole stage behind `ldns fit-ae` and `ldns_cli.fit_autoencoder`: resolve
the settings (or the saved ones on resume), split train/validation, train with the generic loop
(`fit/trainer.py`), refit the decoder intercepts, write `ae.safetensors` with a summary, and fit
the spike-history model on the frozen autoencoder.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ldns_cli.core.checkpoint import (
    Checkpoint,
    check_data_matches,
    load_checkpoint,
    save_checkpoint,
)
from ldns_cli.core.config import config_from_dict, config_to_dict, resolve_configs
from ldns_cli.core.console import info, warn
from ldns_cli.core.data import SpikeData
from ldns_cli.core.errors import LdnsError
from ldns_cli.core.runtime import resolve_device
from ldns_cli.fit import distributed as dist
from ldns_cli.fit.latent_size import (
    SearchFit,
    candidate_sizes,
    choose_latent_dim,
    log_search,
)
from ldns_cli.fit.splits import split_train_val
from ldns_cli.fit.trainer import CheckpointSpec, FitResult, TrainConfig, fit
from ldns_cli.io.common import READ_OPTIONS_KEY
from ldns_cli.nn.autoencoder import AE_PRESETS, AEConfig, Autoencoder, infer, infer_latents
from ldns_cli.store import AE_KIND, FIT_COMMAND, ae_path, check_fit_target, stale_after_refit


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


# ---------------------------------------------------------------------------- the stage
DEFAULT_PRESET = "small"
# The main fit continues the chosen latent size's search fit (`fit.latent_size.SearchFit`) with
# its own warm-up and decay at this fraction of the stage's peak learning rate. Restarted at the
# full rate, the continued fits on 600 simulated reach trials of refractory units (64 units)
# scored 0.067 and 0.059 bits/spike (seeds 0 and 1) against 0.077 and 0.066 for fresh 600-step
# fits; at a third of it, 0.073 and 0.074 (`ldns fit-ae --no-spike-history`, 1 thread). On the
# five beds of `python bench/quality_realism.py` the continued fits scored -0.004 to +0.015
# bits/spike against fresh ones, with the same latent sizes.
CONTINUED_LR_FACTOR = 1 / 3
AUTO = "auto"
ARCHITECTURE_KEYS = ("latent_dim", "width", "blocks", "bidirectional")


def resolve_ae_configs(
    preset: str | None,
    config_file: str | Path | None,
    overrides: dict[str, Any],
    n_neurons: int,
) -> tuple[AEConfig, TrainConfig]:
    """defaults < preset < config file < flags, split into the network and the training config.

    An explicit `epochs` means exactly that many epochs (the preset's minimum step count is
    dropped unless the config file sets one).
    """
    implied = {"min_steps": 0} if overrides.get("epochs") is not None else {}
    ae_cfg, train_cfg = resolve_configs(
        (AEConfig, TrainConfig),
        AE_PRESETS,
        preset or DEFAULT_PRESET,
        config_file,
        {**overrides, "n_neurons": n_neurons},
        implied=implied,
    )
    ae_cfg.validate()
    train_cfg.validate()
    return ae_cfg, train_cfg


def _resumed_configs(
    ckpt: Checkpoint, overrides: dict[str, Any], preset: str | None, config_file: Any
) -> tuple[AEConfig, TrainConfig]:
    """The saved settings of an interrupted fit; only the epoch budget, batch size, learning
    rate and regularisers may change (the architecture is fixed by the saved weights)."""
    path = str(ckpt.path)
    ae_cfg = config_from_dict(AEConfig, ckpt.config["ae"], path)
    changed = [
        k for k in ARCHITECTURE_KEYS
        if overrides.get(k) is not None and overrides[k] != getattr(ae_cfg, k)
    ]  # fmt: skip
    if changed or preset or config_file:
        raise LdnsError(
            "--resume continues the saved model; its architecture and preset are fixed",
            "drop --preset/--config/architecture flags, or fit anew without --resume",
        )
    saved_train = dict(ckpt.config["train"])
    saved_train.update(
        {k: overrides[k] for k in ("epochs", "batch_size", "lr") if overrides.get(k)}
    )
    if overrides.get("epochs"):
        saved_train["min_steps"] = 0  # an explicit --epochs means exactly that many
    train_cfg = config_from_dict(TrainConfig, saved_train, path)
    regularisers = {
        k: overrides[k] for k in ("dropout_p", "l2", "smooth") if overrides.get(k) is not None
    }
    return dataclasses.replace(ae_cfg, **regularisers), train_cfg


def _warm_record(warm: SearchFit, seed: int) -> dict[str, int]:
    """Which search fit the main fit continued, for the checkpoint."""
    return {"latent_dim": warm.latent_dim, "seed": seed, "steps": warm.steps}


def _read_options(data: SpikeData) -> dict[str, Any]:
    """How `data` was read (when it was read from a file), for the model folder to remember."""
    recorded = data.provenance.get(READ_OPTIONS_KEY)
    return {} if recorded is None else {"read_options": json.loads(recorded)}


def fit_summary(
    model: Autoencoder, train: SpikeData, ref: SpikeData, device: str
) -> dict[str, float]:
    """Poisson NLL per neuron-bin of `ref` under the model and under the training mean rates,
    and the model's bits per spike over that null."""
    _, rates = infer(model, ref, 64, device)
    mask = ref.mask()
    null_rate = train.counts.sum(axis=(0, 1)) / float(train.lengths.sum())  # [N] spikes/bin
    null = np.broadcast_to(null_rate[None, None, :], rates.shape).astype(np.float32)
    return {
        "poisson_nll": mean_poisson_nll(rates, ref.counts, mask),
        "null_poisson_nll": mean_poisson_nll(null, ref.counts, mask),
        "bits_per_spike": bits_per_spike(rates, ref.counts, mask, null_rate),
    }


@dataclass
class AutoencoderFit:
    """What `fit_autoencoder` did: the trainer's result, the file, and the end-of-fit summary
    (empty when interrupted, or on ranks other than 0 under torchrun)."""

    result: FitResult
    path: Path
    summary: dict[str, Any] = field(default_factory=dict)
    is_main: bool = True  # rank 0 (or a single process): the rank that writes and reports

    @property
    def interrupted(self) -> bool:
        return self.result.interrupted


def fit_autoencoder(
    data: SpikeData,
    folder: str | Path,
    *,
    preset: str | None = None,
    config: str | Path | None = None,
    latent_dim: int | str | None = None,
    width: int | None = None,
    blocks: int | None = None,
    bidirectional: bool | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    dropout_p: float | None = None,
    l2: float | None = None,
    smooth: float | None = None,
    val_frac: float = 0.1,
    amp: bool | None = None,
    spike_history: bool = True,
    resume: bool = False,
    force: bool = False,
    device: str = "auto",
    seed: int | None = None,
    quiet: bool = False,
    source: str = "",
) -> AutoencoderFit:
    """Fit the S4 autoencoder on `data` into `folder/ae.safetensors` (the `fit-ae` stage).

    Settings resolve as defaults < `preset` (default "small") < `config` (a JSON file) < the
    keyword arguments; `resume` continues an interrupted fit with its saved settings.
    `latent_dim="auto"` (the default when neither `preset` nor `config` is given) chooses the
    latent size by co-smoothing on the validation trials (`fit.latent_size`) and continues the
    chosen size's search fit (at `CONTINUED_LR_FACTOR` x the learning rate), whose steps count
    towards the step floor. Training uses the data's train/val split (test trials never), else
    a seeded `val_frac` of the trials.
    After training the decoder intercepts are refit with no inputs dropped, the checkpoint gets
    a summary (validation Poisson NLL, bits/spike), and with `spike_history` the spike-history
    observation model is fitted on the frozen autoencoder. Runs under torchrun as one rank.
    `source` names the data in the checkpoint (the CLI passes the file path).
    """

    folder = Path(folder)
    path = ae_path(folder)
    auto_latent = latent_dim == AUTO or (latent_dim is None and preset is None and config is None)
    if isinstance(latent_dim, str) and latent_dim != AUTO:
        raise LdnsError(
            f"--latent-dim must be a number or 'auto', got {latent_dim!r}", "e.g. --latent-dim 8"
        )
    fixed_latent = None if auto_latent else latent_dim
    dev = dist.init(resolve_device(device))
    try:
        overrides = {
            "latent_dim": fixed_latent, "width": width, "blocks": blocks,
            "bidirectional": bidirectional, "dropout_p": dropout_p, "l2": l2, "smooth": smooth,
            "epochs": epochs, "batch_size": batch_size, "lr": lr, "amp": amp, "seed": seed,
        }  # fmt: skip
        resume_ckpt = None
        if resume:
            resume_ckpt = load_checkpoint(path, AE_KIND, fit_command=FIT_COMMAND)
            check_data_matches(resume_ckpt.fingerprint, data.fingerprint(), "autoencoder")
            ae_cfg, train_cfg = _resumed_configs(resume_ckpt, overrides, preset, config)
            val_frac = float(resume_ckpt.extra.get("data", {}).get("val_frac", val_frac))
        else:
            check_fit_target(folder, "ae", force)
            ae_cfg, train_cfg = resolve_ae_configs(preset, config, overrides, data.n_neurons)
            if path.exists():
                info(f"replacing the existing autoencoder at {path} (--force)")
                stale = stale_after_refit(folder, keep_history=spike_history)
                if stale:
                    warn(
                        f"{', '.join(stale)} in {folder} belong to the previous autoencoder: "
                        "refit them after this fit"
                    )
        if not 0 <= val_frac < 1:
            raise LdnsError(f"--val-frac must be in [0, 1), got {val_frac}", "e.g. --val-frac 0.1")

        train, val, split_desc = split_train_val(data, val_frac, train_cfg.seed)
        search = None
        warm: SearchFit | None = None
        floor = train_cfg.min_steps  # the stage's step floor, before the search's steps count
        if auto_latent and resume_ckpt is None:
            if val is None:
                warn(
                    "no validation trials to choose the latent size on: using "
                    f"{ae_cfg.latent_dim} (give --latent-dim, or keep some validation trials)"
                )
            else:
                info(
                    f"choosing the latent size by co-smoothing on {val.n_trials} validation "
                    f"trials (sizes {', '.join(map(str, candidate_sizes(data.n_neurons)))})"
                )
                z, search, warm = choose_latent_dim(
                    ae_cfg, train_cfg, tensors_from_data(train), val, ae_loss, dev
                )
                log_search(search)
                ae_cfg = dataclasses.replace(ae_cfg, latent_dim=z)
                # the main fit continues the chosen size's search fit (same settings and
                # seed), so the search's steps count towards the stage's step floor
                train_cfg = dataclasses.replace(
                    train_cfg,
                    min_steps=max(floor - warm.steps, 0),
                    lr=train_cfg.lr * CONTINUED_LR_FACTOR,
                )
        info(
            f"fit-ae: {train.n_trials} training / {val.n_trials if val else 0} validation trials "
            f"({split_desc}), {data.n_neurons} neurons, {data.n_bins} bins of "
            f"{data.bin_size_s * 1e3:g} ms; device {dev}"
            + (f", {dist.world_size()} processes" if dist.world_size() > 1 else "")
        )
        model = Autoencoder(ae_cfg, torch.Generator().manual_seed(train_cfg.seed))
        train_t = tensors_from_data(train)
        if warm is not None:
            model.load_state_dict(warm.state)
            counted = f"; its steps count towards the {floor}-step floor" if floor else ""
            info(
                f"fit-ae: continuing the search's {warm.steps}-step fit of {warm.latent_dim} "
                f"latents (seed {train_cfg.seed}) at peak learning rate {train_cfg.lr:.2g}"
                f"{counted}"
            )
        else:
            mean_rate = train_t["counts"].sum(dim=(0, 1)) / train_t["mask"].sum()
            model.init_rate_bias(mean_rate)
        n_params = sum(p.numel() for p in model.parameters())
        info(
            f"autoencoder: {n_params:,} parameters, Z={ae_cfg.latent_dim}, width {ae_cfg.width}, "
            f"{ae_cfg.blocks} {'bidirectional' if ae_cfg.bidirectional else 'causal'} blocks; "
            f"{train_cfg.epochs} epochs of batch {train_cfg.batch_size}"
        )
        spec = CheckpointSpec(
            path=path,
            kind=AE_KIND,
            config={"ae": config_to_dict(ae_cfg), "train": config_to_dict(train_cfg)},
            fingerprint=data.fingerprint(),
            extra={
                "data": {
                    "source": source,
                    "n_train": train.n_trials,
                    "n_val": val.n_trials if val else 0,
                    "val_frac": val_frac,
                    "split": split_desc,
                    **_read_options(data),
                },
                **({"latent_search": search} if search is not None else {}),
                **({"continues_search_fit": _warm_record(warm, train_cfg.seed)} if warm else {}),
            },
            # Poisson NLL of the held-out (coordinated-dropout) entries plus the latent penalty
            loss_name="objective_nats_per_neuron_bin",
        )
        result = fit(
            model,
            train_t,
            tensors_from_data(val) if val is not None else None,
            ae_loss,
            train_cfg,
            device=dev,
            checkpoint=spec,
            resume=resume_ckpt,
            val_loss_fn=ae_val_loss,
            description="fit-ae",
        )
        outcome = AutoencoderFit(result, path, is_main=dist.is_main())
        if result.interrupted:
            return outcome
        if dist.is_main():
            outcome.summary = _finish(
                result, data, train, val, folder, dev, train_cfg.seed, spike_history, quiet
            )
        dist.barrier()
        return outcome
    finally:
        dist.shutdown()


def _finish(
    result: FitResult,
    data: SpikeData,
    train: SpikeData,
    val: SpikeData | None,
    folder: Path,
    dev: str,
    seed: int,
    spike_history: bool,
    quiet: bool,
) -> dict[str, Any]:
    """Rank 0 after training: intercept refit, summary, final checkpoint, spike history."""
    from ldns_cli.fit.checks import autoencoder_checks, report_checks
    from ldns_cli.fit.history import fit_history_for_ae
    from ldns_cli.nn.observation import auto_selected

    ckpt = result.checkpoint
    assert ckpt is not None
    path = ae_path(folder)
    # on a copy: the trained module stays as the trainer (and its DDP peers) left it
    model = copy.deepcopy(result.model)
    ratio_before, ratio_after = calibrate_rate_bias(model, train, device=dev)
    ckpt.tensors["model.decoder_out.bias"] = model.decoder_out.bias.detach().cpu().clone()
    info(
        "rate intercepts refit on the training trials with no inputs dropped: "
        f"rates/counts {ratio_before:.4f} -> {ratio_after:.4f}"
    )
    summary: dict[str, Any] = fit_summary(model, train, val if val is not None else train, dev)
    summary["rate_ratio_before_calibration"] = ratio_before
    summary["rate_ratio"] = ratio_after
    summary.update(
        {
            "best_epoch": result.best_epoch,
            "stop_reason": result.stop_reason,
            "epochs": result.epochs_done,
            "train_seconds": result.train_seconds,
            "bins_per_s": result.trials_seen * data.n_bins / max(result.train_seconds, 1e-9),
        }
    )
    which = "validation" if val is not None else "training"
    ckpt.extra["summary"] = summary
    # saved before the history fit, so that an interrupted one leaves a usable autoencoder
    save_checkpoint(path, ckpt)
    info(
        f"saved {path} (best epoch {result.best_epoch}/{result.epochs_done}); "
        f"{which} Poisson NLL {summary['poisson_nll']:.4f} per neuron-bin "
        f"(mean-rate null {summary['null_poisson_nll']:.4f}), "
        f"{summary['bits_per_spike']:.3f} bits/spike over the null"
    )
    if math.isfinite(summary["bits_per_spike"]) and summary["bits_per_spike"] <= 0:
        warn("the autoencoder does no better than a constant rate: train longer")
    observation = None
    if spike_history:
        history = fit_history_for_ae(model, train, val, folder, dev, seed, quiet)
        # judged free-running on held-out trials (history vs Poisson vs the per-neuron choice)
        selection = history.fit_summary.get("selection")  # type: ignore[attr-defined]
        if selection is not None:
            summary["observation_free_running_rmse"] = selection["rmse"]
            summary["history_neurons"] = int(sum(selection["use_history"]))
        observation = auto_selected(history)
    if val is not None:  # do spikes drawn from the rates keep what a decoder of real spikes reads?
        summary["condition_checks"] = autoencoder_checks(
            model, train, val, dev, seed, observation=observation
        )
        ckpt.extra["summary"] = summary
        save_checkpoint(path, ckpt)
    report_checks(summary.get("condition_checks", {}))
    return summary
