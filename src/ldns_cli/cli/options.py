"""CLI read options shared by every command that reads a recording.

fit-ae, fit-diffusion, encode, evaluate and inspect all take the same flags for turning spike
times into trials (`--bin-ms`, `--align`, `--window`, `--chop`) and for picking trials
(`--trials`), so they are defined once here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ldns_cli.core.data import SpikeData
from ldns_cli.io.common import ReadOptions
from ldns_cli.io.formats import read_spikes

DataArg = Annotated[Path, typer.Argument(metavar="DATA", help="Recording (.nwb, .h5) or -.")]
BinMsOpt = Annotated[
    float | None,
    typer.Option(
        "--bin-ms",
        help="Bin width in ms (default: the file's own bin size, else 5).",
        show_default=False,
    ),
]
AlignOpt = Annotated[
    str | None,
    typer.Option(
        "--align",
        help="Trials-table column to align trials to, e.g. move_onset_time (needs --window).",
        show_default=False,
    ),
]
WindowOpt = Annotated[
    tuple[float, float] | None,
    typer.Option(
        "--window",
        help="START STOP in seconds relative to --align (or to each trial's start_time), "
        "e.g. --window -0.25 0.45.",
        show_default=False,
    ),
]
ChopOpt = Annotated[
    float | None,
    typer.Option(
        "--chop",
        help="No trials table: cut the recording into windows of this many seconds.",
        show_default=False,
    ),
]
StrictWindowsOpt = Annotated[
    bool,
    typer.Option(
        "--strict-windows",
        help="A trial whose --window runs outside the recording is an error (default: such "
        "trials are left out with a warning, as the Neural Latents Benchmark does).",
    ),
]
TrialsOpt = Annotated[
    str | None,
    typer.Option(
        "--trials",
        help="Which trials to use: a split (train, val, test), a range like 0:20, or all.",
        show_default=False,
    ),
]


def read_options(
    bin_ms: float | None = None,
    align: str | None = None,
    window: tuple[float, float] | None = None,
    chop: float | None = None,
    trials: str | None = None,
    strict_windows: bool = False,
) -> ReadOptions:
    """Build `ReadOptions` from the shared flags (validation happens in ReadOptions)."""
    return ReadOptions(
        bin_ms=bin_ms,
        align=align,
        window_s=None if window is None else (float(window[0]), float(window[1])),
        chop_s=chop,
        trials=trials,
        strict_windows=strict_windows,
    )


def read_recording(
    path: str | Path,
    bin_ms: float | None = None,
    align: str | None = None,
    window: tuple[float, float] | None = None,
    chop: float | None = None,
    trials: str | None = None,
    strict_windows: bool = False,
) -> SpikeData:
    """Read a recording with the shared read flags (`--trials` chosen while reading)."""
    return read_spikes(path, read_options(bin_ms, align, window, chop, trials, strict_windows))


# ---------------------------------------------------------------------------- training options
def flag_opt(flag: str, help_text: str, *aliases: str) -> Any:
    """A typer option without a shown default (None means: take it from preset/config)."""
    return typer.Option(flag, *aliases, help=help_text, show_default=False)


PresetOpt = Annotated[
    str | None,
    flag_opt("--preset", "Settings: small (CPU demo, default), lorenz, mc_maze, speech (paper)."),
]
EpochsOpt = Annotated[int | None, flag_opt("--epochs", "Passes over the training trials.")]
BatchSizeOpt = Annotated[int | None, flag_opt("--batch-size", "Trials per step.")]
LrOpt = Annotated[float | None, flag_opt("--lr", "Peak learning rate (AdamW).")]
