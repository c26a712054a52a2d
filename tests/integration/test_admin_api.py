"""The admin API: customers and keys at runtime, across proxies, and config reload."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from decimal import Decimal

import aiohttp
import psycopg
import pytest

from tests.conftest import ADMIN_KEY, KEYS

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
CHAT = {"model": "fake-ok", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}


async def call(session, proxy, method: str, path: str, body=None, key: str = ADMIN_KEY, raw: bytes | None = None):
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    async with session.request(method, proxy.url + path, data=data, headers=headers) as resp:
        text = await resp.text()
        try:
            return resp.status, json.loads(text)
        except ValueError:
            return resp.status, text


async def chat(session, proxy, key: str) -> int:
    return (await call(session, proxy, "POST", "/v1/chat/completions", CHAT, key=key))[0]


async def test_a_customer_made_at_runtime_is_served_at_once(proxy):
    async with aiohttp.ClientSession() as session:
        status, made = await call(session, proxy, "POST", "/v1/admin/customers",
                                  {"id": "initech", "plan": "payg", "cap": {"amount": "5.00"},
                                   "rate_limit": {"rpm": 100}, "metadata": {"crm": "42"}})
        assert status == 201 and made["id"] == "initech" and made["source"] == "api"
        assert made["usage"]["cap"] == "5.00" and made["metadata"] == {"crm": "42"}
        status, key = await call(session, proxy, "POST", "/v1/admin/customers/initech/keys", {"name": "prod"})
        assert status == 201 and key["key"].startswith("pw-") and key["id"].startswith("key_")
        assert await chat(session, proxy, key["key"]) == 200
        status, one = await call(session, proxy, "GET", "/v1/admin/customers/initech")
        assert one["usage"]["requests"] == 1 and Decimal(one["usage"]["remaining"]) < Decimal("5.00")
        status, keys = await call(session, proxy, "GET", "/v1/admin/customers/initech/keys")
        listed, = keys["data"]
        assert listed["id"] == key["id"] and listed["name"] == "prod" and "key" not in listed
        assert key["key"] not in json.dumps(keys) and listed["last_used_at"] is None  # written out each minute


async def test_the_admin_api_refuses_customer_keys_and_unknown_fields(proxy):
    async with aiohttp.ClientSession() as session:
        status, body = await call(session, proxy, "GET", "/v1/admin/customers", key=KEYS["acme"])
        assert status == 403
        status, body = await call(session, proxy, "POST", "/v1/admin/customers", {"id": "x", "plan": "payg",
                                                                                  "colour": "red"})
        assert status == 400 and body["error"]["param"] == "colour"


@pytest.mark.parametrize("body, param", [
    ({"id": "c" * 129, "plan": "payg"}, "id"),
    ({"id": "bad id", "plan": "payg"}, "id"),
    ({"id": "\ud800x", "plan": "payg"}, "id"),
    ({"id": "ok1", "plan": "no-such-plan"}, "plan"),
    ({"id": "ok2", "plan": "payg", "cap": {"amount": "-1"}}, "cap.amount"),
    ({"id": "ok3", "plan": "payg", "cap": {"amount": "1e30"}}, "cap.amount"),
    ({"id": "ok4", "plan": "payg", "rate_limit": {"rpm": 0}}, "rate_limit.rpm"),
    ({"id": "ok5", "plan": "payg", "models": ["nope"]}, "models"),
    ({"id": "ok6", "plan": "payg", "metadata": {"k": "v" * 5000}}, "metadata"),
    ({"id": "ok7", "plan": "payg", "metadata": {"k": "\u0000"}}, "metadata"),
    ({"id": "ok8", "plan": "payg", "metadata": "x"}, "metadata"),
])
async def test_bad_customers_are_a_400_naming_the_field_and_change_nothing(proxy, body, param):
    async with aiohttp.ClientSession() as session:
        raw = json.dumps(body).encode()
        status, answer = await call(session, proxy, "POST", "/v1/admin/customers", raw=raw)
        assert status == 400 and answer["error"]["param"] == param, answer
        status, listed = await call(session, proxy, "GET", "/v1/admin/customers")
        assert {c["id"] for c in listed["data"]} == {"acme", "globex"}


async def test_non_utf8_bytes_in_a_key_name_are_a_400(proxy):
    async with aiohttp.ClientSession() as session:
        raw = b'{"name": "caf\xe9"}'
        status, answer = await call(session, proxy, "POST", "/v1/admin/customers/acme/keys", raw=raw)
        assert status == 400


async def test_an_id_of_the_config_file_cannot_be_created_again(proxy):
    async with aiohttp.ClientSession() as session:
        status, body = await call(session, proxy, "POST", "/v1/admin/customers", {"id": "acme", "plan": "payg"})
        assert status == 409 and body["error"]["code"] == "customer_exists"
        status, body = await call(session, proxy, "PATCH", "/v1/admin/customers/acme", {"plan": "payg"})
        assert status == 409 and body["error"]["code"] == "declared_in_config"


async def test_customers_list_in_pages_and_update_and_deactivate(proxy):
    async with aiohttp.ClientSession() as session:
        for i in range(5):
            assert (await call(session, proxy, "POST", "/v1/admin/customers",
                               {"id": f"c{i}", "plan": "payg"}))[0] == 201
        status, first = await call(session, proxy, "GET", "/v1/admin/customers?limit=3")
        assert [c["id"] for c in first["data"]] == ["acme", "c0", "c1"] and first["has_more"]
        status, rest = await call(session, proxy, "GET", f"/v1/admin/customers?limit=3&after={first['last_id']}")
        assert [c["id"] for c in rest["data"]] == ["c2", "c3", "c4"] and rest["has_more"]
        status, patched = await call(session, proxy, "PATCH", "/v1/admin/customers/c0",
                                     {"cap": {"amount": "1.50", "action": "notify"}})
        assert status == 200 and patched["cap"]["amount"] == "1.50" and patched["cap"]["action"] == "notify"
        status, key = await call(session, proxy, "POST", "/v1/admin/customers/c0/keys", {})
        assert await chat(session, proxy, key["key"]) == 200
        status, gone = await call(session, proxy, "DELETE", "/v1/admin/customers/c0")
        assert status == 200 and gone["active"] is False
        assert await chat(session, proxy, key["key"]) == 401  # its keys stop working
        status, still = await call(session, proxy, "GET", "/v1/admin/customers/c0")
        assert still["active"] is False and still["usage"]["requests"] == 1  # its events stay
        for path in ("/v1/admin/customers/c0/keys", f"/v1/admin/keys/{key['id']}/rotate"):
            status, refused = await call(session, proxy, "POST", path, {} if path.endswith("keys") else
                                         {"grace_seconds": 0})
            assert status == 400 and refused["error"]["code"] == "customer_inactive"  # a key it could not use
        status, keys = await call(session, proxy, "GET", "/v1/admin/customers/c0/keys")
        assert [k["id"] for k in keys["data"]] == [key["id"]]


async def test_a_revoked_key_is_refused_and_a_rotated_one_works_for_its_grace_only(proxy):
    async with aiohttp.ClientSession() as session:
        status, first = await call(session, proxy, "POST", "/v1/admin/customers/acme/keys", {"name": "ci"})
        status, second = await call(session, proxy, "POST", "/v1/admin/customers/acme/keys", {})
        assert await chat(session, proxy, first["key"]) == 200
        assert (await call(session, proxy, "DELETE", f"/v1/admin/keys/{first['id']}"))[0] == 200
        assert await chat(session, proxy, first["key"]) == 401
        status, rotated = await call(session, proxy, "POST", f"/v1/admin/keys/{second['id']}/rotate",
                                     {"grace_seconds": 2})
        assert status == 201 and rotated["replaces"] == second["id"]
        assert await chat(session, proxy, second["key"]) == 200  # within the grace
        assert await chat(session, proxy, rotated["key"]) == 200
        await asyncio.sleep(2.2)
        assert await chat(session, proxy, second["key"]) == 401  # the grace is over
        assert await chat(session, proxy, rotated["key"]) == 200
        status, body = await call(session, proxy, "DELETE", f"/v1/admin/keys/{first['id']}")
        assert status == 409 and body["error"]["code"] == "key_revoked"


async def test_every_customers_usage_in_one_answer_as_json_and_csv(proxy):
    async with aiohttp.ClientSession() as session:
        assert await chat(session, proxy, KEYS["acme"]) == 200
        status, usage = await call(session, proxy, "GET", "/v1/admin/usage")
        rows = {row["customer"]: row for row in usage["data"]}
        assert rows["acme"]["requests"] == 1 and rows["globex"]["requests"] == 0
        assert rows["acme"]["tokens_total"] == 20
        async with session.get(proxy.url + "/v1/admin/usage?format=csv", headers=ADMIN) as resp:
            text = await resp.text()
        assert resp.content_type == "text/csv" and text.splitlines()[0].startswith("customer,plan,")
        assert len(text.splitlines()) == 3


@pytest.fixture
def pg_database(postgres_url):
    name = "pw_admin_" + uuid.uuid4().hex[:10]
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield postgres_url.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _until(check, bound: float = 5.0) -> float:
    """Seconds until `check()` is true (polled every 10 ms); fails past `bound`."""
    started = time.monotonic()
    while not await check():
        assert time.monotonic() - started < bound, "not propagated within the bound"
        await asyncio.sleep(0.01)
    return time.monotonic() - started


async def test_changes_on_one_proxy_apply_on_another_within_a_second(proxy_factory, pg_database, redis_url):
    """Two proxies on one PostgreSQL and one Redis (pub/sub wakes the other at once)."""
    import redis as sync_redis

    db_url = redis_url.rsplit("/", 1)[0] + "/2"
    sync_redis.Redis.from_url(db_url).flushdb()
    storage = f"  counters: {db_url}"
    counters = "redis"
    a = proxy_factory(name="a", ledger=pg_database, storage=storage)
    b = proxy_factory(name="b", ledger=pg_database, storage=storage)
    measured = {}
    async with aiohttp.ClientSession() as session:
        await call(session, a, "POST", "/v1/admin/customers", {"id": "hooli", "plan": "payg"})
        status, key = await call(session, a, "POST", "/v1/admin/customers/hooli/keys", {})

        async def served() -> bool:
            return await chat(session, b, key["key"]) == 200
        measured["created"] = await _until(served)
        await call(session, a, "DELETE", f"/v1/admin/keys/{key['id']}")

        async def refused() -> bool:
            return await chat(session, b, key["key"]) == 401
        measured["revoked"] = await _until(refused)
        status, other = await call(session, a, "POST", "/v1/admin/customers/acme/keys", {})
        await call(session, a, "POST", "/v1/admin/customers", {"id": "capped", "plan": "payg"})
        status, capped_key = await call(session, a, "POST", "/v1/admin/customers/capped/keys", {})
        await _until(lambda: _served(session, b, capped_key["key"]))
        await call(session, a, "PATCH", "/v1/admin/customers/capped", {"cap": {"amount": "0.000001"}})

        async def capped() -> bool:
            status, body = await call(session, b, "POST", "/v1/chat/completions", CHAT, key=capped_key["key"])
            return status == 429 and body["error"]["code"] == "spend_cap_reached"
        measured["capped"] = await _until(capped)
    print(f"propagation ({counters}): " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in measured.items()))
    assert all(v < 1.5 for v in measured.values()), measured  # the README states 1 s; generous here


async def _served(session, proxy, key) -> bool:
    return await chat(session, proxy, key) == 200


async def test_a_change_written_to_the_database_reaches_a_proxy_by_notification(proxy_factory, pg_database):
    """Without Redis (the CLI's direct mode writes the database): PostgreSQL tells the proxy,
    which listens (its poll, with the listener up, is only a 10 s backstop), and listens again
    when its listening connection is lost."""
    import hashlib

    from metering.store.directory import CHANNEL, DirectoryStore
    from metering.store.ledger import Ledger

    proxy = proxy_factory(ledger=pg_database)
    ledger = Ledger(pg_database)
    store = DirectoryStore(ledger.engine)
    async with await psycopg.AsyncConnection.connect(pg_database, autocommit=True) as admin:
        async def listener_pid() -> int | None:
            cursor = await admin.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                                         "AND query = %s", (f"LISTEN {CHANNEL}",))
            rows = await cursor.fetchall()
            return rows[0][0] if len(rows) == 1 else None

        terminated: list[int] = []

        async def listening() -> bool:
            return await listener_pid() not in (None, *terminated)

        async with aiohttp.ClientSession() as session:
            timings = []
            for round in range(2):
                await _until(listening)
                key = f"pw-made-in-the-database-{round}-0123456789"
                digest = hashlib.sha256(key.encode()).hexdigest()
                store.create_customer(id=f"told{round}", plan="payg", settings={}, meta={})
                store.create_key(id="key_" + digest[:12], customer=f"told{round}", digest=digest, name="",
                                 prefix=key[:8], settings={}, expires_us=None)
                created = await _until(lambda: _served(session, proxy, key))
                store.end_key("key_" + digest[:12], revoke=True, at_us=0)

                async def refused() -> bool:
                    return await chat(session, proxy, key) == 401
                timings.append((created, await _until(refused)))
                terminated.append(await listener_pid())
                await admin.execute("SELECT pg_terminate_backend(%s)", (terminated[-1],))  # lost: it listens again
    ledger.close()
    print("propagation (database notification): " + ", ".join(
        f"created {created * 1000:.0f} ms, revoked {revoked * 1000:.0f} ms" for created, revoked in timings))
    assert all(created < 1.5 and revoked < 1.5 for created, revoked in timings)


async def test_the_database_tells_every_committed_change_and_none_rolled_back(pg_database):
    from metering.store.directory import DirectoryStore, _bump
    from metering.store.ledger import Ledger

    ledger = Ledger(pg_database)
    store = DirectoryStore(ledger.engine)
    conn = await store.listener()
    try:
        heard = conn.notifies(timeout=0.5)
        with ledger.engine.connect() as db:  # a change rolled back: nothing told
            _bump(db)
            db.rollback()
        assert [n async for n in heard] == []
        assert store.create_customer(id="told", plan="payg", settings={}, meta={})
        assert [n.channel async for n in conn.notifies(timeout=0.5)] == ["payware_directory"]
    finally:
        await conn.close()
        ledger.close()


async def test_a_second_proxy_on_memory_counters_is_refused_with_a_clear_error(proxy_factory, tmp_path):
    ledger = f"sqlite:///{tmp_path}/shared.db"
    proxy_factory(name="first", ledger=ledger)
    with pytest.raises(RuntimeError, match="exited with 2"):
        proxy_factory(name="second", ledger=ledger)
    log = (tmp_path / "second" / "proxy.log").read_text()
    assert "cannot start" in log and "storage.counters: another proxy" in log and "Traceback" not in log


async def test_sighup_with_a_broken_file_keeps_serving_and_names_every_error(proxy):
    original = proxy.config_path.read_text()
    broken = original.replace('cost: {input: "0.15"', 'cost: {input: "0,15"', 1).replace(
        "plan: payg", "plan: nope", 1)
    proxy.config_path.write_text(broken)
    proxy.proc.send_signal(signal.SIGHUP)
    async with aiohttp.ClientSession() as session:
        for _ in range(100):
            if "reload of" in proxy.log():
                break
            await asyncio.sleep(0.05)
        assert "'0,15' is not a decimal" in proxy.log() and "'nope' is not a configured plan" in proxy.log()
        assert await chat(session, proxy, KEYS["acme"]) == 200  # the running config serves on
        status, body = await call(session, proxy, "POST", "/v1/admin/reload")
        assert status == 400 and body["reloaded"] is False
        assert any("models.fake-ok.cost.input" in e for e in body["errors"])
        assert any("customers.acme.plan" in e for e in body["errors"])
    proxy.config_path.write_text(original)


async def test_a_reloaded_price_applies_to_the_next_event_and_not_to_earlier_ones(proxy):
    async with aiohttp.ClientSession() as session:
        assert await chat(session, proxy, KEYS["acme"]) == 200
        text = proxy.config_path.read_text()
        proxy.config_path.write_text(text.replace('  payg: {interval: monthly, price: {markup: "1.25"}}',
                                                  '  payg: {interval: monthly, price: {markup: "2.5"}}'))
        proxy.proc.send_signal(signal.SIGHUP)
        for _ in range(100):
            if "config reloaded" in proxy.log():
                break
            await asyncio.sleep(0.05)
        assert await chat(session, proxy, KEYS["acme"]) == 200
        async with session.get(proxy.url + "/v1/usage/events?customer=acme", headers=ADMIN) as resp:
            events = [json.loads(line) for line in (await resp.text()).splitlines()]
        status, summary = await call(session, proxy, "GET", "/v1/usage/summary?customer=acme")
    first, second = (Decimal(e["amount"]) for e in events)
    assert first == Decimal("0.0000073125") and second == 2 * first  # markup 1.25, then 2.5
    assert Decimal(summary["amount_due_exact"]) == first + second
