"""The package version (one place; the checkpoints and outputs record it)."""

__version__ = "0.1.0"
