"""The command line: Typer commands only (parse flags, read the files they name, one library
call, print). Importing this package registers every command on the shared app.

Entry points: the `ldns` console script and `python -m ldns_cli`.
"""

from __future__ import annotations

from ldns_cli.cli import ae, audit, data, diffusion, evaluate, history, sample  # noqa: F401 (registers the commands)
from ldns_cli.cli.app import app
from ldns_cli.core.runtime import keep_freed_memory


def main() -> None:
    keep_freed_memory()  # training and sampling reuse large freed blocks (see core/runtime.py)
    app()


__all__ = ["app", "main"]
