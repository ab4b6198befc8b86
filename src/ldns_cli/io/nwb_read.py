"""NWB in: a neuroscientist's NWB file (not necessarily ours) -> `SpikeData`.

pynwb is imported only here and in `io.nwb_write`. Reading bins the Units table's flat
`spike_times` per trial (see `io.common.bin_spike_times`), turns trials-table columns into
covariates and `processing/behavior` series into behaviour resampled onto the bins. Files written
by `io.nwb_write` read back exactly (its docstring lists their conventions).

Reading choices:
- bins: `--bin-ms`, else `units.resolution` for ldns-written files, else 5 ms (a foreign
  file's resolution is its spike-time precision, not a bin size).
- trials: `start_time`/`stop_time` (variable lengths, zero padding), or `--align COL --window A B`
  (fixed length; a window may reach past its trial's own bounds, as in NLB, but one that misses
  its trial entirely or leaves the recording is an error; trials whose event is NaN are dropped
  with a warning), or `--chop S` over the recording (obs_intervals span, else the spikes').
- trial columns: strings -> categorical (`split` -> `SpikeData.split`), integers and booleans ->
  categorical, floats -> continuous; names that read as angles (`core.data.is_angle_name`:
  angle/direction/dir/theta/phase/heading/orientation) -> circular, converted from degrees when
  the description says so or values exceed 2 pi; `*_time` columns -> seconds relative to the
  trial's first bin. Ragged columns load as `[B, k]` when every row has k values, else they are
  skipped; a float column with NaN is skipped too. Skips are warnings plus a note in
  `provenance["skipped"]`, and an error for columns named in `ReadOptions.require`.
- behaviour: every TimeSeries/SpatialSeries in `processing/behavior` (also inside containers
  such as Position), bin-averaged; NaN dropouts are interpolated first; a series that does not
  cover every trial is skipped with a note.

The names and placeholders of ldns-written files (the settings table, the ground-truth module,
the species and experimenter defaults) are defined here; `io.nwb_write` imports them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from ldns_cli.core.console import warn
from ldns_cli.core.data import SpikeData, VariableInfo, is_angle_name
from ldns_cli.core.errors import LdnsError
from ldns_cli.io.common import DEFAULT_BIN_MS, ReadOptions, as_str, bin_spike_times, resample_series
from ldns_cli.io.select import normalise_split, select_trials, selected_rows

SETTINGS_TABLE = "ldns_settings"
# NCBI taxonomy "synthetic construct": the DANDI checks need a species, and this one is true
SYNTHETIC_SPECIES = "http://purl.obolibrary.org/obo/NCBITaxon_32630"
UNKNOWN_SPECIES = SYNTHETIC_SPECIES
# the DANDI name form is "Last, First"; override with LDNS_EXPERIMENTER="Doe, Jane"
DEFAULT_EXPERIMENTER = "ldns, software"
EMPTY = "-"  # the inspector flags empty strings in table cells
TRUTH_MODULE = "misc"
# unit columns that are not per-unit scalars
_UNIT_SKIP = {"spike_times", "obs_intervals", "electrodes", "electrode_group", "waveforms"}


# ====================================================================== reading
def read_nwb(path: str | Path, opts: ReadOptions) -> SpikeData:
    """Read an NWB file into binned `SpikeData` (the IO stays open while arrays are sliced)."""
    from pynwb import NWBHDF5IO

    with NWBHDF5IO(str(path), "r", load_namespaces=True) as io:
        nwbfile = io.read()
        return _from_nwbfile(nwbfile, opts)


def _col_data(col: Any) -> np.ndarray:
    return np.asarray(col.data[:])


def _read_meta(nwbfile: Any) -> dict[str, str] | None:
    """The `/analysis/ldns_settings` key/value table of an ldns-written file, else None."""
    table = nwbfile.analysis.get(SETTINGS_TABLE) if nwbfile.analysis else None
    if table is None or "key" not in table.colnames or "value" not in table.colnames:
        return None
    keys = [as_str(k) for k in _col_data(table["key"])]
    values = [as_str(v) for v in _col_data(table["value"])]
    values = ["" if v == EMPTY else v for v in values]
    return dict(zip(keys, values, strict=True))


def _from_nwbfile(nwbfile: Any, opts: ReadOptions) -> SpikeData:
    meta = _read_meta(nwbfile)
    units = nwbfile.units
    if units is None:
        raise LdnsError(
            "the NWB file has no Units table (no spike times)",
            "ldns needs sorted units in /units; check the file with `ldns inspect`",
        )
    if len(units) == 0 or "spike_times" not in units.colnames:
        raise LdnsError(
            "the NWB Units table is empty (no units with spike times)",
            "the file needs at least one unit with a spike_times column",
        )
    spike_times = np.asarray(units.spike_times.data[:], dtype=np.float64)  # [S]
    spike_index = np.asarray(units.spike_times_index.data[:], dtype=np.int64)  # [N]
    unit_ids = _col_data(units.id)
    _check_spike_times(spike_times, spike_index, unit_ids)

    # recording span: observation intervals if any, else the spikes themselves
    span_s = None
    if "obs_intervals" in units.colnames:
        obs = np.asarray(units.obs_intervals.data[:], dtype=np.float64).reshape(-1, 2)
        if obs.size and np.all(np.isfinite(obs)):
            span_s = (float(obs[:, 0].min()), float(obs[:, 1].max()))
    if span_s is None and spike_times.size:
        span_s = (min(0.0, float(spike_times.min())), float(spike_times.max()))

    bin_size_s = opts.bin_size_s
    if bin_size_s is None:
        res = units.resolution
        ldns_bins = meta is not None and res is not None and np.isfinite(res) and res > 0
        # a foreign file's resolution is its spike-time precision (e.g. 1/30 kHz), not a bin
        bin_size_s = float(res) if ldns_bins else DEFAULT_BIN_MS / 1000.0

    notes: list[str] = []
    trials = nwbfile.trials
    keep: np.ndarray | None = None
    align_offset_s = 0.0
    if opts.chop_s is not None:
        starts_s, lengths, trial_ids = _chop(span_s, opts.chop_s, bin_size_s)
        if trials is not None:
            notes.append("trials table ignored (--chop)")
    elif trials is None or len(trials) == 0:
        raise LdnsError(
            "the NWB file has no trials table",
            "cut the recording into windows instead, e.g. --chop 1.0 (seconds)",
        )
    else:
        starts_s, lengths, keep, trial_ids, align_offset_s = _trial_windows(
            trials, opts, bin_size_s, span_s
        )
        if opts.align is None and opts.window_s is None and meta is not None:
            align_offset_s = float(meta.get("align_offset_s", 0.0))

    n_bins = int(lengths.max())
    counts = bin_spike_times(spike_times, spike_index, starts_s, lengths, bin_size_s, n_bins)

    covariates: dict[str, np.ndarray] = {}
    variable_info: dict[str, VariableInfo] = {}
    split = None
    if opts.chop_s is None and keep is not None:
        covariates, variable_info, split = _trial_covariates(trials, keep, starts_s, meta, notes)
    _check_required(opts, covariates, notes)

    behavior, beh_info = _behavior(nwbfile, starts_s, lengths, bin_size_s, n_bins, meta, notes)
    variable_info.update(beh_info)
    latents, rates = _ground_truth(nwbfile, meta, starts_s, lengths, bin_size_s, n_bins)

    provenance = _provenance(nwbfile, meta, notes, bin_size_s)
    if opts.align is not None:
        provenance["align_field"] = opts.align
    data = SpikeData(
        counts=counts,
        lengths=lengths,
        bin_size_s=bin_size_s,
        unit_ids=unit_ids,
        trial_ids=trial_ids,
        trial_start_s=starts_s,
        align_offset_s=align_offset_s,
        covariates=covariates,
        behavior=behavior,
        split=split,
        variable_info=variable_info,
        unit_info=_unit_info(units),
        latents=latents,
        rates=rates,
        provenance=provenance,
    )
    # the trials table was selected row by row above; chopped windows are selected here
    return select_trials(data, opts.trials) if opts.chop_s is not None else data


def _check_spike_times(times: np.ndarray, index: np.ndarray, unit_ids: np.ndarray) -> None:
    if index.ndim != 1 or len(index) != len(unit_ids):
        raise LdnsError("the Units spike_times_index does not match the units", "file is corrupt")
    if len(index) and (np.any(np.diff(index) < 0) or index[0] < 0 or index[-1] != len(times)):
        raise LdnsError("the Units spike_times_index is inconsistent", "the file is corrupt")
    if not np.all(np.isfinite(times)):
        raise LdnsError("spike times contain NaN/inf", "spike times must be finite seconds")
    if times.size and times.min() < 0:
        unit = unit_ids[np.searchsorted(index, int(np.argmin(times)), side="right")]
        raise LdnsError(
            f"negative spike times (unit {unit}: {times.min():.6g} s)",
            "spike times are seconds after session start; shift them to be >= 0",
        )
    if times.size > 1:
        drops = np.flatnonzero(np.diff(times) < 0) + 1  # positions where time goes backwards
        # a drop at a unit boundary is fine: each unit's train starts afresh
        bad = np.setdiff1d(drops, index[:-1])
        if bad.size:
            unit = unit_ids[np.searchsorted(index, int(bad[0]), side="right")]
            raise LdnsError(
                f"spike times of unit {unit} are not sorted",
                "sort each unit's spike times in ascending order before writing the file",
            )


def _chop(
    span_s: tuple[float, float] | None, chop_s: float, bin_size_s: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if span_s is None:
        raise LdnsError("the recording has no spikes to chop", "check the Units table")
    n_bins = round(chop_s / bin_size_s)
    if n_bins < 1:
        raise LdnsError(
            f"--chop {chop_s} s is shorter than one {bin_size_s * 1e3:g} ms bin",
            "use a longer --chop or a smaller --bin-ms",
        )
    window_s = n_bins * bin_size_s
    n_windows = int(np.floor((span_s[1] - span_s[0]) / window_s + 1e-9))
    if n_windows < 1:
        raise LdnsError(
            f"the recording ({span_s[1] - span_s[0]:.3g} s) is shorter than --chop {chop_s} s",
            "use a shorter --chop",
        )
    starts = span_s[0] + np.arange(n_windows) * window_s
    return starts, np.full(n_windows, n_bins, dtype=np.int64), np.arange(n_windows)


def _trial_windows(
    trials: Any, opts: ReadOptions, bin_size_s: float, span_s: tuple[float, float] | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """Per-trial bin-0 start, length, kept rows, trial ids and the alignment offset."""
    start = np.asarray(trials.start_time.data[:], dtype=np.float64)
    stop = np.asarray(trials.stop_time.data[:], dtype=np.float64)
    ids = _col_data(trials.id)
    bad = ~(np.isfinite(start) & np.isfinite(stop) & (stop > start))
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise LdnsError(
            f"{int(bad.sum())} trial(s) have stop_time <= start_time or missing times "
            f"(first: trial {ids[first]}, {start[first]:.6g}..{stop[first]:.6g} s)",
            "fix the trials table, or cut around an event with --align COL --window A B",
        )
    split = None
    if "split" in trials.colnames:
        split = normalise_split(np.array([as_str(v) for v in np.asarray(trials["split"].data[:])]))
    keep = selected_rows(len(start), split, opts.trials)  # --trials first: rows of the table
    start, stop, ids = start[keep], stop[keep], ids[keep]
    if opts.window_s is None:
        lengths = np.floor((stop - start) / bin_size_s + 1e-6).astype(np.int64)
        short = lengths < 1
        if short.any():
            raise LdnsError(
                f"{int(short.sum())} trial(s) are shorter than one {bin_size_s * 1e3:g} ms bin",
                "use a smaller --bin-ms, or --align/--window for fixed-length trials",
            )
        return start, lengths, keep, ids, 0.0
    rows = keep  # file rows of start/stop/ids (kept in step from here on)

    w0, w1 = (float(x) for x in opts.window_s)
    n_bins = round((w1 - w0) / bin_size_s)
    if n_bins < 1:
        raise LdnsError(
            f"window {w0}..{w1} s is shorter than one {bin_size_s * 1e3:g} ms bin",
            "widen --window or use a smaller --bin-ms",
        )
    missing = np.zeros(len(start), bool)
    if opts.align is None:
        event = start
    else:
        if opts.align not in trials.colnames:
            times = [c for c in trials.colnames if c.endswith("_time")]
            raise LdnsError(
                f"the trials table has no column '{opts.align}'",
                f"alignment columns in this file: {', '.join(times) or 'none'}",
            )
        event = _event_times(trials[opts.align])
        if event is not None and event.ndim == 1 and len(event) == len(trials):
            event = event[rows]
        if event is None or event.shape != start.shape:
            times = [c for c in trials.colnames if c.endswith("_time")]
            raise LdnsError(
                f"column '{opts.align}' is not one time (s) per trial",
                f"align to an event-time column: {', '.join(times) or 'none in this file'}",
            )
        missing = ~np.isfinite(event)
        if missing.all():
            raise LdnsError(f"column '{opts.align}' has no values", "pick another --align column")
    inside = np.flatnonzero(~missing)  # positions into rows/start/stop/ids
    if missing.any():
        warn(f"{int(missing.sum())} trial(s) without '{opts.align}' were dropped")
    starts = event[inside] + w0
    stops = starts + n_bins * bin_size_s
    outside = (starts >= stop[inside]) | (stops <= start[inside])
    if outside.any():
        first = inside[int(np.flatnonzero(outside)[0])]
        raise LdnsError(
            f"the window {w0:g}..{w1:g} s lies outside {int(outside.sum())} trial(s) "
            f"(first: trial {ids[first]}, {start[first]:.6g}..{stop[first]:.6g} s)",
            "the window is in seconds relative to the event: e.g. --window -0.25 0.45",
        )
    if span_s is not None:
        tol = 1e-9
        beyond = (starts < span_s[0] - tol) | (stops > span_s[1] + bin_size_s + tol)
        if beyond.any():
            first = inside[int(np.flatnonzero(beyond)[0])]
            what = (
                f"the window of {int(beyond.sum())} trial(s) runs outside the recording "
                f"({span_s[0]:.6g}..{span_s[1]:.6g} s; first: trial {ids[first]})"
            )
            if opts.strict_windows or beyond.all():
                raise LdnsError(
                    what, "shrink --window so that every trial's window lies inside the recording"
                )
            # the Neural Latents Benchmark's reader leaves such trials out, and so do we
            warn(f"{what}: left out")
            inside, starts, stops = inside[~beyond], starts[~beyond], stops[~beyond]
    n = len(inside)
    return starts, np.full(n, n_bins, dtype=np.int64), rows[inside], ids[inside], w0


def _event_times(col: Any) -> np.ndarray | None:
    """A trials column as float seconds, or None if it is not one number per trial."""
    from hdmf.common import DynamicTableRegion, VectorIndex

    if isinstance(col, (VectorIndex, DynamicTableRegion)) or not hasattr(col, "data"):
        return None
    values = np.asarray(col.data[:])
    if values.dtype.kind not in "iuf" or values.ndim != 1:
        return None
    return values.astype(np.float64)


def _looks_degrees(values: np.ndarray, description: str) -> bool:
    desc = description.lower()
    if re.search(r"\bdeg(rees?)?\b", desc):
        return True
    if re.search(r"\brad(ians?)?\b", desc):
        return False
    return bool(np.nanmax(np.abs(values)) > 2 * np.pi + 1e-6)


def _trial_covariates(
    trials: Any,
    keep: np.ndarray,
    starts_s: np.ndarray,
    meta: dict[str, str] | None,
    notes: list[str],
) -> tuple[dict[str, np.ndarray], dict[str, VariableInfo], np.ndarray | None]:
    from hdmf.common import DynamicTableRegion, VectorIndex

    covariates: dict[str, np.ndarray] = {}
    infos: dict[str, VariableInfo] = {}
    split = None
    for name in trials.colnames:
        if name in ("start_time", "stop_time"):
            continue
        col = trials[name]
        description = str(getattr(col, "description", "") or "")
        if isinstance(col, VectorIndex):
            ends = np.asarray(col.data[:], dtype=np.int64)
            sizes = np.diff(np.concatenate([[0], ends]))
            if len(sizes) == 0 or sizes.min() != sizes.max() or sizes[0] == 0:
                notes.append(f"{name}: ragged column (rows of different lengths) skipped")
                continue
            flat = np.asarray(col.target.data[:])
            values = flat.reshape(len(sizes), int(sizes[0]), *flat.shape[1:])
            description = str(getattr(col.target, "description", "") or description)
        elif isinstance(col, DynamicTableRegion):
            notes.append(f"{name}: table reference column skipped")
            continue
        else:
            values = _col_data(col)
        values = values[keep]
        if values.ndim > 2:
            notes.append(f"{name}: column with {values.ndim - 1}-D cells skipped")
            continue
        if values.dtype.kind in "SOUT":
            values = np.array([as_str(v) for v in values.ravel()]).reshape(values.shape)
            if name == "split":
                split = normalise_split(values)
                continue
            kind = "categorical"
        elif values.dtype.kind in "biu":
            # integer and boolean trial columns are condition labels (maze_id, trial_type, ...)
            kind = "categorical"
            values = values.astype(np.int64)
        elif values.dtype.kind == "f":
            values = values.astype(np.float64)
            if not np.all(np.isfinite(values)):
                n_bad = int((~np.isfinite(values.reshape(len(values), -1))).any(axis=1).sum())
                notes.append(f"{name}: NaN/inf in {n_bad} trial(s); column skipped")
                continue
            kind = "continuous"
        else:
            notes.append(f"{name}: unsupported column type {values.dtype}; skipped")
            continue
        info = VariableInfo(description=description, kind=kind)
        if name.endswith("_time") and kind == "continuous":
            # event times on the session clock mean nothing to a generator: keep them
            # relative to the trial's first bin (writers add the start back)
            values = values - (starts_s[:, None] if values.ndim == 2 else starts_s)
            info.unit = "s"
            info.description = (description + " (s, relative to the trial's first bin)").strip()
        elif kind == "continuous" and is_angle_name(name):
            info.kind = "circular"
            if meta is None and _looks_degrees(values, description):
                values = np.deg2rad(values)
                info.description = (description + " (converted from degrees)").strip()
            info.unit = "rad"
        if meta is not None:
            info = _meta_info(meta, name, info)
        covariates[name] = values
        infos[name] = info
    return covariates, infos, split


def _meta_info(meta: dict[str, str], name: str, default: VariableInfo) -> VariableInfo:
    prefix = f"variable.{name}."
    if not any(k.startswith(prefix) for k in meta):
        return default
    cols = meta.get(prefix + "columns", "")
    return VariableInfo(
        unit=meta.get(prefix + "unit", default.unit),
        description=meta.get(prefix + "description", default.description),
        kind=meta.get(prefix + "kind", default.kind),
        columns=[c for c in cols.split(",") if c],
    )


def _check_required(opts: ReadOptions, covariates: dict[str, np.ndarray], notes: list[str]) -> None:
    for name in opts.require:
        if name in covariates:
            continue
        why = next((n.split(": ", 1)[1] for n in notes if n.startswith(name + ":")), None)
        raise LdnsError(
            f"covariate '{name}' cannot be used: {why or 'no such trials-table column'}",
            "fix or fill the column in the file, or choose another covariate",
        )


def _series(module: Any) -> list[Any]:
    """TimeSeries in a processing module, including those inside containers (Position, ...)."""
    from pynwb import TimeSeries

    out = []
    for obj in module.data_interfaces.values():
        if isinstance(obj, TimeSeries):
            out.append(obj)
        else:
            out.extend(c for c in obj.children if isinstance(c, TimeSeries))
    return out


def _series_times(ts: Any) -> np.ndarray:
    if ts.timestamps is not None:
        return np.asarray(ts.timestamps[:], dtype=np.float64)
    n = len(ts.data)
    return float(ts.starting_time or 0.0) + np.arange(n) / float(ts.rate)


def _resampled(
    ts: Any,
    starts_s: np.ndarray,
    lengths: np.ndarray,
    bin_size_s: float,
    n_bins: int,
    notes: list[str] | None = None,
) -> np.ndarray | None:
    """A series bin-averaged onto the trial bins (NaN gaps interpolated), or None if unusable."""
    data = np.asarray(ts.data[:])
    if data.dtype.kind not in "fiub" or data.ndim not in (1, 2) or len(data) == 0:
        return None
    times = _series_times(ts)
    if len(times) != len(data) or not np.all(np.diff(times) >= 0):
        return None
    values = data.astype(np.float64).reshape(len(data), -1)  # [T, k]
    conversion, offset = float(ts.conversion), float(getattr(ts, "offset", 0.0))
    if conversion != 1.0:  # in place: ground-truth rates are large series
        values *= conversion
    if offset != 0.0:
        values += offset
    gaps = ~np.isfinite(values)
    if gaps.any():
        # short tracking dropouts are common (NLB fills them the same way, by interpolation)
        for j in range(values.shape[1]):
            ok = ~gaps[:, j]
            if ok.sum() < 2:
                return None
            values[~ok, j] = np.interp(times[~ok], times[ok], values[ok, j])
        if notes is not None:
            notes.append(f"{ts.name}: {int(gaps.any(axis=1).sum())} NaN sample(s) interpolated")
    return resample_series(times, values, starts_s, lengths, bin_size_s, n_bins)


def _behavior(
    nwbfile: Any,
    starts_s: np.ndarray,
    lengths: np.ndarray,
    bin_size_s: float,
    n_bins: int,
    meta: dict[str, str] | None,
    notes: list[str],
) -> tuple[dict[str, np.ndarray], dict[str, VariableInfo]]:
    module = nwbfile.processing.get("behavior")
    if module is None:
        return {}, {}
    mask = np.arange(n_bins)[None, :] < lengths[:, None]
    behavior: dict[str, np.ndarray] = {}
    infos: dict[str, VariableInfo] = {}
    for ts in _series(module):
        out = _resampled(ts, starts_s, lengths, bin_size_s, n_bins, notes)
        if out is None:
            notes.append(f"{ts.name}: behaviour series with unusable data or times; skipped")
            continue
        if not np.all(np.isfinite(out[mask])):
            notes.append(f"{ts.name}: behaviour has NaN or does not cover every trial; skipped")
            continue
        match = re.search(r"columns=\[([^\]]*)\]", str(ts.comments or ""))
        cols = [c.strip() for c in match.group(1).split(",")] if match else []
        info = VariableInfo(unit=str(ts.unit or ""), description=str(ts.description or ""))
        info.columns = cols if len(cols) == out.shape[2] else []
        if meta is not None:
            info = _meta_info(meta, ts.name, info)
        behavior[ts.name] = out
        infos[ts.name] = info
    return behavior, infos


def _ground_truth(
    nwbfile: Any,
    meta: dict[str, str] | None,
    starts_s: np.ndarray,
    lengths: np.ndarray,
    bin_size_s: float,
    n_bins: int,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    module = nwbfile.processing.get(TRUTH_MODULE)
    if meta is None or module is None:
        return None, None
    found: dict[str, np.ndarray] = {}
    for name in ("latents", "rates"):
        ts = module.data_interfaces.get(name)
        if ts is None:
            continue
        out = _resampled(ts, starts_s, lengths, bin_size_s, n_bins)
        mask = np.arange(n_bins)[None, :] < lengths[:, None]
        if out is not None and np.all(np.isfinite(out[mask])):
            found[name] = out
    rates = found.get("rates")
    if rates is not None:
        rates = rates * np.float32(bin_size_s)  # stored in Hz, SpikeData keeps spikes/bin
    return found.get("latents"), rates


def _unit_info(units: Any) -> dict[str, np.ndarray]:
    from hdmf.common import DynamicTableRegion, VectorIndex

    info: dict[str, np.ndarray] = {}
    n = len(units)
    for name in units.colnames:
        if name in _UNIT_SKIP or name.startswith("waveform"):
            continue
        col = units[name]
        if isinstance(col, (VectorIndex, DynamicTableRegion)):
            continue
        values = _col_data(col)
        if values.shape[:1] != (n,) or values.ndim > 2:
            continue
        if values.dtype.kind in "SO":
            values = np.array([as_str(v) for v in values.ravel()]).reshape(values.shape)
        info[name] = values
    return info


def _provenance(
    nwbfile: Any, meta: dict[str, str] | None, notes: list[str], bin_size_s: float
) -> dict[str, str]:
    prov: dict[str, str] = {"source_format": "nwb"}
    for field in (
        "identifier",
        "session_description",
        "session_id",
        "data_collection",
        "institution",
        "lab",
    ):
        value = getattr(nwbfile, field, None)
        if value:
            prov[field] = str(value)
    if nwbfile.experimenter is not None and len(nwbfile.experimenter):
        prov["experimenter"] = "; ".join(as_str(e) for e in nwbfile.experimenter)
    if nwbfile.session_start_time is not None:
        prov["session_start_time"] = nwbfile.session_start_time.isoformat()
    if nwbfile.subject is not None:
        for field in ("subject_id", "species", "sex", "age"):
            value = getattr(nwbfile.subject, field, None)
            if value:
                prov[f"subject.{field}"] = str(value)
    if meta is not None:
        for key, value in meta.items():
            if key.startswith("provenance."):
                prov.setdefault(key[len("provenance.") :], value)
            elif key.startswith("settings."):
                prov[key] = value
    prov["bin_size_s"] = repr(bin_size_s)
    if notes:
        prov["skipped"] = "; ".join(notes)
        for note in notes:
            warn(note)
    return prov
