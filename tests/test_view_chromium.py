"""`runner view` in a real headless Chromium, driven over the DevTools protocol on a pipe
(`--remote-debugging-pipe`: no extra package, no port): the page's own script runs, we read the
live DOM. Fails in CI, skips elsewhere, when Chromium is missing (conftest.missing_component).
Screenshots of each page go to $RUNNER_TEST_ARTIFACTS (default `test-artifacts/`)."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from click.testing import CliRunner
from conftest import missing_component
from test_html_chromium import ARTIFACTS, CHROMIUM, FLAGS
from test_queue_support import FAKE_KEY, started_redis, wait_finished, worker_pool, write_job
from test_view import JOB, many, serving, transcript, write_many

from runner.cli import main
from runner.queue.redis_server import connect
from runner.records import read_records
from runner.simulator import RunningSimulator
from runner.view import ViewConfig

__all__ = ["transcript"]  # the shared module fixture

pytestmark = pytest.mark.chromium


class Browser:
    """Headless Chromium with one page, spoken to in DevTools protocol messages over fds 3 and 4."""

    def __init__(self, profile: Path) -> None:
        if CHROMIUM is None:
            missing_component("no Chromium binary (chromium, chromium-browser, google-chrome) on PATH")
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        def fds() -> None:  # Chromium reads commands on fd 3 and answers on fd 4
            os.dup2(to_chrome_r, 3)
            os.dup2(from_chrome_w, 4)

        cmd = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"]
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=fds,
            close_fds=False,
            start_new_session=True,
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buffer = b""
        self._id = 0
        self.session: str | None = None
        targets = self.call("Target.getTargets")["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        self.session = self.call("Target.attachToTarget", targetId=page["targetId"], flatten=True)[
            "sessionId"
        ]
        self.call("Page.enable")
        self.call(
            "Emulation.setDeviceMetricsOverride", width=1280, height=900, deviceScaleFactor=1, mobile=False
        )

    def call(self, method: str, **params: Any) -> Any:
        self._id += 1
        message: dict[str, Any] = {"id": self._id, "method": method, "params": params}
        if self.session and not method.startswith("Target."):
            message["sessionId"] = self.session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            while b"\0" not in self._buffer:
                chunk = os.read(self._from_chrome, 1 << 16)
                assert chunk, "Chromium closed the DevTools pipe"
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._id:
                assert "error" not in reply, reply
                return reply["result"]
        raise AssertionError(f"no answer to {method}")

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        self.wait(lambda: self.js("document.readyState") == "complete", "the page to load")

    def js(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def wait(self, predicate: Callable[[], Any], what: str, timeout: float = 30) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}")

    def screenshot(self, name: str) -> Path:
        height = self.js("Math.min(document.documentElement.scrollHeight, 2400)")
        self.call(
            "Emulation.setDeviceMetricsOverride", width=1280, height=height, deviceScaleFactor=1, mobile=False
        )
        data = base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / name
        path.write_bytes(data)
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
        return path

    def close(self) -> None:
        os.close(self._to_chrome)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)  # its renderer and helpers too
            self.proc.wait()
        os.close(self._from_chrome)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    b = Browser(tmp_path / "profile")
    try:
        yield b
    finally:
        b.close()


def visible_ids(b: Browser) -> list[str]:
    return b.js("[...document.querySelectorAll('#conv-rows tr.conv')].map(r => r.dataset.id)")


def test_view_chromium_hostile_reply_renders_as_text(browser: Browser, transcript: Path) -> None:
    with serving(ViewConfig(files=[str(transcript)])) as s:
        browser.open(f"{s.url}file/0/conversation?id={quote(f'{JOB}/hostile#r0')}")
        reply = browser.js("document.querySelector('.msg.assistant').textContent")
        assert (
            reply
            == '<script>document.title="pwned"</script><img src=x onerror="document.title=\'pwned\'"> done'
        )
        assert browser.js("document.querySelectorAll('main img, main script').length") == 0
        assert browser.js("document.title") == f"{JOB}/hostile#r0 · assistant-runner"  # nothing ran
        browser.screenshot("view-conversation-hostile.png")


def test_view_chromium_conversation_shows_checks_and_tool_calls(browser: Browser, transcript: Path) -> None:
    with serving(ViewConfig(files=[str(transcript)])) as s:
        browser.open(f"{s.url}file/0/conversation?id={quote(f'{JOB}/order#r0')}")
        assert browser.js("document.querySelector('.tool-name').textContent") == "lookup_order"
        assert browser.js("JSON.parse(document.querySelector('.tool-args').textContent)") == {
            "order_id": "A1"
        }
        checks = browser.js(
            "[...document.querySelectorAll('.checks li')].map(li => li.className + ' ' + li.textContent)"
        )
        assert checks == ['ok ✓ tool_called "lookup_order"', 'ok ✓ contains "shipped"']
        browser.screenshot("view-conversation.png")


def test_view_chromium_filters_apply_on_change(browser: Browser, transcript: Path) -> None:
    with serving(ViewConfig(files=[str(transcript)])) as s:
        browser.open(f"{s.url}file/0")
        assert len(visible_ids(browser)) == 3
        browser.js(
            "const s = document.querySelector('select[name=status]'); s.value = 'failed';"
            "s.dispatchEvent(new Event('change'))"
        )
        browser.wait(lambda: "status=failed" in browser.js("location.search"), "the filter to submit")
        browser.wait(lambda: browser.js("document.readyState") == "complete", "the filtered page")
        assert visible_ids(browser) == [f"{JOB}/hostile#r0", f"{JOB}/refund#r0"]
        browser.screenshot("view-file.png")


def test_view_chromium_first_page_of_ten_thousand(browser: Browser, transcript: Path, tmp_path: Path) -> None:
    path = write_many(tmp_path / "big.jsonl", many(list(read_records(transcript)), 10_000))
    with serving(ViewConfig(files=[str(path)])) as s:
        browser.open(f"{s.url}file/0")
        assert len(visible_ids(browser)) == 50
        assert browser.js("document.getElementById('shown-count').textContent") == (
            "10000 of 10000 conversations; page 1 of 200"
        )
        assert browser.js("document.getElementById('fig-done').textContent") == "10000"


def test_view_chromium_batch_list_updates_while_a_batch_runs(
    browser: Browser,
    tmp_path: Path,
    sim_factory: Callable[..., RunningSimulator],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    monkeypatch.setenv("RUNNER_HOME", str(tmp_path / "home"))
    sim = sim_factory(latency_s=0.6)
    with started_redis(tmp_path / "redis") as (srv, client):
        job = write_job(tmp_path / "job.yaml", "view-live", conversations=6, limits={"concurrency": 1})
        result = CliRunner().invoke(main, ["enqueue", str(job), "--redis-url", srv.url])
        assert result.exit_code == 0, result.output
        batch_id = result.output.strip()
        with serving(ViewConfig(redis=connect(srv.url))) as s:
            browser.open(s.url)
            browser.js("window.notReloaded = true")
            cell = f"document.querySelector('tr[data-id=\"{batch_id}\"] .done').textContent"

            def done() -> str:
                return str(browser.js(cell))

            assert done() == "0/6"
            seen = {done()}
            with worker_pool(srv.url, 1, tmp_path / "workers.log", base_url=sim.base_url):
                deadline = time.monotonic() + 90
                while "6/6" not in seen and time.monotonic() < deadline:
                    seen.add(done())
                    time.sleep(0.2)
                wait_finished(client, batch_id, 30)
            assert "6/6" in seen and len(seen) >= 3, seen  # it moved, in steps, without a reload
            assert browser.js("window.notReloaded") is True
            browser.screenshot("view-batches.png")
            browser.open(f"{s.url}batch/{batch_id}")
            assert browser.js("document.getElementById('fig-passed').textContent") == "0"  # no checks
            assert len(visible_ids(browser)) == 6
            browser.screenshot("view-batch.png")
