"""Choosing the autoencoder's latent size by co-smoothing (`fit-ae --latent-dim auto`).

A latent size is good when the latents carry what the population shares: then the activity of
neurons the encoder does not see can be predicted from the others. For each candidate size Z of
`LATENT_GRID` (up to half the neurons), a short fit (`SEARCH_STEPS` optimiser steps, the stage's
other settings unchanged) is scored on the validation trials by co-smoothing, as the Neural
Latents Benchmark scores models: the neurons are split into `NEURON_FOLDS` groups; each group's
inputs are zeroed (the others scaled up by N/(N − |group|), as inverted dropout does) and its
rates predicted from the rest; the score is the Poisson log-likelihood gain of those predictions
over each neuron's mean training rate, in bits per spike.

The size kept is the smallest whose score is within the noise of the best: within one standard
error of the per-trial paired difference (the evaluation's noise), or within `RELATIVE_TOLERANCE`
of the best score (the short fits' own run-to-run spread: four seeds of one size gave a standard
deviation of about 1.1% of the score, so two sizes differ by about 1.6% by chance; 2% is a
little more than that, `python bench/quality_latent_size.py`).
Larger latents that predict no better only give the denoiser more to learn.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch

from ldns_cli.core.console import info, is_quiet, set_quiet
from ldns_cli.core.data import SpikeData
from ldns_cli.fit.trainer import LossFn, TrainConfig, fit
from ldns_cli.nn.autoencoder import AEConfig, Autoencoder

LATENT_GRID = (2, 4, 6, 8, 12, 16, 24, 32)
SEARCH_STEPS = 150
NEURON_FOLDS = 4
RELATIVE_TOLERANCE = 0.02
MIN_LATENT = 2


def candidate_sizes(n_neurons: int) -> list[int]:
    """The grid up to half the neurons (at least the smallest size)."""
    sizes = [z for z in LATENT_GRID if z <= max(n_neurons // 2, MIN_LATENT)]
    return sizes or [MIN_LATENT]


@torch.no_grad()
def cosmoothing_per_trial(
    model: Autoencoder,
    data: SpikeData,
    null_rate: np.ndarray,
    device: str,
    seed: int = 0,
    batch_size: int = 64,
) -> tuple[np.ndarray, float]:
    """Per-trial log-likelihood gain (nats) of co-smoothed rates over the null `[B]`, and the
    number of spikes it is over (see the module docstring)."""
    model.eval()
    n = data.n_neurons
    folds = np.random.default_rng([seed, 0xC05]).permutation(n) % NEURON_FOLDS
    r0 = np.clip(null_rate.astype(np.float64), 1e-9, None)  # [N]
    gain = np.zeros(data.n_trials)
    mask_all = data.mask()
    for start in range(0, data.n_trials, batch_size):
        sl = slice(start, start + batch_size)
        longest = int(data.lengths[sl].max())
        counts = torch.as_tensor(data.counts[sl, :longest], dtype=torch.float32, device=device)
        mask = torch.as_tensor(mask_all[sl, :longest], device=device)
        pad = mask if not bool(mask.all()) else None
        predicted = torch.zeros_like(counts)
        for f in range(NEURON_FOLDS):
            out = torch.as_tensor(folds == f, device=device)  # [N] held-out neurons
            if not bool(out.any()):
                continue
            scale = n / max(n - int(out.sum()), 1)
            inputs = torch.where(out, 0.0, counts * scale)
            rates, _ = model(inputs, pad)
            predicted = torch.where(out, rates.float(), predicted)
        r = np.clip(predicted.cpu().numpy().astype(np.float64), 1e-9, None)  # [b, l, N]
        c = data.counts[sl, :longest].astype(np.float64)
        m = mask_all[sl, :longest, None]
        ll = (m * (c * np.log(r) - r)).sum(axis=(1, 2))
        ll0 = (m * (c * np.log(r0) - r0)).sum(axis=(1, 2))
        gain[sl] = ll - ll0
    n_spikes = float((data.counts * mask_all[..., None]).sum())
    return gain, n_spikes


def choose_latent_dim(
    ae_cfg: AEConfig,
    train_cfg: TrainConfig,
    train_t: dict[str, torch.Tensor],
    val: SpikeData,
    loss_fn: LossFn,
    device: str,
    steps: int = SEARCH_STEPS,
) -> tuple[int, dict[str, Any]]:
    """The latent size by co-smoothing (module docstring) and its record: the curve (size,
    bits per spike, standard error of the difference to the best), the rule and the choice.

    `train_t`: the training trials as the stage's tensors ({"counts", "mask"}); `loss_fn`: the
    stage's training loss."""
    sizes = candidate_sizes(int(train_t["counts"].shape[2]))
    search_cfg = dataclasses.replace(
        train_cfg, epochs=1, min_steps=steps, patience=0, checkpoint_every_s=math.inf
    )
    mean_rate = train_t["counts"].sum(dim=(0, 1)) / train_t["mask"].sum()
    null_rate = mean_rate.numpy().astype(np.float64)
    gains: dict[int, np.ndarray] = {}
    n_spikes = 1.0
    was_quiet = is_quiet()
    for z in sizes:
        cfg = dataclasses.replace(ae_cfg, latent_dim=z)
        model = Autoencoder(cfg, torch.Generator().manual_seed(train_cfg.seed))
        model.init_rate_bias(mean_rate)
        set_quiet(True)  # one line per size below, not a progress bar each
        try:
            result = fit(model, train_t, None, loss_fn, search_cfg, device=device,
                         description=f"latent size {z}")  # fmt: skip
        finally:
            set_quiet(was_quiet)
        if result.interrupted:  # Ctrl-C during the search: stop it, keep what was measured
            raise KeyboardInterrupt
        gains[z], n_spikes = cosmoothing_per_trial(result.model, val, null_rate, device)
        info(
            f"latent size {z}: {gains[z].sum() / (math.log(2) * max(n_spikes, 1.0)):.4f} bits/spike"
        )
    per_spike = math.log(2) * max(n_spikes, 1.0)
    score = {z: float(g.sum() / per_spike) for z, g in gains.items()}
    best = max(score, key=lambda z: score[z])
    n_val = max(len(gains[best]), 2)
    curve = []
    chosen = None
    for z in sizes:
        diff = (gains[best] - gains[z]) / per_spike * n_val  # per-trial contributions, scaled
        se = float(diff.std(ddof=1) / math.sqrt(n_val)) if n_val > 1 else 0.0
        curve.append({"latent_dim": z, "cobps": score[z], "se_vs_best": se})
        tolerance = max(se, RELATIVE_TOLERANCE * abs(score[best]))
        if chosen is None and score[best] - score[z] <= tolerance:
            chosen = z
    chosen = chosen or best
    record = {
        "chosen": chosen,
        "curve": curve,
        "steps_per_size": steps,
        "rule": "the smallest latent size whose co-smoothing bits/spike on the validation "
        f"trials is within one standard error or {RELATIVE_TOLERANCE:.0%} of the best",
    }
    return chosen, record


def describe_search(record: dict[str, Any]) -> list[str]:
    """Lines: the curve and the choice."""
    points = ", ".join(f"Z={p['latent_dim']}: {p['cobps']:.4f}" for p in record["curve"])
    return [
        f"latent size by co-smoothing (bits/spike of held-out neurons, validation trials, "
        f"{record['steps_per_size']} steps per size): {points}",
        f"latent size {record['chosen']}: {record['rule']}",
    ]


def log_search(record: dict[str, Any]) -> None:
    for line in describe_search(record):
        info(line)
