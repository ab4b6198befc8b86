"""`ldns fit-history`: (re)fit the spike-history observation model on a fitted autoencoder."""

from __future__ import annotations

import json
from typing import Annotated

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
    StrictWindowsOpt,
    TrialsOpt,
    WindowOpt,
    flag_opt,
    model_read_options,
    number_or_auto,
)
from ldns_cli.io.formats import read_spikes


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
        str | None,
        flag_opt(
            "--coupling-rank",
            "Rank of a low-rank coupling between neurons (0: none), or auto (the default): "
            "rank 1 where free-running validation samples miss the population's spectrum or "
            "correlations and the coupled model generates them clearly better.",
            metavar="R|auto",
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
    max_excitation: Annotated[
        float | None,
        flag_opt(
            "--max-excitation",
            "Bound E on the excitatory history term (E·tanh(x/E), so past spikes raise a rate "
            "at most about e^E-fold and free-running samples cannot run away; default 2.5). "
            "The dispersion matching may raise it 2- or 4-fold for units whose bursts it "
            "cuts short.",
        ),
    ] = None,
    count_correlation: Annotated[
        str | None,
        flag_opt(
            "--count-correlation",
            "A Gaussian copula between the units' counts (each unit's own statistics "
            "unchanged): auto (the default) keeps it where free-running validation samples "
            "miss the pairwise correlations and it generates them clearly better; always keeps "
            "it wherever the training trials show the covariance the samples miss (for "
            "validation sets too small to see it); never.",
            metavar="auto|always|never",
        ),
    ] = None,
    config: ConfigOpt = None,
    trials: TrialsOpt = None,
    bin_ms: BinMsOpt = None,
    align: AlignOpt = None,
    window: WindowOpt = None,
    chop: ChopOpt = None,
    strict_windows: StrictWindowsOpt = False,
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
    MODELS/history.safetensors and reports the validation NLL against plain Poisson; the
    autoencoder's stored condition checks are measured again with draws through the new model.

    Example: ldns fit-history lorenz.nwb -m models/ --history-ms 100
    """
    from ldns_cli.fit.history import refit_history

    setup(quiet)
    opts = model_read_options(
        models, bin_ms, align, window, chop, trials, strict_windows, with_trials=True
    )
    data = read_spikes(data_path, opts)
    model = refit_history(
        data,
        models,
        history_bins=history_bins,
        history_ms=history_ms,
        max_count=max_count,
        iterations=iterations,
        optimizer=optimizer,
        lr=lr,
        coupling_rank=number_or_auto(
            coupling_rank, "--coupling-rank", 0, "e.g. --coupling-rank 1; 0 = no coupling"
        ),
        rate_match_rounds=rate_match_rounds,
        max_excitation=max_excitation,
        count_correlation=count_correlation,
        config=config,
        seed=seed,
        device=device,
        quiet=quiet,
    )
    if json_out:
        typer.echo(json.dumps(getattr(model, "fit_summary", {}), sort_keys=True))
