"""Billing periods: which period an instant falls in, for each interval.

Monthly periods start on the customer's anchor day; in a month too short for it (the 31st
in February) the period starts on that month's last day, and the next one goes back to the
anchor day. All arithmetic happens in the plan's time zone, UTC by default.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone, tzinfo


@dataclass(frozen=True, slots=True)
class Period:
    start: datetime
    end: datetime
    interval: str
    key: str = field(init=False, compare=False)  # the period's id on every event: its start, in UTC, ISO 8601

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", self.start.astimezone(timezone.utc).isoformat())


_LAST: dict[tuple, Period] = {}  # (interval, anchor day, zone) -> the period found last


def period_of(ts: datetime, interval: str, *, anchor_day: int = 1, tz: tzinfo = timezone.utc) -> Period:
    """The period of `interval` that contains `ts` (an aware datetime)."""
    # Every call asks about "now": the period found last almost always holds it.
    last = _LAST.get((interval, anchor_day, tz))
    if last is not None and last.start <= ts < last.end:
        return last
    period = _period_of(ts, interval, anchor_day, tz)
    if len(_LAST) >= 1024:  # one per (interval, anchor day, zone) in use; bounded all the same
        _LAST.clear()
    _LAST[(interval, anchor_day, tz)] = period
    return period


def _period_of(ts: datetime, interval: str, anchor_day: int, tz: tzinfo) -> Period:
    local = ts.astimezone(tz)
    if interval == "daily":
        start = datetime(local.year, local.month, local.day, tzinfo=tz)
        return Period(start, _add_days(start, 1, tz), interval)
    if interval == "weekly":
        day = datetime(local.year, local.month, local.day, tzinfo=tz)
        start = _add_days(day, -local.weekday(), tz)  # weeks start on Monday
        return Period(start, _add_days(start, 7, tz), interval)
    if interval in ("monthly", "threshold"):
        # threshold periods also close at the latest on the monthly edge (see Meter.period)
        start = _month_start(local.year, local.month, anchor_day, tz)
        if start > local:
            year, month = _shift_month(local.year, local.month, -1)
            start = _month_start(year, month, anchor_day, tz)
        year, month = _shift_month(start.year, start.month, 1)
        return Period(start, _month_start(year, month, anchor_day, tz), interval)
    raise ValueError(f"unknown interval {interval!r}")


def _month_start(year: int, month: int, anchor_day: int, tz: tzinfo) -> datetime:
    day = min(anchor_day, calendar.monthrange(year, month)[1])
    return datetime(year, month, day, tzinfo=tz)


def _shift_month(year: int, month: int, delta: int) -> tuple[int, int]:
    index = year * 12 + (month - 1) + delta
    return index // 12, index % 12 + 1


def _add_days(start: datetime, days: int, tz: tzinfo) -> datetime:
    # Calendar days, not 24-hour spans: a DST change keeps periods on local midnight.
    shifted = (start.replace(tzinfo=None) + timedelta(days=days))
    return shifted.replace(tzinfo=tz)
