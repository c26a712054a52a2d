"""How usage draws prepaid credit grants: order, expiry, credits back, what nothing covers."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal as D

from metering.billing.credits import Grant, allocate, available, balance

T0 = datetime(2026, 12, 1, tzinfo=timezone.utc)


def at(hours: float) -> datetime:
    return T0 + timedelta(hours=hours)


def test_grants_are_drawn_by_priority_then_soonest_expiry_then_oldest():
    grants = [Grant("late", D("5"), at(0), None, priority=0),
              Grant("expiring", D("5"), at(1), at(100), priority=0),
              Grant("promo", D("5"), at(0), at(200), priority=1),
              Grant("old-expiring", D("5"), at(0), at(100), priority=0)]
    allocation = allocate(grants, [("e1", at(2), D("7")), ("e2", at(3), D("7"))], at(4))
    # priority 0 first; among them the soonest expiry (a tie: the oldest); never-expiring last
    assert allocation.by_event["e1"] == [("old-expiring", D("5")), ("expiring", D("2"))]
    assert allocation.by_event["e2"] == [("expiring", D("3")), ("late", D("4"))]
    assert allocation.used == {"old-expiring": D("5"), "expiring": D("5"), "late": D("4")}
    assert balance(grants, allocation, at(4)) == D("1") + D("5")  # late's rest, promo untouched


def test_an_expired_grant_loses_what_it_still_held_and_covers_nothing_after():
    grants = [Grant("short", D("10"), at(0), at(5)), Grant("long", D("10"), at(0), None, priority=1)]
    allocation = allocate(grants, [("before", at(1), D("4")), ("after", at(6), D("4"))], at(7))
    assert allocation.by_event == {"before": [("short", D("4"))], "after": [("long", D("4"))]}
    assert allocation.expired == {"short": D("6")}
    assert available(grants, allocation) == D("14")  # 20 granted, 6 lost at expiry
    assert balance(grants, allocation, at(7)) == D("6")


def test_usage_no_active_grant_covers_is_uncovered():
    grants = [Grant("g", D("1"), at(5))]
    allocation = allocate(grants, [("early", at(1), D("3")), ("late", at(6), D("3"))], at(7))
    assert allocation.uncovered == D("3") + D("2")  # before the grant, and beyond it
    assert allocation.by_event == {"late": [("g", D("1"))]}


def test_a_negative_amount_gives_back_to_the_grant_that_drew_last():
    grants = [Grant("a", D("5"), at(0)), Grant("b", D("5"), at(0), priority=1)]
    allocation = allocate(grants, [("e1", at(1), D("7")), ("credit", at(2), D("-1"))], at(3))
    assert allocation.used == {"a": D("5"), "b": D("1")}
    assert balance(grants, allocation, at(3)) == D("4")


def test_the_same_events_in_any_order_give_the_same_allocation():
    grants = [Grant("a", D("3"), at(0)), Grant("b", D("3"), at(0), at(10))]
    events = [(f"e{i}", at(i / 2), D("0.5")) for i in range(10)]
    assert allocate(grants, events, at(9)).by_event == allocate(grants, list(reversed(events)), at(9)).by_event


async def test_a_statement_takes_off_what_its_period_drew_from_each_grant_and_carries_the_rest():
    from config.schema import PlanConfig
    from metering.billing.statements import build_statement
    from metering.store.events import UsageEvent
    from proxy.limits.credits import CreditBook

    grants = [Grant("paid", D("10"), at(0)), Grant("promo", D("3"), at(0), priority=1)]

    class Store:
        def grants(self, customer):
            return grants

    def event(i: int, hours: float, amount: str) -> UsageEvent:
        return UsageEvent(id=f"e{i}", ts=at(hours), customer="acme", key_id=None, metric="tokens", quantity=D(1),
                          period="p", amount=D(amount), cost=D(amount))

    every = [event(1, 1, "4"), event(2, 30, "7.5"), event(3, 40, "1")]  # the period holds e2 and e3

    async def events(customer, since, until):
        return [e for e in every if since <= e.ts and (until is None or e.ts < until)]

    book = CreditBook(store=Store(), events=events)
    drawn, left = await book.at_period_end("acme", every[1:], at(48))
    assert drawn == {"paid": D("6"), "promo": D("2.5")} and left == D("0.5")
    plan = PlanConfig(name="prepaid", base_fee=D("2"), markup=D(1))
    statement = build_statement(customer="acme", plan=plan, period_start=at(24), period_end=at(48),
                                events=every[1:], credits=drawn, credit_balance=left).to_json()
    assert statement["subtotal"] == "10.50" and statement["credits_applied"] == "8.50"
    assert statement["total"] == "2.00" and statement["credit_balance_carried"] == "0.50"
    assert statement["credits"] == [{"grant": "paid", "amount": "6.00"}, {"grant": "promo", "amount": "2.50"}]


async def test_a_call_that_ended_after_its_period_is_drawn_in_its_statement_once():
    from metering.store.events import UsageEvent
    from proxy.limits.credits import CreditBook

    grants = [Grant("paid", D("10"), at(0))]

    class Store:
        def grants(self, customer):
            return grants

    def event(name: str, hours: float, amount: str, period: str) -> UsageEvent:
        return UsageEvent(id=name, ts=at(hours), customer="acme", key_id=None, metric="tokens", quantity=D(1),
                          period=period, amount=D(amount), cost=D(amount))

    # a daily period ends at 24 h: the second call was admitted before and ended after it
    every = [event("first", 23, "1", "day1"), event("late", 24.01, "2", "day1"), event("next", 30, "0.5", "day2")]

    async def events(customer, since, until):
        return [e for e in every if since <= e.ts and (until is None or e.ts < until)]

    book = CreditBook(store=Store(), events=events)
    drawn, left = await book.at_period_end("acme", every[:2], at(24))
    assert drawn == {"paid": D("3")} and left == D("7")  # both of day 1's calls covered
    drawn, left = await book.at_period_end("acme", every[2:], at(48))
    assert drawn == {"paid": D("0.5")} and left == D("6.5")  # not drawn again on day 2
