"""ldns: Latent Diffusion for Neural Spiking data (Kapoor et al., NeurIPS 2024) as a command-line tool."""

__version__ = "0.1.0"
