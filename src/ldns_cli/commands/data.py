"""CLI commands: data (to be filled)."""
