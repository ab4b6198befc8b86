"""The LDNS autoencoder: spike counts -> smooth time-aligned latents -> Poisson rates.

Architecture (ldns-reference.md §1.2–1.3; channels-last `[B, L, C]` throughout, so every 1×1
layer is one GEMM over B·L rows and the counts need no transpose):

    counts [B, L, N] -> 1×1 in-projection N→C
      -> blocks × (masked InstanceNorm over time, unconditional adaLN shift/scale, S4, GELU,
                   per-channel scale+bias, residual; then norm, channel MLP C→2C→C, residual)
      -> grouped 1×1 bottleneck C→Z (latent j reads its own block of C/Z channels)   = z
    z -> grouped 1×1 unbottleneck Z→Z·k (each hidden unit sees one latent) -> GELU
      -> dense 1×1 → N -> softplus                                                  = rates

The decoder is time-local and additive over latents (§8.1), so decoding padded or long samples is
safe and all temporal structure lives in z. Norm statistics use valid bins only and padded bins
are zeroed before every S4 convolution, so padding never leaks into valid outputs (§8.4).

Objective (§1.4): coordinated dropout (elementwise keep-mask, kept counts rescaled by 1/(1−p)),
Poisson NLL (with Stirling term) on the *dropped* entries only, divided by the number of valid
neuron-bins; plus [β1·Σz² + β2·Σ_{k=1..5} Σ_t ‖z_t − z_{t+k}‖²/(1+k)] / (N·valid bins).
The public API is `[B, L, ·]` (trial, time, feature) like `SpikeData`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ldns_cli.core.checkpoint import Checkpoint, check_data_matches, load_checkpoint
from ldns_cli.core.config import config_from_dict
from ldns_cli.core.errors import LdnsError
from ldns_cli.diffusion.model import DiffusionModel, diffusion_from_checkpoint, weights_id
from ldns_cli.nn.autoencoder import AEConfig, Autoencoder
from ldns_cli.nn.observation import (
    HistoryConfig,
    Observation,
    PoissonObservation,
    SpikeHistoryObservation,
)

AE_FILE = "ae.safetensors"
AE_KIND = "ae"
FIT_COMMAND = "ldns fit-ae DATA"


# ---------------------------------------------------------------------------- checkpoints
def ae_path(models_dir: str | Path) -> Path:
    return Path(models_dir) / AE_FILE


def model_from_checkpoint(ckpt: Checkpoint, device: str | torch.device = "cpu") -> Autoencoder:
    """Rebuild the autoencoder from a checkpoint's saved config and best weights."""
    cfg_dict = ckpt.config.get("ae", ckpt.config)
    cfg = config_from_dict(AEConfig, cfg_dict, source=str(ckpt.path or "checkpoint"))
    model = Autoencoder(cfg)
    state = ckpt.subset("model")
    if not state:
        raise LdnsError(f"'{ckpt.path}' holds no model weights", "refit: " + FIT_COMMAND)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise LdnsError(
            f"'{ckpt.path}' does not match this version's autoencoder "
            f"(missing {len(missing)}, unexpected {len(unexpected)} tensors)",
            "refit with this version: " + FIT_COMMAND,
        )
    return model.to(device).eval()


def load_autoencoder(
    models_dir: str | Path, device: str | torch.device = "cpu"
) -> tuple[Autoencoder, Checkpoint]:
    """Load `models_dir/ae.safetensors` (clean LdnsError when missing or damaged)."""
    ckpt = load_checkpoint(ae_path(models_dir), AE_KIND, fit_command=FIT_COMMAND)
    return model_from_checkpoint(ckpt, device), ckpt


DIFFUSION_FILE = "diffusion.safetensors"


def check_belongs_to_ae(diff_fp: dict[str, Any], ae_ckpt: Checkpoint, where: Path) -> None:
    """Clean error if a diffusion checkpoint was trained on another autoencoder."""
    ae_id = weights_id(ae_ckpt.tensors)
    if diff_fp.get("ae_id") != ae_id:
        raise LdnsError(
            f"the diffusion model in '{where}' was trained on a different autoencoder "
            f"(AE {diff_fp.get('ae_id', '?')}, found {ae_id})",
            "refit it with `ldns fit-diffusion DATA -m "
            f"{where}` after fit-ae, or keep each model pair in its own folder",
        )


def load_diffusion(
    models_dir: str | Path, device: torch.device | str, ae_checkpoint: Checkpoint | None = None
) -> DiffusionModel:
    """Load `models_dir/diffusion.safetensors` and check it belongs to the AE next to it."""
    folder = Path(models_dir)
    ckpt = load_checkpoint(
        folder / DIFFUSION_FILE, "diffusion", fit_command="ldns fit-diffusion DATA"
    )
    if ae_checkpoint is None:
        ae_checkpoint = load_checkpoint(folder / AE_FILE, "ae", fit_command="ldns fit-ae DATA")
    check_belongs_to_ae(ckpt.fingerprint, ae_checkpoint, folder)
    return diffusion_from_checkpoint(ckpt, device)


HISTORY_FILE = "history.safetensors"
OBSERVATION_KINDS = ("auto", "history", "poisson")


# ---------------------------------------------------------------------------- storage
def history_path(models_dir: Path) -> Path:
    return Path(models_dir) / HISTORY_FILE


FIT_HINT = (
    "fit it with `ldns fit-history DATA -m MODELS` (on a fitted autoencoder) or "
    "`ldns fit-ae DATA --spike-history`, or use --observation poisson"
)


def load_history(
    models_dir: Path, device: str = "cpu"
) -> tuple[SpikeHistoryObservation, Checkpoint]:
    """Load the fitted spike-history model; a clean `LdnsError` if there is none."""
    path = history_path(models_dir)
    if not path.exists():
        raise LdnsError(f"no spike-history model in '{models_dir}'", FIT_HINT)
    ckpt = load_checkpoint(path, "history")
    try:
        cfg = config_from_dict(HistoryConfig, ckpt.config, source=str(path))
        n_neurons = int(ckpt.fingerprint["n_neurons"])
        model = SpikeHistoryObservation(
            n_neurons, cfg.history_bins, cfg.max_count, cfg.coupling_rank
        )
        model.load_state_dict(ckpt.subset("model"), strict=True)
    except (KeyError, RuntimeError, TypeError, ValueError) as exc:
        raise LdnsError(
            f"'{path}' does not hold a usable spike-history model ({type(exc).__name__})",
            "refit it with `ldns fit-history DATA`",
        ) from None
    return model.to(device).eval(), ckpt


def load_observation(
    models_dir: Path,
    kind: str = "auto",
    device: str = "cpu",
    fingerprint: dict[str, Any] | None = None,
) -> Observation:
    """The observation model to sample with: "history", "poisson" or "auto" (history if fitted).

    `fingerprint` (e.g. the AE checkpoint's) is checked against the history model's, so a history
    model fitted for other data is a clear error rather than a shape crash.
    """
    if kind not in OBSERVATION_KINDS:
        raise LdnsError(
            f"unknown observation model '{kind}'", f"use one of: {', '.join(OBSERVATION_KINDS)}"
        )
    if kind == "poisson" or (kind == "auto" and not history_path(models_dir).exists()):
        return PoissonObservation().to(device)
    model, ckpt = load_history(models_dir, device)
    if fingerprint is not None:
        check_data_matches(ckpt.fingerprint, fingerprint, "spike-history model")
    return model
