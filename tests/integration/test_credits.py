"""Prepaid credits through real proxies: grants, a credit_only balance as a hard cap, top-ups."""

from __future__ import annotations

import asyncio
import json
import time
from decimal import Decimal

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import ADMIN_KEY, KEYS, key_hash

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
BODY = {"model": "fake-ok", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}
COST = Decimal("0.0000073125")  # what one fake-ok call is billed (13 in, 4 cached, 7 out, markup 1.25)
PLANS = ('  prepaid: {interval: monthly, price: {markup: "1.25"}, '
         'credits: {mode: credit_only, top_up: {below: "0.00005", to: "0.0001"}}}\n'
         '  payg: {interval: monthly, price: {markup: "1.25"}}\n')
CUSTOMERS = f"""
  acme: {{plan: prepaid, keys: ["{key_hash(KEYS['acme'])}"]}}
  globex: {{plan: payg, keys: ["{key_hash(KEYS['globex'])}"]}}
"""


async def grant(session, proxy, amount: str, key: str, **extra) -> tuple[int, dict]:
    body = {"amount": amount, "idempotency_key": key, "reason": "test", **extra}
    async with session.post(proxy.url + "/v1/admin/customers/acme/credits", json=body, headers=ADMIN) as resp:
        return resp.status, await resp.json()


async def chat(session, proxy) -> tuple[int, dict]:
    async with session.post(proxy.url + "/v1/chat/completions", json=BODY,
                            headers={"Authorization": f"Bearer {KEYS['acme']}"}) as resp:
        return resp.status, await resp.json()


async def credits(session, proxy) -> dict:
    async with session.get(proxy.url + "/v1/billing/credits", headers={"Authorization": f"Bearer {KEYS['acme']}"}) as resp:
        return await resp.json()


async def test_a_credit_only_customer_without_credits_reaches_no_provider(proxy_factory, fake_upstream):
    proxy = proxy_factory(plans=PLANS, customers=CUSTOMERS)
    fake_upstream.reset()
    async with aiohttp.ClientSession() as session:
        status, body = await chat(session, proxy)
        assert status == 429 and body["error"]["code"] == "credit_balance_exhausted"
        assert fake_upstream.stats()["requests"] == {}
        status, made = await grant(session, proxy, "0.0001", "order-1")
        assert status == 201 and made["remaining"] == "0.0001" and not made["duplicate"]
        status, again = await grant(session, proxy, "0.0001", "order-1")  # a replayed grant
        assert status == 200 and again["duplicate"] and again["id"] == made["id"]
        assert (await chat(session, proxy))[0] == 200  # let through at once
        view = await credits(session, proxy)
    assert Decimal(view["balance"]) == Decimal("0.0001") - COST
    assert [g["id"] for g in view["data"]] == [made["id"]] and view["mode"] == "credit_only"


async def test_grants_drain_in_order_and_the_balance_never_goes_below_zero_under_300_calls(
        proxy_factory, fake_upstream, redis_url, tmp_path):
    """300 concurrent calls through two proxies on one Redis against two grants."""
    import redis

    counters = redis_url.rsplit("/", 1)[0] + "/5"
    redis.Redis.from_url(counters).flushdb()
    ledger = f"sqlite:///{tmp_path}/shared.db"
    proxies = [proxy_factory(name=f"p{i}", plans=PLANS, customers=CUSTOMERS, ledger=ledger,
                             storage=f"  counters: {counters}") for i in range(2)]
    fake_upstream.reset()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        _, first = await grant(session, proxies[0], "0.0005", "paid", priority=0)
        _, promo = await grant(session, proxies[0], "0.0003", "promo", priority=1)
        await asyncio.sleep(1.2)  # the other proxy reloads the grants (directory version)
        results = await asyncio.gather(*(chat(session, proxies[i % 2]) for i in range(300)))
        served = [b for s, b in results if s == 200]
        refused = [b for s, b in results if s != 200]
        assert refused and all(b["error"]["code"] == "credit_balance_exhausted" for b in refused)
        await asyncio.sleep(0.5)  # the balance is read from the ledger: the other proxy flushes its calls
        view = await credits(session, proxies[1])
    assert fake_upstream.stats()["requests"]["/v1/chat/completions"] == len(served)  # refused: never upstream
    spent = COST * len(served)
    assert spent <= Decimal("0.0008")  # never past the grants
    assert Decimal(view["balance"]) == Decimal("0.0008") - spent >= 0
    by_id = {g["id"]: g for g in view["data"]}
    assert by_id[first["id"]]["remaining"] == "0.00"  # priority 0 drained before priority 1 was touched
    assert Decimal(by_id[promo["id"]]["used"]) == spent - Decimal("0.0005")


async def test_a_top_up_is_asked_once_per_crossing_and_a_grant_lets_calls_through_at_once(
        proxy_factory, fake_upstream, aiohttp_server):
    received: list[dict] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(json.loads(await request.read()))
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/hooks", hook)
    server = await aiohttp_server(app)
    webhooks = f'webhooks: {{url: "http://127.0.0.1:{server.port}/hooks", secret: "whsec-test-0123456789"}}'
    proxy = proxy_factory(plans=PLANS, customers=CUSTOMERS, webhooks=webhooks)
    async with aiohttp.ClientSession() as session:
        await grant(session, proxy, "0.0001", "first")
        statuses = [(await chat(session, proxy))[0] for _ in range(14)]
        assert statuses[:10] == [200] * 10 and 429 in statuses  # 0.0001 covers 13 calls' worst cases at most
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not received:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # a second webhook for the same crossing would arrive now
        top_ups = [e for e in received if e["type"] == "credits.top_up_requested"]
        assert len(top_ups) == 1 and Decimal(top_ups[0]["data"]["balance"]) < Decimal("0.00005")
        assert top_ups[0]["data"]["to"] == "0.0001"
        await grant(session, proxy, top_ups[0]["data"]["amount"], "top-up-1")  # the app's answer
        assert (await chat(session, proxy))[0] == 200  # at once
        for _ in range(12):
            await chat(session, proxy)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and len([e for e in received if e["type"] == "credits.top_up_requested"]) < 2:
            await asyncio.sleep(0.05)
    assert len([e for e in received if e["type"] == "credits.top_up_requested"]) == 2  # a new crossing


@pytest.mark.parametrize("body, param", [
    ({"amount": "0", "idempotency_key": "k"}, "amount"),
    ({"amount": "-5", "idempotency_key": "k"}, "amount"),
    ({"amount": "1e30", "idempotency_key": "k"}, "amount"),
    ({"amount": "5"}, "idempotency_key"),
    ({"amount": "5", "idempotency_key": "k", "priority": -1}, "priority"),
    ({"amount": "5", "idempotency_key": "k", "expires_at": "2000-01-01T00:00:00Z"}, "expires_at"),
    ({"amount": "5", "idempotency_key": "k\u0000"}, "idempotency_key"),
    ({"amount": "5", "idempotency_key": "k", "colour": "red"}, "colour"),
])
async def test_bad_grants_are_a_400_naming_the_field(proxy_factory, body, param):
    proxy = proxy_factory(plans=PLANS, customers=CUSTOMERS)
    async with aiohttp.ClientSession() as session:
        async with session.post(proxy.url + "/v1/admin/customers/acme/credits", json=body, headers=ADMIN) as resp:
            answer = await resp.json()
        assert resp.status == 400 and answer["error"]["param"] == param
        async with session.post(proxy.url + "/v1/admin/customers/acme/credits", json={"amount": "1",
                                "idempotency_key": "k"}, headers={"Authorization": f"Bearer {KEYS['acme']}"}) as resp:
            assert resp.status == 403  # a customer cannot grant itself credits
        assert (await credits(session, proxy))["data"] == []
