"""CLI command modules. Each registers its commands on `ldns_cli.app.app` when imported."""

from __future__ import annotations

import importlib

# order = order in `ldns --help`
_MODULES = ("data", "ae", "diffusion", "history", "sample", "evaluate")


def register_all() -> None:
    for name in _MODULES:
        importlib.import_module(f"ldns_cli.commands.{name}")
