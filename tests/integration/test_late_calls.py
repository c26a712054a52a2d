"""A call that outlives its period's statement grace is billed in the period open when it ends."""

from __future__ import annotations

import json
import urllib.request

import aiohttp

from tests.conftest import KEYS, proxy_config

AUTH = {"Authorization": f"Bearer {KEYS['acme']}"}
DAILY = '  payg: {interval: daily, price: {markup: "1.25"}}\n'


def events(proxy) -> list[dict]:
    request = urllib.request.Request(proxy.url + "/v1/usage/events", headers=AUTH)
    with urllib.request.urlopen(request) as resp:
        return [json.loads(line) for line in resp.read().splitlines()]


async def test_a_call_ending_after_its_periods_statement_could_be_frozen_is_billed_in_the_next(
        proxy_factory, fake_upstream, tmp_path):
    # the proxy's clock starts 6 s before midnight; the statement grace is 0 (the tests' config)
    text = proxy_config(fake_upstream.url, tmp_path, plans=DAILY)
    proxy = proxy_factory(text)
    proxy.stop()
    proxy.module, proxy.extra_env = "tests.fakes.clock_serve", {"PAYWARE_TEST_NOW": "2026-03-01T23:59:54+00:00"}
    proxy.start()
    body = {"model": "fake-slow", "stream": True, "x_fake_delay_ms": 60,  # 200 words: 12 s, past midnight
            "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as session:
        async with session.post(proxy.url + "/v1/chat/completions", json=body, headers=AUTH) as resp:
            assert resp.status == 200
            await resp.read()
    event, = events(proxy)
    assert event["meta"]["admitted_in_period"] == "2026-03-01T00:00:00+00:00"
    assert event["period"] == "2026-03-02T00:00:00+00:00" and event["ts"].startswith("2026-03-02T00:00")
