"""CLI commands: evaluate (to be filled)."""
