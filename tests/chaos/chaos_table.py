"""The chaos suite's results table: each scenario's `Outcome` goes in (`record`); the table is
written to `$RUNNER_TEST_ARTIFACTS/chaos.md` (else pytest's base temp directory) after every
scenario and printed in the terminal summary (`_Summary`, registered as a plugin at run time: a
conftest.py in tests/chaos/ would shadow tests/conftest.py, which test modules import by name).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from chaos_cluster import CONCURRENCY, PROCESSES, Outcome

RESULTS: dict[str, Outcome] = {}
BASELINE = "fault-free"
_table_path: list[Path] = []


def table() -> str:
    base = RESULTS.get(BASELINE)
    columns = "lost | duplicated | fenced | extra requests | wall s | vs baseline | error records | old runs"
    lines = [
        f"| scenario | {columns} |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for o in RESULTS.values():
        extra = "null" if base is None else str(o.requests - base.requests)
        ratio = "null" if base is None else f"{o.wall_s / base.wall_s:.2f}x"
        done = "" if o.finished else " (not finished)"
        lines.append(
            f"| {o.scenario}{done} | {o.lost} | {o.duplicated} | {o.fenced} | {extra} | {o.wall_s:.1f} | "
            f"{ratio} | {o.errors} | {o.superseded} |"
        )
    notes = [f"- {o.scenario}: {o.notes}" for o in RESULTS.values() if o.notes]
    head = (
        f"Chaos suite: 1,000 conversations x 2 turns (chat), hosts B and C each "
        f"`runner worker -n {PROCESSES} -c {CONCURRENCY}`,\n"
        "Redis (append-only) and the simulator on host A. extra requests: the simulator's requests minus\n"
        "the fault-free run's; fenced: runs stopped or records refused after a lost lease (batch counter);\n"
        "old runs: records from a run older than the job's last (see chaos_cluster.superseded_records).\n"
    )
    return head + "\n" + "\n".join(lines) + ("\n\n" + "\n".join(notes) if notes else "") + "\n"


def record(outcome: Outcome) -> None:
    RESULTS[outcome.scenario] = outcome
    if _table_path:
        _table_path[0].write_text(table())


class _Summary:
    """Registered as a plugin at run time: prints the table at the end of the session."""

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if RESULTS:
            terminalreporter.write_sep("=", "chaos suite")
            terminalreporter.write(table())
            if _table_path:
                terminalreporter.write_line(f"(written to {_table_path[0]})")


def open_table(config: pytest.Config, basetemp: Path) -> None:
    """Where the table goes; the terminal summary prints it."""
    artifacts = os.environ.get("RUNNER_TEST_ARTIFACTS")
    directory = Path(artifacts) if artifacts else basetemp
    directory.mkdir(parents=True, exist_ok=True)
    _table_path[:] = [directory / "chaos.md"]
    if not config.pluginmanager.has_plugin("chaos-table"):
        config.pluginmanager.register(_Summary(), "chaos-table")
