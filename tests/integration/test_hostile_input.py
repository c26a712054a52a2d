"""Hostile or merely unusual input: each finding of the hardening issue as a regression test.

Every test here failed on the code before the fix it names. The broad fuzz is
test_hostile_fuzz.py; these pin one finding each, against a real proxy.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid

import aiohttp
import psycopg
import pytest

from tests.conftest import ADMIN_KEY, KEYS

AUTH = {"Authorization": f"Bearer {KEYS['acme']}"}
CHAT = {"model": "fake-ok", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def pg_ledger(postgres_url):
    """A database of this test alone on the real PostgreSQL server (dropped afterwards)."""
    name = "pw_hostile_" + uuid.uuid4().hex[:10]
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield postgres_url.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def raw_request(proxy, method: str, path: str, headers: list[bytes], body: bytes = b"") -> tuple[int, bytes]:
    """One HTTP/1.1 request written byte for byte (for header bytes no client library sends)."""
    head = [f"{method} {path} HTTP/1.1".encode(), b"Host: 127.0.0.1", b"Connection: close", *headers,
            b"Content-Length: %d" % len(body)]
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(b"\r\n".join(head) + b"\r\n\r\n" + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data.split(b"\r\n\r\n", 1)[1]


async def ledger_events(session, proxy, customer: str = "acme") -> list[dict]:
    async with session.get(proxy.url + f"/v1/usage/events?customer={customer}",
                           headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as resp:
        assert resp.status == 200
        return [json.loads(line) for line in (await resp.text()).splitlines()]


async def chat(session, proxy, body=None, headers=None, raw: bytes | None = None) -> tuple[int, dict]:
    data = raw if raw is not None else json.dumps(body or CHAT).encode()
    async with session.post(proxy.url + "/v1/chat/completions", data=data,
                            headers={**AUTH, "Content-Type": "application/json", **(headers or {})}) as resp:
        return resp.status, await resp.json(content_type=None)


async def test_long_metadata_never_stops_the_ledger_and_the_proxy_restarts(proxy_factory, pg_ledger):
    """Finding 1: a 300-character session header was kept whole; on PostgreSQL its batch failed
    forever (no later event reached the ledger) and after kill -9 the replay made serve exit 1."""
    proxy = proxy_factory(ledger=pg_ledger)
    async with aiohttp.ClientSession() as session:
        status, _ = await chat(session, proxy, headers={"X-Payware-Session": "s" * 300,
                                                        "X-Payware-Feature": "f" * 400})
        assert status == 200
        for _ in range(3):
            assert (await chat(session, proxy))[0] == 200
        events = await ledger_events(session, proxy)
        assert len(events) == 4
        long_one = next(e for e in events if e["session"])
        assert long_one["session"] == "s" * 256 and long_one["feature"] == "f" * 256
    proxy.kill()
    proxy.start()  # the journal's replay must not fail start-up
    async with aiohttp.ClientSession() as session:
        assert (await chat(session, proxy))[0] == 200
        assert len(await ledger_events(session, proxy)) == 5


@pytest.mark.parametrize("header", [b"X-Payware-Session", b"X-Payware-Feature", b"X-Payware-Meta-Run"])
def test_header_bytes_that_are_not_utf8_are_billed(proxy, header):
    """Finding 2: a non-UTF-8 byte in a metadata header failed the journal write after the
    provider had answered: a 500, and the provider's tokens unbilled."""
    body = json.dumps(CHAT).encode()
    status, answer = raw_request(proxy, "POST", "/v1/chat/completions",
                                 [b"Authorization: Bearer " + KEYS["acme"].encode(), header + b": caf\xe9\xff",
                                  b"Content-Type: application/json"], body)
    assert status == 200, answer
    events = asyncio.run(_events(proxy))
    assert len(events) == 1 and events[0]["input_tokens"] == 13
    value = events[0]["session"] or events[0]["feature"] or events[0]["meta"]["run"]
    assert value == "caf\ufffd\ufffd"


async def _events(proxy) -> list[dict]:
    async with aiohttp.ClientSession() as session:
        return await ledger_events(session, proxy)


@pytest.mark.parametrize("stream", [False, True])
async def test_a_lone_surrogate_in_the_body_is_forwarded_and_billed(proxy, fake_upstream, stream):
    """Finding 2: forwarded as the client's own bytes, the body's "\\ud800" reached the journal
    through `user` and failed there; re-serialized (a stream), it failed before the provider."""
    raw = (b'{"model":"fake-ok","user":"u\\ud800","metadata":{"k\\udc00":"v\\ud800"},'
           b'"messages":[{"role":"user","content":"hi \\ud800"}]' + (b',"stream":true}' if stream else b"}"))
    async with aiohttp.ClientSession() as session:
        async with session.post(proxy.url + "/v1/chat/completions", data=raw,
                                headers={**AUTH, "Content-Type": "application/json"}) as resp:
            assert resp.status == 200
            await resp.read()
        event, = await ledger_events(session, proxy)
    assert event["meta"]["user"] == "u\ufffd" and event["meta"]["metadata"] == {"k\ufffd": "v\ufffd"}
    assert event["status"] == "ok" and event["input_tokens"] == 13
    forwarded = fake_upstream.stats()["last"][-1]["body"]
    assert "\\ud800" in forwarded  # the provider got the client's escape, not a mangled string


@pytest.mark.parametrize("what, body", [
    ("deep JSON", '{"model":"fake-ok","messages":' + "[" * 1200 + "]" * 1200 + "}"),
    ("deep JSON inside", '{"model":"fake-ok","messages":[{"role":"user","content":"x"}],"metadata":'
     + '{"a":' * 200 + "1" + "}" * 200 + "}"),
    ("max_tokens past the counters", {**CHAT, "max_tokens": 10**30}),
    ("max_tokens a float", {**CHAT, "max_tokens": 100.5}),
    ("max_tokens negative", {**CHAT, "max_completion_tokens": -1}),
    ("max_tokens a string", {**CHAT, "max_tokens": "100"}),
])
async def test_bad_bodies_are_a_400_that_forwards_nothing(proxy_factory, fake_upstream, what, body):
    """Finding 4: a RecursionError or a worst case past 2**53 nano-USD made these 500s."""
    customers = f"""
  acme: {{plan: payg, keys: ["{_hash(KEYS['acme'])}"], cap: {{amount: "5.00"}}, rate_limit: {{rpm: 1000, tpm: 1000000}}}}
"""
    proxy = proxy_factory(customers=customers)
    fake_upstream.reset()
    raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    async with aiohttp.ClientSession() as session:
        status, answer = await chat(session, proxy, raw=raw)
        assert status == 400, (what, answer)
        assert set(answer["error"]) == {"message", "type", "param", "code"}
        assert await ledger_events(session, proxy) == []
    assert fake_upstream.stats()["requests"] == {}


def _hash(key: str) -> str:
    from tests.conftest import key_hash

    return key_hash(key)


async def test_a_customer_cap_past_the_counters_range_is_refused_and_calls_go_on(proxy):
    """Finding 4: a customer's own cap above $9,007,199 (no admin cap) made every later call a 500."""
    async with aiohttp.ClientSession() as session:
        for amount in ("9007199.254740992", "1e20", "100000000"):
            async with session.put(proxy.url + "/v1/billing/cap", json={"amount": amount}, headers=AUTH) as resp:
                assert resp.status == 400 and (await resp.json())["error"]["param"] == "amount"
        async with session.put(proxy.url + "/v1/billing/cap", json={"amount": "9007199.254740991"},
                               headers=AUTH) as resp:
            assert resp.status == 200
        assert (await chat(session, proxy))[0] == 200


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br"])
async def test_a_content_encoding_the_body_does_not_have_is_a_400(proxy, encoding):
    """Finding 4: `Content-Encoding: gzip` on a plain body was a 500."""
    async with aiohttp.ClientSession() as session:
        status, answer = await chat(session, proxy, headers={"Content-Encoding": encoding})
        assert status == 400 and answer["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("encoding", ["x-snappy", "compress", "gzip, gzip"])
async def test_a_content_encoding_aiohttp_does_not_decode_is_a_415(proxy, encoding):
    """aiohttp passes the bytes of a coding it does not know on as if plain: they were billed as JSON."""
    async with aiohttp.ClientSession() as session:
        status, answer = await chat(session, proxy, headers={"Content-Encoding": encoding})
        assert status == 415 and answer["error"]["code"] == "unsupported_content_encoding"


@pytest.mark.parametrize("codec", ["utf-16", "utf-32"])
async def test_a_body_in_another_encoding_than_utf8_is_a_400(proxy, codec):
    async with aiohttp.ClientSession() as session:
        status, answer = await chat(session, proxy, raw=json.dumps(CHAT).encode(codec))
        assert status == 400 and answer["error"]["type"] == "invalid_request_error"


async def test_a_gzipped_body_is_read(proxy):
    import gzip

    async with aiohttp.ClientSession() as session:
        status, _ = await chat(session, proxy, raw=gzip.compress(json.dumps(CHAT).encode()),
                               headers={"Content-Encoding": "gzip"})
        assert status == 200


def test_authorization_bytes_that_are_not_utf8_are_a_401(proxy):
    """Finding 4: a 500, not a 401."""
    for route in ("/v1/chat/completions", "/v1/usage/summary", "/v1/models"):
        method = "POST" if route.endswith("completions") else "GET"
        status, body = raw_request(proxy, method, route, [b"Authorization: Bearer pw-\xff\xfe"],
                                   json.dumps(CHAT).encode() if method == "POST" else b"")
        assert status == 401, (route, body)
        assert json.loads(body)["error"]["code"] == "invalid_api_key"


def test_a_slow_body_is_cut_after_its_deadline(proxy_factory, fake_upstream):
    """Finding 7: headers and then 16 of 1,000 body bytes held a connection for good."""
    proxy = proxy_factory(server=", body_timeout: 1")
    fake_upstream.reset()
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEYS["acme"].encode()
            + b"\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n")
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(head + b'{"model":"fake-o')
        started = time.monotonic()
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        waited = time.monotonic() - started
    assert data.startswith(b"HTTP/1.1 408"), data[:200]
    assert waited < 8  # generous: the deadline is 1 s
    assert fake_upstream.stats()["requests"] == {}


async def test_a_journal_holding_what_the_ledger_refuses_still_starts_and_keeps_it_aside(proxy_factory, pg_ledger):
    """Finding 1: after a kill -9, the journal replay raised DataError and `payware serve` exited 1."""
    proxy = proxy_factory(ledger=pg_ledger)
    async with aiohttp.ClientSession() as session:
        assert (await chat(session, proxy))[0] == 200
    proxy.kill()
    journal = proxy.config_path.parent / "payware.journal"
    line = json.loads(journal.read_text().splitlines()[0])
    poison = {**line, "id": "req_poison", "cost": "1" + "0" * 25 + ".00", "session": "s" * 300,
              "feature": "bad\u0000feature"}
    with journal.open("a") as fh:
        fh.write(json.dumps(poison) + "\n")
    proxy.start()
    async with aiohttp.ClientSession() as session:
        assert (await chat(session, proxy))[0] == 200
        ids = {e["id"] for e in await ledger_events(session, proxy)}
    assert line["id"] in ids and "req_poison" not in ids and len(ids) == 2
    import psycopg as pg

    with pg.connect(pg_ledger) as conn:
        (reason,) = conn.execute("SELECT reason FROM dead_letters WHERE id = 'req_poison'").fetchone()
    assert "NumericValueOutOfRange" in reason or "numeric" in reason.lower()


@pytest.mark.parametrize("case", ["over-long line", "NUL in a header", "too many headers", "TE and CL"])
def test_malformed_http_is_a_json_400_and_the_key_reaches_no_log_line(proxy, case):
    """Finding 5: aiohttp's parser answered text/plain, echoed an over-long line in the body,
    and its error log quoted the offending header line, an `Authorization: Bearer` one included."""
    key = KEYS["acme"].encode()
    auth = b"Authorization: Bearer " + key
    body = json.dumps(CHAT).encode()
    lines = {"over-long line": [auth + b"x" * 9000],
             "NUL in a header": [b"X-Payware-Session: a\x00b", auth],
             "too many headers": [auth] + [b"X-Junk-%d: v" % i for i in range(200)],
             "TE and CL": [auth, b"Transfer-Encoding: chunked"]}[case]
    status, answer = raw_request(proxy, "POST", "/v1/chat/completions", lines, body)
    assert status == 400
    assert json.loads(answer)["error"]["code"] == "malformed_request"
    assert key not in answer
    time.sleep(0.2)  # the log line is written after the answer
    assert KEYS["acme"] not in proxy.log() and "malformed HTTP" in proxy.log()


async def test_a_call_longer_than_the_hold_ttl_keeps_its_reservation(proxy_factory, fake_upstream):
    """Finding 8: holds expired after 900 s and were never renewed: a hard-capped customer's long
    call freed its hold mid-flight, a second call took the room, and spend passed the cap."""
    customers = f"""
  acme: {{plan: payg, keys: ["{_hash(KEYS['acme'])}"], cap: {{amount: "0.00001", mode: hard}}}}
"""  # one call's worst case ($0.000009 with max_tokens 10) fits, two do not
    proxy = proxy_factory(customers=customers, storage="  hold_ttl: 1")
    slow = {"model": "fake-slow", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10,
            "stream": True}  # ~4 s: 200 words at 20 ms
    fast = {**slow, "model": "fake-ok", "stream": False}

    async def long_call() -> int:
        async with session.post(proxy.url + "/v1/chat/completions", json=slow, headers=AUTH) as resp:
            await resp.read()
            return resp.status

    async with aiohttp.ClientSession() as session:
        running = asyncio.create_task(long_call())
        await asyncio.sleep(2.5)  # past the 1 s ttl: only renewals keep the hold alive
        status, answer = await chat(session, proxy, fast)
        assert status == 429 and answer["error"]["code"] == "spend_cap_reached"
        assert await running == 200


async def test_a_model_priced_from_litellms_floats_is_billed_exactly(proxy_factory):
    """Finding 9: such a call's cost had 21 places at markup 1.25; the client got a 500 for a
    call the provider had served."""
    proxy = proxy_factory(extra_models="  glm: {provider: fake, upstream: bigmodel/glm-5.3}\n")
    async with aiohttp.ClientSession() as session:
        status, _ = await chat(session, proxy, {**CHAT, "model": "glm"})
        assert status == 200
        event, = await ledger_events(session, proxy)
    # 9 uncached input at 1.142857143, 4 cached at 0.285714286, 7 output at 4 (per 1M), x 1.25
    assert event["amount"] == "0.00004928571428875"


async def test_kill_9_under_hostile_load_restarts_and_bills_every_completed_response_once(proxy_factory, pg_ledger):
    """Hostile metadata, lone surrogates and long headers in a concurrent load; kill -9 in the middle."""
    proxy = proxy_factory(ledger=pg_ledger)
    hostile = [
        ({"X-Payware-Session": "s" * 700}, CHAT),
        ({"X-Payware-Feature": "f\u00e9" * 300, "X-Payware-Meta-Note": "n" * 2000}, CHAT),
        ({}, {**CHAT, "user": "u\ud800", "metadata": {"k": "v" * 5000}}),
        ({}, {**CHAT, "stream": True, "user": "\udcff"}),
        ({}, CHAT),
    ]
    completed: list[str] = []

    async def one(session, i: int) -> None:
        headers, body = hostile[i % len(hostile)]
        raw = json.dumps(body).encode()  # json.dumps escapes the surrogates as \\ud800
        try:
            async with session.post(proxy.url + "/v1/chat/completions", data=raw,
                                    headers={**AUTH, "Content-Type": "application/json", **headers}) as resp:
                payload = await resp.read()
                if resp.status == 200 and (not body.get("stream") or payload.rstrip().endswith(b"[DONE]")):
                    completed.append(resp.headers["X-Payware-Request-Id"])
        except aiohttp.ClientError:
            pass  # cut by the kill: not completed, so billed at most partially

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=16)) as session:
        load = asyncio.gather(*(one(session, i) for i in range(400)))
        await asyncio.sleep(1.0)
        proxy.kill()
        await load
    assert len(completed) >= 20
    proxy.start()
    async with aiohttp.ClientSession() as session:
        events = await ledger_events(session, proxy)
    ids = [e["id"] for e in events]
    assert len(ids) == len(set(ids))  # none twice
    assert set(completed) <= set(ids)  # every completed response billed


@pytest.mark.parametrize("path, shape", [
    ("/v1/messages", "anthropic"), ("/v1/messages/count_tokens", "anthropic"),
    ("/v1beta/models/gemini-fake-ok:generateContent", "google"), ("/v1/models/gemini-fake-ok:countTokens", "google"),
    ("/v1/chat/completions", "openai"),
])
async def test_a_wrong_method_is_answered_in_the_apis_own_envelope(proxy, path, shape):
    """aiohttp's router answers a wrong method (405) before any handler has said which API it is."""
    async with aiohttp.ClientSession() as session:
        async with session.put(proxy.url + path, headers=AUTH) as resp:
            assert resp.status == 405
            body = await resp.json()
    if shape == "anthropic":
        assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    elif shape == "google":
        assert body["error"]["code"] == 405 and body["error"]["status"]
    else:
        assert set(body["error"]) == {"message", "type", "param", "code"}


async def test_openais_model_route_keeps_its_envelope_for_an_id_with_a_colon(proxy):
    async with aiohttp.ClientSession() as session:
        async with session.get(proxy.url + "/v1/models/gemini-fake-ok:generateContent", headers=AUTH) as resp:
            body = await resp.json()
    assert resp.status == 404 and set(body["error"]) == {"message", "type", "param", "code"}
