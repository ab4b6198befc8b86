"""What the readers and writers share: `ReadOptions`, spike-time binning and behaviour
resampling (reading), and the rounding and compression settings of stored floats (writing).

Every format module (`io.hdf5`, `io.nwb_read`, `io.nwb_write`) imports this one; `io.formats` is
the entry point that picks among them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ldns_cli.core.errors import LdnsError

DEFAULT_BIN_MS = 5.0  # the Neural Latents Benchmark's primary bin size
# events this close (in bins) before a bin edge count as on it: spike and sample times on a
# 1 kHz or 30 kHz grid land exactly on 5 ms edges, where float noise would flip them
EDGE_TOL_BINS = 1e-6


@dataclass(frozen=True)
class ReadOptions:
    """How to turn spike times into binned trials (only NWB input has spike times).

    bin_ms: bin width in ms. None: the file's own bin size (HDF5 `/bin_size`; NWB written by
        ldns: `units.resolution`), else 5 ms.
    align: trials-table column to align to (e.g. "move_onset_time"); needs `window_s`.
    window_s: (start, stop) in seconds relative to `align` (or to each trial's `start_time`).
    chop_s: cut the whole recording into back-to-back windows of this length (no trials table).
    require: covariate columns that must load; a column that would be skipped (NaN values,
        ragged rows) is an error naming it instead of a warning.
    trials: which trials (`--trials`: a split, a range of the file's trials, or all); chosen
        before any trial is left out for its window, so a selection that avoids a bad trial
        reads cleanly.
    strict_windows: a trial whose window runs outside the recording is an error; by default
        such trials are left out with one warning that counts them (as nlb_tools does).
    """

    bin_ms: float | None = None
    align: str | None = None
    window_s: tuple[float, float] | None = None
    chop_s: float | None = None
    require: tuple[str, ...] = ()
    trials: str | None = None
    strict_windows: bool = False

    def __post_init__(self) -> None:
        if self.bin_ms is not None and not (np.isfinite(self.bin_ms) and self.bin_ms > 0):
            raise LdnsError(f"bin size must be positive, got {self.bin_ms} ms", "e.g. --bin-ms 5")
        if self.window_s is not None:
            a, b = (float(x) for x in self.window_s)
            if not (np.isfinite(a) and np.isfinite(b)) or b <= a:
                raise LdnsError(
                    f"window ({a}, {b}) s is empty: its stop must come after its start",
                    "pass START STOP in seconds, e.g. --window -0.25 0.45",
                )
        if self.align is not None and self.window_s is None:
            raise LdnsError(
                f"--align {self.align} needs a window around the event",
                "add e.g. --window -0.25 0.45 (seconds relative to the event)",
            )
        if self.chop_s is not None:
            if not (np.isfinite(self.chop_s) and self.chop_s > 0):
                raise LdnsError(f"--chop must be positive, got {self.chop_s} s", "e.g. --chop 1.0")
            if self.align is not None or self.window_s is not None:
                raise LdnsError(
                    "--chop cannot be combined with --align/--window",
                    "chop cuts the whole recording; align/window cut around trials",
                )

    @classmethod
    def from_flags(
        cls,
        bin_ms: float | None = None,
        align: str | None = None,
        window: tuple[float, float] | list[float] | None = None,
        chop: float | None = None,
        trials: str | None = None,
        strict_windows: bool = False,
    ) -> ReadOptions:
        """From the read flags as the command line and `ldns.read` name them."""
        return cls(
            bin_ms=bin_ms,
            align=align,
            window_s=None if window is None else (float(window[0]), float(window[1])),
            chop_s=chop,
            trials=trials,
            strict_windows=strict_windows,
        )

    @property
    def bin_size_s(self) -> float | None:
        return None if self.bin_ms is None else self.bin_ms / 1000.0

    def recorded(self, bin_size_s: float) -> dict[str, Any]:
        """How a recording was read, as JSON (with the bin size the file resolved to), for the
        model folder to remember (`READ_OPTIONS_KEY` in `SpikeData.provenance`)."""
        return {
            "bin_ms": round(bin_size_s * 1e3, 9),
            "align": self.align,
            "window_s": None if self.window_s is None else [float(x) for x in self.window_s],
            "chop_s": self.chop_s,
            "trials": self.trials,
        }


READ_OPTIONS_KEY = "read_options"  # provenance key holding `ReadOptions.recorded` as JSON


def as_str(value: object) -> str:
    """An HDF5 attribute or cell as text (h5py returns bytes for some string storage)."""
    return value.decode() if isinstance(value, bytes) else str(value)


# ---------------------------------------------------------------------- binning helpers
def bin_spike_times(
    spike_times: np.ndarray,
    spike_index: np.ndarray,
    starts_s: np.ndarray,
    lengths: np.ndarray,
    bin_size_s: float,
    n_bins: int | None = None,
) -> np.ndarray:
    """Bin ragged spike trains into counts `[B, L, N]` (int32), vectorised over spikes.

    spike_times: flat, per-unit sorted spike times (s) `[S]`; spike_index: end offset of each
    unit's spikes in it `[N]` (the NWB `spike_times_index`). Trial b covers bins
    `starts_s[b] + k * bin_size_s`, k < lengths[b]; windows may overlap. Python loops run only
    over units (one searchsorted each) and over blocks of trials (one bincount each), so the
    counts are filled in their final layout without a transpose.
    """
    starts_s = np.asarray(starts_s, dtype=np.float64)
    lengths = np.asarray(lengths, dtype=np.int64)
    n_trials = len(starts_s)
    n_bins = int(lengths.max()) if n_bins is None else n_bins
    n_units = len(spike_index)
    tol_s = EDGE_TOL_BINS * bin_size_s
    lo_s = starts_s - tol_s
    hi_s = starts_s + lengths * bin_size_s - tol_s
    offsets = np.concatenate([[0], np.asarray(spike_index, dtype=np.int64)])
    # first and one-past-last spike of every (unit, trial) window, as flat positions
    lo = np.empty((n_units, n_trials), dtype=np.int64)  # [N, B]
    hi = np.empty((n_units, n_trials), dtype=np.int64)
    for u in range(n_units):
        train = spike_times[offsets[u] : offsets[u + 1]]
        lo[u] = np.searchsorted(train, lo_s, side="left") + offsets[u]
        hi[u] = np.searchsorted(train, hi_s, side="left") + offsets[u]
    counts = np.zeros((n_trials, n_bins, n_units), dtype=np.int32)  # [B, L, N]
    block = max(1, (1 << 21) // max(1, n_bins * n_units))  # ~2 M bins per bincount
    inv_bin = 1.0 / bin_size_s
    for b0 in range(0, n_trials, block):
        b1 = min(n_trials, b0 + block)
        n_block = b1 - b0
        per = (hi[:, b0:b1] - lo[:, b0:b1]).ravel()  # [N * Tb] spikes per (unit, trial) pair
        total = int(per.sum())
        if total == 0:
            continue
        first = np.cumsum(per) - per
        spike = np.arange(total) + np.repeat(lo[:, b0:b1].ravel() - first, per)  # [S_block]
        # per pair: window start, last valid bin, and flat offset of (trial, bin 0, unit)
        pair_start = np.tile(starts_s[b0:b1], n_units)
        pair_last = np.tile(lengths[b0:b1] - 1, n_units)
        pair_base = (
            np.arange(n_block)[None, :] * (n_bins * n_units) + np.arange(n_units)[:, None]
        ).ravel()
        rel = (spike_times[spike] - np.repeat(pair_start, per)) * inv_bin + EDGE_TOL_BINS
        # rel >= -tol, so truncation is floor after the clip below
        k = rel.astype(np.int64)
        # float rounding can put a spike a hair before a window's end into bin `length`
        np.clip(k, 0, np.repeat(pair_last, per), out=k)
        flat = np.repeat(pair_base, per) + k * n_units
        counts[b0:b1] = np.bincount(flat, minlength=n_block * n_bins * n_units).reshape(
            n_block, n_bins, n_units
        )
    return counts


def resample_series(
    times_s: np.ndarray,
    values: np.ndarray,
    starts_s: np.ndarray,
    lengths: np.ndarray,
    bin_size_s: float,
    n_bins: int,
) -> np.ndarray:
    """Resample a sampled signal onto trial bins: the mean of samples inside each bin.

    Bins with no sample (a signal slower than the bins) take the linear interpolation at the
    bin centre. Bins outside the signal's time span are NaN; padding bins are 0.
    times_s `[T]` sorted, values `[T, k]`; returns float32 `[B, L, k]`.
    """
    values = np.asarray(values, dtype=np.float64).reshape(len(times_s), -1)  # [T, k]
    n_trials = len(starts_s)
    k_dim = values.shape[1]
    edges = starts_s[:, None] + np.arange(n_bins + 1)[None, :] * bin_size_s  # [B, L+1]
    tol_s = EDGE_TOL_BINS * bin_size_s
    idx = np.searchsorted(times_s, edges.ravel() - tol_s, side="left").reshape(n_trials, n_bins + 1)
    n_in = np.diff(idx, axis=1)  # [B, L]
    out = np.full((n_trials, n_bins, k_dim), np.nan)  # [B, L, k]
    # a bin with one sample takes it as it is (a series sampled at the bins' own rate, such as
    # simulated ground truth, is all such bins): exact, and no cumulative sum over the series
    one = n_in == 1
    out[one] = values[idx[:, :-1][one]]
    many = n_in > 1
    if many.any():
        csum = np.concatenate([np.zeros((1, k_dim)), np.cumsum(values, axis=0)])  # [T+1, k]
        lo, hi = idx[:, :-1][many], idx[:, 1:][many]
        out[many] = (csum[hi] - csum[lo]) / n_in[many][:, None]
    empty = n_in == 0
    if empty.any():
        centres = (edges[:, :-1] + 0.5 * bin_size_s)[empty]
        for j in range(k_dim):
            out[:, :, j][empty] = np.interp(centres, times_s, values[:, j])
    centres_all = edges[:, :-1] + 0.5 * bin_size_s  # [B, L]
    period_s = float(np.median(np.diff(times_s))) if len(times_s) > 1 else bin_size_s
    # a bin whose centre is more than half a sampling period beyond the signal has no data
    span = (centres_all < times_s[0] - 0.5 * period_s) | (
        centres_all > times_s[-1] + 0.5 * period_s
    )
    span &= empty
    out[span] = np.nan
    out[~(np.arange(n_bins)[None, :] < np.asarray(lengths)[:, None])] = 0.0
    return out.astype(np.float32)


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
