"""Self-describing safetensors checkpoints (no pickles).

One file per stage (`ae`, `history`, `diffusion`). Tensors are the weights (plus optional
training state for `--resume`); the safetensors string metadata carries, as JSON:

    ldns.kind         "ae" | "history" | "diffusion"
    ldns.version      package version that wrote it
    ldns.config       the fully resolved config (frozen dataclasses -> dict)
    ldns.fingerprint  the data it was trained on (SpikeData.fingerprint()) or its parent model's
    ldns.extra        stage-specific JSON (normalisation stats, training summary, resume info)

Writes are atomic (temporary file + rename); loading checks the kind and says what is wrong.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ldns_cli.core.errors import LdnsError
from ldns_cli.core.paths import atomic_output
from ldns_cli.core.version import __version__


@dataclass
class Checkpoint:
    """A loaded checkpoint: tensors plus decoded JSON metadata."""

    kind: str
    tensors: dict[str, torch.Tensor]
    config: dict[str, Any] = field(default_factory=dict)
    fingerprint: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    version: str = __version__
    path: Path | None = None

    def subset(self, prefix: str) -> dict[str, torch.Tensor]:
        """Tensors under `prefix.` with the prefix stripped (e.g. 'model' -> a state_dict)."""
        p = prefix + "."
        return {k[len(p) :]: v for k, v in self.tensors.items() if k.startswith(p)}


def save_checkpoint(path: str | Path, ckpt: Checkpoint) -> None:
    """Write `ckpt` to `path` atomically (overwrites: checkpoints are the tool's own files)."""
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in ckpt.tensors.items()}
    meta = {
        "ldns.kind": ckpt.kind,
        "ldns.version": __version__,
        "ldns.config": json.dumps(ckpt.config, sort_keys=True),
        "ldns.fingerprint": json.dumps(ckpt.fingerprint, sort_keys=True),
        "ldns.extra": json.dumps(ckpt.extra, sort_keys=True),
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path, force=True, suffix=".safetensors") as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def load_checkpoint(path: str | Path, kind: str, fit_command: str = "") -> Checkpoint:
    """Load and check a checkpoint of the given kind; clean errors for every failure."""
    p = Path(path)
    hint = (
        f"run `{fit_command}` first, or use the shipped demo models in models/"
        if fit_command
        else ""
    )
    if not p.exists():
        raise LdnsError(f"no {kind} model at '{p}'", hint or "check the -m/--models folder")
    try:
        tensors = load_file(str(p))
        from safetensors import safe_open

        with safe_open(str(p), framework="pt") as fh:
            raw = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise LdnsError(
            f"'{p}' is not a readable checkpoint ({type(exc).__name__})",
            "the file is corrupt or truncated; refit the model",
        ) from None
    if "ldns.kind" not in raw:
        raise LdnsError(
            f"'{p}' is not an ldns checkpoint", "it lacks ldns metadata; refit the model"
        )
    try:
        decoded = {k: json.loads(raw[f"ldns.{k}"]) for k in ("config", "fingerprint", "extra")}
    except (KeyError, json.JSONDecodeError):
        raise LdnsError(f"'{p}' has damaged metadata", "refit the model") from None
    if raw["ldns.kind"] != kind:
        raise LdnsError(
            f"'{p}' is a {raw['ldns.kind']} checkpoint, expected {kind}",
            "check the file name or the -m/--models folder",
        )
    return Checkpoint(
        kind=kind,
        tensors=tensors,
        version=raw.get("ldns.version", "?"),
        path=p,
        **decoded,
    )


def check_data_matches(fingerprint: dict[str, Any], data_fp: dict[str, Any], what: str) -> None:
    """Raise a clean error naming both values if data does not fit a model's fingerprint."""
    n_model, n_data = fingerprint.get("n_neurons"), data_fp.get("n_neurons")
    if n_model is not None and n_model != n_data:
        raise LdnsError(
            f"the {what} was trained on {n_model} neurons, the data has {n_data}",
            "use the same recording (and unit selection) the model was fitted on, or refit",
        )
    b_model, b_data = fingerprint.get("bin_size_s"), data_fp.get("bin_size_s")
    if b_model is not None and abs(float(b_model) - float(b_data)) > 1e-9:
        raise LdnsError(
            f"the {what} was trained on {b_model * 1e3:g} ms bins, the data has {b_data * 1e3:g} ms",
            f"read the data with --bin-ms {b_model * 1e3:g}, or refit",
        )


# ---------------------------------------------------------------------------- training state
def optimizer_to_tensors(opt: torch.optim.Optimizer, prefix: str = "optim") -> tuple[dict, dict]:
    """Flatten an optimizer state_dict into safetensors-able tensors plus JSON metadata."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, state in sd["state"].items():
        for name, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{prefix}.{idx}.{name}"] = value
            else:
                scalars.setdefault(str(idx), {})[name] = value
    meta = {"param_groups": sd["param_groups"], "scalars": scalars}
    return tensors, meta


def optimizer_from_tensors(
    opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict, prefix: str = "optim"
) -> None:
    """Inverse of `optimizer_to_tensors`: load the state into `opt` in place."""
    state: dict[int, dict[str, Any]] = {}
    p = prefix + "."
    for key, value in tensors.items():
        if key.startswith(p):
            idx, name = key[len(p) :].split(".", 1)
            state.setdefault(int(idx), {})[name] = value
    for idx, values in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(values)
    groups = [
        # JSON turns tuples (Adam betas) into lists; restore them so the state is identical
        {k: tuple(v) if k == "betas" else v for k, v in g.items()}
        for g in meta["param_groups"]
    ]
    opt.load_state_dict({"state": state, "param_groups": groups})
