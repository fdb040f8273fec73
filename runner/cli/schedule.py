"""Commands: schedule (filled in by its issue)."""
