"""Plain HDF5 in and out: the ldns binned layout, and LFADS-style files on input.

ldns layout, format version 1, all arrays trial-major:

    /                    attrs format="ldns-binned", format_version=1, created_by, created
    /spikes              uint8/uint16/int32 [trial, time, neuron], attrs dims, units="counts"
    /lengths             int32 [trial]         valid bins per trial (padding at the back)
    /bin_size            float64 scalar (s)
    /align_offset        float64 scalar (s)    start of bin 0 relative to the event
    /trial_id            int64 [trial]
    /trial_start         float64 [trial]       session time of bin 0 (s)
    /split               str [trial]           + train_inds / valid_inds for LFADS users
    /conditions/<name>   [trial] or [trial, k] attrs unit, kind, description, columns
    /behavior/<name>     float32 [trial, time, k], same attrs
    /neurons/unit_id     int64 [neuron]        (+ any per-unit column, e.g. heldout)
    /latents, /rates     optional ground truth [trial, time, Z] / [trial, time, neuron]
    /provenance, /settings   groups whose attrs are flat key/value strings

LFADS files (`train_data`/`valid_data` [E, T, D] counts) read as one SpikeData with split
labels train/val; their bin size comes from a `dt` dataset/attribute, `--bin-ms`, or 5 ms.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ldns_cli.core.data import SpikeData, VariableInfo
from ldns_cli.core.errors import LdnsError
from ldns_cli.core.paths import check_interrupt
from ldns_cli.core.version import __version__
from ldns_cli.io.common import (
    DEFAULT_BIN_MS,
    GZIP_LEVEL,
    RATE_MANTISSA_BITS,
    ReadOptions,
    as_str,
    round_mantissa,
)
from ldns_cli.io.provenance import reference_time
from ldns_cli.io.select import select_trials

if TYPE_CHECKING:
    from ldns_cli.io.scratch import StoredSpikes

FORMAT = "ldns-binned"
FORMAT_VERSION = 1
_READ_ELEMENTS = 1 << 20  # on-disk counts read at a time while writing


# ====================================================================== reading
def read_hdf5(path: str | Path, opts: ReadOptions) -> SpikeData:
    import h5py

    if opts.align is not None or opts.window_s is not None or opts.chop_s is not None:
        raise LdnsError(
            "--align/--window/--chop cut spike times, but this HDF5 file is already binned",
            "drop those options for HDF5 input (they apply to NWB files)",
        )
    with h5py.File(path, "r") as f:
        if "spikes" in f:
            data = _read_ldns(f, opts)
        elif "train_data" in f or "valid_data" in f:
            data = _read_lfads(f, opts)
        else:
            keys = ", ".join(sorted(f.keys())[:8]) or "nothing"
            raise LdnsError(
                f"HDF5 file has no /spikes (ldns layout) or train_data (LFADS); it holds {keys}",
                "write files with `ldns simulate`/`ldns sample`, or see README: file formats",
            )
    return select_trials(data, opts.trials)


def _dataset(f: Any, key: str) -> np.ndarray:
    import h5py

    obj = f[key]
    if not isinstance(obj, h5py.Dataset):
        raise LdnsError(f"/{key} is a group, expected an array", "see README: file formats")
    return _values(obj)


def _values(ds: Any) -> np.ndarray:
    """A dataset's contents, strings decoded to str."""
    return ds.asstr()[()] if ds.dtype.kind in "OS" else ds[()]


def _counts(raw: np.ndarray, where: str) -> np.ndarray:
    raw = np.asarray(raw)
    if raw.dtype.kind not in "iuf" or raw.ndim != 3:
        raise LdnsError(
            f"{where} must be a 3-D numeric array [trial, time, neuron], got {raw.dtype} {raw.shape}",
            "see README: file formats",
        )
    if raw.dtype.kind == "f":
        if not np.all(np.isfinite(raw)) or np.any(raw != np.round(raw)):
            raise LdnsError(f"{where} holds non-integer or NaN counts", "store spike counts")
    if raw.size and raw.min() < 0:
        raise LdnsError(f"{where} holds negative counts", "spike counts must be >= 0")
    return raw.astype(np.int32)


def _scalar(f: Any, key: str, default: float | None) -> float | None:
    if key not in f:
        return default
    value = np.asarray(_dataset(f, key))
    if value.size != 1 or value.dtype.kind not in "iuf":
        raise LdnsError(f"/{key} must be one number", "see README: file formats")
    return float(value.reshape(()))


def _rebin(
    counts: np.ndarray, lengths: np.ndarray, file_bin_s: float, bin_s: float
) -> tuple[np.ndarray, np.ndarray, int]:
    """Sum adjacent bins to a coarser bin size that is a whole multiple of the file's."""
    factor = bin_s / file_bin_s
    k = round(factor)
    if abs(factor - k) > 1e-6 or k < 1:
        raise LdnsError(
            f"--bin-ms {bin_s * 1e3:g} is not a whole multiple of the file's "
            f"{file_bin_s * 1e3:g} ms bins",
            f"binned files can only be coarsened: use a multiple of {file_bin_s * 1e3:g} ms",
        )
    if k == 1:
        return counts, lengths, 1
    n_trials, n_bins, n_neurons = counts.shape
    n_new = n_bins // k
    if n_new < 1:
        raise LdnsError(f"trials are shorter than one {bin_s * 1e3:g} ms bin", "smaller --bin-ms")
    counts = counts[:, : n_new * k].reshape(n_trials, n_new, k, n_neurons).sum(axis=2)
    new_lengths = lengths // k  # a partial last bin is dropped
    counts[np.arange(n_new)[None, :] >= new_lengths[:, None]] = 0
    if new_lengths.min() < 1:
        raise LdnsError(
            f"some trials are shorter than one {bin_s * 1e3:g} ms bin", "smaller --bin-ms"
        )
    return counts.astype(np.int32), new_lengths, k


def _coarsen(values: np.ndarray, factor: int, n_bins: int, reduce: Any) -> np.ndarray:
    """[B, L*factor, k] -> [B, L, k] by `reduce` over each group of `factor` bins."""
    if values.ndim != 3 or values.shape[1] < n_bins * factor:
        raise LdnsError(
            f"an array of shape {values.shape} does not match /spikes", "file is inconsistent"
        )
    b, _, k = values.shape
    return reduce(values[:, : n_bins * factor].reshape(b, n_bins, factor, k), axis=2)


def _attrs_info(obj: Any) -> VariableInfo:
    a = obj.attrs

    cols = [as_str(c) for c in np.atleast_1d(a.get("columns", []))]
    return VariableInfo(
        unit=as_str(a.get("unit", "")),
        description=as_str(a.get("description", "")),
        kind=as_str(a.get("kind", "")) or "continuous",
        columns=[c for c in cols if c],
    )


def _read_ldns(f: Any, opts: ReadOptions) -> SpikeData:
    import h5py

    counts = _counts(_dataset(f, "spikes"), "/spikes")
    n_trials, n_bins, _ = counts.shape
    lengths = (
        np.asarray(_dataset(f, "lengths"), dtype=np.int64)
        if "lengths" in f
        else np.full(n_trials, n_bins, dtype=np.int64)
    )
    if lengths.shape != (n_trials,):
        raise LdnsError(
            f"/lengths has shape {lengths.shape}, expected ({n_trials},)", "file is inconsistent"
        )
    file_bin_s = _scalar(f, "bin_size", None)
    if file_bin_s is None:
        file_bin_s = opts.bin_size_s or DEFAULT_BIN_MS / 1000.0
    if not (np.isfinite(file_bin_s) and file_bin_s > 0):
        raise LdnsError(
            f"/bin_size must be positive, got {file_bin_s}", "store the bin size in seconds"
        )
    bin_s = opts.bin_size_s or file_bin_s
    if lengths.size and (lengths.min() < 1 or lengths.max() > n_bins):
        raise LdnsError(f"/lengths must lie in 1..{n_bins}", "file is inconsistent")
    counts, lengths, factor = _rebin(counts, lengths, file_bin_s, bin_s)
    n_bins = counts.shape[1]

    def optional(key: str) -> np.ndarray | None:
        return np.asarray(_dataset(f, key)) if key in f else None

    covariates: dict[str, np.ndarray] = {}
    behavior: dict[str, np.ndarray] = {}
    infos: dict[str, VariableInfo] = {}
    for group_name in ("conditions", "behavior"):
        group = f.get(group_name)
        if group is None:
            continue
        if not isinstance(group, h5py.Group):
            raise LdnsError(f"/{group_name} must be a group", "see README: file formats")
        for name, obj in group.items():
            if not isinstance(obj, h5py.Dataset):
                raise LdnsError(
                    f"/{group_name}/{name} must be an array", "see README: file formats"
                )
            values = _values(obj)
            infos[name] = _attrs_info(obj)
            if group_name == "conditions":
                covariates[name] = np.asarray(values)
                continue
            beh = np.asarray(values, dtype=np.float32)
            if beh.ndim == 2:
                beh = beh[:, :, None]
            if factor > 1 and beh.ndim == 3:
                beh = _coarsen(beh, factor, n_bins, np.mean)
            behavior[name] = beh

    unit_info: dict[str, np.ndarray] = {}
    unit_ids = None
    neurons = f.get("neurons")
    if isinstance(neurons, h5py.Group):
        for name, obj in neurons.items():
            if isinstance(obj, h5py.Dataset):
                values = _values(obj)
                if name == "unit_id":
                    unit_ids = np.asarray(values)
                else:
                    unit_info[name] = np.asarray(values)
    elif "heldout" in f:
        unit_info["heldout"] = np.asarray(_dataset(f, "heldout"))

    latents = optional("latents")
    rates = optional("rates")
    if factor > 1:
        latents = None if latents is None else _coarsen(latents, factor, n_bins, np.mean)
        rates = None if rates is None else _coarsen(rates, factor, n_bins, np.sum)

    split = optional("split")
    provenance = {"source_format": FORMAT}
    for group_name in ("provenance", "settings"):
        group = f.get(group_name)
        if isinstance(group, h5py.Group):
            for key, value in group.attrs.items():
                key = key if group_name == "provenance" else f"settings.{key}"
                provenance[key] = as_str(value)
    for key in ("created_by", "source", "created"):
        if key in f.attrs:
            provenance.setdefault(key, as_str(f.attrs[key]))
    provenance["bin_size_s"] = repr(bin_s)
    if "align_offset" in f:
        field = as_str(f["align_offset"].attrs.get("align_field", ""))
        if field:
            provenance["align_field"] = field

    return SpikeData(
        counts=counts,
        lengths=lengths,
        bin_size_s=bin_s,
        unit_ids=unit_ids,
        trial_ids=optional("trial_id"),
        trial_start_s=optional("trial_start"),
        align_offset_s=_scalar(f, "align_offset", 0.0) or 0.0,
        covariates=covariates,
        behavior=behavior,
        split=None if split is None else np.asarray(split).astype(str),
        variable_info=infos,
        unit_info=unit_info,
        latents=latents,
        rates=rates,
        provenance=provenance,
    )


def _read_lfads(f: Any, opts: ReadOptions) -> SpikeData:
    parts, split = [], []
    for key, label in (("train_data", "train"), ("valid_data", "val")):
        if key in f:
            block = _counts(_dataset(f, key), f"/{key}")
            parts.append(block)
            split += [label] * len(block)
    shapes = {p.shape[1:] for p in parts}
    if len(shapes) != 1:
        raise LdnsError(
            f"train_data and valid_data disagree in [time, neuron] shape: {sorted(shapes)}",
            "both must have the same number of bins and neurons",
        )
    counts = np.concatenate(parts)
    file_bin_s = _scalar(f, "dt", None)
    if file_bin_s is None and "dt" in f.attrs:
        file_bin_s = float(np.asarray(f.attrs["dt"]).reshape(()))
    bin_s = opts.bin_size_s or file_bin_s or DEFAULT_BIN_MS / 1000.0
    if not (np.isfinite(bin_s) and bin_s > 0):
        raise LdnsError(f"bin size must be positive, got {bin_s}", "pass e.g. --bin-ms 5")
    lengths = np.full(len(counts), counts.shape[1], dtype=np.int64)
    if file_bin_s is not None and file_bin_s > 0:
        counts, lengths, _ = _rebin(counts, lengths, file_bin_s, bin_s)
    return SpikeData(
        counts=counts,
        lengths=lengths,
        bin_size_s=bin_s,
        split=np.array(split),
        provenance={"source_format": "lfads-hdf5", "bin_size_s": repr(bin_s)},
    )


# ====================================================================== writing
def _count_dtype(counts: np.ndarray, top: int | None = None) -> np.dtype:
    """The smallest of uint8/uint16/int32 that holds the counts (`top`: their known maximum)."""
    if top is None:
        top = int(counts.max()) if counts.size else 0
    return np.dtype(np.uint8 if top < 2**8 else np.uint16 if top < 2**16 else np.int32)


def _rows_as(values: Any, sl: slice, dtype: np.dtype) -> np.ndarray:
    """`values[sl]` as `dtype`; an on-disk array is read a few trials at a time into it."""
    if isinstance(values, np.ndarray):
        return values[sl].astype(dtype, copy=False)
    start, stop, _ = sl.indices(values.shape[0])
    out = np.empty((stop - start, *values.shape[1:]), dtype=dtype)
    per_trial = max(1, int(np.prod(values.shape[1:])))
    step = max(1, _READ_ELEMENTS // per_trial)
    for i in range(start, stop, step):
        out[i - start : i - start + step] = values[i : min(i + step, stop)]
    return out


def _write_array(group: Any, name: str, values: np.ndarray) -> Any:
    """A dataset for `values`; string arrays are stored as variable-length UTF-8."""
    import h5py

    values = np.asarray(values)
    if values.dtype.kind in "SUO":
        text = values.astype(str).astype(object)
        return group.create_dataset(name, data=text, dtype=h5py.string_dtype())
    return group.create_dataset(name, data=values)


def _write_floats(f: Any, name: str, values: np.ndarray, keep_bits: int | None) -> Any:
    """`[B, L, k]` floats as float32, gzip+shuffle, written 64 trials at a time.

    keep_bits: round to this many mantissa bits first (see `io.common.round_mantissa`); None keeps
    every bit. Chunk-wise writing bounds the extra memory to one chunk's float32 copy (`values`
    may also be an on-disk array such as an h5py dataset: it is read 64 trials at a time).
    """
    if not hasattr(values, "shape"):
        values = np.asarray(values)
    n_trials = values.shape[0]
    step = max(1, min(64, n_trials))
    ds = f.create_dataset(
        name,
        shape=values.shape,
        dtype=np.float32,
        chunks=(step, *values.shape[1:]) if n_trials else None,
        compression="gzip",
        compression_opts=GZIP_LEVEL,
        shuffle=True,
    )
    for start in range(0, n_trials, step):
        check_interrupt()
        part = np.array(values[start : start + step], dtype=np.float32)  # own copy
        ds[start : start + step] = part if keep_bits is None else round_mantissa(part, keep_bits)
    return ds


def write_hdf5(
    data: SpikeData | StoredSpikes,
    path: Path,
    *,
    settings: dict[str, str] | None = None,
    generated_by: str | None = None,
    save_latents: bool = False,
    save_rates: bool = False,
) -> None:
    """Write `data` in the ldns HDF5 layout at `path` (the caller makes it atomic).

    `data` may also be a `scratch.StoredSpikes` (arrays on disk): everything big is read and
    written 64 trials at a time, and the file is the same byte for byte.
    """
    import h5py

    n_trials, n_bins, n_neurons = data.counts.shape
    with h5py.File(path, "w") as f:
        f.attrs.update(
            format=FORMAT,
            format_version=FORMAT_VERSION,
            created_by=f"ldns {__version__}",
            created=reference_time(bool(generated_by)).isoformat(timespec="seconds"),
            source=data.provenance.get("source_file", generated_by or "ldns"),
        )
        if generated_by:
            f.attrs["generated_by"] = generated_by
        chunk_trials = max(1, min(64, n_trials))
        spikes = f.create_dataset(
            "spikes",
            shape=data.counts.shape,
            dtype=_count_dtype(data.counts, getattr(data, "count_max", None)),
            chunks=(chunk_trials, n_bins, n_neurons),
            compression="gzip",
            compression_opts=1,
        )
        # chunk-wise: no full-size cast copy of the counts
        for start in range(0, n_trials, chunk_trials):
            check_interrupt()
            sl = slice(start, start + chunk_trials)
            spikes[sl] = _rows_as(data.counts, sl, spikes.dtype)
        spikes.attrs["dims"] = ["trial", "time", "neuron"]
        spikes.attrs["units"] = "counts"
        f["lengths"] = data.lengths.astype(np.int32)
        f["bin_size"] = np.float64(data.bin_size_s)
        f["align_offset"] = np.float64(data.align_offset_s)
        f["align_offset"].attrs["align_field"] = data.provenance.get("align_field", "")
        f["trial_id"] = np.asarray(data.trial_ids)
        f["trial_start"] = data.trial_start_s
        if data.split is not None:
            _write_array(f, "split", data.split)
            f["train_inds"] = np.flatnonzero(data.split == "train")
            f["valid_inds"] = np.flatnonzero(data.split == "val")
        for group_name, values_by_name in (
            ("conditions", data.covariates),
            ("behavior", data.behavior),
        ):
            if not values_by_name:
                continue
            group = f.create_group(group_name)
            for name, values in values_by_name.items():
                ds = _write_array(group, name, values)
                info = data.info(name)
                ds.attrs.update(unit=info.unit, kind=info.kind, description=info.description)
                ds.attrs["columns"] = info.columns
        neurons = f.create_group("neurons")
        _write_array(neurons, "unit_id", data.unit_ids)
        for name, values in data.unit_info.items():
            _write_array(neurons, name, values)
        if save_latents and data.latents is not None:
            _write_floats(f, "latents", data.latents, keep_bits=None)
        if save_rates and data.rates is not None:
            ds = _write_floats(f, "rates", data.rates, keep_bits=RATE_MANTISSA_BITS)
            ds.attrs["mantissa_bits"] = RATE_MANTISSA_BITS
        prov = f.create_group("provenance")
        prov.attrs.update(
            {k: v for k, v in data.provenance.items() if not k.startswith("settings.")}
        )
        sett = f.create_group("settings")
        merged = {
            k[len("settings.") :]: v
            for k, v in data.provenance.items()
            if k.startswith("settings.")
        }
        merged.update({k: str(v) for k, v in (settings or {}).items()})
        sett.attrs.update(merged)
