"""`ldns sample`: generate spike trains from the fitted models (any length, optional conditions)."""

from __future__ import annotations

import dataclasses
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
    StrictWindowsOpt,
    TrialsOpt,
    WindowOpt,
    flag_opt,
    model_read_options,
)
from ldns_cli.core.console import info, progress, warn
from ldns_cli.core.errors import LdnsError
from ldns_cli.core.paths import check_output
from ldns_cli.core.runtime import resolve_device
from ldns_cli.io.formats import read_spikes


@command("sample")
def sample(
    models: ModelsOpt = DEFAULT_MODELS,
    n: Annotated[
        int | None,
        flag_opt(
            "-n",
            "Number of trials (default 64; with conditions: cycles through them, default one "
            "each).",
        ),
    ] = None,
    length: Annotated[
        str | None,
        flag_opt(
            "--length",
            "Bins per trial: 256, or a range 200:400 (uniform); default: the lengths of the "
            "training trials.",
        ),
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
        str,
        typer.Option(
            "--guidance",
            help="Classifier-free guidance W (1 = plain conditional), or auto: the weight "
            "fit-diffusion measured for the model (1 when it has none).",
            metavar="W|auto",
        ),
    ] = "auto",
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
            "and guidance weight (fit-diffusion fits dpm++ 20; a conditional model at W = 1, "
            "1.5, 2 and 3, interpolated between them).",
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
    strict_windows: StrictWindowsOpt = False,
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
    from ldns_cli.diffusion.model import parse_guidance, resolve_guidance
    from ldns_cli.diffusion.samplers import check_steps, resolve_sampler_name
    from ldns_cli.diffusion.sampling import SampleSettings, active_calibration, calibration_label
    from ldns_cli.generate import check_plan, plan_trials, sample_to_file
    from ldns_cli.io.formats import output_format
    from ldns_cli.store import alignment_of, load_models

    setup(quiet)
    if out is None:
        raise LdnsError("no output file", "pass -o out.nwb (or -o out.h5, or -o - for stdout)")
    output_format(out)
    check_output(out, force)
    parse_guidance(guidance)  # a bad weight is an argument error: before loading models
    settings = SampleSettings(
        sampler=resolve_sampler_name(sampler),
        steps=steps,
        guidance=1.0,  # resolved once the model is loaded
        seed=seed,
        batch_size=batch_size,
        save_latents=save_latents,
        save_rates=save_rates,
        calibrate=calibration,
    )
    settings.validate()
    check_plan(  # before loading models: argument errors come first
        n=n,
        length=length,
        lengths_given=lengths_from is not None,
        conditions_given=bool(condition),
        condition_from_given=condition_from is not None,
        per_condition=per_condition,
        seed=seed,
    )
    dev = resolve_device(device)
    models_ = load_models(models, dev, observation)
    model = models_.diffusion
    settings = dataclasses.replace(settings, guidance=resolve_guidance(model, guidance))
    if steps is not None:
        check_steps(steps, model.schedule.num_train_timesteps)
    # recordings read for conditions/lengths are binned like the model's training data
    opts = model_read_options(
        models, bin_ms, align, window, chop, None, strict_windows, with_trials=False
    )
    if opts.bin_ms is None:  # a model folder from before read options were remembered
        opts = dataclasses.replace(opts, bin_ms=model.bin_size_s * 1e3 or None)
    plan = plan_trials(
        model,
        n=n,
        length=length,
        lengths_from=None if lengths_from is None else read_spikes(lengths_from, opts).lengths,
        conditions=condition,
        condition_from=None
        if condition_from is None
        else read_spikes(condition_from, dataclasses.replace(opts, trials=trials)),
        condition_from_name=f"'{condition_from}'",
        per_condition=per_condition,
        seed=seed,
        warn=warn,
        alignment=alignment_of(models),
    )
    auto = parse_guidance(guidance) is None
    if not auto and settings.guidance != 1 and not plan.conditions:
        warn(
            f"--guidance {settings.guidance:g} has no effect without conditions: sampling "
            "unconditionally"
        )
    n_steps = settings.resolved_steps()
    cond_text = ", ".join(plan.conditions) if plan.conditions else "none"
    guided = bool(plan.conditions)
    guidance_text = ""
    if guided:
        measured = auto and model.measured_guidance is not None
        guidance_text = f", guidance {settings.guidance:g}" + (" (measured)" if measured else "")
    info(
        f"sample: {plan.n_trials} trials of {_length_text(plan.lengths)} bins "
        f"({model.bin_size_s * 1e3:g} ms), {settings.sampler} {n_steps} steps{guidance_text}, conditions: "
        f"{cond_text}, {models_.observation.kind} spikes, latent calibration "
        f"{calibration_label(model, settings, guided)}; device {dev}"
    )
    if calibration and model.calibrations and active_calibration(model, settings) is None:
        fitted = sorted({f"{c.sampler}/{c.steps}" for c in model.calibrations.values()})
        info(
            f"the model's latent calibration is for {', '.join(fitted)}; "
            f"add one for this setting with: ldns fit-diffusion DATA -m {models} --calibrate-only "
            f"--sampler {settings.sampler} --steps {n_steps}"
        )
    total = plan.n_trials * n_steps
    with progress("sample", total) as bar:
        task = bar.add_task("sample", total=total, status="")
        summary = sample_to_file(
            models_,
            plan,
            settings,
            out,
            device=dev,
            force=force,
            on_step=lambda k: bar.update(task, advance=k),
        )
    if str(out) != "-":
        info(
            f"wrote {out}: {summary.n_trials} trials x {summary.n_neurons} neurons, "
            f"mean {summary.mean_rate_hz:.2f} Hz"
        )
        # neurons whose samples leave the training data's range (stored by the history fit);
        # with conditions only the count ceiling: one condition's rates differ from the average
        from ldns_cli.core.checkpoint import load_checkpoint
        from ldns_cli.scoring.neurons import realism_warnings
        from ldns_cli.store import history_path

        if not quiet and history_path(Path(models)).exists():
            ranges = load_checkpoint(history_path(Path(models)), "history").extra.get("data_range")
            if ranges is not None:
                samples = read_spikes(str(out))
                for line in realism_warnings(samples, ranges, check_moments=not plan.conditions):
                    warn(line)


def _length_text(lengths: np.ndarray) -> str:
    lo, hi = int(lengths.min()), int(lengths.max())
    return str(lo) if lo == hi else f"{lo}-{hi}"
