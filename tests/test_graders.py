"""Graders: `judge`, `python` and `similar` checks and conversation-level `expect:`, end to end
against the real simulator (it plays the grading model: rules matching the grading prompt answer
with the JSON verdict, depending on the reply being graded) through the real SDK."""

# ruff: noqa: E501  (tables of rules, checks and exact messages read best one per line)

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from click.testing import CliRunner

from runner.cli import main
from runner.engine.conversation import run_conversation
from runner.engine.graders import _no_embeddings
from runner.engine.limits import LocalLimiter
from runner.jobs import load_job
from runner.jobs.loader import expand
from runner.jobs.pychecks import forget
from runner.records import Record
from runner.reports.diff import diff_records
from runner.reports.pricing import estimate, load_prices
from runner.settings import Settings
from runner.simulator import RunningSimulator

ROOT = Path(__file__).resolve().parent.parent

GRADE = "(?s)^You grade"
RULES: list[dict[str, Any]] = [
    # The grader: its answer depends on the reply being graded, never fixed.
    {"when": GRADE + r".*Rubric:\s*Rate.*reply to grade:.*30 days", "reply": '{"reason": "clear", "score": 9}'},
    {"when": GRADE + r".*Rubric:\s*Rate", "reply": '{"reason": "vague", "score": 3}'},
    {"when": GRADE + r".*Rubric:\s*Classify.*reply to grade:.*30 days",
     "reply": '{"reason": "answers", "label": "helpful"}'},
    {"when": GRADE + r".*Rubric:\s*Classify", "reply": '{"reason": "dodges", "label": "evasive"}'},
    {"when": GRADE + r".*Rubric:\s*Garbled", "reply": "Sure! The reply looks fine to me.", "ignore_format": True},
    {"when": GRADE + r".*reply to grade:.*(30 days|shipped)", "reply": '{"reason": "does it", "verdict": "pass"}'},
    {"when": GRADE, "reply": '{"reason": "misses it", "verdict": "fail"}'},
    # The assistant.
    {"when": "(?i)refund", "reply": "Refunds are accepted within 30 days."},
    {"when": "(?i)order", "call": "lookup_order", "arguments": {"order_id": "A1"}, "then": "Your order is {{tool_output}}."},
    {"when": "(?i)weather", "reply": "I cannot help with that."},
]  # fmt: skip

TOOL = {
    "type": "function",
    "function": {
        "name": "lookup_order",
        "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}},
    },
}


@pytest.fixture(autouse=True)
def _fresh_checks() -> None:
    forget()


def write_job(folder: Path, conversations: list[dict[str, Any]], **extra: Any) -> Path:
    job = {
        "name": "graders",
        "api": "chat",
        "model": "gpt-4o-mini",
        "assistants": {"support": {"instructions": "You help.", "tools": [TOOL]}},
        "conversations": conversations,
        **extra,
    }
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(job, sort_keys=False), encoding="utf-8")
    return path


class CountingLimiter(LocalLimiter):
    """The in-process limiter, counting what it let through (requests taken)."""

    def __init__(self) -> None:
        super().__init__(requests_per_minute=1000)
        self.taken = 0

    def acquire(self, requests: int = 1, tokens: int = 0) -> None:
        super().acquire(requests, tokens)
        self.taken += requests


def run_all(
    path: Path,
    sim: RunningSimulator,
    client: openai.OpenAI,
    limiter: LocalLimiter | None = None,
    **settings: Any,
) -> list[Record]:
    tasks = expand(load_job(path))
    config = Settings(api_key="sk-test", base_url=sim.base_url, **settings)
    limiter = limiter or LocalLimiter()
    return [run_conversation(t, batch_id="b", limiter=limiter, client=client, settings=config) for t in tasks]


@pytest.fixture
def sim(sim_factory: Callable[..., RunningSimulator]) -> RunningSimulator:
    return sim_factory(rules={"rules": RULES, "default": "You said: {{message}}"})


def checks_of(record: Record, turn: int = 0) -> list[dict[str, Any]]:
    return [dict(c) for c in record["turns"][turn]["checks"]]


def test_graders_judge_forms_pass_and_fail_by_the_reply(
    tmp_path: Path, sim: RunningSimulator, openai_client: Callable[..., openai.OpenAI]
) -> None:
    expect = [
        {"judge": "The reply states the refund window"},
        {"judge": {"rubric": "Rate how helpful it is", "score": {"min": 1, "max": 10, "pass_at": 7}}},
        {"judge": {"rubric": "Classify the reply", "labels": ["helpful", "evasive"], "pass": ["helpful"]}},
    ]
    path = write_job(
        tmp_path,
        [
            {"id": "good", "turns": [{"user": "I want a refund", "expect": expect}]},
            {"id": "bad", "turns": [{"user": "What is the weather?", "expect": expect}]},
        ],
    )
    good, bad = run_all(path, sim, openai_client(sim))
    verdict, score, label = checks_of(good)
    assert (verdict["passed"], verdict["verdict"], verdict["reason"]) == (True, "pass", "does it")
    assert (score["passed"], score["score"], score["reason"]) == (True, 9.0, "clear")
    assert (label["passed"], label["label"]) == (True, "helpful")
    assert good["passed"] is True
    verdict, score, label = checks_of(bad)
    assert (verdict["passed"], verdict["verdict"], verdict["detail"]) == (
        False,
        "fail",
        "judge: fail: misses it",
    )
    assert (score["passed"], score["score"]) == (False, 3.0)
    assert score["detail"] == "judge scored 3, below pass_at 7: vague"
    assert (label["passed"], label["label"], label["verdict"]) == (False, "evasive", "fail")
    assert bad["passed"] is False and bad["status"] == "completed"


def test_graders_usage_apart_counted_by_the_shared_limiter_and_priced(
    tmp_path: Path, sim: RunningSimulator, openai_client: Callable[..., openai.OpenAI]
) -> None:
    path = write_job(
        tmp_path,
        [{"id": f"c{i}", "turns": [{"user": "refund please", "expect": [{"judge": "Says the window"}]}]}
         for i in range(2)],
    )  # fmt: skip
    limiter = CountingLimiter()
    records = run_all(path, sim, openai_client(sim), limiter)
    served = sim.stats()["by_route"]["POST /v1/chat/completions"]
    assert served == 4  # per conversation: one turn, one grading request
    assert limiter.taken == served == sum(r["requests"] for r in records)
    for r in records:
        turn = r["turns"][0]
        g = turn["grader_usage"]
        assert g is not None and g["requests"] == 1 and g["total_tokens"] > 0
        assert g["by_model"] == {
            "gpt-4o-mini": {k: g[k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
        }
        assert r["grader_usage"] == g
        assert r["usage"] == turn["usage"]  # the conversation's own usage leaves grading out
        assert g["prompt_tokens"] > turn["usage"]["prompt_tokens"]  # the grading prompt quotes the turn
    cost = estimate(records, load_prices())
    assert cost.complete and 0 < cost.grading_usd < cost.usd


def test_graders_unparseable_answer_is_retried_once_then_a_check_error(
    tmp_path: Path, sim_factory: Callable[..., RunningSimulator], openai_client: Callable[..., openai.OpenAI]
) -> None:
    strict = {
        "when": GRADE + ".*IMPORTANT: your previous answer",
        "reply": '{"reason": "ok now", "verdict": "pass"}',
    }
    for rules, expected in (([], "error"), ([strict], "pass")):
        sim = sim_factory(rules={"rules": [*rules, *RULES]})
        path = write_job(
            tmp_path, [{"id": "c", "turns": [{"user": "refund", "expect": [{"judge": "Garbled"}]}]}]
        )
        (record,) = run_all(path, sim, openai_client(sim))
        (check,) = checks_of(record)
        assert sim.stats()["by_route"]["POST /v1/chat/completions"] == 3  # the turn, the grade, one retry
        assert check["verdict"] == expected
        assert check["passed"] is (expected == "pass")
        assert record["turns"][0]["grader_usage"]["requests"] == 2
    assert check["reason"] == "ok now"


def test_graders_unparseable_twice_never_passes(
    tmp_path: Path, sim: RunningSimulator, openai_client: Callable[..., openai.OpenAI]
) -> None:
    path = write_job(tmp_path, [{"id": "c", "turns": [{"user": "refund", "expect": [{"judge": "Garbled"}]}]}])
    (record,) = run_all(path, sim, openai_client(sim))
    (check,) = checks_of(record)
    assert check["passed"] is False and check["verdict"] == "error"
    assert check["detail"].startswith("grader error: unparseable answer twice (not JSON: 'Sure! The reply")
    assert record["passed"] is False and record["status"] == "completed"


def test_graders_responses_api_grader(
    tmp_path: Path, sim: RunningSimulator, openai_client: Callable[..., openai.OpenAI]
) -> None:
    path = write_job(
        tmp_path,
        [{"id": "c", "turns": [{"user": "refund", "expect": [{"judge": "Says the window"}]}]}],
        grader={"api": "responses"},
    )
    (record,) = run_all(path, sim, openai_client(sim))
    (check,) = checks_of(record)
    assert (check["passed"], check["verdict"]) == (True, "pass")
    assert sim.stats()["by_route"]["POST /v1/responses"] == 1


CHECKS_PY = """
class Result:
    def __init__(self, passed, reason):
        self.passed, self.reason = passed, reason

def says_days(reply, ctx):
    return "days" in reply

def share(reply, ctx):
    return 0.25 if ctx["vars"]["product"] == "phone" else 0.75

def with_reason(reply, ctx):
    return {"passed": False, "reason": f"turn {ctx['index']} of {ctx['conversation_id']} lacks a policy link"}

def as_object(reply, ctx):
    return Result(True, "fine")

def explodes(reply, ctx):
    raise ValueError("no policy table")

def turns_seen(reply, ctx):
    return len(ctx["conversation"]) == 2 and ctx["scope"] == "conversation"
"""


def test_graders_python_checks_results_and_errors(
    tmp_path: Path, sim: RunningSimulator, openai_client: Callable[..., openai.OpenAI]
) -> None:
    (tmp_path / "checks").mkdir()
    (tmp_path / "checks" / "policy.py").write_text(CHECKS_PY, encoding="utf-8")
    expect = [
        {"python": "checks/policy.py:says_days"},
        {"python": {"function": "checks/policy.py:share", "pass_at": 0.5}},
        {"python": "checks/policy.py:with_reason"},
        {"python": "checks/policy.py:as_object"},
        {"python": "checks/policy.py:explodes"},
        {"contains": "30"},
    ]
    path = write_job(
        tmp_path,
        [{"id": "c", "vars": {"product": "laptop"}, "turns": [{"user": "refund", "expect": expect}]}],
    )
    (record,) = run_all(path, sim, openai_client(sim))
    days, share, reason, obj, boom, contains = checks_of(record)
    assert (days["passed"], days["verdict"]) == (True, "pass")
    assert (share["passed"], share["score"]) == (True, 0.75)
    assert (reason["passed"], reason["detail"]) == (False, "turn 0 of graders/c#r0 lacks a policy link")
    assert (obj["passed"], obj["reason"]) == (True, "fine")
    assert (boom["passed"], boom["verdict"]) == (False, "error")
    assert boom["detail"] == "python check raised ValueError: no policy table"
    assert contains["passed"] is True  # the checks after a raising one still ran
    assert record["status"] == "completed" and "grader_usage" not in record  # no model graded anything


def test_graders_python_check_changed_after_load_is_refused(
    tmp_path: Path, sim: RunningSimulator, openai_client: Callable[..., openai.OpenAI]
) -> None:
    (tmp_path / "checks.py").write_text("def ok(reply, ctx):\n    return True\n", encoding="utf-8")
    path = write_job(
        tmp_path, [{"id": "c", "turns": [{"user": "refund", "expect": [{"python": "checks.py:ok"}]}]}]
    )
    tasks = expand(load_job(path))
    value = tasks[0].turns[0].expect[0].value
    assert (
        value["path"] == "checks.py"
        and value["root"] == str(tmp_path.resolve())
        and len(value["sha256"]) == 64
    )
    forget()  # a worker that never loaded it
    (tmp_path / "checks.py").write_text("def ok(reply, ctx):\n    return False\n", encoding="utf-8")
    config = Settings(api_key="sk-test", base_url=sim.base_url)
    record = run_conversation(
        tasks[0], batch_id="b", limiter=LocalLimiter(), client=openai_client(sim), settings=config
    )
    (check,) = checks_of(record)
    assert check["passed"] is False and check["verdict"] == "error"
    assert check["detail"].startswith("python check refused: checks.py:ok:")
    assert "changed since the job was loaded (content hash differs)" in check["detail"]


def test_graders_python_module_outside_job_folder_needs_the_workers_allow_list(
    tmp_path: Path, sim: RunningSimulator, openai_client: Callable[..., openai.OpenAI]
) -> None:
    # A module outside the job's folder, named by module: a worker imports it only if allowed.
    (tmp_path / "job").mkdir()
    path = write_job(tmp_path / "job", [{"id": "c", "turns": [{"user": "refund", "expect": [
        {"python": "runner_demo_check:ok"}]}]}])  # fmt: skip
    site = tmp_path / "site"
    site.mkdir()
    (site / "runner_demo_check.py").write_text("def ok(reply, ctx):\n    return True\n", encoding="utf-8")
    sys.path.insert(0, str(site))
    try:
        assert expand(load_job(path))[0].turns[0].expect[0].value["module"] == "runner_demo_check"
        denied = run_all(path, sim, openai_client(sim))[0]
        allowed = run_all(path, sim, openai_client(sim), check_packages=("runner_demo_check",))[0]
    finally:
        sys.path.remove(str(site))
        sys.modules.pop("runner_demo_check", None)
    (check,) = checks_of(denied)
    assert check["verdict"] == "error"
    assert "package 'runner_demo_check' is not in this worker's RUNNER_CHECK_PACKAGES" in check["detail"]
    assert checks_of(allowed)[0]["passed"] is True


def test_graders_similar_ranks_a_paraphrase_above_unrelated_text(
    tmp_path: Path, sim: RunningSimulator, openai_client: Callable[..., openai.OpenAI]
) -> None:
    expect = [
        {"similar": {"to": "Refunds are accepted within 30 days of purchase.", "at_least": 0.5}},
        {"similar": {"to": "The weather in Paris is sunny today.", "at_least": 0.5}},
        {"similar": {"to": "Refunds within 30 days.", "at_least": 0.5, "method": "lexical"}},
        {"similar": {"to": "You can get your refund within 30 days.", "at_least": 0.5}},
    ]
    path = write_job(tmp_path, [{"id": "c", "turns": [{"user": "refund", "expect": expect}]}])
    limiter = CountingLimiter()
    (record,) = run_all(path, sim, openai_client(sim), limiter)
    near, far, lexical, paraphrase = checks_of(record)  # the reply: "Refunds are accepted within 30 days."
    assert near["score"] > paraphrase["score"] > 0.5 > far["score"]
    assert paraphrase["passed"] is True
    assert (near["passed"], far["passed"]) == (True, False)
    # The simulator serves /v1/embeddings: both went through it, through the shared limiter.
    assert near["method"] == far["method"] == "embeddings:text-embedding-3-small"
    assert sim.stats()["by_route"]["POST /v1/embeddings"] == 3
    assert limiter.taken == sum(sim.stats()["by_route"].values()) == record["requests"] == 4
    assert lexical["method"] == "lexical:token-cosine" and lexical["passed"] is True
    usage = record["turns"][0]["grader_usage"]
    assert usage["requests"] == 3 and usage["completion_tokens"] == 0
    assert set(usage["by_model"]) == {"text-embedding-3-small"}
    assert usage["total_tokens"] == usage["prompt_tokens"] > 0
    assert record["usage"] == record["turns"][0]["usage"]  # the embeddings are grading, not the turn's


def test_graders_similar_without_embeddings_falls_back_to_lexical(
    tmp_path: Path, sim_factory: Callable[..., RunningSimulator], openai_client: Callable[..., openai.OpenAI]
) -> None:
    # A catalogue without the embeddings model: the server answers 404 model_not_found.
    sim = sim_factory(rules={"rules": RULES}, models=("gpt-4o-mini",))
    expect = [
        {"similar": {"to": "Refunds are accepted within 30 days of purchase.", "at_least": 0.5}},
        {"similar": {"to": "Refunds within 30 days.", "at_least": 0.5, "method": "embeddings"}},
    ]
    path = write_job(tmp_path, [{"id": "c", "turns": [{"user": "refund", "expect": expect}]}])
    try:
        (record,) = run_all(path, sim, openai_client(sim))
    finally:
        _no_embeddings.clear()  # remembered by base URL: a later simulator may get the same port
    near, embeddings = checks_of(record)
    assert near["method"] == "lexical:token-cosine" and near["passed"] is True
    assert embeddings["verdict"] == "error" and embeddings["method"] == "embeddings:text-embedding-3-small"
    assert "no embeddings at this server (HTTP 404)" in embeddings["detail"]


def test_graders_conversation_level_expect(
    tmp_path: Path, sim: RunningSimulator, openai_client: Callable[..., openai.OpenAI]
) -> None:
    (tmp_path / "c.py").write_text(CHECKS_PY, encoding="utf-8")
    final = [
        {"tool_called": "lookup_order"},
        {"contains": "30 days"},
        {"max_total_tokens": 5},
        {"judge": "The assistant stays on topic"},
        {"python": "c.py:turns_seen"},
    ]
    turns = [{"user": "refund"}, {"user": "Where is order A1?"}]
    path = write_job(
        tmp_path, [{"id": "c", "tool_outputs": {"lookup_order": "shipped"}, "turns": turns, "expect": final}]
    )
    (record,) = run_all(path, sim, openai_client(sim))
    tool, contains, tokens, judge, python = record["checks"]
    assert tool["passed"] and contains["passed"] and judge["passed"] and python["passed"]
    assert tokens["passed"] is False
    assert tokens["detail"] == f"expected at most 5 tokens in all; used {record['usage']['total_tokens']}"
    assert record["passed"] is False
    assert record["grader_usage"]["requests"] == 1 and "grader_usage" not in record["turns"][1]


def test_graders_conversation_checks_not_run_when_it_did_not_complete(
    tmp_path: Path, sim: RunningSimulator, openai_client: Callable[..., openai.OpenAI]
) -> None:
    path = write_job(
        tmp_path, [{"id": "c", "turns": [{"user": "Where is my order?"}], "expect": [{"judge": "x"}]}]
    )
    (record,) = run_all(path, sim, openai_client(sim))  # no tool output for lookup_order: an error
    assert record["status"] == "error"
    assert record["checks"][0]["detail"] == "not run: the conversation did not complete"
    assert "POST /v1/chat/completions" in sim.stats()["by_route"]
    assert sim.stats()["by_route"]["POST /v1/chat/completions"] == 1  # no grading request


BAD_CASES = [
    ("missing-file", {"python": "checks/none.py:f"}, "expect[0].python: file not found: "),
    ("missing-function", {"python": "checks/ok.py:nope"}, "expect[0].python: checks/ok.py:nope: no function 'nope' in "),
    ("wrong-signature", {"python": "checks/ok.py:one_arg"}, "expect[0].python: checks/ok.py:one_arg: one_arg must take two arguments, fn(reply, ctx)"),
    ("outside-folder", {"python": "../x.py:f"}, "expect[0].python: ../x.py is outside the job file's folder"),
    ("bad-pass-at", {"python": {"function": "checks/ok.py:good", "pass_at": 2}}, "expect[0].python.pass_at: must be less than or equal to 1, got 2"),
    ("score-pass-at", {"judge": {"rubric": "r", "score": {"min": 1, "max": 5, "pass_at": 7}}}, "expect[0].judge.score: score.pass_at (7) must be within 1..5"),
    ("unknown-label", {"judge": {"rubric": "r", "labels": ["a", "b"], "pass": ["c"]}}, "expect[0].judge: unknown label 'c' in `pass`; labels: a, b"),
    ("similar-threshold", {"similar": {"to": "x", "at_least": 1.5}}, "expect[0].similar.at_least: must be less than or equal to 1, got 1.5"),
]  # fmt: skip


@pytest.mark.parametrize(("check", "message"), [c[1:] for c in BAD_CASES], ids=[c[0] for c in BAD_CASES])
def test_graders_validate_errors(tmp_path: Path, check: dict[str, Any], message: str) -> None:
    (tmp_path / "checks").mkdir()
    (tmp_path / "checks" / "ok.py").write_text(
        "def good(reply, ctx):\n    return True\n\ndef one_arg(reply):\n    return True\n", encoding="utf-8"
    )
    path = write_job(tmp_path, [{"id": "c", "turns": [{"user": "hi", "expect": [check]}]}])
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 2, result.output
    (line,) = result.stderr.splitlines()
    at, _, rest = line.removeprefix(f"{path}:").partition(": ")
    assert rest.startswith(f"conversations[0].turns[0].{message}"), line
    shown = path.read_text().splitlines()[int(at) - 1]  # the check's line, or its wrong key's
    assert next(iter(check)) in shown or message.split(":")[0].split(".")[-1] in shown, shown


def test_graders_schema_describes_the_new_keys() -> None:
    result = CliRunner().invoke(main, ["schema"])
    schema = json.loads(result.stdout)
    check = schema["$defs"]["Check"]["properties"]
    assert {"judge", "python", "similar", "max_total_tokens"} <= set(check)
    assert check["judge"]["anyOf"][0] == {"type": "string", "minLength": 1}
    assert set(schema["$defs"]["Judge"]["properties"]) == {"rubric", "score", "labels", "pass"}
    assert set(schema["$defs"]["Grader"]["properties"]) == {
        "model",
        "api",
        "temperature",
        "prompt",
        "embedding_model",
    }
    assert "expect" in schema["$defs"]["Conversation"]["properties"]


def _judged(score: float) -> Record:
    check = {"type": "judge", "value": {"rubric": "r", "score": {"min": 1, "max": 10, "pass_at": 5}},
             "passed": True, "detail": None, "verdict": "pass", "score": score, "reason": "x"}  # fmt: skip
    turn = {"index": 0, "user": "u", "assistant": "a", "run_id": None, "run_status": "completed",
            "tool_calls": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            "latency_ms": 1, "checks": [check]}  # fmt: skip
    return {"batch_id": "b", "conversation_id": "j/c#r0", "job": "j", "api": "chat", "model": "m",
            "assistant": {"key": "a", "name": "a", "id": None}, "thread_id": None, "vars": {},
            "status": "completed", "passed": True, "turns": [turn], "usage": turn["usage"], "attempts": 1,
            "error": None, "started_at": "", "finished_at": ""}  # type: ignore[typeddict-item]  # fmt: skip


def test_graders_diff_judge_score_drop_is_a_regression() -> None:
    assert not diff_records([_judged(9)], [_judged(8.5)]).regressed  # within 10 % of the scale
    result = diff_records([_judged(9)], [_judged(6)])
    assert result.regressed and not result.regressions
    (drop,) = result.score_drops
    assert drop.describe() == "j/c turn 1: judge 'r' score 9 → 6 (scale 1-10)"
    assert not diff_records([_judged(9)], [_judged(6)], score_drop=0.5).regressed


def test_graders_sample_job_runs_green(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main,
        ["run", str(ROOT / "jobs" / "graded.yaml"), "--simulate", "--inline", "--no-progress", "-o", str(tmp_path / "t.jsonl")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    (record,) = [json.loads(line) for line in (tmp_path / "t.jsonl").read_text().splitlines()]
    kinds = {c["type"] for t in record["turns"] for c in t["checks"]} | {c["type"] for c in record["checks"]}
    assert {"judge", "python", "similar", "tool_called", "max_total_tokens"} <= kinds
    report = CliRunner().invoke(main, ["report", str(tmp_path / "t.jsonl")])
    assert "grader tokens: " in report.output and "(grading $" in report.output


def test_graders_junit_failure_shows_the_graders_reason(tmp_path: Path) -> None:
    record = _judged(3)
    check = record["turns"][0]["checks"][0]
    check.update(
        passed=False, verdict="fail", reason="too vague", detail="judge scored 3, below pass_at 5: too vague"
    )
    record["passed"] = False
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps(record) + "\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["report", str(path), "--junit", str(tmp_path / "j.xml")])
    assert result.exit_code == 1
    xml = (tmp_path / "j.xml").read_text(encoding="utf-8")
    assert 'message="turn 1: judge &quot;r&quot; failed (judge scored 3, below pass_at 5: too vague)' in xml


def test_graders_simulator_default_grading_policy_by_the_reply(
    tmp_path: Path, sim_factory: Callable[..., RunningSimulator], openai_client: Callable[..., openai.OpenAI]
) -> None:
    # No rule matches the grading prompts: the simulator's documented default policy grades.
    assistant_only = [r for r in RULES if not r["when"].startswith(GRADE)]
    sim = sim_factory(rules={"rules": assistant_only})
    expect = [
        {"judge": 'The reply states the refund window ("30 days")'},
        {"judge": {"rubric": 'Rate it: "refund", "30 days", "receipt", "store"',
                   "score": {"min": 1, "max": 9, "pass_at": 5}}},
        {"judge": {"rubric": 'Classify: "refunds", "30 days"', "labels": ["helpful", "partial", "evasive"],
                   "pass": ["helpful"]}},
        {"judge": "Refunds accepted within days"},  # no quotes: at least half the words
    ]  # fmt: skip
    path = write_job(
        tmp_path,
        [
            {"id": "good", "turns": [{"user": "I want a refund", "expect": expect}]},
            {"id": "bad", "turns": [{"user": "What is the weather?", "expect": expect}]},
        ],
    )
    good, bad = run_all(path, sim, openai_client(sim))
    verdict, score, label, words = checks_of(good)  # "Refunds are accepted within 30 days."
    assert (verdict["passed"], verdict["reason"]) == (True, "found 1 of 1 rubric terms in the reply: 30 days")
    assert (score["passed"], score["score"]) == (True, 5.0)  # 2 of 4 terms: 1 + 0.5 × 8
    assert score["reason"] == "found 2 of 4 rubric terms in the reply: refund, 30 days; missing: receipt, store"
    assert (label["passed"], label["label"]) == (True, "helpful")
    assert words["passed"] is True
    verdict, score, label, words = checks_of(bad)  # "I cannot help with that."
    assert (verdict["passed"], verdict["verdict"]) == (False, "fail")
    assert verdict["detail"] == "judge: fail: found 0 of 1 rubric terms in the reply; missing: 30 days"
    assert (score["passed"], score["score"]) == (False, 1.0)
    assert (label["passed"], label["label"]) == (False, "evasive")
    assert words["passed"] is False


def test_graders_simulator_default_policy_needs_the_rubric_and_reply_in_the_prompt(
    tmp_path: Path, sim_factory: Callable[..., RunningSimulator], openai_client: Callable[..., openai.OpenAI]
) -> None:
    sim = sim_factory(rules={"rules": [r for r in RULES if not r["when"].startswith(GRADE)]})
    path = write_job(
        tmp_path,
        [{"id": "c", "turns": [{"user": "refund", "expect": [{"judge": '"30 days"'}]}]}],
        grader={"prompt": "Does {{reply}} meet {{rubric}}?"},
    )
    (record,) = run_all(path, sim, openai_client(sim))
    (check,) = checks_of(record)
    assert (check["passed"], check["verdict"]) == (False, "fail")
    assert check["reason"] == "the simulator found no 'Rubric:' and 'reply to grade:' in the grading prompt"
