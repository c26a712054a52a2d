"""Prepaid credits in the proxy: each customer's grants and balance, and the credit_only hold.

A plan with `credits: {mode: credit_only}` makes the balance a hard cap: every call reserves
its worst case against it before the provider, in the same atomic budget store as the spend
caps (under a "period" of its own, `CREDITS`, since credits outlive billing periods), so
concurrent calls, on any number of proxies, can never take the balance below zero. What the
store may hold there in all is every grant's amount less what expired unused, and what it
counts is every event since the first grant: the two sides of the balance.

`CreditBook` caches, per customer, the grants and their allocation (`metering.billing.credits`),
recomputed when a grant is added (on every proxy, through the directory's version) and when
the next grant expires.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from metering.billing.credits import Allocation, Grant, allocate, available, balance
from metering.limits.budget import MAX_UNITS, to_units
from metering.store.credits import CreditStore
from metering.store.events import UsageEvent, utcnow

log = logging.getLogger("payware.credits")

CREDITS = "credits"  # the budget store's period of every customer's credit spend (it spans billing periods)
REFRESH = 60.0  # seconds: a cached balance is recomputed at least this often (and at each expiry)


@dataclass(slots=True)
class CreditState:
    grants: list[Grant]
    allocation: Allocation
    limit_units: int  # what usage may draw in all, in nano-USD (the credit_only cap)
    balance: Decimal  # what the active grants held when computed
    valid_until: float  # monotonic time of the next expiry or refresh

    @property
    def first(self) -> datetime | None:
        return min((g.created for g in self.grants), default=None)


class CreditBook:
    """Customers' grants and balances, cached in this proxy; keyword-only dependencies."""

    def __init__(self, *, store: CreditStore, events, clock=time.monotonic):
        self.store = store
        self.events = events  # async (customer, since, until) -> list[UsageEvent]: the ledger and the queue
        self._clock = clock
        self._states: dict[str, CreditState] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def invalidate(self, customer: str | None = None) -> None:
        if customer is None:
            self._states.clear()
        else:
            self._states.pop(customer, None)

    async def state(self, customer: str) -> CreditState:
        cached = self._states.get(customer)
        if cached is not None and self._clock() < cached.valid_until:
            return cached
        async with self._locks.setdefault(customer, asyncio.Lock()):
            cached = self._states.get(customer)
            if cached is not None and self._clock() < cached.valid_until:
                return cached
            state = await self._compute(customer, utcnow())
            self._states[customer] = state
            return state

    async def _compute(self, customer: str, now: datetime, until: datetime | None = None,
                       also: Sequence[UsageEvent] = ()) -> CreditState:
        """The grants and what the events before `until` (all, without it), and `also`, drew."""
        loop = asyncio.get_running_loop()
        grants = await loop.run_in_executor(None, self.store.grants, customer)
        first = min((g.created for g in grants), default=None)
        events = await self.events(customer, first, until) if first is not None else []
        if also:
            known = {event.id for event in events}
            events = events + [event for event in also if event.id not in known]
        at = max([until or now, *(event.ts for event in also)])
        allocation = allocate(grants, [(e.id, e.ts, e.amount) for e in events], at)
        limit = min(max(to_units(available(grants, allocation)), 0), MAX_UNITS)
        upcoming = [g.expires for g in grants if g.expires is not None and g.expires > now]
        wait = min([REFRESH] + [(moment - now).total_seconds() for moment in upcoming])
        return CreditState(grants=grants, allocation=allocation, limit_units=limit,
                           balance=balance(grants, allocation, at), valid_until=self._clock() + max(wait, 0.0))

    async def at_period_end(self, customer: str, events: list[UsageEvent], end: datetime
                            ) -> tuple[dict[str, Decimal] | None, Decimal | None]:
        """What a closed period's `events` drew from each grant, and the balance at its `end`
        (after its last event); (None, None) for a customer without grants.

        NOTE: a call admitted before the end that ended after it is the period's, and draws here
        at its own time, as every later computation sees it draw: allocated by the time before
        the end only, it was invoiced in this statement and drawn from credit in the next.
        """
        state = await self._compute(customer, end, until=end, also=events)
        if not state.grants:
            return None, None
        drawn: dict[str, Decimal] = {}
        for event in events:
            for grant, amount in state.allocation.by_event.get(event.id, ()):
                drawn[grant] = drawn.get(grant, Decimal(0)) + amount
        return drawn, state.balance


def grant_view(grant: Grant, state: CreditState, now: datetime) -> dict:
    from metering.store.events import money_str

    return {"id": grant.id, "object": "credit_grant", "amount": money_str(grant.amount),
            "remaining": money_str(state.allocation.remaining(grant, now)),
            "used": money_str(state.allocation.used.get(grant.id, Decimal(0))),
            "expired_unused": money_str(state.allocation.expired.get(grant.id, Decimal(0))),
            "priority": grant.priority, "reason": grant.reason, "created_at": grant.created.isoformat(),
            "expires_at": grant.expires.isoformat() if grant.expires else None,
            "active": grant.active(now)}
