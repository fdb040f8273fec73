"""The live progress line of a run: done, passed / failed, in flight, rate, ETA, tokens, 429s, on a
stream (the CLI's stderr).

On a terminal the line is redrawn in place (`\\r`) a few times a second, with a bar; otherwise (CI
logs, pipes) a plain line is printed now and then, so a log shows the run moving without thousands
of lines. Used by `runner run --inline` with events (`started`, `finished`) and by the queue, which
only knows counts, with `update` (and `seen` for the records that arrived). Thread-safe; a daemon
ticker keeps the rate, the ETA and the clock moving.

The ETA is the remaining conversations at the rate so far (wall time, so limiter waits and 429
cooldowns count). `429s` counts the rate-limit answers the finished conversations were retried on.

    ▕███████░░░░░░░░░░░▏ [ 40/100] passed 37 · failed 3 · in flight 8 · 2.1 conv/s · ETA 0:29 ·
                                   12,345 tokens · 0:19 · 429s 4          (one line; the bar on a TTY)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import TextIO

from runner.records import ERROR, FAILED, Record, outcome

BAR_WIDTH = 20
"""Cells of the bar drawn on a terminal."""

TTY_REFRESH_S = 0.25
PLAIN_EVERY_S = 10.0
"""Without a terminal: at most one line this often (and one at the end)."""


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class Progress:
    """A progress line over `total` conversations; a no-op when `enabled` is false."""

    def __init__(
        self,
        total: int,
        *,
        stream: TextIO | None = None,
        enabled: bool = True,
        tty: bool | None = None,
        every_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total = total
        self.stream = stream
        self.enabled = enabled and stream is not None  # no stream (the Python API): draw nothing
        self.tty = tty if tty is not None else bool(getattr(self.stream, "isatty", lambda: False)())
        self.every_s = every_s if every_s is not None else (TTY_REFRESH_S if self.tty else PLAIN_EVERY_S)
        self._clock = clock
        self._lock = threading.Lock()
        self._began = clock()
        self._last_draw = float("-inf")
        self._last_text = ""
        self._width = 0
        self.done = self.failed = self.in_flight = self.tokens = 0
        self.rate_limited = 0  # 429 answers retried in the conversations seen so far
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    # -- events ---------------------------------------------------------------------------------

    def start(self) -> Progress:
        if self.enabled and self._ticker is None:
            self._ticker = threading.Thread(target=self._tick, name="runner-progress", daemon=True)
            self._ticker.start()
        return self

    def started(self, n: int = 1) -> None:
        with self._lock:
            self.in_flight += n
        self._maybe_draw()

    def finished(self, record: Record) -> None:
        with self._lock:
            self.in_flight = max(0, self.in_flight - 1)
            self.done += 1
            self.failed += outcome(record) in (FAILED, ERROR)
            self.tokens += record["usage"]["total_tokens"] or 0  # unknown usage adds nothing known
        self.seen([record])

    def seen(self, records: Iterable[Record]) -> None:
        """Count the 429s these finished conversations were retried on."""
        turns = [t for rec in records for t in rec.get("turns", [])]
        n = sum(r.get("cause") == "429" for t in turns for r in t.get("retries", []))
        with self._lock:
            self.rate_limited += n
        self._maybe_draw()

    def update(
        self, *, done: int, failed: int, in_flight: int, tokens: int, total: int | None = None
    ) -> None:
        """Set the counts directly (the queue reads them from Redis)."""
        with self._lock:
            self.done, self.failed, self.in_flight, self.tokens = done, failed, in_flight, tokens
            if total is not None:
                self.total = total
        self._maybe_draw()

    def note(self, text: str) -> None:
        """One line of news for the user (a warning), shown even without the live line; on a
        terminal it is written over the live line, which is redrawn below it."""
        if self.stream is None:
            return
        with self._lock:
            pad = " " * max(0, self._width - len(text)) if self.tty else ""
            self.stream.write(("\r" if self.tty else "") + text + pad + "\n")
            self._width = 0
            self.stream.flush()
        self._last_draw = float("-inf")
        self._maybe_draw()

    def close(self) -> None:
        """Stop the ticker and leave one final line (once, however often it is called)."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout=2)
        if self.enabled:
            self._draw(final=True)

    def __enter__(self) -> Progress:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- drawing --------------------------------------------------------------------------------

    def line(self) -> str:
        with self._lock:
            elapsed = max(1e-9, self._clock() - self._began)
            width = len(str(self.total))
            rate = self.done / elapsed
            left = max(0, self.total - self.done)
            eta = "0:00" if not left else _clock(left / rate) if self.done else "?"
            bar = ""
            if self.tty:
                full = BAR_WIDTH * min(self.done, self.total) // max(1, self.total)
                bar = "▕" + "█" * full + "░" * (BAR_WIDTH - full) + "▏ "
            limited = f" · 429s {self.rate_limited}" if self.rate_limited else ""
            return (
                f"{bar}[{self.done:>{width}}/{self.total}] passed {self.done - self.failed} · "
                f"failed {self.failed} · in flight {self.in_flight} · {rate:.1f} conv/s · ETA {eta} · "
                f"{self.tokens:,} tokens · {_clock(elapsed)}{limited}"
            )

    def _tick(self) -> None:
        while not self._stop.wait(max(self.every_s, TTY_REFRESH_S)):
            self._maybe_draw()

    def _maybe_draw(self) -> None:
        if not self.enabled:
            return
        now = self._clock()
        if now - self._last_draw < self.every_s:
            return
        self._draw()

    def _draw(self, final: bool = False) -> None:
        text, stream = self.line(), self.stream
        if stream is None:
            return
        with self._lock:
            self._last_draw = self._clock()
            if self.tty:
                pad = " " * max(0, self._width - len(text))
                self._width = len(text)
                stream.write("\r" + text + pad + ("\n" if final else ""))
            elif final or text != self._last_text:
                stream.write(text + "\n")
            self._last_text = text
            stream.flush()
