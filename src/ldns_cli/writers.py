"""Write `SpikeData` to NWB or HDF5: `write_spikes`, and `write_generated` for chunked output.

The extension picks the format (`.nwb` -> NWB, `.h5`/`.hdf5` -> HDF5); `-` streams the file's
bytes to stdout (HDF5 unless `fmt="nwb"`). Every write goes through `paths.atomic_output`: a
temporary file in the destination folder, renamed over the target only when complete, and an
existing file is only replaced with `force`. `write_generated` writes the same files from
generated chunks with memory bounded by a chunk (an on-disk scratch next to the output).
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ldns_cli.data import SpikeData
from ldns_cli.errors import LdnsError
from ldns_cli.paths import STDIO, atomic_output, deferred_interrupt

if TYPE_CHECKING:
    from ldns_cli.scratch import StoredSpikes

NWB_SUFFIXES = (".nwb",)
HDF5_SUFFIXES = (".h5", ".hdf5")

# Stored rates keep this many explicit mantissa bits (of float32's 23): relative error
# <= 2^-13 = 1.2e-4, far below Poisson noise, and the zeroed low bits let gzip+shuffle shrink
# the rate array about 2x (lossless gzip alone saves only ~20% on full-entropy floats).
RATE_MANTISSA_BITS = 12
GZIP_LEVEL = 4  # h5py's default level; level 1 saved no time on float arrays here


def round_mantissa(values: np.ndarray, keep_bits: int = RATE_MANTISSA_BITS) -> np.ndarray:
    """float32 `values` rounded (to nearest, ties away from zero) to `keep_bits` mantissa bits.

    Works in place when `values` is a writable float32 array and returns it; otherwise on a
    float32 copy. Non-finite values stay non-finite (inf/nan bit patterns are left alone).
    """
    values = np.asarray(values)
    if values.dtype != np.float32 or not values.flags.writeable:
        values = values.astype(np.float32)
    drop = 23 - int(keep_bits)
    if drop <= 0:
        return values
    bits = values.reshape(-1).view(np.uint32)  # [S] a view: the rounding happens in place
    finite = (bits & np.uint32(0x7F800000)) != np.uint32(0x7F800000)
    keep = np.uint32((0xFFFFFFFF >> drop) << drop)
    # adding half an ulp of the kept precision may carry into the exponent: that is exact rounding
    rounded = (bits + np.uint32(1 << (drop - 1))) & keep
    np.copyto(bits, rounded, where=finite)
    return values


def output_format(path: str | Path, fmt: str | None = None) -> str:
    """'nwb' or 'hdf5' for an output path (`fmt` overrides; `-` defaults to HDF5)."""
    if fmt is not None:
        if fmt not in ("nwb", "hdf5"):
            raise LdnsError(f"unknown output format '{fmt}'", "use nwb or hdf5")
        return fmt
    if str(path) == STDIO:
        return "hdf5"
    suffix = Path(path).suffix.lower()
    if suffix in NWB_SUFFIXES:
        return "nwb"
    if suffix in HDF5_SUFFIXES:
        return "hdf5"
    raise LdnsError(
        f"cannot tell the output format of '{path}' from its extension",
        "name the file .nwb (NWB) or .h5/.hdf5 (HDF5)",
    )


def write_spikes(
    data: SpikeData,
    path: str | Path,
    *,
    force: bool = False,
    settings: dict[str, str] | None = None,
    generated_by: str | None = None,
    save_latents: bool = False,
    save_rates: bool = False,
    fmt: str | None = None,
    source_script: str | None = None,
) -> None:
    """Write `data` to `path` atomically.

    settings: flat generation settings (sampler, steps, seed, model fingerprints, ...), stored
        as a key/value table (NWB `/analysis/ldns_settings`, HDF5 `/settings` attributes).
    generated_by: e.g. "ldns sample"; marks the file as synthetic (NWB `data_collection`).
    save_latents / save_rates: also store `data.latents` / `data.rates` when present.
    source_script: the command line that made the file (NWB `source_script`).
    """
    kind = output_format(path, fmt)
    suffix = ".nwb" if kind == "nwb" else ".h5"
    with atomic_output(path, force=force, suffix=suffix) as tmp:
        _write(data, tmp, kind, settings, generated_by, save_latents, save_rates, source_script)


@dataclass(frozen=True)
class WriteSummary:
    """What `write_generated` wrote."""

    n_trials: int
    n_neurons: int
    n_spikes: int
    n_bins_total: int  # valid bins over all trials
    bin_size_s: float

    @property
    def mean_rate_hz(self) -> float:
        return self.n_spikes / max(1.0, self.n_bins_total * self.n_neurons) / self.bin_size_s


def write_generated(
    meta: dict[str, Any],
    chunks: Iterable[Any],
    path: str | Path,
    *,
    force: bool = False,
    settings: dict[str, str] | None = None,
    generated_by: str | None = None,
    save_latents: bool = False,
    save_rates: bool = False,
    fmt: str | None = None,
    source_script: str | None = None,
) -> WriteSummary:
    """Write generated trials to `path` chunk by chunk, with memory bounded by a chunk.

    The same file as `write_spikes(SpikeData(counts, rates, latents, **meta), ...)` (HDF5 byte
    for byte; NWB value for value), without ever holding the `[B, L, N]` arrays: the chunks
    (`generate.GeneratedChunk`: `index [b]`, `counts [b, l, N]`, optional `rates`, `latents`;
    trials in any order) spill to a scratch folder next to the output (`scratch.SampleScratch`),
    and the writer reads it back in the order the format needs. The scratch folder and the
    temporary output are removed on success, error and Ctrl-C alike.

    meta: the other `SpikeData` fields (`generate.sample_metadata`), `lengths` included.
    """
    from ldns_cli.scratch import SampleScratch

    kind = output_format(path, fmt)
    suffix = ".nwb" if kind == "nwb" else ".h5"
    try:
        with (
            atomic_output(path, force=force, suffix=suffix) as tmp,
            SampleScratch(tmp.parent, meta["lengths"]) as scratch,
        ):
            for chunk in chunks:
                scratch.add(chunk)
            stored = scratch.spikes(**meta)
            _write(
                stored, tmp, kind, settings, generated_by, save_latents, save_rates, source_script
            )
            summary = WriteSummary(
                n_trials=stored.n_trials,
                n_neurons=stored.n_neurons,
                n_spikes=int(stored.unit_totals.sum()),
                n_bins_total=int(stored.lengths.sum()),
                bin_size_s=stored.bin_size_s,
            )
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:  # a generator stopped early: run its cleanup now
            close()
    return summary


def _write(
    data: SpikeData | StoredSpikes,
    tmp: Path,
    kind: str,
    settings: dict[str, str] | None,
    generated_by: str | None,
    save_latents: bool,
    save_rates: bool,
    source_script: str | None,
) -> None:
    if source_script is None and generated_by is not None:
        source_script = " ".join(["ldns", *sys.argv[1:]]) if sys.argv else generated_by
    flat = {str(k): str(v) for k, v in (settings or {}).items()}
    with warnings.catch_warnings(), deferred_interrupt():  # Ctrl-C stops the write cleanly
        warnings.simplefilter("ignore")
        if kind == "nwb":
            from ldns_cli.nwb_io import write_nwb

            write_nwb(
                data,
                tmp,
                settings=flat,
                generated_by=generated_by,
                save_latents=save_latents,
                save_rates=save_rates,
                source_script=source_script,
            )
        else:
            from ldns_cli.hdf5_io import write_hdf5

            write_hdf5(
                data,
                tmp,
                settings=flat,
                generated_by=generated_by,
                save_latents=save_latents,
                save_rates=save_rates,
            )
