"""The live progress line: redrawn in place on a terminal, plain lines now and then otherwise."""

from __future__ import annotations

import io
from typing import Any

from runner.run.progress import Progress


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def record(status: str = "completed", passed: bool | None = True, tokens: int = 10) -> Any:
    return {"status": status, "passed": passed, "usage": {"total_tokens": tokens}}


def test_engine_progress_plain_output_prints_occasional_lines_and_a_final_one() -> None:
    out, clock = io.StringIO(), Clock()
    progress = Progress(4, stream=out, tty=False, every_s=10.0, clock=clock)
    progress.started(2)  # the first event draws at once
    clock.now += 1
    progress.finished(record(tokens=1200))  # too soon after the last line: nothing
    clock.now += 11
    progress.finished(record("failed", False, tokens=34))
    progress.close()
    assert out.getvalue().splitlines() == [
        "[0/4] passed 0 · failed 0 · in flight 2 · 0.0 conv/s · ETA ? · 0 tokens · 0:00",
        "[2/4] passed 1 · failed 1 · in flight 0 · 0.2 conv/s · ETA 0:12 · 1,234 tokens · 0:12",
        "[2/4] passed 1 · failed 1 · in flight 0 · 0.2 conv/s · ETA 0:12 · 1,234 tokens · 0:12",
    ]


def test_engine_progress_on_a_terminal_redraws_one_line_in_place() -> None:
    out, clock = io.StringIO(), Clock()
    progress = Progress(10, stream=out, tty=True, every_s=0.0, clock=clock)
    progress.started()
    clock.now += 65
    progress.update(done=9, failed=3, in_flight=1, tokens=5, total=12)
    progress.close()
    text = out.getvalue()
    assert "\n" not in text[:-1] and text.endswith("\n")
    frames = text[:-1].split("\r")[1:]
    assert frames[-1].rstrip() == (
        "▕███████████████░░░░░▏ [ 9/12] passed 6 · failed 3 · in flight 1 · 0.1 conv/s · ETA 0:21 · "
        "5 tokens · 1:05"
    )
    assert all(len(f) >= len(frames[0].rstrip()) for f in frames)  # shorter lines pad over longer ones


def test_engine_progress_counts_a_completed_conversation_with_a_failed_check_as_failed() -> None:
    progress = Progress(3, stream=io.StringIO(), enabled=False)
    for r in (record(), record(passed=False), record(passed=None), record("error", False)):
        progress.started()
        progress.finished(r)
    assert (progress.done, progress.failed, progress.in_flight, progress.tokens) == (4, 2, 0, 40)


def test_engine_progress_disabled_writes_nothing() -> None:
    out = io.StringIO()
    with Progress(2, stream=out, enabled=False) as progress:
        progress.started()
        progress.finished(record())
    assert out.getvalue() == ""


def test_engine_progress_counts_429s_and_notes_a_warning_over_the_line() -> None:
    out, clock = io.StringIO(), Clock()
    progress = Progress(2, stream=out, tty=True, every_s=0.0, clock=clock)
    limited = {
        **record(),
        "turns": [{"retries": [{"cause": "429", "wait_ms": 900}, {"cause": "503", "wait_ms": 500}]}],
    }
    progress.started(2)
    clock.now += 10
    progress.finished(limited)
    progress.note("warning: something to know")
    progress.close()
    frames = out.getvalue().split("\r")
    (noted,) = [i for i, f in enumerate(frames) if f.startswith("warning: something to know")]
    assert frames[noted].endswith("\n") and noted < len(frames) - 1  # the live line goes on below it
    assert frames[-1].rstrip("\n").rstrip() == (
        "▕██████████░░░░░░░░░░▏ [1/2] passed 1 · failed 0 · in flight 1 · 0.1 conv/s · ETA 0:10 · "
        "10 tokens · 0:10 · 429s 1"
    )
