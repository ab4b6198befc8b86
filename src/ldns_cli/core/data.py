"""`SpikeData`: the one in-memory type for binned spike recordings.

Readers turn files into it and writers turn it into files; nothing downstream touches pynwb or
h5py. All validation lives in `SpikeData.validate`, called on construction, so a `SpikeData` that
exists is internally consistent.

Axis legend used across the package: trial (B), time bin (L), neuron (N), latent (Z), k (feature).
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ldns_cli.core.errors import LdnsError


@dataclass
class VariableInfo:
    """Description of a trial covariate or behaviour series.

    kind: "continuous" (real-valued scalar/vector), "circular" (an angle in radians, embedded as
    cos/sin downstream), or "categorical" (labels: integers or strings).
    """

    unit: str = ""
    description: str = ""
    kind: str = "continuous"
    columns: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VariableInfo:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


VARIABLE_KINDS = ("continuous", "circular", "categorical")
# trials one run may make or read conditions for: per-trial lengths, conditions and ids are held in
# memory even when the spikes are streamed (10^7 trials: a few hundred MB of such metadata)
MAX_TRIALS = 10_000_000

# words that mark a covariate's name as an angle (a "circular" candidate)
ANGLE_WORDS = ("angle", "direction", "dir", "theta", "phase", "heading", "orientation")


def is_angle_name(name: str) -> bool:
    """Whether a covariate's name says it is an angle: one of `ANGLE_WORDS` as a word of the name
    (split at anything but letters: "reach_dir", "Heading"), or one of the longer ones (5 letters
    and more) anywhere in it ("targetangle", "theta2"). "angular_speed" is not an angle.

    The NWB reader and the condition-kind detection both use this one rule.
    """
    lname = name.lower()
    if any(token in ANGLE_WORDS for token in re.split(r"[^a-z]+", lname)):
        return True
    return any(word in lname for word in ANGLE_WORDS if len(word) >= 5)


# spellings of angle units in recordings -> the canonical "rad"/"deg"
ANGLE_UNIT_NAMES = {"rad": "rad", "radian": "rad", "radians": "rad", "deg": "deg", "°": "deg"}
ANGLE_UNIT_NAMES |= {"degree": "deg", "degrees": "deg"}
CATEGORY_SUFFIXES = ("id", "label", "type", "condition", "class")


def detect_kind(name: str, values: np.ndarray, declared: str = "", unit: str = "") -> str:
    """The condition kind of a trial covariate: from dtype, declared kind, unit, then name.

    Categorical: strings/booleans/objects (whatever the declaration), a declared categorical, or
    integers whose name ends in id/label/type/condition/class. Circular: a declared circular, an
    angle unit (rad, deg), or an angle-like name (`core.data.is_angle_name`: angle, direction,
    dir, theta, phase, heading, orientation) with every finite value inside ±2π. Otherwise
    continuous. (`VariableInfo.kind` defaults to "continuous", so a declared "continuous" does not
    stop detection.)
    """
    values = np.asarray(values)
    if values.dtype.kind in "USOb":
        return "categorical"
    if declared in ("circular", "categorical"):
        return declared
    lname = name.lower()
    if unit.lower() in ANGLE_UNIT_NAMES:
        return "circular"
    finite = values[np.isfinite(values)] if values.dtype.kind in "fc" else values
    if is_angle_name(name) and finite.size:
        if np.abs(finite).max() <= 2 * math.pi + 1e-6:
            return "circular"
    if values.dtype.kind in "iu" and lname.replace("-", "_").split("_")[-1] in CATEGORY_SUFFIXES:
        return "categorical"
    return "continuous"


def default_trial_starts(n_trials: int, n_bins: int, bin_size_s: float) -> np.ndarray:
    """Session times of bin 0 for data without a session clock (e.g. generated trials) `[B]`.

    Back-to-back trials with a 1-bin gap, so spike times never collide across trials.
    """
    stride = (n_bins + 1) * float(bin_size_s)
    return np.arange(n_trials, dtype=np.float64) * stride


class TrialViews:
    """Shape views shared by `SpikeData` and `io.scratch.StoredSpikes` (counts `[B, L, N]`)."""

    counts: Any
    lengths: np.ndarray
    bin_size_s: float
    unit_ids: np.ndarray | None
    trial_ids: np.ndarray | None
    trial_start_s: np.ndarray | None
    variable_info: dict[str, VariableInfo]

    @property
    def n_trials(self) -> int:
        return int(self.counts.shape[0])

    @property
    def n_bins(self) -> int:
        return int(self.counts.shape[1])

    @property
    def n_neurons(self) -> int:
        return int(self.counts.shape[2])

    def mask(self) -> np.ndarray:
        """Valid-bin mask, bool `[B, L]`."""
        return np.arange(self.n_bins)[None, :] < self.lengths[:, None]

    def info(self, name: str) -> VariableInfo:
        """Description of a covariate or behaviour series (defaults if none was recorded)."""
        return self.variable_info.get(name, VariableInfo())

    def _default_ids(self, n_trials: int, n_bins: int, n_neurons: int) -> None:
        """Fill missing unit/trial ids and trial starts; make all three arrays."""
        if self.unit_ids is None:
            self.unit_ids = np.arange(n_neurons, dtype=np.int64)
        if self.trial_ids is None:
            self.trial_ids = np.arange(n_trials, dtype=np.int64)
        if self.trial_start_s is None:
            self.trial_start_s = default_trial_starts(n_trials, n_bins, self.bin_size_s)
        self.unit_ids = np.asarray(self.unit_ids)
        self.trial_ids = np.asarray(self.trial_ids)
        self.trial_start_s = np.asarray(self.trial_start_s, dtype=np.float64)


@dataclass
class SpikeData(TrialViews):
    """Binned spike counts of a population, trial by trial, with what describes them.

    Attributes:
        counts: integer spike counts `[B, L, N]`; bins at or beyond a trial's length are 0.
        lengths: valid bins per trial `[B]` (variable-length trials are padded at the end).
        bin_size_s: bin width in seconds (> 0).
        unit_ids: source unit ids `[N]` (NWB `units.id`).
        trial_ids: source trial ids `[B]` (row in the source trials table, or window index).
        trial_start_s: session time (s) of the start of bin 0 of each trial `[B]`; used to
            place spike times when writing NWB. Synthetic data uses back-to-back trials.
        align_offset_s: start of bin 0 relative to the alignment event (e.g. -0.25 for NLB).
        covariates: per-trial values `{name: [B] or [B, k]}` (float, int or str arrays).
        behavior: time series resampled to the bins `{name: float [B, L, k]}`.
        split: per-trial split labels `[B]` ("train"/"val"/"test") or None.
        variable_info: units/kind/description of covariates and behaviour series by name.
        unit_info: extra per-unit columns `{name: [N]}` (e.g. NLB `heldout`).
        latents: optional latent trajectories `[B, L, Z]` (ground truth or inferred).
        rates: optional firing rates in spikes per bin `[B, L, N]`.
        provenance: flat `{key: str}` describing where the data came from.
    """

    counts: np.ndarray
    lengths: np.ndarray
    bin_size_s: float
    unit_ids: np.ndarray | None = None
    trial_ids: np.ndarray | None = None
    trial_start_s: np.ndarray | None = None
    align_offset_s: float = 0.0
    covariates: dict[str, np.ndarray] = field(default_factory=dict)
    behavior: dict[str, np.ndarray] = field(default_factory=dict)
    split: np.ndarray | None = None
    variable_info: dict[str, VariableInfo] = field(default_factory=dict)
    unit_info: dict[str, np.ndarray] = field(default_factory=dict)
    latents: np.ndarray | None = None
    rates: np.ndarray | None = None
    provenance: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.counts = np.asarray(self.counts)
        self.lengths = np.asarray(self.lengths, dtype=np.int64)
        self.bin_size_s = float(self.bin_size_s)
        self._default_ids(*(self.counts.shape if self.counts.ndim == 3 else (0, 0, 0)))
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Check every invariant; raise `LdnsError` naming the first one that fails."""
        c = self.counts
        if c.ndim != 3:
            raise LdnsError(
                f"spike counts must be [trial, time, neuron], got shape {c.shape}",
                "check the input file's layout (see README: file formats)",
            )
        n_trials, n_bins, n_neurons = c.shape
        if n_trials == 0:
            raise LdnsError("the data has no trials", "check the trials table or --chop window")
        if n_bins == 0:
            raise LdnsError("trials have no time bins", "use a longer window or smaller --bin-ms")
        if n_neurons == 0:
            raise LdnsError("the data has no units", "the file needs a non-empty Units table")
        if not np.issubdtype(c.dtype, np.integer):
            if not np.issubdtype(c.dtype, np.floating) or not np.all(np.isfinite(c)):
                raise LdnsError(
                    "spike counts contain NaN/inf or are not numbers",
                    "spike counts must be non-negative integers",
                )
            if np.any(c != np.round(c)):
                raise LdnsError(
                    "spike counts are not whole numbers", "store counts, not rates or z-scores"
                )
            self.counts = c = c.astype(np.int32)
        if c.size and c.min() < 0:
            raise LdnsError("spike counts are negative", "spike counts must be non-negative")
        if not np.isfinite(self.bin_size_s) or self.bin_size_s <= 0:
            raise LdnsError(
                f"bin size must be positive, got {self.bin_size_s} s", "pass e.g. --bin-ms 5"
            )
        if self.lengths.shape != (n_trials,):
            raise LdnsError(
                f"lengths has shape {self.lengths.shape}, expected ({n_trials},)",
                "one length per trial",
            )
        if n_trials and (self.lengths.min() < 1 or self.lengths.max() > n_bins):
            raise LdnsError(
                f"trial lengths must be in 1..{n_bins}, got {self.lengths.min()}..{self.lengths.max()}",
                "empty trials cannot be used; drop them or widen the window",
            )
        pad = ~self.mask()
        if pad.any() and np.any(c[pad] != 0):
            raise LdnsError(
                "spike counts are non-zero beyond a trial's length",
                "padding bins must hold zeros",
            )
        for name, arr, n in (
            ("unit_ids", self.unit_ids, n_neurons),
            ("trial_ids", self.trial_ids, n_trials),
            ("trial_start_s", self.trial_start_s, n_trials),
        ):
            if arr.shape != (n,):
                raise LdnsError(
                    f"{name} has shape {arr.shape}, expected ({n},)", "file is inconsistent"
                )
        if not np.all(np.isfinite(self.trial_start_s)):
            raise LdnsError("trial start times contain NaN", "check the trials table")
        if len(np.unique(self.unit_ids)) != n_neurons:
            raise LdnsError("unit ids are not unique", "each unit needs its own id")
        for name, v in self.covariates.items():
            v = np.asarray(v)
            self.covariates[name] = v
            if v.ndim not in (1, 2) or v.shape[0] != n_trials:
                raise LdnsError(
                    f"covariate '{name}' has shape {v.shape}, expected ({n_trials},) or ({n_trials}, k)",
                    "one value (or vector) per trial",
                )
            if np.issubdtype(v.dtype, np.floating) and not np.all(np.isfinite(v)):
                bad = int(np.sum(~np.isfinite(v).reshape(n_trials, -1).all(axis=1)))
                raise LdnsError(
                    f"covariate '{name}' has NaN/inf values in {bad} trial(s)",
                    "fill or drop those trials, or do not use this column",
                )
        for name, v in self.behavior.items():
            v = np.asarray(v, dtype=np.float32)
            if v.ndim == 2:
                v = v[:, :, None]
            self.behavior[name] = v
            if v.ndim != 3 or v.shape[:2] != (n_trials, n_bins):
                raise LdnsError(
                    f"behaviour '{name}' has shape {v.shape}, expected ({n_trials}, {n_bins}, k)",
                    "behaviour must be resampled to the bins",
                )
            if not np.all(np.isfinite(v[self.mask()])):
                raise LdnsError(
                    f"behaviour '{name}' has NaN/inf inside trials",
                    "the behaviour series must cover every trial window",
                )
        if self.split is not None:
            self.split = np.asarray(self.split).astype(str)
            if self.split.shape != (n_trials,):
                raise LdnsError(f"split has shape {self.split.shape}", "one split label per trial")
        for name, v in self.unit_info.items():
            v = np.asarray(v)
            self.unit_info[name] = v
            if v.shape[:1] != (n_neurons,):
                raise LdnsError(f"unit column '{name}' has shape {v.shape}", "one value per unit")
        for name, info in self.variable_info.items():
            if info.kind not in VARIABLE_KINDS:
                raise LdnsError(
                    f"variable '{name}' has unknown kind '{info.kind}'",
                    f"use one of {', '.join(VARIABLE_KINDS)}",
                )
        if self.latents is not None:
            self.latents = np.asarray(self.latents, dtype=np.float32)
            if self.latents.ndim != 3 or self.latents.shape[:2] != (n_trials, n_bins):
                raise LdnsError(f"latents have shape {self.latents.shape}", "expected [B, L, Z]")
        if self.rates is not None:
            self.rates = np.asarray(self.rates, dtype=np.float32)
            if self.rates.shape != c.shape:
                raise LdnsError(f"rates have shape {self.rates.shape}", f"expected {c.shape}")
        self.provenance = {str(k): str(v) for k, v in self.provenance.items()}

    # ------------------------------------------------------------------ views
    def select(self, index: np.ndarray | slice | list[int]) -> SpikeData:
        """A new SpikeData with only the chosen trials (bool mask, indices or slice)."""
        idx = np.arange(self.n_trials)[index]
        if idx.size == 0:
            raise LdnsError("the trial selection is empty", "check the split or trial range")

        def pick(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[idx]

        return dataclasses.replace(
            self,
            counts=self.counts[idx],
            lengths=self.lengths[idx],
            trial_ids=self.trial_ids[idx],
            trial_start_s=self.trial_start_s[idx],
            covariates={k: v[idx] for k, v in self.covariates.items()},
            behavior={k: v[idx] for k, v in self.behavior.items()},
            split=pick(self.split),
            latents=pick(self.latents),
            rates=pick(self.rates),
            variable_info=dict(self.variable_info),
            unit_info=dict(self.unit_info),
            provenance=dict(self.provenance),
        )

    def fingerprint(self) -> dict[str, Any]:
        """What a model trained on this data must agree with: neurons, bin size, covariates.

        Stored in checkpoints so that loading a model for different data is a clear error.
        """
        covs: dict[str, Any] = {}
        for name, v in self.covariates.items():
            entry: dict[str, Any] = {"shape": list(v.shape[1:]), **self.info(name).to_dict()}
            if np.issubdtype(v.dtype, np.number) and self.info(name).kind != "categorical":
                entry["min"] = np.asarray(v.min(axis=0), dtype=float).tolist()
                entry["max"] = np.asarray(v.max(axis=0), dtype=float).tolist()
            else:
                entry["values"] = sorted({str(x) for x in np.asarray(v).reshape(len(v), -1)[:, 0]})
            covs[name] = entry
        beh = {
            name: {"dim": int(v.shape[2]), **self.info(name).to_dict()}
            for name, v in self.behavior.items()
        }
        return {
            "n_neurons": self.n_neurons,
            "bin_size_s": self.bin_size_s,
            "covariates": covs,
            "behavior": beh,
        }

    def mean_rate_hz(self) -> np.ndarray:
        """Per-neuron mean firing rate over valid bins, in Hz `[N]`."""
        total_bins = float(self.lengths.sum())
        return self.counts.sum(axis=(0, 1), dtype=np.float64) / (total_bins * self.bin_size_s)
