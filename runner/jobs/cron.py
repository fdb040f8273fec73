"""Cron expressions of `schedule:`: 5 fields, or 6 with seconds first, `@daily`-style aliases,
and an optional `CRON_TZ=Zone ` prefix (UTC otherwise).

Shared by the job-file validator (so a bad schedule is reported at its line) and the scheduler.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from runner.errors import UsageError


@dataclass(frozen=True)
class Cron:
    """A parsed `schedule:`: the cron fields, their time zone, and whether a seconds field leads."""

    text: str
    fields: str
    tz: tzinfo
    seconds: bool

    def _iter(self, start: datetime) -> croniter:
        return croniter(self.fields, start.astimezone(self.tz), second_at_beginning=self.seconds)

    def next_after(self, t: datetime) -> datetime:
        """The first tick strictly after `t` (in the cron's zone)."""
        nxt: datetime = self._iter(t).get_next(datetime)
        return nxt

    def latest_at_or_before(self, t: datetime) -> datetime:
        """The last tick at or before `t`."""
        prev: datetime = self._iter(t).get_prev(datetime)
        nxt = self.next_after(prev)
        return nxt if nxt <= t else prev


def _split_tz(text: str) -> tuple[str, str | None]:
    head, _, rest = text.strip().partition(" ")
    for prefix in ("CRON_TZ=", "TZ="):
        if head.startswith(prefix):
            return rest.strip(), head[len(prefix) :]
    return text.strip(), None


def cron_problem(text: str) -> str | None:
    """What is wrong with a `schedule:` value, or None; the job-file validator can use this too."""
    if not isinstance(text, str) or not text.strip():
        return "must be a cron expression such as '0 6 * * *'"
    fields, zone = _split_tz(text)
    if zone is not None:
        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            return f"unknown time zone {zone!r} (use an IANA name such as Europe/Paris)"
    n = len(fields.split())
    if not fields.startswith("@") and n not in (5, 6):
        return f"cron {fields!r} has {n} fields; use 5 (minute hour day month weekday) or 6 (seconds first)"
    try:
        croniter(fields, second_at_beginning=n == 6)
    except (ValueError, KeyError) as e:
        return f"invalid cron expression {fields!r}: {e}"
    return None


def parse_cron(text: str) -> Cron:
    """A `Cron` from a `schedule:` value; raises UsageError when it is not one."""
    problem = cron_problem(text)
    if problem is not None:
        raise UsageError(f"schedule {text!r}: {problem}")
    fields, zone = _split_tz(text)
    tz: tzinfo = ZoneInfo(zone) if zone else UTC
    return Cron(text=text.strip(), fields=fields, tz=tz, seconds=len(fields.split()) == 6)
