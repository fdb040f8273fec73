"""Filling a tier from one machine: `runner run` with default flags beside `--inline` and the seed loop.

The simulator runs as a separate process (`runner simulate --latency 3 --rpm 3000`: ceiling 50
turns/s at one request per turn). N single-turn conversations (Assistants API) from a job file with
no `limits:` block. Each configuration is its own process tree, measured from outside, in one run:

- `run`: `runner run job.yaml` with default flags (embedded Redis, pool sized by `runner run`);
- `inline`: `runner run job.yaml --inline` at the same conversations in flight;
- `seed-threads`: the seed's polling loop (bench/throughput.py: add the message, create the run,
  poll every second, list the messages) in threads at the same conversations in flight, retrying a
  429 after a second (the seed had no limiter).

Scenario `two-jobs` (`--scenario two-jobs`): two different job files on one API key, started
together, each `runner run` with default flags and its own embedded Redis... which would give each
its own limiter; so both use one shared Redis (`REDIS_URL`, a redis-server this bench starts) as a
team would: one budget, one cooldown.

Per configuration: turns/s (end to end), the share of the ceiling over the steady part (turn starts
the simulator accepted between 10 % and 90 % of them), 429s as a share of requests, requests per
turn, peak RSS of the process tree and CPU-seconds per turn (the tree's user + system time, from
the rusage of waited-for children). One JSON line each, then a table.

    python bench/scale.py [--conversations 6000] [--latency 3] [--rpm 3000] [--scenario one-job|two-jobs]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Simulator:
    """`runner simulate --latency L [--rpm R]` as a separate process, read through its stats endpoint."""

    def __init__(self, latency_s: float, rpm: int | None = None) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        command = [
            sys.executable,
            "-m",
            "runner",
            "simulate",
            "--port",
            str(self.port),
            "--latency",
            str(latency_s),
        ]
        if rpm:
            command += ["--rpm", str(rpm)]
        quiet = subprocess.DEVNULL
        self.process = subprocess.Popen(command, cwd=ROOT, stdout=quiet, stderr=quiet)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                self.stats()
                return
            except OSError:
                time.sleep(0.2)
        raise SystemExit("the simulator did not start")

    @property
    def url(self) -> str:
        return f"{self.base}/v1"

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.base}/_simulator/stats", timeout=5) as r:
            return dict(json.loads(r.read()))

    def reset(self) -> None:
        request = urllib.request.Request(f"{self.base}/_simulator/reset", method="POST")
        urllib.request.urlopen(request, timeout=5).close()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def write_job(path: Path, name: str, conversations: int, concurrency: int | None = None) -> None:
    doc: dict[str, Any] = {
        "name": name,
        "model": "gpt-4o-mini",
        "assistants": {"bench": {"name": "Bench Bot", "instructions": "Answer briefly."}},
        "conversations": [
            {"id": f"c{i:05d}", "turns": [{"user": f"question {i}"}]} for i in range(conversations)
        ],
    }
    if concurrency:  # only for --inline: it has no pool to size, only the job's concurrency
        doc["limits"] = {"concurrency": concurrency}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def seed_threads_main(base_url: str, conversations: int, threads: int) -> None:
    """The seed's polling loop (as in bench/throughput.py), one conversation per thread at a time."""
    import warnings

    import openai

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    client = openai.OpenAI(base_url=base_url, api_key=os.environ["OPENAI_API_KEY"], max_retries=0)

    def call(fn: Any, *args: Any, **kwargs: Any) -> Any:
        while True:
            try:
                return fn(*args, **kwargs)
            except openai.RateLimitError:
                time.sleep(1.0)

    assistant = call(client.beta.assistants.create, model="gpt-4o-mini", name="Bench Bot")

    def conversation(i: int) -> None:
        thread = call(client.beta.threads.create)
        call(client.beta.threads.messages.create, thread.id, role="user", content=f"question {i}")
        run = call(client.beta.threads.runs.create, thread.id, assistant_id=assistant.id)
        while run.status in ("queued", "in_progress", "cancelling"):
            time.sleep(1.0)
            run = call(client.beta.threads.runs.retrieve, run.id, thread_id=thread.id)
        call(client.beta.threads.messages.list, thread.id, order="desc", limit=20)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(conversation, range(conversations)))


def _turn_starts(stats: dict[str, Any]) -> int:
    """Run creates the simulator accepted (one per turn), 429s taken off."""
    routes = stats["by_route"]
    runs = routes.get("POST /v1/threads/runs", 0) + routes.get("POST /v1/threads/{thread_id}/runs", 0)
    return int(runs) - int(stats["429"])


def _is_worker(p: psutil.Process) -> bool:
    """A process of the worker side: `runner worker` (and anything it forked)."""
    with contextlib.suppress(psutil.Error):
        return "worker" in p.cmdline()
    return False


class TreeSampler:
    """Peak RSS of the process trees (and of their worker side: `runner worker` and its children),
    peak PSS (shared pages counted once, sampled every second: reading smaps is slow), and turn
    starts over time (from the simulator)."""

    PSS_EVERY_S = 1.0

    def __init__(self, pids: list[int], sim: Simulator) -> None:
        self.pids, self.sim = pids, sim
        self.peak_rss = self.peak_worker_rss = self.peak_pss = self.peak_worker_pss = 0
        self.samples: list[tuple[float, int]] = []
        self.cpu: dict[int, tuple[str, float]] = {}  # pid: (role, CPU-seconds last seen)
        self.rss_by_role: dict[str, int] = {}  # peak RSS of one process of each role
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        last_stats = last_pss = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            rss = worker_rss = pss = worker_pss = 0
            with_pss = now - last_pss >= self.PSS_EVERY_S
            for pid in self.pids:
                with contextlib.suppress(psutil.Error):
                    root = psutil.Process(pid)
                    tree = [root, *root.children(recursive=True)]
                    workers = {c.pid for p in tree if _is_worker(p) for c in [p, *p.children(True)]}
                    for p in tree:
                        with contextlib.suppress(psutil.Error):
                            m = p.memory_info().rss
                            t = p.cpu_times()
                            role = self.cpu.get(p.pid, ("", 0.0))[0] or (  # as first seen
                                "worker" if p.pid in workers else "redis" if "redis" in p.name() else "run"
                            )
                            self.cpu[p.pid] = (role, t.user + t.system)
                            self.rss_by_role[role] = max(self.rss_by_role.get(role, 0), m)
                            rss += m
                            worker_rss += m if p.pid in workers else 0
                            if with_pss:
                                q = p.memory_full_info().pss
                                pss += q
                                worker_pss += q if p.pid in workers else 0
            self.peak_rss = max(self.peak_rss, rss)
            self.peak_worker_rss = max(self.peak_worker_rss, worker_rss)
            if with_pss:
                self.peak_pss = max(self.peak_pss, pss)
                self.peak_worker_pss = max(self.peak_worker_pss, worker_pss)
                last_pss = now
            if now - last_stats >= 0.25:
                with contextlib.suppress(OSError):
                    self.samples.append((now, _turn_starts(self.sim.stats())))
                last_stats = now
            self._stop.wait(0.1)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def cpu_by_role(self) -> dict[str, float]:
        """CPU-seconds per role (`run`: the command itself; `worker`; `redis`), as last sampled."""
        out: dict[str, float] = {}
        for role, cpu in self.cpu.values():
            out[role] = out.get(role, 0.0) + cpu
        return out

    def steady_rate(self, turns: int) -> float:
        """Turn starts per second between 10 % and 90 % of all turns (start-up and tail left out)."""
        lo = next((t, n) for t, n in self.samples if n >= 0.1 * turns)
        hi = next(((t, n) for t, n in self.samples if n >= 0.9 * turns), self.samples[-1])
        return (hi[1] - lo[1]) / max(1e-9, hi[0] - lo[0])


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def measure(
    name: str, commands: list[list[str]], envs: list[dict[str, str]], sim: Simulator, turns: int, rpm: int
) -> dict[str, Any]:
    sim.reset()
    load_before = os.getloadavg()[0]  # the machine is shared: what else ran is part of the figure
    cpu0, began = _children_cpu(), time.monotonic()
    procs = [
        subprocess.Popen(c, env=e, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for c, e in zip(commands, envs, strict=True)
    ]
    sampler = TreeSampler([p.pid for p in procs], sim)
    outputs = [p.communicate() for p in procs]
    wall = time.monotonic() - began
    sampler.stop()
    cpu = _children_cpu() - cpu0
    for p, (out, err) in zip(procs, outputs, strict=True):
        if p.returncode not in (0, 1):
            raise SystemExit(f"{name} failed ({p.returncode}):\n{out}\n{err}")
    stats = sim.stats()
    sampler.samples.append((time.monotonic(), _turn_starts(stats)))
    ceiling = rpm / 60
    requests = int(stats["requests_total"])
    # Turn starts are run creates less 429s: true when 429s fall on run creates only (ours: one
    # request per turn); the seed loop meets them on every route, so its steady rate is unknown.
    steady = round(sampler.steady_rate(turns) / ceiling, 3) if name != "seed-threads" else None
    row = {
        "bench": "scale",
        "config": name,
        "turns": turns,
        "rpm_limit": rpm,
        "wall_s": round(wall, 1),
        "turns_per_s": round(turns / wall, 2),
        "ceiling_turns_per_s": round(ceiling, 1),
        "steady_share_of_ceiling": steady,
        "requests_per_turn": round(requests / turns, 2),
        "429s": int(stats["429"]),
        "429_share": round(int(stats["429"]) / max(1, requests), 4),
        "peak_rss_mb": round(sampler.peak_rss / 2**20, 1),
        "peak_worker_rss_mb": round(sampler.peak_worker_rss / 2**20, 1) if sampler.peak_worker_rss else None,
        "peak_pss_mb": round(sampler.peak_pss / 2**20, 1),
        "peak_worker_pss_mb": round(sampler.peak_worker_pss / 2**20, 1) if sampler.peak_worker_pss else None,
        "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "cpu_ms_per_turn": round(cpu / turns * 1000, 2),
        "cpu_ms_per_turn_by_role": {k: round(v / turns * 1000, 2) for k, v in sampler.cpu_by_role().items()},
        "peak_rss_mb_by_role": {k: round(v / 2**20, 1) for k, v in sampler.rss_by_role.items()},
    }
    print(json.dumps(row), flush=True)
    return row


def _check_output(path: Path, conversations: int) -> None:
    ids = [json.loads(line)["conversation_id"] for line in path.read_text().splitlines()]
    if not len(ids) == len(set(ids)) == conversations:
        raise SystemExit(f"{path}: {len(ids)} records, {len(set(ids))} distinct, {conversations} expected")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--conversations", type=int, default=6000)
    parser.add_argument("--latency", type=float, default=3.0)
    parser.add_argument("--rpm", type=int, default=3000)
    parser.add_argument("--scenario", choices=("one-job", "two-jobs"), default="one-job")
    parser.add_argument("--configs", default="run,inline,seed-threads")
    parser.add_argument("--seed-threads", nargs=3, metavar=("URL", "N", "THREADS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.seed_threads:
        seed_threads_main(args.seed_threads[0], int(args.seed_threads[1]), int(args.seed_threads[2]))
        return
    sys.path.insert(0, str(ROOT))
    from runner.run.queued import pool_size

    # What `runner run`'s pool converges to once its workers learned the limit and the turn time (it
    # starts at 64 and grows): the others get the same conversations in flight.
    processes, per_process = pool_size(args.conversations, args.rpm, args.latency, None)
    in_flight = processes * per_process
    sim = Simulator(args.latency, args.rpm)
    rows = []
    run = [sys.executable, "-m", "runner", "run"]
    try:
        with tempfile.TemporaryDirectory(prefix="scale-") as tmp:
            base_env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
            base_env.update(OPENAI_BASE_URL=sim.url)
            if args.scenario == "two-jobs":
                rows.append(_two_jobs(Path(tmp), args, sim, base_env))
            else:
                job = Path(tmp) / "scale.yaml"
                write_job(job, "scale", args.conversations)
                for config in args.configs.split(","):
                    env = dict(
                        base_env, OPENAI_API_KEY=f"sk-bench-{config}", RUNNER_HOME=f"{tmp}/home-{config}"
                    )
                    out = Path(tmp) / f"{config}.jsonl"
                    if config == "run":
                        command = [*run, str(job), "-o", str(out), "--no-progress"]
                    elif config == "inline":
                        inline_job = Path(tmp) / "scale-inline.yaml"
                        write_job(inline_job, "scale", args.conversations, concurrency=in_flight)
                        command = [*run, str(inline_job), "--inline", "-o", str(out), "--no-progress"]
                    else:
                        out = Path()
                        command = [
                            sys.executable,
                            __file__,
                            "--seed-threads",
                            sim.url,
                            str(args.conversations),
                            str(in_flight),
                        ]
                    row = measure(config, [command], [env], sim, args.conversations, args.rpm)
                    row["in_flight"] = in_flight
                    if out != Path():
                        _check_output(out, args.conversations)
                    rows.append(row)
    finally:
        sim.stop()
    _table(rows, args)


def _two_jobs(
    tmp: Path, args: argparse.Namespace, sim: Simulator, base_env: dict[str, str]
) -> dict[str, Any]:
    """Two job files on one key, one shared Redis, started together."""
    port = free_port()
    redis = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL
    )
    try:
        time.sleep(0.5)
        half = args.conversations // 2
        commands, envs, outs = [], [], []
        for name in ("nightly", "bulk-eval"):
            job = tmp / f"{name}.yaml"
            write_job(job, name, half)
            out = tmp / f"{name}.jsonl"
            outs.append(out)
            commands.append(
                [sys.executable, "-m", "runner", "run", str(job), "-o", str(out), "--no-progress"]
            )
            envs.append(
                dict(
                    base_env,
                    OPENAI_API_KEY="sk-bench-shared",
                    REDIS_URL=f"redis://127.0.0.1:{port}/0",
                    RUNNER_HOME=str(tmp / f"home-{name}"),
                )
            )
        row = measure("two-jobs", commands, envs, sim, 2 * half, args.rpm)
        for out in outs:
            _check_output(out, half)
        return row
    finally:
        redis.terminate()
        redis.wait(10)


def _table(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print()
    head = ("config", "turns/s", "steady/ceiling", "429 share", "req/turn", "peak RSS MB", "worker RSS MB",
            "peak PSS MB", "CPU ms/turn", "load")  # fmt: skip
    line = "{:<13} {:>8} {:>14} {:>9} {:>8} {:>11} {:>13} {:>11} {:>11} {:>9}"
    print(line.format(*head))
    for r in rows:
        cells = (
            r["config"],
            f"{r['turns_per_s']:.1f}",
            "?" if r["steady_share_of_ceiling"] is None else f"{r['steady_share_of_ceiling']:.0%}",
            f"{r['429_share']:.2%}",
            f"{r['requests_per_turn']:.2f}",
            f"{r['peak_rss_mb']:.0f}",
            "-" if r["peak_worker_rss_mb"] is None else f"{r['peak_worker_rss_mb']:.0f}",
            f"{r['peak_pss_mb']:.0f}",
            f"{r['cpu_ms_per_turn']:.1f}",
            "{:.1f}-{:.1f}".format(*r["load_avg_1m"]),
        )
        print(line.format(*cells))
    print(
        f"{args.conversations} single-turn conversations, {args.latency:g} s runs, simulator --rpm {args.rpm}"
    )


if __name__ == "__main__":
    main()
