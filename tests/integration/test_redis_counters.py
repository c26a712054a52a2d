"""Real-time counters on a real Redis: the counters contract, plus what only Redis has (several
proxy processes on one server, rebuild that never wipes live counters, replace, exact integer
fields, hash-tagged keys with TTLs)."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest
import redis.asyncio as aioredis

from metering.limits.counters import PeriodTotals
from metering.limits.redis_counters import KEY_TTL, RedisCounters
from tests.integration.conftest import connect
from tests.unit.test_counters_contract import (
    NEXT_PERIOD,
    PERIOD,
    CountersContract,
    event,
    expected,
    random_events,
    record_all,
)

pytestmark = pytest.mark.redis


@pytest.fixture
def counters(client: aioredis.Redis, prefix: str) -> RedisCounters:
    return RedisCounters(client, prefix=prefix)


class TestRedisCounters(CountersContract):
    """The contract of tests/unit/test_counters_contract.py, on Redis (the `counters` fixture above)."""


async def test_two_proxies_recording_concurrently_see_the_same_exact_totals(redis_url: str, prefix: str):
    clients = [connect(redis_url), connect(redis_url)]  # two proxy processes' pools
    try:
        proxies = [RedisCounters(c, prefix=prefix) for c in clients]
        events = [event(i, model=("gpt-4o-mini", "ns:m:v2")[i % 3 == 0], input_tokens=100 + i, cached=i, output=7,
                        reasoning=i % 5, cost="0.0000073125", amount=("1.5E-7", "-0.000000000000000001")[i % 7 == 0])
                  for i in range(200)]
        await asyncio.gather(*(proxies[i % 2].record(e) for i, e in enumerate(events)))
        want = expected(events)
        assert want.all.amount == Decimal("0.000025649999999971")  # 171 x 1.5e-7 - 29 x 1e-18
        assert want.all.cost == Decimal("0.0014625")
        seen = await asyncio.gather(*(p.totals("acme", PERIOD) for p in proxies))
        assert seen[0] == seen[1] == want
    finally:
        for c in clients:
            await c.aclose()


async def test_every_field_is_an_integer_and_remainders_stay_below_a_nano(counters: RedisCounters,
                                                                          client: aioredis.Redis):
    await record_all(counters, [event(i, model="a:b", amount="0.0000000009", cost="-0.0000000015") for i in range(3)])
    raw = {k.decode(): v.decode() for k, v in (await client.hgetall(counters.key("acme", PERIOD))).items()}
    # 3 x 0.9 nano = 2.7 nano: the remainders were carried; -1.5 nano x 3 = floor -5 nano + 0.5 nano
    assert raw["amount_nano:a:b"] == "2" and raw["amount_atto:a:b"] == "700000000"
    assert raw["cost_nano:a:b"] == "-5" and raw["cost_atto:a:b"] == "500000000"
    assert raw["requests:a:b"] == "3"
    assert all(":" in field for field in raw)  # only buckets are stored; `all` is their sum
    assert (await counters.totals("acme", PERIOD)).all.cost == Decimal("-0.0000000045")


async def test_keys_carry_the_customer_hash_tag_and_expire(client: aioredis.Redis, prefix: str):
    counters = RedisCounters(client, prefix=prefix, key_ttl=3600)
    await counters.record(event(1, amount="1"))
    keys = [key.decode() async for key in client.scan_iter(match=f"{prefix}:*")]
    assert keys == [f"{prefix}:{{acme}}:totals:{PERIOD}"]
    assert 3590 <= await client.ttl(keys[0]) <= 3600
    await client.expire(keys[0], 10)
    await counters.record(event(2, amount="1"))  # every write refreshes the TTL
    assert await client.ttl(keys[0]) > 3590
    assert KEY_TTL == 40 * 86400
    with pytest.raises(ValueError, match="braces"):
        RedisCounters(client, prefix="pw{x}")


async def test_more_than_18_decimal_places_raises_and_writes_nothing(counters: RedisCounters, client: aioredis.Redis):
    for bad in (event(1, amount="0.0000000000000000001"), event(2, cost="1.0000000000000000005"),
                event(3, model=None, metric="images", quantity="0.1234567890123456789", amount="1")):
        with pytest.raises(ValueError, match="more than 18 decimal places"):
            await counters.record(bad)
    with pytest.raises(TypeError):
        await counters.record(event(4, input_tokens=1.5))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        await counters.rebuild([event(5, amount="1"), event(6, amount="1E-19")])  # all checked before any write
    assert await client.exists(counters.key("acme", PERIOD)) == 0
    await counters.record(event(7, amount="2.500000000000000000000000"))  # zeros past 18 places are fine
    assert (await counters.totals("acme", PERIOD)).all.amount == Decimal("2.5")


async def test_rebuild_fills_missing_periods_and_never_touches_live_ones(counters: RedisCounters, client: aioredis.Redis,
                                                                        prefix: str):
    live = [event("live1", amount="0.1"), event("live2", amount="0.2")]
    await record_all(counters, live)  # another proxy is already counting acme's period
    ledger = (random_events(50, seed=3) + random_events(20, seed=4, customer="globex")
              + random_events(10, seed=5, period=NEXT_PERIOD))
    restarted = RedisCounters(client, prefix=prefix)  # a proxy starting up, rebuilding from the ledger
    await restarted.rebuild(ledger)
    assert await restarted.totals("acme", PERIOD) == expected(live)  # untouched: not wiped, not double-counted
    assert await restarted.totals("globex", PERIOD) == expected(ledger[50:70])  # filled
    assert await restarted.totals("acme", NEXT_PERIOD) == expected(ledger[70:])
    assert 0 < await client.ttl(restarted.key("globex", PERIOD)) <= KEY_TTL
    await restarted.rebuild(ledger)  # a second proxy starting: everything exists now, nothing changes
    assert await restarted.totals("globex", PERIOD) == expected(ledger[50:70])
    await restarted.rebuild([])
    assert await counters.totals("acme", PERIOD) == expected(live)


async def test_rebuild_of_many_customers_takes_chunked_pipelines(counters: RedisCounters):
    ledger = [event(i, customer=f"c{i % 1200}", amount="0.000000001") for i in range(2400)]
    await counters.rebuild(ledger)
    for name in ("c0", "c599", "c1199"):
        totals = await counters.totals(name, PERIOD)
        assert (totals.all.requests, totals.all.amount) == (2, Decimal("0.000000002"))


async def test_replace_overwrites_one_period_atomically(counters: RedisCounters):
    await record_all(counters, [event(1, model="stale-model", amount="9.99"), event(2, amount="1")])
    await counters.record(event(3, customer="globex", amount="5"))
    ledger = random_events(60, seed=9)
    await counters.replace("acme", PERIOD, ledger)
    totals = await counters.totals("acme", PERIOD)
    assert totals == expected(ledger) and "stale-model" not in totals.by_model
    assert (await counters.totals("globex", PERIOD)).all.amount == 5  # other customers untouched
    await counters.record(event("next", amount="0.000000000000000001"))  # and counting goes on
    assert await counters.totals("acme", PERIOD) == expected([*ledger, event("next", amount="0.000000000000000001")])
    await counters.replace("acme", PERIOD, [])
    assert await counters.totals("acme", PERIOD) == PeriodTotals()
    with pytest.raises(ValueError, match="globex"):
        await counters.replace("acme", PERIOD, [event(4, customer="globex")])


async def test_a_client_that_decodes_responses_reads_the_same_totals(redis_url: str, prefix: str,
                                                                     counters: RedisCounters):
    events = random_events(40, seed=21)
    await record_all(counters, events)
    decoding = connect(redis_url, decode_responses=True)
    try:
        assert await RedisCounters(decoding, prefix=prefix).totals("acme", PERIOD) == expected(events)
    finally:
        await decoding.aclose()


async def test_record_is_one_round_trip(counters: RedisCounters, client: aioredis.Redis, monkeypatch):
    calls = []
    original = client.execute_command

    async def counting(*args, **kwargs):
        calls.append(args[0])
        return await original(*args, **kwargs)

    await counters.record(event(0, amount="1"))  # loads the script once
    monkeypatch.setattr(client, "execute_command", counting)  # what is not a batched script
    batches = client.round_trips
    await counters.record(event(1, model="x:y", input_tokens=5, output=1, cost="0.1", amount="0.125"))
    assert client.round_trips == batches + 1  # one script, one round trip
    await counters.totals("acme", PERIOD)
    assert calls == ["HGETALL"]
