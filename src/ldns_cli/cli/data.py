"""CLI commands for data: `simulate` (built-in datasets) and `inspect` (what ldns will read)."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from ldns_cli.cli.app import ForceOpt, JsonOpt, QuietOpt, SeedOpt, command, setup
from ldns_cli.cli.options import (
    AlignOpt,
    BinMsOpt,
    ChopOpt,
    StrictWindowsOpt,
    TrialsOpt,
    WindowOpt,
    read_recording,
)
from ldns_cli.core.console import info


class Dataset(str, Enum):
    lorenz = "lorenz"
    reach = "reach"
    network = "network"


class History(str, Enum):
    none = "none"
    refractory = "refractory"
    bursting = "bursting"
    mixed = "mixed"


@command("simulate", rich_help_panel="Data")
def simulate(
    dataset: Annotated[
        Dataset, typer.Argument(help="Which built-in dataset: lorenz, reach or network.")
    ],
    output: Annotated[
        Path,
        typer.Option("--output", "-o", help="Output file: .nwb or .h5 (- for HDF5 on stdout)."),
    ],
    trials: Annotated[
        int | None,
        typer.Option("--trials", help="Number of trials (lorenz 5000, reach 1000, network 400)."),
    ] = None,
    neurons: Annotated[
        int | None, typer.Option("--neurons", help="Number of neurons (128; network 100).")
    ] = None,
    length: Annotated[
        str | None,
        typer.Option(
            "--length",
            help="Bins per trial (lorenz 256, reach 140, network 120), or a range 150:400 for "
            "variable-length trials.",
        ),
    ] = None,
    history: Annotated[
        History,
        typer.Option(
            "--history",
            help="Single-neuron spike history: none, refractory, bursting, or mixed (a "
            "heterogeneous population, see --cell-types).",
        ),
    ] = History.none,
    cell_types: Annotated[
        str | None,
        typer.Option(
            "--cell-types",
            help="Fractions of a mixed population, e.g. "
            "bursting=0.2,refractory=0.5,regular=0.15,poisson=0.15 (the default).",
            show_default=False,
        ),
    ] = None,
    file_format: Annotated[
        str | None,
        typer.Option("--format", help="nwb or hdf5 (default: from the extension; HDF5 for -o -)."),
    ] = None,
    truth: Annotated[
        bool,
        typer.Option(
            "--truth/--no-truth",
            help="Store the true latents and rates (rates are float32 [trials, bins, neurons]: "
            "about 650 MB at the paper's lorenz size).",
        ),
    ] = True,
    seed: SeedOpt = 0,
    force: ForceOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Write a built-in dataset with known ground truth (latents and rates are stored too).

    lorenz: the LDNS paper's benchmark (3-D Lorenz latents, softplus rates, 10 ms bins).
    reach: a conditional reach task in the Neural Latents Benchmark layout (angle column,
    move_onset_time, hand_vel behaviour, 140 bins of 5 ms).
    network: no latent variables: a spiking E/I network of coupled GLM units; a stimulus
    direction (angle column) tunes part of the input (120 bins of 5 ms).
    --history mixed: bursting, refractory, regular and Poisson-like units in --cell-types
    fractions; the true cell types and kernels are stored as unit columns.

    Example: ldns simulate lorenz -o lorenz.nwb --trials 1000 --seed 1
    """
    from ldns_cli.core.paths import check_output
    from ldns_cli.io.formats import output_format, write_spikes
    from ldns_cli.io.simulate import simulate as simulate_dataset

    setup(quiet)
    output_format(output, file_format)  # fail on a bad path before simulating, not after
    check_output(output, force)
    name = dataset.value
    data = simulate_dataset(
        name,
        trials=trials,
        neurons=neurons,
        length=length,
        history=history.value,
        cell_types=cell_types,
        seed=seed,
    )
    mix = "" if cell_types is None else f" --cell-types {cell_types}"
    settings = {
        "dataset": name,
        "trials": str(data.n_trials),
        "neurons": str(data.n_neurons),
        "length": length or str(data.n_bins),
        "history": history.value,
        "seed": str(seed),
    }
    if cell_types is not None:
        settings["cell_types"] = data.provenance.get("cell_types", cell_types)
    write_spikes(
        data,
        str(output),
        force=force,
        fmt=file_format,
        settings=settings,
        generated_by=f"ldns simulate {name}",
        save_latents=truth,
        save_rates=truth,
        source_script=(
            f"ldns simulate {name} -o {output} --trials {data.n_trials} --neurons {data.n_neurons} "
            f"--length {length or data.n_bins} --history {history.value}{mix} --seed {seed}"
        ),
    )
    info(
        f"wrote {output}: {data.n_trials} trials x {data.n_bins} bins x {data.n_neurons} neurons "
        f"({data.bin_size_s * 1e3:g} ms bins, mean {data.mean_rate_hz().mean():.3g} Hz)"
    )


@command("inspect", rich_help_panel="Data")
def inspect(
    path: Annotated[str, typer.Argument(help="NWB or HDF5 file (- for stdin).")],
    bin_ms: BinMsOpt = None,
    align: AlignOpt = None,
    window: WindowOpt = None,
    chop: ChopOpt = None,
    strict_windows: StrictWindowsOpt = False,
    trials: TrialsOpt = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Show what ldns will read from a file: units, trials, lengths, bin size, covariates,
    behaviour and firing rates. With --json, print the same as one JSON object.

    Example: ldns inspect mc_maze.nwb --align move_onset_time --window -0.25 0.45 --bin-ms 5
    """
    from ldns_cli.io.inspect import render_text, summarize

    setup(quiet)
    data = read_recording(path, bin_ms, align, window, chop, trials, strict_windows)
    summary = summarize(data)
    if json_out:
        typer.echo(json.dumps(summary, indent=2))
    else:
        typer.echo(render_text(summary))
