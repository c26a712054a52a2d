"""Prepaid credits: grants, and how usage draws them. Pure, exact, and deterministic.

A customer's grants (paid or promotional) are drawn by its usage **in priority order (the
lowest `priority` number first), then by soonest expiry (grants that never expire last),
then oldest first** — the rule of Lago, Orb and Kong. Each event draws, at its own time, from
the grants active then (created at or before it, not yet expired), one after the other until
its amount is covered; what no active grant covers is *uncovered* (invoiced under
`credit_then_invoice`; under `credit_only` admission keeps it from happening). A negative
amount (a volume tier's credit) gives back to the grant that drew last. What a grant still
holds when it expires is lost (`expired`).

`allocate` replays every event in time order: the same events and grants always give the same
allocation, on every proxy, whenever it runs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class Grant:
    id: str
    amount: Decimal
    created: datetime
    expires: datetime | None = None
    priority: int = 0
    reason: str = ""

    def order(self) -> tuple:
        """The drawing order: priority, then soonest expiry (never last), then oldest."""
        return (self.priority, self.expires is None, self.expires or self.created, self.created, self.id)

    def active(self, at: datetime) -> bool:
        return self.created <= at and (self.expires is None or at < self.expires)


@dataclass(slots=True)
class Allocation:
    """What usage drew from each grant, what is left, and what nothing covered."""

    used: dict[str, Decimal] = field(default_factory=dict)  # grant id -> drawn
    expired: dict[str, Decimal] = field(default_factory=dict)  # grant id -> lost at its expiry
    uncovered: Decimal = ZERO  # usage no active grant covered
    by_event: dict[str, list[tuple[str, Decimal]]] = field(default_factory=dict)  # event id -> [(grant, amount)]

    def remaining(self, grant: Grant, at: datetime) -> Decimal:
        """What `grant` still holds at `at` (0 once expired)."""
        if not grant.active(at):
            return ZERO
        return grant.amount - self.used.get(grant.id, ZERO)


def allocate(grants: Iterable[Grant], events: Iterable[tuple[str, datetime, Decimal]],
             now: datetime) -> Allocation:
    """Draw `events` ((id, ts, amount), any order) from `grants` as the module docstring says."""
    grants = sorted(grants, key=Grant.order)
    allocation = Allocation()
    used = allocation.used
    last: str | None = None
    timeline = sorted(events, key=lambda e: (e[1], e[0]))
    expiries = sorted((g for g in grants if g.expires is not None and g.expires <= now), key=lambda g: g.expires)
    pending = 0

    def expire_until(at: datetime) -> None:
        nonlocal pending
        while pending < len(expiries) and expiries[pending].expires <= at:
            grant = expiries[pending]
            left = grant.amount - used.get(grant.id, ZERO)
            if left > 0:
                allocation.expired[grant.id] = left
            pending += 1

    for event_id, ts, amount in timeline:
        expire_until(ts)
        if amount < 0:
            if last is not None:  # a credit gives back to the grant that drew last
                used[last] = used.get(last, ZERO) + amount
                allocation.by_event[event_id] = [(last, amount)]
            else:
                allocation.uncovered += amount
            continue
        draws = []
        for grant in grants:
            if amount <= 0:
                break
            if not grant.active(ts):
                continue
            left = grant.amount - used.get(grant.id, ZERO)
            if left <= 0:
                continue
            take = min(left, amount)
            used[grant.id] = used.get(grant.id, ZERO) + take
            amount -= take
            draws.append((grant.id, take))
            last = grant.id
        if amount > 0:
            allocation.uncovered += amount
        if draws:
            allocation.by_event[event_id] = draws
    expire_until(now)
    return allocation


def balance(grants: Iterable[Grant], allocation: Allocation, at: datetime) -> Decimal:
    """What the active grants still hold at `at`."""
    return sum((allocation.remaining(g, at) for g in grants), ZERO)


def available(grants: Iterable[Grant], allocation: Allocation) -> Decimal:
    """What usage may draw in all: every grant's amount, less what expired unused (the cap a
    `credit_only` customer's spend is held to, counted over the same events)."""
    grants = list(grants)
    return sum((g.amount for g in grants), ZERO) - sum(allocation.expired.values(), ZERO)
