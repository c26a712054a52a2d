"""A proxy's reservations: seeding from the ledger, renewals, and recovery after a store lost its data."""

from __future__ import annotations

import pytest

from metering.limits.budget import MemoryBudget, Scope, Spend
from metering.limits.reservations import Recovering, Reservations
from tests.unit.test_budget_memory import PERIOD, FakeClock

CAP = [Scope("customer", 100)]


class Ledger:
    """What the ledger (and the recorder's queue) hold for each period: the reservations' source."""

    def __init__(self) -> None:
        self.spends: list[Spend] = []
        self.reads = 0

    async def __call__(self, customer: str, period: str) -> list[Spend]:
        self.reads += 1
        return list(self.spends)


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
