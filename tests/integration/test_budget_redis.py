"""Spend caps on a real Redis: the shared budget contract, plus what only Redis has (several
proxy processes on one server, hash-tagged keys with TTLs, the script cache)."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from metering.limits.budget import KEY_TTL, RedisBudget, Scope, Spend
from metering.limits.reservations import Reservations
from tests.integration.conftest import connect
from tests.unit.test_budget_memory import PERIOD, BudgetContract, FakeClock, customer, reserve, usage
from tests.unit.test_reservations import Ledger

pytestmark = pytest.mark.redis


class TestRedisBudget(BudgetContract):
    @pytest.fixture
    def budget(self, client: aioredis.Redis, prefix: str) -> RedisBudget:
        return RedisBudget(client, prefix=prefix)

    @pytest.fixture
    def advance(self):
        return asyncio.sleep  # hold expiry runs on the Redis server's clock

    @pytest.fixture
    def windowed(self, client: aioredis.Redis, prefix: str) -> tuple[RedisBudget, float]:
        return RedisBudget(client, prefix=prefix, applied_for=0.2), 0.2

    @pytest.fixture
    def remembered(self, client: aioredis.Redis, prefix: str):
        async def remembered(budget: RedisBudget) -> int:
            return await client.zcard(f"{prefix}:{{acme}}:budget:{PERIOD}:applied_until")
        return remembered


async def test_two_proxies_racing_at_a_hard_cap_never_exceed_it(redis_url: str, prefix: str):
    clients = [connect(redis_url), connect(redis_url)]  # two proxy processes' pools
    try:
        budgets = [RedisBudget(c, prefix=prefix) for c in clients]
        scopes = [customer(1000), Scope("key:k1", None)]
        decisions = await asyncio.gather(*(reserve(budgets[i % 2], f"r{i}", 7, scopes) for i in range(200)))
        granted = [d for d in decisions if d.allowed]
        assert len(granted) == 1000 // 7  # all the same size: exactly as many as fit, no more
        assert {d.hold.id for d in granted} & {f"r{i}" for i in range(0, 200, 2)}  # both proxies got some
        assert {d.hold.id for d in granted} & {f"r{i}" for i in range(1, 200, 2)}
        # Each proxy settles its own holds, twice (a retried settle); the spend counts once.
        settles = [budgets[int(d.hold.id[1:]) % 2].settle(d.hold, 7) for d in granted for _ in range(2)]
        assert sum(await asyncio.gather(*settles)) == len(granted)
        assert await usage(budgets[0]) == (7 * len(granted), 0)
        assert await usage(budgets[1], "key:k1") == (7 * len(granted), 0)
    finally:
        for c in clients:
            await c.aclose()


async def test_keys_carry_the_customer_hash_tag_and_expire(client: aioredis.Redis, prefix: str):
    budget = RedisBudget(client, prefix=prefix)
    hold = (await reserve(budget, "r1", 10, [customer(100)])).hold
    await budget.settle(hold, 5)
    await reserve(budget, "r2", 10, [customer(100)])
    keys = sorted([key.decode() async for key in client.scan_iter(match=f"{prefix}:*")])
    base = f"{prefix}:{{acme}}:budget:{PERIOD}"
    assert keys == [f"{base}:{part}" for part in ("applied_until", "expiry", "held", "holds", "seeded", "spent")]
    for key in keys:
        assert 0 < await client.ttl(key) <= KEY_TTL


async def test_a_script_renews_the_keys_it_writes_and_the_seed_marker_lives_as_long_as_the_spend(
        client: aioredis.Redis, prefix: str):
    """A reserve renews the holds' keys, a settle the spend's, the applied ids' and the seed
    marker's: 6 EXPIREs a call, not 12. The marker must never expire before the spend it vouches
    for (the next reserve would merge the ledger into that spend again)."""
    budget = RedisBudget(client, prefix=prefix, key_ttl=1000)
    base = f"{prefix}:{{acme}}:budget:{PERIOD}"
    holds = [f"{base}:{part}" for part in ("held", "holds", "expiry")]
    spent = [f"{base}:{part}" for part in ("spent", "applied_until", "seeded")]
    await budget.settle((await reserve(budget, "r1", 10, [customer(100)])).hold, 5)
    await reserve(budget, "r0", 10, [customer(100)])  # a hold that stays: its keys stay too

    async def ttls(keys):
        return [await client.ttl(key) for key in keys]

    for key in holds + spent:
        await client.expire(key, 50)
    await reserve(budget, "r2", 10, [customer(100)])
    assert min(await ttls(holds)) > 900 and max(await ttls(spent)) <= 50
    await budget.settle((await reserve(budget, "r3", 10, [customer(100)])).hold, 5)
    assert min(await ttls(spent)) > 900
    marker, spend, applied = await ttls([spent[2], spent[0], spent[1]])
    assert marker >= spend and marker >= applied


async def test_scripts_still_run_after_the_script_cache_is_flushed(client: aioredis.Redis, prefix: str):
    budget = RedisBudget(client, prefix=prefix)
    hold = (await reserve(budget, "r1", 10, [customer(100)])).hold
    await client.script_flush()  # a Redis restart or failover empties the cache: EVALSHA gets NOSCRIPT
    assert await budget.settle(hold, 10) is True
    assert await usage(budget) == (10, 0)


async def test_customer_names_with_braces_stay_apart(client: aioredis.Redis, prefix: str):
    budget = RedisBudget(client, prefix=prefix)
    await reserve(budget, "r1", 100, [customer(100)], who="a}b")
    assert (await reserve(budget, "r2", 100, [customer(100)], who="a")).allowed
    assert await usage(budget, who="a}b") == (0, 100)


def test_prefix_with_a_brace_is_refused(client: aioredis.Redis):
    with pytest.raises(ValueError):
        RedisBudget(client, prefix="pw{x}")


async def test_a_rebuild_on_one_proxy_gets_every_proxys_part_back(client: aioredis.Redis, prefix: str):
    """Proxy B missed a settle's answer for longer than half the applied window: it rebuilds the
    period (forget, merge the ledger); proxy A notices the new generation and puts back its hold
    in flight and its spend the ledger does not have yet."""

    class ReplyLost(RedisBudget):
        down = False

        async def settle(self, hold, units):
            applied = await super().settle(hold, units)
            if self.down:
                raise ConnectionError("connection lost after the script ran")
            return applied

    ledger = Ledger()
    clock_a, clock_b = FakeClock(), FakeClock()
    a = Reservations(store=RedisBudget(client, prefix=prefix, applied_for=600), source=ledger, shared=True, window=0.2,
                     clock=clock_a)
    store_b = ReplyLost(client, prefix=prefix, applied_for=600)
    b = Reservations(store=store_b, source=ledger, shared=True, window=0.2, clock=clock_b)
    cap = [customer(1000)]
    live = (await a.reserve(customer="acme", period=PERIOD, hold_id="a-live", units=30, scopes=cap)).hold
    await a.settle((await a.reserve(customer="acme", period=PERIOD, hold_id="a-spent", units=10,
                                    scopes=cap)).hold, 10)
    await a.renew_once()  # A knows the generation
    lost = (await b.reserve(customer="acme", period=PERIOD, hold_id="b-lost", units=50, scopes=cap)).hold
    store_b.down = True
    with pytest.raises(ConnectionError):
        await b.settle(lost, 42)
    store_b.down = False
    ledger.spends = [Spend("b-lost", 42, ("customer",))]  # flushed; A's "a-spent" is not yet
    clock_b.now += 301  # half of the store's 600 s window: B rebuilds instead of settling again
    await b.renew_once()
    assert await usage(a.store) == (42, 0)  # the ledger's part only, until A puts back its own
    await a.renew_once()
    assert await usage(a.store) == (52, 30)
    await asyncio.sleep(0.25)  # the recovery window
    assert (await a.reserve(customer="acme", period=PERIOD, hold_id="next", units=1, scopes=cap)).allowed
    await a.settle(live, 30)
    assert await usage(a.store) == (82, 1)
