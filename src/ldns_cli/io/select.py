"""Choosing trials of a recording: `--trials train|val|test|0:20|all`."""

from __future__ import annotations

import re

import numpy as np

from ldns_cli.core.data import SpikeData
from ldns_cli.core.errors import LdnsError

SPLITS = ("train", "val", "test")


def select_trials(data: SpikeData, trials: str | None) -> SpikeData:
    """Apply `--trials`: None/"all" keeps everything; a split name or a python-style range."""
    if trials is None or trials.strip().lower() == "all":
        return data
    spec = trials.strip().lower()
    if spec in SPLITS or spec in ("valid", "validation"):
        spec = "val" if spec in ("valid", "validation") else spec
        if data.split is None:
            raise LdnsError(
                f"--trials {trials}: the data has no split labels",
                "use a range such as --trials 0:100, or --trials all",
            )
        chosen = data.split == spec
        if not chosen.any():
            found = ", ".join(sorted(set(data.split.tolist())))
            raise LdnsError(f"no trials in split '{spec}'", f"splits in this file: {found}")
        return data.select(chosen)
    match = re.fullmatch(r"(-?\d*):(-?\d*)", spec)
    if match is None:
        raise LdnsError(
            f"cannot read --trials '{trials}'",
            "use a split (train, val, test), a range like 0:20, or all",
        )
    lo, hi = (int(g) if g else None for g in match.groups())
    idx = np.arange(data.n_trials)[slice(lo, hi)]
    if idx.size == 0:
        raise LdnsError(
            f"--trials {trials} selects no trials (the data has {data.n_trials})",
            f"use a range inside 0:{data.n_trials}",
        )
    return data.select(idx)
