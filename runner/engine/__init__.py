"""One conversation through a backend: the SDK client, backends (the only SDK callers), retry, limits."""
