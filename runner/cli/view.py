"""`runner view`: the local web view of batches and transcript files (see `runner.view`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import click
import redis as redis_lib

from runner.cli import main, redis_option
from runner.settings import Settings


@contextlib.contextmanager
def _redis(redis_url: str | None, files: tuple[str, ...]) -> Iterator[tuple[redis_lib.Redis | None, str]]:
    """The Redis to show: the given one, a running `runner run`'s embedded one, or the embedded
    Redis's data; none when only files were given and no Redis is known."""
    from runner.cli.batch import _open
    from runner.queue.redis_server import live_embedded_url, mask_url

    settings = Settings.from_env()
    url = redis_url or live_embedded_url(settings.home)
    if url is None and files and not (settings.home / "redis").is_dir():
        yield None, ""
        return
    with _open(url) as client:
        label = mask_url(url) if url else f"embedded ({settings.home / 'redis'})"
        yield client, label


@main.command()
@click.argument("files", nargs=-1, type=click.Path(exists=True, dir_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (keep it local).")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True)
@redis_option
@click.option("--allow-actions", is_flag=True, help="Add retry-failed and cancel buttons to batch pages.")
def view(files: tuple[str, ...], host: str, port: int, redis_url: str | None, allow_actions: bool) -> None:
    """Serve a live web view of the batches on Redis and of transcript FILES, until Ctrl-C.

    Without --redis-url/REDIS_URL it shows the embedded Redis of a `runner run` going on in this
    directory (or the one it left). Read-only unless --allow-actions.

    \b
    Example:
      runner view runs/old.jsonl runs/new.jsonl      # then open http://127.0.0.1:8765/
      ssh -L 8765:127.0.0.1:8765 build-host          # a remote machine's view, kept local there
    """
    from runner.view import ViewConfig, create_app
    from runner.view.server import allowed_hosts, exposed, serve

    with _redis(redis_url, files) as (client, label):
        config = ViewConfig(
            redis=client,
            redis_label=label,
            files=files,
            allow_actions=allow_actions,
            allowed_hosts=allowed_hosts(host),
            queue_secret=Settings.from_env().queue_secret,
        )
        app = create_app(config)  # reads the files: a broken one is bad input (exit 2), nothing served
        if exposed(host):
            click.echo(
                f"warning: listening on {host}, reachable from other machines; the view has no login"
                + (" and --allow-actions lets anyone retry or cancel batches" if allow_actions else "")
                + ". Prefer 127.0.0.1 and an SSH port forward.",
                err=True,
            )
        click.echo(
            f"runner view on http://{'127.0.0.1' if host == '0.0.0.0' else host}:{port}/ (Ctrl-C stops)"
        )
        serve(app, host, port)
