"""ldns: Latent Diffusion for Neural Spiking data (Kapoor et al., NeurIPS 2024).

The command line is `ldns` (`ldns_cli.cli`); the Python API is this package's face:

    import ldns_cli as ldns
    m = ldns.load("models")
    fake = m.sample(8, length=140, conditions={"angle": 0.5}, seed=0)

The API's names are loaded on first use (`ldns_cli.api`), so importing the package, and `ldns
--help`, do not import torch.
"""

from __future__ import annotations

from typing import Any

from ldns_cli.core.version import __version__

_API = (
    "AutoencoderFit", "DiffusionFit", "GeneratedChunk", "LdnsError", "Models", "SpikeData",
    "TrialPlan", "audit", "encode", "evaluate", "fit_autoencoder", "fit_diffusion", "fit_history",
    "load", "read", "simulate", "write",
)  # fmt: skip

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        from ldns_cli import api

        return getattr(api, name)
    raise AttributeError(f"module 'ldns_cli' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(__all__)
