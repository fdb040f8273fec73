"""Many machines, real failures: 1,000 conversations x 2 turns on hosts B and C while things break.

Host A (a network namespace) runs redis-server (append-only) and the simulator; hosts B and C run
`runner worker -n 2 -c 16` pools; the driver (this process) enqueues and collects. One scenario per
failure, then all together (tests/chaos/README.md). Afterwards, every conversation is in the JSONL
exactly once and the batch completed; fenced runs, extra API requests (the simulator's count minus
the fault-free run's) and wall time go into the table (chaos.md), not into assertions.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from chaos_cluster import CONVERSATIONS, Cluster, Outcome, run_scenario
from chaos_hosts import Lab, LabError, links, namespaces, remove_stale, unavailable
from chaos_table import open_table, record
from conftest import missing_component

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(420)]

WINDOW_S = 20.0
"""How long a partition or a SIGSTOP lasts."""

REDIS_DOWN_S = 12.0
"""How long a SIGKILLed Redis stays down: past the 10 s leases and the fence's 6 s of trust, so
the workers' riding out of an outage (records spooled, leases re-taken) is what is tested."""

START = 150
"""Conversations done before the first fault strikes (mid-run: the batch has 1,000)."""

Factory = Callable[..., Cluster]


@pytest.fixture(scope="session")
def chaos_table(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> None:
    open_table(request.config, tmp_path_factory.getbasetemp())


@pytest.fixture
def cluster_factory(tmp_path: Path, chaos_table: None) -> Iterator[Factory]:
    """`make(fault_rate=0.0)`: hosts built (stale ones of a killed earlier run removed first),
    Redis and the simulator started on A, worker pools on B and C; all torn down after the test,
    failed or not."""
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


def mid_run(cluster: Cluster, batch_id: str, at_least: int) -> int:
    """Wait until `at_least` conversations are done; the batch must not be finished yet (a fault
    after the end would prove nothing)."""
    done = cluster.wait_done(batch_id, at_least)
    assert done < CONVERSATIONS, f"the batch finished before the fault ({done} done)"
    return done


def partition_b(cluster: Cluster, batch_id: str) -> str:
    at = mid_run(cluster, batch_id, START)
    cluster.b.partition()
    try:
        time.sleep(WINDOW_S)
    finally:
        cluster.b.heal()
    return f"B cut off from A at {at} done for {WINDOW_S:.0f} s (link down)"


def kill_c(cluster: Cluster, batch_id: str) -> str:
    at = mid_run(cluster, batch_id, START)
    pids = cluster.c.kill_all()
    assert len(pids) >= 3, f"host C ran its pool and workers: {pids}"
    return f"SIGKILL to all {len(pids)} processes of C at {at} done"


def kill_redis(cluster: Cluster, batch_id: str) -> str:
    at = mid_run(cluster, batch_id, START)
    cluster.kill_redis()
    time.sleep(REDIS_DOWN_S)
    cluster.start_redis()  # the same config and directory: it loads its append-only file
    return f"redis-server SIGKILLed at {at} done, restarted from its AOF {REDIS_DOWN_S:.0f} s later"


def stop_worker(cluster: Cluster, batch_id: str) -> str:
    at = mid_run(cluster, batch_id, START)
    pid = cluster.worker_pids(cluster.b)[0]
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(WINDOW_S)
    finally:
        os.kill(pid, signal.SIGCONT)
    return f"one worker of B SIGSTOPped at {at} done for {WINDOW_S:.0f} s"


def everything(cluster: Cluster, batch_id: str) -> str:
    """10% faults throughout (the cluster's simulator); B partitioned while a worker of C is
    stopped (C's other worker carries on alone); then Redis killed and restarted; then every
    process of C killed, leaving B to finish."""
    at = mid_run(cluster, batch_id, START)
    stopped = cluster.worker_pids(cluster.c)[0]
    cluster.b.partition()
    os.kill(stopped, signal.SIGSTOP)
    try:
        time.sleep(WINDOW_S)
    finally:
        cluster.b.heal()
        os.kill(stopped, signal.SIGCONT)
    notes = [f"at {at} done: B cut off and a worker of C stopped for {WINDOW_S:.0f} s"]
    at = mid_run(cluster, batch_id, (cluster.done(batch_id) or 0) + 30)
    cluster.kill_redis()
    time.sleep(REDIS_DOWN_S)
    cluster.start_redis()
    notes.append(f"at {at}: Redis SIGKILLed, restarted {REDIS_DOWN_S:.0f} s later")
    at = mid_run(cluster, batch_id, (cluster.done(batch_id) or 0) + 30)
    cluster.c.kill_all()
    notes.append(f"at {at}: every process of C SIGKILLed")
    return "; ".join(notes)


def check(cluster: Cluster, outcome: Outcome) -> None:
    record(outcome)
    logs = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-1500:]}" for p in _logs(cluster))
    assert outcome.finished, f"the batch did not complete: {outcome}\n{logs}"
    assert (outcome.lost, outcome.duplicated) == (0, 0), f"{outcome}\n{logs}"
    assert outcome.total == CONVERSATIONS
    stats = cluster.sim_stats()
    assert stats["schema_violations"] == 0, stats["schema_violation_samples"]


def _logs(cluster: Cluster) -> list[Path]:
    return sorted(p for p in cluster.work.glob("*.log"))


def test_fault_free_baseline(cluster_factory: Factory) -> None:
    cluster = cluster_factory()
    outcome = run_scenario(cluster, "fault-free")
    check(cluster, outcome)
    assert outcome.fenced == 0 and outcome.errors == 0


def test_partition_host_b(cluster_factory: Factory) -> None:
    cluster = cluster_factory()
    check(cluster, run_scenario(cluster, "B partitioned 20 s", partition_b))


def test_sigkill_host_c(cluster_factory: Factory) -> None:
    cluster = cluster_factory()
    check(cluster, run_scenario(cluster, "C SIGKILLed", kill_c))


def test_sigkill_redis_restart_from_aof(cluster_factory: Factory) -> None:
    cluster = cluster_factory()
    check(cluster, run_scenario(cluster, "Redis SIGKILLed, AOF restart", kill_redis))


def test_sigstop_worker(cluster_factory: Factory) -> None:
    cluster = cluster_factory()
    check(cluster, run_scenario(cluster, "worker SIGSTOPped 20 s", stop_worker))


def test_simulator_faults(cluster_factory: Factory) -> None:
    cluster = cluster_factory(fault_rate=0.1)
    outcome = run_scenario(cluster, "10% simulator faults")
    check(cluster, outcome)
    stats = cluster.sim_stats()
    assert stats["faults"] > 0 and stats["faults_after_processing"] > 0  # lost answers among them


def test_all_together(cluster_factory: Factory) -> None:
    cluster = cluster_factory(fault_rate=0.1)
    check(cluster, run_scenario(cluster, "all together", everything))


def test_stale_hosts_of_a_killed_run_are_removed(tmp_path: Path) -> None:
    """A run SIGKILLed before its finalizers leaves namespaces, links and processes; the next run
    removes them (its pytest process is gone), and leaves a live run's alone."""
    why = unavailable()
    if why:
        missing_component(why)
    script = (
        "import os, signal, sys, pathlib\n"
        "from chaos_hosts import Lab\n"
        "lab = Lab('ab').build()\n"
        "lab.hosts['a'].start(['sleep', '300'], pathlib.Path(sys.argv[1]), dict(os.environ))\n"
        "print(lab.tag, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
    killed = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "sleep.log")], capture_output=True, text=True, env=env
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    tag = killed.stdout.strip()
    assert [n for n in namespaces() + links() if n.startswith(tag)], "the killed run left nothing to clean"
    live = Lab("a").build()
    try:
        removed = remove_stale()
        assert f"{tag}-a" in removed and f"{tag}-b" in removed
        assert not [n for n in namespaces() + links() if n.startswith(tag)]
        assert live.leftovers(), "a live run's namespaces are not stale"
    finally:
        live.teardown()
    assert not live.leftovers()
