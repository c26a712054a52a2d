"""Custom usage records: priced, idempotent under concurrent replays, all-or-nothing batches."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import time
from decimal import Decimal

import aiohttp
import pytest

from metering.limits.budget import to_units
from proxy.routes.usage import EXPORT_PAGE
from tests.conftest import ADMIN_KEY, KEYS, key_hash

PLANS = '  payg: {interval: monthly, price: {markup: "1.25", metrics: {agent_actions: "0.002"}}}\n'


def auth(key: str = KEYS["acme"]) -> dict:
    return {"Authorization": f"Bearer {key}"}


def for_acme(body):
    """The merchant names the customer: on a record, or once on a batch."""
    if isinstance(body, dict) and "records" not in body:
        return {"customer": "acme", **body}
    if isinstance(body, dict):
        return {"customer": "acme", **body}
    return body


async def post(session, proxy, body, key=ADMIN_KEY) -> tuple[int, dict]:
    """Records go in with the merchant's (admin) key, for acme unless the body names a customer."""
    if key == ADMIN_KEY:
        body = for_acme(body)
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


async def test_an_idempotency_key_names_one_record_and_a_replay_answers_with_it_as_billed(proxy):
    async with aiohttp.ClientSession() as session:
        status, first = await post(session, proxy, {"metric": "agent_actions", "quantity": 1,
                                                    "idempotency_key": "order-9"})
        assert status == 200 and first["amount"] == "0.002"
        assert len(await events(session, proxy)) == 1  # in the ledger now
        status, body = await post(session, proxy, {"metric": "agent_actions", "quantity": 500,
                                                   "idempotency_key": "order-9"})
        assert status == 409 and body["error"]["code"] == "idempotency_key_reused"
        assert body["error"]["param"] == "idempotency_key" and "1 agent_actions" in body["error"]["message"]
        status, again = await post(session, proxy, {"metric": "agent_actions", "quantity": 1,
                                                    "idempotency_key": "order-9"})
        assert status == 200 and again == {**first, "duplicate": True}
        twice = {"records": [{"metric": "agent_actions", "quantity": 2, "idempotency_key": "order-10"},
                             {"metric": "agent_actions", "quantity": 3, "idempotency_key": "order-10"}]}
        status, body = await post(session, proxy, twice)
        assert status == 409 and body["error"]["param"] == "records[1].idempotency_key"
        assert len(await events(session, proxy)) == 1  # nothing kept of what was refused


async def test_an_export_longer_than_a_page_comes_whole_in_order(proxy):
    count = EXPORT_PAGE + 500
    async with aiohttp.ClientSession() as session:
        for start in range(0, count, 1000):
            batch = {"records": [{"metric": "agent_actions", "quantity": 1, "meta": {"n": n}}
                                 for n in range(start, min(start + 1000, count))]}
            status, _ = await post(session, proxy, batch)
            assert status == 200
        exported = await events(session, proxy)
        assert len(exported) == count and len({e["id"] for e in exported}) == count
        assert [(e["ts"], e["id"]) for e in exported] == sorted((e["ts"], e["id"]) for e in exported)
        async with session.get(proxy.url + "/v1/usage/events?format=csv", headers=auth()) as resp:
            rows = list(csv.reader(io.StringIO(await resp.text())))
        assert rows[0][0] == "id" and [row[0] for row in rows[1:]] == [e["id"] for e in exported]


async def test_the_csv_export_never_hands_a_spreadsheet_a_formula(proxy):
    async with aiohttp.ClientSession() as session:
        record = {"metric": "agent_actions", "quantity": 1, "session": '=HYPERLINK("http://evil.example","x")',
                  "feature": "@SUM(A1)"}
        assert (await post(session, proxy, record))[0] == 200
        async with session.get(proxy.url + "/v1/usage/events?format=csv", headers=auth()) as resp:
            row = dict(zip(*list(csv.reader(io.StringIO(await resp.text())))))
        assert row["session"] == "'" + record["session"] and row["feature"] == "'@SUM(A1)"
        assert row["amount"] == "0.002"
        event, = await events(session, proxy)
        assert event["session"] == record["session"]  # the evidence itself as it came


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
    ({"metric": "agent_actions\n", "quantity": 1}, "metric"),  # `$` matches before a last newline
    ({"metric": "agent_actions", "quantity": 1, "unit_price": "-0.1"}, "unit_price"),
    ({"metric": "agent_actions", "quantity": 1, "meta": "x"}, "meta"),
    ({"metric": "agent_actions", "quantity": 1, "meta": {"position_unknown": True}}, "meta.position_unknown"),
    ({"metric": "agent_actions", "quantity": 1, "meta": {"idempotency_key": "k"}}, "meta.idempotency_key"),
    ({"metric": "agent_actions", "quantity": 1, "meta": {"provider_id": "resp_1"}}, "meta.provider_id"),
    ({"metric": "agent_actions", "quantity": 1, "colour": "red"}, "colour"),
])
async def test_bad_records_get_a_clear_400_and_a_batch_with_one_changes_nothing(proxy, record, param):
    async with aiohttp.ClientSession() as session:
        status, body = await post(session, proxy, record)
        assert status == 400 and body["error"]["param"].endswith(param) and body["error"]["message"]
        status, body = await post(session, proxy, {"records": [{"metric": "agent_actions", "quantity": 1}, record]})
        assert status == 400 and body["error"]["param"].startswith("records[1].")
        assert await events(session, proxy) == []


async def test_the_admin_records_for_the_customer_it_names(proxy):
    async with aiohttp.ClientSession() as session:
        status, _ = await post(session, proxy, {"metric": "agent_actions", "quantity": 1, "customer": "acme"})
        assert status == 200
        status, body = await post(session, proxy, {"metric": "agent_actions", "quantity": 1, "customer": "nobody"})
        assert status == 400 and body["error"]["code"] == "customer_not_found"
        assert len(await events(session, proxy)) == 1


async def test_a_customer_key_cannot_record_its_own_usage_unless_its_plan_says_so(proxy):
    """Finding 6: a customer recorded the merchant's next idempotency key first, at $0."""
    async with aiohttp.ClientSession() as session:
        for record in ({"metric": "agent_actions", "quantity": 1},
                       {"metric": "agent_actions", "quantity": 1, "unit_price": "0", "idempotency_key": "order-7"}):
            status, body = await post(session, proxy, record, key=KEYS["acme"])
            assert status == 403 and body["error"]["code"] == "forbidden"
        status, body = await post(session, proxy, {"metric": "agent_actions", "quantity": 2,
                                                   "idempotency_key": "order-7"})
        assert status == 200 and not body["duplicate"] and body["amount"] == "0.004"
        assert len(await events(session, proxy)) == 1


async def test_a_self_reporting_customer_is_priced_by_the_plan_and_its_keys_live_apart(proxy_factory):
    plans = ('  payg: {interval: monthly, self_report: true, '
             'price: {markup: "1.25", metrics: {agent_actions: "0.002"}}}\n')
    proxy = proxy_factory(plans=plans)
    async with aiohttp.ClientSession() as session:
        status, body = await post(session, proxy, {"metric": "agent_actions", "quantity": 1, "unit_price": "0"},
                                  key=KEYS["acme"])
        assert status == 403 and body["error"]["param"] == "unit_price"
        status, mine = await post(session, proxy, {"metric": "agent_actions", "quantity": 1,
                                                   "idempotency_key": "order-8"}, key=KEYS["acme"])
        assert status == 200 and mine["amount"] == "0.002"
        status, body = await post(session, proxy, {"metric": "agent_actions", "quantity": 1, "customer": "globex"},
                                  key=KEYS["acme"])
        assert status == 403
        status, merchant = await post(session, proxy, {"metric": "agent_actions", "quantity": 5,
                                                       "idempotency_key": "order-8"})
        assert status == 200 and not merchant["duplicate"] and merchant["id"] != mine["id"]
        assert len(await events(session, proxy)) == 2


@pytest.mark.parametrize("field, value", [
    ("session", "s" * 257), ("feature", "f" * 400), ("feature", "a\x00b"), ("session", "\ud800"),
    ("idempotency_key", "k\x00"), ("meta", {"k": "\x00"}), ("meta", {"\udc80": 1}),
    ("quantity", "1e30"), ("unit_price", "99999999999"),
])
async def test_record_fields_the_ledger_cannot_hold_are_refused_by_name(proxy, field, value):
    """Finding 1: such a record was accepted, and on PostgreSQL its batch failed forever."""
    async with aiohttp.ClientSession() as session:
        raw = json.dumps({"customer": "acme", "metric": "agent_actions", "quantity": 1, field: value})
        async with session.post(proxy.url + "/v1/usage/records", data=raw, headers=auth(ADMIN_KEY)) as resp:
            status, body = resp.status, await resp.json()
        assert status == 400 and body["error"]["param"] == field, body
        assert await events(session, proxy) == []


QUOTA = '  payg: {interval: monthly, included: {acts: 10}, price: {markup: "1.25", metrics: {acts: "0.002"}}}\n'


async def test_a_batch_takes_quota_positions_in_order_and_an_id_twice_is_kept_once(proxy_factory, counters_storage):
    proxy = proxy_factory(plans=QUOTA, storage=counters_storage)
    batch = {"records": [{"metric": "acts", "quantity": 4} for _ in range(4)]
             + [{"metric": "acts", "quantity": 4, "idempotency_key": "k"}] * 2}
    async with aiohttp.ClientSession() as session:
        status, body = await post(session, proxy, batch)
        assert status == 200
        # 10 included: records at 0-4 and 4-8 free, 8-12 pays 2, 12-16 and (the first "k") 16-20 pay 4
        assert [Decimal(view["amount"]) for view in body["data"][:5]] == [0, 0, Decimal("0.004"),
                                                                         Decimal("0.008"), Decimal("0.008")]
        assert [view["duplicate"] for view in body["data"]] == [False] * 5 + [True]
        assert body["data"][4]["id"] == body["data"][5]["id"]
        status, again = await post(session, proxy, {"records": [batch["records"][4]]})  # a replay
        assert status == 200 and again["data"][0]["duplicate"] is True
        assert sorted(Decimal(e["amount"]) for e in await events(session, proxy)) == [
            0, 0, Decimal("0.004"), Decimal("0.008"), Decimal("0.008")]
        now = await summary(session, proxy)
        assert now["requests"] == 5 and Decimal(now["amount_due_exact"]) == Decimal("0.02")


async def test_records_past_the_included_quota_count_against_the_cap_at_their_price(proxy_factory,
                                                                                     counters_storage):
    customers = f"""
  acme: {{plan: payg, keys: ["{key_hash(KEYS['acme'])}"], cap: {{amount: "0.01", action: block}}}}
"""
    proxy = proxy_factory(plans=QUOTA, storage=counters_storage, customers=customers)
    async with aiohttp.ClientSession() as session:
        for _ in range(2):  # 10 included, then 10 at $0.002: $0.02, past the $0.01 cap
            assert (await post(session, proxy, {"metric": "acts", "quantity": 10}))[0] == 200
        async with session.post(proxy.url + "/v1/chat/completions", headers=auth(),
                                json={"model": "fake-ok", "max_tokens": 5,
                                      "messages": [{"role": "user", "content": "hi"}]}) as resp:
            assert resp.status == 429 and (await resp.json())["error"]["code"] == "spend_cap_reached"
        async with session.get(proxy.url + "/v1/billing/cap", headers=auth()) as resp:
            assert Decimal((await resp.json())["spent"]) == Decimal("0.02")


async def test_a_batch_of_1000_records_on_redis_is_a_few_round_trips(proxy_factory, redis_url):
    """Every record's spend, position and counters: a round trip each for the whole batch, not
    per record (1,000 records one by one took 5-10 s on a busy machine). Counted by the Redis
    server itself (the reads it processed)."""
    import redis

    url = redis_url.rsplit("/", 1)[0] + "/2"
    stats = redis.Redis.from_url(url)
    stats.flushdb()
    proxy = proxy_factory(plans=QUOTA, storage=f"  counters: {url}")
    batch = {"records": [{"metric": "acts", "quantity": 1, "idempotency_key": f"r{i}"}
                         for i in range(1000)]}  # NOTE: in the tests' 64 KiB body limit
    async with aiohttp.ClientSession() as session:
        assert (await post(session, proxy, {"metric": "acts", "quantity": 0}))[0] == 200  # warm
        before = stats.info("stats")
        status, body = await post(session, proxy, batch)
        after = stats.info("stats")
        reads = after["total_reads_processed"] - before["total_reads_processed"] - 1  # less the INFO that asks
        received = after["total_net_input_bytes"] - before["total_net_input_bytes"]
        assert status == 200 and not any(view["duplicate"] for view in body["data"])
        # NOTE: Redis reads a pipeline 16 KiB at a time or more (3,000 scripts are ~900 KB): one by
        # one, the records were 2,000 round trips and more
        assert 3 <= reads <= received / 16384 + 6  # + a hold renewal or two in the background
        now = await summary(session, proxy)
        assert now["requests"] == 1001 and Decimal(now["amount_due_exact"]) == Decimal("1.98")  # 990 x 0.002


async def test_a_threshold_plan_batch_moves_to_the_next_period_on_the_record_that_fills_it(proxy_factory):
    plans = ('  payg: {interval: threshold, threshold: "0.01", '
             'price: {markup: "1.25", metrics: {agent_actions: "0.002"}}}\n')
    proxy = proxy_factory(plans=plans)
    batch = {"records": [{"metric": "agent_actions", "quantity": 3} for _ in range(3)]}  # 0.006 each
    async with aiohttp.ClientSession() as session:
        assert (await post(session, proxy, batch))[0] == 200
        periods = [e["period"] for e in sorted(await events(session, proxy), key=lambda e: e["ts"])]
    assert periods[0] == periods[1] != periods[2]  # the second record reached 0.01: the third opens a period


class LossyRelay:
    """A TCP relay in front of Redis that can lose one exchange: the request forwarded and its
    answer dropped (Redis applied it; the proxy never hears), or the request itself dropped.
    Either way the proxy's connection is closed, as a network failure would close it."""

    def __init__(self, host: str, port: int):
        self.target = (host, port)
        self.marker: bytes | None = None
        self.forward = True
        self.lost = 0
        self.connections: set[asyncio.Task] = set()

    async def __aenter__(self) -> LossyRelay:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        for task in self.connections:
            task.cancel()
        await asyncio.gather(*self.connections, return_exceptions=True)

    def lose(self, marker: bytes, *, forward: bool) -> None:
        """Lose the next exchange whose request holds `marker` (`forward`: Redis still gets it)."""
        self.marker, self.forward = marker, forward

    async def _serve(self, client_reader, client_writer) -> None:
        server_reader, server_writer = await asyncio.open_connection(*self.target)
        losing = asyncio.Event()

        async def upstream():
            while data := await client_reader.read(65536):
                if self.marker is not None and self.marker in data:
                    self.marker = None
                    self.lost += 1
                    if not self.forward:
                        client_writer.close()
                        return
                    losing.set()
                server_writer.write(data)
                await server_writer.drain()

        async def downstream():
            while data := await server_reader.read(65536):
                if losing.is_set():
                    client_writer.close()
                    return
                client_writer.write(data)
                await client_writer.drain()

        tasks = [asyncio.ensure_future(upstream()), asyncio.ensure_future(downstream())]
        self.connections.add(asyncio.current_task())
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            pass  # the test is over
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            client_writer.close()
            server_writer.close()


@pytest.mark.parametrize("applied", [True, False], ids=["answer-lost", "request-lost"])
async def test_a_record_whose_spend_went_unanswered_is_billed_once_and_its_replay_is_a_duplicate(
        proxy_factory, redis_url, applied):
    """The spend's answer lost on the way back (or its request on the way there): the budget
    applies it by id once Redis answers, so the record is kept; before, it was refused, and its
    replay then found the spend applied and answered "duplicate" with nothing billed."""
    import hashlib

    from tests.integration.test_caps_redis import spent_in_redis

    import redis

    host, port = redis_url.split("//", 1)[1].split("/", 1)[0].split(":")
    redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/3").flushdb()
    record = {"metric": "acts", "quantity": 12, "idempotency_key": "lost-1"}
    event_id = "rec_" + hashlib.sha256(b"acme\0lost-1").hexdigest()[:32]
    async with LossyRelay(host, int(port)) as relay:
        url = f"redis://127.0.0.1:{relay.port}/3"
        proxy = proxy_factory(plans=QUOTA, storage=f"  counters: {url}")
        async with aiohttp.ClientSession() as session:
            assert (await post(session, proxy, {"metric": "acts", "quantity": 0}))[0] == 200  # period seeded
            relay.lose(event_id.encode(), forward=applied)
            status, body = await post(session, proxy, record)
            assert relay.lost == 1
            assert status == 200 and body["duplicate"] is False and body["amount"] == "0.004"  # 2 past the 10
            status, again = await post(session, proxy, record)
            assert status == 200 and again["duplicate"] is True and again["id"] == event_id
            billed = [e for e in await events(session, proxy) if e["metric"] == "acts" and e["quantity"] != "0"]
            assert [(e["id"], e["amount"]) for e in billed] == [(event_id, "0.004")]
            deadline = time.monotonic() + 10  # the budget applies what it did not hear about within ~1 s
            while await spent_in_redis(url, billed[0]["period"]) != to_units(Decimal("0.004")):
                assert time.monotonic() < deadline, "the spend never reached the budget"
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.5)  # a second renewal must not apply it again
            assert await spent_in_redis(url, billed[0]["period"]) == to_units(Decimal("0.004"))


async def test_a_record_whose_quota_position_is_lost_is_billed_past_the_quota_and_flagged(proxy_factory, redis_url):
    """As a model call whose position cannot be claimed: never lost, billed as if the quota were used."""
    import redis

    host, port = redis_url.split("//", 1)[1].split("/", 1)[0].split(":")
    redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/3").flushdb()
    async with LossyRelay(host, int(port)) as relay:
        proxy = proxy_factory(plans=QUOTA, storage=f"  counters: redis://127.0.0.1:{relay.port}/3")
        async with aiohttp.ClientSession() as session:
            assert (await post(session, proxy, {"metric": "acts", "quantity": 0}))[0] == 200
            relay.lose(b"acts", forward=False)  # the claim is the first script that names the metric
            status, body = await post(session, proxy, {"metric": "acts", "quantity": 3})
            assert relay.lost == 1
            assert status == 200 and body["amount"] == "0.006"  # 3 x 0.002: none of the 10 included
            billed = [e for e in await events(session, proxy) if e["quantity"] == "3"]
            assert [(e["amount"], e["meta"]) for e in billed] == [("0.006", {"position_unknown": True})]
