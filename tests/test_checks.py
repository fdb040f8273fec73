"""The `expect:` check types: each passes and fails where it should, with a useful detail."""

# ruff: noqa: E501  (tables of exact messages read best one per line)

from __future__ import annotations

from typing import Any

import pytest

from runner.jobs.checks import CHECK_TYPES, check_value_problem, evaluate_turn
from runner.records import TurnRecord
from runner.tasks import CheckSpec


def turn(
    reply: str | None = "Refunds are accepted within 30 days.",
    *,
    latency_ms: int | None = 800,
    completion_tokens: int = 9,
    tools: tuple[str, ...] = (),
    error: str | None = None,
) -> TurnRecord:
    record: TurnRecord = {
        "index": 0,
        "user": "refund?",
        "assistant": reply,
        "run_id": "run_1",
        "run_status": "completed" if reply is not None else "failed",
        "tool_calls": [{"name": n, "arguments": {}, "output": "x"} for n in tools],
        "usage": {
            "prompt_tokens": 5,
            "completion_tokens": completion_tokens,
            "total_tokens": 5 + completion_tokens,
        },
        "latency_ms": latency_ms,
        "checks": [],
    }
    if error is not None:
        record["error"] = error
    return record


def one(t: TurnRecord, type_: str, value: Any) -> tuple[bool, str | None]:
    (result,) = evaluate_turn(t, [CheckSpec(type=type_, value=value)])
    assert result["type"] == type_ and result["value"] == value
    return result["passed"], result["detail"]


PASSING = [
    ("contains", "30 days", turn()),
    ("not_contains", "sorry", turn()),
    ("icontains", "REFUNDS", turn()),
    ("not_icontains", "SORRY", turn()),
    ("equals", "Refunds are accepted within 30 days.", turn("  Refunds are accepted within 30 days.\n")),
    ("starts_with", "Refunds", turn("\nRefunds are accepted within 30 days.")),
    ("ends_with", "days.", turn()),
    ("regex", r"\d+ days", turn()),
    ("not_regex", r"(?i)\bsorry\b", turn()),
    ("is_json", True, turn(' {"a": [1, 2]} ')),
    ("max_total_tokens", 14, turn()),
    ("json_schema", {"type": "object", "required": ["a"]}, turn('{"a": 1}')),
    ("min_length", 10, turn()),
    ("max_length", 100, turn()),
    ("max_latency_ms", 800, turn()),
    ("max_tokens", 9, turn()),
    ("tool_called", "lookup_order", turn(tools=("lookup_order",))),
    ("not_tool_called", "lookup_order", turn(tools=("other",))),
]

FAILING = [
    (
        "contains",
        "60 days",
        turn(),
        "expected the reply to contain '60 days'; got 'Refunds are accepted within 30 days.'",
    ),
    (
        "not_contains",
        "30",
        turn(),
        "expected the reply not to contain '30'; got 'Refunds are accepted within 30 days.'",
    ),
    (
        "icontains",
        "SORRY",
        turn(),
        "expected the reply to contain 'SORRY' (any case); got 'Refunds are accepted within 30 days.'",
    ),
    (
        "not_icontains",
        "REFUNDS",
        turn(),
        "expected the reply not to contain 'REFUNDS' (any case); got 'Refunds are accepted within 30 days.'",
    ),
    (
        "equals",
        "Refunds",
        turn(),
        "expected the reply to be 'Refunds'; got 'Refunds are accepted within 30 days.'",
    ),
    (
        "starts_with",
        "Sorry",
        turn(),
        "expected the reply to start with 'Sorry'; got 'Refunds are accepted within 30 days.'",
    ),
    (
        "ends_with",
        "!",
        turn(),
        "expected the reply to end with '!'; got 'Refunds are accepted within 30 days.'",
    ),
    (
        "regex",
        r"\d+ weeks",
        turn(),
        "expected the reply to match /\\d+ weeks/; got 'Refunds are accepted within 30 days.'",
    ),
    (
        "not_regex",
        r"\d+",
        turn(),
        "expected the reply not to match /\\d+/; it matched '30' in 'Refunds are accepted within 30 days.'",
    ),
    (
        "is_json",
        True,
        turn("{'a': 1}"),
        "expected the reply to be JSON (Expecting property name enclosed in double quotes: line 1 column 2 (char 1)); got \"{'a': 1}\"",
    ),
    (
        "json_schema",
        {"type": "object", "required": ["b"]},
        turn('{"a": 1}'),
        "the reply's JSON does not match the schema at (root): 'b' is a required property",
    ),
    (
        "json_schema",
        {"properties": {"a": {"type": "string"}}},
        turn('{"a": 1}'),
        "the reply's JSON does not match the schema at a: 1 is not of type 'string'",
    ),
    (
        "json_schema",
        {"type": "object"},
        turn("nope"),
        "expected the reply to be JSON (Expecting value: line 1 column 1 (char 0)); got 'nope'",
    ),
    ("min_length", 100, turn("short"), "expected at least 100 characters; got 5: 'short'"),
    ("max_length", 3, turn("short"), "expected at most 3 characters; got 5: 'short'"),
    ("max_latency_ms", 500, turn(), "expected a latency of at most 500 ms; took 800 ms"),
    (
        "max_latency_ms",
        500,
        turn(latency_ms=None),
        "expected a latency of at most 500 ms; no latency was recorded",
    ),
    ("max_tokens", 5, turn(), "expected at most 5 completion tokens; the reply used 9"),
    ("max_total_tokens", 13, turn(), "expected at most 13 tokens in all; used 14"),
    ("tool_called", "lookup_order", turn(tools=("a", "b")), "expected a call to 'lookup_order'; called a, b"),
    ("tool_called", "lookup_order", turn(), "expected a call to 'lookup_order'; called no tool"),
    (
        "not_tool_called",
        "lookup_order",
        turn(tools=("lookup_order",)),
        "expected no call to 'lookup_order'; it was called",
    ),
]


def test_checks_table_covers_every_type() -> None:
    local = {name for name, t in CHECK_TYPES.items() if not t.graded}  # graded ones: test_graders.py
    assert {c[0] for c in PASSING} == local == {c[0] for c in FAILING}
    for name in ("contains", "not_contains", "icontains", "equals", "regex", "not_regex", "starts_with", "is_json",
                 "json_schema", "max_latency_ms", "max_tokens", "tool_called", "not_tool_called"):  # fmt: skip
        assert name in CHECK_TYPES


@pytest.mark.parametrize(("type_", "value", "record"), PASSING, ids=[c[0] for c in PASSING])
def test_checks_pass(type_: str, value: Any, record: TurnRecord) -> None:
    assert check_value_problem(type_, value) is None
    assert one(record, type_, value) == (True, None)


@pytest.mark.parametrize(
    ("type_", "value", "record", "detail"), FAILING, ids=[f"{c[0]}-{i}" for i, c in enumerate(FAILING)]
)
def test_checks_fail_with_detail(type_: str, value: Any, record: TurnRecord, detail: str) -> None:
    assert one(record, type_, value) == (False, detail)


def test_checks_detail_truncates_long_replies() -> None:
    passed, detail = one(turn("x" * 1000), "contains", "y")
    assert not passed and detail == f"expected the reply to contain 'y'; got '{'x' * 117}...'"


def test_checks_no_reply_fails_content_checks_only() -> None:
    errored = turn(
        None, latency_ms=30000, completion_tokens=0, tools=("lookup_order",), error="run failed: server_error"
    )
    results = evaluate_turn(
        errored,
        [
            CheckSpec(type="not_contains", value="sorry"),
            CheckSpec(type="is_json", value=True),
            CheckSpec(type="tool_called", value="lookup_order"),
            CheckSpec(type="max_tokens", value=10),
            CheckSpec(type="max_latency_ms", value=1000),
        ],
    )
    assert [(r["passed"], r["detail"]) for r in results] == [
        (False, "no reply to check (run failed: server_error)"),
        (False, "no reply to check (run failed: server_error)"),
        (True, None),
        (True, None),
        (False, "expected a latency of at most 1000 ms; took 30000 ms"),
    ]
    assert evaluate_turn(turn(None), [CheckSpec(type="contains", value="x")])[0]["detail"] == (
        "no reply to check (run status failed)"
    )


def test_checks_unknown_type_fails_without_raising() -> None:
    (result,) = evaluate_turn(turn(), [CheckSpec(type="containz", value="x")])
    assert result["passed"] is False and result["detail"].startswith(
        "unknown check type 'containz'; valid types: "
    )


@pytest.mark.parametrize(
    ("type_", "value", "problem"),
    [
        ("contains", 3, "contains needs a string, got 3"),
        ("tool_called", "", "tool_called needs a function name"),
        ("regex", "(", "invalid regex '(': missing ), unterminated subpattern at position 0"),
        ("max_tokens", 0, "max_tokens needs a whole number greater than 0, got 0"),
        ("max_latency_ms", True, "max_latency_ms needs a whole number greater than 0, got True"),
        ("min_length", -1, "min_length needs a whole number >= 0, got -1"),
        ("is_json", False, "is_json takes `true` (write `is_json: true`), got False"),
        ("json_schema", [1], "json_schema needs a JSON Schema mapping, got [1]"),
        (
            "json_schema",
            {"type": "objekt"},
            "invalid JSON Schema at type: 'objekt' is not valid under any of the given schemas",
        ),
        ("nope", 1, f"unknown check type 'nope'; valid types: {', '.join(CHECK_TYPES)}"),
    ],
)
def test_checks_value_problem(type_: str, value: Any, problem: str) -> None:
    assert check_value_problem(type_, value) == problem


def test_checks_results_keep_order_and_values() -> None:
    specs = [CheckSpec(type="contains", value="30"), CheckSpec(type="max_tokens", value=1)]
    assert evaluate_turn(turn(), specs) == [
        {"type": "contains", "value": "30", "passed": True, "detail": None},
        {
            "type": "max_tokens",
            "value": 1,
            "passed": False,
            "detail": "expected at most 1 completion tokens; the reply used 9",
        },
    ]
