"""Entry point: `ldns` console script and `python -m ldns_cli`.

Importing the command modules registers their commands on the shared Typer app.
"""

from __future__ import annotations

from ldns_cli.allocator import keep_freed_memory
from ldns_cli.app import app
from ldns_cli.commands import register_all

register_all()


def main() -> None:
    keep_freed_memory()  # training and sampling reuse large freed blocks (see allocator.py)
    app()


__all__ = ["app", "main"]
