"""`ldns fit-history`: (re)fit the spike-history observation model on a fitted autoencoder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from ldns_cli.cli.app import (
    DEFAULT_MODELS,
    ConfigOpt,
    DeviceOpt,
    JsonOpt,
    ModelsOpt,
    QuietOpt,
    command,
    setup,
)
from ldns_cli.cli.options import (
    AlignOpt,
    BinMsOpt,
    ChopOpt,
    DataArg,
    TrialsOpt,
    WindowOpt,
    flag_opt,
    read_recording,
)
from ldns_cli.core.errors import LdnsError
from ldns_cli.core.runtime import resolve_device


@command("fit-history")
def fit_history_cmd(
    data_path: DataArg,
    models: ModelsOpt = DEFAULT_MODELS,
    history_bins: Annotated[
        int | None, flag_opt("--history-bins", "Past bins per neuron (default 20).")
    ] = None,
    history_ms: Annotated[
        float | None, flag_opt("--history-ms", "History length in ms (overrides --history-bins).")
    ] = None,
    max_count: Annotated[
        int | None,
        flag_opt("--max-count", "Cap on counts in the fit and in samples (default 5; 0 = no cap)."),
    ] = None,
    iterations: Annotated[
        int | None, flag_opt("--iterations", "Optimiser iterations (default 500).")
    ] = None,
    optimizer: Annotated[
        str | None,
        flag_opt("--optimizer", "lbfgs (default: full batch, seconds) or adamw (the paper's)."),
    ] = None,
    lr: Annotated[float | None, flag_opt("--lr", "AdamW learning rate (default 0.1).")] = None,
    coupling_rank: Annotated[
        int | None,
        flag_opt(
            "--coupling-rank", "Rank of a low-rank coupling between neurons (default 0: none)."
        ),
    ] = None,
    rate_match_rounds: Annotated[
        int | None,
        flag_opt(
            "--rate-match-rounds",
            "Rounds matching free-running firing rates to the data after the fit "
            "(default 4; 0 = the paper's plain fit).",
        ),
    ] = None,
    config: ConfigOpt = None,
    trials: TrialsOpt = None,
    bin_ms: BinMsOpt = None,
    align: AlignOpt = None,
    window: WindowOpt = None,
    chop: ChopOpt = None,
    seed: Annotated[
        int | None, flag_opt("--seed", "Random seed (default: the autoencoder's).")
    ] = None,
    device: DeviceOpt = "auto",
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Fit the spike-history observation model on the fitted autoencoder's rates.

    Per neuron: rate_t = softplus(sum_k w_k s_(t-k) + a * softplus^-1(r_t) + b), counts capped,
    fitted on the training trials with their true past spikes (teacher forcing). `ldns fit-ae`
    already does this by default; use this command to refit with other settings. Writes
    MODELS/history.safetensors and reports the validation NLL against plain Poisson.

    Example: ldns fit-history lorenz.nwb -m models/ --history-ms 100
    """
    from ldns_cli.core.checkpoint import check_data_matches
    from ldns_cli.core.config import resolve_config
    from ldns_cli.fit.history import fit_history_for_ae
    from ldns_cli.fit.splits import split_train_val
    from ldns_cli.nn.observation import HistoryConfig
    from ldns_cli.store import load_autoencoder

    setup(quiet)
    dev = resolve_device(device)
    ae, ckpt = load_autoencoder(models, dev)
    overrides: dict[str, Any] = {
        "history_bins": history_bins,
        "history_ms": history_ms,
        "iterations": iterations,
        "optimizer": optimizer,
        "lr": lr,
        "coupling_rank": coupling_rank,
        "rate_match_rounds": rate_match_rounds,
    }
    if max_count is not None:
        if max_count < 0:
            raise LdnsError(f"--max-count must be ≥ 0, got {max_count}", "e.g. 5, or 0 for no cap")
        overrides["max_count"] = max_count or None
    cfg = resolve_config(HistoryConfig, None, None, config, overrides)
    if max_count == 0:  # None means "not given" to resolve_config; force "no cap" here
        import dataclasses

        cfg = dataclasses.replace(cfg, max_count=None)

    data = read_recording(data_path, bin_ms, align, window, chop, trials)
    check_data_matches(ckpt.fingerprint, data.fingerprint(), "autoencoder")
    # the same train/validation trials the autoencoder used
    ae_seed = int(ckpt.config.get("train", {}).get("seed", 0))
    val_frac = float(ckpt.extra.get("data", {}).get("val_frac", 0.1))
    train, val, _ = split_train_val(data, val_frac, ae_seed)
    model = fit_history_for_ae(
        ae,
        train,
        val,
        Path(models),
        dev,
        ae_seed if seed is None else seed,
        quiet,
        cfg=cfg,
    )
    if json_out:
        typer.echo(json.dumps(getattr(model, "fit_summary", {}), sort_keys=True))
