"""A proxy's reservations: seeding from the ledger, renewals, and recovery after a store lost its data."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from metering.limits.budget import MemoryBudget, Scope, Spend
from metering.limits.reservations import Recovering, Reservations
from tests.unit.test_budget_memory import PERIOD, FakeClock

CAP = [Scope("customer", 100)]


class Ledger:
    """What the ledger (and the recorder's queue) hold for each period: the reservations' source."""

    def __init__(self) -> None:
        self.spends: list[Spend] = []
        self.at: dict[str, datetime] = {}  # an event's time, when a test needs it (default: now)
        self.reads = 0

    async def __call__(self, customer: str, period: str, since: datetime | None = None) -> list[Spend]:
        self.reads += 1
        now = datetime.now(timezone.utc)
        return [s for s in self.spends if since is None or self.at.get(s.id, now) >= since]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def reservations(store, ledger: Ledger, *, shared: bool = False, clock=None, **kwargs) -> Reservations:
    return Reservations(store=store, source=ledger, shared=shared, ttl=60, window=3.0,
                        clock=clock or FakeClock(), **kwargs)


async def reserve(r: Reservations, hold_id: str, units: int):
    return await r.reserve(customer="acme", period=PERIOD, hold_id=hold_id, units=units, scopes=CAP)


async def test_a_period_is_merged_from_the_ledger_before_its_first_reserve():
    ledger = Ledger()
    ledger.spends = [Spend("old-1", 70, ("customer",))]
    r = reservations(MemoryBudget(), ledger)
    assert not (await reserve(r, "r1", 40)).allowed  # 70 + 40 > 100: the ledger's spend counts
    assert (await reserve(r, "r2", 30)).allowed
    assert ledger.reads == 1  # once per period, not per call


async def test_a_store_that_lost_everything_gets_back_the_ledger_holds_and_recent_spends(clock):
    """Finding 3: after Redis came back empty, reservations ran on the empty store, and the
    rebuild then set spent from a ledger snapshot that missed the calls in flight."""
    ledger = Ledger()
    ledger.spends = [Spend("flushed", 20, ("customer",))]
    store = MemoryBudget(clock=clock)
    r = reservations(store, ledger, shared=True, clock=clock, max_wait=1.0)
    in_flight = (await reserve(r, "in-flight", 30)).hold
    done = (await reserve(r, "done", 30)).hold
    await r.settle(done, 25)  # settled, not yet in the ledger
    await r.renew_once()  # the generation is known: a later change means a loss
    r.store = MemoryBudget(clock=clock)  # the store restarts empty
    await r.renew_once()
    assert await r.store.usage(customer="acme", period=PERIOD, scope="customer") == (45, 30)
    with pytest.raises(Recovering):  # closed while other proxies put back their part
        await r.reserve(customer="acme", period=PERIOD, hold_id="next", units=1, scopes=CAP)
    clock.now += 3.01
    assert not (await reserve(r, "too-big", 26)).allowed  # 45 spent + 30 held + 26 > 100
    assert (await reserve(r, "fits", 25)).allowed
    await r.settle(in_flight, 30)
    assert await r.store.usage(customer="acme", period=PERIOD, scope="customer") == (75, 25)


async def test_another_proxys_reseeding_makes_this_one_put_back_its_part(clock):
    ledger = Ledger()
    store = MemoryBudget(clock=clock)
    mine = reservations(store, ledger, shared=True, clock=clock)
    hold = (await reserve(mine, "mine", 40)).hold
    spent = (await reserve(mine, "spent", 10)).hold
    await mine.settle(spent, 10)
    await mine.renew_once()
    fresh = MemoryBudget(clock=clock)
    other = reservations(fresh, ledger, shared=True, clock=clock)  # another proxy seeds the empty store first
    await other.seed("acme", PERIOD)
    mine.store = fresh
    await mine.renew_once()
    assert await fresh.usage(customer="acme", period=PERIOD, scope="customer") == (10, 40)
    await mine.settle(hold, 40)
    assert await fresh.usage(customer="acme", period=PERIOD, scope="customer") == (50, 0)


async def test_renewals_keep_a_long_call_held_past_the_hold_ttl(clock):
    """Finding 8: a hold expired under a call that ran past 900 s; a second call took its room."""
    r = Reservations(store=MemoryBudget(clock=clock), source=Ledger(), shared=False, ttl=60, clock=clock)
    long_call = (await reserve(r, "long", 100)).hold
    for _ in range(20):  # 1,000 s of renewals every 50 s
        clock.now += 50
        await r.renew_once()
    assert not (await reserve(r, "second", 1)).allowed
    await r.settle(long_call, 100)
    assert await r.store.usage(customer="acme", period=PERIOD, scope="customer") == (100, 0)


async def test_a_dead_proxys_hold_expires_after_the_ttl(clock):
    store = MemoryBudget(clock=clock)
    dead = Reservations(store=store, source=Ledger(), shared=False, ttl=60, clock=clock)
    await reserve(dead, "orphan", 100)  # its proxy dies: nobody renews it
    alive = Reservations(store=store, source=Ledger(), shared=False, ttl=60, clock=clock)
    clock.now += 59
    assert not (await reserve(alive, "r1", 1)).allowed
    clock.now += 2
    assert (await reserve(alive, "r1", 1)).allowed


async def test_spends_the_store_missed_are_applied_once_it_answers(clock):
    class Flaky(MemoryBudget):
        down = False

        async def settle(self, hold, units):
            if self.down:
                raise ConnectionError("store down")
            return await super().settle(hold, units)

    store = Flaky(clock=clock)
    r = Reservations(store=store, source=Ledger(), shared=False, ttl=60, clock=clock)
    hold = (await reserve(r, "r1", 50)).hold
    store.down = True
    with pytest.raises(ConnectionError):
        await r.settle(hold, 42)
    store.down = False
    await r.renew_once()
    await r.renew_once()  # again: counted once
    assert await store.usage(customer="acme", period=PERIOD, scope="customer") == (42, 0)


class ReplyLost(MemoryBudget):
    """A store that applies a settle and then cannot answer (the connection dropped after it ran)."""

    down = False

    async def settle(self, hold, units):
        if self.down:
            await super().settle(hold, units)
            raise ConnectionError("connection lost after the script ran")
        return await super().settle(hold, units)


async def test_a_spend_the_store_missed_for_long_rebuilds_the_period_instead_of_counting_it_again(clock):
    """The store keeps applied ids for its window only: re-applying a spend older than half of it
    could count it twice (it may have run, its id since forgotten). The period is rebuilt."""
    ledger = Ledger()
    store = ReplyLost(clock=clock, applied_for=600)
    r = reservations(store, ledger, clock=clock)
    live = (await reserve(r, "live", 30)).hold
    hold = (await reserve(r, "lost", 50)).hold
    store.down = True
    with pytest.raises(ConnectionError):
        await r.settle(hold, 42)  # applied, but the answer never came
    store.down = False
    ledger.spends = [Spend("lost", 42, ("customer",))]  # journaled, so the ledger has it
    clock.now += 700  # the store's window for "lost" is over
    await store.add_spent(customer="acme", period=PERIOD, scopes=("customer",), units=1, event_id="e")
    assert "lost" not in store._periods[("acme", PERIOD)].applied  # forgotten: a settle would count again
    await r.renew_once()
    # rebuilt: the ledger's 42 once; this proxy's live hold put back; "e" (no proxy's, not in the
    # ledger: a test's write) is gone with the period
    assert await store.usage(customer="acme", period=PERIOD, scope="customer") == (42, 30)
    await r.renew_once()  # nothing pending any more
    assert await store.usage(customer="acme", period=PERIOD, scope="customer") == (42, 30)
    await r.settle(live, 30)
    assert await store.usage(customer="acme", period=PERIOD, scope="customer") == (72, 0)


async def test_a_spend_missed_briefly_is_settled_by_id(clock):
    ledger = Ledger()
    store = ReplyLost(clock=clock, applied_for=600)
    r = reservations(store, ledger, clock=clock)
    hold = (await reserve(r, "r1", 50)).hold
    store.down = True
    with pytest.raises(ConnectionError):
        await r.settle(hold, 42)
    store.down = False
    clock.now += 299  # within half the window: its id is remembered, the retry counts nothing
    await r.renew_once()
    assert await store.usage(customer="acme", period=PERIOD, scope="customer") == (42, 0)
    assert ledger.reads == 1  # the first seed only: no rebuild


async def test_a_proxy_that_learns_of_a_cap_merges_only_what_the_rebuild_may_have_missed(clock):
    """The proxy where the cap was set rebuilt the period; another one merges its recent events:
    those applied somewhere count nothing (their ids are remembered), old ones are left alone
    (their ids may be forgotten: merging them would count them again)."""
    ledger = Ledger()
    store = MemoryBudget(clock=clock)
    where_set, other = reservations(store, ledger, clock=clock), reservations(store, ledger, clock=clock)
    ledger.spends = [Spend("old", 10, ("customer",)), Spend("before", 20, ("customer",))]
    ledger.at["old"] = datetime.now(timezone.utc) - timedelta(hours=2)
    await where_set.rebuild("acme", PERIOD)
    clock.now += 3600  # the ids the rebuild applied are forgotten
    await store.add_spent(customer="acme", period=PERIOD, scopes=("customer",), units=0, event_id="tick")
    ledger.spends.append(Spend("missed", 5, ("customer",)))  # flushed by its proxy after the rebuild read
    ledger.at["before"] = datetime.now(timezone.utc) - timedelta(hours=1)
    await other.merge_recent("acme", PERIOD)
    assert await store.usage(customer="acme", period=PERIOD, scope="customer") == (35, 0)
    await other.merge_recent("acme", PERIOD)  # again: nothing more
    assert await store.usage(customer="acme", period=PERIOD, scope="customer") == (35, 0)


async def test_a_first_cap_counts_the_period_again_from_the_ledger(clock):
    """A customer capped earlier in the period, uncapped for a while (its calls spent nothing
    here), then capped again: every event of the period counts, the old ones once though their
    ids are long forgotten."""
    ledger = Ledger()
    store = MemoryBudget(clock=clock)
    r = reservations(store, ledger, clock=clock)
    await r.settle((await reserve(r, "capped-call", 10)).hold, 10)
    clock.now += 3600
    await store.add_spent(customer="acme", period=PERIOD, scopes=("customer",), units=0, event_id="tick")
    live = (await reserve(r, "in-flight", 5)).hold
    ledger.spends = [Spend("capped-call", 10, ("customer",)), Spend("uncapped-call", 20, ("customer",))]
    await r.rebuild("acme", PERIOD)
    assert await store.usage(customer="acme", period=PERIOD, scope="customer") == (30, 5)
    assert (await reserve(r, "next", 1)).allowed  # one proxy (memory): no recovery window
    await r.settle(live, 5)
    assert await store.usage(customer="acme", period=PERIOD, scope="customer") == (35, 1)


def test_a_store_window_too_short_for_the_recent_spends_is_refused():
    with pytest.raises(ValueError, match="applied ids"):
        Reservations(store=MemoryBudget(applied_for=60), source=Ledger(), shared=False, recent_for=30)


async def test_two_proxies_rebuilding_at_once_leave_out_neither_ones_unflushed_calls(clock):
    """A reload gives a customer a cap again on every proxy at once: each rebuilds the period
    from the ledger after flushing its own queue, not the others'. B read before C flushed an
    uncapped call and dropped the period after C merged it: C puts it back on seeing B's
    generation (its recent events were kept when it rebuilt)."""
    import asyncio

    ledger = Ledger()
    ledger.spends = [Spend("old", 10, ("customer",))]
    c_queue = [Spend("c-uncapped", 20, ("customer",))]  # ended on C without a cap, not yet flushed
    read, go = asyncio.Event(), asyncio.Event()

    class PausedBeforeDrop:
        """The shared store, as B sees it: B's reads are done when it drops the period."""

        def __getattr__(self, name):
            return getattr(store, name)

        async def forget(self, **kwargs):
            read.set()
            await go.wait()
            await store.forget(**kwargs)

    async def c_source(customer, period, since=None):
        ledger.spends += c_queue  # the flush first, as customer_events does
        c_queue.clear()
        return await ledger(customer, period, since)

    store = MemoryBudget(clock=clock)
    b = Reservations(store=PausedBeforeDrop(), source=ledger, shared=True, ttl=60, window=3.0, clock=clock)
    c = Reservations(store=store, source=c_source, shared=True, ttl=60, window=3.0, clock=clock)
    await store.seed(customer="acme", period=PERIOD, events=[], generation="earlier-cap")
    rebuilding_b = asyncio.create_task(b.rebuild("acme", PERIOD))
    await read.wait()
    await c.rebuild("acme", PERIOD)
    assert await store.usage(customer="acme", period=PERIOD, scope="customer") == (30, 0)
    go.set()
    await rebuilding_b
    assert await store.usage(customer="acme", period=PERIOD, scope="customer") == (10, 0)  # B's drop
    await c.renew_once()  # C sees B's generation
    assert await store.usage(customer="acme", period=PERIOD, scope="customer") == (30, 0)
    await b.renew_once()
    await c.renew_once()  # and nothing counts twice
    assert await store.usage(customer="acme", period=PERIOD, scope="customer") == (30, 0)


async def test_a_cap_given_again_soon_after_a_seed_is_merged_by_id_without_closing_the_period(clock):
    """Another proxy seeded the period for the same cap moments ago (or the cap went and came
    back within a minute): every id applied since is remembered, so merging by id is exact, and
    no rebuild closes the period for a recovery window."""
    ledger = Ledger()
    store = MemoryBudget(clock=clock)
    first, second = (reservations(store, ledger, shared=True, clock=clock) for _ in range(2))
    ledger.spends = [Spend("before", 20, ("customer",))]
    await first.cap_applies("acme", PERIOD)  # the store never knew the period: a seed
    await first.settle((await reserve(first, "capped", 10)).hold, 10)
    ledger.spends += [Spend("capped", 10, ("customer",)), Spend("uncapped-elsewhere", 5, ("customer",))]
    clock.now += 20
    await second.cap_applies("acme", PERIOD)
    assert await store.usage(customer="acme", period=PERIOD, scope="customer") == (35, 0)
    assert (await reserve(second, "next", 1)).allowed  # no recovery window
    assert await store.renew(customer="acme", period=PERIOD, holds=[], ttl=60) == first._generations[("acme", PERIOD)]


async def test_a_cap_given_again_long_after_the_seed_rebuilds_the_period(clock):
    ledger = Ledger()
    store = MemoryBudget(clock=clock)
    r = reservations(store, ledger, shared=True, clock=clock)
    ledger.spends = [Spend("old", 20, ("customer",))]
    await r.cap_applies("acme", PERIOD)
    generation = await store.renew(customer="acme", period=PERIOD, holds=[], ttl=60)
    clock.now += 3600  # the seed's ids are forgotten: merging by id would count "old" again
    await store.add_spent(customer="acme", period=PERIOD, scopes=("customer",), units=0, event_id="tick")
    ledger.spends.append(Spend("uncapped", 5, ("customer",)))
    await r.cap_applies("acme", PERIOD)
    assert await store.usage(customer="acme", period=PERIOD, scope="customer") == (25, 0)
    assert await store.renew(customer="acme", period=PERIOD, holds=[], ttl=60) != generation  # rebuilt
