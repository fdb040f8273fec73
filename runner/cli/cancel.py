"""Command: `runner cancel BATCH` for batches run through the provider's Batch API (`--batch-api`):
their provider batches are cancelled too, and the unfinished conversations recorded as cancelled."""

from __future__ import annotations

import click

from runner.cli import main, redis_option
from runner.cli.batch import _open
from runner.errors import UsageError
from runner.settings import Settings


@main.command()
@click.argument("batch")
@redis_option
def cancel(batch: str, redis_url: str | None) -> None:
    """Cancel BATCH: its provider batches (a --batch-api run) are cancelled at the provider, and
    its unfinished conversations are recorded as cancelled; then `runner collect BATCH`.

    \b
    Example:
      runner cancel refund-bot-20261126T210000-1a2b
    """
    from runner.run.batch_api import cancel_provider_batches

    with _open(redis_url) as client:
        ids = cancel_provider_batches(batch, client, Settings.from_env())
    if ids is None:
        raise UsageError(f"batch {batch} was not run with --batch-api: nothing to cancel at the provider")
    shown = ", ".join(ids) if ids else "none in flight"
    click.echo(f"batch {batch} cancelled; provider batches cancelled: {shown}")
