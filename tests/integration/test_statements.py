"""Statements of closed periods equal their events; the summary equals the open period's events.

Run on SQLite and on a real PostgreSQL ledger.
"""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal

import aiohttp
import pytest

from tests.conftest import ADMIN_KEY, KEYS

AUTH = {"Authorization": f"Bearer {KEYS['acme']}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
PLANS = ('  payg: {interval: threshold, threshold: "0.00003", base_fee: "0.50", '
         'price: {markup: "1.25", metrics: {agent_actions: "0.002"}}}\n')


@pytest.fixture(params=["sqlite", "postgres"])
def ledger_url(request, tmp_path):
    if request.param == "sqlite":
        return None  # the proxy's own file
    url = request.getfixturevalue("postgres_url")
    from metering.store.ledger import Ledger

    ledger = Ledger(url)
    with ledger.engine.begin() as conn:
        for table in ("usage_events", "statements", "customer_caps"):
            conn.exec_driver_sql(f"DELETE FROM {table}")
    ledger.close()
    return url


async def get(session, proxy, path: str):
    async with session.get(proxy.url + path, headers=AUTH) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.text()


async def test_statements_equal_their_events_and_the_summary_equals_the_open_period(proxy_factory, ledger_url):
    proxy = proxy_factory(plans=PLANS, ledger=ledger_url)
    body = {"model": "fake-ok", "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=4)) as session:
        async def call(i: int):
            if i % 5 == 0:
                record = {"customer": "acme", "metric": "agent_actions", "quantity": 3}  # the merchant reports
                async with session.post(proxy.url + "/v1/usage/records", json=record, headers=ADMIN) as resp:
                    assert resp.status == 200
            else:
                async with session.post(proxy.url + "/v1/chat/completions", json=body, headers=AUTH) as resp:
                    assert resp.status == 200
                    await resp.read()
        await asyncio.gather(*(call(i) for i in range(40)))
        statements = json.loads(await get(session, proxy, "/v1/billing/statements"))["data"]
        events = [json.loads(line) for line in (await get(session, proxy, "/v1/usage/events")).splitlines()]
        summary = json.loads(await get(session, proxy, "/v1/usage/summary"))
    assert len(events) == 40 and len(statements) >= 2
    by_period: dict[str, list[dict]] = {}
    for event in events:
        by_period.setdefault(event["period"], []).append(event)
    # NOTE: the open period is the summary's; the last event may have closed its own period (a
    # threshold crossed), and then the open one has no events yet
    open_key = summary["period"]["start"]
    closed_keys = sorted(key for key in by_period if key != open_key)
    assert len(statements) == len(closed_keys)
    for statement, key in zip(sorted(statements, key=lambda s: s["period"]["start"]), closed_keys):
        period_events = by_period[key]
        exact = sum(Decimal(e["amount"]) for e in period_events) + Decimal("0.50")
        assert Decimal(statement["subtotal"]) == exact  # the export re-summed gives the statement
        assert Decimal(statement["total"]) == exact.quantize(Decimal("0.01"))
        assert statement["event_count"] == len(period_events)
    open_events = by_period.get(open_key, [])
    assert sum(s["event_count"] for s in statements) + len(open_events) == 40
    assert Decimal(summary["amount_due_exact"]) == sum(Decimal(e["amount"]) for e in open_events) + Decimal("0.50")
    assert summary["requests"] == len(open_events)


async def test_a_closed_statement_is_announced_once_by_a_signed_webhook(proxy_factory, aiohttp_server):
    from aiohttp import web

    from metering.webhooks import verify

    received = []

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        received.append((json.loads(body), request.headers["Payware-Signature"], body))
        return web.Response()

    app = web.Application()
    app.router.add_post("/hooks", hook)
    server = await aiohttp_server(app)
    webhooks = f'webhooks: {{url: "http://127.0.0.1:{server.port}/hooks", secret: "whsec-statements-0123"}}'
    proxy = proxy_factory(plans='  payg: {interval: threshold, threshold: "0.00001", price: {markup: "1.25"}}\n',
                          webhooks=webhooks)
    body = {"model": "fake-ok", "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as session:
        for _ in range(2):  # $0.0000146 in all: the first period closes
            async with session.post(proxy.url + "/v1/chat/completions", json=body, headers=AUTH) as resp:
                assert resp.status == 200
        for _ in range(2):  # each listing runs a closing pass: the second finds nothing new
            assert len(json.loads(await get(session, proxy, "/v1/billing/statements"))["data"]) == 1
    for _ in range(50):
        if received:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)
    (event, signature, raw), = received
    assert event["type"] == "statement.closed" and event["data"]["subtotal"] == "0.000014625"
    assert verify("whsec-statements-0123", signature, raw)
