"""CLI commands: sample (to be filled)."""
