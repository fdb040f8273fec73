"""The main job, `runner run FILE`: validate, (simulate), execute inline or on the queue, write.

The command in `runner.cli.run` only parses options and prints; everything it does is here so the
Python API (`from runner import run_job`) behaves exactly like the CLI.
"""

from __future__ import annotations

import contextlib

from runner.errors import MissingKeyError
from runner.jobs import expand, load_job
from runner.run.inline import run_inline
from runner.run.options import RunOptions, RunOutcome
from runner.run.queued import run_batch
from runner.run.simulated import simulated_environment
from runner.settings import Settings


def run_job(job_path: str, options: RunOptions, settings: Settings | None = None) -> RunOutcome:
    """Run every conversation of the job file once and write its JSONL; returns what happened.

    `settings` default to the environment's."""
    settings = settings or Settings.from_env()
    job = load_job(job_path)  # raises JobFileError (exit 2) before anything is sent
    tasks = expand(job)
    if options.batch_api or job.batch_api:
        from runner.queue.batch_api import endpoint_of

        for api in {t.api for t in tasks}:
            endpoint_of(api)  # assistants: exit 2 before anything starts
    with contextlib.ExitStack() as stack:
        if options.simulate:
            settings = stack.enter_context(simulated_environment(job, settings))
        try:
            if options.batch_api or job.batch_api:
                from runner.run.batch_api import run_batch_api

                return run_batch_api(job, tasks, options, settings)
            if options.inline:
                return run_inline(job, tasks, options, settings)
            return run_batch(job, tasks, options, settings)
        except MissingKeyError as e:
            if options.simulate:
                raise
            raise MissingKeyError(f"{e} (or use --simulate to run against the simulator)") from None
