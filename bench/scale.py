"""Filling a tier from one machine: `runner run` with default flags beside `--inline` and the seed loop.

(The scenarios are added below; this part is the simulator as a separate process.)
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

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
        command = [sys.executable, "-m", "runner", "simulate", "--port", str(self.port),
                   "--latency", str(latency_s)]  # fmt: skip
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
