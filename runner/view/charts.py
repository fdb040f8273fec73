"""The view's charts, as inline SVG (no script, no network): the latency histogram of the HTML
report, and the pass rate as conversations finished. Every text in them is escaped here; callers
mark the result safe."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from runner.records import Outcome, Record, outcome
from runner.reports.html import histogram_svg
from runner.reports.summary import turn_latencies

__all__ = ["latency_svg", "pass_rate_svg"]

POINTS = 60
"""At most this many points on the pass-rate line (a 10,000-conversation batch is bucketed)."""


def latency_svg(records: Sequence[Record]) -> str:
    return histogram_svg(turn_latencies(records))


def pass_rate_svg(records: Sequence[Record]) -> str:
    """The running pass rate (passed / judged) in the order conversations finished."""
    judged = sorted(
        (r for r in records if outcome(r) != Outcome.NO_CHECKS),
        key=lambda r: (str(r.get("finished_at") or ""), r["conversation_id"]),
    )
    if not judged:
        return '<p class="empty">No judged conversations yet.</p>'
    width, height, left, bottom, top, right = 560, 180, 40, 30, 12, 12
    plot_w, plot_h = width - left - right, height - bottom - top
    n = len(judged)
    step = max(1, n // POINTS)
    points, passed = [], 0
    for i, r in enumerate(judged, 1):
        passed += outcome(r) == Outcome.PASSED
        if i % step == 0 or i == n:
            x = left + plot_w * (i / n)
            y = top + plot_h * (1 - passed / i)
            points.append(f"{x:.1f},{y:.1f}")
    rate = passed / n
    parts = [
        f'<svg class="passrate" viewBox="0 0 {width} {height}" width="100%" role="img" '
        f'aria-label="Pass rate as conversations finished: {rate:.1%} of {n}">',
        f'<line class="axis" x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}"/>',
        f'<line class="axis" x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}"/>',
    ]
    for frac in (0.0, 0.5, 1.0):
        y = top + plot_h * (1 - frac)
        parts.append(f'<text class="tick" x="{left - 4}" y="{y + 4:.1f}" text-anchor="end">{frac:.0%}</text>')
    if len(points) == 1:
        points.insert(0, f"{left},{points[0].split(',')[1]}")
    parts.append(f'<polyline class="line" fill="none" points="{" ".join(points)}"/>')
    label = escape(f"{rate:.1%} of {n} judged conversation{'s' if n != 1 else ''}")
    parts.append(
        f'<text class="tick" x="{left + plot_w / 2:.1f}" y="{height - 6}" text-anchor="middle">{label}</text>'
    )
    parts.append("</svg>")
    return "".join(parts)
