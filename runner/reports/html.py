"""The HTML report: one self-contained page (inline CSS, JS and SVG; no network) of a transcript.

The page is rendered here on the server side, so it reads fine even with scripts off; the small
script in `templates/report.html` only filters the table and expands conversations. Everything that
came from a transcript is escaped (assistant replies are untrusted text), and a Content-Security-
Policy forbids the page from loading anything at all, so a reply cannot reach the network either.

The URL fragment drives the page, so a CI link can point at one view:
`report.html#status=failed&q=refund&open=<conversation id>`.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from html import escape
from importlib import resources
from pathlib import Path

from runner.records import USAGE_KEYS, CheckResult, Record, TurnRecord
from runner.reports.pricing import CostEstimate, PriceTable, estimate, format_usd, load_prices
from runner.reports.summary import (
    ERROR,
    FAILED,
    NO_CHECKS,
    PASSED,
    base_id,
    checks_cell,
    clip,
    conversation_ms,
    describe_check,
    error_line,
    flaky,
    format_ms,
    graded_text,
    known_sum,
    outcome,
    percentile,
    repeat_groups,
    summarize,
    tokens_text,
    tokens_total_text,
    turn_latencies,
)

HISTOGRAM_BINS = 16
"""About how many bars the latency histogram has (bin widths are rounded to 1, 2 or 5 x 10^k ms)."""

_LABEL = {PASSED: "pass", FAILED: "fail", ERROR: "error", NO_CHECKS: "no checks"}


def e(value: object) -> str:
    return escape(str(value), quote=True)


def _template() -> str:
    return resources.files("runner.reports").joinpath("templates/report.html").read_text(encoding="utf-8")


def render_html(records: Sequence[Record], *, prices: PriceTable | None = None, source: str = "") -> str:
    prices = prices or load_prices()
    jobs = ", ".join(sorted({r["job"] for r in records})) or "no conversations"
    body = "\n".join(
        [
            _header(records, jobs, source),
            _figures(records, prices),
            '<section class="panels">',
            _histogram_panel(records),
            _tokens_panel(records, prices),
            "</section>",
            _repeats_panel(records),
            _conversations(records),
        ]
    )
    values = {"TITLE": e(f"{jobs} · assistant-runner report"), "BODY": body}
    # One pass, so text inserted for one marker is never scanned for another.
    return re.sub(r"__(TITLE|BODY)__", lambda m: values[m.group(1)], _template())


def write_html(
    records: Sequence[Record],
    path: str | os.PathLike[str],
    *,
    prices: PriceTable | None = None,
    source: str = "",
) -> Path:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    tmp.write_text(render_html(records, prices=prices, source=source), encoding="utf-8")
    os.replace(tmp, target)
    return target


# --- page parts ------------------------------------------------------------------------------------


def _header(records: Sequence[Record], jobs: str, source: str) -> str:
    batches = sorted({r["batch_id"] for r in records})
    meta = [
        ("batch", batches[0] if len(batches) == 1 else f"{len(batches)} batches" if batches else "-"),
        ("api", ", ".join(sorted({r["api"] for r in records}))),
        ("model", ", ".join(sorted({r["model"] for r in records}))),
    ]
    starts = sorted(str(r.get("started_at", "")) for r in records if r.get("started_at"))
    if starts:
        meta.append(("started", starts[0]))
    if source:
        meta.append(("transcript", source))
    meta.append(("generated", datetime.now(UTC).isoformat(timespec="seconds")))
    items = "".join(f"<span><b>{e(k)}</b> {e(v)}</span>" for k, v in meta)
    return f'<header><h1>{e(jobs)}</h1><p class="meta">{items}</p></header>'


def _figure(fid: str, label: str, value: str, cls: str = "") -> str:
    return (
        f'<div class="figure {cls}" id="fig-{fid}"><div class="value">{e(value)}</div>'
        f'<div class="label">{e(label)}</div></div>'
    )


def _figures(records: Sequence[Record], prices: PriceTable) -> str:
    s = summarize(records)
    lats = turn_latencies(records)
    judged = s.conversations - s.no_checks
    figures = [
        _figure("conversations", "conversations", str(s.conversations)),
        _figure("passed", "passed", str(s.passed), "pass"),
        _figure("failed", "failed", str(s.failed), "fail" if s.failed else ""),
        _figure("errors", "errors", str(s.errors), "error" if s.errors else ""),
    ]
    if s.no_checks:
        figures.append(_figure("no-checks", "without checks", str(s.no_checks)))
    figures += [
        _figure("pass-rate", f"pass rate ({s.passed}/{judged})", f"{s.pass_rate:.1%}" if judged else "-"),
        _figure("tokens", "tokens", tokens_total_text(s)),
        _cost_figure(estimate(records, prices)),
        _figure("p50", "latency p50 per turn", format_ms(percentile(lats, 50))),
        _figure("p95", "latency p95 per turn", format_ms(percentile(lats, 95))),
        _figure("max", "latency max per turn", format_ms(max(lats, default=None))),
    ]
    return f'<section class="figures">{"".join(figures)}</section>'


def short_cost(cost: CostEstimate) -> str:
    """`$0.0123`, `$0.0123 + ?` (some models unpriced) or `unknown`: fits a table cell."""
    if not cost.by_model:
        return "unknown" if cost.unknown else format_usd(0)
    return format_usd(cost.usd) + (" + ?" if cost.unknown else "")


def _cost_figure(cost: CostEstimate) -> str:
    label = "estimated cost"
    if cost.unknown:
        label += f"; no price for {', '.join(sorted(cost.unknown))}"
    return _figure("cost", label, short_cost(cost))


def _nice_step(span: float, bins: int) -> float:
    raw = max(span / bins, 1.0)
    magnitude = 10 ** math.floor(math.log10(raw))
    return next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)


def histogram_svg(latencies: Sequence[float]) -> str:
    """An inline SVG bar chart of turn latencies, with p50 and p95 marked."""
    if not latencies:
        return '<p class="empty">No turn latencies recorded.</p>'
    step = _nice_step(max(latencies), HISTOGRAM_BINS)
    n_bins = max(1, math.floor(max(latencies) / step) + 1)
    counts = [0] * n_bins
    for v in latencies:
        counts[min(int(v // step), n_bins - 1)] += 1
    width, height, left, bottom, top = 560, 210, 36, 34, 14
    plot_w, plot_h = width - left - 10, height - bottom - top
    bar_w = plot_w / n_bins
    peak = max(counts)
    parts = [
        f'<svg class="histogram" viewBox="0 0 {width} {height}" width="100%" '
        f'role="img" aria-label="Latency per turn histogram ({len(latencies)} turns)">',
        f'<line class="axis" x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}"/>',
        f'<text class="tick" x="{left - 6}" y="{top + 4}" text-anchor="end">{peak}</text>',
        f'<text class="tick" x="{left - 6}" y="{top + plot_h}" text-anchor="end">0</text>',
    ]
    for i, c in enumerate(counts):
        h = plot_h * c / peak
        lo, hi = i * step, (i + 1) * step
        parts.append(
            f'<rect class="bar" x="{left + i * bar_w + 1:.1f}" y="{top + plot_h - h:.1f}" '
            f'width="{max(bar_w - 2, 1):.1f}" height="{h:.1f}"><title>{e(format_ms(lo))} – '
            f"{e(format_ms(hi))}: {c} turn{'s' if c != 1 else ''}</title></rect>"
        )
    label_every = max(1, math.ceil(n_bins / 6))
    for i in range(0, n_bins + 1, label_every):
        x = left + i * bar_w
        anchor = "end" if i == n_bins else "start" if i == 0 else "middle"  # keep edge labels inside
        parts.append(
            f'<text class="tick" x="{x:.1f}" y="{top + plot_h + 16}" text-anchor="{anchor}">'
            f"{e(format_ms(i * step))}</text>"
        )
    for name, p in (("p50", 50), ("p95", 95)):
        value = percentile(latencies, p) or 0.0
        x = left + plot_w * min(value / (n_bins * step), 1.0)
        # Labels go right of the marker, or left of it near the right edge so they are not clipped.
        anchor, dx = ("end", -3) if x > left + plot_w * 0.75 else ("start", 3)
        parts.append(
            f'<line class="marker" x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + plot_h}"/>'
            f'<text class="marker-label" x="{x + dx:.1f}" y="{top + 10 if name == "p50" else top + 22}" '
            f'text-anchor="{anchor}">{name} {e(format_ms(value))}</text>'
        )
    parts.append(
        f'<text class="tick" x="{left + plot_w / 2:.1f}" y="{height - 4}" text-anchor="middle">'
        f"latency per turn ({len(latencies)} turn{'s' if len(latencies) != 1 else ''})</text></svg>"
    )
    return "".join(parts)


def _histogram_panel(records: Sequence[Record]) -> str:
    svg = histogram_svg(turn_latencies(records))
    return f'<div class="panel" id="latency"><h2>Latency per turn</h2>{svg}</div>'


def _tokens_cell(records: Sequence[Record], key: str) -> str:
    """A column's sum; `+ unknown` when some conversations reported no usage."""
    unknown = sum(r["usage"].get(key) is None for r in records)
    if unknown == len(records) and records:
        return "unknown"
    known = f"{known_sum(records, key):,}"
    return f"{known} + unknown" if unknown else known


def _tokens_panel(records: Sequence[Record], prices: PriceTable) -> str:
    models = sorted({r["model"] for r in records})
    rows: list[str] = []
    for model in [*models, None]:
        subset = [r for r in records if model is None or r["model"] == model]
        if model is None and len(models) < 2 and rows:
            break  # a single model: its row is the total already
        price = short_cost(estimate([_without_grading(r) for r in subset], prices))
        cells = [_tokens_cell(subset, key) for key in USAGE_KEYS]
        name = "total" if model is None else model
        tds = "".join(f"<td>{c}</td>" for c in cells)
        rows.append(f"<tr><th>{e(name)}</th>{tds}<td>{e(price)}</td></tr>")
    graded = [g for r in records if (g := r.get("grader_usage"))]
    if graded:  # grading (judge, similar) is counted and priced apart from the conversations
        tds = "".join(
            (
                f"<td>{sum(g['prompt_tokens'] or 0 for g in graded):,}</td>",
                f"<td>{sum(g['completion_tokens'] or 0 for g in graded):,}</td>",
                f"<td>{sum(g['total_tokens'] or 0 for g in graded):,}</td>",
            )
        )
        grading = format_usd(estimate(records, prices).grading_usd)
        rows.append(f"<tr><th>grading</th>{tds}<td>{e(grading)}</td></tr>")
    missing = estimate(records, prices).unknown
    unpriced = (
        f'<p class="note">No price for: {e(", ".join(sorted(missing)))} (shown as unknown, not zero).</p>'
        if missing
        else ""
    )
    head = "<tr><th>model</th><th>prompt</th><th>completion</th><th>total</th><th>est. cost</th></tr>"
    return (
        f'<div class="panel" id="tokens"><h2>Tokens</h2><table class="numbers">{head}{"".join(rows)}</table>'
        f"{unpriced}"
        '<p class="note">Cost is an estimate from the price table (USD per 1M tokens; override with '
        "<code>--prices FILE</code>).</p></div>"
    )


def _without_grading(record: Record) -> Record:
    return {k: v for k, v in record.items() if k != "grader_usage"}  # type: ignore[return-value]


def _repeats_panel(records: Sequence[Record]) -> str:
    groups = repeat_groups(records)
    if all(len(runs) == 1 for runs in groups.values()):
        return ""
    flakes = flaky(groups)
    every = sum(all(outcome(r) in (PASSED, NO_CHECKS) for r in runs) for runs in groups.values())
    items = "".join(
        f"<li><code>{e(k)}</code> {sum(outcome(r) in (PASSED, NO_CHECKS) for r in runs)}/{len(runs)} "
        "runs passed</li>"
        for k, runs in flakes.items()
    )
    listing = f"<ul>{items}</ul>" if flakes else "<p>No flaky conversations.</p>"
    return (
        f'<section class="panel" id="repeats"><h2>Repeats</h2><p>{every}/{len(groups)} conversations passed '
        f"every run; {len(flakes)} flaky (passed in some runs, not in others).</p>{listing}</section>"
    )


def _conversations(records: Sequence[Record]) -> str:
    flaky_ids = set(flaky(repeat_groups(records)))
    rows = []
    for i, r in enumerate(records):
        o = outcome(r)
        flag = ' data-flaky="1"' if base_id(r["conversation_id"]) in flaky_ids else ""
        rows.append(
            f'<tr class="conv {o.replace(" ", "-")}" id="c{i}" data-id="{e(r["conversation_id"])}" '
            f'data-outcome="{e(o)}"{flag}>'
            f'<td><span class="badge {o.replace(" ", "-")}">{e(_LABEL[o])}</span></td>'
            '<td class="cid"><button type="button" class="toggle" aria-expanded="false" '
            f'aria-controls="d{i}">'
            f"{e(r['conversation_id'])}</button></td>"
            f"<td>{e(r['model'])}</td><td>{e(r['status'])}</td><td class=num>{len(r['turns'])}</td>"
            f"<td class=num>{checks_cell(r)}</td>"
            f"<td class=num>{e(format_ms(conversation_ms(r)))}</td>"
            f"<td class=num>{tokens_text(r['usage']['total_tokens'])}</td></tr>"
            f'<tr class="detail" id="d{i}" hidden><td colspan="8">{_detail(r)}</td></tr>'
        )
    options = "".join(
        f'<option value="{v}">{label}</option>'
        for v, label in [
            ("all", "all outcomes"),
            (PASSED, "passed"),
            (FAILED, "failed"),
            (ERROR, "errors"),
            (NO_CHECKS, "no checks"),
            ("problems", "failed + errors"),
            ("flaky", "flaky"),
        ]
    )
    return (
        '<section id="conversations"><h2>Conversations</h2><div class="filters">'
        '<input type="search" id="filter-text" placeholder="Filter: id, model, any text…" '
        'aria-label="Filter conversations">'
        f'<select id="filter-status" aria-label="Outcome">{options}</select>'
        '<button type="button" id="expand-all">Expand all</button>'
        '<button type="button" id="collapse-all">Collapse all</button>'
        f'<span id="shown-count">Showing {len(records)} of {len(records)}</span></div>'
        '<table id="conv-table"><thead><tr><th>result</th><th>conversation</th><th>model</th><th>status</th>'
        "<th>turns</th><th>checks</th><th>time</th><th>tokens</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
        '<p class="empty" id="no-match" hidden>No conversation matches the filter.</p></section>'
    )


def _detail(r: Record) -> str:
    a = r["assistant"]
    meta = [
        f"assistant <b>{e(a.get('name') or a.get('key'))}</b>" + (f" ({e(a['id'])})" if a.get("id") else ""),
        f"api {e(r['api'])}",
        f"attempts {e(r.get('attempts', 1))}",
    ]
    if r.get("thread_id"):
        meta.append(f"thread {e(r['thread_id'])}")
    if r.get("vars"):
        meta.append("vars " + ", ".join(f"{e(k)}={e(clip(str(v), 60))}" for k, v in r["vars"].items()))
    parts = [f'<p class="meta">{" · ".join(meta)}</p>']
    if outcome(r) == ERROR:
        parts.append(f'<p class="error-box">{e(error_line(r))}</p>')
    parts += [_turn(t) for t in r["turns"]]
    if r.get("checks"):
        items = _checks(r.get("checks") or [])
        parts.append(
            f'<div class="turn"><div class="turn-head">Whole conversation<span></span></div>'
            f'<ul class="checks">{items}</ul></div>'
        )
    return "".join(parts)


def _checks(checks: list[CheckResult]) -> str:
    """Each check with its verdict; a grader's verdict, score, label and reason after it."""
    return "".join(
        f'<li class="{"ok" if c["passed"] else "bad"}">{"✓" if c["passed"] else "✗"} {e(describe_check(c))}'
        + (f' <span class="why">{e(c["detail"])}</span>' if c["detail"] else "")
        + (f' <span class="why grader">{e(graded_text(c))}</span>' if graded_text(c) else "")
        + "</li>"
        for c in checks
    )


def _turn(t: TurnRecord) -> str:
    usage = t.get("usage") or {}
    stats = f"{format_ms(t['latency_ms'])} · {tokens_text(usage.get('total_tokens'))} tokens"
    if t.get("run_status") and t["run_status"] != "completed":
        stats += f" · run {t['run_status']}"
    calls = "".join(
        f'<div class="tool">tool call <code>{e(c.get("name"))}</code> '
        f"arguments <code>{e(json.dumps(c.get('arguments'), ensure_ascii=False))}</code>"
        f" → <code>{e(c.get('output') if c.get('output') is not None else '(no output)')}</code></div>"
        for c in t["tool_calls"]
    )
    reply = t["assistant"]
    said = (
        f'<div class="msg assistant">{e(reply)}</div>'
        if reply is not None
        else '<div class="msg none">(no reply)</div>'
    )
    error = f'<p class="error-box">{e(t["error"])}</p>' if t.get("error") else ""
    checks = _checks(t["checks"])
    return (
        f'<div class="turn"><div class="turn-head">Turn {t["index"] + 1}<span>{e(stats)}</span></div>'
        f'<div class="msg user">{e(t["user"])}</div>{calls}{said}{error}'
        + (f'<ul class="checks">{checks}</ul>' if checks else "")
        + "</div>"
    )
