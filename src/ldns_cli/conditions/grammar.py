"""The `--condition` grammar of `ldns sample`: typed values -> one row of conditions per trial.

Values are read against the model's condition spec (`conditions.spec`: each condition's kind,
dim, unit and, for categorical ones, its values) and become a `ConditionTable`.

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

from ldns_cli.conditions.spec import ANGLE_UNITS, ConditionSpec, as_specs, check_range
from ldns_cli.core.data import MAX_TRIALS
from ldns_cli.core.errors import LdnsError

_NUMBER = re.compile(
    r"^\s*(?P<num>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)?\s*(?P<unit>deg|°|rad|pi)?\s*$"
)
FULL_TURN_TOLERANCE = 0.01  # a circular grid spanning 2π within 1% is a full turn


@dataclass
class ConditionTable:
    """Per-trial condition values for a sampling run.

    Attributes:
        values: `{name: array [n_trials] or [n_trials, k]}` (time series: [n_trials, L, k]),
            in the condition's unit (radians for circular ones), categorical as their labels.
        n_trials: rows.
        n_combinations: distinct condition combinations (n_trials = n_combinations · per_condition).
    """

    values: dict[str, np.ndarray] = field(default_factory=dict)
    n_trials: int = 0
    n_combinations: int = 1


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
    if num > MAX_TRIALS:
        raise LdnsError(
            f"condition '{spec.name}': a grid of {num:,} values is more than one run makes",
            f"at most {MAX_TRIALS:,} trials per run",
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
    n_rows = math.prod(len(v) for _, v in axes) * per_condition
    if n_rows > MAX_TRIALS:
        raise LdnsError(
            f"the conditions combine into {n_rows:,} trials, more than one run makes",
            f"at most {MAX_TRIALS:,} trials per run: use coarser grids or fewer --per-condition",
        )
    index = np.array(list(itertools.product(*[range(len(v)) for _, v in axes])), dtype=np.int64)
    index = np.repeat(index, per_condition, axis=0)  # [n_trials, n_axes]
    table = {name: values[index[:, j]] for j, (name, values) in enumerate(axes)}
    return ConditionTable(
        values=table, n_trials=len(index), n_combinations=len(index) // per_condition
    )
