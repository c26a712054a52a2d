"""Spend caps on a real Redis: the shared budget contract, plus what only Redis has (several
proxy processes on one server, hash-tagged keys with TTLs, the script cache)."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from metering.limits.budget import KEY_TTL, RedisBudget, Scope
from tests.integration.conftest import connect
from tests.unit.test_budget_memory import PERIOD, BudgetContract, customer, reserve, usage

pytestmark = pytest.mark.redis


class TestRedisBudget(BudgetContract):
    @pytest.fixture
    def budget(self, client: aioredis.Redis, prefix: str) -> RedisBudget:
        return RedisBudget(client, prefix=prefix)

    @pytest.fixture
    def advance(self):
        return asyncio.sleep  # hold expiry runs on the Redis server's clock


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
    assert keys == [f"{base}:{part}" for part in ("applied", "expiry", "held", "holds", "seeded", "spent")]
    for key in keys:
        assert 0 < await client.ttl(key) <= KEY_TTL


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
