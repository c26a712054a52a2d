"""Webhook dedupe on a real Redis: several proxy instances share it, so each event goes out once."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal

import aiohttp
import pytest
import redis.asyncio as aioredis

from metering.webhooks import Notifier, RedisDedupe
from tests.unit.test_webhooks import Receiver, start_receiver, webhook_config

pytestmark = pytest.mark.redis


def connect(url: str) -> aioredis.Redis:
    """A client as a proxy makes one: a pool that waits for a free connection."""
    return aioredis.Redis.from_pool(aioredis.BlockingConnectionPool.from_url(url, max_connections=32, timeout=10))


@pytest.fixture
async def clients(redis_url: str) -> AsyncIterator[list[aioredis.Redis]]:
    """Two clients, one per simulated proxy process."""
    made = [connect(redis_url), connect(redis_url)]
    yield made
    for client in made:
        await client.aclose()


@pytest.fixture
async def prefix(clients: list[aioredis.Redis]) -> AsyncIterator[str]:
    """A key prefix of this test alone; its keys are deleted afterwards."""
    prefix = f"pwtest-{uuid.uuid4().hex[:12]}"
    yield prefix
    keys = [key async for key in clients[0].scan_iter(match=f"{prefix}:*")]
    if keys:
        await clients[0].delete(*keys)


@pytest.fixture
async def receiver(aiohttp_server) -> Receiver:
    return await start_receiver(aiohttp_server)


async def test_redis_dedupe_answers_true_once_per_key_with_a_ttl_under_the_customer_hash_tag(clients, prefix):
    dedupe = RedisDedupe(clients[0], prefix=prefix)
    assert [await dedupe.first("{acme}:2025-06:cap:50", 60) for _ in range(3)] == [True, False, False]
    assert await dedupe.first("{globex}:2025-06:cap:50", 60)
    key = f"{prefix}:hook:{{acme}}:2025-06:cap:50"
    assert 0 < await clients[0].pttl(key) <= 60_000  # expires: Redis does not keep every period forever


async def test_redis_dedupe_key_can_be_taken_again_once_its_ttl_passed(clients, prefix):
    dedupe = RedisDedupe(clients[0], prefix=prefix)
    assert await dedupe.first("{acme}:k", 0.05)
    await asyncio.sleep(0.1)
    assert await dedupe.first("{acme}:k", 0.05)


def test_redis_dedupe_refuses_a_prefix_with_braces(clients):
    with pytest.raises(ValueError, match="hash tag"):
        RedisDedupe(clients[0], prefix="{pw}")


async def test_concurrent_claims_from_two_instances_let_exactly_one_win(clients, prefix):
    dedupes = [RedisDedupe(c, prefix=prefix) for c in clients]
    wins = await asyncio.gather(*(dedupes[i % 2].first("{acme}:race", 60) for i in range(100)))
    assert wins.count(True) == 1


async def test_two_proxies_racing_over_thresholds_deliver_each_threshold_once(clients, prefix, receiver):
    async with aiohttp.ClientSession() as session_a, aiohttp.ClientSession() as session_b:
        config = webhook_config(receiver.url)
        notifiers = [Notifier(session=session, config=config, dedupe=RedisDedupe(client, prefix=prefix),
                              base_delay=0.01)
                     for session, client in ((session_a, clients[0]), (session_b, clients[1]))]

        async def request(i: int, spent: str) -> list[int]:
            return await notifiers[i % 2].threshold_crossed(customer="acme", period="2025-06", spent=Decimal(spent),
                                                            limit=Decimal("50.00"))

        results = await asyncio.gather(*(request(i, "42.00") for i in range(50)))  # past 50% and 80%
        results += await asyncio.gather(*(request(i, "50.00") for i in range(50)))  # reaches the cap
        for notifier in notifiers:
            await notifier.close(timeout=10)

    assert sorted(t for r in results for t in r) == [50, 80, 100]
    events = receiver.delivered
    assert len(receiver.attempts) == 3
    assert sorted((e["data"]["threshold"], e["type"]) for e in events) == [
        (50, "cap.threshold"), (80, "cap.threshold"), (100, "cap.reached")]
    assert len({e["id"] for e in events}) == 3


async def test_a_retried_delivery_is_not_sent_again_by_the_other_proxy(clients, prefix, receiver):
    receiver.statuses = [503, 200]
    async with aiohttp.ClientSession() as session:
        config = webhook_config(receiver.url, thresholds=(100,))
        first, second = (Notifier(session=session, config=config, dedupe=RedisDedupe(c, prefix=prefix),
                                  base_delay=0.05) for c in clients)
        args = dict(customer="acme", period="2025-06", spent=Decimal("50"), limit=Decimal("50"))
        assert await first.threshold_crossed(**args) == [100]
        await receiver.wait_for(1)  # the first attempt failed; the retry is pending in `first`
        assert await second.threshold_crossed(**args) == []
        await first.close(timeout=10)
        await second.close(timeout=10)
    assert len(receiver.attempts) == 2 and len(receiver.delivered) == 1
