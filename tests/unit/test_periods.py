"""Billing periods: anchors, short months, leap years, weeks, days, time zones."""

from __future__ import annotations

from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest

from metering.billing.periods import period_of

UTC = timezone.utc


def at(*args, tz=UTC) -> datetime:
    return datetime(*args, tzinfo=tz)


@pytest.mark.parametrize("ts, start, end", [
    # anchored on the 31st through February of a leap year (2028): Jan 31 -> Feb 29 -> Mar 31
    (at(2028, 2, 10), at(2028, 1, 31), at(2028, 2, 29)),
    (at(2028, 2, 29), at(2028, 2, 29), at(2028, 3, 31)),
    (at(2028, 3, 30, 23, 59), at(2028, 2, 29), at(2028, 3, 31)),
    (at(2028, 3, 31), at(2028, 3, 31), at(2028, 4, 30)),
    (at(2028, 5, 1), at(2028, 4, 30), at(2028, 5, 31)),
    # a common year: February ends on the 28th
    (at(2027, 2, 28, 12), at(2027, 2, 28), at(2027, 3, 31)),
    (at(2027, 2, 27), at(2027, 1, 31), at(2027, 2, 28)),
    # across the year end
    (at(2027, 1, 15), at(2026, 12, 31), at(2027, 1, 31)),
])
def test_monthly_periods_anchored_on_the_31st(ts, start, end):
    period = period_of(ts, "monthly", anchor_day=31)
    assert (period.start, period.end) == (start, end)


def test_consecutive_monthly_periods_tile_time_without_gaps_or_overlaps():
    period = period_of(at(2027, 11, 5), "monthly", anchor_day=30)
    for _ in range(30):
        following = period_of(period.end, "monthly", anchor_day=30)
        assert following.start == period.end and following.end > following.start
        period = following


@pytest.mark.parametrize("interval, ts, start, end", [
    ("daily", at(2026, 11, 26, 23, 59, 59), at(2026, 11, 26), at(2026, 11, 27)),
    ("weekly", at(2026, 11, 26), at(2026, 11, 23), at(2026, 11, 30)),  # weeks start on Monday
    ("monthly", at(2026, 11, 26), at(2026, 11, 1), at(2026, 12, 1)),
])
def test_daily_weekly_monthly(interval, ts, start, end):
    period = period_of(ts, interval)
    assert (period.start, period.end, period.interval) == (start, end, interval)


def test_periods_follow_the_plans_time_zone_across_a_dst_change():
    paris = ZoneInfo("Europe/Paris")
    # 2026-10-25 is 25 hours long in Paris (summer time ends); 23:30 UTC on the 24th is the 25th there.
    period = period_of(at(2026, 10, 24, 23, 30), "daily", tz=paris)
    assert period.start == datetime(2026, 10, 25, tzinfo=paris)
    # (same-zone subtraction is wall-clock time in Python: compare in UTC)
    assert (period.end.astimezone(UTC) - period.start.astimezone(UTC)).total_seconds() == 25 * 3600
    assert period.key == "2026-10-24T22:00:00+00:00"


def test_the_period_found_last_is_reused_only_for_instants_inside_it():
    """`period_of` keeps the period it found last per (interval, anchor, zone): asked about
    instants back and forth across edges, in other zones and with other anchors, it must
    answer exactly what a fresh computation does."""
    from metering.billing import periods

    paris = ZoneInfo("Europe/Paris")
    asks = [(at(2027, 3, 30, 23, 59, 59), "monthly", 1, UTC), (at(2027, 3, 31), "monthly", 1, UTC),
            (at(2027, 4, 1), "monthly", 1, UTC), (at(2027, 3, 31, 23, 59, 59, 999999), "monthly", 1, UTC),
            (at(2027, 4, 1), "monthly", 31, UTC), (at(2027, 3, 31, 22, 30), "monthly", 1, paris),
            (at(2027, 3, 28, 0, 59), "daily", 1, paris), (at(2027, 3, 28, 1, 0), "daily", 1, paris),
            (at(2027, 3, 28, 22, 0), "daily", 1, paris), (at(2027, 3, 29, 8), "weekly", 1, UTC),
            (at(2027, 3, 28, 23, 59), "weekly", 1, UTC), (at(2027, 4, 1), "monthly", 1, UTC)]
    for ts, interval, anchor, tz in asks * 2:
        got = period_of(ts, interval, anchor_day=anchor, tz=tz)
        fresh = periods._period_of(ts, interval, anchor, tz)
        assert (got.start, got.end, got.key) == (fresh.start, fresh.end, fresh.key), (ts, interval, anchor, tz)
        assert got.start <= ts < got.end
