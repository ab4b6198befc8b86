"""`ldns fit-diffusion`: train the latent denoiser on a fitted autoencoder's latents."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

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
    TrialsOpt,
    WindowOpt,
    flag_opt,
    read_recording,
)
from ldns_cli.core.console import info
from ldns_cli.core.errors import LdnsError
from ldns_cli.core.paths import check_model_target
from ldns_cli.core.runtime import resolve_device

if TYPE_CHECKING:
    from ldns_cli.core.data import SpikeData


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
    from ldns_cli.fit import distributed as dist
    from ldns_cli.fit.diffusion import fit_diffusion, resolve_diffusion_configs
    from ldns_cli.fit.trainer import resume_hint
    from ldns_cli.store import DIFFUSION_FILE

    setup(quiet)
    dev = dist.init(resolve_device(device))
    try:
        if not calibrate_only and (sampler is not None or steps is not None):
            raise LdnsError(
                "--sampler/--steps choose what --calibrate-only calibrates",
                "fit-diffusion calibrates dpm++ 20 after training; add another setting with "
                "--calibrate-only --sampler S --steps K",
            )
        if not (resume or calibrate_only):  # before reading the data: it can take a while
            check_model_target(Path(models) / DIFFUSION_FILE, force, "diffusion model")
        data = read_recording(data_path, bin_ms, align, window, chop, trials)
        if calibrate_only:
            _calibrate_only(
                data, models, calibration_trials, seed, dev, (sampler, steps), resume, epochs
            )
            return
        overrides = {
            "epochs": epochs, "batch_size": batch_size, "lr": lr, "width": width,
            "blocks": blocks, "prediction": prediction, "schedule": schedule, "loss": loss,
            "ema_decay": ema_decay, "cond_dropout": cond_dropout, "seed": seed,
            "kernel_bins": kernel_bins, "calibration_trials": calibration_trials,
            "conditions": tuple(condition) if condition else None,
        }  # fmt: skip
        if resume and (preset or config or width or blocks or condition or kernel_bins is not None):
            raise LdnsError(
                "--resume continues the saved model; its architecture and conditions are fixed",
                "drop --preset/--config/--width/--blocks/--condition/--kernel-bins, or fit anew",
            )
        dcfg, tcfg = resolve_diffusion_configs(preset, config, overrides)
        for name in dcfg.conditions:
            if name not in data.covariates and name not in data.behavior:
                found = sorted(data.covariates) + sorted(data.behavior)
                raise LdnsError(
                    f"'{data_path}' has no covariate or behaviour series '{name}'",
                    f"conditions available in this recording: {', '.join(found)}"
                    if found
                    else "this recording has none; fit without --condition",
                )
        cond_text = ", ".join(dcfg.conditions) or "none (unconditional)"
        if resume:  # the saved checkpoint's settings apply, not the defaults resolved above
            what = "resuming the saved denoiser with its own architecture and settings" + (
                f" to {epochs} epochs" if epochs else ""
            )
        else:
            what = (
                f"denoiser width {dcfg.width}, {dcfg.blocks} blocks, {dcfg.prediction}-prediction, "
                f"{dcfg.schedule} schedule, {dcfg.loss} loss; conditions: {cond_text}; "
                f"{tcfg.epochs} epochs of batch {tcfg.batch_size}"
            )
        info(
            f"fit-diffusion: {data.n_trials} trials, {data.n_bins} bins of "
            f"{data.bin_size_s * 1e3:g} ms; {what}; device {dev}"
        )
        result, path = fit_diffusion(
            data, models, dcfg, tcfg, dev, resume=resume, resume_epochs=epochs
        )
        if result.interrupted:
            if dist.is_main():
                info(resume_hint(f"ldns fit-diffusion {data_path} -m {models}"))
            raise typer.Exit(130)
        if dist.is_main():
            val = f", best validation loss {result.best_val:.4f}" if result.best_val else ""
            info(
                f"saved {path} (best epoch {result.best_epoch}/{result.epochs_done}{val}, "
                f"{result.train_seconds:.0f} s)"
            )
            assert result.checkpoint is not None
            for summary in result.checkpoint.extra.get("latent_calibration", {}).values():
                info(calibration_text(summary))
        dist.barrier()
    finally:
        dist.shutdown()


def calibration_text(summary: dict) -> str:
    return (
        f"latent calibration on {summary['trials']} sampled trials ({summary['sampler']} "
        f"{summary['steps']} steps): sampled std {summary['std_ratio_min']:.3f}-"
        f"{summary['std_ratio_max']:.3f} x the training latents', largest mean offset "
        f"{summary['max_abs_mean_shift']:.3f} sd; both corrected per channel at sampling"
    )


def _calibrate_only(
    data: SpikeData,
    models: Path,
    calibration_trials: int | None,
    seed: int | None,
    dev: str,
    setting: tuple[str | None, int | None],
    resume: bool,
    epochs: int | None,
) -> None:
    """`--calibrate-only`: add a latent calibration to an existing model, no training."""
    from ldns_cli.diffusion.model import DiffusionConfig
    from ldns_cli.diffusion.samplers import resolve_sampler_name
    from ldns_cli.diffusion.sampling import DEFAULT_SAMPLER
    from ldns_cli.fit import distributed as dist
    from ldns_cli.fit.diffusion import calibrate_diffusion

    if resume or epochs is not None:
        raise LdnsError(
            "--calibrate-only does not train", "drop --resume/--epochs, or fit without it"
        )
    n = DiffusionConfig.calibration_trials if calibration_trials is None else calibration_trials
    if n < 1:
        raise LdnsError(f"--calibration-trials must be >= 1 here, got {n}", "e.g. 1000")
    sampler = resolve_sampler_name(setting[0] or DEFAULT_SAMPLER)
    if dist.is_main():
        summary, path = calibrate_diffusion(
            data, models, n, 0 if seed is None else seed, dev, sampler, setting[1]
        )
        info(f"updated {path}")
        info(calibration_text(summary))
