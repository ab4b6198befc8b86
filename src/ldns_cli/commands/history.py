"""CLI commands: history (to be filled)."""
