"""The `runner` command: one Click group, thin commands, one place that maps errors to exit codes.

Commands live in modules by area (`jobs`, `simulate`, `run`, `batch`, `reports`, `schedule`); each
parses its options, calls one library function and prints. `RunnerError`s become one message and
the exit code of the contract (2 bad input, 3 could not run); a traceback only with `--debug`.

Command bodies import the library lazily, on purpose: every `runner` invocation imports every
command module, and `runner validate` or `runner --help` should not pay for the SDK, RQ and the
engine (about a second on a small machine). These are the only function-local imports of the
package besides `runner.__init__` and `runner.simulator.__init__`, which are lazy for the same reason.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from runner import __version__
from runner.errors import Interrupted, RunnerError

F = TypeVar("F", bound=Callable[..., Any])


class RunnerGroup(click.Group):
    """Turns our errors into messages and exit codes; usage errors already exit 2 in Click."""

    def main(self, args: Any = None, *rest: Any, **kwargs: Any) -> Any:
        try:
            return super().main(args, *rest, **kwargs)
        except SystemExit as e:
            if args is None and kwargs.get("standalone_mode", True):  # the process's own command
                _exit_now(e.code)
            raise

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except RunnerError as e:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"error: {e}" if "\n" not in str(e) else str(e), err=True)
            ctx.exit(e.exit_code)
        except KeyboardInterrupt as e:
            # Once: an Interrupted says it with what was kept and how to finish.
            click.echo(str(e) if isinstance(e, Interrupted) else "interrupted", err=True)
            ctx.exit(130)


@click.group(cls=RunnerGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="runner")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.option("-v", "--verbose", is_flag=True, help="More log lines.")
@click.pass_context
def main(ctx: click.Context, debug: bool, verbose: bool) -> None:
    """Run scripted conversations against OpenAI-style assistants.

    \b
    Quick start (no API key, no Redis needed):
      runner run jobs/quickstart.yaml --simulate
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


def _exit_now(code: Any) -> None:
    """End the process without Python's teardown of every module and object, which takes half a
    second or more once the SDK's types are loaded (measured: `runner run`'s parent and each worker
    paid it on every run). As at a normal exit, other threads that are not daemons are waited for,
    exit handlers run and output is flushed first."""
    import atexit
    import threading

    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()

    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)  # what sys.exit("message") prints
        code = 1
    atexit._run_exitfuncs()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed, or a broken pipe: nothing more can be said
            code = code or 1
    os._exit(code or 0)


def redis_option(f: F) -> F:
    """`--redis-url`, shared by every command that talks to the queue (default: $REDIS_URL)."""
    return click.option(
        "--redis-url",
        default=lambda: os.environ.get("REDIS_URL"),
        show_default="$REDIS_URL, or a private embedded Redis",
        help="Redis to queue on (redis://, rediss://, unix://).",
    )(f)


# Command modules register themselves on `main`; imported last so they can import `main`.
from runner.cli import batch, jobs, reports, run, schedule, simulate, view  # noqa: E402,F401
