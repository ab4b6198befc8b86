"""CLI read options shared by every command that reads a recording.

fit-ae, fit-diffusion, encode, evaluate and inspect all take the same flags for turning spike
times into trials (`--bin-ms`, `--align`, `--window`, `--chop`) and for picking trials
(`--trials`), so they are defined once here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ldns_cli.core.console import warn
from ldns_cli.core.data import SpikeData
from ldns_cli.core.errors import LdnsError
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
    return ReadOptions.from_flags(bin_ms, align, window, chop, trials, strict_windows)


def model_read_options(
    models: str | Path,
    bin_ms: float | None = None,
    align: str | None = None,
    window: tuple[float, float] | None = None,
    chop: float | None = None,
    trials: str | None = None,
    strict_windows: bool = False,
    *,
    with_trials: bool,
) -> ReadOptions:
    """The read flags, defaulting to how the models' training recording was read (the model
    folder remembers it). A flag that differs from the remembered value is used, with a
    warning. `with_trials`: the remembered trial selection applies too (for refitting a stage
    on the training recording; not for held-out or condition recordings)."""
    from ldns_cli.store import read_options_of

    stored = read_options_of(models) or {}
    cut = {"align": align, "window_s": window, "chop_s": chop}  # one group: all or none
    if all(v is None for v in cut.values()):
        cut = {k: stored.get(k) for k in cut}
    else:
        for key, flag in (("align", "--align"), ("window_s", "--window"), ("chop_s", "--chop")):
            _warn_if_differs(models, flag, cut[key], stored.get(key), key in stored)
    if bin_ms is None:
        bin_ms = stored.get("bin_ms")
    else:
        _warn_if_differs(models, "--bin-ms", bin_ms, stored.get("bin_ms"), "bin_ms" in stored)
    if with_trials:
        if trials is None:
            trials = stored.get("trials")
        else:
            _warn_if_differs(models, "--trials", trials, stored.get("trials"), "trials" in stored)
    return read_options(
        bin_ms, cut["align"], cut["window_s"], cut["chop_s"], trials, strict_windows
    )


def _warn_if_differs(models: str | Path, flag: str, given: Any, stored: Any, known: bool) -> None:
    if not known:
        return
    if isinstance(given, (tuple, list)) and stored is not None:
        same = len(given) == len(stored) and all(
            abs(float(a) - float(b)) < 1e-9 for a, b in zip(given, stored, strict=True)
        )
    elif isinstance(given, float) and stored is not None:
        same = abs(given - float(stored)) < 1e-9
    else:
        same = given == stored
    if not same:
        text = " ".join(map(str, stored)) if isinstance(stored, list) else stored
        warn(
            f"{flag} {' '.join(map(str, given)) if isinstance(given, tuple) else given} differs "
            f"from how the models in {models} were fitted ({text if stored is not None else 'not set'})"
        )


def read_flags(opts: ReadOptions) -> str:
    """The read flags that reproduce `opts`, for commands printed back to the user."""
    parts = []
    if opts.bin_ms is not None:
        parts.append(f"--bin-ms {opts.bin_ms:g}")
    if opts.align is not None:
        parts.append(f"--align {opts.align}")
    if opts.window_s is not None:
        parts.append(f"--window {opts.window_s[0]:g} {opts.window_s[1]:g}")
    if opts.chop_s is not None:
        parts.append(f"--chop {opts.chop_s:g}")
    if opts.trials is not None:
        parts.append(f"--trials {opts.trials}")
    return "".join(" " + p for p in parts)


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
def number_or_auto(value: str | None, flag: str, minimum: int, example: str) -> int | str | None:
    """A flag that takes a whole number ≥ `minimum` or "auto": the number, "auto", or None
    (not given); anything else is refused with `example` as the hint."""
    if value is None or value.strip().lower() == "auto":
        return None if value is None else "auto"
    try:
        number = int(value)
    except ValueError:
        number = None
    if number is None or number < minimum:
        raise LdnsError(
            f"{flag} must be a whole number ≥ {minimum} or auto, got {value!r}", example
        )
    return number


def flag_opt(flag: str, help_text: str, *aliases: str, metavar: str | None = None) -> Any:
    """A typer option without a shown default (None means: take it from preset/config)."""
    return typer.Option(flag, *aliases, help=help_text, show_default=False, metavar=metavar)


PresetOpt = Annotated[
    str | None,
    flag_opt("--preset", "Settings: small (CPU demo, default), lorenz, mc_maze, speech (paper)."),
]
EpochsOpt = Annotated[int | None, flag_opt("--epochs", "Passes over the training trials.")]
BatchSizeOpt = Annotated[int | None, flag_opt("--batch-size", "Trials per step.")]
LrOpt = Annotated[float | None, flag_opt("--lr", "Peak learning rate (AdamW).")]


def check_report_dir(directory: Path, force: bool) -> None:
    """`--report DIR`: a folder (new, empty, or any with --force) whose parent exists."""
    if directory.exists() and not directory.is_dir():
        raise LdnsError(f"--report '{directory}' is a file", "give a folder name, e.g. report/")
    if directory.is_dir() and any(directory.iterdir()) and not force:
        raise LdnsError(
            f"report folder '{directory}' is not empty",
            "pass --force to write into it anyway, or choose a new folder",
        )
    if not directory.parent.exists():
        raise LdnsError(
            f"folder '{directory.parent}' does not exist",
            f"create it: mkdir -p {directory.parent}",
        )
