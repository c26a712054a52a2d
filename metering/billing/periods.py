"""Billing periods: which period an instant falls in, for each interval.

Monthly periods start on the customer's anchor day; in a month too short for it (the 31st
in February) the period starts on that month's last day, and the next one goes back to the
anchor day. All arithmetic happens in the plan's time zone, UTC by default.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone, tzinfo


@dataclass(frozen=True, slots=True)
class Period:
    start: datetime
    end: datetime
    interval: str

    @property
    def key(self) -> str:
        """The period's id on every event: its start, in UTC, ISO 8601."""
        return self.start.astimezone(timezone.utc).isoformat()


def period_of(ts: datetime, interval: str, *, anchor_day: int = 1, tz: tzinfo = timezone.utc) -> Period:
    """The period of `interval` that contains `ts` (an aware datetime)."""
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
