"""Condition specs: what a model is conditioned on, and the numeric form conditions take in it.

A model's condition spec (stored in its checkpoint; built by `condition_spec_from_data` from the
training trials only) is a list of dicts, one per condition:

    {"name": "angle", "kind": "circular", "dim": 1, "unit": "rad", "min": [-3.1], "max": [3.1]}
    {"name": "speed", "kind": "continuous", "dim": 1, "unit": "m/s", "min": [0.0], "max": [1.2]}
    {"name": "maze_id", "kind": "categorical", "dim": 1, "values": [0, 1, 2]}
    {"name": "hand_vel", "kind": "timeseries", "dim": 2, "unit": "m/s"}

Optional keys: "mean"/"std" (per dim, used for z-scoring when present), "required" (default: true
for time series, false otherwise; a trial-level condition that is left out is sampled
unconditionally by a model trained with condition dropout).

Here: `ConditionSpec` (one dict, typed), `detect_kind` and `condition_spec_from_data` (the spec
of a recording's covariates), `embed_condition_values` (raw values -> network features),
`fit_condition_values` (the training values) and `check_conditions` (values to sample with,
checked against the spec). The `--condition NAME=VALUES` grammar of `ldns sample` is
`conditions.grammar`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ldns_cli.core.console import warn as console_warn
from ldns_cli.core.data import ANGLE_UNIT_NAMES, detect_kind, is_angle_name  # noqa: F401 (re-exported)
from ldns_cli.core.errors import LdnsError

KINDS = ("circular", "continuous", "categorical", "timeseries")
# spellings of angle units in recordings -> the canonical "rad"/"deg"
ANGLE_UNITS = {"rad": 1.0, "deg": math.pi / 180, "°": math.pi / 180, "pi": math.pi}


@dataclass(frozen=True)
class ConditionSpec:
    """One condition a model was trained with (the checkpoint's dict, validated)."""

    name: str
    kind: str
    dim: int = 1
    unit: str = ""
    min: tuple[float, ...] | None = None
    max: tuple[float, ...] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    values: tuple[Any, ...] | None = None  # categories, categorical only
    required: bool = False

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ConditionSpec:
        if "name" not in d or "kind" not in d:
            raise LdnsError(
                f"condition spec {dict(d)} needs 'name' and 'kind'",
                "the model checkpoint is malformed; refit it",
            )
        kind = str(d["kind"])
        if kind not in KINDS:
            raise LdnsError(
                f"condition '{d['name']}' has unknown kind '{kind}'", f"kinds: {', '.join(KINDS)}"
            )
        dim = int(d.get("dim", 1))

        def vec(key: str) -> tuple[float, ...] | None:
            v = d.get(key)
            if v is None:
                return None
            arr = np.atleast_1d(np.asarray(v, dtype=np.float64)).ravel()
            if arr.size == 1 and dim > 1:
                arr = np.repeat(arr, dim)
            return tuple(float(x) for x in arr)

        values = d.get("values")
        unit = str(d.get("unit") or ("rad" if kind == "circular" else ""))
        unit = ANGLE_UNIT_NAMES.get(unit.lower(), unit)
        return cls(
            name=str(d["name"]),
            kind=kind,
            dim=dim,
            unit=unit,
            min=vec("min"),
            max=vec("max"),
            mean=vec("mean"),
            std=vec("std"),
            values=tuple(values) if values is not None else None,
            required=bool(d.get("required", kind == "timeseries")),
        )

    def describe(self) -> str:
        """e.g. `angle (circular, rad)` for hints."""
        extra = [self.kind]
        if self.unit:
            extra.append(self.unit)
        if self.dim > 1:
            extra.append(f"dim {self.dim}")
        if self.kind == "categorical" and self.values is not None:
            extra.append("values " + ",".join(str(v) for v in self.values[:10]))
        return f"{self.name} ({', '.join(extra)})"


def as_specs(spec: Sequence[Mapping[str, Any] | ConditionSpec]) -> list[ConditionSpec]:
    """Normalise a checkpoint's list of dicts (or specs) into `ConditionSpec`s."""
    return [s if isinstance(s, ConditionSpec) else ConditionSpec.from_dict(s) for s in spec]


# ---------------------------------------------------------------------------------------------
# Range checks and the per-trial table
# ---------------------------------------------------------------------------------------------


RANGE_TOLERANCE = 0.01  # values within 1% of the training span outside it do not warn


def check_range(
    spec: ConditionSpec, values: np.ndarray, warn: Callable[[str], None] = console_warn
) -> None:
    """Warn (not fail) when values fall outside the range the model was trained on.

    `values` `[n]`/`[n, dim]` (time series: their valid bins, `[n_bins, dim]`). Circular values
    are compared on the circle (6.2 rad is inside [-0.5, 0.5]); a value within 1% of the
    training span beyond an edge is inside. One warning line per call, through `warn`.
    """
    if spec.kind == "categorical" or spec.min is None or spec.max is None or len(values) == 0:
        return
    lo, hi = np.asarray(spec.min), np.asarray(spec.max)
    v = np.asarray(values, dtype=np.float64).reshape(len(values), -1)  # [n, dim]
    tol = RANGE_TOLERANCE * np.maximum(hi - lo, 1e-12)

    def inside(x: np.ndarray) -> np.ndarray:
        return (x >= lo - tol) & (x <= hi + tol)

    if spec.kind == "circular":
        turn = 2 * math.pi / ANGLE_UNITS.get(spec.unit, 1.0)
        wrapped = lo + np.mod(v - lo, turn)  # into [lo, lo + turn)
        ok = inside(wrapped) | inside(wrapped - turn)
    else:
        ok = inside(v)
    bad_rows = ~ok.all(axis=1)
    if bad_rows.any():
        shown = ", ".join(f"{x:g}" for x in np.unique(v[bad_rows][~ok[bad_rows]])[:5])
        rng = ", ".join(f"[{a:g}, {b:g}]" for a, b in zip(lo, hi, strict=True))
        unit = f" {spec.unit}" if spec.unit else ""
        warn(f"{spec.name}={shown} is outside the training range {rng}{unit} (extrapolating)")


# ---------------------------------------------------------------------------------------------
# Numeric form for the denoiser
# ---------------------------------------------------------------------------------------------


def embed_condition_values(
    spec: ConditionSpec | Mapping[str, Any], values: np.ndarray
) -> np.ndarray:
    """Turn one condition's values into the numbers the denoiser sees.

    - circular: (cos θ, sin θ) per dimension -> float32 [n, 2·dim] (cos block then sin block);
      values in degrees (unit "deg") are converted first.
    - continuous: z-scored -> float32 [n, dim], with the training mean/std when the spec has
      them, else centred on the training range's midpoint and scaled by its half-width (so the
      training range maps to [-1, 1]); without either, passed through.
    - categorical: integer index into the spec's categories -> int64 [n] (labels not in the
      spec raise LdnsError); without categories, the values themselves as integers.
    - timeseries: [n, L, dim] float32, z-scored per channel like continuous ones.
    """
    spec = spec if isinstance(spec, ConditionSpec) else ConditionSpec.from_dict(spec)
    values = np.asarray(values)
    if spec.kind == "categorical":
        if spec.values is None:
            return values.astype(np.int64).reshape(-1)
        lookup = {str(v): i for i, v in enumerate(spec.values)}
        try:
            return np.array([lookup[str(v)] for v in values.reshape(-1)], dtype=np.int64)
        except KeyError as exc:
            raise LdnsError(
                f"condition '{spec.name}' has no category {exc.args[0]}",
                "categories: " + ", ".join(str(v) for v in spec.values),
            ) from None
    x = values.astype(np.float64)
    if spec.kind == "circular":
        x = x.reshape(len(x), -1) * ANGLE_UNITS.get(spec.unit, 1.0)  # [n, dim] radians
        return np.concatenate([np.cos(x), np.sin(x)], axis=1).astype(np.float32)
    if spec.kind == "continuous":
        x = x.reshape(len(x), -1)  # [n, dim]
    elif x.ndim == 2:
        x = x[..., None]  # [n, L] -> [n, L, 1]
    if spec.mean is not None and spec.std is not None:
        centre, scale = np.asarray(spec.mean), np.asarray(spec.std)
    elif spec.min is not None and spec.max is not None:
        centre = (np.asarray(spec.max) + np.asarray(spec.min)) / 2
        scale = (np.asarray(spec.max) - np.asarray(spec.min)) / 2
    else:
        return x.astype(np.float32)
    scale = np.where(scale > 0, scale, 1.0)  # a constant training column carries no scale
    return ((x - centre) / scale).astype(np.float32)


def embed_conditions(
    spec: Sequence[Mapping[str, Any] | ConditionSpec], values: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """`embed_condition_values` for each condition present in `values` (absent ones stay absent)."""
    return {
        s.name: embed_condition_values(s, values[s.name])
        for s in as_specs(spec)
        if s.name in values
    }


# ---------------------------------------------------------------------------------------------
# Conditions in a recording: the spec `fit-diffusion --condition NAME` records, the values a
# fit trains on, and the values `sample --condition-from DATA` takes
# ---------------------------------------------------------------------------------------------


def condition_values(data: Any, name: str) -> np.ndarray:
    """A condition's raw values in a recording: covariate `[B]`/`[B, k]` or behaviour `[B, L, k]`."""
    if name in data.behavior:
        return np.asarray(data.behavior[name])
    if name in data.covariates:
        return np.asarray(data.covariates[name])
    available = sorted(data.covariates) + sorted(data.behavior)
    raise LdnsError(
        f"the recording has no covariate or behaviour series '{name}'",
        f"available: {', '.join(available)}" if available else "it has none to condition on",
    )


def _no_training_values(name: str) -> LdnsError:
    return LdnsError(
        f"condition '{name}' has no value (only NaN) in the training trials",
        "fill it in for the training trials, or condition on another covariate "
        "(ldns inspect DATA lists them)",
    )


def _finite_stats(name: str, x: np.ndarray) -> dict[str, np.ndarray]:
    """Per-column min/max/mean/std of `x` `[n, k]`, ignoring NaN/inf entries.

    The same arithmetic (and float precision) as `x.min(0)`, `x.mean(0)`, `x.std(0)` when every
    entry is finite, so clean data gives exactly the numbers those would.
    """
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    ok = np.isfinite(x)
    count = ok.sum(axis=0)
    if len(x) == 0 or np.any(count == 0):
        raise _no_training_values(name)
    mean = np.where(ok, x, 0).sum(axis=0)
    np.true_divide(mean, count, out=mean, casting="unsafe")
    dev = np.where(ok, x - mean, 0)
    var = (dev * dev).sum(axis=0)
    np.true_divide(var, count, out=var, casting="unsafe")
    return {
        "min": np.where(ok, x, np.inf).min(axis=0),
        "max": np.where(ok, x, -np.inf).max(axis=0),
        "mean": mean,
        "std": np.sqrt(var),
    }


def _labels(values: np.ndarray) -> list[Any]:
    """Sorted distinct category labels (JSON-ready), NaN left out."""
    flat = values.reshape(len(values), -1)[:, 0]
    if np.issubdtype(flat.dtype, np.number):
        return sorted({v.item() for v in flat[~np.isnan(flat.astype(np.float64))]})
    return sorted({str(v) for v in flat})


def condition_spec_from_data(
    data: Any, names: Sequence[str], train: np.ndarray
) -> list[dict[str, Any]]:
    """The checkpoint's condition spec for `fit-diffusion --condition NAME ...`.

    Everything in it comes from the *training* trials only (`train`, bool `[B]`), so held-out
    trials never inform the model; NaN/inf values are ignored (a condition with no finite
    training value is an error). One JSON-ready dict per name:

    - behaviour series `[B, L, k]` -> `{"name", "kind": "timeseries", "required": True, "dim": k,
      "unit", "min", "max", "mean", "std"}` over the training trials' valid bins;
    - trial covariates, kind from `detect_kind` (the reader's declared kind and unit first):
      categorical -> `{"name", "kind", "dim": 1, "unit", "values": sorted labels}`;
      circular -> `{"name", "kind", "dim", "unit" (rad/deg, default rad), "min", "max"}`;
      continuous -> `{"name", "kind", "dim", "unit", "min", "max", "mean", "std"}`.

    Per-dimension lists; a std of 0 (a constant column) is stored as 1.
    """
    train = np.asarray(train, dtype=bool)
    out: list[dict[str, Any]] = []
    for name in names:
        raw = condition_values(data, name)
        info = data.info(name)
        if name in data.behavior:
            valid = raw[train][data.mask()[train]]  # [n_valid_bins, k]
            st = _finite_stats(name, valid)
            out.append(
                {
                    "name": name,
                    "kind": "timeseries",
                    "required": True,
                    "dim": int(raw.shape[2]),
                    "unit": info.unit,
                    "min": st["min"].tolist(),
                    "max": st["max"].tolist(),
                    "mean": st["mean"].tolist(),
                    "std": np.where(st["std"] > 0, st["std"], 1.0).tolist(),
                }
            )
            continue
        values = raw[train]
        kind = detect_kind(name, values, info.kind, info.unit)
        if kind == "categorical":
            labels = _labels(values)
            if not labels:
                raise _no_training_values(name)
            out.append(
                {"name": name, "kind": "categorical", "dim": 1, "unit": info.unit,
                 "values": labels}
            )  # fmt: skip
            continue
        x = values.reshape(len(values), -1).astype(np.float64)  # [B_train, k]
        st = _finite_stats(name, x)
        unit = info.unit
        if kind == "circular":
            unit = ANGLE_UNIT_NAMES.get(unit.lower(), "rad")
        spec: dict[str, Any] = {
            "name": name,
            "kind": kind,
            "dim": int(x.shape[1]),
            "unit": unit,
            "min": st["min"].tolist(),
            "max": st["max"].tolist(),
        }
        if kind == "continuous":
            spec["mean"] = st["mean"].tolist()
            spec["std"] = np.where(st["std"] > 0, st["std"], 1.0).tolist()
        out.append(spec)
    return out


def _fit_ready(spec: ConditionSpec, values: np.ndarray, mask: np.ndarray):
    """(values with unusable entries replaced, bool `[B]` of trials whose value is usable)."""
    if spec.kind == "categorical":
        flat = values.reshape(len(values), -1)[:, 0]
        if spec.values is None:
            return flat, np.ones(len(flat), bool)
        known = {str(v) for v in spec.values}
        usable = np.array([str(v) in known for v in flat], dtype=bool)
        if not usable.all():
            flat = flat.astype(object)
            flat[~usable] = spec.values[0]
        return flat, usable
    x = values.astype(np.float64)
    finite = np.isfinite(x)
    if spec.kind == "timeseries":
        usable = (finite.all(axis=-1) | ~mask).all(axis=1)  # padding does not count
    else:
        usable = finite.reshape(len(x), -1).all(axis=1)
    return (x if finite.all() else np.where(finite, x, 0.0)), usable


def fit_condition_values(
    spec: Sequence[Mapping[str, Any] | ConditionSpec], data: Any
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The values a fit trains on, and which trials can train.

    Returns `({name: raw values}, usable bool [B])`. A trial is unusable when a trial-level value
    is NaN/inf, a time series has NaN/inf in a valid bin, or a category is not in the spec (it
    was seen in no training trial); such entries are replaced by a placeholder so that every
    trial can still be embedded, and the caller leaves those trials out.
    """
    usable = np.ones(data.n_trials, bool)
    values: dict[str, np.ndarray] = {}
    for s in as_specs(spec):
        values[s.name], ok = _fit_ready(s, condition_values(data, s.name), data.mask())
        usable &= ok
    return values, usable


def check_conditions(
    spec: Any,
    values: Mapping[str, np.ndarray],
    lengths: np.ndarray,
    warn: Callable[[str], None] | None = None,
) -> dict[str, np.ndarray]:
    """Validate raw per-trial condition values (typed, or from a recording) for sampling.

    Args:
        spec: the model's condition spec (list of dicts or `ConditionSpec`s), or a model with a
            `.conditions` list (`DiffusionModel`).
        values: `{name: [B] / [B, k]}` trial-level values, `{name: [B, L, k]}` time series (at
            least as long as each trial); the condition's unit, categorical as labels.
        lengths: bins per trial `[B]`.
        warn: called with one line per condition whose values leave the training range (by more
            than 1% of its span, circular ones compared on the circle; valid bins only for time
            series); None: no range check.
    Returns:
        `{name: array}`: trial-level float64 `[B, dim]` (categorical: labels `[B]`), time series
        float32 `[B, L, k]`.
    Raises:
        LdnsError: unknown name, wrong shape, NaN/inf, an unknown category, a series shorter
            than its trial, or a time-series condition missing while others are given.
    """
    specs = {s.name: s for s in as_specs(getattr(spec, "conditions", spec))}
    lengths = np.asarray(lengths)
    n = len(lengths)
    for name in values:
        if name not in specs:
            known = ", ".join(specs) if specs else "none (the model is unconditional)"
            raise LdnsError(
                f"the model has no condition '{name}'", f"the model's conditions: {known}"
            )
    if values:
        missing = [
            s.name for s in specs.values() if s.kind == "timeseries" and s.name not in values
        ]
        if missing:
            raise LdnsError(
                f"time-series condition {', '.join(missing)} is required with the other conditions",
                f"pass it with --condition-from DATA (a recording with '{missing[0]}'), "
                "or give no condition for unconditional samples",
            )
    out: dict[str, np.ndarray] = {}
    for name, raw in values.items():
        s = specs[name]
        arr = np.asarray(raw)
        if s.kind == "timeseries":
            if arr.ndim == 2 and s.dim == 1:
                arr = arr[:, :, None]
            if arr.ndim != 3 or arr.shape[0] != n or arr.shape[2] != s.dim:
                raise LdnsError(
                    f"condition '{name}' must be a [trial, time, {s.dim}] series, got {arr.shape}",
                    f"take it from a recording whose '{name}' has {s.dim} column(s)",
                )
            if arr.shape[1] < int(lengths.max()):
                raise LdnsError(
                    f"condition '{name}' covers {arr.shape[1]} bins, trials need {lengths.max()}",
                    "use a shorter --length or the source trials' own lengths",
                )
            arr = arr.astype(np.float32)
            checked = arr[np.arange(arr.shape[1])[None, :] < lengths[:, None]]  # valid bins
        elif s.kind == "categorical":
            if arr.size != n:
                raise LdnsError(
                    f"condition '{name}' needs one label per trial ({n}), got shape {arr.shape}",
                    f"give one label for '{name}' per trial",
                )
            arr = arr.reshape(n)
            embed_condition_values(s, arr)  # an unknown category fails here, with the list
            checked = None
        else:
            arr = arr.astype(np.float64)
            if arr.ndim == 1 and s.dim == 1:
                arr = arr[:, None]
            if arr.ndim != 2 or arr.shape != (n, s.dim):
                raise LdnsError(
                    f"condition '{name}' has {s.dim} value(s) per trial, got shape {arr.shape[1:]}",
                    f"give {s.dim} number(s) for '{name}'",
                )
            checked = arr
        if checked is not None:
            if not np.all(np.isfinite(checked)):
                raise LdnsError(f"condition '{name}' has NaN/inf values", "give finite numbers")
            if warn is not None:
                check_range(s, checked, warn)
        out[name] = arr
    return out
