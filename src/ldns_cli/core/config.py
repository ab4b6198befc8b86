"""Frozen-dataclass configs: presets, `--config FILE.json`, flag overrides, JSON round trip.

Resolution order (later wins): dataclass defaults < named preset < config file < explicit flags.
The resolved config is saved in every checkpoint, and models are rebuilt only from it.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path
from typing import Any, TypeVar

from ldns_cli.core.errors import LdnsError

T = TypeVar("T")


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A frozen dataclass (possibly nested) as a JSON-ready dict."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def config_from_dict(cls: type[T], values: dict[str, Any], source: str = "config") -> T:
    """Build `cls` from a dict, rejecting unknown keys and coercing lists back to tuples."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise LdnsError(
            f"unknown setting(s) in {source}: {', '.join(unknown)}",
            f"known settings: {', '.join(sorted(fields))}",
        )
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        hint = hints.get(name)
        origin = typing.get_origin(hint)
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            value = config_from_dict(hint, value, source)  # type: ignore[arg-type]
        elif origin is tuple and isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def load_config_file(path: str | Path | None) -> dict[str, Any]:
    """Read a `--config FILE.json` (empty dict when no file is given)."""
    if path is None:
        return {}
    p = Path(path)
    if not p.exists():
        raise LdnsError(f"config file '{p}' not found", "check the --config path")
    try:
        values = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LdnsError(
            f"config file '{p}' is not valid JSON: {exc}", "fix the JSON syntax"
        ) from None
    if not isinstance(values, dict):
        raise LdnsError(f"config file '{p}' must hold a JSON object", 'e.g. {"epochs": 10}')
    return values


def resolve_configs(
    classes: tuple[type, ...],
    presets: dict[str, dict[str, Any]] | None = None,
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    *,
    base: dict[str, Any] | None = None,
    implied: dict[str, Any] | None = None,
) -> tuple[Any, ...]:
    """Resolve settings shared by several frozen dataclasses; one instance of each, in order.

    Later wins: `base` (defaults that differ from the dataclasses') < named preset < `implied`
    (settings a flag implies, e.g. an explicit --epochs means no minimum step count; a config
    file may still set them) < config file < explicit flags (`overrides`; None means not given).
    Presets and the file may mix keys of every class; a key that belongs to none is an error
    listing the known ones.
    """
    values: dict[str, Any] = dict(base or {})
    if preset is not None:
        presets = presets or {}
        if preset not in presets:
            raise LdnsError(
                f"unknown preset '{preset}'", f"choose one of: {', '.join(sorted(presets))}"
            )
        values.update(presets[preset])
    values.update(implied or {})
    values.update(load_config_file(config_file))
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    keys = [{f.name for f in dataclasses.fields(cls)} for cls in classes]
    known = set().union(*keys)
    unknown = sorted(set(values) - known)
    source = str(config_file or "flags")
    if unknown:
        raise LdnsError(
            f"unknown setting(s) in {source}: {', '.join(unknown)}",
            f"known settings: {', '.join(sorted(known))}",
        )
    try:
        return tuple(
            config_from_dict(cls, {k: v for k, v in values.items() if k in own}, source)
            for cls, own in zip(classes, keys, strict=True)
        )
    except TypeError as exc:
        raise LdnsError(f"invalid settings: {exc}", "check the config file and flags") from None


def resolve_config(
    cls: type[T],
    presets: dict[str, dict[str, Any]] | None = None,
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> T:
    """`resolve_configs` for one dataclass: defaults < preset < config file < flags."""
    return resolve_configs((cls,), presets, preset, config_file, overrides)[0]
