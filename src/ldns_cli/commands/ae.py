"""CLI commands: ae (to be filled)."""
