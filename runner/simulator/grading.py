"""The simulator as a grading model: its default answer to a grading request no rule matched.

A *grading request* asks for structured output (`response_format` / `text.format` json_schema)
whose schema is an object of exactly `reason` and one of `verdict` (pass/fail), `score` (a number)
or `label` (an enum): what the runner's `judge` checks send. Rules are tried first, as for any
request (they match the grading prompt, the latest user message: `when: '(?s)^You grade.*30 days'`);
when none matches, this deterministic policy answers instead of the default reply:

1. The rubric is the text after `Rubric:` (up to `The conversation so far:` or a blank line); the
   reply is the text after `reply to grade:` (up to the appended `Answer with one JSON object`).
   A prompt without both (a `grader.prompt` of one's own) is graded `fail`, saying so.
2. The rubric's *terms* are its phrases in double quotes; without any, its words (common function
   words left out). A term is found when each of its words is in the reply (lower-cased, crudely
   stemmed like the simulator's embeddings: `refunds` finds `refund`).
3. `verdict` is `pass` when every quoted phrase is found (without quotes: at least half the words);
   `score` is min + share found × (max - min), rounded; `label` is the first of the labels when
   every term is found, the last when none is, the ones between in proportion. `reason` lists the
   terms found and missing.

So `judge: 'States the refund window ("30 days")'` passes a reply that says "within 30 days" and
fails one that does not, without any rule.
"""

from __future__ import annotations

import json
import re
from typing import Any

from runner.simulator.words import features

FORMS = ("verdict", "score", "label")
_QUOTED = re.compile(r'"([^"]+)"|“([^”]+)”')
_RUBRIC = re.compile(r"Rubric:\s*(.*?)(?:\n\s*The conversation so far:|\n\s*\n|$)", re.S | re.I)
_REPLY = re.compile(r"reply to grade:\s*(.*?)(?:\n\s*Answer with one JSON object|$)", re.S | re.I)
_RANGE = re.compile(r"from\s+(-?\d+(?:\.\d+)?)\s+to\s+(-?\d+(?:\.\d+)?)", re.I)


def grading_form(schema: Any) -> tuple[str, dict[str, Any]] | None:
    """("verdict" | "score" | "label", that property's schema) for a grading schema, else None."""
    if not isinstance(schema, dict) or schema.get("type") != "object":
        return None
    props = schema.get("properties")
    if not isinstance(props, dict) or "reason" not in props or len(props) != 2:
        return None
    form = next((f for f in FORMS if f in props), None)
    if form is None or not isinstance(props[form], dict):
        return None
    return form, props[form]


def grade(message: str, form: str, prop: dict[str, Any]) -> str:
    """The JSON answer of the default policy (see the module doc) to the grading prompt `message`."""
    rubric, reply = _RUBRIC.search(message), _REPLY.search(message)
    if rubric is None or reply is None:
        share, quoted = 0.0, True
        reason = "the simulator found no 'Rubric:' and 'reply to grade:' in the grading prompt"
    else:
        share, quoted, reason = _share(rubric.group(1).strip(), reply.group(1).strip())
    if form == "score":
        low, high = _range(prop, message)
        value: Any = low + share * (high - low)
        value = round(value) if low.is_integer() and high.is_integer() else round(value, 2)
    elif form == "label":
        labels = [str(x) for x in prop.get("enum") or ["pass"]]
        value = labels[round((1 - share) * (len(labels) - 1))]
    else:
        value = "pass" if share >= (1.0 if quoted else 0.5) else "fail"
    return json.dumps({"reason": reason, form: value})


def _share(rubric: str, reply: str) -> tuple[float, bool, str]:
    """The share of the rubric's terms found in the reply, whether they were quoted, and why."""
    quoted = [a or b for a, b in _QUOTED.findall(rubric)]
    terms = [(q, set(features(q))) for q in quoted] or [(w, {w}) for w in features(rubric)]
    if not terms:
        return 1.0, False, "the rubric names nothing to look for"
    have = set(features(reply))
    found = [shown for shown, words in terms if words <= have]
    missing = [shown for shown, words in terms if not words <= have]
    reason = f"found {len(found)} of {len(terms)} rubric terms in the reply"
    if found:
        reason += ": " + ", ".join(found)
    if missing:
        reason += "; missing: " + ", ".join(missing)
    return len(found) / len(terms), bool(quoted), reason


def _range(prop: dict[str, Any], message: str) -> tuple[float, float]:
    for text in (str(prop.get("description") or ""), message):
        m = _RANGE.search(text)
        if m:
            return float(m.group(1)), float(m.group(2))
    return float(prop.get("minimum", 0)), float(prop.get("maximum", 1))
