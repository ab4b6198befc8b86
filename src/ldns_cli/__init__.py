"""ldns: Latent Diffusion for Neural Spiking data (Kapoor et al., NeurIPS 2024) as a command-line tool."""

from ldns_cli.core.version import __version__

__all__ = ["__version__"]
