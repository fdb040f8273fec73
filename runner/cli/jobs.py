"""Commands: jobs (filled in by its issue)."""
