"""How fast `runner view` paints a 10,000-conversation transcript (the issue asks < 1 s).

Makes a transcript by running a small job against the simulator (inline), copies its records to
N conversations with distinct ids and latencies, then measures, best of R:

- baseline: `runner report --html` on the same file (read + render the one static page every
  conversation is in: what users had before the view);
- view cold: start the app (read + index the file) and fetch the first page over HTTP;
- view warm: the first page again, a filtered page, a page sorted by latency, the last page, and
  one conversation, each over HTTP against the running server.

First paint in the browser = the cold figure plus parsing ~60 KB of HTML (the first page is 50
rows whatever N is). Prints one JSON line per measurement. Usage: python bench/view_first_paint.py [--n N]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from click.testing import CliRunner

from runner.cli import main
from runner.records import read_records
from runner.reports.html import render_html
from runner.view import ViewConfig, create_app
from runner.view.server import ViewServer

JOB = """\
name: paint
api: chat
model: gpt-4o-mini
assistants: {bot: {instructions: Help.}}
conversations:
  - {id: refund, turns: [{user: refund please, expect: [{contains: 30 days}]}, {user: thanks}]}
  - {id: other, turns: [{user: hello, expect: [{contains: "60 days"}]}]}
simulator: {latency_s: 0.01, rules: [{when: '(?i)refund', reply: Refunds within 30 days.}]}
"""


def best(fn: Callable[[], object], repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as r:
        return r.read()


def main_(n: int, repeat: int) -> None:
    with tempfile.TemporaryDirectory(prefix="view-bench-") as d:
        measure(Path(d), n, repeat)


def measure(tmp: Path, n: int, repeat: int) -> None:
    (tmp / "job.yaml").write_text(JOB)
    seed = tmp / "seed.jsonl"
    CliRunner().invoke(main, ["run", str(tmp / "job.yaml"), "--simulate", "--inline", "-o", str(seed)])
    records = list(read_records(seed))
    path = tmp / "big.jsonl"
    with path.open("w") as fh:
        for i in range(n):
            r = json.loads(json.dumps(records[i % len(records)]))
            r["conversation_id"] += f"-{i:05d}"
            for t in r["turns"]:
                t["latency_ms"] = 100 + i % 900
            fh.write(json.dumps(r) + "\n")

    def emit(name: str, seconds: float, **extra: object) -> None:
        print(
            json.dumps(
                {
                    "bench": "view_first_paint",
                    "conversations": n,
                    "measure": name,
                    "seconds": round(seconds, 4),
                    **extra,
                }
            ),
            flush=True,
        )

    t, html = best(lambda: render_html(list(read_records(path))), repeat)
    emit("baseline: report --html (read + render)", t, bytes=len(str(html)))

    def cold() -> int:
        server = ViewServer(create_app(ViewConfig(files=[str(path)]))).start()
        try:
            return len(get(server.url + "file/0"))
        finally:
            server.stop()

    t, size = best(cold, repeat)
    emit("view cold: start + read + first page", t, bytes=size)
    server = ViewServer(create_app(ViewConfig(files=[str(path)]))).start()
    try:
        for name, url in [
            ("view warm: first page", "file/0"),
            ("view warm: failed only", "file/0?status=failed"),
            ("view warm: sorted by latency", "file/0?sort=latency&desc=1"),
            ("view warm: text search", "file/0?q=30+days"),
            ("view warm: last page", f"file/0?page={n // 50}"),
            ("view warm: one conversation", "file/0/conversation?id=paint%2Fother%23r0-00000"),
        ]:
            t, size = best(lambda u=url: len(get(server.url + u)), repeat)
            emit(name, t, bytes=size)
    finally:
        server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    sys.exit(main_(args.n, args.repeat))
