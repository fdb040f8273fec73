"""`runner view`: a local web app over the batches on a Redis and over transcript files.

`app.create_app(ViewConfig(...))` builds the Starlette app; `server.serve` runs it with uvicorn.
A layer between the CLI and the rest: it reads batches (`queue`), transcripts and diffs
(`reports`), and acts only through the same functions as `runner retry` / `runner cancel`.
"""

from runner.view.app import ViewConfig, create_app

__all__ = ["ViewConfig", "create_app"]
