"""The model folder: its file names (here and nowhere else), loading every model it holds, and
the identity checks that keep a folder's models together.

A folder holds `ae.safetensors` (the autoencoder), `history.safetensors` (the spike-history
observation model, optional) and `diffusion.safetensors` (the denoiser, which records the hash of
the autoencoder it was trained on). `load_models` loads and cross-checks all of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ldns_cli.core.checkpoint import Checkpoint, check_data_matches, load_checkpoint, load_weights
from ldns_cli.core.config import config_from_dict
from ldns_cli.core.errors import LdnsError
from ldns_cli.core.paths import check_model_target
from ldns_cli.diffusion.model import DiffusionModel, diffusion_from_checkpoint, weights_id
from ldns_cli.nn.autoencoder import AEConfig, Autoencoder
from ldns_cli.nn.observation import (
    SPIKES,
    HistoryConfig,
    Observation,
    PoissonObservation,
    SpikeHistoryObservation,
    auto_selected,
)

AE_FILE = "ae.safetensors"
HISTORY_FILE = "history.safetensors"
DIFFUSION_FILE = "diffusion.safetensors"
AE_KIND = "ae"
FIT_COMMAND = "ldns fit-ae DATA"


# ---------------------------------------------------------------------------- checkpoints
def ae_path(models_dir: str | Path) -> Path:
    return Path(models_dir) / AE_FILE


def _extra_of(path: Path) -> dict[str, Any] | None:
    """A checkpoint's `extra` metadata without loading its tensors; None when missing or
    unreadable (loading the model later names the problem)."""
    import json

    from safetensors import safe_open

    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="pt") as fh:
            extra = json.loads((fh.metadata() or {}).get("ldns.extra", "{}"))
    except Exception:
        return None
    return extra if isinstance(extra, dict) else None


def read_options_of(models_dir: str | Path) -> dict[str, Any] | None:
    """How the autoencoder's training recording was read (bin size, alignment, window, chop,
    trial selection), from its checkpoint's metadata alone; None when the folder has no
    autoencoder or it was fitted before this was recorded."""
    extra = _extra_of(ae_path(models_dir)) or {}
    data = extra.get("data")
    options = data.get("read_options") if isinstance(data, dict) else None
    return options if isinstance(options, dict) else None


def stored_checks(models_dir: str | Path) -> dict[str, Any]:
    """The condition checks the fits stored (`fit.checks`): {"autoencoder": {...} (fit-ae's
    real/autoencoder stages), "diffusion": {...} (real/autoencoder/samples at the chosen
    guidance), "guidance": {...} (the measured curve and weight)}; missing parts are left out."""
    out: dict[str, Any] = {}
    ae = _extra_of(ae_path(models_dir)) or {}
    summary = ae.get("summary")
    if isinstance(summary, dict) and summary.get("condition_checks"):
        out["autoencoder"] = summary["condition_checks"]
    diff = _extra_of(diffusion_path(models_dir)) or {}
    if diff.get("condition_checks"):
        out["diffusion"] = diff["condition_checks"]
    if isinstance(diff.get("guidance"), dict):
        out["guidance"] = diff["guidance"]
    return out


def alignment_of(models_dir: str | Path) -> tuple[str, float] | None:
    """(event column, start of bin 0 relative to it in s) when the training trials were cut
    around an event (`--align COL --window A B`): generated trials mean the same."""
    options = read_options_of(models_dir) or {}
    align, window = options.get("align"), options.get("window_s")
    if isinstance(align, str) and isinstance(window, list) and len(window) == 2:
        return align, float(window[0])
    return None


def diffusion_path(models_dir: str | Path) -> Path:
    return Path(models_dir) / DIFFUSION_FILE


STAGE_FILES = {"ae": (AE_FILE, "autoencoder"), "diffusion": (DIFFUSION_FILE, "diffusion model")}


def check_fit_target(models_dir: str | Path, stage: str, force: bool) -> None:
    """Refuse to fit `stage` ("ae" or "diffusion") over a fitted one unless `force`."""
    name, what = STAGE_FILES[stage]
    check_model_target(Path(models_dir) / name, force, what)


def stale_after_refit(models_dir: str | Path, keep_history: bool) -> list[str]:
    """Files in the folder that belong to the autoencoder about to be replaced (the history
    model is refit with it when `keep_history`)."""
    names = [DIFFUSION_FILE] + ([] if keep_history else [HISTORY_FILE])
    return [name for name in names if (Path(models_dir) / name).exists()]


def model_from_checkpoint(ckpt: Checkpoint, device: str | torch.device = "cpu") -> Autoencoder:
    """Rebuild the autoencoder from a checkpoint's saved config and best weights."""
    cfg_dict = ckpt.config.get("ae", ckpt.config)
    cfg = config_from_dict(AEConfig, cfg_dict, source=str(ckpt.path or "checkpoint"))
    model = Autoencoder(cfg)
    state = ckpt.subset("model")
    if not state:
        raise LdnsError(f"'{ckpt.path}' holds no model weights", "refit: " + FIT_COMMAND)
    load_weights(model, state, ckpt, "autoencoder", FIT_COMMAND)
    return model.to(device).eval()


def load_autoencoder(
    models_dir: str | Path, device: str | torch.device = "cpu"
) -> tuple[Autoencoder, Checkpoint]:
    """Load `models_dir/ae.safetensors` (clean LdnsError when missing or damaged)."""
    ckpt = load_checkpoint(ae_path(models_dir), AE_KIND, fit_command=FIT_COMMAND)
    return model_from_checkpoint(ckpt, device), ckpt


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
        diffusion_path(folder), "diffusion", fit_command="ldns fit-diffusion DATA"
    )
    if ae_checkpoint is None:
        ae_checkpoint = load_checkpoint(ae_path(folder), AE_KIND, fit_command=FIT_COMMAND)
    check_belongs_to_ae(ckpt.fingerprint, ae_checkpoint, folder)
    return diffusion_from_checkpoint(ckpt, device)


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
    """Load the fitted spike-history model; a clean `LdnsError` if there is none.

    The per-neuron ceiling (`selection.count_cap`), excitation bound
    (`selection.excitation_bound`), count dispersion (`selection.count_dispersion`) and the
    copula's count correlation (`selection.count_correlation`, [N, N]) are applied when stored;
    the per-neuron choice
    (`selection.use_history`, [N] bool) is attached as `neuron_choice` but not applied (see
    `load_observation`). A checkpoint whose settings predate `max_excitation` has no bound.
    """
    path = history_path(models_dir)
    if not path.exists():
        raise LdnsError(f"no spike-history model in '{models_dir}'", FIT_HINT)
    ckpt = load_checkpoint(path, "history")
    try:
        cfg = config_from_dict(HistoryConfig, ckpt.config, source=str(path))
        n_neurons = int(ckpt.fingerprint["n_neurons"])
        bound = cfg.max_excitation if "max_excitation" in ckpt.config else None
        # settings saved before the choice existed: the kernels filtered the past counts
        history_input = cfg.history_input if "history_input" in ckpt.config else SPIKES
        model = SpikeHistoryObservation(
            n_neurons, cfg.history_bins, cfg.max_count, cfg.coupling_rank,
            max_excitation=bound, history_input=history_input,
        )  # fmt: skip
        model.load_state_dict(ckpt.subset("model"), strict=True)
        model = model.to(device).eval()
        selection = ckpt.subset("selection")
        cap = selection.get("count_cap")
        choice = selection.get("use_history")
        per_neuron_bound = selection.get("excitation_bound")
        dispersion = selection.get("count_dispersion")
        for t in (cap, choice, per_neuron_bound, dispersion):
            if t is not None and t.shape != (n_neurons,):
                raise ValueError(f"selection tensor of shape {tuple(t.shape)}")
        model.set_selection(None, cap)
        model.set_excitation_bound(per_neuron_bound)
        model.set_count_dispersion(dispersion)
        model.set_count_correlation(selection.get("count_correlation"))
        model.neuron_choice = None if choice is None else choice.bool()  # type: ignore[attr-defined]
    except (KeyError, RuntimeError, TypeError, ValueError) as exc:
        raise LdnsError(
            f"'{path}' does not hold a usable spike-history model ({type(exc).__name__})",
            "refit it with `ldns fit-history DATA`",
        ) from None
    return model, ckpt


def load_observation(
    models_dir: Path,
    kind: str = "auto",
    device: str = "cpu",
    fingerprint: dict[str, Any] | None = None,
) -> Observation:
    """The observation model to sample with: "history", "poisson" or "auto".

    "auto": the spike-history model when fitted, with each neuron the fit judged to generate
    better as plain Poisson made Poisson (its stored per-neuron choice; every neuron history for
    a model fitted without one); Poisson when no history model is fitted. "history": the history
    model for every neuron. Both keep the fitted per-neuron count ceiling; "poisson" is plain
    Poisson(r). `fingerprint` (e.g. the AE checkpoint's) is checked against the history
    model's, so a history model fitted for other data is a clear error rather than a shape crash.
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
    return auto_selected(model) if kind == "auto" else model


@dataclass
class ModelSet:
    """Everything `sample` needs from a model folder, loaded and checked to belong together."""

    folder: Path
    ae: Autoencoder
    ae_checkpoint: Checkpoint
    diffusion: DiffusionModel
    observation: Observation


def load_models(
    models_dir: str | Path, device: str | torch.device = "cpu", observation: str = "auto"
) -> ModelSet:
    """Load the autoencoder, the diffusion model and the observation model of a folder.

    `observation`: "auto" (the spike-history model when fitted, else Poisson), "history" or
    "poisson". The diffusion and history models are checked against the autoencoder.
    """
    folder = Path(models_dir)
    ae, ae_ckpt = load_autoencoder(folder, device)
    diffusion = load_diffusion(folder, device, ae_ckpt)
    obs = load_observation(folder, observation, str(device), fingerprint=ae_ckpt.fingerprint)
    return ModelSet(folder, ae, ae_ckpt, diffusion, obs)
