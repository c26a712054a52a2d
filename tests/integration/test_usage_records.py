"""Custom usage records: priced, idempotent under concurrent replays, all-or-nothing batches."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal

import aiohttp
import pytest

from tests.conftest import ADMIN_KEY, KEYS

PLANS = '  payg: {interval: monthly, price: {markup: "1.25", metrics: {agent_actions: "0.002"}}}\n'


def auth(key: str = KEYS["acme"]) -> dict:
    return {"Authorization": f"Bearer {key}"}


async def post(session, proxy, body, key=KEYS["acme"]) -> tuple[int, dict]:
    async with session.post(proxy.url + "/v1/usage/records", json=body, headers=auth(key)) as resp:
        return resp.status, await resp.json()


async def summary(session, proxy) -> dict:
    async with session.get(proxy.url + "/v1/usage/summary", headers=auth()) as resp:
        return await resp.json()


async def events(session, proxy) -> list[dict]:
    async with session.get(proxy.url + "/v1/usage/events", headers=auth()) as resp:
        return [json.loads(line) for line in (await resp.text()).splitlines()]


@pytest.fixture
def proxy(proxy_factory):
    return proxy_factory(plans=PLANS)


async def test_a_record_with_its_own_unit_price_is_billed_at_that_price_without_markup(proxy):
    async with aiohttp.ClientSession() as session:
        status, body = await post(session, proxy, {"metric": "compute_minutes", "quantity": "2.5",
                                                   "unit_price": "0.04", "meta": {"job": "j-1"}})
        assert status == 200 and body["amount"] == "0.10"  # 2.5 x 0.04, no markup
        now = await summary(session, proxy)
        assert Decimal(now["amount_due_exact"]) == Decimal("0.1")
        assert [m["model"] for m in now["by_model"]] == ["metric:compute_minutes"]
        event, = await events(session, proxy)
        assert event["metric"] == "compute_minutes" and event["quantity"] == "2.5"
        assert event["meta"] == {"job": "j-1"} and event["pricing"]["unit_price"] == "0.04"


async def test_a_record_without_unit_price_is_priced_by_the_plan(proxy):
    async with aiohttp.ClientSession() as session:
        status, body = await post(session, proxy, {"metric": "agent_actions", "quantity": 7})
        assert status == 200 and Decimal(body["amount"]) == Decimal("0.014")  # 7 x 0.002


async def test_concurrent_replays_of_one_idempotency_key_record_one_event(proxy):
    record = {"metric": "agent_actions", "quantity": 3, "idempotency_key": "run-42/step-7"}
    async with aiohttp.ClientSession() as session:
        results = await asyncio.gather(*(post(session, proxy, record) for _ in range(50)))
        assert all(status == 200 for status, _ in results)
        assert sum(not body["duplicate"] for _, body in results) == 1
        assert len({body["id"] for _, body in results}) == 1
        assert len(await events(session, proxy)) == 1
        assert (await summary(session, proxy))["requests"] == 1


async def test_a_batch_is_recorded_whole(proxy):
    batch = {"records": [{"metric": "agent_actions", "quantity": 1}, {"metric": "api_calls", "quantity": 5,
                                                                      "unit_price": "0.001"}]}
    async with aiohttp.ClientSession() as session:
        status, body = await post(session, proxy, batch)
        assert status == 200 and len(body["data"]) == 2
        assert len(await events(session, proxy)) == 2


@pytest.mark.parametrize("record, param", [
    ({"metric": "agent_actions", "quantity": -1}, "quantity"),
    ({"metric": "agent_actions", "quantity": "many"}, "quantity"),
    ({"metric": "agent_actions", "quantity": True}, "quantity"),
    ({"metric": "agent_actions"}, "quantity"),
    ({"metric": "teleports", "quantity": 1}, "metric"),
    ({"metric": "Agent Actions", "quantity": 1}, "metric"),
    ({"metric": "tokens", "quantity": 1}, "metric"),
    ({"metric": "agent_actions", "quantity": 1, "unit_price": "-0.1"}, "unit_price"),
    ({"metric": "agent_actions", "quantity": 1, "meta": "x"}, "meta"),
    ({"metric": "agent_actions", "quantity": 1, "colour": "red"}, "colour"),
])
async def test_bad_records_get_a_clear_400_and_a_batch_with_one_changes_nothing(proxy, record, param):
    async with aiohttp.ClientSession() as session:
        status, body = await post(session, proxy, record)
        assert status == 400 and body["error"]["param"].endswith(param) and body["error"]["message"]
        status, body = await post(session, proxy, {"records": [{"metric": "agent_actions", "quantity": 1}, record]})
        assert status == 400 and body["error"]["param"].startswith("records[1].")
        assert await events(session, proxy) == []


async def test_the_admin_records_for_a_named_customer_and_a_customer_only_for_itself(proxy):
    async with aiohttp.ClientSession() as session:
        status, _ = await post(session, proxy, {"metric": "agent_actions", "quantity": 1, "customer": "acme"},
                               key=ADMIN_KEY)
        assert status == 200
        status, _ = await post(session, proxy, {"metric": "agent_actions", "quantity": 1, "customer": "globex"})
        assert status == 400
        assert len(await events(session, proxy)) == 1
