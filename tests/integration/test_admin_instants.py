"""Expiries past the bound through real proxies: refused before anything is kept, and a row kept
out of bounds by an older version (year 10000 in UTC) neither stops the directory's poll nor
`payware serve`, nor takes down its customer's calls and credits."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import datetime, timezone
from decimal import Decimal

import aiohttp
import psycopg
import pytest

from config.schema import key_id
from metering.store.credits import CreditStore
from metering.store.directory import DirectoryStore
from metering.store.events import to_us
from metering.store.ledger import Ledger
from tests.conftest import ADMIN_KEY, KEYS, key_hash, proxy_config
from tests.integration.test_admin_api import call, chat
from tests.integration.test_cli_admin import Cli, run_cli

PAST_THE_BOUND = ["9999-12-31T23:59:59-14:00", "+10000-01-01", "10000-01-01T00:00:00Z", "9999-01-01T00:00:00Z",
                  253402300800]
JUST_INSIDE = ("9998-12-31T23:59:59Z", "9998-12-31T23:59:59+00:00")
YEAR_10000_US = to_us(datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone.utc)) + 14 * 3600 * 1_000_000
PLANS = ('  prepaid: {interval: monthly, price: {markup: "1.25"}, credits: {mode: credit_only}}\n'
         '  payg: {interval: monthly, price: {markup: "1.25"}}\n')
CUSTOMERS = f"""
  acme: {{plan: prepaid, keys: ["{key_hash(KEYS['acme'])}"]}}
  globex: {{plan: payg, keys: ["{key_hash(KEYS['globex'])}"]}}
"""


async def until(check, bound: float = 5.0) -> None:
    started = time.monotonic()
    while not await check():
        assert time.monotonic() - started < bound, "not applied within the bound"
        await asyncio.sleep(0.02)


async def test_a_key_expiry_past_the_bound_is_a_400_and_keeps_nothing(proxy):
    async with aiohttp.ClientSession() as session:
        assert (await call(session, proxy, "POST", "/v1/admin/customers", {"id": "victimco", "plan": "payg"}))[0] == 201
        for value in PAST_THE_BOUND:
            status, body = await call(session, proxy, "POST", "/v1/admin/customers/victimco/keys",
                                      {"expires_at": value})
            assert status == 400, (value, body)
            assert body["error"]["param"] == "expires_at" and "9999-01-01T00:00:00Z" in body["error"]["message"]
            status, keys = await call(session, proxy, "GET", "/v1/admin/customers/victimco/keys")
            assert status == 200 and keys["data"] == [], value
        # the directory still takes changes and serves
        assert (await call(session, proxy, "POST", "/v1/admin/customers", {"id": "newco", "plan": "payg"}))[0] == 201
        assert (await call(session, proxy, "GET", "/v1/admin/customers/newco"))[0] == 200
        assert await chat(session, proxy, KEYS["acme"]) == 200
        status, made = await call(session, proxy, "POST", "/v1/admin/customers/victimco/keys",
                                  {"expires_at": JUST_INSIDE[0]})
        assert status == 201 and made["expires_at"] == JUST_INSIDE[1]
        assert await chat(session, proxy, made["key"]) == 200
        status, keys = await call(session, proxy, "GET", "/v1/admin/customers/victimco/keys")
        assert [k["expires_at"] for k in keys["data"]] == [JUST_INSIDE[1]]


async def test_a_grant_expiry_past_the_bound_is_a_400_and_keeps_nothing(proxy_factory):
    proxy = proxy_factory(plans=PLANS, customers=CUSTOMERS)
    path = "/v1/admin/customers/acme/credits"
    async with aiohttp.ClientSession() as session:
        for value in PAST_THE_BOUND:
            status, body = await call(session, proxy, "POST", path,
                                      {"amount": "1.00", "idempotency_key": "order-1", "expires_at": value})
            assert status == 400 and body["error"]["param"] == "expires_at", (value, body)
            status, listed = await call(session, proxy, "GET", path)
            assert status == 200 and listed["data"] == [] and listed["balance"] == "0.00", value
        # the same idempotency key then makes a grant: nothing was kept under it
        status, made = await call(session, proxy, "POST", path,
                                  {"amount": "1.00", "idempotency_key": "order-1", "expires_at": JUST_INSIDE[0]})
        assert status == 201 and not made["duplicate"] and made["expires_at"] == JUST_INSIDE[1]
        assert await chat(session, proxy, KEYS["acme"]) == 200
        status, listed = await call(session, proxy, "GET", "/v1/billing/credits", key=KEYS["acme"])
        assert status == 200 and [g["expires_at"] for g in listed["data"]] == [JUST_INSIDE[1]]


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/poisoned.db"
        return
    postgres_url = request.getfixturevalue("postgres_url")
    name = "pw_instants_" + uuid.uuid4().hex[:10]
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield postgres_url.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _poison(url: str, customer: str, key: str) -> str:
    """Keep a key and a credit grant expiring in the year 10000, as a version without the bound did."""
    ledger = Ledger(url)
    try:
        digest = key_hash(key).removeprefix("sha256:")
        DirectoryStore(ledger.engine).create_key(id=key_id(digest), customer=customer, digest=digest, name="old",
                                                 prefix=key[:8], settings={}, expires_us=YEAR_10000_US)
        CreditStore(ledger.engine).grant(id="cg_poisoned", customer="acme", amount=Decimal("9"), priority=0,
                                         expires_us=YEAR_10000_US, reason="old", idempotency_key="poisoned")
    finally:
        ledger.close()
    return key_id(digest)


async def _one_bad_row_changes_nothing_else(session, proxy, poisoned_key: str, keys: list[str], revoke: dict,
                                            new_id: str) -> None:
    """The poisoned key refused; every other served; acme's credits read; later changes apply."""
    assert await chat(session, proxy, poisoned_key) == 401  # refused as expired
    for key in keys + [revoke["key"], KEYS["acme"], KEYS["globex"]]:
        assert await chat(session, proxy, key) == 200
    status, listed = await call(session, proxy, "GET", "/v1/billing/credits", key=KEYS["acme"])
    assert status == 200 and Decimal(listed["balance"]) > 0
    view = {g["id"]: g for g in listed["data"]}["cg_poisoned"]
    assert not view["active"] and Decimal(view["remaining"]) == 0 and Decimal(view["expired_unused"]) == 9
    assert (await call(session, proxy, "DELETE", f"/v1/admin/keys/{revoke['id']}"))[0] == 200
    assert await chat(session, proxy, revoke["key"]) == 401  # applied at once
    assert (await call(session, proxy, "POST", "/v1/admin/customers", {"id": new_id, "plan": "payg"}))[0] == 201
    assert (await call(session, proxy, "GET", f"/v1/admin/customers/{new_id}"))[0] == 200


async def test_rows_kept_past_the_bound_stop_neither_the_poll_nor_the_start(proxy_factory, ledger_url):
    proxy = proxy_factory(plans=PLANS, customers=CUSTOMERS, ledger=ledger_url)
    poisoned_key = "pw-poisoned-by-an-older-version"
    async with aiohttp.ClientSession() as session:
        await call(session, proxy, "POST", "/v1/admin/customers", {"id": "victimco", "plan": "payg"})
        await call(session, proxy, "POST", "/v1/admin/customers", {"id": "goodco", "plan": "payg"})
        _, sibling = await call(session, proxy, "POST", "/v1/admin/customers/victimco/keys", {})
        _, good = await call(session, proxy, "POST", "/v1/admin/customers/goodco/keys", {})
        await call(session, proxy, "POST", "/v1/admin/customers/acme/credits",
                   {"amount": "1.00", "idempotency_key": "paid"})
        poisoned = await asyncio.to_thread(_poison, ledger_url, "victimco", poisoned_key)

        async def poisoned_seen() -> bool:  # the poll (or the notification) applied the rows
            status, keys = await call(session, proxy, "GET", "/v1/admin/customers/victimco/keys")
            return status == 200 and poisoned in {k["id"] for k in keys["data"]}
        await until(poisoned_seen)
        await _one_bad_row_changes_nothing_else(session, proxy, poisoned_key, [good["key"]], sibling, "newco")
    proxy.stop()
    proxy.start()  # `payware serve` starts on the same rows (wait_http fails otherwise)
    async with aiohttp.ClientSession() as session:
        _, fresh = await call(session, proxy, "POST", "/v1/admin/customers/victimco/keys", {})
        await _one_bad_row_changes_nothing_else(session, proxy, poisoned_key, [good["key"]], fresh, "newerco")
    assert proxy.log().count(f"key {poisoned} of victimco has an expiry no date can hold") == 2  # once per start


@pytest.mark.parametrize("value", ["9999-12-31T23:59:59-14:00", "253402300800", "+10000-01-01"])
def test_the_cli_refuses_a_key_expiry_past_the_bound_in_both_modes_and_keeps_nothing(proxy, monkeypatch, value):
    monkeypatch.setenv("PAYWARE_ADMIN_KEY", ADMIN_KEY)
    url, direct = Cli(proxy, "url"), Cli(proxy, "direct")
    assert url("customers", "create", "runtime1", "--plan", "payg").code == 0  # applied there at once
    answers = [url("keys", "create", "runtime1", "--expires-at", value),
               direct("keys", "create", "runtime1", "--expires-at", value)]
    for answer in answers:
        assert answer.code == 2 and "(field: expires_at)" in answer.err and answer.out == "", answer
    assert answers[0].err == answers[1].err  # the same words in both modes
    assert direct("keys", "list", "runtime1", "--json").json()["data"] == []
    made = direct("keys", "create", "runtime1", "--expires-at", JUST_INSIDE[0], "--json").json()
    assert made["expires_at"] == JUST_INSIDE[1]


@pytest.mark.parametrize("days", [("0001-01-01", "0001-01-03"), ("9999-12-29", "9999-12-31")])
def test_reconcile_days_without_a_neighbour_are_one_clear_line(tmp_path, monkeypatch, days):
    monkeypatch.delenv("PAYWARE_CONFIG", raising=False)
    path = tmp_path / "payware.yaml"
    path.write_text(proxy_config("http://127.0.0.1:9/v1", tmp_path))
    answer = run_cli("reconcile", "fake", "--from", days[0], "--to", days[1], "--config", str(path))
    assert answer.code == 2 and answer.out == "" and "must be within the years 0002 to 9998" in answer.err
    assert len(answer.err.strip().splitlines()) == 1
