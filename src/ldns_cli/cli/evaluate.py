"""CLI command `evaluate`: generated spikes against a recording, with floor/naive reference points."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from ldns_cli.cli.app import ForceOpt, JsonOpt, QuietOpt, SeedOpt, command, setup
from ldns_cli.cli.options import (
    AlignOpt,
    BinMsOpt,
    ChopOpt,
    StrictWindowsOpt,
    WindowOpt,
    check_report_dir,
    model_read_options,
    read_options,
)
from ldns_cli.core.console import info, warn
from ldns_cli.core.errors import LdnsError
from ldns_cli.core.paths import STDIO


def _print_table(payload: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from ldns_cli.scoring.report import (
        CONDITION_HEADER,
        MODEL_CHECK_HEADER,
        TABLE_HEADER,
        condition_rows,
        model_check_rows,
        table_rows,
    )

    ref, gen = payload["reference"], payload["generated"]
    table = Table(
        title=f"generated ({gen['trials']} trials) vs reference ({ref['trials']} trials), "
        f"{payload['protocol']['folds']} folds",
        caption="lower is better; score = (model − floor)/(naive − floor): "
        "0 = like the data, 1 = like Poisson; ±noise = how far sampling alone moves it; "
        "! = worse than Poisson",
    )
    for i, head in enumerate(TABLE_HEADER):
        table.add_column(head, justify="left" if i == 0 else "right")
    for row in table_rows(payload):
        table.add_row(*row)
    console = Console(
        file=sys.stdout,
        highlight=False,
        no_color="NO_COLOR" in os.environ,
        width=None if sys.stdout.isatty() else 110,
    )
    console.print(table)
    extra = (
        (
            "per condition: samples for condition c against reference trials with c",
            "floor = held-out reference trials; chance = trials that ignore the condition; "
            "score = (model − floor)/(chance − floor)",
            CONDITION_HEADER,
            condition_rows(payload),
        ),
        (
            "condition checks stored with the models (decoders fitted on real training trials, "
            "applied at each stage to the validation trials' conditions)",
            None,
            MODEL_CHECK_HEADER,
            model_check_rows(payload),
        ),
    )
    for title, caption, header, rows in extra:
        if not rows:
            continue
        more = Table(title=title, caption=caption)
        for i, head in enumerate(header):
            more.add_column(head, justify="left" if i == 0 else "right")
        for row in rows:
            more.add_row(*row)
        console.print(more)


@command("evaluate", rich_help_panel="Evaluation")
def evaluate(
    reference: Annotated[str, typer.Argument(help="Recording to compare with (NWB or HDF5).")],
    generated: Annotated[str, typer.Argument(help="Generated spikes (NWB or HDF5; - for stdin).")],
    models: Annotated[
        Path | None,
        typer.Option(
            "--models",
            "-m",
            help="Model folder that made the samples: the reference is read as its training "
            "recording was (bin size, alignment, window) unless flags say otherwise.",
            show_default=False,
        ),
    ] = None,
    bin_ms: BinMsOpt = None,
    align: AlignOpt = None,
    window: WindowOpt = None,
    chop: ChopOpt = None,
    strict_windows: StrictWindowsOpt = False,
    reference_trials: Annotated[
        str | None,
        typer.Option(
            "--reference-trials",
            help="Reference trials to compare with: a split (train, val, test), a range like "
            "0:500, or all (default).",
            show_default=False,
        ),
    ] = None,
    conditions: Annotated[
        list[str] | None,
        typer.Option(
            "--condition",
            help="Evaluate per value of this trial covariate or behaviour series (repeatable; "
            "default: the conditions the samples were generated with; 'none' for none).",
            show_default=False,
            metavar="NAME",
        ),
    ] = None,
    report: Annotated[
        Path | None,
        typer.Option(
            "--report",
            help="Write PNG figures and index.html into this folder (with -m: also the "
            "training curves).",
        ),
    ] = None,
    folds: Annotated[
        int, typer.Option("--folds", min=1, max=1000, help="Random splits (mean ± sd over them).")
    ] = 5,
    seed: SeedOpt = 0,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    force: ForceOpt = False,
) -> None:
    """Measure how closely generated spikes match a recording: population spike count
    distribution, pairwise correlations, ISI statistics, rates, Fano factors, autocorrelations
    and population spectra, each next to a floor (the recording against itself) and a naive
    Poisson model, with the normalised score (model − floor)/(naive − floor).

    --align/--window/--chop apply to the reference; --bin-ms to both files. Prints a table on
    stdout (or JSON with --json).

    Example: ldns evaluate lorenz.nwb samples.nwb --reference-trials train --report report/
    """
    from ldns_cli.io.common import ReadOptions
    from ldns_cli.io.formats import read_spikes
    from ldns_cli.scoring.evaluation import evaluate_full, jsonable
    from ldns_cli.scoring.neurons import realism_warnings

    setup(quiet)
    if reference == STDIO and generated == STDIO:
        raise LdnsError("only one of REFERENCE and GENERATED can be stdin (-)", "pass a file")
    if report is not None:
        check_report_dir(report, force)
    flags = (bin_ms, align, window, chop, reference_trials, strict_windows)
    ref_opts = (
        read_options(*flags)
        if models is None
        else model_read_options(models, *flags, with_trials=False)
    )
    ref = read_spikes(reference, ref_opts)
    bin_ms = ref_opts.bin_ms if bin_ms is None else bin_ms  # the generated file: same bins
    gen = read_spikes(generated, ReadOptions(bin_ms=bin_ms))
    info(
        f"reference: {ref.n_trials} trials x {ref.n_neurons} neurons; generated: "
        f"{gen.n_trials} trials x {gen.n_neurons} neurons ({ref.bin_size_s * 1e3:g} ms bins)"
    )
    names = None if not conditions else [c for c in conditions if c.lower() != "none"]
    ev = evaluate_full(ref, gen, folds=folds, seed=seed, log=info, conditions=names)
    matched = ev.payload["protocol"]["matched_trials"]["model"]
    if matched < 20:
        warn(f"each fold compares only {matched:g} trials per set: the numbers are noisy")
    if models is not None:
        from ldns_cli.store import stored_checks

        ev.payload["model_checks"] = stored_checks(models)
    ev.payload["reference"]["path"] = reference
    ev.payload["generated"]["path"] = generated
    if reference_trials is not None:
        ev.payload["reference"]["trials_selected"] = reference_trials
    if not quiet:  # per-unit warnings are advice, not errors: --quiet silences them
        for line in realism_warnings(gen, ref):
            warn(line)
        for line in ev.payload["notes"]["conditions"]:
            info(line)
    if report is not None:
        from ldns_cli.scoring.report import write_report

        report.mkdir(exist_ok=True)
        logs = sorted(models.glob("*_training.csv")) if models is not None else []
        write_report(ev, report, training_logs=logs)
        info(f"wrote report: {report / 'index.html'}")
    payload = jsonable(ev.payload)
    if json_out:
        typer.echo(json.dumps(payload, indent=2, ensure_ascii=False, allow_nan=False))
    else:
        _print_table(payload)
