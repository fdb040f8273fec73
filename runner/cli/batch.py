"""Commands: batch (filled in by its issue)."""
