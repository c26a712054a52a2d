"""Spend caps: the budget contract, run here on the memory store and in
tests/integration/test_budget_redis.py on Redis (same class, another `budget` fixture)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from decimal import Decimal

import pytest

from metering.limits.budget import MAX_UNITS, NANO, BudgetStore, Hold, MemoryBudget, Scope, Spend, to_units

PERIOD = "2025-06-01T00:00:00+00:00"
NEXT_PERIOD = "2025-07-01T00:00:00+00:00"

Advance = Callable[[float], Awaitable[None]]


class FakeClock:
    """Seconds, moved by hand: expiry tests without sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def customer(limit: int | None, mode: str = "hard") -> Scope:
    return Scope("customer", limit, mode)


async def reserve(budget: BudgetStore, hold_id: str, units: int, scopes: list[Scope], *, who: str = "acme",
                  period: str = PERIOD, ttl: float = 900.0):
    """Reserve on a known period: one the store does not know yet is seeded empty first."""
    decision = await budget.reserve(customer=who, period=period, hold_id=hold_id, units=units, scopes=scopes,
                                    ttl=ttl)
    if decision.unseeded:
        await budget.seed(customer=who, period=period, events=[], generation="g0")
        decision = await budget.reserve(customer=who, period=period, hold_id=hold_id, units=units, scopes=scopes,
                                        ttl=ttl)
    return decision


async def usage(budget: BudgetStore, scope: str = "customer", *, who: str = "acme",
                period: str = PERIOD) -> tuple[int, int]:
    return await budget.usage(customer=who, period=period, scope=scope)


class BudgetContract:
    """What every BudgetStore does. Subclasses provide `budget` and `advance` (move time on)."""

    async def test_hard_cap_admits_up_to_the_limit_exactly(self, budget: BudgetStore):
        first = await reserve(budget, "r1", 60, [customer(100)])
        assert first.allowed and first.hold == Hold("r1", "acme", PERIOD, ("customer",), 60)
        assert (first.spent, first.held, first.limit) == (0, 60, 100)

        refused = await reserve(budget, "r2", 41, [customer(100)])
        assert (refused.allowed, refused.hold, refused.scope) == (False, None, "customer")
        assert (refused.spent, refused.held, refused.limit) == (0, 60, 100)

        last = await reserve(budget, "r3", 40, [customer(100)])
        assert last.allowed and (last.spent, last.held) == (0, 100)
        assert await usage(budget) == (0, 100)

    async def test_concurrent_reserves_at_a_hard_cap_never_exceed_it(self, budget: BudgetStore):
        limit, rng = 1000, random.Random(7)
        sizes = [rng.randint(1, 50) for _ in range(200)]
        decisions = await asyncio.gather(*(reserve(budget, f"r{i}", units, [customer(limit)])
                                           for i, units in enumerate(sizes)))
        granted = sum(units for units, d in zip(sizes, decisions) if d.allowed)
        assert granted <= limit
        assert await usage(budget) == (0, granted)
        # No spurious refusal: held only grew, so each refused request was bigger than what is left.
        assert all(units > limit - granted for units, d in zip(sizes, decisions) if not d.allowed)

    async def test_settle_twice_adds_the_spend_once(self, budget: BudgetStore):
        hold = (await reserve(budget, "r1", 500, [customer(1000)])).hold
        assert await budget.settle(hold, 300) is True
        assert await budget.settle(hold, 300) is False
        assert await usage(budget) == (300, 0)

    async def test_settle_spends_the_actual_cost_and_frees_the_rest(self, budget: BudgetStore):
        hold = (await reserve(budget, "r1", 900, [customer(1000)])).hold
        await budget.settle(hold, 250)
        assert await usage(budget) == (250, 0)
        assert (await reserve(budget, "r2", 750, [customer(1000)])).allowed

    async def test_settle_after_the_hold_expired_counts_once(self, budget: BudgetStore, advance: Advance):
        hold = (await reserve(budget, "r1", 500, [customer(1000)], ttl=0.2)).hold
        await advance(0.3)
        assert await usage(budget) == (0, 0)
        assert await budget.settle(hold, 400) is True
        assert await budget.settle(hold, 400) is False
        assert await usage(budget) == (400, 0)

    async def test_release_frees_the_held_units_and_spends_nothing(self, budget: BudgetStore):
        hold = (await reserve(budget, "r1", 1000, [customer(1000)])).hold
        assert not (await reserve(budget, "r2", 1, [customer(1000)])).allowed
        assert await budget.release(hold) is True
        assert await budget.release(hold) is False
        assert await usage(budget) == (0, 0)
        assert (await reserve(budget, "r3", 1000, [customer(1000)])).allowed

    async def test_release_after_settle_changes_nothing(self, budget: BudgetStore):
        hold = (await reserve(budget, "r1", 100, [customer(1000)])).hold
        await budget.settle(hold, 80)
        assert await budget.release(hold) is False
        assert await usage(budget) == (80, 0)

    async def test_soft_cap_admits_while_spent_is_below_the_limit(self, budget: BudgetStore):
        soft = [customer(100, "soft")]
        first = (await reserve(budget, "r1", 500, soft)).hold
        second = await reserve(budget, "r2", 500, soft)  # what is in flight does not count in soft mode
        assert second.allowed
        await budget.settle(first, 99)
        assert (await reserve(budget, "r3", 10**6, soft)).allowed  # spent 99 < 100
        await budget.settle(second.hold, 1)
        refused = await reserve(budget, "r4", 1, soft)
        assert (refused.allowed, refused.scope, refused.spent, refused.limit) == (False, "customer", 100, 100)

    @pytest.mark.parametrize("order", ["customer first", "key first"])
    async def test_key_cap_refusal_holds_nothing_on_the_customer_scope(self, budget: BudgetStore, order: str):
        scopes = [customer(1000), Scope("key:k1", 50)]
        if order == "key first":
            scopes.reverse()
        refused = await reserve(budget, "r1", 60, scopes)
        assert (refused.allowed, refused.scope, refused.limit) == (False, "key:k1", 50)
        assert await usage(budget) == (0, 0)
        assert await usage(budget, "key:k1") == (0, 0)

    async def test_customer_cap_refusal_holds_nothing_on_the_key_scope(self, budget: BudgetStore):
        await budget.add_spent(customer="acme", period=PERIOD, scopes=("customer",), units=990, event_id="e1")
        refused = await reserve(budget, "r1", 20, [Scope("key:k1", 50), customer(1000)])
        assert (refused.allowed, refused.scope, refused.spent) == (False, "customer", 990)
        assert await usage(budget, "key:k1") == (0, 0)

    async def test_a_granted_hold_counts_on_every_scope(self, budget: BudgetStore):
        decision = await reserve(budget, "r1", 30, [Scope("key:k1", 50), customer(1000)])
        assert decision.hold.scopes == ("key:k1", "customer")
        assert (decision.spent, decision.held, decision.limit) == (0, 30, 1000)  # the customer scope's
        await budget.settle(decision.hold, 20)
        assert await usage(budget, "key:k1") == (20, 0)
        assert await usage(budget) == (20, 0)

    async def test_expired_holds_are_freed_for_the_next_reserve(self, budget: BudgetStore, advance: Advance):
        await reserve(budget, "crashed", 100, [customer(100)], ttl=0.2)
        assert not (await reserve(budget, "r2", 1, [customer(100)], ttl=0.2)).allowed
        await advance(0.3)
        again = await reserve(budget, "r3", 100, [customer(100)])
        assert again.allowed and again.held == 100

    async def test_add_spent_counts_each_event_once(self, budget: BudgetStore):
        args = dict(customer="acme", period=PERIOD, scopes=("customer", "key:k1"), units=70)
        assert await budget.add_spent(**args, event_id="e1") is True
        assert await budget.add_spent(**args, event_id="e1") is False
        assert await budget.add_spent(**args, event_id="e2") is True
        assert await usage(budget) == (140, 0)
        assert await usage(budget, "key:k1") == (140, 0)

    async def test_a_settled_hold_id_is_not_counted_again_as_an_event(self, budget: BudgetStore):
        hold = (await reserve(budget, "req-1", 10, [customer(None)])).hold
        await budget.settle(hold, 10)
        again = await budget.add_spent(customer="acme", period=PERIOD, scopes=("customer",), units=10,
                                       event_id="req-1")
        assert again is False and await usage(budget) == (10, 0)

    async def test_unlimited_scope_is_tracked_but_never_refuses(self, budget: BudgetStore):
        big = await reserve(budget, "r1", MAX_UNITS, [customer(None)])
        assert big.allowed and (big.held, big.limit) == (MAX_UNITS, None)
        await budget.settle(big.hold, 12345)
        assert await usage(budget) == (12345, 0)

    async def test_reserve_retried_with_the_same_hold_id_holds_once(self, budget: BudgetStore):
        first = await reserve(budget, "r1", 40, [customer(100)])
        retry = await reserve(budget, "r1", 40, [customer(100)])
        assert retry.allowed and retry.hold == first.hold
        assert await usage(budget) == (0, 40)

    async def test_a_period_the_store_does_not_know_is_never_reserved_against(self, budget: BudgetStore):
        """A store that lost its data (Redis restarted empty) must not look like a customer who spent 0."""
        decision = await budget.reserve(customer="acme", period=PERIOD, hold_id="r1", units=10,
                                        scopes=[customer(100)], ttl=60)
        assert decision.unseeded and not decision.allowed and decision.hold is None
        assert await usage(budget) == (0, 0)

    async def test_seeding_merges_events_once_by_id(self, budget: BudgetStore):
        settled = (await reserve(budget, "req-1", 50, [customer(100), Scope("key:k1", None)])).hold
        await budget.settle(settled, 30)
        events = [Spend("req-1", 30, ("customer", "key:k1")), Spend("req-2", 20, ("customer",))]
        await budget.seed(customer="acme", period=PERIOD, events=events, generation="g1")
        await budget.seed(customer="acme", period=PERIOD, events=events, generation="g2")  # again: no change
        assert await usage(budget) == (50, 0)
        assert await usage(budget, "key:k1") == (30, 0)
        assert await budget.renew(customer="acme", period=PERIOD, holds=[], ttl=60) == "g0"  # the first stands

    async def test_a_recovery_window_makes_reserves_wait(self, budget: BudgetStore, advance: Advance):
        await budget.seed(customer="acme", period=PERIOD, events=[Spend("e1", 5, ("customer",))],
                          generation="g1", ready_in=0.3)
        waiting = await budget.reserve(customer="acme", period=PERIOD, hold_id="r1", units=1,
                                       scopes=[customer(100)], ttl=60)
        assert not waiting.allowed and 0 < waiting.wait <= 0.3 and await usage(budget) == (5, 0)
        await advance(0.35)
        assert (await reserve(budget, "r1", 1, [customer(100)])).allowed

    async def test_a_store_says_how_long_ago_a_period_was_seeded(self, budget: BudgetStore, advance: Advance):
        assert await budget.seeded_for(customer="acme", period=PERIOD) is None
        await budget.seed(customer="acme", period=PERIOD, events=[], generation="g1", ready_in=0.3)
        assert -0.31 <= await budget.seeded_for(customer="acme", period=PERIOD) < 0  # within its window
        await advance(0.4)
        assert 0.05 <= await budget.seeded_for(customer="acme", period=PERIOD) < 5
        await budget.forget(customer="acme", period=PERIOD)
        assert await budget.seeded_for(customer="acme", period=PERIOD) is None

    async def test_renewing_keeps_a_hold_past_its_ttl_and_puts_back_a_lost_one(self, budget: BudgetStore,
                                                                              advance: Advance):
        hold = (await reserve(budget, "long-call", 60, [customer(100)], ttl=0.3)).hold
        for _ in range(3):
            await advance(0.2)
            await budget.renew(customer="acme", period=PERIOD, holds=[hold], ttl=0.3)
        assert await usage(budget) == (0, 60)  # 0.6 s after a 0.3 s ttl: still held
        assert not (await reserve(budget, "r2", 50, [customer(100)])).allowed
        await budget.release(hold)
        await budget.renew(customer="acme", period=PERIOD, holds=[hold], ttl=0.3)  # a store that lost it
        assert await usage(budget) == (0, 60)
        await budget.settle(hold, 40)
        await budget.renew(customer="acme", period=PERIOD, holds=[hold], ttl=0.3)  # settled: never put back
        assert await usage(budget) == (40, 0)

    async def test_applied_ids_are_kept_until_the_period_is_seeded_then_for_the_window(self, windowed, advance,
                                                                                    remembered):
        """The idempotency set is bounded: ids go `applied_for` after they were applied, but none
        before the period is seeded, since the seed merges the ledger's copies of them."""
        budget, window = windowed
        spend = budget.add_spent
        await spend(customer="acme", period=PERIOD, scopes=("customer",), units=5, event_id="early")
        await advance(window * 1.5)
        await spend(customer="acme", period=PERIOD, scopes=("customer",), units=7, event_id="before-seed")
        assert await remembered(budget) == 2  # unseeded: "early" stays past its window
        ledger = [Spend("early", 5, ("customer",)), Spend("before-seed", 7, ("customer",)),
                  Spend("flushed", 11, ("customer",))]
        await budget.seed(customer="acme", period=PERIOD, events=ledger, generation="g1")
        assert await usage(budget) == (23, 0)  # each once
        await advance(window * 1.5)
        hold = (await reserve(budget, "late", 1, [customer(100)])).hold
        assert await budget.settle(hold, 2)
        assert await remembered(budget) == 1  # only "late": the others' windows are over
        assert not await budget.settle(hold, 2)  # within its window a settle still counts once
        assert await usage(budget) == (25, 0)

    async def test_forget_drops_the_period_as_a_loss_would(self, budget: BudgetStore):
        hold = (await reserve(budget, "r1", 30, [customer(100)])).hold
        await budget.add_spent(customer="acme", period=PERIOD, scopes=("customer",), units=20, event_id="e1")
        await reserve(budget, "other", 10, [customer(100)], who="globex")
        await budget.forget(customer="acme", period=PERIOD)
        assert await usage(budget) == (0, 0)
        assert (await budget.reserve(customer="acme", period=PERIOD, hold_id="r2", units=1,
                                     scopes=[customer(100)])).unseeded
        assert await budget.renew(customer="acme", period=PERIOD, holds=[hold], ttl=60) == ""  # put back, unseeded
        assert await usage(budget) == (0, 30)
        assert await usage(budget, who="globex") == (0, 10)  # other customers untouched

    async def test_a_negative_spend_is_a_credit_but_a_cap_never_sees_below_zero(self, budget: BudgetStore):
        """Finding 10: a volume tier's negative marginal amount drove a key's spent below 0."""
        hold = (await reserve(budget, "r1", 10, [customer(100), Scope("key:k1", 50)])).hold
        await budget.settle(hold, -80)
        assert await usage(budget, "key:k1") == (0, 0)
        assert not (await reserve(budget, "r2", 51, [Scope("key:k1", 50)])).allowed  # no room below zero
        await budget.add_spent(customer="acme", period=PERIOD, scopes=("customer", "key:k1"), units=90,
                               event_id="e3")
        assert await usage(budget, "key:k1") == (10, 0)  # -80 + 90: the credit counted in the sum

    async def test_customers_and_periods_do_not_share_spend(self, budget: BudgetStore):
        await reserve(budget, "r1", 100, [customer(100)])
        assert (await reserve(budget, "r2", 100, [customer(100)], who="globex")).allowed
        assert (await reserve(budget, "r3", 100, [customer(100)], period=NEXT_PERIOD)).allowed
        assert await usage(budget, who="globex") == (0, 100)

    async def test_amounts_near_2_to_the_53_stay_exact(self, budget: BudgetStore):
        hold = (await reserve(budget, "r1", MAX_UNITS, [customer(MAX_UNITS)])).hold
        await budget.settle(hold, MAX_UNITS - 1)
        assert await usage(budget) == (MAX_UNITS - 1, 0)
        assert (await reserve(budget, "r2", 1, [customer(MAX_UNITS)])).allowed  # the sum is exactly the limit
        refused = await reserve(budget, "r3", 1, [customer(MAX_UNITS)])  # one unit over: 2^53 in the sum
        assert (refused.allowed, refused.spent, refused.held) == (False, MAX_UNITS - 1, 1)

    async def test_zero_unit_hold_is_granted_at_a_full_cap_in_hard_mode(self, budget: BudgetStore):
        await budget.add_spent(customer="acme", period=PERIOD, scopes=("customer",), units=100, event_id="e1")
        zero = await reserve(budget, "r1", 0, [customer(100)])
        assert zero.allowed
        assert await budget.settle(zero.hold, 0) is True
        assert await usage(budget) == (100, 0)


class TestMemoryBudget(BudgetContract):
    @pytest.fixture
    def clock(self) -> FakeClock:
        return FakeClock()

    @pytest.fixture
    def budget(self, clock: FakeClock) -> MemoryBudget:
        return MemoryBudget(clock=clock)

    @pytest.fixture
    def advance(self, clock: FakeClock) -> Advance:
        async def advance(seconds: float) -> None:
            clock.now += seconds
        return advance

    @pytest.fixture
    def windowed(self, clock: FakeClock) -> tuple[MemoryBudget, float]:
        return MemoryBudget(clock=clock, applied_for=10.0), 10.0

    @pytest.fixture
    def remembered(self) -> Callable[[MemoryBudget], Awaitable[int]]:
        async def remembered(budget: MemoryBudget) -> int:
            return len(budget._periods[("acme", PERIOD)].applied)
        return remembered

    async def test_capped_calls_keep_only_the_window_s_ids(self, clock: FakeClock):
        """Before the window, every settled call's id stayed for the whole period (~100 bytes a
        call: ~860 MB a day at 100 capped calls a second)."""
        budget = MemoryBudget(clock=clock)  # the default window: 180 s
        await budget.seed(customer="acme", period=PERIOD, events=[], generation="g0")
        for i in range(20_000):  # one call every 1/8 s for 2,500 s
            hold = (await reserve(budget, f"r{i}", 3, [customer(10**12)])).hold
            await budget.settle(hold, 2)
            clock.now += 0.125
        state = budget._periods[("acme", PERIOD)]
        assert 1440 <= len(state.applied) <= 1448  # the last 180 s (by the second: up to 1 s more)
        assert sum(len(ids) for _, ids in state.applied_order) == len(state.applied)
        assert await usage(budget) == (40_000, 0)

    async def test_a_calls_id_is_remembered_as_its_number_and_no_other_id_shares_it(self, budget: MemoryBudget):
        """Proxied calls' ids (`req_` + 32 lowercase hex digits) are kept as ints; ids that int()
        would read as the same number (a sign, `0x`, `_`, upper case) stay strings, so none of
        them passes for another."""
        call = "req_" + "0" * 31 + "a"
        lookalikes = ["req_" + "0" * 31 + "A", "req_+" + "0" * 30 + "a", "req_0x" + "0" * 29 + "a",
                      "req_" + "0" * 30 + "_a", "req_" + "0" * 31 + "a "]
        await budget.seed(customer="acme", period=PERIOD, events=[], generation="g0")
        hold = (await reserve(budget, call, 5, [customer(10**12)])).hold
        assert await budget.settle(hold, 5)
        assert not await budget.add_spent(customer="acme", period=PERIOD, scopes=("customer",), units=5,
                                          event_id=call)  # the same call, seen again: once
        for other in lookalikes:
            assert await budget.add_spent(customer="acme", period=PERIOD, scopes=("customer",), units=1,
                                          event_id=other)
        assert await usage(budget) == (5 + len(lookalikes), 0)
        assert int(call[4:], 16) in budget._periods[("acme", PERIOD)].applied

    async def test_hold_expires_exactly_at_its_ttl(self, budget: MemoryBudget, clock: FakeClock):
        await reserve(budget, "r1", 100, [customer(100)], ttl=10)
        clock.now += 9.999
        assert await usage(budget) == (0, 100)
        clock.now += 0.001
        assert await usage(budget) == (0, 0)

    async def test_holds_of_different_ttls_expire_each_at_its_own_time(self, budget: MemoryBudget,
                                                                       clock: FakeClock):
        # Expired holds are looked for only once the earliest expiry has come: that bound must
        # follow new holds, drops and renewals (a shorter ttl too).
        await reserve(budget, "long", 10, [customer(1000)], ttl=30)
        await reserve(budget, "short", 20, [customer(1000)], ttl=10)
        await reserve(budget, "mid", 40, [customer(1000)], ttl=20)
        clock.now += 10
        assert await usage(budget) == (0, 50)  # "short" went at 10 s
        renewed = Hold("long", "acme", PERIOD, ("customer",), 10)
        await budget.renew(customer="acme", period=PERIOD, holds=[renewed], ttl=5)  # now due at 15 s
        clock.now += 4.999
        assert await usage(budget) == (0, 50)
        clock.now += 0.001
        assert await usage(budget) == (0, 40)  # "long", renewed shorter, went at 15 s
        await reserve(budget, "late", 80, [customer(1000)], ttl=2)  # due at 17 s, before "mid"
        clock.now += 2
        assert await usage(budget) == (0, 40)
        clock.now += 3
        assert await usage(budget) == (0, 0)  # "mid" at 20 s
        assert await budget.settle(Hold("mid", "acme", PERIOD, ("customer",), 40), 7)  # expired, still counted once
        assert await usage(budget) == (7, 0)

    async def test_idle_period_state_is_forgotten_after_the_key_ttl(self, clock: FakeClock):
        budget = MemoryBudget(clock=clock, key_ttl=3600)
        await budget.add_spent(customer="acme", period=PERIOD, scopes=("customer",), units=5, event_id="e1")
        clock.now += 1800
        assert await usage(budget) == (5, 0)
        clock.now += 3600
        assert await usage(budget) == (0, 0)


@pytest.mark.parametrize("amount, units", [
    pytest.param("0", 0, id="zero"),
    pytest.param("1", NANO, id="one dollar"),
    pytest.param("0.000000001", 1, id="one nano"),
    pytest.param("0.0000000011", 2, id="a fraction of a nano rounds up"),
    pytest.param("0.00000000100000000000000000000000001", 2, id="rounds up past 28 digits"),
    pytest.param("4.28", 4_280_000_000, id="cents"),
    pytest.param("9007199.254740991", MAX_UNITS, id="the largest exact amount"),
    pytest.param("1E+2", 100 * NANO, id="exponent form"),
    pytest.param("-0.0000000015", -1, id="negative rounds toward zero (up)"),
])
def test_to_units_rounds_up_to_whole_nano_usd(amount: str, units: int):
    assert to_units(Decimal(amount)) == units


@pytest.mark.parametrize("amount", ["NaN", "Infinity"])
def test_to_units_refuses_non_finite_amounts(amount: str):
    with pytest.raises(ValueError):
        to_units(Decimal(amount))


@pytest.mark.parametrize("kwargs", [
    pytest.param(dict(name="customer", limit=10, mode="strict"), id="unknown mode"),
    pytest.param(dict(name="customer", limit=-1), id="negative limit"),
    pytest.param(dict(name="customer", limit=2**53), id="limit past 2^53"),
    pytest.param(dict(name="customer", limit=1.5), id="float limit"),
    pytest.param(dict(name="", limit=10), id="empty name"),
])
def test_scope_refuses_bad_values(kwargs: dict):
    with pytest.raises(ValueError):
        Scope(**kwargs)


@pytest.mark.parametrize("units, scopes", [
    pytest.param(-1, [customer(10)], id="negative units to hold"),
    pytest.param(True, [customer(10)], id="bool units"),
    pytest.param(1, [customer(10), customer(20)], id="a scope twice"),
])
async def test_reserve_refuses_bad_arguments(units, scopes):
    with pytest.raises(ValueError):
        await reserve(MemoryBudget(), "r1", units, scopes)
