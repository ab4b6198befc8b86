"""Generation: noise -> latents -> rates -> spikes, for any number of trials, lengths and conditions.

    x_T ~ N(0, I)  --sampler (the denoiser, guidance)-->  x_0 (normalised latents)
      -> per-channel latent calibration (calibration.py; `--no-calibration` skips it)
      -> z = x_0·σ + μ (training stats) -> AE decode -> rates
      -> × the conditions' rate gain (conditional models that kept one: condition_gain.py)
      -> observation model -> counts

Trials are generated in chunks (sorted by length, so padding stays small, and capped by a bin
budget so memory stays bounded for long trials); variable lengths are masked, and because the
denoiser is exact under padding a trial's result does not depend on what it was batched with.
`generate_chunks` yields the chunks as they are made (`ldns sample` streams them to its output
file through `io.formats.write_generated`, so memory does not grow with the number of trials);
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

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ldns_cli.conditions.grammar import build_condition_table
from ldns_cli.conditions.spec import check_conditions, condition_values
from ldns_cli.core.data import MAX_TRIALS, SpikeData, VariableInfo
from ldns_cli.core.errors import LdnsError
from ldns_cli.core.runtime import check_seed
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
from ldns_cli.io.formats import WriteSummary, write_generated
from ldns_cli.store import AE_FILE, DIFFUSION_FILE, ModelSet

MAX_LENGTH = 1_000_000  # bins; a guard against typos like --length 1e9
DEFAULT_TRIALS = 64  # trials to sample when neither -n nor conditions say how many
# the stream that draws per-trial lengths, apart from the noise and spike streams of a seed
LENGTH_SEED_STREAM = 12345


def parse_length(spec: int | str | tuple[int, int]) -> tuple[int, int]:
    """A trial length in bins: 256, "256", "200:400" or (200, 400) (inclusive) -> (lo, hi)."""
    if isinstance(spec, tuple):
        lo, hi = (int(x) for x in spec)
        text = f"{lo}:{hi}"
    else:
        text = str(spec)
        match = re.fullmatch(r"\s*(\d+)\s*(?::\s*(\d+)\s*)?", text)
        if match is None:
            raise LdnsError(
                f"cannot read --length '{text}'",
                "give a number of bins (--length 256) or a range (--length 200:400)",
            )
        lo = int(match.group(1))
        hi = int(match.group(2)) if match.group(2) else lo
    if lo < 1 or hi < lo:
        raise LdnsError(
            f"--length {text} is empty: lengths must be >= 1 and A <= B",
            "e.g. --length 256 or --length 200:400",
        )
    if hi > MAX_LENGTH:
        raise LdnsError(f"--length {hi} is too long", f"at most {MAX_LENGTH} bins per trial")
    return lo, hi


@dataclass(frozen=True)
class TrialPlan:
    """The trials one sampling run makes: their lengths and their (checked) conditions."""

    lengths: np.ndarray  # [n] bins per trial
    conditions: dict[str, np.ndarray]  # per trial, as `check_conditions` returns; {}: none
    # other trial columns carried over from the recording the conditions came from
    columns: dict[str, np.ndarray] = field(default_factory=dict)
    column_info: dict[str, VariableInfo] = field(default_factory=dict)
    # (event column, start of bin 0 relative to the event in s): trials cut around an event
    alignment: tuple[str, float] | None = None

    @property
    def n_trials(self) -> int:
        return len(self.lengths)


def _typed_conditions(conditions: Sequence[str] | Mapping[str, Any]) -> list[str]:
    """`--condition` strings, or a {name: value} mapping written in the same grammar (numbers in
    the condition's unit, e.g. radians; strings such as "30deg" or "0:6.28:8"; a list of values
    for several)."""
    if isinstance(conditions, Mapping):
        out = []
        for name, value in conditions.items():
            if isinstance(value, str):
                text = value
            elif np.ndim(value) == 0:
                text = repr(float(value)) if not isinstance(value, (bool, np.bool_)) else str(value)
            else:
                text = ",".join(v if isinstance(v, str) else repr(float(v)) for v in value)
            out.append(f"{name}={text}")
        return out
    return list(conditions)


def check_plan(
    *,
    n: int | None,
    length: int | str | tuple[int, int] | None,
    lengths_given: bool,
    conditions_given: bool,
    condition_from_given: bool,
    per_condition: int | None,
    seed: int,
) -> None:
    """The argument checks of `plan_trials` that need no model: run before loading one."""
    for flag, value in (("-n", n), ("--per-condition", per_condition)):
        if value is not None and not 1 <= value <= MAX_TRIALS:
            raise LdnsError(
                f"{flag} must be between 1 and {MAX_TRIALS:,}, got {value}",
                "e.g. -n 64" if flag == "-n" else "e.g. --per-condition 5",
            )
    check_seed(seed)
    if length is not None and lengths_given:
        raise LdnsError("give --length or --lengths-from, not both", "pick one")
    if conditions_given and condition_from_given:
        raise LdnsError("give --condition or --condition-from, not both", "pick one")
    if length is not None:
        parse_length(length)
    given = conditions_given or condition_from_given
    if given and n is not None and per_condition is not None:
        raise LdnsError(
            "give -n or --per-condition with conditions, not both",
            "the count is (number of conditions) x --per-condition",
        )
    if not given and per_condition is not None:
        raise LdnsError("--per-condition needs --condition or --condition-from", "or use -n")


def plan_trials(
    model: DiffusionModel,
    *,
    n: int | None = None,
    length: int | str | tuple[int, int] | None = None,
    lengths_from: np.ndarray | None = None,
    conditions: Sequence[str] | Mapping[str, Any] | None = None,
    condition_from: SpikeData | None = None,
    per_condition: int | None = None,
    seed: int = 0,
    warn: Callable[[str], None] | None = None,
    condition_from_name: str = "the condition recording",
    alignment: tuple[str, float] | None = None,
) -> TrialPlan:
    """Which trials to generate: conditions (one row per distinct condition, repeated
    `per_condition` times, or cycled to fill `n`) and lengths (fixed, uniform in a range, drawn
    from `lengths_from`, or those of `condition_from`'s trials).

    `conditions` are typed values (`--condition` strings or a mapping, crossed into a grid);
    `condition_from` is a recording whose trials lend their conditions (and lengths), read with
    the model's bin size (`condition_from_name` names it in errors). Values of a recording
    outside the training range are reported through `warn`. Lengths of a range or of
    `lengths_from` are drawn with `seed`. `alignment` (event column, start of bin 0 relative
    to it) says the trials are cut around an event, as the model's training trials were; the
    plan then carries the event as a column. `condition_from`'s other trial columns (e.g. event
    times, trial types) are carried over with its conditions.
    """
    check_plan(
        n=n,
        length=length,
        lengths_given=lengths_from is not None,
        conditions_given=bool(conditions),
        condition_from_given=condition_from is not None,
        per_condition=per_condition,
        seed=seed,
    )
    rng = np.random.default_rng([seed, LENGTH_SEED_STREAM])

    values: dict[str, np.ndarray] = {}
    source_lengths: np.ndarray | None = None
    if condition_from is not None:
        model_bin_s = float(model.fingerprint.get("bin_size_s", 0) or 0)
        if model_bin_s and abs(condition_from.bin_size_s - model_bin_s) * 1e3 > 1e-6:
            raise LdnsError(
                f"{condition_from_name} has {condition_from.bin_size_s * 1e3:g} ms bins, the "
                f"model {model_bin_s * 1e3:g} ms",
                f"drop --bin-ms (the file is then read with the model's {model_bin_s * 1e3:g} "
                "ms bins)",
            )
        names = [c["name"] for c in model.conditions]
        if not names:
            raise LdnsError(
                "the model has no conditions", "sample without --condition-from, or refit"
            )
        src = condition_from
        missing = [m for m in names if m not in src.covariates and m not in src.behavior]
        if missing:
            raise LdnsError(
                f"{condition_from_name} lacks the model's condition(s) {', '.join(missing)}",
                "use a recording with the same covariates/behaviour as the training data",
            )
        values = {m: condition_values(src, m) for m in names}
        source_lengths = src.lengths
    elif conditions:
        # typed values: the cartesian product of every flag's values (range warnings there)
        values = build_condition_table(model.conditions, _typed_conditions(conditions)).values
    if values:
        n_rows = len(next(iter(values.values())))
        if n is not None:
            reps = -(-n // n_rows)  # fill -n by cycling through the conditions
            idx = np.tile(np.arange(n_rows), reps)[:n]
        else:
            if n_rows * (per_condition or 1) > MAX_TRIALS:
                raise LdnsError(
                    f"{n_rows:,} conditions x {per_condition or 1} is more than one run makes",
                    f"at most {MAX_TRIALS:,} trials per run",
                )
            idx = np.repeat(np.arange(n_rows), per_condition or 1)
        values = {name: v[idx] for name, v in values.items()}
        n_total = len(idx)
        if source_lengths is not None:
            source_lengths = source_lengths[idx]
    else:
        n_total = DEFAULT_TRIALS if n is None else n

    if length is None and lengths_from is None and source_lengths is None:
        # no length given: the training trials' length distribution
        lengths_from = model.train_lengths
        if lengths_from is None:
            raise LdnsError(
                "no trial length given, and the model does not record its training lengths",
                "pass --length BINS (e.g. --length 256, or 200:400) or --lengths-from DATA",
            )
    if length is not None:
        lo, hi = parse_length(length)
        lengths = np.full(n_total, lo) if lo == hi else rng.integers(lo, hi + 1, size=n_total)
    elif lengths_from is not None:
        lengths = rng.choice(np.asarray(lengths_from), size=n_total, replace=True)
    else:
        assert source_lengths is not None
        lengths = source_lengths.astype(np.int64)
    # typed conditions were range-checked while parsing; recordings' values are checked here
    checked = check_conditions(
        model, values, lengths, warn=warn if condition_from is not None else None
    )
    columns, column_info = {}, {}
    source_align = condition_from.provenance.get("align_field") if condition_from else None
    if alignment is None and source_align:  # the recording was cut around an event: so are these
        alignment = (source_align, float(condition_from.align_offset_s))
    if condition_from is not None:
        for name, values in condition_from.covariates.items():
            if name not in checked:
                columns[name] = np.asarray(values)[idx]
                column_info[name] = condition_from.info(name)
    if alignment is not None:
        event, offset_s = alignment
        columns[event] = np.full(len(lengths), -offset_s)  # the event, after bin 0's start
        column_info[event] = VariableInfo(
            unit="s", description="the event the trials are aligned to (s, relative to the trial)"
        )
    return TrialPlan(lengths, checked, columns, column_info, alignment)


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
    plan: TrialPlan | None = None,
) -> dict[str, Any]:
    """Everything of the generated `SpikeData` except the `[B, L, *]` arrays.

    Returns `SpikeData` keyword arguments: lengths, bin_size_s, covariates (trial-level
    conditions, plus the `plan`'s other trial columns and alignment event), behavior
    (time-series conditions), the alignment offset, variable_info and provenance.
    """
    lengths = parse_lengths(len(lengths), lengths)
    conditions = dict(conditions or {})
    n_trials, n_bins = len(lengths), int(lengths.max())
    bin_size_s = float(bin_size_s or model.fingerprint.get("bin_size_s", 0) or 0)
    if bin_size_s <= 0:
        raise LdnsError("the models do not record a bin size", "refit with this ldns version")
    covariates: dict[str, np.ndarray] = {}
    behavior: dict[str, np.ndarray] = {}
    info: dict[str, VariableInfo] = {}
    if plan is not None:
        covariates.update(plan.columns)
        info.update(plan.column_info)
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
        "latent_calibration": calibration_label(model, settings, guided=bool(conditions)),
    }
    alignment = plan.alignment if plan is not None else None
    if alignment is not None:
        prov["align_field"] = alignment[0]
    prov.update(provenance or {})
    return {
        "lengths": lengths,
        "bin_size_s": bin_size_s,
        "align_offset_s": 0.0 if alignment is None else alignment[1],
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
        _check_finite(x0, "the diffusion model's sampled latents", DIFFUSION_FILE)
        z = denormalise(x0, model.latent_mean, model.latent_std)  # [b, l, Z]
        with torch.no_grad():
            rates = ae.decode(z).float()  # [b, l, N]
        if model.condition_gain is not None:  # what the conditions do beyond the latents
            rates = model.condition_gain.apply(rates, sub)
        rates = rates * mask[:, :, None].to(rates.dtype)
        _check_finite(rates, "the autoencoder's decoded rates", AE_FILE)
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


def _check_finite(x: torch.Tensor, what: str, model_file: str) -> None:
    """Stop at the stage that produced NaN/inf: spikes drawn from it would be silently wrong."""
    if not bool(torch.isfinite(x).all()):
        raise LdnsError(
            f"{what} are not finite (NaN or inf): sampling stopped",
            f"the model ({model_file} or the files beside it) is damaged or was trained "
            "unstably: refit it, or restore the folder from a copy",
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
    plan: TrialPlan | None = None,
) -> SpikeData:
    """Generate `len(lengths)` trials of spikes, all in memory (`generate_chunks` collected).

    For outputs larger than memory, `io.formats.write_generated` streams `generate_chunks` to a
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
        plan: the `TrialPlan` the lengths and conditions came from (its carried trial columns
            and alignment go into the output).

    Returns:
        `SpikeData` with counts `[B, L_max, N]`, the conditions as covariates (trial level) and
        behaviour (time series), optional latents/rates, and provenance.
    """
    meta = sample_metadata(model, lengths, settings, conditions, bin_size_s, provenance, plan)
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


def sample_to_file(
    models: ModelSet,
    plan: TrialPlan,
    settings: SampleSettings,
    out: str | Path,
    *,
    device: torch.device | str,
    force: bool = False,
    on_step: Callable[[int], None] | None = None,
) -> WriteSummary:
    """Generate `plan`'s trials chunk by chunk straight into `out` (.nwb, .h5 or "-").

    Each chunk goes to a scratch file next to the output, so memory is bounded by the chunk, not
    by the number of trials; the output appears atomically at the end. Provenance records the
    model folder, the observation model and the sampler settings.
    """
    meta = sample_metadata(
        models.diffusion,
        plan.lengths,
        settings,
        plan.conditions,
        provenance={
            "observation": models.observation.kind,
            "models": str(models.folder),
            "ae_fingerprint_neurons": str(models.ae_checkpoint.fingerprint.get("n_neurons", "")),
        },
        plan=plan,
    )
    stream = generate_chunks(
        models.ae,
        models.diffusion,
        models.observation,
        plan.lengths,
        settings,
        device,
        conditions=plan.conditions,
        on_step=on_step,
    )
    return write_generated(
        meta,
        stream,
        out,
        force=force,
        settings=meta["provenance"],
        generated_by="ldns sample",
        save_latents=settings.save_latents,
        save_rates=settings.save_rates,
    )
