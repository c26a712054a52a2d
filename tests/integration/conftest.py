"""Fixtures for the tests that talk to the real Redis."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from metering.limits.redis_batch import BatchingRedis


def connect(url: str, **kwargs) -> BatchingRedis:
    """A client as a proxy makes one: a pool that waits for a free connection, scripts batched.

    redis-py 8's default pool raises MaxConnectionsError past 100 connections in use.
    """
    pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=32, timeout=10, **kwargs)
    return BatchingRedis.from_pool(pool)


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[BatchingRedis]:
    client = connect(redis_url)
    yield client
    await client.aclose()


async def drop_keys(client: aioredis.Redis, prefix: str) -> None:
    keys = [key async for key in client.scan_iter(match=f"{prefix}:*")]
    if keys:
        await client.delete(*keys)


@pytest.fixture
async def prefix(client: aioredis.Redis) -> AsyncIterator[str]:
    """A key prefix of this test alone; its keys are deleted afterwards."""
    prefix = f"pwtest-{uuid.uuid4().hex[:12]}"
    yield prefix
    await drop_keys(client, prefix)
