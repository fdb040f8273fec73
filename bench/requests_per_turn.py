"""API requests per conversation turn: our assistants backend (streaming, polling) beside the seed's loop.

Requests are the scarce resource (every one counts against the RPM limit), so this counts them the
way the server does: the simulator's own request counters, reset before each configuration, in
the same run. For runs lasting 1 s and 5 s (the simulator's `latency_s`, with its default jitter
and its own `openai-poll-after-ms`), each configuration carries the same conversations, several
at once:

- baseline `seed-loop`: the seed's naive turn: add the message, create the run, poll it every
  second, list the messages (the SDK, directly);
- `ours-poll`: `run_conversation` with RUNNER_ASSISTANTS_WAIT=poll (message on the run create,
  paced polls, one message list filtered by run id);
- `ours-stream`: `run_conversation` with the default streaming (one request per run).

The physical floor is one request per turn (the request that asks for the reply). Also printed:
the mean turn latency over the run latency (what waiting costs in time). One JSON line per
configuration on stdout, then a table.

    python bench/requests_per_turn.py [--conversations 4] [--turns 5] [--latencies 1,5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runner.engine.conversation import prepare_tasks, run_conversation
from runner.engine.limits import Unlimited
from runner.simulator import SimulatorConfig, start_simulator
from runner.tasks import Api, AssistantSpec, ConversationTask, Limits, TurnSpec

warnings.filterwarnings("ignore", category=DeprecationWarning)  # the SDK's, on every Assistants call

SPEC = AssistantSpec(key="bench", name="Bench Bot", model="gpt-4o-mini", instructions="Answer briefly.")


class _Job:
    limits = Limits()


def seed_loop(client: openai.OpenAI, assistant_id: str, turns: list[str]) -> list[float]:
    """The seed's turn, as it was: message, run, poll every second, list messages."""
    thread = client.beta.threads.create()
    latencies = []
    for text in turns:
        began = time.monotonic()
        client.beta.threads.messages.create(thread.id, role="user", content=text)
        run = client.beta.threads.runs.create(thread.id, assistant_id=assistant_id)
        while run.status in ("queued", "in_progress", "cancelling"):
            time.sleep(1.0)
            run = client.beta.threads.runs.retrieve(run.id, thread_id=thread.id)
        client.beta.threads.messages.list(thread.id, order="desc", limit=20)
        latencies.append(time.monotonic() - began)
    return latencies


def ours(client: openai.OpenAI, task: ConversationTask) -> list[float]:
    record = run_conversation(task, batch_id="bench", limiter=Unlimited(), client=client)
    if record["status"] != "completed":
        raise SystemExit(f"bench conversation did not complete: {record['error']}")
    return [t["latency_ms"] / 1000 for t in record["turns"]]


def measure(latency_s: float, conversations: int, turns: int) -> list[dict[str, Any]]:
    rows = []
    texts = [f"question {i}" for i in range(turns)]
    with start_simulator(SimulatorConfig(latency_s=latency_s)) as sim:
        poll_after_ms = sim.config.effective_poll_after_ms
        client = openai.OpenAI(base_url=sim.base_url, api_key="sk-bench", max_retries=0)
        tasks = [
            ConversationTask(
                conversation_id=f"bench/c{i}#r0",
                job="bench",
                api=Api.ASSISTANTS,
                model=SPEC.model,
                assistant=SPEC,
                turns=tuple(TurnSpec(user=t) for t in texts),
                limits=Limits(run_timeout_s=60),
            )
            for i in range(conversations)
        ]
        tasks = prepare_tasks(_Job(), tasks, Unlimited(), client=client)
        assistant_id = tasks[0].assistant.id or ""
        configs: list[tuple[str, Any]] = [
            ("seed-loop", lambda t: seed_loop(client, assistant_id, texts)),
            ("ours-poll", lambda t: ours(client, t)),
            ("ours-stream", lambda t: ours(client, t)),
        ]
        for mode, fn in configs:
            os.environ["RUNNER_ASSISTANTS_WAIT"] = "poll" if mode == "ours-poll" else "stream"
            sim.reset_stats()
            began = time.monotonic()
            with ThreadPoolExecutor(max_workers=conversations) as pool:
                latencies = [x for per in pool.map(fn, tasks) for x in per]
            wall = time.monotonic() - began
            stats = sim.stats()
            n = conversations * turns
            rows.append(
                {
                    "bench": "requests_per_turn",
                    "mode": mode,
                    "run_latency_s": latency_s,
                    "poll_after_ms": poll_after_ms,
                    "turns": n,
                    "requests": stats["requests_total"],
                    "requests_per_turn": round(stats["requests_total"] / n, 2),
                    "floor": 1.0,
                    "by_route": stats["by_route"],
                    "mean_turn_s": round(statistics.mean(latencies), 2),
                    "turn_latency_over_run": round(statistics.mean(latencies) / latency_s, 2),
                    "wall_s": round(wall, 1),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--conversations", type=int, default=4)
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--latencies", default="1,5", help="run latencies in seconds, comma-separated")
    args = parser.parse_args()
    rows = []
    for latency in (float(x) for x in args.latencies.split(",")):
        rows.extend(measure(latency, args.conversations, args.turns))
    print()
    print(f"{'run':>5}  {'mode':<12} {'requests/turn':>13}  {'vs seed':>7}  {'turn s / run s':>14}")
    for row in rows:
        seed = next(
            r for r in rows if r["run_latency_s"] == row["run_latency_s"] and r["mode"] == "seed-loop"
        )
        ratio = row["requests_per_turn"] / seed["requests_per_turn"]
        print(
            f"{row['run_latency_s']:>4g}s  {row['mode']:<12} {row['requests_per_turn']:>13.2f}  "
            f"{ratio:>6.0%}  {row['turn_latency_over_run']:>14.2f}"
        )
    print("floor: 1 request per turn")


if __name__ == "__main__":
    main()
