"""stderr-only console output: logs, warnings and progress bars never touch stdout.

stdout is reserved for data (`--json` payloads, file bytes with `-o -`). `NO_COLOR` and a
non-terminal stderr give plain text (rich handles both).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

_state = {"quiet": False}
_thread = threading.local()  # `quiet_thread`: silence one thread (parallel fits) only

err_console = Console(stderr=True, highlight=False, no_color="NO_COLOR" in os.environ)


def set_quiet(quiet: bool) -> None:
    """Silence info messages and progress bars (warnings and errors still print)."""
    _state["quiet"] = quiet


def is_quiet() -> bool:
    return _state["quiet"] or getattr(_thread, "quiet", False)


@contextmanager
def quiet_thread() -> Iterator[None]:
    """Info messages and progress bars of the calling thread silenced inside the block; other
    threads (the one that reports on parallel work) print as before."""
    before = getattr(_thread, "quiet", False)
    _thread.quiet = True
    try:
        yield
    finally:
        _thread.quiet = before


def info(message: str) -> None:
    """An informational line on stderr (suppressed by --quiet)."""
    if not is_quiet():
        err_console.print(message, markup=False, soft_wrap=True)


def warn(message: str) -> None:
    """A warning on stderr; shown even with --quiet."""
    err_console.print(f"warning: {message}", markup=False, style="yellow", soft_wrap=True)


@contextmanager
def progress(description: str, total: int | None) -> Iterator[Progress]:
    """A rich progress bar on stderr (a no-op display with --quiet).

    Usage:
        with progress("epochs", total=n) as (bar):
            task = bar.add_task("train", total=n)
            bar.update(task, advance=1, loss=...)
    """
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
    ]
    bar = Progress(*columns, console=err_console, disable=is_quiet(), transient=False)
    with bar:
        yield bar
