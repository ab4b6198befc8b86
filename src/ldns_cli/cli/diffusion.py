"""`ldns fit-diffusion`: train the latent denoiser on a fitted autoencoder's latents."""

from __future__ import annotations

from typing import Annotated

import typer

from ldns_cli.cli.app import (
    DEFAULT_MODELS,
    ConfigOpt,
    DeviceOpt,
    ModelsOpt,
    QuietOpt,
    command,
    setup,
)
from ldns_cli.cli.options import (
    AlignOpt,
    BatchSizeOpt,
    BinMsOpt,
    ChopOpt,
    DataArg,
    EpochsOpt,
    LrOpt,
    PresetOpt,
    StrictWindowsOpt,
    TrialsOpt,
    WindowOpt,
    flag_opt,
    model_read_options,
    read_flags,
)
from ldns_cli.core.console import info
from ldns_cli.core.errors import LdnsError
from ldns_cli.io.formats import read_spikes


@command("fit-diffusion")
def fit_diffusion_cmd(
    data_path: DataArg,
    models: ModelsOpt = DEFAULT_MODELS,
    preset: PresetOpt = None,
    condition: Annotated[
        list[str] | None,
        flag_opt(
            "--condition",
            "Condition on this trial covariate or behaviour series (repeatable), e.g. angle.",
        ),
    ] = None,
    cond_dropout: Annotated[
        float | None,
        flag_opt(
            "--cond-dropout", "P(conditions dropped) in training, for guidance (default 0.1)."
        ),
    ] = None,
    epochs: EpochsOpt = None,
    batch_size: BatchSizeOpt = None,
    lr: LrOpt = None,
    width: Annotated[
        int | None, flag_opt("--width", "Denoiser hidden channels (a multiple of 4).")
    ] = None,
    blocks: Annotated[int | None, flag_opt("--blocks", "Number of denoiser blocks.")] = None,
    prediction: Annotated[
        str | None, flag_opt("--prediction", "Network target: eps (the paper's) or v.")
    ] = None,
    schedule: Annotated[
        str | None, flag_opt("--schedule", "Noise schedule: linear (the paper's) or cosine.")
    ] = None,
    loss: Annotated[str | None, flag_opt("--loss", "mse or smooth_l1.")] = None,
    ema_decay: Annotated[
        float | None, flag_opt("--ema-decay", "Fixed EMA decay of the weights used for sampling.")
    ] = None,
    kernel_bins: Annotated[
        int | None,
        flag_opt(
            "--kernel-bins",
            "S4 kernel reach in bins: -1 = half the longest training trial (default; keeps "
            "longer samples stationary), 0 = global as in the paper.",
        ),
    ] = None,
    calibration_trials: Annotated[
        int | None,
        flag_opt(
            "--calibration-trials",
            "Latent trials sampled after the fit to calibrate each latent channel's mean and "
            "std to the training latents' (default 1000; 0 = none).",
        ),
    ] = None,
    condition_gain: Annotated[
        bool | None,
        typer.Option(
            "--condition-gain/--no-condition-gain",
            help="Conditional models: fit a per-neuron rate gain read from the trial conditions, "
            "kept when it predicts the validation spikes better (default on).",
            show_default=False,
        ),
    ] = None,
    calibrate_only: Annotated[
        bool,
        typer.Option(
            "--calibrate-only",
            help="Do not train: add or refit the latent calibration of the model in MODELS.",
        ),
    ] = False,
    sampler: Annotated[
        str | None,
        flag_opt(
            "--sampler",
            "With --calibrate-only: the sampler setting to calibrate (default dpm++; a "
            "calibration applies only to the sampler and steps it was fitted for).",
        ),
    ] = None,
    steps: Annotated[
        int | None, flag_opt("--steps", "With --calibrate-only: sampler steps (its default).")
    ] = None,
    config: ConfigOpt = None,
    resume: Annotated[
        bool,
        typer.Option("--resume", help="Continue an interrupted fit from -m/diffusion.safetensors."),
    ] = False,
    trials: TrialsOpt = None,
    bin_ms: BinMsOpt = None,
    align: AlignOpt = None,
    window: WindowOpt = None,
    chop: ChopOpt = None,
    strict_windows: StrictWindowsOpt = False,
    device: DeviceOpt = "auto",
    seed: Annotated[
        int | None, flag_opt("--seed", "Random seed (default 0); fixes every random choice.")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", "-f", help="Replace a diffusion model already in MODELS.")
    ] = False,
    quiet: QuietOpt = False,
) -> None:
    """Fit the latent diffusion model on the frozen autoencoder in MODELS.

    Reads MODELS/ae.safetensors, encodes DATA, and writes MODELS/diffusion.safetensors (EMA
    weights, settings, latent normalisation, conditions); an existing one is replaced only with
    --force. Uses the file's train/val split (test trials are never used). Ctrl-C saves a
    resumable checkpoint.

    Example: ldns fit-diffusion reach.nwb -m reach_models/ --preset small --condition angle
    """
    from ldns_cli.fit.diffusion import calibrate_only as calibrate
    from ldns_cli.fit.diffusion import fit_diffusion
    from ldns_cli.fit.trainer import resume_hint
    from ldns_cli.store import check_fit_target

    setup(quiet)
    if calibrate_only and (resume or epochs is not None):
        raise LdnsError(
            "--calibrate-only does not train", "drop --resume/--epochs, or fit without it"
        )
    if not calibrate_only and (sampler is not None or steps is not None):
        raise LdnsError(
            "--sampler/--steps choose what --calibrate-only calibrates",
            "fit-diffusion calibrates dpm++ 20 after training; add another setting with "
            "--calibrate-only --sampler S --steps K",
        )
    if not (resume or calibrate_only):  # before reading the data: it can take a while
        check_fit_target(models, "diffusion", force)
    opts = model_read_options(
        models, bin_ms, align, window, chop, trials, strict_windows, with_trials=True
    )
    data = read_spikes(data_path, opts)
    if calibrate_only:
        calibrate(
            data,
            models,
            sampler=sampler,
            steps=steps,
            calibration_trials=calibration_trials,
            seed=seed,
            device=device,
        )
        return
    outcome = fit_diffusion(
        data,
        models,
        conditions=condition or (),
        preset=preset,
        config=config,
        cond_dropout=cond_dropout,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        width=width,
        blocks=blocks,
        prediction=prediction,
        schedule=schedule,
        loss=loss,
        ema_decay=ema_decay,
        kernel_bins=kernel_bins,
        calibration_trials=calibration_trials,
        condition_gain=condition_gain,
        resume=resume,
        force=force,
        device=device,
        seed=seed,
        source=str(data_path),
    )
    if outcome.interrupted:
        if outcome.is_main:
            info(resume_hint(f"ldns fit-diffusion {data_path} -m {models}{read_flags(opts)}"))
        raise typer.Exit(130)
