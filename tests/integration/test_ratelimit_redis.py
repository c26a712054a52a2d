"""Rate limits on a real Redis: the shared limiter contract, plus several proxies on one server."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from metering.limits.ratelimit import Limit, RedisRateLimiter
from tests.integration.conftest import connect
from tests.unit.test_ratelimit_memory import RateLimitContract, acquire

pytestmark = pytest.mark.redis


class TestRedisRateLimiter(RateLimitContract):
    @pytest.fixture
    def limiter(self, client: aioredis.Redis, prefix: str) -> RedisRateLimiter:
        return RedisRateLimiter(client, prefix=prefix)

    @pytest.fixture
    def advance(self):
        return asyncio.sleep  # buckets drain on the Redis server's clock

    @pytest.fixture
    def slack(self) -> float:
        return 0.05  # time the test itself takes between calls


async def test_two_proxies_share_one_limit(redis_url: str, prefix: str):
    clients = [connect(redis_url), connect(redis_url)]  # two proxy processes' pools
    try:
        limiters = [RedisRateLimiter(c, prefix=prefix) for c in clients]
        limits = [Limit("customer:acme", rpm=30, tpm=None), Limit("key:k1", rpm=None, tpm=100_000)]
        decisions = await asyncio.gather(*(acquire(limiters[i % 2], limits, 1000) for i in range(100)))
        assert sum(d.allowed for d in decisions) == 30
        assert all(d.retry_after > 0 for d in decisions if not d.allowed)
        # The token bucket took the granted requests' tokens only (less what drained since, < 1 request's).
        check = await acquire(limiters[1], [limits[1]], 0)
        assert 100_000 - 30 * 1000 <= check.remaining_tokens < 100_000 - 29 * 1000
    finally:
        for c in clients:
            await c.aclose()


async def test_bucket_keys_carry_the_customer_hash_tag_and_expire_once_drained(client: aioredis.Redis,
                                                                              prefix: str):
    limiter = RedisRateLimiter(client, prefix=prefix)
    await acquire(limiter, [Limit("key:k1", rpm=1, tpm=None)])
    key = f"{prefix}:{{acme}}:rate:key:k1"
    assert [k.decode() async for k in client.scan_iter(match=f"{prefix}:*")] == [key]
    assert 59_000 < await client.pttl(key) <= 61_000  # a minute to drain one request at 1 rpm, plus 1 s
