"""The Typer application, shared option types and the error boundary.

Commands live in `ldns_cli.commands.*` and register themselves with `@command(...)`, which turns
`LdnsError` into `error:`/`hint:` lines on stderr and exit code 1 (Typer's own usage errors exit 2).
Command bodies stay thin: parse flags, call library code, report.
"""

from __future__ import annotations

import errno
import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from ldns_cli.core.console import err_console, set_quiet
from ldns_cli.core.errors import LdnsError
from ldns_cli.core.runtime import check_seed
from ldns_cli.core.version import __version__

F = TypeVar("F", bound=Callable[..., Any])

app = typer.Typer(
    name="ldns",
    help=(
        "Latent Diffusion for Neural Spiking data: learn the latent dynamics of a spike recording "
        "and generate new, realistic spike trains.\n\n"
        "Typical run: ldns simulate lorenz -o lorenz.nwb; ldns fit-ae lorenz.nwb; "
        "ldns fit-diffusion lorenz.nwb; ldns sample -n 64 --length 256 -o out.nwb; "
        "ldns evaluate lorenz.nwb out.nwb"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def report_error(exc: LdnsError) -> None:
    err_console.print(f"error: {exc.message}", markup=False, style="red", soft_wrap=True)
    if exc.hint:
        err_console.print(f"hint: {exc.hint}", markup=False, soft_wrap=True)


def command(*args: Any, **kwargs: Any) -> Callable[[F], F]:
    """`app.command` plus the error boundary: LdnsError -> exit 1 with error/hint lines."""

    def deco(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*a: Any, **k: Any) -> Any:
            try:
                check_seed(k.get("seed"))  # every command's --seed, before any work
                return fn(*a, **k)
            except LdnsError as exc:
                report_error(exc)
                raise typer.Exit(1) from None
            except KeyboardInterrupt:
                report_error(LdnsError("interrupted", "partial outputs were not written"))
                raise typer.Exit(130) from None
            except MemoryError:
                report_error(
                    LdnsError("out of memory", "use a smaller --batch-size or fewer trials")
                )
                raise typer.Exit(1) from None
            except PermissionError as exc:
                report_error(
                    LdnsError(f"permission denied: {exc.filename}", "check file permissions")
                )
                raise typer.Exit(1) from None
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    report_error(LdnsError("no space left on device", "free disk space"))
                    raise typer.Exit(1) from None
                if exc.errno == errno.EPIPE:
                    raise  # stdout's reader went away (e.g. `| head`): nothing to report
                # outputs are named by core.paths; what is left is an input or the system's
                where = f": '{exc.filename}'" if exc.filename else ""
                report_error(
                    LdnsError(
                        f"{exc.strerror or type(exc).__name__}{where}",
                        "check the path, its permissions and the free disk space",
                    )
                )
                raise typer.Exit(1) from None

        app.command(*args, **kwargs)(wrapper)
        return fn

    return deco


def version_callback(value: bool) -> None:
    if value:
        typer.echo(f"ldns {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=version_callback, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    """Latent Diffusion for Neural Spiking data."""


# ------------------------------------------------------------------ shared option types
DEFAULT_MODELS = Path("models")

SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed; fixes every random choice.")]
DeviceOpt = Annotated[
    str,
    typer.Option(
        "--device", help="auto | cpu | cuda | cuda:N | mps (auto: CUDA, then MPS, then CPU)."
    ),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or info on stderr.")]
ForceOpt = Annotated[bool, typer.Option("--force", "-f", help="Overwrite existing output files.")]
ModelsOpt = Annotated[
    Path, typer.Option("--models", "-m", help="Model folder (default: ./models).")
]
ConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="JSON file of settings; flags override it.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a JSON payload on stdout.")]


def setup(quiet: bool = False) -> None:
    """Per-command common setup (quiet mode, headless plotting)."""
    set_quiet(quiet)
    os.environ.setdefault("MPLBACKEND", "Agg")
