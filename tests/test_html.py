"""The HTML report as a file: self-contained, escaped, with the figures, table, histogram, tokens.

What it looks like once a browser ran its script is in `test_html_chromium.py`.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from runner.reports.html import histogram_svg, render_html, write_html
from runner.reports.pricing import load_prices
from runner.reports.summary import load_transcripts

try:
    from test_report_runs import JOB, Runs, make_check, make_record, make_turn, runs
except ImportError:  # collected as a package (tests/__init__.py)
    from tests.test_report_runs import JOB, Runs, make_check, make_record, make_turn, runs

__all__ = ["runs"]  # the shared session fixture


class Elements(HTMLParser):
    """Every start tag with its attributes, and the text inside elements that have an id."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text_by_id: dict[str, str] = {}
        self._open: list[str | None] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self.handle_data(" ")  # element boundaries separate words, as on screen
        if tag not in {"meta", "input", "br", "img", "line", "rect", "link"}:
            self._open.append(dict(attrs).get("id"))
            if self._open[-1]:
                self.text_by_id.setdefault(self._open[-1] or "", "")

    def handle_endtag(self, tag: str) -> None:
        self.handle_data(" ")
        if self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        for ident in self._open:
            if ident:
                self.text_by_id[ident] += data


@pytest.fixture(scope="module")
def page(runs: Runs) -> str:
    return render_html(load_transcripts(runs.main), prices=load_prices(None), source=str(runs.main))


def test_html_is_self_contained(page: str) -> None:
    el = Elements(page)
    assert [t for t, _ in el.tags if t in {"link", "img", "iframe", "object", "embed"}] == []
    assert all("src" not in attrs for tag, attrs in el.tags if tag == "script")
    urls = [v for _, attrs in el.tags for k, v in attrs.items() if k in {"src", "href", "action"}]
    assert urls == []
    assert "default-src 'none'" in page  # the CSP: even an injected tag could not fetch anything
    assert not re.search(
        r"\b(https?:)?//[a-z]", page.split("<body>", 1)[1].split('<section id="conversations">')[0]
    )


def test_html_summary_figures(page: str) -> None:
    text = Elements(page).text_by_id
    figures = {k[4:]: " ".join(v.split()) for k, v in text.items() if k.startswith("fig-")}
    assert figures["conversations"] == "14 conversations"
    assert figures["passed"] == "4 passed"
    assert figures["failed"] == "4 failed"
    assert figures["errors"] == "4 errors"
    assert figures["no-checks"] == "2 without checks"
    assert figures["pass-rate"] == "33.3% pass rate (4/12)"
    assert figures["cost"].startswith("$0.0") and figures["cost"].endswith("estimated cost")
    assert re.fullmatch(r"\d+ ms latency p95 per turn", figures["p95"])


def test_html_escapes_untrusted_replies(page: str) -> None:
    assert page.count("<script") == 1  # the page's own
    assert (
        "Here is &lt;b&gt;bold&lt;/b&gt; &amp; &lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; for you"
        in page
    )


def test_html_escapes_ids_and_leaves_markers_alone(tmp_path: Path) -> None:
    evil = 'demo/"><img src=x onerror=alert(1)>#r0'
    rec = make_record(
        evil,
        [
            make_turn(
                0, "__BODY__ __TITLE__", "</td></tr></table><b>x</b>", [make_check("is_json", None, False)]
            )
        ],
    )
    path = write_html([rec], tmp_path / "r.html")  # type: ignore[list-item]
    html = path.read_text(encoding="utf-8")
    assert "<img" not in html and "<b>x</b>" not in html
    assert 'data-id="demo/&quot;&gt;&lt;img src=x onerror=alert(1)&gt;#r0"' in html
    assert "__BODY__ __TITLE__" in html  # user text is never taken for a template marker


def test_html_table_has_a_row_and_a_detail_per_conversation(page: str) -> None:
    rows = [a for t, a in Elements(page).tags if t == "tr" and "conv" in (a.get("class") or "").split()]
    assert len(rows) == 14
    outcomes = sorted(a["data-outcome"] or "" for a in rows)
    assert outcomes.count("passed") == 4 and outcomes.count("error") == 4 and outcomes.count("no checks") == 2
    details = [a for t, a in Elements(page).tags if t == "tr" and a.get("class") == "detail"]
    assert len(details) == 14 and all("hidden" in a for a in details)  # collapsed until clicked
    assert "✗ contains &quot;60 days&quot;" in page
    boxes = re.findall(r'<p class="error-box">([^<]*)</p>', page)
    assert any(b.startswith("turn 1: error: ") and "lookup_order" in b for b in boxes)


def test_html_histogram_counts_every_turn(page: str) -> None:
    svg = page.split('<svg class="histogram"', 1)[1].split("</svg>", 1)[0]
    counts = [int(n) for n in re.findall(r": (\d+) turns?</title>", svg)]
    assert sum(counts) == 16  # every turn with a latency (errored turns too)
    assert "p50 " in svg and "p95 " in svg and "latency per turn (16 turns)" in svg


def test_html_histogram_edge_cases() -> None:
    assert histogram_svg([]) == '<p class="empty">No turn latencies recorded.</p>'
    one = histogram_svg([5.0])
    assert re.findall(r": (\d+) turns?</title>", one) == [
        "0",
        "0",
        "0",
        "0",
        "0",
        "1",
    ]  # 1 ms bins up to 5 ms
    assert "latency per turn (1 turn)" in one


def test_html_tokens_panel(page: str, runs: Runs) -> None:
    records = load_transcripts(runs.main)
    total = sum(r["usage"]["total_tokens"] for r in records)
    tokens = " ".join(Elements(page).text_by_id["tokens"].split())
    assert f"gpt-4o-mini {sum(r['usage']['prompt_tokens'] for r in records):,}" in tokens
    assert f"{total:,}" in tokens
    assert f"<title>{JOB} · assistant-runner report</title>" in page
