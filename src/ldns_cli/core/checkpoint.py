"""Self-describing safetensors checkpoints (no pickles).

One file per stage (`ae`, `history`, `diffusion`). Tensors are the weights (plus optional
training state for `--resume`); the safetensors string metadata carries, as JSON:

    ldns.kind         "ae" | "history" | "diffusion"
    ldns.version      package version that wrote it
    ldns.config       the fully resolved config (frozen dataclasses -> dict)
    ldns.fingerprint  the data it was trained on (SpikeData.fingerprint()) or its parent model's
    ldns.extra        stage-specific JSON (normalisation stats, training summary, resume info)
    ldns.format       the checkpoint layout's version (absent in files written before it existed)
    ldns.sha256       a hash of every tensor (name, dtype, shape, bytes) and of the metadata above

Writes are atomic (temporary file + rename). Loading checks, in order, that the file is readable,
is an ldns checkpoint of the expected kind and of a format this version reads, that its content
still hashes to what was written (a file changed afterwards is named as such, instead of being
discovered later through a mismatched model id), and that every floating-point tensor is finite;
`load_weights` then checks each tensor's name, shape and dtype against the module the saved
settings build. Every failure is an `LdnsError` naming the file.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ldns_cli.core.errors import LdnsError
from ldns_cli.core.paths import atomic_output
from ldns_cli.core.version import __version__

FORMAT_VERSION = 1  # bump when the layout changes; older formats keep loading
_HASHED_KEYS = ("ldns.kind", "ldns.config", "ldns.fingerprint", "ldns.extra", "ldns.format")


def content_hash(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> str:
    """SHA-256 over every tensor (name, dtype, shape, bytes, in name order) and the metadata."""
    h = hashlib.sha256()
    for key in _HASHED_KEYS:
        h.update(f"{key}={meta.get(key, '')}\n".encode())
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


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
        "ldns.format": str(FORMAT_VERSION),
    }
    meta["ldns.sha256"] = content_hash(tensors, meta)
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
    if raw["ldns.kind"] != kind:
        raise LdnsError(
            f"'{p}' is a {raw['ldns.kind']} checkpoint, expected {kind}",
            "check the file name or the -m/--models folder",
        )
    _check_integrity(p, tensors, raw)
    try:
        decoded = {k: json.loads(raw[f"ldns.{k}"]) for k in ("config", "fingerprint", "extra")}
    except (KeyError, json.JSONDecodeError):
        raise LdnsError(f"'{p}' has damaged metadata", "refit the model") from None
    if not all(isinstance(v, dict) for v in decoded.values()):
        raise LdnsError(f"'{p}' has damaged metadata", "refit the model")
    _check_fingerprint(p, decoded["fingerprint"])
    return Checkpoint(
        kind=kind,
        tensors=tensors,
        version=raw.get("ldns.version", "?"),
        path=p,
        **decoded,
    )


DAMAGED_HINT = "the file is damaged: restore it from a copy, or refit the model"


def _check_integrity(p: Path, tensors: dict[str, torch.Tensor], raw: dict[str, str]) -> None:
    """Format version, content hash (when the file has one) and finite floating-point tensors."""
    fmt = raw.get("ldns.format", "0")
    if not fmt.isdigit():
        raise LdnsError(f"'{p}' has damaged metadata (format '{fmt}')", DAMAGED_HINT)
    if int(fmt) > FORMAT_VERSION:
        raise LdnsError(
            f"'{p}' was written by a newer ldns (checkpoint format {fmt}; this version reads "
            f"up to {FORMAT_VERSION})",
            "upgrade ldns (pip install -U ldns-cli)",
        )
    stored = raw.get("ldns.sha256")
    if stored is not None and stored != content_hash(tensors, raw):
        raise LdnsError(
            f"'{p}' was changed after ldns wrote it (content hash mismatch)", DAMAGED_HINT
        )
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise LdnsError(
                f"'{p}' holds {bad} non-finite value(s) (NaN or inf) in tensor {name}", DAMAGED_HINT
            )


def _check_fingerprint(p: Path, fp: dict[str, Any]) -> None:
    """The data description every stage relies on, where recorded: a positive whole neuron
    count and a positive finite bin size."""
    n, b = fp.get("n_neurons", 1), fp.get("bin_size_s", 1.0)
    n_ok = isinstance(n, int) and not isinstance(n, bool) and n > 0
    b_ok = isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b) and b > 0
    if not (n_ok and b_ok):
        raise LdnsError(
            f"'{p}' has a damaged data fingerprint (n_neurons {fp.get('n_neurons')!r}, "
            f"bin_size_s {fp.get('bin_size_s')!r})",
            DAMAGED_HINT,
        )


def load_weights(
    module: torch.nn.Module, state: dict[str, torch.Tensor], ckpt: Checkpoint, what: str, refit: str
) -> None:
    """Load `state` into `module` after checking every tensor's name, shape and dtype against
    the module (built from the checkpoint's saved settings); a clean error names the first
    tensor that does not fit."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise LdnsError(
            f"'{ckpt.path}' does not match this version's {what} (missing {len(missing)}, "
            f"unexpected {len(unexpected)} tensors)",
            f"refit with this version: {refit}",
        )
    for name, ref in expected.items():
        t = state[name]
        if tuple(t.shape) != tuple(ref.shape) or t.dtype != ref.dtype:
            raise LdnsError(
                f"'{ckpt.path}': tensor {name} is {t.dtype} {tuple(t.shape)}, the saved "
                f"settings build {ref.dtype} {tuple(ref.shape)}",
                DAMAGED_HINT,
            )
    module.load_state_dict(state, strict=True)


def check_data_matches(fingerprint: dict[str, Any], data_fp: dict[str, Any], what: str) -> None:
    """Raise a clean error naming both values if data does not fit a model's fingerprint."""
    n_model, n_data = fingerprint.get("n_neurons"), data_fp.get("n_neurons")
    if n_model is not None and n_model != n_data:
        raise LdnsError(
            f"the {what} was trained on {n_model} neurons, the data has {n_data}",
            "use the same recording (and unit selection) the model was fitted on, or refit",
        )
    b_model, b_data = fingerprint.get("bin_size_s"), data_fp.get("bin_size_s")
    if b_model is not None and b_data is not None and abs(float(b_model) - float(b_data)) > 1e-9:
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
