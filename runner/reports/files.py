"""The report files `runner run` and `runner report` write besides the transcript: JUnit XML, HTML."""

from __future__ import annotations

from collections.abc import Sequence

from runner.records import Record
from runner.reports.html import write_html
from runner.reports.junit import write_junit
from runner.reports.pricing import PriceTable


def write_reports(
    records: Sequence[Record], *, junit: str | None, html: str | None, prices: PriceTable, source: str = ""
) -> list[str]:
    """Write the requested JUnit/HTML files; returns one `kind: PATH` line per file written."""
    written = []
    if junit:
        write_junit(records, junit)
        written.append(f"junit: {junit}")
    if html:
        write_html(records, html, prices=prices, source=source)
        written.append(f"html: {html}")
    return written
