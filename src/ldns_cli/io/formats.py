"""Spike recordings in and out: `read_spikes` and `write_spikes`, one entry point each for every
format, and `write_generated` for `ldns sample`'s streamed output.

The input format is decided by content, not by name: NWB files are HDF5 files with an
`nwb_version` root attribute; any other HDF5 file must hold the ldns binned layout (`/spikes`, see
`io.hdf5`) or LFADS-style `train_data`/`valid_data`. `-` reads the file's bytes from stdin. The
output format comes from the file name or `fmt`.

Every failure a damaged or unexpected file can cause ends in `LdnsError` (the property tests in
`tests/test_read_fuzz.py` feed the readers truncated and random files to hold us to that).
"""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ldns_cli.core.data import SpikeData
from ldns_cli.core.errors import LdnsError
from ldns_cli.core.paths import (
    STDIO,
    atomic_output,
    check_input,
    deferred_interrupt,
    read_stdin_to_temp,
)
from ldns_cli.io.common import READ_OPTIONS_KEY, ReadOptions

if TYPE_CHECKING:
    from ldns_cli.io.scratch import StoredSpikes

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


# Each format's reader and writer import their module on first use: pynwb takes seconds to
# import, and `ldns --help` or an HDF5-only pipeline should not pay for it.
def _read_nwb(path: Path, opts: ReadOptions) -> SpikeData:
    from ldns_cli.io.nwb_read import read_nwb

    return read_nwb(path, opts)


def _write_nwb(data: Any, tmp: Path, **options: Any) -> None:
    from ldns_cli.io.nwb_write import write_nwb

    write_nwb(data, tmp, **options)


def _read_hdf5(path: Path, opts: ReadOptions) -> SpikeData:
    from ldns_cli.io.hdf5 import read_hdf5

    return read_hdf5(path, opts)


def _write_hdf5(data: Any, tmp: Path, *, source_script: str | None = None, **options: Any) -> None:
    from ldns_cli.io.hdf5 import write_hdf5

    write_hdf5(data, tmp, **options)  # the HDF5 layout has no field for the command line


@dataclass(frozen=True)
class FileFormat:
    """One file format: its output names and its reader and writer.

    reader(path, opts) -> SpikeData; writer(data, tmp, settings=, generated_by=, save_latents=,
    save_rates=, source_script=) writes `SpikeData` or the streamed `StoredSpikes`.
    """

    name: str
    suffixes: tuple[str, ...]  # the first names the temporary file an output is written to
    reader: Callable[[Path, ReadOptions], SpikeData]
    writer: Callable[..., None]


# the formats, by the name `file_kind` (input, by content) and `output_format` (by name) return
FORMATS = {
    "nwb": FileFormat("nwb", (".nwb",), _read_nwb, _write_nwb),
    "hdf5": FileFormat("hdf5", (".h5", ".hdf5"), _read_hdf5, _write_hdf5),
}


def read_spikes(path: str | Path, opts: ReadOptions | None = None) -> SpikeData:
    """Read an NWB or HDF5 file (or `-` for stdin) into binned `SpikeData`."""
    opts = opts or ReadOptions()
    tmp: Path | None = None
    if str(path) == STDIO:
        tmp = read_stdin_to_temp(".h5")
        source, name = tmp, "<stdin>"
    else:
        p = check_input(path)
        assert p is not None
        source, name = p, str(p)
    try:
        data = _read_file(source, name, opts)
    finally:
        if tmp is not None and tmp.exists():
            tmp.unlink()
    data.provenance[READ_OPTIONS_KEY] = json.dumps(opts.recorded(data.bin_size_s))
    return data


def file_kind(path: Path, name: str | None = None) -> str:
    """'nwb' or 'hdf5' by content; LdnsError for anything that is not an HDF5 file."""
    name = name or str(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError as exc:
        raise LdnsError(f"cannot open '{name}': {exc.strerror}", "check the path") from None
    import h5py

    # HDF5 allows a user block before the signature (512, 1024, ... bytes)
    if head != HDF5_SIGNATURE and not h5py.is_hdf5(str(path)):
        raise LdnsError(
            f"'{name}' is not an HDF5 or NWB file",
            "ldns reads NWB (.nwb) and HDF5 (.h5/.hdf5) files",
        )
    try:
        with h5py.File(path, "r") as f:
            return "nwb" if "nwb_version" in f.attrs else "hdf5"
    except Exception as exc:
        raise _corrupt(name, exc) from None


def _corrupt(name: str, exc: BaseException) -> LdnsError:
    msg = " ".join(str(exc).split())[:200]
    return LdnsError(
        f"'{name}' could not be read ({type(exc).__name__}: {msg})",
        "the file may be truncated or corrupt; re-download or re-write it",
    )


def _read_file(path: Path, name: str, opts: ReadOptions) -> SpikeData:
    kind = file_kind(path, name)
    with warnings.catch_warnings():
        # pynwb/hdmf warn about namespaces and cached specs; stderr stays ours
        warnings.simplefilter("ignore")
        try:
            data = FORMATS[kind].reader(path, opts)
        except (LdnsError, MemoryError, KeyboardInterrupt):
            raise
        except Exception as exc:  # any library failure on a damaged file is a clean error
            raise _corrupt(name, exc) from None
    data.provenance.setdefault("source_file", Path(name).name)
    return data


def output_format(path: str | Path, fmt: str | None = None) -> str:
    """'nwb' or 'hdf5' for an output path (`fmt` overrides; `-` defaults to HDF5)."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise LdnsError(f"unknown output format '{fmt}'", f"use {' or '.join(FORMATS)}")
        return fmt
    if str(path) == STDIO:
        return "hdf5"
    suffix = Path(path).suffix.lower()
    for name, file_format in FORMATS.items():
        if suffix in file_format.suffixes:
            return name
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
    with atomic_output(path, force=force, suffix=FORMATS[kind].suffixes[0]) as tmp:
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
    from ldns_cli.io.scratch import SampleScratch

    kind = output_format(path, fmt)
    try:
        with (
            atomic_output(path, force=force, suffix=FORMATS[kind].suffixes[0]) as tmp,
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
        FORMATS[kind].writer(
            data,
            tmp,
            settings=flat,
            generated_by=generated_by,
            save_latents=save_latents,
            save_rates=save_rates,
            source_script=source_script,
        )
