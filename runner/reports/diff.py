"""`runner diff OLD NEW`: what changed between two runs of the same job, conversation by conversation.

Conversations are matched by their stable id. Repeats (`#r0`, `#r1`, ...) of one conversation are
judged together: a conversation regressed when the share of its runs that passed went down, or the
share that completed went down (pass -> fail, completed -> error); it improved when either went up
and neither went down. With one run per side this is simply pass -> fail and back. Replies are
compared run by run (same id) and turn by turn, shown as a short unified diff. Ids, latencies,
threads and tokens are expected to differ between runs and are not reported.

A conversation of the old run missing from the new one is a regression too (a suite that silently
lost cases must not pass the gate) unless removals are allowed. Two transcripts of different jobs
are not compared at all (`UsageError`).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass, field

from runner.errors import UsageError
from runner.records import Record
from runner.reports.summary import NO_CHECKS, PASSED, outcome, problems, repeat_groups

SCORE_DROP = 0.1
"""A judge score that fell by more than this share of its scale (e.g. 1 point on 1..10), averaged
over a conversation's repeats, is a regression even when the check still passes."""

DIFF_LINES_PER_TURN = 12
"""Lines of unified diff shown per changed reply (the rest is summarised as `… N more lines`)."""


@dataclass(frozen=True)
class Side:
    """One conversation's runs on one side of the diff."""

    runs: tuple[Record, ...]

    @property
    def ok(self) -> int:
        return sum(outcome(r) in (PASSED, NO_CHECKS) for r in self.runs)

    @property
    def completed(self) -> int:
        return sum(r["status"] == "completed" for r in self.runs)

    def rates(self) -> tuple[float, float]:
        n = len(self.runs)
        return self.ok / n, self.completed / n

    def label(self) -> str:
        if len(self.runs) == 1:
            return outcome(self.runs[0])
        return f"{self.ok}/{len(self.runs)} runs passed"


@dataclass(frozen=True)
class OutcomeChange:
    key: str  # the conversation id without its repeat suffix
    old: Side
    new: Side

    def describe(self) -> str:
        return f"{self.key}  {self.old.label()} → {self.new.label()}"

    def reasons(self) -> list[str]:
        """Why the new runs did not pass (the first failing run's problems)."""
        for r in self.new.runs:
            found = problems(r)
            if found:
                prefix = f"{r['conversation_id']}: " if len(self.new.runs) > 1 else ""
                return [prefix + p for p in found]
        return []


@dataclass(frozen=True)
class ReplyChange:
    conversation_id: str
    turn: int  # 0-based index
    old: str | None
    new: str | None
    user_changed: bool

    def diff_lines(self, limit: int = DIFF_LINES_PER_TURN) -> list[str]:
        if self.old is None or self.new is None:
            return [f"-{_shown(self.old)}", f"+{_shown(self.new)}"]
        lines = [
            line
            for line in difflib.unified_diff(
                self.old.splitlines(), self.new.splitlines(), "old", "new", n=1, lineterm=""
            )
            if not line.startswith(("---", "+++"))
        ]
        if len(lines) > limit:
            lines = [*lines[:limit], f"… {len(lines) - limit} more lines"]
        return lines


def _shown(text: str | None) -> str:
    return "(no reply)" if text is None else text


@dataclass(frozen=True)
class ScoreDrop:
    """A `judge` check with a score whose mean fell by more than `SCORE_DROP` of its scale."""

    key: str  # the conversation id without its repeat suffix
    turn: int  # 0-based index, or -1: the conversation's own `expect:`
    rubric: str
    old: float
    new: float
    scale: tuple[float, float]

    def describe(self) -> str:
        where = "conversation" if self.turn < 0 else f"turn {self.turn + 1}"
        lo, hi = self.scale
        return (
            f"{self.key} {where}: judge {self.rubric[:60]!r} score {self.old:g} → {self.new:g} "
            f"(scale {lo:g}-{hi:g})"
        )


@dataclass
class DiffResult:
    regressions: list[OutcomeChange] = field(default_factory=list)
    score_drops: list[ScoreDrop] = field(default_factory=list)
    improvements: list[OutcomeChange] = field(default_factory=list)
    changed: list[ReplyChange] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    compared: int = 0  # conversations present on both sides
    allow_removed: bool = False  # `--allow-removed`: conversations dropped on purpose

    @property
    def regressed(self) -> bool:
        return bool(self.regressions or self.score_drops) or (bool(self.removed) and not self.allow_removed)


def same_job(old: Sequence[Record], new: Sequence[Record]) -> None:
    """Refuse to compare runs of different jobs: every conversation would show as added/removed."""
    old_jobs, new_jobs = {r["job"] for r in old}, {r["job"] for r in new}
    if old_jobs and new_jobs and not old_jobs & new_jobs:
        raise UsageError(
            f"the transcripts are runs of different jobs ({', '.join(sorted(old_jobs))} vs"
            f" {', '.join(sorted(new_jobs))}): runner diff compares two runs of the same job"
        )


def _judge_scores(runs: Sequence[Record]) -> dict[tuple[int, int], tuple[str, float, tuple[float, float]]]:
    """Mean score of every scored `judge` check, by (turn index or -1, position), over the runs."""
    found: dict[tuple[int, int], tuple[str, list[float], tuple[float, float]]] = {}
    for r in runs:
        places = [(t["index"], t["checks"]) for t in r["turns"]] + [(-1, r.get("checks") or [])]
        for turn, checks in places:
            for k, c in enumerate(checks):
                value = c.get("value")
                score = c.get("score")
                if c["type"] != "judge" or not isinstance(value, dict) or not value.get("score"):
                    continue
                if isinstance(score, int | float):
                    scale = (float(value["score"]["min"]), float(value["score"]["max"]))
                    found.setdefault((turn, k), (str(value.get("rubric", "")), [], scale))[1].append(score)
    return {at: (rubric, sum(v) / len(v), scale) for at, (rubric, v, scale) in found.items()}


def _score_drops(key: str, old: Sequence[Record], new: Sequence[Record], threshold: float) -> list[ScoreDrop]:
    before, after = _judge_scores(old), _judge_scores(new)
    drops = []
    for at, (rubric, was, scale) in sorted(before.items()):
        now = after.get(at)
        if now is None or now[0] != rubric or now[2] != scale:
            continue  # another check at this place: not comparable
        if was - now[1] > threshold * (scale[1] - scale[0]):
            drops.append(ScoreDrop(key, at[0], rubric, round(was, 3), round(now[1], 3), scale))
    return drops


def diff_records(
    old: Sequence[Record],
    new: Sequence[Record],
    score_drop: float = SCORE_DROP,
    *,
    allow_removed: bool = False,
) -> DiffResult:
    same_job(old, new)
    result = DiffResult(allow_removed=allow_removed)
    old_groups, new_groups = repeat_groups(old), repeat_groups(new)
    result.removed = [k for k in old_groups if k not in new_groups]
    result.added = [k for k in new_groups if k not in old_groups]
    for key, old_runs in old_groups.items():
        if key not in new_groups:
            continue
        result.compared += 1
        change = OutcomeChange(key, Side(tuple(old_runs)), Side(tuple(new_groups[key])))
        (ok_old, done_old), (ok_new, done_new) = change.old.rates(), change.new.rates()
        if ok_new < ok_old or done_new < done_old:
            result.regressions.append(change)
        elif ok_new > ok_old or done_new > done_old:
            result.improvements.append(change)
        result.score_drops += _score_drops(key, old_runs, new_groups[key], score_drop)
    new_by_id = {r["conversation_id"]: r for r in new}
    for r in old:
        other = new_by_id.get(r["conversation_id"])
        if other is not None:
            result.changed += _reply_changes(r, other)
    return result


def _reply_changes(old: Record, new: Record) -> list[ReplyChange]:
    old_turns = {t["index"]: t for t in old["turns"]}
    new_turns = {t["index"]: t for t in new["turns"]}
    changes = []
    for i in sorted(set(old_turns) | set(new_turns)):
        a, b = old_turns.get(i), new_turns.get(i)
        said_a = a["assistant"] if a else None
        said_b = b["assistant"] if b else None
        if said_a != said_b:
            user_changed = a is not None and b is not None and a["user"] != b["user"]
            changes.append(ReplyChange(old["conversation_id"], i, said_a, said_b, user_changed))
    return changes


def render_diff(result: DiffResult, *, replies: bool = True, max_replies: int = 50) -> str:
    lines: list[str] = []
    if result.regressions:
        lines.append(f"regressions ({len(result.regressions)}):")
        for c in result.regressions:
            lines.append(f"  {c.describe()}")
            lines += [f"    {reason}" for reason in c.reasons()]
    if result.score_drops:
        lines.append(f"judge scores that dropped ({len(result.score_drops)}, regressions):")
        lines += [f"  {d.describe()}" for d in result.score_drops]
    if result.improvements:
        lines.append(f"improvements ({len(result.improvements)}):")
        lines += [f"  {c.describe()}" for c in result.improvements]
    if replies and result.changed:
        lines.append(f"changed replies ({len(result.changed)}):")
        for ch in result.changed[:max_replies]:
            note = " (user message changed too)" if ch.user_changed else ""
            lines.append(f"  {ch.conversation_id} turn {ch.turn + 1}{note}:")
            lines += [f"    {line}" for line in ch.diff_lines()]
        if len(result.changed) > max_replies:
            lines.append(f"  … {len(result.changed) - max_replies} more changed replies")
    for title, keys in (("added", result.added), ("removed", result.removed)):
        if keys:
            lines.append(f"{title} ({len(keys)}):")
            lines += [f"  {k}" for k in keys]
    if result.removed and not result.allow_removed:
        lines.append("removed conversations count as a regression (--allow-removed if intended)")
    lines.append(summary(result))
    return "\n".join(lines)


def summary(result: DiffResult) -> str:
    def n(count: int, one: str, many: str) -> str:
        return f"{count} {one if count == 1 else many}"

    drops = (
        f", {n(len(result.score_drops), 'judge score drop', 'judge score drops')}"
        if result.score_drops
        else ""
    )
    return (
        f"{n(len(result.regressions), 'regression', 'regressions')}{drops}, "
        f"{n(len(result.improvements), 'improvement', 'improvements')}, "
        f"{n(len(result.changed), 'changed reply', 'changed replies')}, "
        f"{len(result.added)} added, {len(result.removed)} removed ({result.compared} conversations compared)"
    )
