"""Outputs larger than memory: generated chunks spill to an on-disk scratch, writers stream it.

`ldns sample` generates trials in chunks sorted by length (`generate.generate_chunks`), but the
output files want other orders: HDF5 `/spikes` is written in 64-trial chunks in index order, in a
dtype (uint8/uint16/int32) chosen by the largest count of all trials, and the NWB Units table
stores each unit's spike times for all trials contiguously. So the chunks go to a scratch folder
next to the output (`SampleScratch`), and the writers read it back in the order they need
through `StoredSpikes`, which looks like a `SpikeData` whose `[B, L, *]` arrays are on disk. The
files written this way are the ones `write_spikes` writes from memory (HDF5 byte for byte).

- `trials.h5`: counts (int32, lzf + shuffle: the zeros of sparse counts and padding cost almost
  nothing), rates and latents (float32, raw: they hardly compress) `[B, L, *]`, chunked by trial,
  read back in blocks of trials. Disk: a fraction of the int32 counts' size, plus 4 bytes per
  value of saved rates/latents;
- `events.*.bin` (NWB only, built on first use): the non-empty bins as (trial * L + bin, count),
  grouped by unit and in (trial, bin) order within a unit, so one unit's spikes are one slice.

Memory stays bounded by a generation chunk, a block of trials (`BLOCK_ELEMENTS`) and a piece of
one unit's spikes (`EVENTS_PER_PIECE`), whatever the number of trials. The folder is removed when
the scratch closes, on success, error or Ctrl-C alike.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ldns_cli.core.data import TrialViews, VariableInfo
from ldns_cli.core.paths import check_interrupt, remove_stale, temp_prefix

BLOCK_ELEMENTS = 1 << 20  # trials x bins x columns read back at a time (4 MB of int32/float32)
EVENTS_PER_PIECE = 1 << 18  # non-empty bins of one unit handed out at a time
_CHUNK_ELEMENTS = 1 << 18  # bins x columns per HDF5 chunk of the scratch file (1 MB)


@dataclass
class StoredSpikes(TrialViews):
    """The `SpikeData` interface the writers use, with counts/rates/latents in a scratch file.

    `counts`, `rates` and `latents` are h5py datasets `[B, L, *]` (slice them by trials); every
    other field is in memory and means what it means in `SpikeData`. Besides: `count_max` (the
    largest count), `unit_totals` (spikes per unit `[N]`) and `unit_nonzero` (non-empty bins per
    unit `[N]`), gathered while the chunks were stored.
    """

    counts: Any
    lengths: np.ndarray
    bin_size_s: float
    folder: Path
    count_max: int
    unit_totals: np.ndarray
    unit_nonzero: np.ndarray
    unit_ids: np.ndarray | None = None
    trial_ids: np.ndarray | None = None
    trial_start_s: np.ndarray | None = None
    align_offset_s: float = 0.0
    covariates: dict[str, np.ndarray] = field(default_factory=dict)
    behavior: dict[str, np.ndarray] = field(default_factory=dict)
    split: np.ndarray | None = None
    variable_info: dict[str, VariableInfo] = field(default_factory=dict)
    unit_info: dict[str, np.ndarray] = field(default_factory=dict)
    latents: Any = None
    rates: Any = None
    provenance: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # the same normalisation as SpikeData (without its full-array checks)
        self.lengths = np.asarray(self.lengths, dtype=np.int64)
        self.bin_size_s = float(self.bin_size_s)
        self._default_ids(*self.counts.shape)
        self.covariates = {k: np.asarray(v) for k, v in self.covariates.items()}
        beh = {k: np.asarray(v, dtype=np.float32) for k, v in self.behavior.items()}
        self.behavior = {k: v[:, :, None] if v.ndim == 2 else v for k, v in beh.items()}
        if self.split is not None:
            self.split = np.asarray(self.split).astype(str)
        self.unit_info = {k: np.asarray(v) for k, v in self.unit_info.items()}
        self.provenance = {str(k): str(v) for k, v in self.provenance.items()}

    def trial_blocks(self, columns: int | None = None) -> Iterator[slice]:
        """Consecutive trial slices of about `BLOCK_ELEMENTS` trials x bins x `columns`."""
        per_trial = self.n_bins * max(1, self.n_neurons if columns is None else columns)
        step = max(1, BLOCK_ELEMENTS // max(1, per_trial))
        for start in range(0, self.n_trials, step):
            check_interrupt()
            yield slice(start, min(start + step, self.n_trials))

    def unit_events(
        self, max_events: int = EVENTS_PER_PIECE
    ) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
        """Each unit's non-empty bins, in pieces: (unit, trial `[M]`, bin `[M]`, count `[M]`).

        Units come in order, each as one or more pieces of at most `max_events` bins, and
        within a unit the bins come in (trial, bin) order (a unit with no spikes yields
        nothing). The first call sorts the counts by unit into memmaps in the scratch folder
        (one pass over the trials, block by block).
        """
        starts = np.concatenate([[0], np.cumsum(self.unit_nonzero, dtype=np.int64)])
        if int(starts[-1]) == 0:
            return
        keys, values = self._events(starts)
        n_bins, step = self.n_bins, max(1, int(max_events))
        for u in range(self.n_neurons):
            for lo in range(int(starts[u]), int(starts[u + 1]), step):
                check_interrupt()
                hi = min(lo + step, int(starts[u + 1]))
                key = np.asarray(keys[lo:hi])
                yield u, key // n_bins, key % n_bins, np.asarray(values[lo:hi])

    def _events(self, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        key_path = self.folder / "events.key.bin"
        value_path = self.folder / "events.count.bin"
        n_events, n_bins, n_units = int(starts[-1]), self.n_bins, self.n_neurons
        if key_path.exists():
            return (
                np.memmap(key_path, dtype=np.int64, mode="r", shape=(n_events,)),
                np.memmap(value_path, dtype=np.int32, mode="r", shape=(n_events,)),
            )
        keys = np.memmap(key_path, dtype=np.int64, mode="w+", shape=(n_events,))
        values = np.memmap(value_path, dtype=np.int32, mode="w+", shape=(n_events,))
        cursor = starts[:-1].copy()  # [N] next free slot of each unit
        for sl in self.trial_blocks():
            block = np.asarray(self.counts[sl], dtype=np.int32)  # [b, L, N]
            by_unit = np.ascontiguousarray(np.moveaxis(block, 2, 0)).reshape(n_units, -1)
            del block
            for u, row in enumerate(by_unit):  # row: (local trial, bin) flattened
                flat = np.flatnonzero(row)
                end = cursor[u] + len(flat)
                keys[cursor[u] : end] = sl.start * n_bins + flat
                values[cursor[u] : end] = row[flat]
                cursor[u] = end
        if not np.array_equal(cursor, starts[1:]):
            raise RuntimeError("scratch counts changed while sorting them by unit")
        keys.flush()
        values.flush()
        return keys, values


class SampleScratch:
    """A temporary folder next to the output that collects generated chunks (see module doc).

    Use as a context manager; `add` each chunk (any order of trials), then `spikes(...)` gives
    the `StoredSpikes` to hand to a writer while the scratch is still open.
    """

    def __init__(self, folder: str | Path, lengths: np.ndarray) -> None:
        import h5py

        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.n_trials, self.n_bins = len(self.lengths), int(self.lengths.max())
        remove_stale(folder)
        self.folder = Path(tempfile.mkdtemp(prefix=temp_prefix(), suffix=".scratch", dir=folder))
        try:
            self._file = h5py.File(self.folder / "trials.h5", "w")
        except BaseException:
            shutil.rmtree(self.folder, ignore_errors=True)
            raise
        self._arrays: dict[str, Any] = {}
        self._written = np.zeros(self.n_trials, dtype=bool)
        self.count_max = 0
        self.unit_totals: np.ndarray | None = None
        self.unit_nonzero: np.ndarray | None = None

    def __enter__(self) -> SampleScratch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the scratch file and remove the folder (idempotent)."""
        try:
            if self._file.id.valid:
                self._file.close()
        finally:
            self._arrays = {}
            shutil.rmtree(self.folder, ignore_errors=True)

    def _dataset(self, name: str, dtype: type, columns: int) -> Any:
        if name not in self._arrays:
            t = max(1, min(self.n_bins, _CHUNK_ELEMENTS // max(1, columns)))
            # counts are mostly zeros: lzf + shuffle makes them small at little cost; float
            # rates/latents hardly compress, so they are stored raw (faster)
            packed = {"compression": "lzf", "shuffle": True} if dtype is np.int32 else {}
            self._arrays[name] = self._file.create_dataset(
                name,
                shape=(self.n_trials, self.n_bins, columns),
                dtype=dtype,
                chunks=(1, t, columns),
                **packed,
            )
        return self._arrays[name]

    def add(self, chunk: Any) -> None:
        """Store one chunk: `index [b]`, `counts [b, l, N]`, optional `rates`, `latents`."""
        index = np.asarray(chunk.index, dtype=np.int64)
        counts = np.asarray(chunk.counts)
        if counts.ndim != 3 or counts.shape[0] != len(index):
            raise ValueError(f"chunk counts have shape {counts.shape} for {len(index)} trials")
        parts = [("counts", np.int32, counts)]
        for name in ("rates", "latents"):
            values = getattr(chunk, name, None)
            if values is not None:
                parts.append((name, np.float32, np.asarray(values)))
        # whole rows of the chunk, padding included, exactly as `generate.generate` collects
        # them (latents padding holds -0.0 where z < 0: same bytes in the output)
        n = counts.shape[1]
        for name, dtype, values in parts:
            ds = self._dataset(name, dtype, values.shape[2])
            for row, trial in enumerate(index):
                ds[trial, :n] = values[row].astype(dtype, copy=False)
        self._written[index] = True
        if counts.size:
            self.count_max = max(self.count_max, int(counts.max()))
        totals = counts.sum(axis=(0, 1), dtype=np.int64)
        nonzero = np.count_nonzero(counts, axis=(0, 1)).astype(np.int64)
        if self.unit_totals is None or self.unit_nonzero is None:
            self.unit_totals, self.unit_nonzero = totals, nonzero
        else:
            self.unit_totals += totals
            self.unit_nonzero += nonzero

    def spikes(self, **meta: Any) -> StoredSpikes:
        """The stored trials as `StoredSpikes`; `meta` are the other `SpikeData` fields."""
        if not self._written.all() or self.unit_totals is None or self.unit_nonzero is None:
            missing = int((~self._written).sum())
            raise RuntimeError(f"{missing} of {self.n_trials} trials were never generated")
        meta = {k: v for k, v in meta.items() if k != "lengths"}
        return StoredSpikes(
            counts=self._arrays["counts"],
            lengths=self.lengths,
            folder=self.folder,
            count_max=self.count_max,
            unit_totals=self.unit_totals,
            unit_nonzero=self.unit_nonzero,
            rates=self._arrays.get("rates"),
            latents=self._arrays.get("latents"),
            **meta,
        )
