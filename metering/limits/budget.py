"""Spend caps: reserve the worst case before a call, settle the actual cost after it.

Money here is integer units of nano-USD (`NANO` units = 1 USD): exact in Python and in Redis
Lua (doubles are exact up to 2^53 units, $9M per scope and period). Per customer and period,
each scope (the customer, a key, ...) has `spent` (settled) and `held` (live reservations).

- `reserve` checks every scope and holds `units` on all of them, or on none (one atomic step).
  `hard`: allowed iff spent + held + units <= limit, so racing requests never exceed the cap.
  `soft`: allowed iff spent < limit; what is in flight may overshoot it.
- `settle` adds the actual units to spent once per hold id, even after the hold expired.
  Units are signed (a volume tier's marginal amount can be negative); a cap sees spent as
  `max(spent, 0)`, so a credit never makes room below zero.
- `release` drops a hold and spends nothing. Holds not renewed for their ttl (a crashed proxy)
  are dropped, their units freed, before every operation reads `held`; `renew` keeps the holds
  of calls still running alive (and puts back any the store lost).

Seeding: a period's spend is known only once it has been merged from the ledger (`seed`,
idempotent by event id). Until then `reserve` answers `unseeded` and reserves nothing, so a
store that lost its data (a Redis restarted empty) is never reserved against as if empty.
`seed` may open a recovery window (`ready_in`): reserves answer `wait` until it ends, while the
other proxies put back their holds and the events the ledger did not have yet.

Hold ids and `add_spent` event ids share one idempotency set per period: both are the usage
event's id, so a request is counted at most once whichever path records it. An id is kept for
`applied_for` seconds (3 minutes) once its period is seeded, not for the whole period: the set
would otherwise grow by every capped call of a month. Until the period is seeded every id stays
(the seed may still merge any of them from the ledger). Nothing re-applies a spend older than
that: a renewal's put-back and a recovery's re-applied spends are seconds old, and a spend
the store missed for longer is not re-applied but the period rebuilt (`forget`, then a seed:
`Reservations.rebuild`). Period state expires `key_ttl` after its last write: in Redis each key
after the last script that wrote it (key TTLs; a period's spend, its applied ids and its seed
marker always together, so a period that lost them is merged from the ledger again, never
twice); the memory store forgets a whole period `key_ttl` after its last write.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, Context, Decimal, Inexact, InvalidOperation, Overflow
from typing import TYPE_CHECKING, Protocol

from metering.limits import redis_scripts

if TYPE_CHECKING:
    import redis.asyncio as aioredis

NANO = 10**9
MAX_UNITS = 2**53 - 1  # Lua numbers are doubles: beyond this, sums stop being exact
KEY_TTL = 40 * 86400.0  # longer than any billing period, so an open period never expires while in use
# Seconds a seeded period remembers an applied id (see the module docstring): well past the 30 s
# of spends a recovery re-applies. The set holds this many seconds of a customer's capped calls.
APPLIED_FOR = 180.0
MODES = ("hard", "soft")
_SEED_CHUNK = 2000  # events per seeding script


def to_units(amount: Decimal) -> int:
    """`amount` USD as nano-USD units, rounded up (caps are enforced conservatively). Exact."""
    if not amount.is_finite():
        raise ValueError(f"amount must be finite, not {amount}")
    # the ceiling: positive amounts round away from zero, negative ones toward it
    return int(amount.scaleb(9, _UNITS).to_integral_value(ROUND_CEILING, _UNITS))


# scaleb is exact within this precision (an amount has far fewer digits); Inexact would trap
_UNITS = Context(prec=200, Emin=-999999, Emax=999999, traps=[Inexact, InvalidOperation, Overflow])


@dataclass(frozen=True, slots=True)
class Scope:
    """One cap a request counts against."""

    name: str  # e.g. "customer" or "key:key_abc123"
    limit: int | None  # units; None = no cap on this scope (still tracked)
    mode: str = "hard"  # "hard" | "soft"

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("scope name must not be empty")
        if self.mode not in MODES:
            raise ValueError(f"scope {self.name!r}: mode must be one of {MODES}, not {self.mode!r}")
        if self.limit is not None:
            _check_units(self.limit, f"scope {self.name!r} limit")


@dataclass(frozen=True, slots=True)
class Hold:
    """A granted reservation: settle it or release it when the call ends."""

    id: str
    customer: str
    period: str
    scopes: tuple[str, ...]
    units: int


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer to `reserve`, with the numbers the error message or a clamp needs."""

    allowed: bool
    hold: Hold | None  # set when allowed
    scope: str | None  # the scope that refused (when not allowed)
    spent: int  # of the refusing scope; when allowed, of "customer" (else the first scope), hold included
    held: int
    limit: int | None
    unseeded: bool = False  # nothing was decided: seed the period from the ledger, then ask again
    wait: float = 0.0  # seconds: nothing was decided, the period is recovering; ask again after this
    generation: str = ""  # of the period's seeding (changes when the store lost it and it was re-seeded)


@dataclass(frozen=True, slots=True)
class Spend:
    """An event to merge into a period's spend when seeding it: counted once, by id."""

    id: str
    units: int  # signed
    scopes: tuple[str, ...]


class BudgetStore(Protocol):
    """Caps per customer, scope and period; the memory and the Redis store behave the same."""

    async def reserve(self, *, customer: str, period: str, hold_id: str, units: int, scopes: Sequence[Scope],
                      ttl: float = 900.0) -> Decision: ...

    async def settle(self, hold: Hold, actual_units: int) -> bool: ...

    async def release(self, hold: Hold) -> bool: ...

    async def add_spent(self, *, customer: str, period: str, scopes: tuple[str, ...], units: int,
                        event_id: str) -> bool: ...

    async def usage(self, *, customer: str, period: str, scope: str) -> tuple[int, int]: ...

    async def renew(self, *, customer: str, period: str, holds: list[Hold], ttl: float) -> str: ...

    async def seed(self, *, customer: str, period: str, events: list[Spend], generation: str,
                   ready_in: float = 0.0) -> None: ...

    async def forget(self, *, customer: str, period: str) -> None: ...

    async def seeded_for(self, *, customer: str, period: str) -> float | None: ...

    async def close(self) -> None: ...

    applied_for: float


def _check_units(units: int, what: str, *, signed: bool = False) -> None:
    low = -MAX_UNITS if signed else 0
    if isinstance(units, bool) or not isinstance(units, int) or not low <= units <= MAX_UNITS:
        raise ValueError(f"{what} must be an int in [{'-2**53' if signed else '0'}, 2**53), not {units!r}")


def _check_scopes(scopes: Sequence[Scope | str]) -> None:
    if len(scopes) < 2:  # one scope is always distinct
        return
    names = [s.name if isinstance(s, Scope) else s for s in scopes]
    if len(set(names)) != len(names):
        raise ValueError(f"scopes must be distinct, got {names}")  # a duplicate would be held twice


def _report_index(scopes: Sequence[Scope]) -> int:
    """Which scope a granted Decision describes: "customer" if present, else the first."""
    for i, scope in enumerate(scopes):
        if scope.name == "customer":
            return i
    return 0


_HEX = "0123456789abcdef"


def _applied_key(event_id: str) -> str | int:
    """How the memory store remembers an applied id: a proxied call's id (`req_` and 32 lowercase
    hex digits, one-to-one with its number) as that 128-bit int; any other id as it is. The
    int takes 44 bytes where the str takes 85, and it is the store's own object: the str was the
    call's, allocated among its short-lived objects, whose memory it then held on to for the
    window (at 2,000 capped calls a second, 360,000 ids)."""
    if len(event_id) == 36 and event_id.startswith("req_") and not event_id[4:].strip(_HEX):
        return int(event_id[4:], 16)
    return event_id


@dataclass(slots=True)
class _Held:
    units: int
    scopes: tuple[str, ...]
    expires: float


@dataclass(slots=True)
class _Period:
    spent: dict[str, int] = field(default_factory=dict)
    held: dict[str, int] = field(default_factory=dict)
    holds: dict[str, _Held] = field(default_factory=dict)
    applied: set[str | int] = field(default_factory=set)  # settled hold ids, add_spent event ids (_applied_key)
    # (forget at, ids), oldest first: when applied ids may go (once the period is seeded), by the
    # second (an id stays up to 1 s longer; a tuple and a float per id cost more than the id)
    applied_order: deque[tuple[int, list[str | int]]] = field(default_factory=deque)
    touched: float = 0.0
    generation: str = ""  # set by seed: "" means the period's spend is not known yet
    ready_at: float = 0.0
    # No hold expires before this (a lower bound): until then `prune` has nothing to look at, so a
    # customer with thousands of calls in flight does not pay for a scan of them on every call.
    next_expiry: float = float("inf")

    def spend(self, event_id: str, units: int, scopes: Iterable[str], keep_until: float) -> bool:
        key = _applied_key(event_id)
        if key in self.applied:
            return False
        self.applied.add(key)
        second, order = math.ceil(keep_until), self.applied_order
        if order and order[-1][0] == second:
            order[-1][1].append(key)
        else:
            order.append((second, [key]))
        for name in scopes:
            self.spent[name] = self.spent.get(name, 0) + units
        return True

    def floored(self, scope: str) -> int:
        return max(self.spent.get(scope, 0), 0)

    def hold(self, hold_id: str, units: int, scopes: tuple[str, ...], expires: float) -> None:
        for name in scopes:
            self.held[name] = self.held.get(name, 0) + units
        self.holds[hold_id] = _Held(units, scopes, expires)
        self.next_expiry = min(self.next_expiry, expires)

    def drop(self, hold_id: str) -> bool:
        held = self.holds.pop(hold_id, None)
        if held is None:
            return False
        for name in held.scopes:
            left = self.held.get(name, 0) - held.units
            if left:
                self.held[name] = left
            else:
                self.held.pop(name, None)
        return True

    def prune(self, now: float) -> None:
        if now < self.next_expiry:
            return
        # Linear in live holds (bounded by the requests in flight), once per expiry, not per call.
        for hold_id in [h for h, held in self.holds.items() if held.expires <= now]:
            self.drop(hold_id)
        self.next_expiry = min((held.expires for held in self.holds.values()), default=float("inf"))

    def forget_applied(self, now: float) -> None:
        """Let applied ids past their window go; none before the period is seeded (the seed may
        still merge any of them from the ledger)."""
        if not self.generation:
            return
        order, applied = self.applied_order, self.applied
        while order and order[0][0] <= now:
            for event_id in order.popleft()[1]:
                applied.discard(event_id)


class MemoryBudget:
    """The budget in this process (the embedded default): one event loop, so no locks.

    NOTE: every method is atomic because none awaits between its check and its write.
    `clock` (seconds, `time.monotonic` by default) times hold expiry; tests inject a fake one.
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, key_ttl: float = KEY_TTL,
                 applied_for: float = APPLIED_FOR):
        self._clock = clock
        self._key_ttl = key_ttl
        self.applied_for = applied_for
        self._periods: dict[tuple[str, str], _Period] = {}
        self._swept = clock()

    def _period(self, customer: str, period: str, *, write: bool, now: float | None = None) -> _Period:
        if now is None:
            now = self._clock()
        if now - self._swept >= 60.0:  # mirror Redis key TTLs: forget periods idle for key_ttl
            self._swept = now
            for key in [k for k, p in self._periods.items() if p.touched + self._key_ttl <= now]:
                del self._periods[key]
        state = self._periods.get((customer, period))
        if state is None:
            state = _Period()
            if write:
                self._periods[(customer, period)] = state
        state.prune(now)
        if write:
            state.touched = now
            state.forget_applied(now)
        return state

    async def reserve(self, *, customer: str, period: str, hold_id: str, units: int, scopes: Sequence[Scope],
                      ttl: float = 900.0) -> Decision:
        """Hold `units` on every scope, or on none; see the module docstring for the modes."""
        return self.reserve_now(customer, period, hold_id, units, scopes, ttl)

    async def settle(self, hold: Hold, actual_units: int) -> bool:
        """Spend `actual_units` on the hold's scopes and drop it; only the first call counts."""
        return self.settle_now(hold, actual_units)

    async def release(self, hold: Hold) -> bool:
        """Drop a live hold, spending nothing; False if it was settled, released or expired."""
        return self.release_now(hold)

    # The work itself, synchronous: in-process admission calls these without awaiting.

    def reserve_now(self, customer: str, period: str, hold_id: str, units: int, scopes: Sequence[Scope],
                    ttl: float = 900.0) -> Decision:
        """`reserve`, without a coroutine."""
        _check_units(units, "units")
        _check_scopes(scopes)
        now = self._clock()
        state = self._period(customer, period, write=True, now=now)
        if not state.generation:
            return Decision(False, None, None, 0, 0, None, unseeded=True)
        wait = state.ready_at - now
        if wait > 0:
            return Decision(False, None, None, 0, 0, None, wait=wait)
        names = tuple(s.name for s in scopes)
        existing = state.holds.get(hold_id)
        if existing is None:
            for scope in scopes:
                if scope.limit is None:
                    continue
                spent, held = state.floored(scope.name), state.held.get(scope.name, 0)
                ok = spent + held + units <= scope.limit if scope.mode == "hard" else spent < scope.limit
                if not ok:
                    return Decision(False, None, scope.name, spent, held, scope.limit, generation=state.generation)
            state.hold(hold_id, units, names, now + ttl)
            existing = state.holds[hold_id]
        # else: a retried reserve of a live hold: grant it again, hold nothing more
        hold = Hold(hold_id, customer, period, names, existing.units)
        if not scopes:
            return Decision(True, hold, None, 0, 0, None, generation=state.generation)
        report = scopes[_report_index(scopes)]
        return Decision(True, hold, None, state.floored(report.name), state.held.get(report.name, 0),
                        report.limit, generation=state.generation)

    def settle_now(self, hold: Hold, actual_units: int) -> bool:
        """`settle`, without a coroutine."""
        _check_units(actual_units, "actual_units", signed=True)
        now = self._clock()
        state = self._period(hold.customer, hold.period, write=True, now=now)
        # NOTE: the applied set, not the hold, makes settle idempotent: the hold may have expired.
        first = state.spend(hold.id, actual_units, hold.scopes, now + self.applied_for)
        state.drop(hold.id)
        return first

    def release_now(self, hold: Hold) -> bool:
        """`release`, without a coroutine."""
        state = self._period(hold.customer, hold.period, write=False)
        return state.drop(hold.id)

    async def add_spent(self, *, customer: str, period: str, scopes: tuple[str, ...], units: int,
                        event_id: str) -> bool:
        """Spend without a hold (a custom usage record, a call served past the cap); once per event id."""
        _check_units(units, "units", signed=True)
        _check_scopes(scopes)
        return self._period(customer, period, write=True).spend(event_id, units, scopes,
                                                                self._clock() + self.applied_for)

    async def usage(self, *, customer: str, period: str, scope: str) -> tuple[int, int]:
        """(spent, held) of one scope, live holds only; spent never below 0."""
        state = self._period(customer, period, write=False)
        return state.floored(scope), state.held.get(scope, 0)

    async def renew(self, *, customer: str, period: str, holds: list[Hold], ttl: float) -> str:
        """Keep calls in flight held for `ttl` more (put back any hold not settled); the generation."""
        state = self._period(customer, period, write=bool(holds))
        expires = self._clock() + ttl
        for hold in holds:
            if _applied_key(hold.id) in state.applied:
                continue
            live = state.holds.get(hold.id)
            if live is None:
                state.hold(hold.id, hold.units, hold.scopes, expires)
            else:
                live.expires = expires
                state.next_expiry = min(state.next_expiry, expires)  # a shorter ttl than before
        return state.generation

    async def seed(self, *, customer: str, period: str, events: list[Spend], generation: str,
                   ready_in: float = 0.0) -> None:
        """Merge `events` into spent, each once by id; then the period is known (after `ready_in` s)."""
        for event in events:
            _check_units(event.units, f"units of {event.id}", signed=True)
        state = self._period(customer, period, write=True)
        keep_until = self._clock() + self.applied_for
        for event in events:
            state.spend(event.id, event.units, event.scopes, keep_until)
        if not state.generation:
            state.generation, state.ready_at = generation, self._clock() + ready_in

    async def forget(self, *, customer: str, period: str) -> None:
        """Drop everything the period holds, as a store that lost its data would (to rebuild it)."""
        self._periods.pop((customer, period), None)

    async def seeded_for(self, *, customer: str, period: str) -> float | None:
        """Seconds since the period's seed was ready (less than 0 within its window); None if unknown."""
        state = self._periods.get((customer, period))
        return None if state is None or not state.generation else self._clock() - state.ready_at

    async def close(self) -> None:
        """Nothing to close: the state lives and dies with the process."""


class RedisBudget:
    """The budget in Redis, shared by every proxy instance; each operation is one Lua script.

    Keys: `{prefix}:{{customer}}:budget:{period}:spent|held|holds|expiry|applied_until|seeded`.
    The hash tag puts all of a customer's keys in one Redis Cluster slot, so one script may touch
    them all. Hold expiry and the applied ids' window use the Redis server's clock. The client
    belongs to the caller, who closes it.
    """

    def __init__(self, client: aioredis.Redis, *, prefix: str = "pw", key_ttl: float = KEY_TTL,
                 applied_for: float = APPLIED_FOR):
        if "{" in prefix or "}" in prefix:
            raise ValueError("the key prefix must not contain braces: the customer is the hash tag")
        self._prefix = prefix
        self._key_ttl = str(max(1, int(key_ttl)))
        self.applied_for = applied_for

        def script(text: str):
            return client.register_script(redis_scripts.budget_script(text, int(applied_for * 1000)))

        self._reserve = script(redis_scripts.BUDGET_RESERVE)
        self._settle = script(redis_scripts.BUDGET_SETTLE)
        self._release = script(redis_scripts.BUDGET_RELEASE)
        self._add_spent = script(redis_scripts.BUDGET_ADD_SPENT)
        self._usage = script(redis_scripts.BUDGET_USAGE)
        self._renew = script(redis_scripts.BUDGET_RENEW)
        self._seed = script(redis_scripts.BUDGET_SEED)
        self._forget = script(redis_scripts.BUDGET_FORGET)
        self._seeded_for = script(redis_scripts.BUDGET_SEEDED_FOR)

    def _keys(self, customer: str, period: str) -> list[str]:
        base = f"{self._prefix}:{{{customer}}}:budget:{period}"
        # NOTE: `applied_until`, not the `applied` set of versions before the window: another type
        return [f"{base}:{part}" for part in ("spent", "held", "holds", "expiry", "applied_until", "seeded")]

    async def reserve(self, *, customer: str, period: str, hold_id: str, units: int, scopes: Sequence[Scope],
                      ttl: float = 900.0) -> Decision:
        """Hold `units` on every scope, or on none; see the module docstring for the modes."""
        _check_units(units, "units")
        _check_scopes(scopes)
        args: list[str] = [self._key_ttl, hold_id, str(units), str(max(0, int(ttl * 1000))),
                           str(_report_index(scopes) + 1 if scopes else 0)]
        for scope in scopes:
            args += [scope.name, "" if scope.limit is None else str(scope.limit), scope.mode]
        status, index, spent, held, limit, held_units, generation, wait = await self._reserve(
            keys=self._keys(customer, period), args=args)
        generation = generation.decode() if isinstance(generation, bytes) else str(generation or "")
        if status == 3:
            return Decision(False, None, None, 0, 0, None, unseeded=True)
        if status == 4:
            return Decision(False, None, None, 0, 0, None, wait=int(wait) / 1000)
        scope_limit = None if limit < 0 else int(limit)
        if status == 0:
            return Decision(False, None, scopes[index - 1].name, int(spent), int(held), scope_limit,
                            generation=generation)
        hold = Hold(hold_id, customer, period, tuple(s.name for s in scopes), int(held_units))
        return Decision(True, hold, None, int(spent), int(held), scope_limit, generation=generation)

    async def settle(self, hold: Hold, actual_units: int) -> bool:
        """Spend `actual_units` on the hold's scopes and drop it; only the first call counts."""
        _check_units(actual_units, "actual_units", signed=True)
        args = [self._key_ttl, hold.id, str(actual_units), *hold.scopes]
        return bool(await self._settle(keys=self._keys(hold.customer, hold.period), args=args))

    async def release(self, hold: Hold) -> bool:
        """Drop a live hold, spending nothing; False if it was settled, released or expired."""
        args = [self._key_ttl, hold.id]
        return bool(await self._release(keys=self._keys(hold.customer, hold.period), args=args))

    async def add_spent(self, *, customer: str, period: str, scopes: tuple[str, ...], units: int,
                        event_id: str) -> bool:
        """Spend without a hold (a custom usage record, a call served past the cap); once per event id."""
        _check_units(units, "units", signed=True)
        _check_scopes(scopes)
        args = [self._key_ttl, event_id, str(units), *scopes]
        return bool(await self._add_spent(keys=self._keys(customer, period), args=args))

    async def usage(self, *, customer: str, period: str, scope: str) -> tuple[int, int]:
        """(spent, held) of one scope, live holds only; spent never below 0."""
        spent, held, _seeded = await self._usage(keys=self._keys(customer, period), args=[self._key_ttl, scope])
        return int(spent), int(held)

    async def renew(self, *, customer: str, period: str, holds: list[Hold], ttl: float) -> str:
        """Keep calls in flight held for `ttl` more (put back any hold not settled); the generation."""
        args = [self._key_ttl, str(max(1, int(ttl * 1000)))]
        for hold in holds:
            args += [hold.id, str(hold.units), str(len(hold.scopes)), *hold.scopes]
        generation = await self._renew(keys=self._keys(customer, period), args=args)
        return generation.decode() if isinstance(generation, bytes) else str(generation or "")

    async def seed(self, *, customer: str, period: str, events: list[Spend], generation: str,
                   ready_in: float = 0.0) -> None:
        """Merge `events` into spent, each once by id; then the period is known (after `ready_in` s).

        In chunks (a script runs alone on the server: a long one would stall every proxy).
        """
        for event in events:
            _check_units(event.units, f"units of {event.id}", signed=True)
        keys = self._keys(customer, period)
        chunks = [events[i:i + _SEED_CHUNK] for i in range(0, len(events), _SEED_CHUNK)] or [[]]
        for number, chunk in enumerate(chunks, 1):
            args = [self._key_ttl, "1" if number == len(chunks) else "0", generation,
                    str(max(0, int(ready_in * 1000)))]
            for event in chunk:
                args += [event.id, str(event.units), str(len(event.scopes)), *event.scopes]
            await self._seed(keys=keys, args=args)

    async def forget(self, *, customer: str, period: str) -> None:
        """Drop everything the period holds, as a Redis that lost its data would (to rebuild it)."""
        await self._forget(keys=self._keys(customer, period), args=[self._key_ttl])

    async def seeded_for(self, *, customer: str, period: str) -> float | None:
        """Seconds since the period's seed was ready (less than 0 within its window), by the
        server's clock; None if unknown."""
        known, ms = await self._seeded_for(keys=self._keys(customer, period), args=[self._key_ttl])
        return int(ms) / 1000 if int(known) else None

    async def close(self) -> None:
        """Nothing to close: the Redis client belongs to the caller."""


__all__ = ["NANO", "BudgetStore", "Decision", "Hold", "MemoryBudget", "RedisBudget", "Scope", "Spend", "to_units"]
