"""`ldns fit-ae` (train the S4 autoencoder) and `ldns encode` (infer latents and rates)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ldns_cli.cli.app import (
    DEFAULT_MODELS,
    ConfigOpt,
    DeviceOpt,
    ForceOpt,
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
    number_or_auto,
    read_flags,
    read_options,
)
from ldns_cli.core.console import info
from ldns_cli.core.errors import LdnsError
from ldns_cli.io.formats import read_spikes


@command("fit-ae")
def fit_ae(
    data_path: DataArg,
    models: ModelsOpt = DEFAULT_MODELS,
    preset: PresetOpt = None,
    latent_dim: Annotated[
        str | None,
        flag_opt(
            "--latent-dim",
            "Latent channels Z, or auto: the smallest size that co-smooths held-out neurons as "
            "well as any (the default unless --preset or --config is given).",
            metavar="Z|auto",
        ),
    ] = None,
    width: Annotated[int | None, flag_opt("--width", "Hidden channels of the encoder.")] = None,
    blocks: Annotated[int | None, flag_opt("--blocks", "Number of S4 encoder blocks.")] = None,
    bidirectional: Annotated[
        bool | None,
        flag_opt("--bidirectional/--causal", "Bidirectional or strictly causal S4 encoder."),
    ] = None,
    epochs: EpochsOpt = None,
    batch_size: BatchSizeOpt = None,
    lr: LrOpt = None,
    dropout_p: Annotated[
        float | None, flag_opt("--dropout-p", "Coordinated-dropout probability.")
    ] = None,
    l2: Annotated[float | None, flag_opt("--l2", "Weight of the latent L2 penalty.")] = None,
    smooth: Annotated[
        float | None, flag_opt("--smooth", "Weight of the latent temporal-smoothness penalty.")
    ] = None,
    val_frac: Annotated[
        float, typer.Option("--val-frac", help="Validation fraction when the file has no split.")
    ] = 0.1,
    amp: Annotated[
        bool | None, flag_opt("--amp/--no-amp", "bf16 mixed precision on CUDA (FFTs stay fp32).")
    ] = None,
    spike_history: Annotated[
        bool,
        typer.Option(
            "--spike-history/--no-spike-history",
            help="Also fit the spike-history observation model on the AE's rates.",
        ),
    ] = True,
    config: ConfigOpt = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an interrupted fit from -m/ae.safetensors.")
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
        bool, typer.Option("--force", "-f", help="Replace an autoencoder already in MODELS.")
    ] = False,
    quiet: QuietOpt = False,
) -> None:
    """Fit the S4 autoencoder: spike counts -> smooth latents -> Poisson rates.

    Writes MODELS/ae.safetensors (weights, resolved settings, data fingerprint); an existing
    one is replaced only with --force. Uses the file's train/val split when it has one (test
    trials are never used). Ctrl-C saves a resumable checkpoint. Scale out with:
    torchrun --nproc_per_node 2 -m ldns_cli fit-ae DATA

    Example: ldns fit-ae lorenz.nwb -m lorenz_models/ --preset small --epochs 20
    """
    from ldns_cli.fit.autoencoder import fit_autoencoder
    from ldns_cli.fit.trainer import resume_hint
    from ldns_cli.store import check_fit_target

    setup(quiet)
    if not resume:  # before reading the data: a large recording takes a while
        check_fit_target(models, "ae", force)
    flags = (bin_ms, align, window, chop, trials, strict_windows)
    # a resumed fit reads the recording as the interrupted one did, unless told otherwise
    opts = model_read_options(models, *flags, with_trials=True) if resume else read_options(*flags)
    data = read_spikes(data_path, opts)
    outcome = fit_autoencoder(
        data,
        models,
        preset=preset,
        config=config,
        latent_dim=number_or_auto(latent_dim, "--latent-dim", 1, "e.g. --latent-dim 8"),
        width=width,
        blocks=blocks,
        bidirectional=bidirectional,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        dropout_p=dropout_p,
        l2=l2,
        smooth=smooth,
        val_frac=val_frac,
        amp=amp,
        spike_history=spike_history,
        resume=resume,
        force=force,
        device=device,
        seed=seed,
        quiet=quiet,
        source=str(data_path),
    )
    if outcome.interrupted:
        if outcome.is_main:
            info(resume_hint(f"ldns fit-ae {data_path} -m {models}{read_flags(opts)}"))
        raise typer.Exit(130)


@command("encode")
def encode(
    data_path: DataArg,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Output file (.h5 or .nwb), or - for stdout.")
    ],
    models: ModelsOpt = DEFAULT_MODELS,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Trials per batch.")] = 64,
    trials: TrialsOpt = None,
    bin_ms: BinMsOpt = None,
    align: AlignOpt = None,
    window: WindowOpt = None,
    chop: ChopOpt = None,
    strict_windows: StrictWindowsOpt = False,
    device: DeviceOpt = "auto",
    force: ForceOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Infer latents and firing rates of a recording with the fitted autoencoder.

    Writes the recording's spikes plus `latents` [trial, time, Z] and `rates` (spikes per bin).

    Example: ldns encode lorenz.nwb -m models/ -o latents.h5
    """
    from ldns_cli.api import encode as encode_data
    from ldns_cli.core.paths import check_output
    from ldns_cli.io.formats import write_spikes
    from ldns_cli.store import ae_path

    setup(quiet)
    if batch_size < 1:
        raise LdnsError(f"--batch-size must be >= 1, got {batch_size}", "e.g. --batch-size 64")
    check_output(output, force)
    opts = model_read_options(
        models, bin_ms, align, window, chop, trials, strict_windows, with_trials=False
    )
    data = read_spikes(data_path, opts)
    out = encode_data(data, models, batch_size=batch_size, device=device)
    write_spikes(
        out,
        output,
        force=force,
        save_latents=True,
        save_rates=True,
        settings={"encoded_by": "ldns encode", "ae_model": str(ae_path(models))},
    )
    info(
        f"wrote {output}: {data.n_trials} trials, latents [{data.n_trials}, {data.n_bins}, "
        f"{out.latents.shape[-1]}], rates [{data.n_trials}, {data.n_bins}, {data.n_neurons}]"
    )
