"""The `--condition` grammar of `ldns sample` and the numeric form conditions take in the model.

A model's condition spec (stored in its checkpoint) is a list of dicts, one per condition:

    {"name": "angle", "kind": "circular", "dim": 1, "unit": "rad", "min": [-3.1], "max": [3.1]}
    {"name": "speed", "kind": "continuous", "dim": 1, "unit": "m/s", "min": [0.0], "max": [1.2]}
    {"name": "maze_id", "kind": "categorical", "dim": 1, "values": [0, 1, 2]}
    {"name": "hand_vel", "kind": "timeseries", "dim": 2, "unit": "m/s"}

Optional keys: "mean"/"std" (per dim, used for z-scoring when present), "required" (default: true
for time series, false otherwise; a trial-level condition that is left out is sampled
unconditionally by a model trained with condition dropout).

Grammar (one `--condition NAME=VALUES` per condition; values are in the condition's unit):
    angle=0.5            a number (radians for circular conditions)
    angle=30deg          unit suffixes deg, °, rad and pi (angle=0.5pi is π/2), for angles only
    angle=0:6.28:8       START:STOP:NUM, NUM evenly spaced values; STOP is included, except for a
                         circular condition whose span is a full turn (within 1%, so 6.28 counts)
                         — then the span is taken as exactly 2π and STOP (= START) is left out,
                         giving 0, π/4, ..., 7π/4 rather than duplicating 0 and 2π. A unit on
                         either end applies to both: angle=0:360deg:8.
    speed=1,2,3          a list
    target=(0.1,0.2)     a vector for a condition with dim 2; several: target=(0,1),(1,0)
    maze_id=3, side=left a category, by value or label; categorical lists work too
Several conditions combine as a cartesian product (the first varies slowest) and each combination
is repeated `per_condition` times in a row. Time-series conditions cannot be typed on the
command line; they come from a recording (`--condition-from`) as `[trial, time, k]` arrays.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ldns_cli.console import warn
from ldns_cli.errors import LdnsError

KINDS = ("circular", "continuous", "categorical", "timeseries")
ANGLE_UNITS = {"rad": 1.0, "deg": math.pi / 180, "°": math.pi / 180, "pi": math.pi}
# spellings of angle units in recordings -> the canonical "rad"/"deg"
ANGLE_UNIT_NAMES = {"rad": "rad", "radian": "rad", "radians": "rad", "deg": "deg", "°": "deg"}
ANGLE_UNIT_NAMES |= {"degree": "deg", "degrees": "deg"}
_NUMBER = re.compile(
    r"^\s*(?P<num>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)?\s*(?P<unit>deg|°|rad|pi)?\s*$"
)
FULL_TURN_TOLERANCE = 0.01  # a circular grid spanning 2π within 1% is a full turn


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


@dataclass
class ConditionTable:
    """Per-trial condition values for a sampling run.

    Attributes:
        values: `{name: array [n_trials] or [n_trials, k]}` (time series: [n_trials, L, k]),
            in the condition's unit (radians for circular ones), categorical as their labels.
        n_trials: rows.
        n_combinations: distinct condition combinations (n_trials = n_combinations · per_condition).
        lengths: per-trial lengths in bins of the source trials (`conditions_from_data` only).
    """

    values: dict[str, np.ndarray] = field(default_factory=dict)
    n_trials: int = 0
    n_combinations: int = 1
    lengths: np.ndarray | None = None  # per-trial bins when taken from a recording


# ---------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------


def split_condition_arg(text: str) -> tuple[str, str]:
    """`"angle=0.5"` -> `("angle", "0.5")`; LdnsError if there is no `NAME=VALUE`."""
    name, sep, value = str(text).partition("=")
    name, value = name.strip(), value.strip()
    if not sep or not name or not value:
        raise LdnsError(
            f"cannot read condition '{text}'",
            "write NAME=VALUE, e.g. --condition angle=0.5, angle=30deg, angle=0:6.28:8 "
            "or speed=1,2",
        )
    return name, value


def _model_conditions_hint(specs: list[ConditionSpec]) -> str:
    if not specs:
        return (
            "this model was trained without conditions: drop --condition, "
            "or refit with fit-diffusion --condition NAME"
        )
    return "this model's conditions: " + "; ".join(s.describe() for s in specs)


def _find_spec(name: str, specs: list[ConditionSpec]) -> ConditionSpec:
    for s in specs:
        if s.name == name:
            return s
    raise LdnsError(f"unknown condition '{name}'", _model_conditions_hint(specs))


def _parse_number(token: str, spec: ConditionSpec, default_unit: str | None = None) -> float:
    """A number with an optional angle-unit suffix, converted to the condition's unit."""
    m = _NUMBER.match(token)
    if m is None or (m.group("num") is None and m.group("unit") != "pi"):
        raise LdnsError(
            f"condition '{spec.name}': cannot read '{token}' as a number",
            "e.g. 0.5, -1e-3, 30deg, 0.25pi",
        )
    num = float(m.group("num")) if m.group("num") is not None else 1.0
    unit = m.group("unit") or default_unit
    if unit is None:
        return num
    target = spec.unit if spec.unit in ANGLE_UNITS else None
    if spec.kind != "circular" and target is None:
        raise LdnsError(
            f"condition '{spec.name}' is not an angle, so '{token}' cannot carry an angle unit",
            f"give it in {spec.unit or 'its own unit'}, without a suffix",
        )
    radians = num * ANGLE_UNITS[unit]
    return radians / ANGLE_UNITS[target or "rad"]


def _unit_of(token: str) -> str | None:
    m = _NUMBER.match(token)
    return m.group("unit") if m else None


def _parse_grid(text: str, spec: ConditionSpec) -> np.ndarray:
    parts = text.split(":")
    if len(parts) != 3:
        raise LdnsError(
            f"condition '{spec.name}': cannot read grid '{text}'",
            "write START:STOP:NUM, e.g. angle=0:6.28:8 for 8 evenly spaced values",
        )
    start_s, stop_s, num_s = parts
    try:
        num = int(num_s)
    except ValueError:
        num = 0
    if num < 1:
        raise LdnsError(
            f"condition '{spec.name}': grid size '{num_s}' must be a positive integer",
            "e.g. angle=0:6.28:8",
        )
    units = {u for u in (_unit_of(start_s), _unit_of(stop_s)) if u is not None}
    if len(units) > 1:
        raise LdnsError(
            f"condition '{spec.name}': grid ends '{start_s}' and '{stop_s}' use different units",
            "use one unit, e.g. 0:360deg:8",
        )
    unit = units.pop() if units else None
    start = _parse_number(start_s, spec, unit)
    stop = _parse_number(stop_s, spec, unit)
    if num == 1:
        return np.array([start])
    if spec.kind == "circular":
        turn = 2 * math.pi / ANGLE_UNITS.get(spec.unit, 1.0)  # a full turn in the spec's unit
        span = stop - start
        if abs(abs(span) - turn) <= FULL_TURN_TOLERANCE * turn:
            # full turn: STOP is START again, so leave it out and use exactly 2π
            return start + math.copysign(turn, span) * np.arange(num) / num
    return np.linspace(start, stop, num)


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside parentheses: `(0,1),(1,0)` -> `["(0,1)", "(1,0)"]`."""
    items, depth, cur = [], 0, []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            items.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    items.append("".join(cur))
    if depth != 0:
        raise LdnsError(f"unbalanced parentheses in '{text}'", "e.g. target=(0.1,0.2),(0,1)")
    return [i.strip() for i in items]


def _parse_categorical(text: str, spec: ConditionSpec) -> np.ndarray:
    tokens = _split_top_level(text)
    if spec.values is None:
        try:
            return np.array([int(t) for t in tokens], dtype=np.int64)
        except ValueError:
            raise LdnsError(
                f"condition '{spec.name}': '{text}' is not a list of integer category ids",
                "e.g. maze_id=3 or maze_id=1,2",
            ) from None
    out = []
    for tok in tokens:
        match = [v for v in spec.values if str(v) == tok]
        if not match:
            try:
                num = float(tok)
                match = [
                    v
                    for v in spec.values
                    if isinstance(v, (int, float, np.number)) and float(v) == num
                ]
            except ValueError:
                pass
        if not match:
            raise LdnsError(
                f"condition '{spec.name}' has no category '{tok}'",
                "categories: " + ", ".join(str(v) for v in spec.values),
            )
        out.append(match[0])
    return np.array(out)


def parse_values(text: str, spec: ConditionSpec | Mapping[str, Any]) -> np.ndarray:
    """The candidate values one `--condition NAME=TEXT` names, in the condition's unit.

    Returns:
        [m] for dim-1 conditions (labels for categorical ones), [m, k] for dim-k vectors.
    """
    spec = spec if isinstance(spec, ConditionSpec) else ConditionSpec.from_dict(spec)
    if spec.kind == "timeseries":
        raise LdnsError(
            f"condition '{spec.name}' is a time series and cannot be typed on the command line",
            "take it from a recording: --condition-from DATA",
        )
    if spec.kind == "categorical":
        return _parse_categorical(text, spec)
    if "(" in text:
        rows = []
        for tok in _split_top_level(text):
            if not (tok.startswith("(") and tok.endswith(")")):
                raise LdnsError(
                    f"condition '{spec.name}': cannot read '{tok}' as a vector",
                    "write vectors in parentheses, e.g. target=(0.1,0.2),(0,1)",
                )
            rows.append([_parse_number(x, spec) for x in tok[1:-1].split(",")])
        if len({len(r) for r in rows}) != 1 or len(rows[0]) != spec.dim:
            raise LdnsError(
                f"condition '{spec.name}' has {spec.dim} dimension(s), got vectors of length "
                f"{sorted({len(r) for r in rows})}",
                _dim_hint(spec),
            )
        values = np.array(rows, dtype=np.float64)
        return values[:, 0] if spec.dim == 1 else values
    if ":" in text:
        values = _parse_grid(text, spec)
    else:
        values = np.array([_parse_number(t, spec) for t in _split_top_level(text)])
    if spec.dim != 1:
        raise LdnsError(
            f"condition '{spec.name}' has {spec.dim} dimensions, got scalar value(s) '{text}'",
            _dim_hint(spec),
        )
    return values.astype(np.float64)


def _dim_hint(spec: ConditionSpec) -> str:
    if spec.dim == 1:
        return f"give a single number, e.g. {spec.name}=0.5"
    example = ",".join(["0.1"] * spec.dim)
    return f"give {spec.dim} numbers in parentheses, e.g. {spec.name}=({example})"


# ---------------------------------------------------------------------------------------------
# Range checks and the per-trial table
# ---------------------------------------------------------------------------------------------


def check_range(spec: ConditionSpec, values: np.ndarray) -> None:
    """Warn (not fail) when values fall outside the range the model was trained on."""
    if spec.kind not in ("circular", "continuous") or spec.min is None or spec.max is None:
        return
    lo, hi = np.asarray(spec.min), np.asarray(spec.max)
    v = values.reshape(len(values), -1) if values.ndim > 1 else values[:, None]
    if spec.kind == "circular":
        turn = 2 * math.pi / ANGLE_UNITS.get(spec.unit, 1.0)
        # compare on the circle: wrap into [lo, lo + turn)
        v = lo + np.mod(v - lo, turn)
    outside = (v < lo - 1e-9) | (v > hi + 1e-9)
    if outside.any():
        bad = np.unique(values[outside.any(axis=1)])[:5]
        shown = ", ".join(f"{x:g}" for x in np.ravel(bad)[:5])
        rng = ", ".join(f"[{a:g}, {b:g}]" for a, b in zip(lo, hi, strict=True))
        unit = f" {spec.unit}" if spec.unit else ""
        warn(f"{spec.name}={shown} is outside the training range {rng}{unit} (extrapolating)")


def build_condition_table(
    spec: Sequence[Mapping[str, Any] | ConditionSpec],
    conditions: Sequence[str] = (),
    per_condition: int = 1,
    series: Mapping[str, np.ndarray] | None = None,
) -> ConditionTable:
    """Turn `--condition` flags into one row per trial to generate.

    Args:
        spec: the model's condition spec (checkpoint list of dicts).
        conditions: the raw `--condition` strings, e.g. `["angle=0:6.28:8", "speed=1,2"]`.
        per_condition: K, rows per combination (consecutive).
        series: time-series conditions taken from a recording, `{name: [n, L, k]}`; each of
            the n traces is one combination (crossed with any typed conditions).
    Returns:
        `ConditionTable`; with no conditions at all it has `n_trials = per_condition` and no
        columns (unconditional sampling).
    Raises:
        LdnsError: unknown name, a name given twice, wrong dimensionality, an unknown category,
            a missing required (time-series) condition, a bad `per_condition`.
    """
    specs = as_specs(spec)
    if isinstance(per_condition, bool) or not isinstance(per_condition, int) or per_condition < 1:
        raise LdnsError(
            f"--per-condition must be a positive integer, got {per_condition!r}", "e.g. 5"
        )
    axes: list[tuple[str, np.ndarray]] = []
    seen: set[str] = set()
    for text in conditions:
        name, value = split_condition_arg(text)
        s = _find_spec(name, specs)
        if name in seen:
            raise LdnsError(
                f"condition '{name}' given more than once",
                f"list several values in one flag, e.g. {name}=1,2,3 or a grid {name}=0:1:5",
            )
        seen.add(name)
        values = parse_values(value, s)
        check_range(s, values)
        axes.append((name, values))
    for name, arr in (series or {}).items():
        s = _find_spec(name, specs)
        if name in seen:
            raise LdnsError(f"condition '{name}' given more than once", "give it one way only")
        seen.add(name)
        arr = np.asarray(arr, dtype=np.float64)
        if arr.ndim == 2 and s.dim == 1:
            arr = arr[..., None]
        if s.kind != "timeseries":
            raise LdnsError(
                f"condition '{name}' is {s.kind}, not a time series", "type it with --condition"
            )
        if arr.ndim != 3 or arr.shape[-1] != s.dim:
            raise LdnsError(
                f"time-series condition '{name}' needs shape [trial, time, {s.dim}], "
                f"got {list(arr.shape)}",
                _model_conditions_hint(specs),
            )
        axes.append((name, arr))
    missing = [s for s in specs if s.required and s.name not in seen]
    if missing:
        names = ", ".join(s.name for s in missing)
        raise LdnsError(
            f"this model needs the condition(s) {names}",
            "take time series from a recording with --condition-from DATA"
            if any(s.kind == "timeseries" for s in missing)
            else f"add --condition {missing[0].name}=VALUE",
        )
    if not axes:
        return ConditionTable(values={}, n_trials=per_condition, n_combinations=1)
    index = np.array(list(itertools.product(*[range(len(v)) for _, v in axes])), dtype=np.int64)
    index = np.repeat(index, per_condition, axis=0)  # [n_trials, n_axes]
    table = {name: values[index[:, j]] for j, (name, values) in enumerate(axes)}
    return ConditionTable(
        values=table, n_trials=len(index), n_combinations=len(index) // per_condition
    )


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
# Specs and tables from a recording (fit-diffusion --condition NAME, sample --condition-from)
# ---------------------------------------------------------------------------------------------

_CIRCULAR_WORDS = ("angle", "direction", "theta", "phase", "heading", "orientation")
_CATEGORY_SUFFIXES = ("id", "label", "type", "condition", "class")


def _json_scalar(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def detect_kind(name: str, values: np.ndarray, declared: str = "", unit: str = "") -> str:
    """The condition kind of a trial covariate: declared, else detected from unit, name, dtype.

    Circular: an angle unit (rad, deg) or an angle-like name (angle, direction, theta, phase,
    heading, orientation) with values inside ±2π. Categorical: strings/booleans, or integers
    whose name ends in id/label/type/condition/class. Otherwise continuous.
    """
    if declared in ("circular", "categorical"):
        return declared
    if values.dtype.kind in "USOb":
        return "categorical"
    lname = name.lower()
    if unit.lower() in ANGLE_UNIT_NAMES:
        return "circular"
    if any(w in lname for w in _CIRCULAR_WORDS) and np.nanmax(np.abs(values)) <= 2 * math.pi + 1e-6:
        return "circular"
    if values.dtype.kind in "iu" and lname.replace("-", "_").split("_")[-1] in _CATEGORY_SUFFIXES:
        return "categorical"
    return "continuous"


def condition_spec_from_data(data: Any, names: Sequence[str]) -> list[dict[str, Any]]:
    """Build the checkpoint's condition spec for `fit-diffusion --condition NAME ...`.

    Trial covariates (`data.covariates`) become circular/continuous/categorical conditions (kind
    from `data.variable_info`, else `detect_kind`); behaviour series (`data.behavior`) become
    required time-series conditions. Each entry records the unit and the training range
    (min/max, mean/std per dimension; categories for categorical ones), JSON-ready.

    Args:
        data: a `SpikeData` (the training split).
        names: the requested condition names.
    """
    out: list[dict[str, Any]] = []
    for name in names:
        info = data.info(name)
        if name in data.covariates:
            raw = np.asarray(data.covariates[name])
            kind = detect_kind(name, raw, info.kind, info.unit)
            entry: dict[str, Any] = {"name": name, "kind": kind, "unit": info.unit}
            if kind == "categorical":
                entry["dim"] = 1
                entry["values"] = [_json_scalar(v) for v in np.unique(raw)]
            else:
                x = raw.astype(np.float64).reshape(len(raw), -1)  # [B, k]
                if kind == "circular" and not entry["unit"]:
                    entry["unit"] = "rad"
                if kind == "circular":
                    entry["unit"] = ANGLE_UNIT_NAMES.get(entry["unit"].lower(), "rad")
                entry["dim"] = int(x.shape[1])
                entry["min"] = np.nanmin(x, axis=0).tolist()
                entry["max"] = np.nanmax(x, axis=0).tolist()
                entry["mean"] = np.nanmean(x, axis=0).tolist()
                entry["std"] = np.nanstd(x, axis=0).tolist()
        elif name in data.behavior:
            series = np.asarray(data.behavior[name], dtype=np.float64)  # [B, L, k]
            valid = data.mask() if hasattr(data, "mask") else np.ones(series.shape[:2], bool)
            x = series[valid.astype(bool)]  # [valid bins, k]
            entry = {
                "name": name,
                "kind": "timeseries",
                "unit": info.unit,
                "dim": int(series.shape[-1]),
                "min": np.nanmin(x, axis=0).tolist(),
                "max": np.nanmax(x, axis=0).tolist(),
                "mean": np.nanmean(x, axis=0).tolist(),
                "std": np.nanstd(x, axis=0).tolist(),
                "required": True,
            }
        else:
            available = sorted(data.covariates) + sorted(data.behavior)
            raise LdnsError(
                f"the recording has no covariate or behaviour series '{name}'",
                "available: " + (", ".join(available) if available else "none (run ldns inspect)"),
            )
        out.append(entry)
    return out


def conditions_from_data(
    spec: Sequence[Mapping[str, Any] | ConditionSpec], data: Any, per_condition: int = 1
) -> ConditionTable:
    """Take every condition of `spec` from a recording's trials (`sample --condition-from`).

    Each source trial is one combination, repeated `per_condition` times in a row; time series
    come with the source trials' `lengths` (`ConditionTable.lengths`), which the generated
    trials should use. Select trials beforehand with `data.select(...)`.
    """
    specs = as_specs(spec)
    if isinstance(per_condition, bool) or not isinstance(per_condition, int) or per_condition < 1:
        raise LdnsError(
            f"--per-condition must be a positive integer, got {per_condition!r}", "e.g. 5"
        )
    if not specs:
        raise LdnsError(
            "this model was trained without conditions, so --condition-from has nothing to take",
            "drop --condition-from",
        )
    values: dict[str, np.ndarray] = {}
    for s in specs:
        source = data.behavior if s.kind == "timeseries" else data.covariates
        if s.name not in source:
            where = "behaviour series" if s.kind == "timeseries" else "trial covariates"
            raise LdnsError(
                f"the recording has no {where} '{s.name}' that the model is conditioned on",
                f"its {where}: {', '.join(sorted(source)) or 'none'}",
            )
        v = np.asarray(source[s.name])
        if s.kind == "timeseries" and (v.ndim != 3 or v.shape[-1] != s.dim):
            raise LdnsError(
                f"'{s.name}' has shape {list(v.shape)}, the model needs [trial, time, {s.dim}]",
                "use a recording prepared like the training data",
            )
        if s.kind == "categorical":
            embed_condition_values(s, v)  # unknown categories fail here, with the list
        elif s.kind != "timeseries":
            width = 1 if v.ndim == 1 else int(np.prod(v.shape[1:]))
            if width != s.dim:
                raise LdnsError(
                    f"'{s.name}' has {width} dimension(s) in the recording, the model {s.dim}",
                    "use a recording prepared like the training data",
                )
            check_range(s, v.astype(np.float64))
        values[s.name] = np.repeat(v, per_condition, axis=0)
    n = len(next(iter(values.values())))
    lengths = np.repeat(np.asarray(data.lengths), per_condition)
    return ConditionTable(
        values=values, n_trials=n, n_combinations=n // per_condition, lengths=lengths
    )
