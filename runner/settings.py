"""The environment, read once into a typed `Settings` that is passed down.

Only the edges read the environment: the CLI (`Settings.from_env()` per command), a worker
process at start, and `run_job` when its caller gives no settings. Everything below takes a
`Settings` argument. The only environment *writes* are for child processes (`child_env`): worker
pools started by `runner run` inherit the server, the key and the Redis through it, never argv,
which `ps` shows.

    OPENAI_API_KEY     the API key (never stored in Redis, records or logs; `redact` removes it)
    OPENAI_BASE_URL    the server (unset: the SDK's default, api.openai.com)
    REDIS_URL          the queue's Redis (unset: a private embedded Redis)
    RUNNER_HOME        state directory (embedded Redis, logs); default `.runner/`
    RUNNER_ASSISTANTS_WAIT / RUNNER_RESPONSES_WAIT   `stream` (default) or `poll`
    RUNNER_CHAT_STREAM truthy: stream chat completions
    RUNNER_PRICES      a price file for cost estimates
    RUNNER_REDIS_SERVER  the redis-server binary of the embedded Redis
    RUNNER_QUEUE_SECRET  signs queued jobs; workers holding it refuse unsigned or altered ones
                         (never stored in Redis, records or logs; `scrub` removes it)
    RUNNER_CHECK_PACKAGES  packages (comma-separated) whose `module:function` python checks this
                       process may import from outside the job file's folder
    RUNNER_REDIS_OUTAGE_S  seconds a worker rides out an unreachable Redis before it stops (default 60)
"""

from __future__ import annotations

import dataclasses
import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from runner.errors import UsageError

DEFAULT_BASE_URL = "https://api.openai.com/v1"
"""What the SDK talks to when OPENAI_BASE_URL is unset (limiter scopes are keyed by it)."""

REDIS_OUTAGE_DEFAULT_S = 60.0
"""How long a worker rides out an unreachable Redis by default (RUNNER_REDIS_OUTAGE_S)."""

_TRUE = ("1", "true", "yes", "on")
_KEY_PATTERN = re.compile(r"\b(sk|rk|pk)-[A-Za-z0-9_\-*]{4,}")
_secrets: set[str] = set()
_secrets_lock = threading.Lock()


def scrub(text: str) -> str:
    """Remove every API key (and queue secret) this process knows from text bound for Redis, a
    record or a log: each one a `Settings` of this process has held, and the environment's.

    The environment is read here on purpose (the one read below the edges): a key must be removed
    even from a message of code whose caller built no `Settings`."""
    environ = (os.environ.get("OPENAI_API_KEY") or "", os.environ.get("RUNNER_QUEUE_SECRET") or "")
    for secret in (*_secrets, *environ):
        if len(secret) >= 4:  # a shorter "key" would mangle ordinary text
            text = text.replace(secret, "***")
    return text


def redact(text: str) -> str:
    """`scrub`, and any key-shaped token too (for error messages, which may quote a wrong key)."""
    return _KEY_PATTERN.sub(r"\1-***", scrub(text))


def _remember(secret: str | None) -> None:
    if secret and len(secret) >= 4:
        with _secrets_lock:
            _secrets.add(secret)


def _opt(environ: Mapping[str, str], name: str) -> str | None:
    value = environ.get(name, "").strip()
    return value or None


def outage_seconds(raw: str | None) -> float:
    """RUNNER_REDIS_OUTAGE_S: seconds >= 0 (unset: the default); UsageError (exit 2) otherwise."""
    if raw is None:
        return REDIS_OUTAGE_DEFAULT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise UsageError(f"RUNNER_REDIS_OUTAGE_S={raw!r}: expected a number of seconds >= 0")
    return value


@dataclass(frozen=True)
class Settings:
    """What the environment says, read once. `api_key` and `queue_secret` never appear in repr()."""

    api_key: str | None = field(default=None, repr=False)
    base_url: str | None = None
    redis_url: str | None = field(default=None, repr=False)  # may carry a password
    home: Path = Path(".runner")
    assistants_wait: str | None = None
    responses_wait: str | None = None
    chat_stream: bool = False
    prices: str | None = None
    redis_server: str | None = None
    queue_secret: str | None = field(default=None, repr=False)  # signs jobs (runner.queue.security)
    check_packages: tuple[str, ...] = ()
    retention: str | None = None  # RUNNER_RETENTION: how long finished batches stay (`runner gc`)
    redis_outage_s: float = REDIS_OUTAGE_DEFAULT_S  # RUNNER_REDIS_OUTAGE_S (`runner.queue.worker`)

    def __post_init__(self) -> None:
        _remember(self.api_key)
        _remember(self.queue_secret)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        return cls(
            api_key=_opt(env, "OPENAI_API_KEY"),
            base_url=_opt(env, "OPENAI_BASE_URL"),
            redis_url=_opt(env, "REDIS_URL"),
            home=Path(_opt(env, "RUNNER_HOME") or ".runner"),
            assistants_wait=_opt(env, "RUNNER_ASSISTANTS_WAIT"),
            responses_wait=_opt(env, "RUNNER_RESPONSES_WAIT"),
            chat_stream=(_opt(env, "RUNNER_CHAT_STREAM") or "").lower() in _TRUE,
            prices=_opt(env, "RUNNER_PRICES"),
            redis_server=_opt(env, "RUNNER_REDIS_SERVER"),
            queue_secret=_opt(env, "RUNNER_QUEUE_SECRET"),
            check_packages=tuple(
                p.strip() for p in (_opt(env, "RUNNER_CHECK_PACKAGES") or "").split(",") if p.strip()
            ),
            retention=_opt(env, "RUNNER_RETENTION"),
            redis_outage_s=outage_seconds(_opt(env, "RUNNER_REDIS_OUTAGE_S")),
        )

    def replace(self, **changes: object) -> Settings:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    @property
    def server(self) -> str:
        """The API's base URL as the SDK resolves it (the default when none is set)."""
        return self.base_url or DEFAULT_BASE_URL

    def child_env(self, **extra: str) -> dict[str, str]:
        """The environment of a child process (a worker pool): ours, with these settings in it."""
        env = dict(os.environ)
        values = {
            "OPENAI_API_KEY": self.api_key,
            "OPENAI_BASE_URL": self.base_url,
            "REDIS_URL": self.redis_url,
            "RUNNER_HOME": str(self.home),
            "RUNNER_ASSISTANTS_WAIT": self.assistants_wait,
            "RUNNER_RESPONSES_WAIT": self.responses_wait,
            "RUNNER_CHAT_STREAM": "1" if self.chat_stream else None,
            "RUNNER_PRICES": self.prices,
            "RUNNER_REDIS_SERVER": self.redis_server,
            "RUNNER_QUEUE_SECRET": self.queue_secret,
            "RUNNER_CHECK_PACKAGES": ",".join(self.check_packages) or None,
            "RUNNER_REDIS_OUTAGE_S": f"{self.redis_outage_s:g}",
            **extra,
        }
        for name, value in values.items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        return env
