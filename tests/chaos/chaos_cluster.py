"""The chaos suite's cluster: host A runs redis-server (append-only) and the simulator, hosts B and C
run `runner worker` pools, and the driver (this pytest process) enqueues and collects.

The driver reaches Redis through its unix socket (network namespaces do not separate the
filesystem), so no address is added outside the namespaces; it reads the simulator's stats with a
one-line client run inside host A.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import redis
from chaos_hosts import Host, Lab, LabError
from rq.job import Job as RQJob
from rq.serializers import JSONSerializer

from runner.jobs import expand, load_job
from runner.queue.batch import Batch
from runner.queue.collector import collect
from runner.queue.conversations import job_id_for
from runner.queue.enqueue import enqueue_job
from runner.queue.redis_server import connect
from runner.records import read_records

CONVERSATIONS = 1000
TURNS = 2
REDIS_PORT = 6379
SIM_PORT = 8000
SIM_LATENCY_S = 0.2  # each turn in flight for a while, so every fault finds requests under way
PROCESSES = 2  # per worker host
CONCURRENCY = 8  # per worker process: ~15 s of fault-free work, ~70 conversations a second
SETTLE_S = 5.0
"""After the batch is done: how long the fenced count and the simulator's request count must stay
still before they are read (a run stalled in a partition wakes up a few seconds after the heal)."""
API_KEY = "sk-test-chaos-0d5e3b7a91c4"
FINISH_TIMEOUT_S = 240.0
STALL_S = 60.0
"""No conversation done for this long (longer than any fault window plus a lease and a reaper beat):
the batch is stuck, say so now rather than at the timeout."""

_STATS = (
    "import sys, urllib.request; "
    "sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())"
)


@dataclass
class Outcome:
    """What a scenario left behind (one row of the table)."""

    scenario: str
    total: int
    lost: int
    duplicated: int
    fenced: int
    requests: int
    wall_s: float
    errors: int  # records whose status is not `completed` (there, once: not lost)
    superseded: int  # records whose run is older than the job's last run (see `superseded_records`)
    finished: bool
    notes: str = ""


class Cluster:
    def __init__(self, lab: Lab, work: Path, *, fault_rate: float = 0.0) -> None:
        self.lab = lab
        self.work = work
        self.fault_rate = fault_rate
        self.a, self.b, self.c = (lab.hosts[n] for n in "abc")
        self.socket = Path("/tmp") / f"{lab.tag}.sock"  # short: AF_UNIX paths are limited
        self.redis_proc: subprocess.Popen[bytes] | None = None
        self.pools: dict[str, subprocess.Popen[bytes]] = {}
        self._client: redis.Redis | None = None
        self.expected: set[str] = set()

    # -- host A ------------------------------------------------------------------------------------

    @property
    def redis_url(self) -> str:
        return f"redis://{self.a.addr}:{REDIS_PORT}/0"

    @property
    def sim_url(self) -> str:
        return f"http://{self.a.addr}:{SIM_PORT}"

    def start_redis(self) -> None:
        data = self.work / "redis"
        data.mkdir(parents=True, exist_ok=True)
        conf = data / "redis.conf"
        conf.write_text(
            "\n".join([
                "daemonize no", f"dir {data}", f"logfile {data / 'redis.log'}", "save ''",
                "appendonly yes", "appendfsync everysec",  # as `runner run`'s own Redis
                f"bind {self.a.addr}", f"port {REDIS_PORT}", "protected-mode no",
                f"unixsocket {self.socket}", "unixsocketperm 700",
            ]) + "\n"
        )  # fmt: skip
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        self.redis_proc = self.a.start(["redis-server", str(conf)], data / "stdout.log", dict(os.environ))
        deadline = time.monotonic() + 30
        probe = redis.Redis(unix_socket_path=str(self.socket), socket_connect_timeout=1)
        try:
            while time.monotonic() < deadline:
                if self.redis_proc.poll() is not None:
                    raise LabError(f"redis-server exited: {(data / 'redis.log').read_text()[-500:]}")
                with contextlib.suppress(redis.RedisError):
                    if probe.ping():
                        return
                time.sleep(0.05)
        finally:
            probe.close()
        raise LabError("redis-server did not answer within 30 s")

    def kill_redis(self) -> None:
        """SIGKILL: no shutdown, no last fsync; what is in the append-only file is what survives."""
        assert self.redis_proc is not None
        self.redis_proc.send_signal(signal.SIGKILL)
        self.redis_proc.wait(10)

    def start_simulator(self) -> None:
        cmd = [sys.executable, "-m", "runner", "simulate", "--host", self.a.addr, "--port", str(SIM_PORT),
               "--latency", str(SIM_LATENCY_S), "--seed", "16"]  # fmt: skip
        if self.fault_rate:
            cmd += ["--fault-rate", str(self.fault_rate), "--fault-after-share", "0.5"]
        env = {**os.environ, "RUNNER_SIMULATOR_VALIDATE": "1"}  # audit every answer (conftest's rule)
        self.a.start(cmd, self.work / "simulator.log", env)
        deadline = time.monotonic() + 60
        while True:
            try:
                self.sim_stats()
                return
            except (LabError, subprocess.TimeoutExpired):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)

    def sim_stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = json.loads(
            self.a.run([sys.executable, "-c", _STATS, f"{self.sim_url}/_simulator/stats"], timeout=20)
        )
        return stats

    # -- hosts B and C -----------------------------------------------------------------------------

    def start_workers(self, host: Host) -> subprocess.Popen[bytes]:
        env = {
            **os.environ,
            "OPENAI_BASE_URL": f"{self.sim_url}/v1",
            "OPENAI_API_KEY": API_KEY,
            "RUNNER_HOME": str(self.work / f"home-{host.name}"),
        }
        env.pop("REDIS_URL", None)
        cmd = [sys.executable, "-m", "runner", "worker", "-n", str(PROCESSES), "-c", str(CONCURRENCY),
               "--redis-url", self.redis_url]  # fmt: skip
        proc = self.pools[host.name] = host.start(cmd, self.log(host), env)
        return proc

    def log(self, host: Host) -> Path:
        return self.work / f"workers-{host.name}.log"

    def worker_pids(self, host: Host) -> list[int]:
        """The worker processes of a host's pool (its children), not the pool itself."""
        return [p.pid for p in psutil.Process(self.pools[host.name].pid).children(recursive=False)]

    # -- the driver --------------------------------------------------------------------------------

    @property
    def client(self) -> redis.Redis:
        if self._client is None:
            self._client = connect(f"unix://{self.socket}")
        return self._client

    def start(self) -> None:
        self.start_redis()
        self.start_simulator()
        for host in (self.b, self.c):
            self.start_workers(host)
        expected = 2 * PROCESSES
        deadline = time.monotonic() + 90
        while self.client.zcard("runner:workers") < expected:
            for name, pool in self.pools.items():
                if pool.poll() is not None:
                    tail = self.log(self.lab.hosts[name]).read_text()[-800:]
                    raise LabError(f"host {name}: worker pool exited: {tail}")
            if time.monotonic() > deadline:
                raise LabError(f"workers did not register within 90 s: {self.log(self.b).read_text()[-800:]}")
            time.sleep(0.2)

    def enqueue(self) -> str:
        from test_queue_support import write_job

        path = write_job(self.work / "chaos.yaml", "chaos", conversations=CONVERSATIONS, turns=TURNS)
        job = load_job(path)
        self.expected = {t.conversation_id for t in expand(job)}
        return enqueue_job(job, redis=self.client, output=str(self.work / "chaos.jsonl"))

    def done(self, batch_id: str) -> int | None:
        """Conversations done so far; None while Redis does not answer (it may be down on purpose)."""
        try:
            return Batch(self.client, batch_id).require().done
        except (redis.RedisError, OSError):
            return None
        except Exception as e:  # QueueError from the retrying client while Redis is away
            if "Redis" in str(e):
                return None
            raise

    def wait_done(self, batch_id: str, at_least: int, timeout: float = FINISH_TIMEOUT_S) -> int:
        """Conversations done once `at_least` are (or all of them are: the caller checks)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            n = self.done(batch_id)
            if n is not None and n >= min(at_least, len(self.expected)):
                return n
            time.sleep(0.1)
        raise AssertionError(f"{at_least} conversations not done within {timeout:.0f}s (done: {n})")

    def settle(self, batch_id: str, timeout: float = 60.0) -> None:
        """Wait until the fenced count and the simulator's requests stay still for SETTLE_S."""
        deadline = time.monotonic() + timeout
        last: tuple[int, int] | None = None
        since = time.monotonic()
        while time.monotonic() < deadline:
            now = (Batch(self.client, batch_id).require().counts.get("fenced", 0), self.requests())
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= SETTLE_S:
                return
            time.sleep(0.5)

    def requests(self) -> int:
        return int(self.sim_stats()["requests_total"])

    def finished(self, batch_id: str) -> bool:
        try:
            info = Batch(self.client, batch_id).require()
        except redis.RedisError:
            return False
        return info.finished and info.counts["running"] == 0 and info.counts["queued"] == 0

    def wait_finished(self, batch_id: str, timeout: float = FINISH_TIMEOUT_S) -> bool:
        """True once the batch is done; False after `timeout`, or after STALL_S without progress."""
        deadline = time.monotonic() + timeout
        last, since = None, time.monotonic()
        while time.monotonic() < deadline:
            if self.finished(batch_id):
                return True
            done = self.done(batch_id)
            if done != last:
                last, since = done, time.monotonic()
            elif time.monotonic() - since > STALL_S:
                return False
            time.sleep(0.2)
        return False

    def unfinished(self, batch_id: str) -> str:
        """Where each conversation that is not done stands: its batch state, its RQ job's status and
        the last line of that job's last failure, if any."""
        batch = Batch(self.client, batch_id)
        states = {k.decode(): v.decode() for k, v in self.client.hgetall(batch.keys["state"]).items()}
        lines = []
        for conv in sorted(self.expected):
            if states.get(conv) == "done":
                continue
            job = RQJob.fetch_many(
                [job_id_for(batch_id, conv)], connection=self.client, serializer=JSONSerializer
            )[0]
            status = (
                "no RQ job"
                if job is None
                else f"RQ job {getattr(job.get_status(refresh=False), 'value', '?')}"
            )
            result = None if job is None else job.latest_result()
            why = (result.exc_string or "").strip().splitlines()[-1:] if result is not None else []
            lines.append(f"{conv}: {states.get(conv)}, {status}{': ' + why[0] if why else ''}")
        return "; ".join(lines)

    def outcome(self, scenario: str, batch_id: str, wall_s: float, finished: bool) -> Outcome:
        records = list(read_records(collect(batch_id, self.client)))
        ids = Counter(r["conversation_id"] for r in records)
        # Stored more than once would show in the arrival log even though the JSONL is a hash's view.
        arrivals = Counter(x.decode() for x in self.client.lrange(f"runner:batch:{batch_id}:log", 0, -1))
        expected = self.expected
        info = Batch(self.client, batch_id).require()
        return Outcome(
            scenario=scenario,
            total=len(records),
            lost=len(expected - set(ids)),
            duplicated=sum(n - 1 for n in ids.values()) + sum(n - 1 for n in arrivals.values()),
            fenced=info.counts.get("fenced", 0),
            requests=self.requests(),
            wall_s=wall_s,
            errors=sum(1 for r in records if r["status"] != "completed"),
            superseded=len(superseded_records(self.client, batch_id, records)),
            finished=finished,
        )

    def log_counts(self) -> str:
        """What the workers' logs say happened (a cross-check of the batch's counters, which a
        Redis restarted from its append-only file may have lost the last second of)."""
        logs = [self.log(h) for h in (self.b, self.c)]
        text = "".join(p.read_text(errors="replace") for p in logs if p.exists())
        counts = {
            "lease-lost": len(re.findall(r"job \S+: lease lost \(token \d+\)", text)),  # fence's own line
            "spooled": text.count("spooled to "),
            "dead workers' conversations requeued": sum(
                int(m) for m in re.findall(r"requeued (\d+) conversation\(s\) of dead workers", text)
            ),
        }
        return "worker logs: " + ", ".join(f"{k} {v}" for k, v in counts.items())

    def close(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()


def superseded_records(client: redis.Redis, batch_id: str, records: list[dict[str, Any]]) -> list[str]:
    """Conversations whose record comes from a run older than their job's last run.

    Each re-run of a conversation (the reaper taking a job back) re-enqueues the same RQ job with
    `attempt + 1` and bumps its fencing token, so a run older than the job's last attempt is one
    that was fenced off. Its record may still be the stored one only if it was stored before the
    job was taken back (the worker stalled between storing and telling RQ); a record stored after
    (a fencing failure) looks the same, so this is reported, not asserted."""
    ids = [job_id_for(batch_id, r["conversation_id"]) for r in records]
    jobs = RQJob.fetch_many(ids, connection=client, serializer=JSONSerializer)
    return [
        r["conversation_id"]
        for r, job in zip(records, jobs, strict=True)
        if job is not None and r["attempts"] < int(job.kwargs.get("attempt", 1))
    ]


def run_scenario(
    cluster: Cluster, scenario: str, chaos: Callable[[Cluster, str], str] | None = None
) -> Outcome:
    """Enqueue the batch, let `chaos` do its damage (it returns a note), wait until the batch is done."""
    batch_id = cluster.enqueue()
    t0 = time.monotonic()
    note = chaos(cluster, batch_id) if chaos is not None else ""
    finished = cluster.wait_finished(batch_id)
    wall = time.monotonic() - t0
    cluster.settle(batch_id)
    outcome = cluster.outcome(scenario, batch_id, wall, finished)
    stuck = "" if finished else f"NOT DONE: {cluster.unfinished(batch_id)}"
    outcome.notes = "; ".join(filter(None, [note, cluster.log_counts(), stuck]))
    return outcome
