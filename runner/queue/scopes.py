"""Limiter scopes: what a provider counts a budget against, named without the secret in it.

A scope is (API base URL, API key, model). Its name is `<url hash>.<key fingerprint>.<model>`:
the URL is hashed (it may hold a user), the key is fingerprinted with a salt kept once in Redis
(`runner:limit:salt`, random, made by the first process that needs it), so the name says which
budget is meant without the key, and cannot be checked against a guessed key without the salt.
The salt is read from Redis each time a scope is named, never cached: a Redis flushed or replaced at
the same address has a new salt, and a process that kept the old one would name another scope than
its peers (two budgets for one key).

`runner:limit:scopes` (hash) lists the scopes in use with what `runner status` shows of them: the
server's host (no user, no password, no path), the fingerprint and the model.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import redis as redis_lib

from runner.queue.limits import KEY_PREFIX, as_text

SALT_KEY = KEY_PREFIX + "salt"
SCOPES_KEY = KEY_PREFIX + "scopes"


def _salt(redis: redis_lib.Redis) -> bytes:
    """This Redis's salt as it is now: made by the first asker (SET NX), one round trip."""
    pipe = redis.pipeline(transaction=False)
    pipe.set(SALT_KEY, secrets.token_hex(16), nx=True)
    pipe.get(SALT_KEY)
    _, salt = pipe.execute()
    return as_text(salt or "").encode()


def key_fingerprint(redis: redis_lib.Redis, api_key: str | None) -> str:
    """A salted fingerprint of the key: the same key gives the same one on this Redis, never the key."""
    if not api_key:
        return "nokey"
    return hashlib.sha256(_salt(redis) + b"\0" + api_key.encode()).hexdigest()[:12]


def host_of(base_url: str) -> str:
    """The host (and port) of a base URL: what a scope shows of its server."""
    parts = urlsplit(base_url)
    return (parts.hostname or "?") + (f":{parts.port}" if parts.port else "")


@dataclass(frozen=True)
class Scope:
    name: str
    host: str
    key: str  # the fingerprint
    model: str


def scope_for(redis: redis_lib.Redis, base_url: str, api_key: str | None, model: str) -> Scope:
    """The scope of requests to `model` at `base_url` with `api_key`."""
    url_hash = hashlib.sha256(base_url.encode()).hexdigest()[:10]
    fingerprint = key_fingerprint(redis, api_key)
    return Scope(f"{url_hash}.{fingerprint}.{model}", host_of(base_url), fingerprint, model)


def register(redis: redis_lib.Redis, scope: Scope) -> None:
    """List the scope for `runner status` (when its first request is sent, not before)."""
    info = {"host": scope.host, "key": scope.key, "model": scope.model, "seen": int(time.time())}
    redis.hset(SCOPES_KEY, scope.name, json.dumps(info))


@dataclass(frozen=True)
class ScopeStatus:
    """One scope as `runner status` shows it. Unknown values are None."""

    name: str
    host: str
    key: str
    model: str
    rpm: int | None  # the budget in force: learned from headers, or AIMD's
    tpm: int | None
    source: str  # "headers", "aimd" or "learning" (nothing said yet)
    requests_used: int  # in the limiter's sliding minute
    tokens_used: int
    cooldown_s: float  # left of the 429 cooldown (0: none)
    cooldowns: int  # 429 cooldowns so far


def scope_status(redis: redis_lib.Redis) -> list[ScopeStatus]:
    """Every registered scope, with its budget, use and cooldown (server clock)."""
    sec, usec = redis.time()
    now_ms = sec * 1000 + usec // 1000
    out = []
    for raw_name, raw in sorted(redis.hgetall(SCOPES_KEY).items()):
        name = as_text(raw_name)
        info = json.loads(raw)
        base = f"{KEY_PREFIX}{name}:"
        state = {as_text(k): as_text(v) for k, v in redis.hgetall(base + "state").items()}
        redis.zremrangebyscore(base + "req", "-inf", now_ms - 62_000)
        used = int(redis.zcard(base + "req"))
        tokens = int(redis.get(base + "toksum") or 0)
        cool = int(redis.get(base + "cool") or 0)
        mode = state.get("mode")
        rpm = state.get("aimd_rpm") if mode == "aimd" else state.get("rpm")
        out.append(ScopeStatus(
            name=name, host=info.get("host", "?"), key=info.get("key", "?"), model=info.get("model", "?"),
            rpm=int(rpm) if rpm else None, tpm=int(state["tpm"]) if state.get("tpm") else None,
            source=mode or "learning", requests_used=used, tokens_used=tokens,
            cooldown_s=max(0.0, (cool - now_ms) / 1000), cooldowns=int(state.get("cooldowns", 0)),
        ))  # fmt: skip
    return out
