"""JUnit XML from transcript records, for CI systems (GitHub, GitLab, Jenkins, Azure, ...).

One `<testsuite>` per job, one `<testcase>` per conversation (repeats are separate testcases:
their ids differ by `#rN`). A conversation that completed with a failing check gets a `<failure>`
whose message names the turn, the check, the expected value and what the assistant said; one that
did not complete gets an `<error>` (its type is the status). A conversation that completed without
any check is a passing testcase, not a skipped one: it did run, and completing is what it asserts.
Each testcase's `<system-out>` holds the conversation, so the CI page shows what was said.

The layout follows the common Jenkins/Ant schema (the one GitLab and GitHub reporters read):
timestamps without a zone, times in seconds, no characters that XML 1.0 forbids.
"""

from __future__ import annotations

import json
import os
import re
import socket
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from runner.records import CheckResult, Record
from runner.reports.summary import (
    ERROR,
    FAILED,
    NO_CHECKS,
    check_failures,
    describe_check,
    error_line,
    failure_line,
    graded_text,
    outcome,
    tokens_text,
)

# Characters XML 1.0 cannot carry at all (not even escaped); assistant replies may contain them.
_XML_INVALID = re.compile("[^\x09\x0a\x0d\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _xml_text(text: str) -> str:
    return _XML_INVALID.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _seconds(record: Record) -> float:
    return sum(t["latency_ms"] or 0 for t in record["turns"]) / 1000


def _timestamp(records: Sequence[Record]) -> str | None:
    """The earliest start, as the zone-less UTC `YYYY-MM-DDTHH:MM:SS` the JUnit schema wants."""
    starts = []
    for r in records:
        try:
            dt = datetime.fromisoformat(str(r.get("started_at", "")))
        except ValueError:
            continue
        starts.append(dt.astimezone(UTC).replace(tzinfo=None) if dt.tzinfo else dt)
    return min(starts).isoformat(timespec="seconds") if starts else None


def conversation_text(record: Record) -> str:
    """The conversation as plain text: each turn, its tool calls and its checks."""
    lines = [
        f"conversation: {record['conversation_id']}",
        f"status: {record['status']}  model: {record['model']}  api: {record['api']}  "
        f"attempts: {record.get('attempts', 1)}  tokens: {tokens_text(record['usage']['total_tokens'])}",
    ]
    if record["error"]:
        lines.append(f"error: {record['error']}")
    for t in record["turns"]:
        lines += ["", f"[turn {t['index'] + 1}] user: {t['user']}"]
        for call in t["tool_calls"]:
            output = call.get("output")
            shown = "(no output)" if output is None else output
            lines.append(f"  tool call: {call.get('name')}({json.dumps(call.get('arguments'))}) -> {shown}")
        lines.append(f"assistant: {t['assistant'] if t['assistant'] is not None else '(no reply)'}")
        if t.get("error"):
            lines.append(f"error: {t['error']}")
        lines += [_check_line(c) for c in t["checks"]]
    if record.get("checks"):
        lines += ["", "[conversation]"] + [_check_line(c) for c in record.get("checks") or []]
    return "\n".join(lines)


def _check_line(c: CheckResult) -> str:
    mark = "ok  " if c["passed"] else "FAIL"
    graded = f" [{graded_text(c)}]" if graded_text(c) and c["passed"] else ""
    return f"  {mark} {describe_check(c)}" + (f" ({c['detail']})" if c["detail"] else "") + graded


def _testcase(record: Record) -> ET.Element:
    job = record["job"]
    cid = record["conversation_id"]
    name = cid[len(job) + 1 :] if cid.startswith(job + "/") else cid
    case = ET.Element(
        "testcase", {"classname": job, "name": _xml_text(name), "time": f"{_seconds(record):.3f}"}
    )
    result = outcome(record)
    if result == FAILED:
        failures = check_failures(record)
        message = failure_line(failures[0]) if failures else "passed is false but no check failed"
        if len(failures) > 1:
            message += f" (+{len(failures) - 1} more)"
        body = "\n".join(failure_line(f) for f in failures)
        el = ET.SubElement(
            case,
            "failure",
            {"message": _xml_text(message), "type": failures[0].check if failures else "check"},
        )
        el.text = _xml_text(body)
    elif result == ERROR:
        el = ET.SubElement(
            case, "error", {"message": _xml_text(error_line(record)), "type": record["status"]}
        )
        el.text = _xml_text(record["error"] or record["status"])
    out = ET.SubElement(case, "system-out")
    out.text = _xml_text(conversation_text(record) + ("\n\n(no checks)" if result == NO_CHECKS else ""))
    return case


def junit_xml(records: Sequence[Record]) -> ET.ElementTree:
    jobs: dict[str, list[Record]] = {}
    for r in records:
        jobs.setdefault(r["job"], []).append(r)
    root = ET.Element("testsuites", {"name": "assistant-runner"})
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    total_time = 0.0
    for i, (job, runs) in enumerate(jobs.items()):
        counts = {
            "tests": len(runs),
            "failures": sum(outcome(r) == FAILED for r in runs),
            "errors": sum(outcome(r) == ERROR for r in runs),
            "skipped": 0,
        }
        seconds = sum(_seconds(r) for r in runs)
        attrs = {
            "name": job,
            "id": str(i),
            **{k: str(v) for k, v in counts.items()},
            "time": f"{seconds:.3f}",
        }
        stamp = _timestamp(runs)
        if stamp:
            attrs["timestamp"] = stamp
        attrs["hostname"] = socket.gethostname() or "localhost"
        suite = ET.SubElement(root, "testsuite", attrs)
        props = ET.SubElement(suite, "properties")
        for key in ("batch_id", "api", "model"):
            values = sorted({str(r[key]) for r in runs})
            ET.SubElement(props, "property", {"name": key, "value": _xml_text(", ".join(values))})
        for r in runs:
            suite.append(_testcase(r))
        for k, v in counts.items():
            totals[k] += v
        total_time += seconds
    root.attrib.update({k: str(v) for k, v in totals.items()})
    root.set("time", f"{total_time:.3f}")
    tree = ET.ElementTree(root)
    ET.indent(tree)
    return tree


def write_junit(records: Sequence[Record], path: str | os.PathLike[str]) -> Path:
    """Write the JUnit file atomically (a CI step reading it never sees half a file)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    junit_xml(records).write(tmp, encoding="utf-8", xml_declaration=True)
    os.replace(tmp, target)
    return target
