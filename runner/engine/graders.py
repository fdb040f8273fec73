"""The checks that need more than the reply's text: `judge`, `python` and `similar`.

`Grader.grade(check, turn)` is what `runner.jobs.checks.evaluate_turn` calls for them, one turn
(or, for a conversation's `expect:`, the whole conversation seen as one turn) at a time.

* **judge**: a model grades the reply against the rubric. The prompt (the job's `grader.prompt`
  or `DEFAULT_PROMPT`) gets the rubric, the user message, the reply, the conversation so far and
  the vars; the answer format is always appended, and the request asks for structured output
  (a strict JSON Schema: `reason` plus `verdict`, `score` or `label`). The answer is parsed
  strictly; one that does not parse is asked again once with a stricter instruction, then the
  check is an error (`verdict: "error"`, failed) — never a pass. Requests go through the
  conversation's `Caller` (shared limiter, retry layer); their usage is kept apart as
  `grader_usage`, per turn and per record.
* **python**: `fn(reply, ctx)` of the user's, loaded by `runner.jobs.pychecks` (path and content
  hash verified). It returns a bool, a float 0..1 (passes at `pass_at`), or a dict / object with
  `passed` or `score`, and `reason`. An exception fails the check with its message.
* **similar**: cosine similarity to the reference text, from the server's `/v1/embeddings` when
  it has them, else (or with `method: lexical`) lexical (`runner.engine.similarity`); the result
  names the method.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import openai

from runner.engine.backends.grading import EmbeddingsUnavailable, complete_json, embed
from runner.engine.client import shared_client
from runner.engine.retry import Caller, describe_error
from runner.engine.similarity import LEXICAL_METHOD, cosine, lexical_similarity
from runner.errors import BackendError, FatalAPIError
from runner.jobs.graded import DEFAULT_PYTHON_PASS_AT
from runner.jobs.pychecks import PythonCheckError, load_function
from runner.jobs.templating import render
from runner.records import (
    CheckResult,
    GraderUsage,
    TurnRecord,
    Usage,
    add_grader_usage,
    add_usage,
    empty_usage,
)
from runner.settings import Settings
from runner.tasks import CheckSpec, ConversationTask, GraderSpec

log = logging.getLogger(__name__)

DEFAULT_PROMPT = """You grade the replies of an AI assistant. Judge only what the rubric asks.

Rubric:
{{rubric}}

The conversation so far:
{{conversation}}

The user's latest message:
{{user}}

The assistant's reply to grade:
{{reply}}"""

_FORMATS = {
    "verdict": 'Answer with one JSON object: {"reason": "<one sentence>", "verdict": "pass" or "fail"}.',
    "score": 'Answer with one JSON object: {"reason": "<one sentence>", "score": <a number from %s to %s>}.',
    "label": 'Answer with one JSON object: {"reason": "<one sentence>", "label": <one of: %s>}.',
}
STRICTER = (
    "\n\nIMPORTANT: your previous answer could not be used ({why}). Reply with exactly one JSON object "
    "and nothing else: no prose, no code fences. {format}"
)
"""Appended to the prompt for the one retry after an answer that did not parse."""

_no_embeddings: set[str] = set()  # servers (base URLs) found to serve no embeddings
_no_embeddings_lock = threading.Lock()


class Unparseable(ValueError):
    """A grader answer that is not the JSON asked for."""


@dataclass
class Grader:
    """Grades one conversation's graded checks; keeps what grading cost, per turn."""

    task: ConversationTask
    caller: Caller
    client: openai.OpenAI | None
    settings: Settings
    history: list[TurnRecord] = field(default_factory=list)  # the turns before the one graded
    scope: str = "turn"  # "conversation": the conversation's own `expect:`
    usage: GraderUsage | None = None  # of the turn being graded

    @property
    def spec(self) -> GraderSpec:
        return self.task.grader or GraderSpec(model=self.task.model)

    def take_usage(self) -> GraderUsage | None:
        """What grading cost since the last call (the turn's `grader_usage`)."""
        usage, self.usage = self.usage, None
        return usage

    def grade(self, check: CheckSpec, turn: TurnRecord) -> CheckResult:
        """Evaluate one graded check; never raises but `FatalAPIError` (401/403/quota)."""
        value = check.value if isinstance(check.value, dict) else {}
        try:
            if check.type == "judge":
                return self._judge(check, value, turn)
            if check.type == "python":
                return self._python(check, value, turn)
            if check.type == "similar":
                return self._similar(check, value, turn)
            return _error(check, f"unknown graded check type {check.type!r}")
        except FatalAPIError:
            raise
        except (openai.OpenAIError, BackendError) as e:
            return _error(check, f"grader error: {describe_error(e)}")

    # -- judge ------------------------------------------------------------------------------

    def _judge(self, check: CheckSpec, value: dict[str, Any], turn: TurnRecord) -> CheckResult:
        form, schema, instruction = _answer_format(value)
        prompt = self._prompt(value, turn) + "\n\n" + instruction
        system = "You are a strict, impartial grader. You answer only with the JSON object asked for."
        why = ""
        for attempt in range(2):
            user = prompt if attempt == 0 else prompt + STRICTER.format(why=why, format=instruction)
            text, usage = complete_json(
                self.client_(), self.caller, api=self.spec.api, model=self.spec.model, system=system,
                user=user, schema_name=f"grade_{form}", schema=schema, temperature=self.spec.temperature,
            )  # fmt: skip
            self._count(self.spec.model, usage)
            try:
                answer = _parse(text, form, value)
            except Unparseable as e:
                why = str(e)
                continue
            return _judged(check, value, form, answer)
        return _error(check, f"grader error: unparseable answer twice ({why})")

    def _prompt(self, value: dict[str, Any], turn: TurnRecord) -> str:
        turns = [*self.history, turn] if self.scope == "turn" else list(self.history)
        lines = []
        for t in turns:
            lines += [f"User: {t['user']}", f"Assistant: {t['assistant'] or '(no reply)'}"]
        last = turns[-1] if turns else turn
        names = {
            **self.task.vars,
            "rubric": value.get("rubric", ""),
            "user": last["user"],
            "reply": last["assistant"] or "",
            "conversation": "\n".join(lines),
            "vars": json.dumps(self.task.vars, ensure_ascii=False, sort_keys=True),
        }
        rendered = render(self.spec.prompt or DEFAULT_PROMPT, names)
        return str(rendered)

    # -- python -----------------------------------------------------------------------------

    def _python(self, check: CheckSpec, value: dict[str, Any], turn: TurnRecord) -> CheckResult:
        try:
            fn = load_function(value, self.settings.check_packages)
        except PythonCheckError as e:
            return _error(check, f"python check refused: {e}")
        so_far = [*self.history, turn] if self.scope == "turn" else self.history
        ctx = {
            "turn": dict(turn),
            "index": turn["index"] if self.scope == "turn" else None,
            "conversation": [dict(t) for t in so_far],
            "vars": dict(self.task.vars),
            "tool_calls": list(turn["tool_calls"]),
            "conversation_id": self.task.conversation_id,
            "scope": self.scope,
        }  # fmt: skip
        try:
            out = fn(turn["assistant"], ctx)
        except Exception as e:  # the user's code: its failure is the check's, never the worker's
            return _error(check, f"python check raised {type(e).__name__}: {e}")
        return _python_result(check, value, out)

    # -- similar ----------------------------------------------------------------------------

    def _similar(self, check: CheckSpec, value: dict[str, Any], turn: TurnRecord) -> CheckResult:
        reply, to = turn["assistant"] or "", str(value.get("to", ""))
        method, threshold = value.get("method", "auto"), float(value.get("at_least", 1))
        client = self.client_()
        server = str(client.base_url)
        score: float | None = None
        if method != "lexical" and (method == "embeddings" or server not in _no_embeddings):
            model = self.spec.embedding_model
            try:
                (a, b), usage = embed(client, self.caller, model=model, texts=[reply, to])
            except EmbeddingsUnavailable as e:
                if method == "embeddings":
                    return _error(check, f"similar: {e}", method=f"embeddings:{model}")
                with _no_embeddings_lock:
                    _no_embeddings.add(server)
                log.info("%s: %s; similar checks use %s", server, e, LEXICAL_METHOD)
            else:
                self._count(model, usage)
                score, used = cosine(a, b), f"embeddings:{model}"
        if score is None:
            score, used = lexical_similarity(reply, to), LEXICAL_METHOD
        passed = score >= threshold
        detail = None if passed else f"similarity {score:.3f} to {to[:80]!r} is below {threshold:g} ({used})"
        verdict = "pass" if passed else "fail"
        return {**_base(check, passed, detail), "verdict": verdict, "score": round(score, 4), "method": used}

    # -- plumbing ---------------------------------------------------------------------------

    def client_(self) -> openai.OpenAI:
        if self.client is None:
            self.client = shared_client(self.settings)
        return self.client

    def _count(self, model: str, usage: Usage) -> None:
        one: GraderUsage = {**usage, "requests": 1, "by_model": {model: usage}}
        if self.usage is None:
            self.usage = one
            return
        self.usage = add_grader_usage(self.usage, one)


def conversation_turn(turns: Sequence[TurnRecord]) -> TurnRecord:
    """The whole conversation as one turn, for its own `expect:`: every reply (joined by blank
    lines), every tool call, the summed usage and latency, the last user message."""
    usage = empty_usage()
    for t in turns:
        usage = add_usage(usage, t["usage"])
    latencies = [t["latency_ms"] for t in turns]
    replies = [t["assistant"] for t in turns if t["assistant"] is not None]
    return {
        "index": len(turns),
        "user": turns[-1]["user"] if turns else "",
        "assistant": "\n\n".join(replies) if replies else None,
        "run_id": None,
        "run_status": "completed",
        "tool_calls": [c for t in turns for c in t["tool_calls"]],
        "usage": usage,
        "latency_ms": None if None in latencies else sum(x for x in latencies if x is not None),
        "checks": [],
    }


def not_run(checks: Sequence[CheckSpec], why: str) -> list[CheckResult]:
    """Failed results for checks that could not run."""
    return [_base(c, False, f"not run: {why}") for c in checks]


def _base(check: CheckSpec, passed: bool, detail: str | None) -> CheckResult:
    return {"type": check.type, "value": check.value, "passed": passed, "detail": detail}


def _error(check: CheckSpec, detail: str, **extra: Any) -> CheckResult:
    """A check that could not be evaluated: failed, `verdict: "error"`, never a pass."""
    return {**_base(check, False, detail), "verdict": "error", **extra}  # type: ignore[typeddict-item]


def _answer_format(value: dict[str, Any]) -> tuple[str, dict[str, Any], str]:
    """The answer's form (verdict, score or label), its strict JSON Schema and the instruction."""
    reason = {"type": "string", "description": "Why, in one sentence."}
    if value.get("score"):
        s = value["score"]
        prop: dict[str, Any] = {"type": "number", "description": f"From {s['min']:g} to {s['max']:g}."}
        form, instruction = "score", _FORMATS["score"] % (f"{s['min']:g}", f"{s['max']:g}")
    elif value.get("labels"):
        prop = {"type": "string", "enum": list(value["labels"])}
        form, instruction = "label", _FORMATS["label"] % ", ".join(json.dumps(x) for x in value["labels"])
    else:
        prop, form, instruction = {"type": "string", "enum": ["pass", "fail"]}, "verdict", _FORMATS["verdict"]
    schema = {
        "type": "object",
        "properties": {"reason": reason, form: prop},
        "required": ["reason", form],
        "additionalProperties": False,
    }
    return form, schema, instruction


def _parse(text: str, form: str, value: dict[str, Any]) -> dict[str, Any]:
    """The grader's answer, exactly as asked for, or `Unparseable` saying what is wrong."""
    try:
        answer = json.loads(text)
    except ValueError:
        raise Unparseable(f"not JSON: {text[:80]!r}") from None
    if not isinstance(answer, dict) or set(answer) != {"reason", form}:
        keys = sorted(answer) if isinstance(answer, dict) else type(answer).__name__
        raise Unparseable(f"expected the keys reason and {form}, got {keys}")
    if not isinstance(answer["reason"], str):
        raise Unparseable("reason is not a string")
    got = answer[form]
    if form == "verdict" and got not in ("pass", "fail"):
        raise Unparseable(f"verdict must be pass or fail, got {got!r}")
    if form == "label" and got not in value["labels"]:
        raise Unparseable(f"label {got!r} is not one of {', '.join(value['labels'])}")
    if form == "score":
        s = value["score"]
        if isinstance(got, bool) or not isinstance(got, int | float) or not s["min"] <= got <= s["max"]:
            raise Unparseable(f"score must be a number from {s['min']:g} to {s['max']:g}, got {got!r}")
    return answer


def _judged(check: CheckSpec, value: dict[str, Any], form: str, answer: dict[str, Any]) -> CheckResult:
    reason = answer["reason"]
    if form == "score":
        score, at = float(answer["score"]), float(value["score"]["pass_at"])
        passed = score >= at
        detail = None if passed else f"judge scored {score:g}, below pass_at {at:g}: {reason}"
        return {**_base(check, passed, detail), "verdict": "pass" if passed else "fail", "score": score,
                "reason": reason}  # fmt: skip
    if form == "label":
        label, passing = answer["label"], list(value["pass"])
        passed = label in passing
        detail = None if passed else f"judge labelled it {label!r} (passing: {', '.join(passing)}): {reason}"
        return {**_base(check, passed, detail), "verdict": "pass" if passed else "fail", "label": label,
                "reason": reason}  # fmt: skip
    passed = answer["verdict"] == "pass"
    detail = None if passed else f"judge: fail: {reason}"
    return {**_base(check, passed, detail), "verdict": answer["verdict"], "reason": reason}


def _field(out: Any, name: str) -> Any:
    return out.get(name) if isinstance(out, dict) else getattr(out, name, None)


def _python_result(check: CheckSpec, value: dict[str, Any], out: Any) -> CheckResult:
    """Read a python check's result: bool, float 0..1, or something with passed/score/reason."""
    given = value.get("pass_at")
    pass_at = DEFAULT_PYTHON_PASS_AT if given is None else float(given)
    reason: Any = None
    passed: Any = None
    score: Any = None
    if isinstance(out, bool):
        passed = out
    elif isinstance(out, int | float):
        score = out
    elif out is not None and not isinstance(out, str | Sequence):
        passed, score, reason = _field(out, "passed"), _field(out, "score"), _field(out, "reason")
    if score is not None and (
        isinstance(score, bool) or not isinstance(score, int | float) or not 0 <= score <= 1
    ):
        return _error(check, f"python check returned the score {score!r}; a score is a number from 0 to 1")
    if passed is None and score is None:
        what = type(out).__name__
        return _error(check, f"python check returned {what}; expected a bool, a float 0..1, or passed/score")
    if passed is None:
        passed = score is not None and score >= pass_at
    passed = bool(passed)
    reason = None if reason is None else str(reason)
    detail = None
    if not passed:
        detail = reason or (
            f"score {score:g} is below pass_at {pass_at:g}" if score is not None else "returned false"
        )
    result: CheckResult = {
        **_base(check, passed, detail),
        "verdict": "pass" if passed else "fail",
        "reason": reason,
    }
    if score is not None:
        result["score"] = float(score)
    return result
