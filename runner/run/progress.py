"""The live progress line of a run: done / failed / in flight / rate / tokens, on a stream (the CLI's stderr).

On a terminal the line is redrawn in place (`\\r`) a few times a second; otherwise (CI logs, pipes)
a plain line is printed now and then, so a log shows the run moving without thousands of lines.
Used by `runner run --inline` with events (`started`, `finished`) and by the queue, which only
knows counts, with `update`. Thread-safe; a daemon ticker keeps the rate and clock moving.

    [ 40/100] done 37 · failed 3 · in flight 8 · 2.1 conv/s · 12,345 tokens · 0:19
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import TextIO

from runner.records import ERROR, FAILED, Record, outcome

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
            self.tokens += record["usage"]["total_tokens"]
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
            return (
                f"[{self.done:>{width}}/{self.total}] done {self.done} · failed {self.failed} · "
                f"in flight {self.in_flight} · {rate:.1f} conv/s · {self.tokens:,} tokens · {_clock(elapsed)}"
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
