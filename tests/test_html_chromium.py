"""The HTML report in a real browser: headless Chromium runs its script, we read the rendered DOM.

Needs Debian's `chromium` (`apt-get install -y chromium`); without it, fails in CI and is skipped
elsewhere (see conftest.missing_component), saying so, when no Chromium
binary exists. A screenshot of a failed conversation's detail is saved as a test artifact under
$RUNNER_TEST_ARTIFACTS (default `test-artifacts/` in the repository).
"""

from __future__ import annotations

import os
import shutil
import signal
import struct
import subprocess
from pathlib import Path
from urllib.parse import quote

import pytest
from click.testing import CliRunner
from conftest import missing_component

from runner.cli import main

try:
    from test_html import Elements
    from test_report_runs import JOB, Runs, runs
except ImportError:  # collected as a package (tests/__init__.py)
    from tests.test_html import Elements
    from tests.test_report_runs import JOB, Runs, runs

__all__ = ["runs"]  # the shared session fixture

pytestmark = pytest.mark.chromium

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]
ARTIFACTS = Path(
    os.environ.get("RUNNER_TEST_ARTIFACTS") or Path(__file__).resolve().parents[1] / "test-artifacts"
)


def chromium(url: str, profile: Path, *args: str) -> str:
    """Run headless Chromium once on `url` with a fresh profile; its stdout."""
    if CHROMIUM is None:
        missing_component("no Chromium binary (chromium, chromium-browser, google-chrome) on PATH")
    cmd = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args, url]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # its renderer and GPU helpers too
        proc.communicate()
        raise
    assert proc.returncode == 0, err[-2000:]
    return out


@pytest.fixture(scope="module")
def report(runs: Runs, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("html") / "report.html"
    result = CliRunner().invoke(main, ["report", str(runs.main), "--html", str(path)])
    assert result.exit_code == 1, result.output
    return path


def _url(path: Path, fragment: str) -> str:
    return f"{path.as_uri()}#{fragment}"


def _rows(dom: str) -> list[dict[str, str | None]]:
    return [a for t, a in Elements(dom).tags if t == "tr" and "conv" in (a.get("class") or "").split()]


def test_html_chromium_renders_summary_and_filters_by_status(report: Path, tmp_path: Path) -> None:
    dom = chromium(_url(report, "status=failed"), tmp_path / "profile", "--dump-dom")
    text = Elements(dom).text_by_id
    assert " ".join(text["fig-passed"].split()) == "4 passed"
    assert " ".join(text["fig-failed"].split()) == "4 failed"
    assert " ".join(text["fig-errors"].split()) == "4 errors"
    assert " ".join(text["fig-pass-rate"].split()) == "33.3% pass rate (4/12)"
    # The script ran: the status filter came from the URL and hid every row that did not fail.
    assert text["shown-count"].strip() == "Showing 4 of 14"
    rows = _rows(dom)
    visible = sorted(str(a["data-id"]) for a in rows if "hidden" not in a)
    assert visible == [f"{JOB}/{c}#r{i}" for c in ("html-reply", "refund-wrong") for i in (0, 1)]


def test_html_chromium_text_filter_searches_replies(report: Path, tmp_path: Path) -> None:
    dom = chromium(_url(report, "q=" + quote("possible within 30")), tmp_path / "profile", "--dump-dom")
    visible = {str(a["data-id"]).split("/")[1].split("#")[0] for a in _rows(dom) if "hidden" not in a}
    assert visible == {"refund-ok", "refund-wrong"}  # matched in the replies, not in the ids


def test_html_chromium_failed_conversation_detail_and_screenshot(report: Path, tmp_path: Path) -> None:
    target = f"{JOB}/refund-wrong#r0"
    fragment = "open=" + quote(target, safe="")
    dom = chromium(_url(report, fragment), tmp_path / "profile", "--dump-dom")
    el = Elements(dom)
    (row,) = [a for a in _rows(dom) if a["data-id"] == target]
    assert "open" in (row.get("class") or "").split()
    detail_id = f"d{str(row['id'])[1:]}"
    (detail,) = [a for t, a in el.tags if t == "tr" and a.get("id") == detail_id]
    assert "hidden" not in detail  # expanded by the script
    shown = " ".join(el.text_by_id[detail_id].split())
    assert "Turn 1" in shown and "Can I get a refund after 45 days?" in shown
    assert "A refund is possible within 30 days." in shown
    assert '✗ contains "60 days"' in shown
    others = [a for t, a in el.tags if t == "tr" and a.get("class") == "detail" and a.get("id") != detail_id]
    assert others and all("hidden" in a for a in others)

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "html-report.png"
    shot.unlink(missing_ok=True)
    chromium(_url(report, fragment), tmp_path / "profile2", "--window-size=1280,1700", f"--screenshot={shot}")
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", png[16:24]) == (1280, 1700)
    assert len(png) > 50_000  # a rendered page, not a blank one
