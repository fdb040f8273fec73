"""How many requests per second the simulator sustains: 64 concurrent clients doing run GETs.

Set-up, measured honestly on this machine (2 cores shared by server and load generator):

- the server runs as its own process: `python -m runner simulate --port 0` (uvicorn, httptools,
  uvloop, one worker), exactly what a user starts;
- the load generator is another process: asyncio (uvloop) with raw HTTP/1.1 keep-alive
  connections, one per client, each sending `GET /v1/threads/{t}/runs/{r}` back to back (runs
  already completed, spread over the clients) for a fixed time after a warm-up;
- baseline in the same run: the same load against a trivial Starlette app on the same uvicorn
  stack (`GET /hello` → `{"ok": true}`), i.e. the ceiling of the server stack itself.

The simulator's own counters (`/_simulator/stats`) are checked against what the client saw.
One JSON line per configuration on stdout.

    python bench/simulator_load.py [--clients 64] [--seconds 5] [--warmup 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import re
import statistics
import subprocess
import sys
import textwrap
import time
from typing import Any

import httpx2

API_KEY = "sk-bench"
HELLO_APP = textwrap.dedent(
    """
    import sys, uvicorn
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    async def hello(request):
        return JSONResponse({"ok": True})
    app = Starlette(routes=[Route("/hello", hello)])
    config = uvicorn.Config(app, host="127.0.0.1", port=int(sys.argv[1]), http="httptools", loop="uvloop",
                            lifespan="off", access_log=False, log_level="warning", ws="none")
    uvicorn.Server(config).run()
    """
)


# -- load generator (runs in its own process) -----------------------------------------------------
async def _client(
    host: str, port: int, paths: list[str], stop_at: float, record_from: float, out: dict
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    requests = [
        (
            f"GET {p} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {API_KEY}\r\n"
            "OpenAI-Beta: assistants=v2\r\n\r\n"
        ).encode()
        for p in paths
    ]
    i = 0
    try:
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at:
                break
            writer.write(requests[i % len(requests)])
            i += 1
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
            await reader.readexactly(length)
            t1 = time.perf_counter()
            out["sent"] += 1
            if t0 >= record_from:
                out["ok" if status == 200 else "errors"] += 1
                out["latencies"].append(t1 - t0)
    finally:
        writer.close()


def _load(
    host: str, port: int, paths: list[str], clients: int, seconds: float, warmup: float, q: Any
) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    async def main() -> dict:
        out: dict[str, Any] = {"ok": 0, "errors": 0, "sent": 0, "latencies": []}
        start = time.perf_counter()
        record_from, stop_at = start + warmup, start + warmup + seconds
        share = [paths[i::clients] or paths for i in range(clients)]
        await asyncio.gather(
            *(_client(host, port, share[i], stop_at, record_from, out) for i in range(clients))
        )
        return out

    q.put(asyncio.run(main()))


def measure(host: str, port: int, paths: list[str], clients: int, seconds: float, warmup: float) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=_load, args=(host, port, paths, clients, seconds, warmup, q))
    proc.start()
    out = q.get(timeout=seconds + warmup + 60)
    proc.join()
    lat = sorted(out["latencies"])
    return {
        "requests": out["ok"],
        "errors": out["errors"],
        "sent_total": out["sent"],
        "rps": round(out["ok"] / seconds, 1),
        "p50_ms": round(statistics.median(lat) * 1000, 2) if lat else None,
        "p99_ms": round(lat[int(len(lat) * 0.99) - 1] * 1000, 2) if lat else None,
    }


# -- servers ------------------------------------------------------------------------------------
def start_simulator_process() -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner", "simulate", "--port", "0", "--latency", "0.05"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    m = re.search(r"(http://\S+/v1)", line)
    if not m:
        proc.kill()
        raise SystemExit(f"simulator did not start: {line!r}")
    return proc, m.group(1)


def start_hello_process(port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HELLO_APP, str(port)])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            httpx2.get(f"http://127.0.0.1:{port}/hello", timeout=1)
            return proc
        except httpx2.TransportError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("hello server did not start")


def completed_runs(base_url: str, count: int) -> list[str]:
    """Create `count` runs (one per thread) and wait until they are completed; returns their paths."""
    headers = {"Authorization": f"Bearer {API_KEY}", "OpenAI-Beta": "assistants=v2"}
    with httpx2.Client(base_url=base_url, headers=headers, timeout=30) as http:
        assistant = http.post("/assistants", json={"model": "gpt-4o-mini", "instructions": "Be brief."})
        aid = assistant.json()["id"]
        paths = []
        for i in range(count):
            thread = http.post(
                "/threads", json={"messages": [{"role": "user", "content": f"hello {i}"}]}
            ).json()
            run = http.post(f"/threads/{thread['id']}/runs", json={"assistant_id": aid}).json()
            paths.append(f"/v1/threads/{thread['id']}/runs/{run['id']}")
        time.sleep(0.3)
        for p in paths:
            assert http.get(p.removeprefix("/v1")).json()["status"] == "completed"
    return paths


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    args = ap.parse_args()
    common = {
        "bench": "simulator_load",
        "clients": args.clients,
        "seconds": args.seconds,
        "cpus": os.cpu_count(),
        "server": "separate process, uvicorn httptools+uvloop, 1 worker",
        "client": "separate process, asyncio+uvloop raw HTTP/1.1 keep-alive, 1 connection per client",
    }

    port = free_port()
    hello = start_hello_process(port)
    try:
        paths = ["/hello"] * args.clients
        result = measure("127.0.0.1", port, paths, args.clients, args.seconds, args.warmup)
        print(
            json.dumps({**common, "config": "baseline: starlette hello on the same stack", **result}),
            flush=True,
        )
    finally:
        hello.terminate()
        hello.wait()

    sim, base_url = start_simulator_process()
    try:
        paths = completed_runs(base_url, args.clients)
        host, port = re.match(r"http://([^:]+):(\d+)", base_url).groups()  # type: ignore[union-attr]
        httpx2.post(base_url.removesuffix("/v1") + "/_simulator/reset")
        result = measure(host, int(port), paths, args.clients, args.seconds, args.warmup)
        stats = httpx2.get(base_url.removesuffix("/v1") + "/_simulator/stats").json()
        counted = stats["by_route"].get("GET /v1/threads/{thread_id}/runs/{run_id}", 0)
        config = "simulator: GET /v1/threads/{thread_id}/runs/{run_id}"
        line = {**common, "config": config, **result, "server_counted": counted}
        line["counts_match"] = counted == result["sent_total"]
        print(json.dumps(line), flush=True)
    finally:
        sim.terminate()
        sim.wait()


if __name__ == "__main__":
    main()
