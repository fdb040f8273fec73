"""Summaries of transcript records: the end-of-run summary, exit codes, and `runner report`.

Everything the reports share lives here: reading a transcript file strictly (a bad line is
`PATH:LINE: what`, exit 2), each conversation's outcome, the failures in words, repeat groups and
flaky conversations, latency percentiles. `junit`, `html` and `diff` render from these helpers so
the terminal, the XML and the page always say the same thing.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.errors import UsageError
from runner.records import ERROR, FAILED, NO_CHECKS, PASSED, CheckResult, Record, Status, outcome
from runner.reports.pricing import PriceTable, estimate, format_usd

_REPEAT_SUFFIX = re.compile(r"#r\d+$")


@dataclass(frozen=True)
class Summary:
    conversations: int
    passed: int
    failed: int  # completed but a check failed
    errors: int  # did not complete (error, failed, cancelled, expired, incomplete)
    no_checks: int
    tokens: int  # of the conversations whose usage is known
    unknown_usage: int = 0  # conversations whose usage the server did not report (not in `tokens`)

    @property
    def pass_rate(self) -> float:
        judged = self.conversations - self.no_checks
        return 1.0 if judged == 0 else self.passed / judged


def summarize(records: Iterable[Record]) -> Summary:
    n = passed = failed = errors = no_checks = tokens = unknown = 0
    for r in records:
        n += 1
        total = r["usage"]["total_tokens"]
        if total is None:
            unknown += 1
        else:
            tokens += total
        if r["status"] != "completed":
            errors += 1
        elif r["passed"] is True:
            passed += 1
        elif r["passed"] is None:
            no_checks += 1
        else:
            failed += 1
    return Summary(n, passed, failed, errors, no_checks, tokens, unknown)


def tokens_text(n: int | None) -> str:
    """A token count for people: `1,234`, or `unknown` where the server reported none."""
    return "unknown" if n is None else f"{n:,}"


def known_sum(records: Iterable[Record], key: str) -> int:
    """The sum of a usage key over the records that know it."""
    return sum(v for r in records if (v := r["usage"].get(key)) is not None)  # type: ignore[misc]


def tokens_total_text(s: Summary) -> str:
    """`1,234`, `1,234 + unknown (2 conversations without usage)` or `unknown`."""
    if s.unknown_usage == 0:
        return tokens_text(s.tokens)
    without = f"{s.unknown_usage} conversation{'s' if s.unknown_usage != 1 else ''} without usage"
    if s.unknown_usage == s.conversations:
        return f"unknown ({without})"
    return f"{s.tokens:,} + unknown ({without})"


def exit_code(summary: Summary, fail_under: float | None = None) -> int:
    """0 when every check passed (or the pass rate is at least `fail_under`), 1 otherwise."""
    if fail_under is not None:
        return 0 if summary.pass_rate >= fail_under else 1
    return 0 if summary.failed == 0 and summary.errors == 0 else 1


# --- reading transcript files --------------------------------------------------------------------

_INT = (int,)
_NUM = (int, float)
_STR = (str,)
_OPT_STR = (str, type(None))
_RECORD_KEYS: dict[str, tuple[type, ...]] = {
    "batch_id": _STR,
    "conversation_id": _STR,
    "job": _STR,
    "api": _STR,
    "model": _STR,
    "assistant": (dict,),
    "status": _STR,
    "passed": (bool, type(None)),
    "turns": (list,),
    "usage": (dict,),
    "error": _OPT_STR,
}
_TURN_KEYS: dict[str, tuple[type, ...]] = {
    "index": _INT,
    "user": _STR,
    "assistant": _OPT_STR,
    "tool_calls": (list,),
    "latency_ms": (*_NUM, type(None)),
    "checks": (list,),
}
_CHECK_KEYS: dict[str, tuple[type, ...]] = {"type": _STR, "passed": (bool,), "detail": _OPT_STR}
_USAGE_KEYS = ("prompt_tokens", "completion_tokens", "total_tokens")
_STATUSES = {s.value for s in Status}


def _problem(obj: dict[str, Any], keys: dict[str, tuple[type, ...]], where: str) -> str | None:
    for key, types in keys.items():
        if key not in obj:
            return f"{where}{key}: missing"
        value = obj[key]
        # bool is an int in Python; a JSON true is never a count.
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            return (
                f"{where}{key}: expected {' or '.join(_type_name(t) for t in types)}, got {json.dumps(value)}"
            )
    return None


def _type_name(t: type) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true/false", dict: "an object"}
    return names.get(t, "null" if t is type(None) else "a list")


def _usage_problem(usage: dict[str, Any], where: str) -> str | None:
    for key in _USAGE_KEYS:
        v = usage.get(key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
            return f"{where}usage.{key}: expected a count or null, got {json.dumps(v)}"
    return None


def record_problem(obj: Any) -> str | None:
    """What makes `obj` not a transcript record the reports can read (None when it is one)."""
    if not isinstance(obj, dict):
        return "expected a JSON object (one transcript record per line)"
    problem = _problem(obj, _RECORD_KEYS, "")
    if problem is None and obj["status"] not in _STATUSES:
        problem = f"status: {obj['status']!r} is not one of {', '.join(sorted(_STATUSES))}"
    problem = problem or _usage_problem(obj["usage"], "")
    for t, turn in enumerate(obj.get("turns", []) if problem is None else []):
        where = f"turns[{t}]."
        if not isinstance(turn, dict):
            return f"turns[{t}]: expected an object"
        problem = _problem(turn, _TURN_KEYS, where)
        if problem is None and isinstance(turn.get("usage"), dict):
            problem = _usage_problem(turn["usage"], where)
        for c, check in enumerate(turn["checks"] if problem is None else []):
            if not isinstance(check, dict):
                return f"{where}checks[{c}]: expected an object"
            problem = problem or _problem(check, _CHECK_KEYS, f"{where}checks[{c}].")
        if problem:
            return problem
    return problem


def load_transcripts(path: str | Path) -> list[Record]:
    """Every record of a JSONL transcript file; UsageError (exit 2) `PATH:LINE: what` otherwise."""
    records: list[Record] = []
    first_line: dict[str, int] = {}
    try:
        fh = open(path, encoding="utf-8")  # noqa: SIM115 - closed below; errors need the line number
    except OSError as e:
        raise UsageError(f"{path}: cannot read: {e.strerror or e}") from None
    with fh:
        try:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise UsageError(f"{path}:{lineno}: not valid JSON: {e.msg} (column {e.colno})") from None
                problem = record_problem(obj)
                if problem:
                    raise UsageError(f"{path}:{lineno}: {problem}")
                cid = obj["conversation_id"]
                if cid in first_line:
                    first = first_line[cid]
                    raise UsageError(
                        f"{path}:{lineno}: conversation_id {cid!r} appears twice (first on line {first})"
                    )
                first_line[cid] = lineno
                records.append(obj)
        except UnicodeDecodeError as e:
            raise UsageError(f"{path}: not UTF-8 text: {e.reason}") from None
    if not records:
        raise UsageError(f"{path}: no transcript records (empty file)")
    return records


# --- what went wrong, in words ---------------------------------------------------------------------


@dataclass(frozen=True)
class CheckFailure:
    turn: int  # the turn's 0-based index; shown 1-based to people
    user: str
    check: str
    expected: Any
    detail: str | None
    assistant: str | None


def clip(text: str | None, limit: int = 160) -> str:
    """One line of at most `limit` characters, for tables and messages."""
    if text is None:
        return "(no reply)"
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def describe_check(check: CheckResult) -> str:
    """`contains "refund"`, `max_latency_ms 20000`, `is_json`."""
    value = check.get("value")
    if value is None or value is True:
        return check["type"]
    if isinstance(value, dict) and check["type"] in ("judge", "python", "similar"):
        main = value.get("rubric") or value.get("function") or value.get("to")
        least = f" (at least {value['at_least']:g})" if "at_least" in value else ""
        return f"{check['type']} {clip(json.dumps(main, ensure_ascii=False), 80)}{least}"
    shown = value if isinstance(value, int | float) else json.dumps(value, ensure_ascii=False)
    return f"{check['type']} {clip(str(shown), 80)}"


CONVERSATION_TURN = -1
"""`CheckFailure.turn` of a conversation-level check (its `expect:`, after the last turn)."""


def check_failures(record: Record) -> list[CheckFailure]:
    failures = [
        CheckFailure(t["index"], t["user"], c["type"], c.get("value"), c["detail"], t["assistant"])
        for t in record["turns"]
        for c in t["checks"]
        if not c["passed"]
    ]
    last = record["turns"][-1]["assistant"] if record["turns"] else None
    for c in record.get("checks") or []:
        if not c["passed"]:
            failures.append(CheckFailure(CONVERSATION_TURN, "", c["type"], c.get("value"), c["detail"], last))
    return failures


def graded_text(check: CheckResult) -> str:
    """What a grader said, for reports: `verdict fail, score 4, label 'evasive': reason` (or '')."""
    parts = [f"verdict {check['verdict']}"] if check.get("verdict") else []
    if check.get("score") is not None:
        parts.append(f"score {check['score']:g}")
    if check.get("label"):
        parts.append(f"label {check['label']!r}")
    if check.get("method"):
        parts.append(f"method {check['method']}")
    text = ", ".join(parts)
    return f"{text}: {check['reason']}" if check.get("reason") else text


_QUOTED_REPLY = re.compile(r"; got ['\"].*$", re.DOTALL)


def failure_line(f: CheckFailure) -> str:
    # Check details often end by quoting the reply ("...; got 'Refunds ...'"): it is shown once, below.
    short = _QUOTED_REPLY.sub("", f.detail) if f.detail and f.assistant is not None else f.detail
    detail = f" ({clip(short, 100)})" if short else ""
    check = describe_check({"type": f.check, "value": f.expected, "passed": False, "detail": None})
    where = "conversation" if f.turn == CONVERSATION_TURN else f"turn {f.turn + 1}"
    return f"{where}: {check} failed{detail}; assistant said: {json.dumps(clip(f.assistant))}"


_TURN_PREFIX = re.compile(r"^turn (\d+): ")


def error_line(record: Record) -> str:
    """Why a conversation did not complete, naming the turn where it stopped when known."""
    message = record["error"] or "no error message recorded"
    where = ""
    for t in record["turns"]:
        if t.get("error") or (t.get("run_status") not in (None, "completed")):
            where = f"turn {t['index'] + 1}: "
            break
    # Messages name turns from 1, like every report ("turn 1: ..."), records index them from 0; the
    # turn found in the record wins (records written before 0.x said "turn 0" for the first turn).
    m = _TURN_PREFIX.match(message)
    if m:
        where, message = where or f"turn {m.group(1)}: ", message[m.end() :]
    return f"{where}{record['status']}: {clip(message, 300)}"


def problems(record: Record) -> list[str]:
    """Every reason this conversation did not pass, one line each (empty when it passed)."""
    if outcome(record) == ERROR:
        return [error_line(record)]
    return [failure_line(f) for f in check_failures(record)]


# --- repeats, latency ------------------------------------------------------------------------------


def base_id(conversation_id: str) -> str:
    """The conversation id without its repeat suffix (`#r0`, `#r1`, ...)."""
    return _REPEAT_SUFFIX.sub("", conversation_id)


def repeat_groups(records: Iterable[Record]) -> dict[str, list[Record]]:
    groups: dict[str, list[Record]] = {}
    for r in records:
        groups.setdefault(base_id(r["conversation_id"]), []).append(r)
    return groups


def flaky(groups: dict[str, list[Record]]) -> dict[str, list[Record]]:
    """Groups that passed (or completed, without checks) sometimes and failed or errored other times."""
    out = {}
    for key, runs in groups.items():
        oks = {outcome(r) in (PASSED, NO_CHECKS) for r in runs}
        if len(oks) == 2:
            out[key] = runs
    return out


def turn_latencies(records: Iterable[Record]) -> list[float]:
    return [t["latency_ms"] for r in records for t in r["turns"] if t["latency_ms"] is not None]


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile (an observed value, never an interpolated one)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def format_ms(ms: float | None) -> str:
    if ms is None:
        return "-"
    return f"{ms:.0f} ms" if ms < 1000 else f"{ms / 1000:.2f} s"


def conversation_ms(record: Record) -> float | None:
    """Time spent in the conversation's turns; None when no turn recorded a latency."""
    lats = [t["latency_ms"] for t in record["turns"] if t["latency_ms"] is not None]
    return float(sum(lats)) if lats else None


# --- the terminal report ---------------------------------------------------------------------------

MARK = {PASSED: "PASS", FAILED: "FAIL", ERROR: "ERROR", NO_CHECKS: "-"}


def _table(rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  " + "  ".join(cells).rstrip())
    return lines


def checks_cell(record: Record) -> str:
    checks = [c for t in record["turns"] for c in t["checks"]] + list(record.get("checks") or [])
    return f"{sum(c['passed'] for c in checks)}/{len(checks)}" if checks else "-"


def render_report(records: Sequence[Record], prices: PriceTable, *, failed_only: bool = False) -> str:
    """The `runner report` text: table, failures, totals, latency, tokens, cost, repeats."""
    s = summarize(records)
    lines = [_header(records), ""]
    shown = [r for r in records if not failed_only or outcome(r) in (FAILED, ERROR)]
    if shown:
        rows = [["result", "conversation", "status", "turns", "checks", "time", "tokens"]]
        for r in shown:
            rows.append(
                [
                    MARK[outcome(r)],
                    r["conversation_id"],
                    r["status"],
                    str(len(r["turns"])),
                    checks_cell(r),
                    format_ms(conversation_ms(r)),
                    tokens_text(r["usage"]["total_tokens"]),
                ]
            )
        lines += [*_table(rows, right={3, 4, 5, 6}), ""]
    bad = [r for r in records if outcome(r) in (FAILED, ERROR)]
    if bad:
        lines.append(f"failures ({len(bad)}):")
        for r in bad:
            lines.append(f"  {r['conversation_id']}")
            lines += [f"    {p}" for p in problems(r)]
        lines.append("")
    lines.append(summary_line(s))
    lats = turn_latencies(records)
    lines.append(
        f"latency per turn: p50 {format_ms(percentile(lats, 50))}, p95 {format_ms(percentile(lats, 95))}, "
        f"max {format_ms(max(lats, default=None))} ({len(lats)} turns)"
    )
    prompt, completion = known_sum(records, "prompt_tokens"), known_sum(records, "completion_tokens")
    lines.append(f"tokens: {tokens_total_text(s)} (prompt {prompt:,}, completion {completion:,})")
    graded = [g for r in records if (g := r.get("grader_usage"))]
    if graded:
        totals = [g["total_tokens"] for g in graded]
        tokens = "unknown" if None in totals else f"{sum(t or 0 for t in totals):,}"
        requests = sum(g["requests"] for g in graded)
        lines.append(f"grader tokens: {tokens} in {requests:,} requests (apart from the tokens above)")
    cost = estimate(records, prices)
    grading = f" (grading {format_usd(cost.grading_usd)})" if graded and cost.grading_usd else ""
    lines.append(f"estimated cost: {cost.describe()}{grading}")
    lines += _repeat_lines(records)
    return "\n".join(lines)


def _header(records: Sequence[Record]) -> str:
    def names(key: str) -> str:
        return ", ".join(sorted({str(r[key]) for r in records}))  # type: ignore[literal-required]

    batches = sorted({r["batch_id"] for r in records})
    batch = batches[0] if len(batches) == 1 else f"{len(batches)} batches" if batches else "-"
    return f"{names('job')} · batch {batch} · api {names('api')} · model {names('model')}"


def summary_line(s: Summary) -> str:
    judged = s.conversations - s.no_checks
    rate = f"; pass rate {s.pass_rate:.1%} ({s.passed}/{judged})" if judged else ""
    extra = f", {s.no_checks} without checks" if s.no_checks else ""
    counts = f"{s.passed} passed, {s.failed} failed, {s.errors} errors"
    return f"{s.conversations} conversations: {counts}{extra}{rate}"


def _repeat_lines(records: Sequence[Record]) -> list[str]:
    groups = repeat_groups(records)
    if all(len(runs) == 1 for runs in groups.values()):
        return []
    sizes = sorted({len(runs) for runs in groups.values()})
    per = str(sizes[0]) if len(sizes) == 1 else f"{sizes[0]}-{sizes[-1]}"
    every = sum(all(outcome(r) in (PASSED, NO_CHECKS) for r in runs) for runs in groups.values())
    lines = [
        f"repeats: {per} runs per conversation; {every}/{len(groups)} conversations passed every run",
    ]
    flakes = flaky(groups)
    if flakes:
        lines.append(f"flaky ({len(flakes)}):")
        for key, runs in flakes.items():
            ok = sum(outcome(r) in (PASSED, NO_CHECKS) for r in runs)
            lines.append(f"  {key}  {ok}/{len(runs)} runs passed")
    else:
        lines.append("flaky: none")
    return lines
