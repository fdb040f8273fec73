"""Serving the view with uvicorn: in the foreground (`runner view`) or in a thread (tests, embedding).

On a loopback address the app only answers requests naming a loopback host (a page of another
site that rebinds its DNS name to 127.0.0.1 gets a 400); bound elsewhere it answers any host name,
and `exposed` tells the CLI to warn: the view has no login.
"""

from __future__ import annotations

import ipaddress
import threading
import time

import uvicorn
from starlette.applications import Starlette

from runner.errors import UsageError

START_TIMEOUT_S = 10.0
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def exposed(host: str) -> bool:
    """True when `host` is not a loopback address (other machines may reach the view)."""
    if host in LOOPBACK_NAMES:
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True


def allowed_hosts(host: str) -> list[str]:
    return ["*"] if exposed(host) else ["localhost", "127.0.0.1", "[::1]"]


def _config(app: Starlette, host: str, port: int) -> uvicorn.Config:
    return uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="off")


def serve(app: Starlette, host: str, port: int) -> None:
    """Serve until Ctrl-C."""
    uvicorn.Server(_config(app, host, port)).run()


class ViewServer:
    """The app served in a background thread: `start()` returns once it listens; `.url`; `stop()`."""

    def __init__(self, app: Starlette, host: str = "127.0.0.1", port: int = 0) -> None:
        self.server = uvicorn.Server(_config(app, host, port))
        self.host = host
        self.port = port
        self.thread = threading.Thread(target=self.server.run, name="runner-view", daemon=True)

    def start(self) -> ViewServer:
        self.thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise UsageError(f"the view could not listen on {self.host}:{self.port}")
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
