"""Command: `runner simulate`, the local OpenAI-compatible simulator, served until Ctrl-C."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from types import FrameType

import click

from runner.cli import main
from runner.errors import UsageError
from runner.simulator.config import (
    DEFAULT_BATCH_LATENCY_S,
    DEFAULT_FAULT_AFTER_SHARE,
    DEFAULT_LATENCY_S,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MODELS,
    DEFAULT_RUN_TTL_S,
    REJECTED_KEYS,
    SimulatorConfig,
    load_rules,
    parse_models,
    validate_from_env,
)
from runner.simulator.rules import SimulatorRules


def _rules(ctx: click.Context, param: click.Parameter, value: str | None) -> SimulatorRules | None:
    if value is None:
        return None
    try:
        return load_rules(value)
    except UsageError as e:
        raise click.BadParameter(str(e), ctx, param) from None


def _models(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, ...]:
    models = parse_models(value)
    if not models:
        raise click.BadParameter("name at least one model, or '*' for any", ctx, param)
    return models


def _verbose_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    log = logging.getLogger("runner.simulator")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="0 picks a free port."
)
@click.option(
    "--latency",
    type=click.FloatRange(min=0),
    help=f"Seconds a run stays in progress [default: the rules' latency_s, else {DEFAULT_LATENCY_S}].",
)
@click.option(
    "--rpm", type=click.IntRange(min=1), help="Requests per minute allowed per API key (429 beyond)."
)
@click.option("--tpm", type=click.IntRange(min=1), help="Tokens per minute allowed per API key (429 beyond).")
@click.option(
    "--fault-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Share of requests answered 500/503 or dropped, and of runs that fail.",
)
@click.option(
    "--fault-after-share",
    type=click.FloatRange(0, 1),
    default=DEFAULT_FAULT_AFTER_SHARE,
    show_default=True,
    help="Share of faults striking after processing: created, then the answer lost (or a stream cut).",
)
@click.option(
    "--models",
    default=",".join(DEFAULT_MODELS),
    show_default=True,
    callback=_models,
    help="Comma-separated model names accepted (others: 404 model_not_found); '*' accepts any.",
)
@click.option(
    "--max-body-bytes",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_BODY_BYTES,
    show_default=True,
    help="Larger request bodies get 413.",
)
@click.option(
    "--validate-responses",
    is_flag=True,
    help="Check every answer against OpenAI's schemas; violations in /_simulator/stats "
    "(also RUNNER_SIMULATOR_VALIDATE=1).",
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed of latency jitter, faults and ids."
)
@click.option(
    "--rules",
    "rules",
    type=click.Path(exists=True, dir_okay=False),
    callback=_rules,
    help="YAML rules (or a job file: its simulator: block) deciding the replies.",
)
@click.option("--quota-exhausted", is_flag=True, help="Answer every request 429 insufficient_quota.")
@click.option(
    "--run-ttl",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_RUN_TTL_S,
    show_default=True,
    help="Seconds until an active run expires (expires_at).",
)
@click.option("--poll-after-ms", type=click.IntRange(min=1), help="openai-poll-after-ms sent on run reads.")
@click.option(
    "--batch-latency",
    type=click.FloatRange(min=0),
    default=DEFAULT_BATCH_LATENCY_S,
    show_default=True,
    help="Seconds a Batch API batch takes to complete (the compressed 24 h clock).",
)
@click.option(
    "--batch-fault-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Share of batch lines answered with a 500 in the batch's error file.",
)
@click.option(
    "--batch-expire-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Share of batches that expire with half their lines unrun.",
)
@click.option("--verbose", is_flag=True, help="Log one line per request (method, path, status, ms).")
def simulate(
    host: str,
    port: int,
    latency: float | None,
    rpm: int | None,
    tpm: int | None,
    fault_rate: float,
    fault_after_share: float,
    models: tuple[str, ...],
    max_body_bytes: int,
    validate_responses: bool,
    seed: int,
    rules: SimulatorRules | None,
    quota_exhausted: bool,
    run_ttl: float,
    poll_after_ms: int | None,
    batch_latency: float,
    batch_fault_rate: float,
    batch_expire_rate: float,
    verbose: bool,
) -> None:
    """Serve the OpenAI-compatible simulator (Assistants v2, Responses, Chat Completions) until Ctrl-C.

    Any non-empty API key is accepted, except "sk-invalid", which always gets 401.

    \b
    Examples:
      runner simulate --port 8000 --latency 0.5
      runner simulate --rules jobs/quickstart.yaml --rpm 60 --fault-rate 0.05 --seed 1
    """
    from runner.simulator.server import start_simulator

    rules = rules or SimulatorRules()
    if latency is None:
        latency = rules.latency_s if rules.latency_s is not None else DEFAULT_LATENCY_S
    config = SimulatorConfig(
        latency_s=latency,
        rpm=rpm,
        tpm=tpm,
        fault_rate=fault_rate,
        fault_after_share=fault_after_share,
        models=models,
        max_body_bytes=max_body_bytes,
        seed=seed,
        rules=rules,
        quota_exhausted=quota_exhausted,
        run_ttl_s=run_ttl,
        poll_after_ms=poll_after_ms,
        verbose=verbose,
        validate_responses=validate_responses or validate_from_env(),
        batch_latency_s=batch_latency,
        batch_fault_rate=batch_fault_rate,
        batch_expire_rate=batch_expire_rate,
    )
    if verbose:
        _verbose_logging()
    sim = start_simulator(config, host, port)  # SimulatorError: exit 3 with the reason
    rejected = ", ".join(sorted(REJECTED_KEYS))
    click.echo(f"Simulator listening on {sim.base_url}")
    click.echo(f"  export OPENAI_BASE_URL={sim.base_url}")
    click.echo(f"  export OPENAI_API_KEY=sk-simulator   # any non-empty key works; {rejected} gets 401")
    click.echo("Press Ctrl-C to stop.", nl=True)
    sys.stdout.flush()
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        sim.stop()
    click.echo("Simulator stopped.")
