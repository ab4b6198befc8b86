"""`ldns fit-ae` (train the S4 autoencoder) and `ldns encode` (infer latents and rates)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Annotated, Any

import numpy as np
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
    TrialsOpt,
    WindowOpt,
    flag_opt,
    read_recording,
)
from ldns_cli.core.console import info, warn
from ldns_cli.core.data import SpikeData
from ldns_cli.core.errors import LdnsError
from ldns_cli.core.paths import check_model_target
from ldns_cli.core.runtime import resolve_device
from ldns_cli.fit.splits import split_train_val

DEFAULT_PRESET = "small"


def _resolve_configs(
    preset: str | None, config_file: Path | None, overrides: dict[str, Any], n_neurons: int
) -> tuple[Any, Any]:
    from ldns_cli.core.config import config_from_dict, load_config_file
    from ldns_cli.fit.trainer import TRAIN_KEYS, TrainConfig
    from ldns_cli.nn.autoencoder import AE_PRESETS, AEConfig

    name = preset or DEFAULT_PRESET
    if name not in AE_PRESETS:
        raise LdnsError(
            f"unknown preset '{name}'", f"choose one of: {', '.join(sorted(AE_PRESETS))}"
        )
    values: dict[str, Any] = dict(AE_PRESETS[name])
    from_file = load_config_file(config_file)
    values.update(from_file)
    values.update({k: v for k, v in overrides.items() if v is not None})
    if overrides.get("epochs") is not None and "min_steps" not in from_file:
        values["min_steps"] = 0  # an explicit --epochs means exactly that many epochs
    values["n_neurons"] = n_neurons
    ae_keys = {f.name for f in dataclasses.fields(AEConfig)}
    unknown = sorted(set(values) - ae_keys - TRAIN_KEYS)
    if unknown:
        raise LdnsError(
            f"unknown setting(s): {', '.join(unknown)}",
            f"known settings: {', '.join(sorted(ae_keys | TRAIN_KEYS))}",
        )
    src = str(config_file or "flags")
    try:
        ae_cfg = config_from_dict(AEConfig, {k: v for k, v in values.items() if k in ae_keys}, src)
        train_cfg = config_from_dict(
            TrainConfig, {k: v for k, v in values.items() if k in TRAIN_KEYS}, src
        )
    except TypeError as exc:
        raise LdnsError(f"invalid settings: {exc}", "check the config file and flags") from None
    ae_cfg.validate()
    train_cfg.validate()
    return ae_cfg, train_cfg


def _summary(model: Any, train: SpikeData, ref: SpikeData, device: str) -> dict[str, float]:
    from ldns_cli.fit.autoencoder import bits_per_spike, mean_poisson_nll
    from ldns_cli.nn.autoencoder import infer

    _, rates = infer(model, ref, 64, device)
    mask = ref.mask()
    null_rate = train.counts.sum(axis=(0, 1)) / float(train.lengths.sum())  # [N] spikes/bin
    null = np.broadcast_to(null_rate[None, None, :], rates.shape).astype(np.float32)
    return {
        "poisson_nll": mean_poisson_nll(rates, ref.counts, mask),
        "null_poisson_nll": mean_poisson_nll(null, ref.counts, mask),
        "bits_per_spike": bits_per_spike(rates, ref.counts, mask, null_rate),
    }


@command("fit-ae")
def fit_ae(
    data_path: DataArg,
    models: ModelsOpt = DEFAULT_MODELS,
    preset: PresetOpt = None,
    latent_dim: Annotated[int | None, flag_opt("--latent-dim", "Latent channels Z.")] = None,
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
    import torch

    from ldns_cli.core.checkpoint import check_data_matches, load_checkpoint, save_checkpoint
    from ldns_cli.core.config import config_from_dict, config_to_dict
    from ldns_cli.fit import distributed as dist
    from ldns_cli.fit.autoencoder import ae_loss, ae_val_loss, tensors_from_data
    from ldns_cli.fit.trainer import CheckpointSpec, TrainConfig, fit, resume_hint
    from ldns_cli.nn.autoencoder import Autoencoder
    from ldns_cli.store import AE_KIND, FIT_COMMAND, ae_path

    setup(quiet)
    dev = dist.init(resolve_device(device))
    try:
        path = ae_path(models)
        if not resume:  # before reading the data: a large recording takes a while
            check_model_target(path, force, "autoencoder")
        data = read_recording(data_path, bin_ms, align, window, chop, trials)
        overrides = {
            "latent_dim": latent_dim, "width": width, "blocks": blocks,
            "bidirectional": bidirectional, "dropout_p": dropout_p, "l2": l2, "smooth": smooth,
            "epochs": epochs, "batch_size": batch_size, "lr": lr, "amp": amp, "seed": seed,
        }  # fmt: skip
        resume_ckpt = None
        if resume:
            from ldns_cli.nn.autoencoder import AEConfig

            resume_ckpt = load_checkpoint(path, AE_KIND, fit_command=FIT_COMMAND)
            check_data_matches(resume_ckpt.fingerprint, data.fingerprint(), "autoencoder")
            ae_cfg = config_from_dict(AEConfig, resume_ckpt.config["ae"], str(path))
            changed = [
                k for k in ("latent_dim", "width", "blocks", "bidirectional")
                if overrides[k] is not None and overrides[k] != getattr(ae_cfg, k)
            ]  # fmt: skip
            if changed or preset or config:
                raise LdnsError(
                    "--resume continues the saved model; its architecture and preset are fixed",
                    "drop --preset/--config/architecture flags, or fit anew without --resume",
                )
            saved_train = dict(resume_ckpt.config["train"])
            saved_train.update(
                {k: overrides[k] for k in ("epochs", "batch_size", "lr") if overrides[k]}
            )
            if overrides["epochs"]:
                saved_train["min_steps"] = 0  # an explicit --epochs means exactly that many
            train_cfg = config_from_dict(TrainConfig, saved_train, str(path))
            ae_cfg = dataclasses.replace(
                ae_cfg,
                **{
                    k: overrides[k]
                    for k in ("dropout_p", "l2", "smooth")
                    if overrides[k] is not None
                },
            )
            val_frac = float(resume_ckpt.extra.get("data", {}).get("val_frac", val_frac))
        else:
            ae_cfg, train_cfg = _resolve_configs(preset, config, overrides, data.n_neurons)
            if path.exists():
                info(f"replacing the existing autoencoder at {path} (--force)")
                stale = ["diffusion.safetensors"] + (
                    [] if spike_history else ["history.safetensors"]
                )
                stale = [name for name in stale if (Path(models) / name).exists()]
                if stale:
                    warn(
                        f"{', '.join(stale)} in {models} belong to the previous autoencoder: "
                        "refit them after this fit"
                    )
        if not 0 <= val_frac < 1:
            raise LdnsError(f"--val-frac must be in [0, 1), got {val_frac}", "e.g. --val-frac 0.1")

        train, val, split_desc = split_train_val(data, val_frac, train_cfg.seed)
        info(
            f"fit-ae: {train.n_trials} training / {val.n_trials if val else 0} validation trials "
            f"({split_desc}), {data.n_neurons} neurons, {data.n_bins} bins of "
            f"{data.bin_size_s * 1e3:g} ms; device {dev}"
            + (f", {dist.world_size()} processes" if dist.world_size() > 1 else "")
        )
        model = Autoencoder(ae_cfg, torch.Generator().manual_seed(train_cfg.seed))
        train_t = tensors_from_data(train)
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
                    "source": str(data_path),
                    "n_train": train.n_trials,
                    "n_val": val.n_trials if val else 0,
                    "val_frac": val_frac,
                    "split": split_desc,
                }
            },
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
        if result.interrupted:
            if dist.is_main():
                info(resume_hint(f"ldns fit-ae {data_path} -m {models}"))
            raise typer.Exit(130)
        if dist.is_main():
            import copy

            from ldns_cli.fit.autoencoder import calibrate_rate_bias

            # on a copy: the trained module stays as the trainer (and its DDP peers) left it
            model = copy.deepcopy(result.model)
            ratio_before, ratio_after = calibrate_rate_bias(model, train, device=dev)
            ckpt = result.checkpoint
            assert ckpt is not None
            ckpt.tensors["model.decoder_out.bias"] = model.decoder_out.bias.detach().cpu().clone()
            info(
                "rate intercepts refit on the training trials with no inputs dropped: "
                f"rates/counts {ratio_before:.4f} -> {ratio_after:.4f}"
            )
            ref = val if val is not None else train
            summary = _summary(model, train, ref, dev)
            summary["rate_ratio_before_calibration"] = ratio_before
            summary["rate_ratio"] = ratio_after
            summary.update(
                {
                    "best_epoch": result.best_epoch,
                    "epochs": result.epochs_done,
                    "train_seconds": result.train_seconds,
                    "bins_per_s": result.trials_seen
                    * data.n_bins
                    / max(result.train_seconds, 1e-9),
                }
            )
            ckpt.extra["summary"] = summary
            save_checkpoint(path, ckpt)
            which = "validation" if val is not None else "training"
            info(
                f"saved {path} (best epoch {result.best_epoch}/{result.epochs_done}); "
                f"{which} Poisson NLL {summary['poisson_nll']:.4f} per neuron-bin "
                f"(mean-rate null {summary['null_poisson_nll']:.4f}), "
                f"{summary['bits_per_spike']:.3f} bits/spike over the null"
            )
            if math.isfinite(summary["bits_per_spike"]) and summary["bits_per_spike"] <= 0:
                warn("the autoencoder does no better than a constant rate: train longer")
            if spike_history:
                from ldns_cli.fit.history import fit_history_for_ae

                fit_history_for_ae(model, train, val, Path(models), dev, train_cfg.seed, quiet)
        dist.barrier()
    finally:
        dist.shutdown()


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
    device: DeviceOpt = "auto",
    force: ForceOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Infer latents and firing rates of a recording with the fitted autoencoder.

    Writes the recording's spikes plus `latents` [trial, time, Z] and `rates` (spikes per bin).

    Example: ldns encode lorenz.nwb -m models/ -o latents.h5
    """
    from ldns_cli.core.checkpoint import check_data_matches
    from ldns_cli.core.paths import check_output
    from ldns_cli.io.formats import write_spikes
    from ldns_cli.nn.autoencoder import infer
    from ldns_cli.store import load_autoencoder

    setup(quiet)
    if batch_size < 1:
        raise LdnsError(f"--batch-size must be >= 1, got {batch_size}", "e.g. --batch-size 64")
    check_output(output, force)
    dev = resolve_device(device)
    model, ckpt = load_autoencoder(models, dev)
    data = read_recording(data_path, bin_ms, align, window, chop, trials)
    check_data_matches(ckpt.fingerprint, data.fingerprint(), "autoencoder")
    latents, rates = infer(model, data, batch_size, dev)
    out = dataclasses.replace(data, latents=latents, rates=rates)
    write_spikes(
        out,
        output,
        force=force,
        save_latents=True,
        save_rates=True,
        settings={"encoded_by": "ldns encode", "ae_model": str(ckpt.path)},
    )
    info(
        f"wrote {output}: {data.n_trials} trials, latents [{data.n_trials}, {data.n_bins}, "
        f"{latents.shape[-1]}], rates [{data.n_trials}, {data.n_bins}, {data.n_neurons}]"
    )
