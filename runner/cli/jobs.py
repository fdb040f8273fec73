"""Commands about job files: `runner validate FILE...` and `runner schema`."""

from __future__ import annotations

import json
from pathlib import Path

import click

from runner.cli import main
from runner.errors import JobFileError, Problem


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _job_files(paths: tuple[str, ...]) -> list[str]:
    """The files to validate: a folder stands for the *.yaml / *.yml files in it."""
    files: list[str] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            found = sorted(str(f) for f in path.iterdir() if f.suffix in (".yaml", ".yml") and f.is_file())
            files += found or [p]
        else:
            files.append(p)
    return files


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=True))
def validate(files: tuple[str, ...]) -> None:
    """Check job files (and their datasets) without running anything.

    Prints one summary line per valid file; every problem of every file otherwise, each as
    PATH:LINE: where.in.file: what is wrong. Exits 0 when all are valid, 2 otherwise.

    \b
    Examples:
      runner validate jobs/quickstart.yaml
      runner validate jobs/
    """
    from runner.jobs import expand, load_job

    failed = False
    for name in _job_files(files):
        try:
            if Path(name).is_dir():
                raise JobFileError([Problem(name, None, "", "no *.yaml or *.yml files in this folder")])
            job = load_job(name)
            tasks = expand(job)
        except JobFileError as e:
            failed = True
            for problem in e.problems:
                click.echo(str(problem), err=True)
            continue
        for warning in job.warnings:
            click.echo(str(warning), err=True)
        turns = sum(len(t.turns) for t in tasks)
        checks = sum(len(turn.expect) for t in tasks for turn in t.turns) + sum(len(t.expect) for t in tasks)
        summary = (
            f"{_plural(len(tasks), 'conversation')}, {_plural(turns, 'turn')}, {_plural(checks, 'check')}"
        )
        click.echo(f"{name}: ok: {summary}")
    if failed:
        raise SystemExit(2)


@main.command()
def schema() -> None:
    """Print the job file's JSON Schema (for editors: yaml-language-server, VS Code, JetBrains).

    \b
    Example:
      runner schema > job.schema.json
      # then, first line of a job file:
      # yaml-language-server: $schema=./job.schema.json
    """
    from runner.jobs import job_schema

    click.echo(json.dumps(job_schema(), indent=2))
