"""This proxy's side of the budget: the holds of its calls in flight and what it spent lately.

A `BudgetStore` knows holds and spend; only the proxy that runs a call knows the call is still
running. `Reservations` wraps a store with that knowledge:

- **Renewal.** Every `renew_every` seconds each live hold is renewed for `ttl` more, so a hold
  lives as long as its call (a 15-minute reasoning call keeps its room), and only the holds of
  a dead proxy expire, `ttl` after it stopped renewing them.
- **Seeding.** A period the store does not know (`Decision.unseeded`: a Redis restarted empty,
  a new period, a customer who just got a cap) is merged from the ledger first: the `source`
  callback gives every event of the period this proxy knows of (the ledger after a flush, plus
  what is still queued), merged by id, so nothing counts twice however often it runs.
- **Recovery.** After a loss, the periods this proxy had seen come back unseeded (or with a
  generation it has not seen). It then puts back its live holds and re-applies the spends of
  the last `recent_for` seconds (idempotent by id: those the ledger already gave are skipped),
  and a period seeded after a loss stays closed to reserves for `window` seconds, long enough
  for every proxy's renewal to do the same. Reserves wait for the window, up to `max_wait`.
- **Rebuild.** The store remembers applied ids for `store.applied_for` seconds only, so a spend
  is never re-applied once that old: a spend the store missed for half of it (a long outage)
  and a customer who gets a cap again (its uncapped calls were never spent here) rebuild the
  period instead, as after a loss: dropped, merged again from the ledger, every proxy putting
  back its part (`cap_applies`: a period the store never knew is only seeded). A shared
  store's rebuild keeps the period's events of the last `recent_for` seconds as this proxy's
  recent spends: another proxy's rebuild at the same moment, whose ledger read came before
  this proxy flushed, is completed by this proxy's put-back. The other proxies that learn of
  a customer's own cap merge only their events of the last half window, whose ids are still
  remembered (`merge_recent`).
- **Recent spends** are kept for `recent_for` seconds for those put-backs: on a shared store
  always, on one only this proxy uses (which loses nothing but to a rebuild) while one runs.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import datetime, timedelta, timezone

from metering.limits.budget import BudgetStore, Decision, Hold, MemoryBudget, Scope, Spend

log = logging.getLogger("payware.reservations")

# (customer, period, since=None) -> the spends of the period's events this proxy knows of (of
# those at or after `since`, a UTC datetime, when given)
Source = Callable[..., Awaitable[list[Spend]]]


class Recovering(Exception):
    """The period is closed to reserves for a little longer (a recovery window): retry after `wait` s."""

    def __init__(self, wait: float):
        super().__init__(f"recovering for {wait:.1f} s more")
        self.wait = wait


class Reservations:
    """Holds and spends of this proxy against one `BudgetStore`; keyword-only dependencies."""

    def __init__(self, *, store: BudgetStore, source: Source, shared: bool, ttl: float = 60.0,
                 renew_every: float = 1.0, recent_for: float = 30.0, window: float = 3.0, max_wait: float = 5.0,
                 clock: Callable[[], float] = time.monotonic):
        if store.applied_for <= 4 * recent_for:
            raise ValueError(f"the store keeps applied ids {store.applied_for:g} s: re-applying spends of "
                             f"the last {recent_for:g} s needs more than 4 times that")
        self.store = store
        self.source = source
        self.shared = shared  # other proxies use the store too (Redis): a loss needs a recovery window
        self.ttl = ttl
        self.renew_every = renew_every
        self.recent_for = recent_for
        self.window = window
        self.max_wait = max_wait
        self._clock = clock
        self.live: dict[str, Hold] = {}  # hold id -> the hold of a call in flight here
        # (at, customer, period, event id, units, scopes): plain tuples, which the garbage
        # collector stops tracking (at 2,000 calls a second a dataclass per spend kept ~120,000
        # objects for every full collection to walk: ~80 ms pauses)
        self._recent: deque[tuple] = deque()
        self._recent_periods: dict[tuple[str, str], float] = {}  # the periods of those, and when last
        self._rebuilding = 0  # rebuilds under way (what a non-shared store needs recent spends for)
        self._generations: dict[tuple[str, str], str] = {}  # the last generation seen per period
        self._seeding: dict[tuple[str, str], asyncio.Lock] = {}
        # Spends the store did not take (it was down), with when: settled, by id, once it answers
        # again (a settle also drops the hold; an id the store knows already counts nothing).
        self._pending: deque[tuple[Hold, Spend, float]] = deque(maxlen=1_000_000)
        self.on_loss: Callable[[str, str], Awaitable[None]] | None = None  # after a recovery window

    # -- the call path ---------------------------------------------------------------------

    async def reserve(self, *, customer: str, period: str, hold_id: str, units: int,
                      scopes: Sequence[Scope]) -> Decision:
        """Reserve, seeding the period first if the store does not know it; Recovering if it is
        in a recovery window longer than `max_wait`."""
        waited = 0.0
        for _ in range(4):
            decision = await self.store.reserve(customer=customer, period=period, hold_id=hold_id, units=units,
                                                scopes=scopes, ttl=self.ttl)
            if decision.unseeded:
                await self.seed(customer, period)
                continue
            if decision.wait > 0:
                if waited + decision.wait > self.max_wait:
                    raise Recovering(decision.wait)
                waited += decision.wait
                await asyncio.sleep(decision.wait)
                continue
            return self._answered(customer, period, decision)
        raise Recovering(1.0)

    def reserve_now(self, customer: str, period: str, hold_id: str, units: int,
                    scopes: Sequence[Scope]) -> Decision | None:
        """`reserve` on an in-process store (`inline`), without awaiting; None when the period
        must be seeded or waited for first (then `reserve` does it; nothing was held)."""
        decision = self.store.reserve_now(customer, period, hold_id, units, scopes, self.ttl)
        if decision.unseeded or decision.wait > 0:
            return None
        return self._answered(customer, period, decision)

    def _answered(self, customer: str, period: str, decision: Decision) -> Decision:
        if decision.hold is not None:
            self.live[decision.hold.id] = decision.hold
        if decision.generation:
            self._generations.setdefault((customer, period), decision.generation)
        return decision

    async def settle(self, hold: Hold, units: int) -> bool:
        self.live.pop(hold.id, None)
        self._remember(hold.customer, hold.period, hold.id, units, hold.scopes)
        try:
            return await self.store.settle(hold, units)
        except Exception:  # settled when the store answers
            self._pending.append((hold, Spend(hold.id, units, hold.scopes), self._clock()))
            raise

    def settle_now(self, hold: Hold, units: int) -> bool:
        """`settle` on an in-process store (`inline`), without awaiting."""
        self.live.pop(hold.id, None)
        self._remember(hold.customer, hold.period, hold.id, units, hold.scopes)
        return self.store.settle_now(hold, units)

    async def release(self, hold: Hold) -> bool:
        self.live.pop(hold.id, None)
        return await self.store.release(hold)

    def release_now(self, hold: Hold) -> bool:
        """`release` on an in-process store (`inline`), without awaiting."""
        self.live.pop(hold.id, None)
        return self.store.release_now(hold)

    @property
    def inline(self) -> bool:
        """Whether the store is this process's own, whose operations need no await (`*_now`)."""
        return isinstance(self.store, MemoryBudget)

    async def add_spent(self, *, customer: str, period: str, scopes: tuple[str, ...], units: int,
                        event_id: str) -> bool:
        self._remember(customer, period, event_id, units, scopes)
        try:
            return await self.store.add_spent(customer=customer, period=period, scopes=scopes, units=units,
                                              event_id=event_id)
        except Exception:
            self._pending.append((Hold(event_id, customer, period, scopes, 0), Spend(event_id, units, scopes),
                                  self._clock()))
            raise

    def owed(self, event_ids: Iterable[str]) -> set[str]:
        """Those of `event_ids` whose spend failed and waits to be applied (by id) when the
        store answers: counted, as far as idempotency goes, though the store does not know them yet."""
        if not self._pending:
            return set()
        return set(event_ids) & {hold.id for hold, _spend, _at in self._pending}

    async def usage(self, *, customer: str, period: str, scope: str) -> tuple[int, int]:
        """(spent, held) of a scope; a period the store does not know is seeded first."""
        if not await self.store.renew(customer=customer, period=period, holds=[], ttl=self.ttl):
            await self.seed(customer, period)
        return await self.store.usage(customer=customer, period=period, scope=scope)

    async def rebuild(self, customer: str, period: str) -> None:
        """Drop the period in the store and merge it again, as after a loss: from the ledger, with
        this proxy's holds and recent spends put back, and (shared) a recovery window while the
        other proxies put back theirs (they see a new generation). Also when a customer whose
        calls were not reserved (no cap) gets a cap: merging into the period as it is could not
        tell the ids it applied long ago, which it no longer remembers.

        The merge is unconditional: another proxy's seed that ran across the drop may have set
        the period seeded with part of its events; merging every event by id completes it.
        """
        key = (customer, period)
        self._rebuilding += 1
        try:
            async with self._seeding.setdefault(key, asyncio.Lock()):
                events = await self.source(customer, period)  # NOTE: before the drop, to keep it short
                if self.shared:
                    await self._keep_recent(customer, period)
                ready_in = self.window if self.shared else 0.0
                await self.store.forget(customer=customer, period=period)
                await self.store.seed(customer=customer, period=period, events=events,
                                      generation=uuid.uuid4().hex[:16], ready_in=ready_in)
                await self._restore(customer, period)  # spends since the source was read included
        finally:
            self._rebuilding -= 1
        log.warning("budget of %s for %s rebuilt from %d events", customer, period, len(events))

    async def _keep_recent(self, customer: str, period: str) -> None:
        """Keep the period's events of the last `recent_for` seconds as this proxy's recent
        spends. Proxies that rebuild a period at once (a reload giving a cap reaches them all)
        each read the ledger after flushing their own queue, not the others': one whose read
        came before this proxy's flush and whose drop came after this proxy's merge would leave
        out this proxy's calls. Its new generation makes this proxy put them back (by id)."""
        since = datetime.now(timezone.utc) - timedelta(seconds=self.recent_for)
        for spend in await self.source(customer, period, since=since):
            self._remember(customer, period, spend.id, spend.units, spend.scopes)

    async def cap_applies(self, customer: str, period: str) -> None:
        """A customer that had no cap gets one: none of its calls since were spent here. A period
        the store does not know is seeded (every event once, as its first reserve would do). One
        seeded lately (another proxy's merge for the same cap, most often) is merged by id: every
        id its seed or a spend since applied is remembered, and the events older than the merge
        reads were in the ledger at that seed. One known for longer holds an earlier cap's spends,
        whose ids may be forgotten: it is rebuilt (dropped, merged again, a recovery window)."""
        since = await self.store.seeded_for(customer=customer, period=period)
        if since is None:
            await self.seed(customer, period)
            how = "seeded"
        elif since + self.window < self.store.applied_for / 2 - self.recent_for:
            await self.merge_recent(customer, period)
            how = "merged by event id"
        else:
            await self.rebuild(customer, period)
            how = "rebuilt"
        log.info("budget of %s for %s applies a new cap: %s from the ledger", customer, period, how)

    async def merge_recent(self, customer: str, period: str) -> None:
        """Merge the period's events of the last half of the store's window, by id: those some
        proxy applied are still remembered and count nothing. For a proxy that learns of a cap
        another proxy set (and rebuilt the period for): its events the rebuild may have missed."""
        since = datetime.now(timezone.utc) - timedelta(seconds=self.store.applied_for / 2)
        events = await self.source(customer, period, since=since)
        generation = await self.store.renew(customer=customer, period=period, holds=[], ttl=self.ttl)
        if not generation:
            await self.seed(customer, period)  # not known (any more): a whole seed instead
            return
        await self.store.seed(customer=customer, period=period, events=events, generation=generation)

    def forget(self, hold: Hold) -> None:
        """Stop renewing a hold without touching the store (its call ended on another path)."""
        self.live.pop(hold.id, None)

    def _remember(self, customer: str, period: str, event_id: str, units: int, scopes: tuple[str, ...]) -> None:
        if not (self.shared or self._rebuilding):
            # NOTE: a store only this proxy uses loses nothing of what this proxy spent, but to a
            # rebuild (which the spends made while it runs are kept for)
            return
        now = self._clock()
        recent = self._recent
        recent.append((now, customer, period, event_id, units, scopes))
        self._recent_periods[(customer, period)] = now
        horizon = now - self.recent_for
        while recent[0][0] < horizon:  # never the one just added
            recent.popleft()

    # -- seeding and recovery ----------------------------------------------------------------

    async def seed(self, customer: str, period: str) -> None:
        """Merge the period from what this proxy knows (ledger + queue), once at a time per period."""
        key = (customer, period)
        lock = self._seeding.setdefault(key, asyncio.Lock())
        async with lock:
            generation = await self.store.renew(customer=customer, period=period, holds=[], ttl=self.ttl)
            if generation:  # another task or proxy seeded it meanwhile
                self._generations[key] = generation
                return
            lost = key in self._generations  # it was known here: the store lost it
            ready_in = self.window if (lost and self.shared) else 0.0
            events = await self.source(customer, period)
            await self.store.seed(customer=customer, period=period, events=events,
                                  generation=uuid.uuid4().hex[:16], ready_in=ready_in)
            if lost:
                log.warning("budget of %s for %s was lost by the store: merged %d events from the ledger%s",
                            customer, period, len(events),
                            f", reserves resume in {ready_in:g} s" if ready_in else "")
            await self._restore(customer, period)
        if lost and self.on_loss is not None:
            asyncio.get_running_loop().call_later(ready_in, self._after_loss, customer, period)

    def _after_loss(self, customer: str, period: str) -> None:
        task = asyncio.ensure_future(self.on_loss(customer, period))
        task.add_done_callback(lambda t: t.cancelled() or t.exception() is None
                               or log.error("after a budget loss: %r", t.exception()))

    async def _restore(self, customer: str, period: str) -> None:
        """Put back this proxy's holds and recent spends of one period; remember its generation."""
        holds = [h for h in self.live.values() if h.customer == customer and h.period == period]
        generation = await self.store.renew(customer=customer, period=period, holds=holds, ttl=self.ttl)
        for _at, of, in_period, event_id, units, scopes in list(self._recent):
            if of == customer and in_period == period:
                await self.store.add_spent(customer=customer, period=period, scopes=scopes, units=units,
                                           event_id=event_id)
        self._generations[(customer, period)] = generation

    async def renew_once(self) -> None:
        """Apply what the store missed; renew every live hold; notice periods the store lost or
        another proxy re-seeded."""
        rebuilt: set[tuple[str, str]] = set()
        while self._pending:
            hold, spend, at = self._pending[0]
            period = (hold.customer, hold.period)
            if period in rebuilt:
                pass  # the rebuild merged it from the ledger
            elif self._clock() - at > self.store.applied_for / 2:
                # The store may have applied it and forgotten its id since: re-applying it
                # could count it twice. The ledger has it (it was journaled before settling).
                log.warning("a spend of %s for %s waited %.0f s for the store: rebuilding the period",
                            hold.customer, hold.period, self._clock() - at)
                await self.rebuild(*period)
                rebuilt.add(period)
            else:
                await self.store.settle(hold, spend.units)
            self._pending.popleft()
        periods: dict[tuple[str, str], list[Hold]] = {}
        for hold in list(self.live.values()):
            periods.setdefault((hold.customer, hold.period), []).append(hold)
        horizon = self._clock() - self.recent_for
        for key, at in list(self._recent_periods.items()):
            if at < horizon:
                del self._recent_periods[key]
            else:
                periods.setdefault(key, [])
        for (customer, period), holds in periods.items():
            generation = await self.store.renew(customer=customer, period=period, holds=holds, ttl=self.ttl)
            known = self._generations.get((customer, period))
            if not generation:
                await self.seed(customer, period)
            elif known is not None and generation != known:
                log.warning("budget of %s for %s was re-seeded elsewhere: putting back this proxy's part",
                            customer, period)
                await self._restore(customer, period)
            else:
                self._generations[(customer, period)] = generation

    async def run(self, is_down: Callable[[], bool] = lambda: False) -> None:
        """Renew forever (cancel to stop); a failed pass is logged and the next one tries again."""
        while True:
            await asyncio.sleep(self.renew_every)
            if is_down():
                continue
            try:
                await self.renew_once()
            except Exception as exc:  # the store may be down: the call path applies the policy
                log.debug("renewing holds failed: %s", type(exc).__name__)
