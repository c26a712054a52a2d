"""Real-time counters: each customer's usage in each open period, as a projection of events.

The ledger is the truth; counters are a fast projection of it, rebuilt from the ledger on
start. The in-process implementation keeps exact Decimal sums (money) and ints (tokens).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Protocol

from metering.store.events import UsageEvent


@dataclass(slots=True)
class Totals:
    """What one customer used in one period, for one model or a metric, or in all."""

    requests: int = 0
    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0
    quantity: Decimal = Decimal(0)
    cost: Decimal = Decimal(0)
    amount: Decimal = Decimal(0)

    def add(self, event: UsageEvent) -> None:
        self.requests += 1
        self.input_tokens += event.input_tokens
        self.cached_input_tokens += event.cached_input_tokens
        self.output_tokens += event.output_tokens
        self.reasoning_tokens += event.reasoning_tokens
        self.cache_write_tokens += event.cache_write_tokens
        self.cache_write_1h_tokens += event.cache_write_1h_tokens
        self.quantity += event.quantity
        self.cost += event.cost
        self.amount += event.amount


@dataclass(slots=True)
class PeriodTotals:
    """A customer's period: the grand total and its split by model (or metric)."""

    all: Totals = field(default_factory=Totals)
    by_model: dict[str, Totals] = field(default_factory=dict)  # model name, or "metric:<name>"

    def add(self, event: UsageEvent) -> None:
        self.all.add(event)
        name = event.model if event.metric == "tokens" and event.model else f"metric:{event.metric}"
        self.by_model.setdefault(name, Totals()).add(event)


POSITION_SCALE = 10**9  # positions are kept in integer billionths (custom quantities have <= 9 places)


def advances_position(event: UsageEvent) -> bool:
    """Whether an event uses up included quota and tier room (records with their own price do not)."""
    return event.usage_source.get("priced_by") != "record"


def positions_of(events: Iterable[UsageEvent]) -> dict[tuple[str, str, str], Decimal]:
    """(customer, period, metric) -> units used so far, from events."""
    positions: dict[tuple[str, str, str], Decimal] = {}
    for event in events:
        if advances_position(event):
            key = (event.customer, event.period, event.metric)
            positions[key] = positions.get(key, Decimal(0)) + event.quantity
    return positions


class Counters(Protocol):
    """The counters interface shared by the in-process and the Redis implementation."""

    async def record(self, event: UsageEvent) -> None: ...

    async def claim(self, customer: str, period: str, metric: str, quantity: Decimal) -> Decimal:
        """Atomically take the next `quantity` units of the period's metric; returns the
        position before them (for included quota and tiers). Positions tile without gaps."""
        ...

    async def totals(self, customer: str, period: str) -> PeriodTotals: ...

    async def rebuild(self, events: Iterable[UsageEvent]) -> None: ...


class MemoryCounters:
    """Counters in this process: exact, instant, lost on exit (and rebuilt from the ledger)."""

    def __init__(self) -> None:
        self._periods: dict[tuple[str, str], PeriodTotals] = {}
        self._positions: dict[tuple[str, str, str], Decimal] = {}

    async def claim(self, customer: str, period: str, metric: str, quantity: Decimal) -> Decimal:
        key = (customer, period, metric)
        before = self._positions.get(key, Decimal(0))
        self._positions[key] = before + quantity
        return before

    async def record(self, event: UsageEvent) -> None:
        self.record_now(event)

    def record_now(self, event: UsageEvent) -> None:
        """Synchronous form, for the response path: nothing to await in-process."""
        key = (event.customer, event.period)
        totals = self._periods.get(key)
        if totals is None:
            totals = self._periods[key] = PeriodTotals()
        totals.add(event)

    async def totals(self, customer: str, period: str) -> PeriodTotals:
        return self._periods.get((customer, period)) or PeriodTotals()

    async def rebuild(self, events: Iterable[UsageEvent]) -> None:
        events = list(events)
        self._periods.clear()
        for event in events:
            self.record_now(event)
        self._positions = positions_of(events)
