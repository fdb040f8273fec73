"""Commands: simulate (filled in by its issue)."""
