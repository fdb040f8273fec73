"""`runner view` over HTTP: a real uvicorn server in a thread, real transcripts (a simulated run with
a hostile reply, a tool call and a failing check), a real Redis for batches and actions."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from click.testing import CliRunner
from test_queue_support import FAKE_KEY, started_redis, write_job

from runner.cli import main
from runner.queue.conversations import rq_queue
from runner.queue.redis_server import RedisServer, connect
from runner.records import Record, read_records
from runner.view import ViewConfig, create_app
from runner.view.app import CSP
from runner.view.server import ViewServer, allowed_hosts, exposed

JOB = "view-suite"
HOSTILE = """<script>document.title="pwned"</script><img src=x onerror="document.title='pwned'"> done"""
JOB_DOC: dict[str, Any] = {
    "name": JOB,
    "api": "chat",
    "model": "gpt-4o-mini",
    "assistants": {
        "bot": {
            "instructions": "Help.",
            "tools": [
                {
                    "type": "function",
                    "function": {
                        "name": "lookup_order",
                        "description": "Look an order up",
                        "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}},
                    },
                }
            ],
        }
    },
    "conversations": [
        {"id": "hostile", "turns": [{"user": "say some html", "expect": [{"contains": "safe"}]}]},
        {
            "id": "order",
            "tool_outputs": {"lookup_order": '{"status": "shipped"}'},
            "turns": [
                {
                    "user": "where is order A1",
                    "expect": [{"tool_called": "lookup_order"}, {"contains": "shipped"}],
                }
            ],
        },
        {"id": "refund", "turns": [{"user": "refund please", "expect": [{"contains": "60 days"}]}]},
    ],
    "simulator": {
        "latency_s": 0.01,
        "rules": [
            {"when": "(?i)html", "reply": HOSTILE},
            {
                "when": "(?i)order",
                "call": "lookup_order",
                "arguments": {"order_id": "A1"},
                "then": "Your order is {{tool_output}}.",
            },
            {"when": "(?i)refund", "reply": "Refunds within 30 days."},
        ],
    },
}


def make_transcript(directory: Path, doc: dict[str, Any] = JOB_DOC, name: str = "t.jsonl") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    job = directory / "job.yaml"
    job.write_text(yaml.safe_dump(doc, sort_keys=False))
    out = directory / name
    result = CliRunner().invoke(main, ["run", str(job), "--simulate", "--inline", "-o", str(out)])
    assert result.exit_code == 1, result.output  # two conversations fail a check
    return out


@pytest.fixture(scope="module")
def transcript(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_transcript(tmp_path_factory.mktemp("view"))


def many(records: list[Record], n: int) -> list[Record]:
    """`n` records cycling through `records`, each with its own id and latency."""
    out = []
    for i in range(n):
        r = json.loads(json.dumps(records[i % len(records)]))
        r["conversation_id"] = f"{r['conversation_id']}-{i:05d}"
        for t in r["turns"]:
            t["latency_ms"] = 100 + i
        out.append(r)
    return out


def write_many(path: Path, records: list[Record]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@contextmanager
def serving(config: ViewConfig) -> Iterator[ViewServer]:
    server = ViewServer(create_app(config)).start()
    try:
        yield server
    finally:
        server.stop()


def fetch(url: str, data: dict[str, str] | None = None, host: str | None = None) -> tuple[int, Any, str]:
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    request = urllib.request.Request(url, data=body, headers={"Host": host} if host else {})

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(request, timeout=30) as response:
            return response.status, response.headers, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read().decode()


def row_ids(html: str) -> list[str]:
    return re.findall(r'<tr class="conv [^"]*" data-id="([^"]+)"', html)


def test_view_file_list_filters_by_status_check_and_text(transcript: Path) -> None:
    with serving(ViewConfig(files=[str(transcript)], allowed_hosts=allowed_hosts("127.0.0.1"))) as s:
        base = s.url + "file/0"
        assert row_ids(fetch(base)[2]) == [f"{JOB}/{c}#r0" for c in ("hostile", "order", "refund")]
        assert row_ids(fetch(base + "?status=failed")[2]) == [f"{JOB}/hostile#r0", f"{JOB}/refund#r0"]
        assert row_ids(fetch(base + "?status=passed")[2]) == [f"{JOB}/order#r0"]
        assert row_ids(fetch(base + "?check=contains")[2]) == [f"{JOB}/hostile#r0", f"{JOB}/refund#r0"]
        assert row_ids(fetch(base + "?q=30+DAYS")[2]) == [f"{JOB}/refund#r0"]  # replies are searched
        status, _, html = fetch(base + "?q=nothing-like-this")
        assert status == 200 and "No conversation matches." in html and "0 of 3 conversations" in html


def test_view_pages_and_sorts_large_files(transcript: Path, tmp_path: Path) -> None:
    records = many(list(read_records(transcript)), 120)
    path = write_many(tmp_path / "many.jsonl", records)
    with serving(ViewConfig(files=[str(path)])) as s:
        html = fetch(s.url + "file/0?sort=latency&desc=1&page=3")[2]
        ids = row_ids(html)
        assert len(ids) == 20 and ids[0].endswith("-00019") and ids[-1].endswith("-00000")
        assert "120 of 120 conversations; page 3 of 3" in html
        assert (
            'rel="prev" href="/file/0?status=all&amp;check=&amp;q=&amp;sort=latency&amp;desc=1&amp;page=2"'
            in html
        )
        assert len(row_ids(fetch(s.url + "file/0?part=rows&page=1")[2])) == 50


def test_view_conversation_shows_turns_checks_and_tool_calls(transcript: Path) -> None:
    with serving(ViewConfig(files=[str(transcript)])) as s:
        cid = urllib.parse.quote(f"{JOB}/order#r0")
        status, _, html = fetch(f"{s.url}file/0/conversation?id={cid}")
        assert status == 200
        assert '<code class="tool-name">lookup_order</code>' in html
        assert '<code class="tool-args">{\n &#34;order_id&#34;: &#34;A1&#34;\n}</code>' in html
        assert '<code class="tool-output">{&#34;status&#34;: &#34;shipped&#34;}</code>' in html
        assert '<li class="ok">✓ tool_called &#34;lookup_order&#34;</li>' in html
        refund = fetch(f"{s.url}file/0/conversation?id={urllib.parse.quote(f'{JOB}/refund#r0')}")[2]
        assert re.search(
            r'<li class="bad">✗ contains &#34;60 days&#34; <span class="why">[^<]+</span>', refund
        )
        assert fetch(f"{s.url}file/0/conversation?id=nope")[0] == 404


def test_view_escapes_hostile_replies_and_sends_a_strict_csp(transcript: Path) -> None:
    with serving(ViewConfig(files=[str(transcript)])) as s:
        cid = urllib.parse.quote(f"{JOB}/hostile#r0")
        status, headers, html = fetch(f"{s.url}file/0/conversation?id={cid}")
    assert status == 200
    assert headers["Content-Security-Policy"] == CSP
    assert "script-src 'self'" in CSP and "unsafe-inline" not in CSP
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert "&lt;script&gt;document.title=&#34;pwned&#34;&lt;/script&gt;&lt;img src=x onerror=" in html
    assert "<img" not in html and html.count("<script") == 1  # only the app's own script tag


def test_view_answers_only_loopback_host_names_when_bound_locally(transcript: Path) -> None:
    assert not exposed("127.0.0.1") and not exposed("localhost") and exposed("0.0.0.0")
    with serving(ViewConfig(files=[str(transcript)], allowed_hosts=allowed_hosts("127.0.0.1"))) as s:
        assert fetch(s.url, host="evil.example")[0] == 400  # DNS rebinding
        assert fetch(s.url, host=f"localhost:{s.port}")[0] == 200


def test_view_diff_shows_changed_replies_side_by_side(transcript: Path, tmp_path: Path) -> None:
    doc = json.loads(json.dumps(JOB_DOC))
    doc["simulator"]["rules"][2]["reply"] = "Refunds within 60 days."
    new = make_transcript(tmp_path / "new", doc)
    with serving(ViewConfig(files=[str(transcript), str(new)])) as s:
        assert '<form action="/diff"' in fetch(s.url)[2]
        html = fetch(s.url + "diff?old=0&new=1")[2]
    assert (
        "0 regressions, 1 improvements, 1 changed replies, 0 added, 0 removed (3 conversations compared)"
        in html
    )
    assert '<div class="msg assistant old">Refunds within 30 days.</div>' in html
    assert '<div class="msg assistant new">Refunds within 60 days.</div>' in html


@pytest.fixture
def queued(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[RedisServer, redis.Redis, str]]:
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    monkeypatch.setenv("RUNNER_HOME", str(tmp_path / "home"))
    with started_redis(tmp_path / "redis", unix_socket=False, password="pw-view-5678") as (srv, client):
        job = write_job(tmp_path / "job.yaml", "view-batch", conversations=3)
        result = CliRunner().invoke(main, ["enqueue", str(job), "--redis-url", srv.url])
        assert result.exit_code == 0, result.output
        yield srv, client, result.output.strip()


def test_view_batches_page_and_json_show_counts_without_secrets(
    queued: tuple[RedisServer, redis.Redis, str],
) -> None:
    srv, _, batch_id = queued
    with serving(ViewConfig(redis=connect(srv.url), redis_label="redis://:***@127.0.0.1")) as s:
        status, _, page = fetch(s.url)
        overview = json.loads(fetch(s.url + "api/batches")[2])
        batch_page = fetch(s.url + f"batch/{batch_id}")[2]
        conv = fetch(s.url + f"batch/{batch_id}/conversation?id=" + urllib.parse.quote("view-batch/c000#r0"))[
            2
        ]
    assert status == 200 and f'<a href="/batch/{batch_id}">{batch_id}</a>' in page
    (b,) = overview["batches"]
    assert (b["id"], b["state"], b["queued"], b["done"], b["total"], b["pass_rate"]) == (
        batch_id,
        "queued",
        3,
        0,
        3,
        None,
    )
    assert row_ids(batch_page) == [f"view-batch/c00{i}#r0" for i in range(3)]
    assert "This conversation is queued: no record yet." in conv
    for text in (page, batch_page, json.dumps(overview), conv):
        assert "pw-view-5678" not in text and FAKE_KEY not in text
    assert 'action="/batch/' not in batch_page  # read-only: no action forms


def test_view_actions_need_the_flag_and_the_form_token(queued: tuple[RedisServer, redis.Redis, str]) -> None:
    srv, client, batch_id = queued
    with serving(ViewConfig(redis=connect(srv.url))) as s:
        assert fetch(s.url + f"batch/{batch_id}/cancel", {"token": "x"})[0] == 403  # read-only
    config = ViewConfig(redis=connect(srv.url), allow_actions=True)
    with serving(config) as s:
        page = fetch(s.url + f"batch/{batch_id}")[2]
        assert f'<input type="hidden" name="token" value="{config.token}">' in page
        assert fetch(s.url + f"batch/{batch_id}/cancel", {"token": "forged"})[0] == 403
        assert len(rq_queue(client)) == 3
        status, headers, _ = fetch(s.url + f"batch/{batch_id}/retry", {"token": config.token})
        assert status == 303
        assert (
            "0 failed or errored conversations enqueued again"
            in fetch(s.url + headers["Location"].lstrip("/"))[2]
        )
        status, headers, _ = fetch(s.url + f"batch/{batch_id}/cancel", {"token": config.token})
        shown = fetch(s.url + headers["Location"].lstrip("/"))[2]
    assert "batch cancelled: 3 queued conversations dropped" in shown
    assert '<b id="fig-state">aborted</b>' in shown
    assert len(rq_queue(client)) == 0


def test_cancel_command_drops_queued_conversations(queued: tuple[RedisServer, redis.Redis, str]) -> None:
    srv, client, batch_id = queued
    runner = CliRunner()
    result = runner.invoke(main, ["cancel", batch_id, "--redis-url", srv.url])
    assert (result.exit_code, result.output) == (
        0,
        f"batch {batch_id} cancelled: 3 queued conversations dropped\n",
    )
    assert len(rq_queue(client)) == 0
    status = runner.invoke(main, ["status", batch_id, "--redis-url", srv.url])
    assert "waiting   0 running, 0 queued, 3 dropped" in status.output
    assert "aborted   cancelled by the user (`runner cancel`)" in status.output
    unknown = runner.invoke(main, ["cancel", "nope", "--redis-url", srv.url])
    assert unknown.exit_code == 2


def test_view_command_rejects_a_broken_transcript(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNNER_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("REDIS_URL", raising=False)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    result = CliRunner().invoke(main, ["view", str(bad), "--port", "0"])
    assert result.exit_code == 2
    assert (
        result.output
        == f"error: {bad}:1: not valid JSON: Expecting property name enclosed in double quotes (column 2)\n"
    )
