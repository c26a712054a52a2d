"""Scripts issued together share one round trip (`BatchingRedis`), each with its own answer."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from metering.limits.redis_batch import BatchingRedis
from tests.integration.conftest import connect

pytestmark = pytest.mark.redis

ECHO = "return {KEYS[1], ARGV[1]}"
FAIL = "return redis.error_reply('refused ' .. ARGV[1])"
INCR = "return redis.call('INCRBY', KEYS[1], ARGV[1])"


async def test_scripts_issued_together_go_in_one_round_trip_each_with_its_answer(client: BatchingRedis,
                                                                                 prefix: str):
    echo, incr = client.register_script(ECHO), client.register_script(INCR)
    await echo(keys=[f"{prefix}:warm"], args=["x"])  # loads the script: NOSCRIPT, then one retry
    await incr(keys=[f"{prefix}:n"], args=[0])
    before = client.round_trips
    answers = await asyncio.gather(*(echo(keys=[f"{prefix}:k{i}"], args=[str(i)]) for i in range(50)),
                                   *(incr(keys=[f"{prefix}:n"], args=[i]) for i in range(1, 11)))
    assert client.round_trips == before + 1
    assert answers[:50] == [[f"{prefix}:k{i}".encode(), str(i).encode()] for i in range(50)]
    assert answers[50:] == [sum(range(1, i + 1)) for i in range(1, 11)]  # in the order they were issued
    assert await echo(keys=["a"], args=["b"]) == [b"a", b"b"]  # alone: one round trip of its own
    assert client.round_trips == before + 2


async def test_one_scripts_error_is_its_answer_only(client: BatchingRedis, prefix: str):
    echo, fail = client.register_script(ECHO), client.register_script(FAIL)
    answers = await asyncio.gather(echo(keys=["k"], args=["1"]), fail(args=["2"]), echo(keys=["k"], args=["3"]),
                                   return_exceptions=True)
    assert answers[0] == [b"k", b"1"] and answers[2] == [b"k", b"3"]
    assert isinstance(answers[1], ResponseError) and "refused 2" in str(answers[1])


async def test_a_flushed_script_cache_costs_a_reload_not_an_answer(client: BatchingRedis, prefix: str):
    echo, incr = client.register_script(ECHO), client.register_script(INCR)
    await asyncio.gather(echo(keys=["k"], args=["0"]), incr(keys=[f"{prefix}:n"], args=[1]))
    await client.script_flush()  # a Redis restarted, or failed over to a replica without the scripts
    answers = await asyncio.gather(echo(keys=["k"], args=["1"]), incr(keys=[f"{prefix}:n"], args=[2]))
    assert answers == [[b"k", b"1"], 3]  # each reloaded and ran once: 1 + 2, not counted twice


async def test_scripts_issued_together_keep_their_order_when_redis_lost_them(client: BatchingRedis, prefix: str):
    """A NOSCRIPT is answered by the script itself (EVAL), issued at once: scripts issued
    together run in the order issued even then (a batch's quota positions depend on it), and
    Redis keeps the script for the next EVALSHA."""
    push = client.register_script("return redis.call('RPUSH', KEYS[1], ARGV[1])")
    await push(keys=[f"{prefix}:warm"], args=["x"])
    for attempt in range(5):  # the retries' order once depended on which SCRIPT LOAD came back first
        await client.script_flush()
        key = f"{prefix}:order{attempt}"
        answers = await asyncio.gather(*(push(keys=[key], args=[str(i)]) for i in range(20)))
        assert answers == list(range(1, 21))
        assert await client.lrange(key, 0, -1) == [str(i).encode() for i in range(20)]
    before = client.round_trips
    assert await push(keys=[f"{prefix}:after"], args=["y"]) == 1
    assert client.round_trips == before + 1  # kept by Redis: no NOSCRIPT this time


async def test_a_connection_error_is_every_scripts_answer(redis_url: str):
    pool = aioredis.BlockingConnectionPool.from_url("redis://127.0.0.1:1/0", max_connections=4, timeout=1,
                                                    socket_connect_timeout=1)
    dead = BatchingRedis.from_pool(pool)
    try:
        echo = dead.register_script(ECHO)
        answers = await asyncio.gather(echo(keys=["k"], args=["1"]), echo(keys=["k"], args=["2"]),
                                       return_exceptions=True)
        assert all(isinstance(answer, RedisConnectionError) for answer in answers)
    finally:
        await dead.aclose()


async def test_a_caller_cancelled_while_waiting_leaves_the_others_answered(client: BatchingRedis, prefix: str):
    incr = client.register_script(INCR)
    await incr(keys=[f"{prefix}:n"], args=[0])
    first = asyncio.ensure_future(incr(keys=[f"{prefix}:n"], args=[1]))
    second = asyncio.ensure_future(incr(keys=[f"{prefix}:n"], args=[10]))
    await asyncio.sleep(0)  # both have issued their script
    first.cancel()
    assert await second in (10, 11)  # the cancelled one may or may not have reached Redis first
    with pytest.raises(asyncio.CancelledError):
        await first


def test_the_proxys_clients_batch():
    assert isinstance(connect("redis://127.0.0.1:1/0"), BatchingRedis)


# ---- the lean connection batches go over on a plain TCP Redis (`_Pipe`)

async def test_batches_use_the_urls_database_and_the_clients_decoding(redis_url: str, prefix: str):
    other_db = redis_url.rsplit("/", 1)[0] + "/5"
    decoding = connect(other_db, decode_responses=True)
    plain = connect(redis_url)
    try:
        incr = decoding.register_script(INCR)
        assert await incr(keys=[f"{prefix}:db"], args=[7]) == 7
        assert decoding._pipe is not None  # the batch went over the lean connection
        assert await decoding.get(f"{prefix}:db") == "7"  # str: this client decodes
        assert await plain.get(f"{prefix}:db") is None  # and it was database 5's key, not 0's
        echo = decoding.register_script(ECHO)
        assert await echo(keys=["k"], args=["v"]) == ["k", "v"]
        await decoding.delete(f"{prefix}:db")
    finally:
        await decoding.aclose()
        await plain.aclose()


async def test_a_connection_the_server_drops_fails_its_scripts_and_the_next_call_reconnects(client: BatchingRedis,
                                                                                         prefix: str):
    incr = client.register_script(INCR)
    await incr(keys=[f"{prefix}:n"], args=[1])
    pipe = client._pipe
    pipe.transport.abort()  # as a Redis restart or a proxy between us would
    await asyncio.sleep(0.05)
    assert pipe.lost
    assert await incr(keys=[f"{prefix}:n"], args=[2]) == 3  # a new connection, nothing counted twice
    assert client._pipe is not pipe


@contextlib.asynccontextmanager
async def silent_redis(socket_timeout: float) -> AsyncIterator[BatchingRedis]:
    """A client of a server that accepts connections and never answers."""
    silent = await asyncio.start_server(lambda reader, writer: None, "127.0.0.1", 0)
    stuck = connect(f"redis://127.0.0.1:{silent.sockets[0].getsockname()[1]}/0", socket_timeout=socket_timeout)
    try:
        yield stuck
    finally:
        await stuck.aclose()
        silent.close()


async def test_a_server_that_never_answers_is_a_timeout_for_every_waiting_script():
    async with silent_redis(0.3) as stuck:
        echo = stuck.register_script(ECHO)
        answers = await asyncio.wait_for(asyncio.gather(echo(keys=["k"], args=["1"]), echo(keys=["k"], args=["2"]),
                                                        return_exceptions=True), 5)
        assert all(isinstance(answer, RedisTimeoutError) for answer in answers), answers


async def test_a_stuck_connection_times_out_even_when_the_batchs_last_caller_gave_up():
    async with silent_redis(0.3) as stuck:
        echo = stuck.register_script(ECHO)
        waiting = asyncio.ensure_future(echo(keys=["k"], args=["1"]))
        leaving = asyncio.ensure_future(echo(keys=["k"], args=["2"]))
        await asyncio.sleep(0.05)  # both went out in one batch
        leaving.cancel()
        with pytest.raises(RedisTimeoutError):
            await asyncio.wait_for(waiting, 5)
