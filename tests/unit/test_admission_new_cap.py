"""A cap a reload gives a customer again: its calls reserve only once its period is merged."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

from config.loader import parse_config
from metering.limits.budget import MemoryBudget, Spend
from metering.limits.ratelimit import MemoryRateLimiter
from metering.store.events import utcnow
from proxy.appkeys import GATE, METER
from proxy.errors import SpendCapReached
from proxy.formats.openai_chat import CHAT
from proxy.limits.admission import Gate
from proxy.limits.stores import rebuild_for_new_cap
from tests.conftest import KEYS, key_hash, proxy_config

PERIOD = "2026-12-01T00:00:00+00:00"
BODY = {"model": "fake-ok", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}


async def test_a_capped_call_during_the_merge_of_a_cap_a_reload_gave_waits_for_it(tmp_path: Path):
    # acme spent $0.000025 while it had no cap; the cap it gets back is $0.00003 and a call's
    # worst case (9 prompt + 10 output tokens) is ~$0.0000092: it must not fit.
    customers = f'  acme: {{plan: payg, keys: ["{key_hash(KEYS["acme"])}"], cap: {{amount: "0.00003"}}}}\n'
    config = parse_config(proxy_config("http://127.0.0.1:9/v1", tmp_path, customers=customers), env={})
    acme, plan, model = config.customers["acme"], config.plans["payg"], config.models["fake-ok"]
    reading, go = asyncio.Event(), asyncio.Event()

    async def ledger(customer, period, since=None):  # the spend made without a cap, read slowly
        reading.set()
        await go.wait()
        return [Spend("uncapped-call", 25_000, ("customer",))]

    gate = Gate(budget=MemoryBudget(), limiter=MemoryRateLimiter(), source=ledger)
    gate.customers = config.customers
    await gate.budget.store.seed(customer="acme", period=PERIOD, events=[], generation="earlier-cap")
    app = {GATE: gate, METER: SimpleNamespace(period=lambda customer, now: SimpleNamespace(key=PERIOD))}
    merging = asyncio.create_task(rebuild_for_new_cap(app, acme))
    await reading.wait()
    admitting = asyncio.create_task(gate.admit(
        request_id="req_1", customer=acme, key_id=None, plan=plan, model=model, fmt=CHAT, body=BODY,
        period=PERIOD, now=utcnow(), size=100))
    await asyncio.sleep(0.1)
    assert not admitting.done()  # before the merge it would have reserved against $0 spent
    go.set()
    await merging
    try:
        await admitting
        raise AssertionError("the call was admitted past the cap")
    except SpendCapReached:
        pass
    assert await gate.budget.store.usage(customer="acme", period=PERIOD, scope="customer") == (25_000, 0)


def test_the_scopes_a_call_counts_against_follow_the_customers_own_cap_and_config(tmp_path: Path):
    """Built once per customer config, key and own cap: a customer lowering its own cap, or an
    edited customer (a new object), is seen by the next call."""
    customers = f'  acme: {{plan: payg, keys: ["{key_hash(KEYS["acme"])}"], cap: {{amount: "10"}}}}\n'
    config = parse_config(proxy_config("http://127.0.0.1:9/v1", tmp_path, customers=customers), env={})
    acme = replace(config.customers["acme"], key_caps={"kid": Decimal("4")})
    gate = Gate(budget=MemoryBudget(), limiter=MemoryRateLimiter(), source=None)
    assert [(s.name, s.limit) for s in gate.scopes(acme, None)] == [("customer", 10 * 10**9)]
    assert [(s.name, s.limit) for s in gate.scopes(acme, "kid")] == [("customer", 10 * 10**9), ("key:kid", 4 * 10**9)]
    gate.customer_caps["acme"] = Decimal("2.5")  # its own, lower cap
    assert [(s.name, s.limit) for s in gate.scopes(acme, "kid")] == [("customer", 2_500_000_000), ("key:kid", 4 * 10**9)]
    del gate.customer_caps["acme"]
    edited = replace(acme, cap=replace(acme.cap, amount=Decimal("7")))
    assert gate.scopes(edited, None)[0].limit == 7 * 10**9 and gate.scopes(acme, None)[0].limit == 10 * 10**9
