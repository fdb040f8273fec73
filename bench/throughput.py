"""Throughput of `runner run` on the queue (1, 4 and 8 workers) beside the seed's sequential loop.

300 turns (100 conversations x 3 turns, Assistants API) against the simulator with 1 s runs and an
RPM limit enforced by the simulator and set in the job's `limits:`. Each configuration is its own
process tree, measured from the outside, in the same run:

- baseline `seed-loop`: the seed's naive turn, one after the other: add the message, create the run,
  poll it every second, list the messages (the SDK directly; no limiter: it is slow enough);
- `run-w1`, `run-w4`, `run-w8`: `runner run job.yaml --workers N` as users run it: a fresh
  embedded Redis (its own RUNNER_HOME, so nothing is resumed), N worker processes, the shared
  Redis limiter, the JSONL written.

The simulator runs in its own process (its memory is not counted); its request counters, reset
between configurations, give requests per turn and the 429s. Each configuration uses its own API
key, so it meets an untouched server budget (the simulator limits per key); `--shared-key` gives
them one key, so each meets the server's minute the previous one filled, as when someone else
spends the same key: then the 429 cooldown (and the probe after it) does the work.

Per configuration: turns/s (end to end, start-up included), requests per turn, 429s, the share of
the RPM budget used (in the busiest sliding minute, and on average over the run) and the peak RSS
and PSS of the whole process tree (psutil: the command and all its children: workers,
redis-server). One JSON line each, then a table.

    python bench/throughput.py [--conversations 100] [--turns 3] [--rpm 300] [--workers 1,4,8]
                               [--no-seed] [--shared-key]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]
LATENCY_S = 1.0
SIMULATE = [sys.executable, "-m", "runner", "simulate"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Simulator:
    """`runner simulate` as a separate process, read through its stats endpoint."""

    def __init__(self, rpm: int) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [*SIMULATE, "--port", str(self.port), "--latency", str(LATENCY_S), "--rpm", str(rpm)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
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
            return json.loads(r.read())

    def reset(self) -> None:
        urllib.request.urlopen(
            urllib.request.Request(f"{self.base}/_simulator/reset", method="POST"), timeout=5
        )

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


def write_job(path: Path, conversations: int, turns: int, rpm: int) -> None:
    doc = {
        "name": "throughput",
        "api": "assistants",
        "model": "gpt-4o-mini",
        "assistants": {"bench": {"name": "Bench Bot", "instructions": "Answer briefly."}},
        "conversations": [
            {"id": f"c{i:03d}", "turns": [{"user": f"question {t} of {i}"} for t in range(turns)]}
            for i in range(conversations)
        ],
        "limits": {"requests_per_minute": rpm, "concurrency": 8},
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def seed_loop_main(base_url: str, conversations: int, turns: int) -> None:
    """The seed's loop (run as a child process so its memory is measured alone)."""
    import warnings

    import openai

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    client = openai.OpenAI(base_url=base_url, api_key=os.environ["OPENAI_API_KEY"], max_retries=0)
    assistant = client.beta.assistants.create(
        model="gpt-4o-mini", name="Bench Bot", instructions="Answer briefly."
    )
    for i in range(conversations):
        thread = client.beta.threads.create()
        for t in range(turns):
            client.beta.threads.messages.create(thread.id, role="user", content=f"question {t} of {i}")
            run = client.beta.threads.runs.create(thread.id, assistant_id=assistant.id)
            while run.status in ("queued", "in_progress", "cancelling"):
                time.sleep(1.0)
                run = client.beta.threads.runs.retrieve(run.id, thread_id=thread.id)
            client.beta.threads.messages.list(thread.id, order="desc", limit=20)


def _rss(p: psutil.Process) -> int:
    try:
        return int(p.memory_info().rss)
    except psutil.Error:
        return 0


def _pss(p: psutil.Process) -> int:
    """Proportional set size: pages shared by the forked workers counted once overall, not per process."""
    try:
        return int(getattr(p.memory_full_info(), "pss", 0))
    except psutil.Error:
        return 0


class TreeSampler:
    """Peak RSS of a process and all its descendants, and the simulator's request count over time."""

    def __init__(self, pid: int, sim: Simulator) -> None:
        self.pid, self.sim = pid, sim
        self.peak_rss = self.peak_pss = 0
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        last_stats = last_pss = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            with contextlib.suppress(psutil.Error):
                tree = [psutil.Process(self.pid)]
                tree += tree[0].children(recursive=True)
                self.peak_rss = max(self.peak_rss, sum(_rss(p) for p in tree))
                if now - last_pss >= 1.0:  # PSS reads smaps: slower, so once a second
                    self.peak_pss = max(self.peak_pss, sum(_pss(p) for p in tree))
                    last_pss = now
            if now - last_stats >= 0.5:
                with contextlib.suppress(OSError):
                    self.samples.append((now, int(self.sim.stats()["requests_total"])))
                last_stats = now
            self._stop.wait(0.1)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def busiest_minute(self) -> int:
        """Most requests seen within any 60 s of the run (all of them if it was shorter)."""
        best = 0
        for i, (t0, n0) in enumerate(self.samples):
            for t1, n1 in self.samples[i:]:
                if t1 - t0 <= 60.0:
                    best = max(best, n1 - n0)
        return best


def measure(
    name: str, command: list[str], env: dict[str, str], sim: Simulator, turns: int, rpm: int
) -> dict[str, Any]:
    sim.reset()
    began = time.monotonic()
    proc = subprocess.Popen(
        command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    sampler = TreeSampler(proc.pid, sim)
    out, err = proc.communicate()
    wall = time.monotonic() - began
    sampler.stop()
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{name} failed ({proc.returncode}):\n{out}\n{err}")
    stats = sim.stats()
    sampler.samples.append((time.monotonic(), int(stats["requests_total"])))
    requests = int(stats["requests_total"])
    row = {
        "bench": "throughput",
        "config": name,
        "turns": turns,
        "run_latency_s": LATENCY_S,
        "rpm_limit": rpm,
        "wall_s": round(wall, 1),
        "turns_per_s": round(turns / wall, 3),
        "requests": requests,
        "requests_per_turn": round(requests / turns, 2),
        "429s": int(stats["429"]),
        "rpm_share_busiest_minute": round(sampler.busiest_minute() / rpm, 3),
        "rpm_share_average": round(requests / (wall / 60) / rpm, 3),
        "peak_rss_mb": round(sampler.peak_rss / 2**20, 1),
        "peak_pss_mb": round(sampler.peak_pss / 2**20, 1),
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--conversations", type=int, default=100)
    parser.add_argument("--turns", type=int, default=3, help="turns per conversation")
    parser.add_argument("--rpm", type=int, default=300)
    parser.add_argument("--workers", default="1,4,8")
    parser.add_argument("--no-seed", action="store_true", help="skip the (slow) seed loop baseline")
    parser.add_argument("--shared-key", action="store_true", help="one API key for every configuration")
    parser.add_argument(
        "--seed-loop", nargs=3, metavar=("BASE_URL", "CONVERSATIONS", "TURNS"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.seed_loop:
        seed_loop_main(args.seed_loop[0], int(args.seed_loop[1]), int(args.seed_loop[2]))
        return

    turns = args.conversations * args.turns
    sim = Simulator(args.rpm)
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="throughput-") as tmp:
            job = Path(tmp) / "throughput.yaml"
            write_job(job, args.conversations, args.turns, args.rpm)
            base_env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
            base_env.update(OPENAI_BASE_URL=sim.url, OPENAI_API_KEY="sk-bench")

            def key(name: str) -> str:
                return "sk-bench" if args.shared_key else f"sk-bench-{name}"

            if not args.no_seed:
                command = [
                    sys.executable,
                    __file__,
                    "--seed-loop",
                    sim.url,
                    str(args.conversations),
                    str(args.turns),
                ]
                env = dict(base_env, OPENAI_API_KEY=key("seed-loop"))
                rows.append(measure("seed-loop", command, env, sim, turns, args.rpm))
            for n in (int(x) for x in args.workers.split(",")):
                env = dict(base_env, RUNNER_HOME=str(Path(tmp) / f"home-w{n}"), OPENAI_API_KEY=key(f"w{n}"))
                out = Path(tmp) / f"out-w{n}.jsonl"
                command = [
                    sys.executable,
                    "-m",
                    "runner",
                    "run",
                    str(job),
                    "-o",
                    str(out),
                    "--workers",
                    str(n),
                ]
                row = measure(f"run-w{n}", [*command, "--no-progress"], env, sim, turns, args.rpm)
                lines = out.read_text().splitlines()
                records = [json.loads(line) for line in lines]
                ids = [r["conversation_id"] for r in records]
                row["exactly_once"] = len(ids) == len(set(ids)) == args.conversations
                row["completed"] = sum(r["status"] == "completed" for r in records)
                print(json.dumps({"config": row["config"], "exactly_once": row["exactly_once"],
                                  "completed": row["completed"]}), flush=True)  # fmt: skip
                rows.append(row)
    finally:
        sim.stop()

    print()
    base = rows[0]
    head = (
        "config",
        "turns/s",
        "vs first",
        "req/turn",
        "429s",
        "RPM busiest min",
        "RPM avg",
        "RSS MB",
        "PSS MB",
    )
    print("{:<10} {:>8} {:>8} {:>8} {:>5} {:>15} {:>7} {:>7} {:>7}".format(*head))
    for r in rows:
        cells = (
            r["config"],
            f"{r['turns_per_s']:.2f}",
            f"{r['turns_per_s'] / base['turns_per_s']:.1f}x",
            f"{r['requests_per_turn']:.2f}",
            r["429s"],
            f"{r['rpm_share_busiest_minute']:.0%}",
            f"{r['rpm_share_average']:.0%}",
            f"{r['peak_rss_mb']:.0f}",
            f"{r['peak_pss_mb']:.0f}",
        )
        print("{:<10} {:>8} {:>8} {:>8} {:>5} {:>15} {:>7} {:>7} {:>7}".format(*cells))
    print(f"{turns} turns, {LATENCY_S:g} s runs, RPM limit {args.rpm} (simulator and job limits)")


if __name__ == "__main__":
    main()
