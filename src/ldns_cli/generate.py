"""Generation: noise -> latents -> rates -> spikes, for any number of trials, lengths and conditions.

    x_T ~ N(0, I)  --sampler (the denoiser, guidance)-->  x_0 (normalised latents)
      -> per-channel latent calibration (calibration.py; `--no-calibration` skips it)
      -> z = x_0·σ + μ (training stats) -> AE decode -> rates -> observation model -> counts

Trials are generated in chunks (sorted by length, so padding stays small, and capped by a bin
budget so memory stays bounded for long trials); variable lengths are masked, and because the
denoiser is exact under padding a trial's result does not depend on what it was batched with.
`generate_chunks` yields the chunks as they are made (`ldns sample` streams them to its output
file through `writers.write_generated`, so memory does not grow with the number of trials);
`generate` collects them into one in-memory `SpikeData`.

Randomness: each trial owns two generators derived from (seed, trial index): one for its starting
noise, one for its spikes. Deterministic samplers (dpm++, ddim with eta 0) therefore give each
trial the same output whatever `batch_size` or `n` is (trial i of `-n 10` is trial i of `-n 100`,
up to float rounding of batched matmuls). The ancestral noise of `ddpm` comes from one generator
per chunk, seeded by (seed, first trial of the chunk): the same seed and batch size give identical
output, a different batch size gives different (equally valid) ddpm samples.

Guidance (classifier-free, beyond the paper): ε = ε_uncond + W·(ε_cond − ε_uncond); W = 1 is the
plain conditional model and costs one network call per step; no condition = the unconditional path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ldns_cli.conditions.spec import check_conditions  # noqa: F401 (re-exported)
from ldns_cli.core.data import SpikeData, VariableInfo
from ldns_cli.core.errors import LdnsError
from ldns_cli.core.version import __version__
from ldns_cli.diffusion.model import DiffusionModel, denormalise
from ldns_cli.diffusion.samplers import resolve_sampler_name
from ldns_cli.diffusion.sampling import (
    MAX_BINS_PER_CHUNK,
    SPIKE_STREAM,
    SampleSettings,
    calibration_label,
    chunks,
    sample_latents,
    trial_generator,
)


def parse_lengths(n: int, lengths: np.ndarray) -> np.ndarray:
    lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)
    if lengths.shape != (n,):
        raise LdnsError(f"need {n} lengths, got {lengths.shape[0]}", "one length per trial")
    if lengths.min() < 1:
        raise LdnsError(f"lengths must be >= 1 bin, got {lengths.min()}", "e.g. --length 140")
    return lengths


# ---------------------------------------------------------------------------------------------
# The whole pipeline
# ---------------------------------------------------------------------------------------------


@dataclass
class GeneratedChunk:
    """One network batch of generated trials; arrays span the chunk's longest trial `l`.

    Attributes:
        index: global trial indices `[b]` (chunks come sorted by length, not by index).
        counts: int32 spike counts `[b, l, N]`, zero beyond each trial's length.
        rates: float32 rates in spikes per bin `[b, l, N]` (with `save_rates`), else None.
        latents: float32 latents `[b, l, Z]` (with `save_latents`), else None.
    """

    index: np.ndarray
    counts: np.ndarray
    rates: np.ndarray | None = None
    latents: np.ndarray | None = None


def sample_metadata(
    model: DiffusionModel,
    lengths: np.ndarray,
    settings: SampleSettings,
    conditions: dict[str, np.ndarray] | None = None,
    bin_size_s: float | None = None,
    provenance: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Everything of the generated `SpikeData` except the `[B, L, *]` arrays.

    Returns `SpikeData` keyword arguments: lengths, bin_size_s, covariates (trial-level
    conditions), behavior (time-series conditions), variable_info and provenance.
    """
    lengths = parse_lengths(len(lengths), lengths)
    conditions = dict(conditions or {})
    n_trials, n_bins = len(lengths), int(lengths.max())
    bin_size_s = float(bin_size_s or model.fingerprint.get("bin_size_s", 0) or 0)
    if bin_size_s <= 0:
        raise LdnsError("the models do not record a bin size", "refit with this ldns version")
    covariates, behavior, info = {}, {}, {}
    for spec in model.conditions:
        name = spec["name"]
        if name not in conditions:
            continue
        v = conditions[name]
        info[name] = VariableInfo(
            unit=spec.get("unit", ""),
            kind={"timeseries": "continuous"}.get(spec["kind"], spec["kind"]),
            description=f"condition given to the diffusion model ({spec['kind']})",
        )
        if spec["kind"] == "timeseries":
            series = np.zeros((n_trials, n_bins, v.shape[2]), dtype=np.float32)
            series[:, : min(n_bins, v.shape[1])] = v[:, :n_bins]
            series[~(np.arange(n_bins)[None, :] < lengths[:, None])] = 0.0
            behavior[name] = series
        else:
            arr = np.asarray(v)
            covariates[name] = arr[:, 0] if arr.ndim == 2 and arr.shape[1] == 1 else arr
    prov = {
        "generated_by": "ldns sample",
        "ldns_version": __version__,
        "sampler": resolve_sampler_name(settings.sampler),
        "steps": str(settings.resolved_steps()),
        "guidance": f"{settings.guidance:g}",
        "seed": str(settings.seed),
        "batch_size": str(settings.batch_size),
        "diffusion_id": model.id if model.checkpoint is not None else "",
        "ae_id": model.ae_id,
        "conditions": ",".join(sorted(conditions)) or "none",
        "latent_calibration": calibration_label(model, settings),
    }
    prov.update(provenance or {})
    return {
        "lengths": lengths,
        "bin_size_s": bin_size_s,
        "covariates": covariates,
        "behavior": behavior,
        "variable_info": info,
        "provenance": prov,
    }


def generate_chunks(
    ae: torch.nn.Module,
    model: DiffusionModel,
    observation: Any,
    lengths: np.ndarray,
    settings: SampleSettings,
    device: torch.device | str,
    conditions: dict[str, np.ndarray] | None = None,
    on_step: Callable[[int], None] | None = None,
    max_bins: int = MAX_BINS_PER_CHUNK,
) -> Iterator[GeneratedChunk]:
    """Generate `len(lengths)` trials chunk by chunk (see `generate` for the arguments).

    Yields one `GeneratedChunk` per network batch; memory is bounded by the chunk (at most
    `settings.batch_size` trials and `max_bins` trials x bins), whatever the number of trials.
    Only what `settings` asks for is returned (rates with `save_rates`, latents with
    `save_latents`).
    """
    lengths = parse_lengths(len(lengths), lengths)
    conditions = dict(conditions or {})
    for idx in chunks(lengths, settings.batch_size, max_bins):
        sub = {k: v[idx] for k, v in conditions.items()}
        x0, mask = sample_latents(model, lengths[idx], sub, settings, device, idx, on_step)
        z = denormalise(x0, model.latent_mean, model.latent_std)  # [b, l, Z]
        with torch.no_grad():
            rates = ae.decode(z).float()  # [b, l, N]
        rates = rates * mask[:, :, None].to(rates.dtype)
        # one generator per trial: a trial's spikes do not depend on its chunk or padding
        gens = [trial_generator(settings.seed, SPIKE_STREAM, int(i), rates.device) for i in idx]
        chunk_counts = observation.sample(
            rates, gens, torch.as_tensor(lengths[idx], device=rates.device)
        )
        yield GeneratedChunk(
            index=np.asarray(idx),
            counts=chunk_counts.round().to(torch.int32).cpu().numpy(),
            rates=rates.cpu().numpy().astype(np.float32, copy=False)
            if settings.save_rates
            else None,
            latents=(z * mask[:, :, None]).cpu().numpy().astype(np.float32, copy=False)
            if settings.save_latents
            else None,
        )


def generate(
    ae: torch.nn.Module,
    model: DiffusionModel,
    observation: Any,
    lengths: np.ndarray,
    settings: SampleSettings,
    device: torch.device | str,
    conditions: dict[str, np.ndarray] | None = None,
    bin_size_s: float | None = None,
    provenance: dict[str, str] | None = None,
    on_step: Callable[[int], None] | None = None,
    max_bins: int = MAX_BINS_PER_CHUNK,
) -> SpikeData:
    """Generate `len(lengths)` trials of spikes, all in memory (`generate_chunks` collected).

    For outputs larger than memory, `writers.write_generated` streams `generate_chunks` to a
    file instead.

    Args:
        ae: the autoencoder (its `decode(z [B, L, Z]) -> rates [B, L, N]` is used).
        model: the diffusion model belonging to `ae`.
        observation: has `sample(rates [B, L, N], generators [B], lengths [B]) -> counts`.
        lengths: bins per trial `[B]`.
        settings: sampler, steps, guidance, seed, batch size, what to save.
        device: where the networks run.
        conditions: raw per-trial condition values by name (checked with `check_conditions`).
        bin_size_s: bin width of the output (default: the AE's training data's).
        provenance: extra provenance entries (model ids, observation kind, ...).
        on_step: progress callback (trials x steps done so far, in increments).
        max_bins: trials x bins per chunk.

    Returns:
        `SpikeData` with counts `[B, L_max, N]`, the conditions as covariates (trial level) and
        behaviour (time series), optional latents/rates, and provenance.
    """
    meta = sample_metadata(model, lengths, settings, conditions, bin_size_s, provenance)
    lengths = meta["lengths"]
    n_trials, n_bins = len(lengths), int(lengths.max())
    counts = rates_all = latents_all = None
    for chunk in generate_chunks(
        ae, model, observation, lengths, settings, device, conditions, on_step, max_bins
    ):
        idx, l_chunk = chunk.index, chunk.counts.shape[1]
        if counts is None:
            n_neurons = chunk.counts.shape[-1]
            counts = np.zeros((n_trials, n_bins, n_neurons), dtype=np.int32)
            if chunk.rates is not None:
                rates_all = np.zeros((n_trials, n_bins, n_neurons), dtype=np.float32)
            if chunk.latents is not None:
                latents_all = np.zeros(
                    (n_trials, n_bins, chunk.latents.shape[-1]), dtype=np.float32
                )
        counts[idx, :l_chunk] = chunk.counts
        if rates_all is not None:
            rates_all[idx, :l_chunk] = chunk.rates
        if latents_all is not None:
            latents_all[idx, :l_chunk] = chunk.latents
    assert counts is not None
    return SpikeData(counts=counts, latents=latents_all, rates=rates_all, **meta)
