"""`ldns sample`: generate spike trains from the fitted models (any length, optional conditions)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from ldns_cli.cli.app import (
    DEFAULT_MODELS,
    DeviceOpt,
    ForceOpt,
    ModelsOpt,
    QuietOpt,
    command,
    setup,
)
from ldns_cli.cli.options import (
    AlignOpt,
    BinMsOpt,
    ChopOpt,
    TrialsOpt,
    WindowOpt,
    flag_opt,
    read_options,
    select_trials,
)
from ldns_cli.core.console import info, progress, warn
from ldns_cli.core.errors import LdnsError
from ldns_cli.core.runtime import resolve_device

MAX_LENGTH = 1_000_000  # bins; a guard against typos like --length 1e9


def parse_length(text: str) -> tuple[int, int]:
    """`--length L` or `A:B` (inclusive range) -> (lo, hi) in bins."""
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


def draw_lengths(
    n: int, length: str | None, lengths_from: np.ndarray | None, rng: np.random.Generator
) -> np.ndarray:
    """Per-trial lengths: fixed, uniform in a range, or resampled from a recording's lengths."""
    if length is not None:
        lo, hi = parse_length(length)
        return np.full(n, lo) if lo == hi else rng.integers(lo, hi + 1, size=n)
    assert lengths_from is not None
    return rng.choice(lengths_from, size=n, replace=True)


@command("sample")
def sample(
    models: ModelsOpt = DEFAULT_MODELS,
    n: Annotated[
        int | None,
        flag_opt(
            "-n", "Number of trials (with conditions: cycles through them; default one each)."
        ),
    ] = None,
    length: Annotated[
        str | None, flag_opt("--length", "Bins per trial: 256, or a range 200:400 (uniform).")
    ] = None,
    lengths_from: Annotated[
        Path | None,
        flag_opt("--lengths-from", "Match the trial-length distribution of a recording."),
    ] = None,
    sampler: Annotated[
        str, typer.Option("--sampler", help="ddpm (the paper's, 1000 steps), ddim or dpm++.")
    ] = "dpm++",
    steps: Annotated[
        int | None, flag_opt("--steps", "Sampler steps (default: dpm++ 20, ddim 50, ddpm 1000).")
    ] = None,
    guidance: Annotated[
        float,
        typer.Option("--guidance", help="Classifier-free guidance W (1 = plain conditional)."),
    ] = 1.0,
    condition: Annotated[
        list[str] | None,
        flag_opt(
            "--condition",
            "NAME=VALUE (repeatable): angle=0.5, angle=30deg, a grid angle=0:6.28:8, or a,b,c.",
        ),
    ] = None,
    condition_from: Annotated[
        Path | None,
        flag_opt(
            "--condition-from", "Take the conditions (incl. velocity traces) from a recording."
        ),
    ] = None,
    trials: TrialsOpt = None,
    per_condition: Annotated[
        int | None, flag_opt("--per-condition", "Samples per condition value/trial (default 1).")
    ] = None,
    observation: Annotated[
        str,
        typer.Option("--observation", help="auto (spike history if fitted), history or poisson."),
    ] = "auto",
    calibration: Annotated[
        bool,
        typer.Option(
            "--calibration/--no-calibration",
            help="Apply the model's per-channel latent calibration for this sampler setting "
            "(fit-diffusion fits dpm++ 20).",
        ),
    ] = True,
    save_latents: Annotated[
        bool, typer.Option("--save-latents", help="Also store the latents.")
    ] = False,
    save_rates: Annotated[
        bool, typer.Option("--save-rates", help="Also store the firing rates.")
    ] = False,
    batch_size: Annotated[
        int, typer.Option("--batch-size", help="Trials per network batch (bounds memory).")
    ] = 64,
    out: Annotated[
        str | None, flag_opt("--output", "Output file (.nwb, .h5) or - for stdout (HDF5).", "-o")
    ] = None,
    force: ForceOpt = False,
    bin_ms: BinMsOpt = None,
    align: AlignOpt = None,
    window: WindowOpt = None,
    chop: ChopOpt = None,
    seed: Annotated[int, typer.Option("--seed", help="Random seed; same seed, same file.")] = 0,
    device: DeviceOpt = "auto",
    quiet: QuietOpt = False,
) -> None:
    """Generate new spike trains: noise -> latents -> rates -> spikes.

    Needs MODELS/ae.safetensors and MODELS/diffusion.safetensors (and history.safetensors for the
    spike-history observation model). Any length works, including lengths never trained on.
    Conditioned models take --condition or --condition-from; without them they sample
    unconditionally.

    Example: ldns sample -m models/ -n 64 --length 256 --sampler dpm++ --steps 20 -o out.nwb
    """
    import torch

    from ldns_cli.conditions.grammar import build_condition_table
    from ldns_cli.conditions.spec import check_conditions, condition_values
    from ldns_cli.core.paths import check_output
    from ldns_cli.diffusion.samplers import check_steps, resolve_sampler_name
    from ldns_cli.diffusion.sampling import SampleSettings, active_calibration, calibration_label
    from ldns_cli.generate import GeneratedChunk, generate_chunks, sample_metadata
    from ldns_cli.io.formats import output_format, read_spikes, write_generated
    from ldns_cli.store import load_autoencoder, load_diffusion, load_observation

    setup(quiet)
    if out is None:
        raise LdnsError("no output file", "pass -o out.nwb (or -o out.h5, or -o - for stdout)")
    output_format(out)
    check_output(out, force)
    if n is not None and n < 1:
        raise LdnsError(f"-n must be >= 1, got {n}", "e.g. -n 64")
    if per_condition is not None and per_condition < 1:
        raise LdnsError(f"--per-condition must be >= 1, got {per_condition}", "e.g. 5")
    if batch_size < 1:
        raise LdnsError(f"--batch-size must be >= 1, got {batch_size}", "e.g. 64")
    if not np.isfinite(guidance):
        raise LdnsError(f"--guidance must be a number, got {guidance}", "e.g. --guidance 2")
    if length is not None and lengths_from is not None:
        raise LdnsError("give --length or --lengths-from, not both", "pick one")
    if condition and condition_from is not None:
        raise LdnsError("give --condition or --condition-from, not both", "pick one")
    if length is not None:
        parse_length(length)
    sampler_name = resolve_sampler_name(sampler)
    dev = resolve_device(device)

    ae, ae_ckpt = load_autoencoder(models, dev)
    model = load_diffusion(models, dev, ae_ckpt)
    steps_n = steps if steps is not None else None
    if steps_n is not None:
        check_steps(steps_n, model.schedule.num_train_timesteps)
    obs = load_observation(Path(models), observation, dev, fingerprint=ae_ckpt.fingerprint)
    obs_kind = "poisson" if type(obs).__name__ == "PoissonObservation" else "history"
    rng = np.random.default_rng([seed, 12345])
    # recordings read for conditions/lengths are binned like the model's training data
    model_bin_ms = float(model.fingerprint.get("bin_size_s", 0)) * 1e3 or None
    opts = read_options(bin_ms or model_bin_ms, align, window, chop)

    # ---- conditions: one row per distinct condition, repeated --per-condition times
    values: dict[str, np.ndarray] = {}
    source_lengths: np.ndarray | None = None
    if condition_from is not None:
        src = select_trials(read_spikes(condition_from, opts), trials)
        if model_bin_ms and abs(src.bin_size_s * 1e3 - model_bin_ms) > 1e-6:
            raise LdnsError(
                f"'{condition_from}' has {src.bin_size_s * 1e3:g} ms bins, the model "
                f"{model_bin_ms:g} ms",
                f"drop --bin-ms (the file is then read with the model's {model_bin_ms:g} ms bins)",
            )
        names = [c["name"] for c in model.conditions]
        if not names:
            raise LdnsError(
                "the model has no conditions", "sample without --condition-from, or refit"
            )
        missing = [m for m in names if m not in src.covariates and m not in src.behavior]
        if missing:
            raise LdnsError(
                f"'{condition_from}' lacks the model's condition(s) {', '.join(missing)}",
                "use a recording with the same covariates/behaviour as the training data",
            )
        values = {m: condition_values(src, m) for m in names}
        source_lengths = src.lengths
    elif condition:
        # typed values: the cartesian product of every flag's values (range warnings there)
        values = build_condition_table(model.conditions, condition).values
    n_rows = len(next(iter(values.values()))) if values else 0
    if values:
        k = per_condition or 1
        if n is not None and per_condition is None:
            reps = -(-n // n_rows)  # fill -n by cycling through the conditions
            idx = np.tile(np.arange(n_rows), reps)[:n]
        elif n is not None:
            raise LdnsError(
                "give -n or --per-condition with conditions, not both",
                "the count is (number of conditions) x --per-condition",
            )
        else:
            idx = np.repeat(np.arange(n_rows), k)
        values = {name: v[idx] for name, v in values.items()}
        n_total = len(idx)
        if source_lengths is not None:
            source_lengths = source_lengths[idx]
    else:
        if per_condition is not None:
            raise LdnsError("--per-condition needs --condition or --condition-from", "or use -n")
        if n is None:
            raise LdnsError("how many trials? pass -n", "e.g. ldns sample -n 64 --length 256")
        n_total = n

    # ---- lengths
    if length is None and lengths_from is None and source_lengths is None:
        raise LdnsError(
            "no trial length given",
            "pass --length BINS (e.g. --length 256, or 200:400) or --lengths-from DATA",
        )
    if length is not None or lengths_from is not None:
        pool = None
        if lengths_from is not None:
            pool = read_spikes(lengths_from, opts).lengths
        lengths = draw_lengths(n_total, length, pool, rng)
    else:
        assert source_lengths is not None
        lengths = source_lengths.astype(np.int64)

    # typed conditions were range-checked while parsing; recordings' values are checked here
    checked = check_conditions(
        model, values, lengths, warn=warn if condition_from is not None else None
    )
    if guidance != 1 and not checked:
        warn(f"--guidance {guidance:g} has no effect without conditions: sampling unconditionally")
    settings = SampleSettings(
        sampler=sampler_name,
        steps=steps_n,
        guidance=guidance,
        seed=seed,
        batch_size=batch_size,
        save_latents=save_latents,
        save_rates=save_rates,
        calibrate=calibration,
    )
    n_steps = settings.resolved_steps()
    cond_text = ", ".join(checked) if checked else "none"
    guided = f", guidance {guidance:g}" if checked else ""
    info(
        f"sample: {n_total} trials of {_length_text(lengths)} bins "
        f"({float(model.fingerprint.get('bin_size_s', 0)) * 1e3:g} ms), {sampler_name} "
        f"{n_steps} steps{guided}, conditions: {cond_text}, {obs_kind} spikes, latent "
        f"calibration {calibration_label(model, settings)}; device {dev}"
    )
    if calibration and model.calibrations and active_calibration(model, settings) is None:
        info(
            f"the model's latent calibration is for {', '.join(sorted(model.calibrations))}; "
            f"add one for this setting with: ldns fit-diffusion DATA -m {models} --calibrate-only "
            f"--sampler {sampler_name} --steps {n_steps}"
        )
    meta = sample_metadata(
        model,
        lengths,
        settings,
        checked,
        provenance={
            "observation": obs_kind,
            "models": str(models),
            "ae_fingerprint_neurons": str(ae_ckpt.fingerprint.get("n_neurons", "")),
        },
    )

    def chunks() -> Iterator[GeneratedChunk]:
        # the bar closes when generation ends (before the file is finished) or is interrupted
        with torch.inference_mode(False), progress("sample", n_total * n_steps) as bar:
            task = bar.add_task("sample", total=n_total * n_steps, status="")
            yield from generate_chunks(
                ae,
                model,
                obs,
                lengths,
                settings,
                dev,
                conditions=checked,
                on_step=lambda k: bar.update(task, advance=k),
            )

    # chunk by chunk into the file (via a scratch next to it): memory does not grow with -n
    summary = write_generated(
        meta,
        chunks(),
        out,
        force=force,
        settings=meta["provenance"],
        generated_by="ldns sample",
        save_latents=save_latents,
        save_rates=save_rates,
    )
    if str(out) != "-":
        info(
            f"wrote {out}: {summary.n_trials} trials x {summary.n_neurons} neurons, "
            f"mean {summary.mean_rate_hz:.2f} Hz"
        )


def _length_text(lengths: np.ndarray) -> str:
    lo, hi = int(lengths.min()), int(lengths.max())
    return str(lo) if lo == hi else f"{lo}-{hi}"
