"""Threshold periods: a period closes as soon as its amount due reaches the threshold."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from decimal import Decimal

import aiohttp

from tests.conftest import KEYS

AUTH = {"Authorization": f"Bearer {KEYS['acme']}"}
PLANS = '  payg: {interval: threshold, threshold: "0.00003", price: {markup: "1.25"}}\n'
AMOUNT = Decimal("0.0000073125")  # each fake-ok call (see tests/e2e/test_openai_sdk.py)


async def burst(proxy, n: int) -> None:
    body = {"model": "fake-ok", "messages": [{"role": "user", "content": "hi"}]}
    # 4 connections: the burst is admitted in waves, so periods close while calls are in flight
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=4)) as session:
        async def one():
            async with session.post(proxy.url + "/v1/chat/completions", json=body, headers=AUTH) as resp:
                assert resp.status == 200
                await resp.read()
        await asyncio.gather(*(one() for _ in range(n)))


async def periods(proxy) -> dict[str, list[dict]]:
    async with aiohttp.ClientSession() as session:
        async with session.get(proxy.url + "/v1/usage/events", headers=AUTH) as resp:
            events = [json.loads(line) for line in (await resp.text()).splitlines()]
    grouped = defaultdict(list)
    for event in events:
        grouped[event["period"]].append(event)
    return dict(sorted(grouped.items()))


async def test_a_threshold_period_closes_mid_burst_and_every_event_is_in_exactly_one_period(proxy_factory):
    proxy = proxy_factory(plans=PLANS)
    await burst(proxy, 60)
    grouped = await periods(proxy)
    ids = [e["id"] for events in grouped.values() for e in events]
    assert len(ids) == len(set(ids)) == 60
    *closed, open_period = grouped.values()
    assert len(closed) >= 2  # 60 x $0.0000073125 = $0.00043875, the threshold is $0.00003
    for events in closed:
        assert sum(Decimal(e["amount"]) for e in events) >= Decimal("0.00003")
    assert sum(Decimal(e["amount"]) for events in grouped.values() for e in events) == 60 * AMOUNT


async def test_the_open_threshold_period_survives_a_restart(proxy_factory):
    proxy = proxy_factory(plans=PLANS)
    await burst(proxy, 5)  # 5 x 0.0000073125 = 0.0000365625: the first period closed at the 5th
    await burst(proxy, 1)  # the next period's first call
    before = list(await periods(proxy))
    assert len(before) == 2
    proxy.stop()
    proxy.start()
    await burst(proxy, 1)
    after = list(await periods(proxy))
    assert after == before  # the 7th call joined the period that was open before the restart


async def test_a_threshold_period_closed_just_before_a_restart_stays_closed(proxy_factory):
    proxy = proxy_factory(plans=PLANS)  # memory counters: the close was known to this process only
    await burst(proxy, 5)  # 5 x 0.0000073125 = 0.0000365625: the 5th call closed the period
    first, = list(await periods(proxy))
    proxy.stop()
    proxy.start()
    await burst(proxy, 1)
    grouped = await periods(proxy)
    assert list(grouped)[0] == first and len(grouped[first]) == 5
    second, = [key for key in grouped if key != first]  # the 6th call opened the next period
    assert second > first and len(grouped[second]) == 1
