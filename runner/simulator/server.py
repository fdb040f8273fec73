"""Serving a simulator: uvicorn (httptools, uvloop) in a background thread, started and stopped cleanly.

`start_simulator()` binds the socket itself (port 0 picks a free one), so the port is known and a
port in use fails at once with `SimulatorError`; it returns when the server accepts connections.
`stop()` ends open streams, lets uvicorn shut down gracefully and joins the thread; the socket is
closed and no thread is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import time
from types import TracebackType
from typing import Any

import uvicorn

from runner.errors import SimulatorError
from runner.simulator.app import build_app
from runner.simulator.config import SimulatorConfig
from runner.simulator.core import Simulator

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
BACKLOG = 2048

log = logging.getLogger("runner.simulator")


def _loop_factory() -> Any:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        return None
    return uvloop.new_event_loop


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port, or SimulatorError saying why not."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=BACKLOG)
    except OSError as e:
        reason = os.strerror(e.errno) if e.errno else str(e)
        raise SimulatorError(f"cannot listen on {host}:{port}: {reason}") from None


class _Server(uvicorn.Server):
    """uvicorn's server, except that a stop request wakes its main loop at once (not on a 0.1 s tick)."""

    wake: asyncio.Event | None = None

    async def main_loop(self) -> None:
        self.wake = asyncio.Event()
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 1) % 864000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), 0.1)


class RunningSimulator:
    """A simulator serving in this process. Use as a context manager, or call `stop()`."""

    def __init__(self, simulator: Simulator, host: str, port: int) -> None:
        self.simulator = simulator
        self.host = host
        self.port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._error: BaseException | None = None
        self._stopped = False

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """What the SDK needs as `base_url` / `OPENAI_BASE_URL` (ends in `/v1`)."""
        return f"{self.url}/v1"

    @property
    def config(self) -> SimulatorConfig:
        return self.simulator.config

    def stats(self) -> dict[str, Any]:
        """Request counts: `requests_total`, `by_route`, `by_status`, `429` (+ split), `dropped`…"""
        return self.simulator.stats.snapshot()

    def reset_stats(self) -> None:
        self.simulator.stats.reset()

    def _serve(self, sock: socket.socket) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            assert self._server is not None
            await self._server.serve(sockets=[sock])

        try:
            with asyncio.Runner(loop_factory=_loop_factory()) as runner:
                runner.run(main())
        except BaseException as e:  # reported by start() or stop()
            self._error = e
        finally:
            sock.close()

    def start(self, sock: socket.socket) -> None:
        config = uvicorn.Config(
            build_app(self.simulator),
            http="httptools",
            ws="none",
            lifespan="off",
            access_log=False,
            log_config=None,
            log_level="warning",
            proxy_headers=False,
            server_header=False,
            timeout_graceful_shutdown=2,
            backlog=BACKLOG,
        )
        self._server = _Server(config)
        self._thread = threading.Thread(
            target=self._serve, args=(sock,), name=f"simulator-{self.port}", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                why = f": {self._error}" if self._error else ""
                raise SimulatorError(f"the simulator did not start on {self.host}:{self.port}{why}")
            time.sleep(0.005)

    def stop(self) -> None:
        """Stop serving: open streams end, the thread is joined, the socket closed. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        server = self._server
        if server is not None:
            server.should_exit = True
        if self._loop is not None and not self._loop.is_closed():

            def wake() -> None:
                self.simulator.closing_event().set()
                if server is not None and server.wake is not None:
                    server.wake.set()

            with contextlib.suppress(RuntimeError):  # the loop may just have closed
                self._loop.call_soon_threadsafe(wake)
        if self._thread is not None:
            self._thread.join(STOP_TIMEOUT_S)
            if self._thread.is_alive() and self._server is not None:
                self._server.force_exit = True
                self._thread.join(STOP_TIMEOUT_S)
            if self._thread.is_alive():
                log.warning("the simulator thread on port %s did not stop", self.port)

    def __enter__(self) -> RunningSimulator:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<RunningSimulator {self.base_url}{' stopped' if self._stopped else ''}>"


def start_simulator(
    config: SimulatorConfig | None = None, host: str = "127.0.0.1", port: int = 0
) -> RunningSimulator:
    """Serve a new simulator on host:port (0: a free port) in a background thread; returns once it
    accepts connections. Raises SimulatorError when the port is taken or the server cannot start."""
    sock = bind(host, port)
    try:
        running = RunningSimulator(Simulator(config or SimulatorConfig()), host, sock.getsockname()[1])
        running.start(sock)
    except BaseException:
        sock.close()
        raise
    return running
