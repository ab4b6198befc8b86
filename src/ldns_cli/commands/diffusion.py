"""CLI commands: diffusion (to be filled)."""
