"""Choosing trials of a recording: `--trials train|val|test|0:20|all`.

A split name picks the trials labelled so; a range counts trials in the order the file lists
them (for NWB: rows of the trials table, before any trial is left out for its window).
"""

from __future__ import annotations

import re

import numpy as np

from ldns_cli.core.data import SpikeData
from ldns_cli.core.errors import LdnsError

SPLITS = ("train", "val", "test")
SPLIT_ALIASES = {"valid": "val", "validation": "val", "training": "train", "testing": "test"}


def normalise_split(values: np.ndarray) -> np.ndarray:
    """Split labels in lower case with the usual aliases folded (valid -> val, ...)."""
    return np.array([SPLIT_ALIASES.get(str(v).lower(), str(v).lower()) for v in values])


def selected_rows(n_trials: int, split: np.ndarray | None, trials: str | None) -> np.ndarray:
    """Indices `[k]` of the trials `--trials` picks among `n_trials` with `split` labels."""
    if trials is None or trials.strip().lower() == "all":
        return np.arange(n_trials)
    spec = trials.strip().lower()
    if spec in SPLITS or spec in SPLIT_ALIASES:
        spec = SPLIT_ALIASES.get(spec, spec)
        if split is None:
            raise LdnsError(
                f"--trials {trials}: the data has no split labels",
                "use a range such as --trials 0:100, or --trials all",
            )
        chosen = np.flatnonzero(split == spec)
        if chosen.size == 0:
            found = ", ".join(sorted(set(split.tolist())))
            raise LdnsError(f"no trials in split '{spec}'", f"splits in this file: {found}")
        return chosen
    match = re.fullmatch(r"(-?\d*):(-?\d*)", spec)
    if match is None:
        raise LdnsError(
            f"cannot read --trials '{trials}'",
            "use a split (train, val, test), a range like 0:20, or all",
        )
    lo, hi = (int(g) if g else None for g in match.groups())
    idx = np.arange(n_trials)[slice(lo, hi)]
    if idx.size == 0:
        raise LdnsError(
            f"--trials {trials} selects no trials (the data has {n_trials})",
            f"use a range inside 0:{n_trials}",
        )
    return idx


def select_trials(data: SpikeData, trials: str | None) -> SpikeData:
    """Apply `--trials`: None/"all" keeps everything; a split name or a python-style range."""
    if trials is None or trials.strip().lower() == "all":
        return data
    return data.select(selected_rows(data.n_trials, data.split, trials))
