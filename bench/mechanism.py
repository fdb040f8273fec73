"""Threads or asyncio inside a worker process? The same streamed chat turns both ways, side by side.

`runner simulate --latency L` runs as a separate process; this process sends N streamed chat
completions with C in flight at once, either from C threads sharing one synchronous `openai.OpenAI`
(what the worker does: each thread runs one conversation through the synchronous engine), or from
one asyncio loop with `openai.AsyncOpenAI` (what an asyncio worker would do, after rewriting every
backend). Each variant runs in a fresh child process so its CPU time and peak RSS are its own.

Per variant: turns/s, CPU-seconds per turn (user + system of the client process, imports
excluded), peak RSS. One JSON line each.

    python bench/mechanism.py [--turns 600] [--concurrency 150] [--latency 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale import Simulator  # bench/ is not a package

MESSAGES = [{"role": "user", "content": "hello"}]


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def threads(base_url: str, turns: int, concurrency: int) -> None:
    client = openai.OpenAI(api_key="sk-bench-threads", base_url=base_url, max_retries=0)

    def turn(_: int) -> int:
        stream = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)  # type: ignore[arg-type]
        return sum(1 for _ in stream)

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(turn, range(turns)))


def asyncio_(base_url: str, turns: int, concurrency: int) -> None:
    async def main() -> None:
        client = openai.AsyncOpenAI(api_key="sk-bench-asyncio", base_url=base_url, max_retries=0)
        gate = asyncio.Semaphore(concurrency)

        async def turn() -> int:
            async with gate:
                stream = await client.chat.completions.create(
                    model="gpt-4o-mini", messages=MESSAGES, stream=True  # type: ignore[arg-type]
                )
                return len([chunk async for chunk in stream])  # type: ignore[union-attr]

        await asyncio.gather(*(turn() for _ in range(turns)))
        await client.close()

    asyncio.run(main())


def child(variant: str, base_url: str, turns: int, concurrency: int) -> None:
    cpu0, t0 = _cpu(), time.monotonic()
    (threads if variant == "threads" else asyncio_)(base_url, turns, concurrency)
    wall, cpu = time.monotonic() - t0, _cpu() - cpu0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({
        "variant": variant, "turns": turns, "concurrency": concurrency,
        "turns_per_s": round(turns / wall, 2), "cpu_ms_per_turn": round(cpu / turns * 1000, 2),
        "peak_rss_mb": round(peak_mb, 1),
    }))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=600)
    parser.add_argument("--concurrency", type=int, default=150)
    parser.add_argument("--latency", type=float, default=3.0)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.base_url, args.turns, args.concurrency)
        return
    sim = Simulator(args.latency)
    try:
        for variant in ("threads", "asyncio"):
            sim.reset()
            command = [sys.executable, __file__, "--child", variant, "--base-url", sim.url,
                       "--turns", str(args.turns), "--concurrency", str(args.concurrency)]  # fmt: skip
            subprocess.run(command, check=True)
    finally:
        sim.stop()


if __name__ == "__main__":
    main()
