"""Fixtures of the chaos suite (imported by its test module: a conftest.py here would shadow
tests/conftest.py, which other modules import by name): a cluster of namespaced hosts per test, and
the results table.

`cluster_factory(fault_rate=0.0)` builds the hosts (removing stale ones of a killed earlier run
first), starts Redis and the simulator on A and the worker pools on B and C, and tears everything
down at the end of the test, failed or not. Each scenario's `Outcome` goes into the table, written to
`$RUNNER_TEST_ARTIFACTS/chaos.md` (else pytest's base temp directory) after every scenario and
printed in the terminal summary.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import missing_component

from chaos_cluster import Cluster, Outcome
from chaos_hosts import Lab, LabError, remove_stale, unavailable

RESULTS: dict[str, Outcome] = {}
BASELINE = "fault-free"
_table_path: list[Path] = []


def table() -> str:
    base = RESULTS.get(BASELINE)
    lines = [
        "| scenario | lost | duplicated | fenced | extra requests | wall s | vs baseline | error records | superseded |",
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
        "Chaos suite: 1,000 conversations x 2 turns (chat), hosts B and C each `runner worker -n 2 -c 16`,\n"
        "Redis (append-only) and the simulator on host A. extra requests: the simulator's requests minus\n"
        "the fault-free run's; fenced: runs stopped or records refused after a lost lease (batch counter);\n"
        "superseded: records from a run older than the job's last (see chaos_cluster.superseded_records).\n"
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


@pytest.fixture(scope="session")
def chaos_table(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> None:
    artifacts = os.environ.get("RUNNER_TEST_ARTIFACTS")
    directory = Path(artifacts) if artifacts else tmp_path_factory.getbasetemp()
    directory.mkdir(parents=True, exist_ok=True)
    _table_path[:] = [directory / "chaos.md"]
    if not request.config.pluginmanager.has_plugin("chaos-table"):
        request.config.pluginmanager.register(_Summary(), "chaos-table")


@pytest.fixture
def cluster_factory(tmp_path: Path, chaos_table: None) -> Iterator[Callable[..., Cluster]]:
    why = unavailable() or (None if shutil.which("redis-server") else "the chaos suite needs redis-server")
    if why:
        missing_component(why)
    remove_stale()
    made: list[tuple[Lab, Cluster]] = []

    def make(*, fault_rate: float = 0.0) -> Cluster:
        lab = Lab("abc")
        cluster = Cluster(lab, tmp_path, fault_rate=fault_rate)
        made.append((lab, cluster))
        try:
            lab.build()
        except LabError as e:
            missing_component(f"cannot build network namespaces here: {e}")
        cluster.start()
        return cluster

    try:
        yield make
    finally:
        for lab, cluster in made:
            cluster.close()
            lab.teardown()
            assert not lab.leftovers(), f"namespaces or links left behind: {lab.leftovers()}"
