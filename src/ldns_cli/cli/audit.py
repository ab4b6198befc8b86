"""CLI command `audit`: does a sample set copy its training trials, and is it useful?"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from ldns_cli.cli.app import DeviceOpt, ForceOpt, JsonOpt, QuietOpt, SeedOpt, command, setup
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
from ldns_cli.core.data import SpikeData
from ldns_cli.core.errors import LdnsError
from ldns_cli.core.paths import STDIO

TrainTrialsOpt = Annotated[
    str | None,
    typer.Option(
        "--train-trials",
        help="The trials of TRAIN the model was fitted on: a split (train, val, test), a range "
        "like 0:700, or all. Default: the train split when the file has split labels, else all.",
        show_default=False,
    ),
]
HeldoutTrialsOpt = Annotated[
    str | None,
    typer.Option(
        "--heldout-trials",
        help="The trials of HELDOUT to compare with. Default: the test split when HELDOUT is "
        "the TRAIN file, else all.",
        show_default=False,
    ),
]


def _select(data: SpikeData, trials: str | None, flag: str) -> SpikeData:
    from ldns_cli.io.select import select_trials

    try:
        return select_trials(data, trials)
    except LdnsError as exc:  # name the flag the user gave, not the generic --trials
        raise LdnsError(exc.message.replace("--trials", flag), exc.hint) from None


def _same_file(a: str, b: str) -> bool:
    return a != STDIO and b != STDIO and Path(a).resolve() == Path(b).resolve()


def _print(payload: dict) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from ldns_cli.auditing.report import TABLE_HEADER, table_rows

    sets = payload["sets"]
    table = Table(
        title=f"audit: {sets['samples']['trials']} samples, {sets['train']['trials']} training "
        f"and {sets['heldout']['trials']} held-out trials",
    )
    for i, head in enumerate(TABLE_HEADER):
        table.add_column(head, justify="left" if i < 2 else "right")
    for row in table_rows(payload):
        table.add_row(*(Text(cell) for cell in row))  # cells are data, not rich markup
    console = Console(
        file=sys.stdout,
        highlight=False,
        no_color="NO_COLOR" in os.environ,
        width=None if sys.stdout.isatty() else 120,
    )
    console.print(table)
    console.print("verdict:", markup=False)
    for v in payload["verdict"]:
        console.print(f"- {v['aspect']}: {v['text']}", markup=False, soft_wrap=True)


@command("audit", rich_help_panel="Evaluation")
def audit(
    train: Annotated[str, typer.Argument(help="Trials the model was trained on (NWB or HDF5).")],
    heldout: Annotated[
        str, typer.Argument(help="Real trials the model never saw (NWB or HDF5; may be TRAIN).")
    ],
    samples: Annotated[str, typer.Argument(help="Generated trials (NWB or HDF5; - for stdin).")],
    models: Annotated[
        Path | None,
        typer.Option(
            "--models",
            "-m",
            help="The model folder: adds the latent space and the membership attack.",
            show_default=False,
        ),
    ] = None,
    train_trials: TrainTrialsOpt = None,
    heldout_trials: HeldoutTrialsOpt = None,
    bin_ms: BinMsOpt = None,
    align: AlignOpt = None,
    window: WindowOpt = None,
    chop: ChopOpt = None,
    strict_windows: StrictWindowsOpt = False,
    report: Annotated[
        Path | None,
        typer.Option("--report", help="Write PNG figures and index.html into this folder."),
    ] = None,
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, help="Trials per network batch (with -m).")
    ] = 64,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    force: ForceOpt = False,
) -> None:
    """Audit synthetic trials for privacy and usefulness: memorisation (each sample's distance
    to the nearest training trial, against a threshold calibrated on held-out trials), membership
    inference from the model (with -m), realism (can a classifier tell samples from held-out
    trials?) and utility (decoders of the conditions trained on samples, tested on held-out
    trials), with 95% intervals and a verdict.

    --align/--window/--chop apply to TRAIN and HELDOUT; --bin-ms to all three; with -m they
    default to how the models' training recording was read. Sample with held-out conditions
    (ldns sample --condition-from HELDOUT): samples conditioned on the training trials' own
    conditions sit next to those trials by design. Prints a table and the verdict on stdout (or
    JSON with --json).

    Example: ldns audit reach.nwb reach.nwb samples.nwb -m models/ --report audit/
    """
    from ldns_cli.auditing.run import audit_full
    from ldns_cli.io.common import ReadOptions
    from ldns_cli.io.formats import read_spikes
    from ldns_cli.scoring.evaluation import jsonable

    setup(quiet)
    if sum(p == STDIO for p in (train, heldout, samples)) > 1:
        raise LdnsError("only one of TRAIN, HELDOUT and SAMPLES can be stdin (-)", "pass files")
    if report is not None:
        check_report_dir(report, force)
    flags = (bin_ms, align, window, chop, None, strict_windows)
    if models is None:
        train_opts = heldout_opts = read_options(*flags)
    else:  # read as the models' training recording was (its trial selection for TRAIN only)
        train_opts = model_read_options(models, *flags, with_trials=True)
        heldout_opts = model_read_options(models, *flags, with_trials=False)
    recording = read_spikes(train, train_opts)
    same = _same_file(train, heldout)
    if train_trials is None and recording.split is not None and (recording.split == "train").any():
        train_trials = "train"
    if same and heldout_trials is None:
        if recording.split is None or not (recording.split == "test").any():
            raise LdnsError(
                "TRAIN and HELDOUT are the same file and it has no test split",
                "say which trials are which, e.g. --train-trials 0:700 --heldout-trials 700:1000",
            )
        heldout_trials = "test"
    other = recording if same and heldout_opts == train_opts else read_spikes(heldout, heldout_opts)
    train_set = _select(recording, train_trials, "--train-trials")
    heldout_set = _select(other, heldout_trials, "--heldout-trials")
    bin_ms = train_opts.bin_ms if bin_ms is None else bin_ms  # the samples: the same bins
    sample_set = read_spikes(samples, ReadOptions(bin_ms=bin_ms))
    info(
        f"training: {train_set.n_trials} trials ({train_trials or 'all'}), held-out: "
        f"{heldout_set.n_trials} ({heldout_trials or 'all'}), samples: {sample_set.n_trials}; "
        f"{train_set.n_neurons} neurons, {train_set.bin_size_s * 1e3:g} ms bins"
    )
    fewest = min(train_set.n_trials, heldout_set.n_trials, sample_set.n_trials)
    if fewest < 20:
        warn(f"a set has only {fewest} trials: the intervals are wide and the verdict is weak")
    model_set = None
    if models is not None:
        from ldns_cli.core.runtime import resolve_device
        from ldns_cli.store import load_models

        model_set = load_models(models, resolve_device(device))
    result = audit_full(
        train_set,
        heldout_set,
        sample_set,
        models=model_set,
        seed=seed,
        batch_size=batch_size,
        log=info,
    )
    payload = jsonable(result.payload)
    for key, path, chosen in (
        ("train", train, train_trials),
        ("heldout", heldout, heldout_trials),
        ("samples", samples, None),
    ):
        payload["sets"][key]["path"] = path
        if chosen is not None:
            payload["sets"][key]["trials_selected"] = chosen
    if report is not None:
        from ldns_cli.auditing.report import write_report

        report.mkdir(exist_ok=True)
        write_report(result, payload, report)
        info(f"wrote report: {report / 'index.html'}")
    if json_out:
        typer.echo(json.dumps(payload, indent=2, ensure_ascii=False, allow_nan=False))
    else:
        _print(payload)
