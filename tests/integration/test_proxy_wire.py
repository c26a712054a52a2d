"""The proxy on the wire: bytes relayed exactly, bodies forwarded unchanged, usage per provider quirk."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import urllib.request

import aiohttp
import pytest

from tests.conftest import KEYS, proxy_config
from tests.fakes import upstream as fake
from tests.fakes.scripted import Scripted

AUTH = {"Authorization": f"Bearer {KEYS['acme']}"}


async def post(proxy, body: dict, headers: dict | None = None) -> tuple[int, bytes, dict]:
    async with aiohttp.ClientSession() as session:
        async with session.post(proxy.url + "/v1/chat/completions", json=body,
                                headers={**AUTH, **(headers or {})}) as resp:
            return resp.status, await resp.read(), dict(resp.headers)


def events(proxy) -> list[dict]:
    request = urllib.request.Request(proxy.url + "/v1/usage/events", headers=AUTH)
    with urllib.request.urlopen(request) as resp:
        return [json.loads(line) for line in resp.read().splitlines()]


def without_usage_chunk(chunks: list[bytes]) -> bytes:
    return b"".join(c for c in chunks if b'"choices":[]' not in c)


@pytest.mark.parametrize("scenario", ["fake-ok", "fake-crlf", "fake-split"])
async def test_stream_reaches_the_client_byte_for_byte_minus_the_usage_chunk_it_did_not_ask_for(proxy, scenario):
    status, body, headers = await post(proxy, {"model": scenario, "stream": True,
                                               "messages": [{"role": "user", "content": "hi"}]})
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    assert body == without_usage_chunk(fake.stream_events(scenario, True, scenario))
    event, = events(proxy)
    assert (event["input_tokens"], event["output_tokens"], event["estimated"]) == (13, 7, False)


@pytest.mark.parametrize("scenario", ["fake-ok", "fake-crlf", "fake-split"])
async def test_stream_with_include_usage_is_relayed_unchanged(proxy, scenario):
    status, body, _ = await post(proxy, {"model": scenario, "stream": True, "stream_options": {"include_usage": True},
                                         "messages": [{"role": "user", "content": "hi"}]})
    assert status == 200
    assert body == b"".join(fake.stream_events(scenario, True, scenario))


async def test_usage_in_the_finish_chunk_is_billed_and_removed_from_that_chunk_only(proxy):
    status, body, _ = await post(proxy, {"model": "fake-finish-usage", "stream": True,
                                         "messages": [{"role": "user", "content": "hi"}]})
    sent = fake.stream_events("fake-finish-usage", True, "fake-finish-usage")
    finish = json.loads(sent[-2][6:])
    del finish["usage"]
    expected = b"".join(sent[:-2]) + b"data: " + json.dumps(finish, separators=(",", ":")).encode() + b"\n\n" + sent[-1]
    assert body == expected
    event, = events(proxy)
    assert (event["input_tokens"], event["output_tokens"], event["estimated"]) == (13, 7, False)


async def test_a_provider_that_ignores_include_usage_is_billed_by_tiktoken_and_flagged_estimated(proxy):
    status, body, _ = await post(proxy, {"model": "fake-no-usage", "stream": True,
                                         "messages": [{"role": "user", "content": "hi"}]})
    assert body == b"".join(fake.stream_events("fake-no-usage", True, "fake-no-usage"))
    event, = events(proxy)
    assert event["estimated"] is True and event["status"] == "ok"
    assert event["usage_source"] == {"input": "tiktoken", "output": "tiktoken"}
    assert event["output_tokens"] == 4  # "Hello", " from", " fake", "." are one o200k token each
    # OpenAI cookbook formula: 3 reply priming + 3 per message + "user" (1) + "hi" (1)
    assert event["input_tokens"] == 3 + 3 + 1 + 1
    assert event["raw_usage"] is None


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
async def test_an_output_count_no_call_can_hold_is_estimated_not_billed_as_sent(proxy, stream):
    # 2**62 output tokens priced as sent: ~$2.8 trillion for one call, and every cap blown
    status, _, _ = await post(proxy, {"model": "fake-bad-usage", "stream": stream,
                                      "stream_options": {"include_usage": True} if stream else None,
                                      "messages": [{"role": "user", "content": "hi"}]})
    assert status == 200
    event, = events(proxy)
    assert (event["input_tokens"], event["output_tokens"]) == (13, 4)  # the reply's four o200k tokens
    assert event["usage_source"] == {"input": "provider", "output": "tiktoken"} and event["estimated"] is True
    assert event["raw_usage"]["completion_tokens"] == fake.BAD_COMPLETION_TOKENS  # the evidence, as sent
    assert float(event["amount"]) < 0.01


async def test_a_stream_request_answered_whole_is_relayed_as_it_came_and_billed_from_its_usage(proxy):
    status, body, headers = await post(proxy, {"model": "fake-ignores-stream", "stream": True,
                                               "messages": [{"role": "user", "content": "hi"}]})
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert body == json.dumps(fake.completion_body("fake-ignores-stream"), separators=(",", ":")).encode()
    event, = events(proxy)
    assert (event["input_tokens"], event["output_tokens"], event["estimated"]) == (13, 7, False)
    assert event["stream"] is True and event["status"] == "ok"


@pytest.mark.parametrize("scenario", ["fake-stream-error", "fake-cut"])
async def test_a_stream_the_provider_breaks_off_is_billed_as_partial_for_what_was_generated(proxy, scenario):
    status, body, _ = await post(proxy, {"model": scenario, "stream": True,
                                         "messages": [{"role": "user", "content": "hi"}]})
    assert status == 200
    event, = events(proxy)
    assert event["status"] == "partial" and event["estimated"] is True
    assert event["output_tokens"] == 2  # the words delivered before the break: "Hello", " from"


async def test_the_body_goes_upstream_unchanged_but_for_model_and_stream_options(proxy, fake_upstream):
    fake_upstream.reset()
    body = {"model": "renamed", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.3,
            "stream": True, "stream_options": {"include_obfuscation": False}, "x_vendor": {"a": [1, 2]}}
    await post(proxy, body)
    received = fake_upstream.stats()["last"][-1]
    forwarded = json.loads(received["body"])
    assert forwarded == {**body, "model": "fake-ok",
                         "stream_options": {"include_obfuscation": False, "include_usage": True}}
    assert received["headers"]["Authorization"] == "Bearer sk-real-provider-secret"


async def test_a_non_streamed_body_with_the_same_model_name_is_forwarded_byte_for_byte(proxy, fake_upstream):
    fake_upstream.reset()
    raw = b'{"model":  "fake-ok", "messages": [{"role":"user","content":"hi"}],  "seed": 7}'
    async with aiohttp.ClientSession() as session:
        async with session.post(proxy.url + "/v1/chat/completions", data=raw,
                                headers={**AUTH, "Content-Type": "application/json"}) as resp:
            assert resp.status == 200
            assert await resp.read() == json.dumps(fake.completion_body("fake-ok"), separators=(",", ":")).encode()
    assert fake_upstream.stats()["last"][-1]["body"].encode() == raw


async def test_the_provider_key_never_reaches_the_client_or_the_ledger(proxy):
    for model in ("fake-ok", "fake-error-500-text", "fake-error-429"):
        _, body, headers = await post(proxy, {"model": model, "messages": [{"role": "user", "content": "x"}]})
        assert b"sk-real-provider-secret" not in body
        assert "sk-real-provider-secret" not in json.dumps(headers)
    assert len(events(proxy)) == 1  # also waits for the batched ledger write
    database = proxy.config_path.parent / "ledger.db"
    rows = sqlite3.connect(database).execute("SELECT * FROM usage_events").fetchall()
    assert rows and "sk-real-provider-secret" not in repr(rows)
    assert "sk-real-provider-secret" not in proxy.log()


async def test_each_response_names_its_request_id_which_is_the_event_id(proxy):
    _, _, headers = await post(proxy, {"model": "fake-ok", "messages": [{"role": "user", "content": "x"}]})
    event, = events(proxy)
    assert headers["X-Payware-Request-Id"] == event["id"]


class _HeldStream(asyncio.Protocol):
    """A provider that answers a stream's headers at once and its whole body (events and the
    chunked terminator) in one write once `release` is set, as a slow first token then a burst."""

    def __init__(self, release: asyncio.Event, body: bytes):
        self.release, self.body, self.seen = release, body, bytearray()

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.seen += data
        head, _, rest = bytes(self.seen).partition(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
        if len(rest) >= length:
            self.seen.clear()
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
            asyncio.ensure_future(self._body())

    async def _body(self):
        await self.release.wait()
        self.transport.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(self.body), self.body))


async def test_stream_headers_reach_the_client_before_the_first_event_and_a_burst_arrives_whole(proxy_factory):
    # Payware's stream headers wait for the first bytes of the body only when those are at hand:
    # a provider slow to its first event must not hold the client's headers back.
    release = asyncio.Event()
    sent = fake.stream_events("fake-ok", True, "held")
    server = await asyncio.get_running_loop().create_server(lambda: _HeldStream(release, b"".join(sent)), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    proxy = proxy_factory(extra_providers=f'  held: {{kind: openai, base_url: "http://127.0.0.1:{port}/v1", api_key: "sk-x"}}\n',
                          extra_models='  held: {provider: held, cost: {input: "0.15", output: "0.60"}}\n')
    try:
        async with aiohttp.ClientSession() as session:
            async with session.post(proxy.url + "/v1/chat/completions", headers=AUTH,
                                    json={"model": "held", "stream": True, "messages": [{"role": "user", "content": "hi"}]},
                                    timeout=aiohttp.ClientTimeout(total=10)) as resp:
                assert resp.status == 200 and not release.is_set()  # the headers came; no event has been sent
                assert resp.headers["Content-Type"] == "text/event-stream"
                release.set()
                body = await resp.read()
    finally:
        server.close()
    assert body == without_usage_chunk(sent)  # every event, the usage chunk hidden, in one burst
    event, = events(proxy)
    assert (event["model"], event["status"], event["input_tokens"], event["output_tokens"]) == ("held", "ok", 13, 7)


def raw_config(folder, upstream_url: str, raw_url: str, *, read_timeout: str = "5") -> str:
    """The tests' config with a provider `raw` at `raw_url` (a `Scripted` one; its model `raw-model`)."""
    text = proxy_config(upstream_url, folder,
                        extra_providers=f'  raw: {{kind: openai, base_url: "{raw_url}/v1", '
                                        'api_key: "sk-raw"}\n',
                        extra_models='  raw-model: {provider: raw, cost: {input: "0.15", output: "0.60"}}\n')
    return text.replace("read_timeout: 5,", f"read_timeout: {read_timeout},")


def http_answer(status: str, body: bytes, length: int | None = None) -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body) if length is None else length}\r\n\r\n").encode() + body


async def test_a_200_whose_body_is_an_error_is_relayed_and_not_billed(proxy_factory, fake_upstream, tmp_path):
    body = b'{"error":{"message":"The engine is currently overloaded","type":"server_error"}}'
    async with Scripted([[http_answer("200 OK", body), None]]) as raw_url:
        proxy = proxy_factory(raw_config(tmp_path, fake_upstream.url, raw_url))
        status, relayed, _ = await post(proxy, {"model": "raw-model", "messages": [{"role": "user", "content": "hi"}]})
        assert (status, relayed) == (200, body)
        ok, _, _ = await post(proxy, {"model": "fake-ok", "messages": [{"role": "user", "content": "hi"}]})
    assert ok == 200
    assert [event["model"] for event in events(proxy)] == ["fake-ok"]  # the error answer billed nothing


async def test_a_body_that_stops_arriving_is_a_504_and_bills_nothing(proxy_factory, fake_upstream, tmp_path):
    # a body that stops arriving: the provider writes part of it and waits
    async with Scripted([[http_answer("200 OK", b'{"id":"chatcmpl-1","choi', length=400)]]) as raw_url:
        proxy = proxy_factory(raw_config(tmp_path, fake_upstream.url, raw_url, read_timeout="0.5"))
        status, relayed, _ = await post(proxy, {"model": "raw-model", "messages": [{"role": "user", "content": "hi"}]})
    assert status == 504 and json.loads(relayed)["error"]["code"] == "upstream_timeout"
    assert events(proxy) == []


async def test_a_client_that_leaves_before_the_providers_answer_is_billed_the_prompt(proxy_factory, fake_upstream,
                                                                                     tmp_path):
    async with Scripted([[]]) as raw_url:  # reads the whole request, then thinks
        proxy = proxy_factory(raw_config(tmp_path, fake_upstream.url, raw_url))
        with pytest.raises(asyncio.TimeoutError):
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.5)) as session:
                await session.post(proxy.url + "/v1/chat/completions", headers=AUTH,
                                   json={"model": "raw-model", "messages": [{"role": "user", "content": "hi"}]})
        for _ in range(50):  # the proxy notices the client's leaving, then records
            billed = events(proxy)
            if billed:
                break
            await asyncio.sleep(0.1)
    event, = billed
    assert (event["status"], event["input_tokens"], event["output_tokens"]) == ("partial", 8, 0)
    assert event["usage_source"] == {"input": "tiktoken", "output": "tiktoken"}


@pytest.mark.parametrize("body, kind", [
    (b'{"error":{"message":"Incorrect API key provided: sk-raw","type":"invalid_request_error"}}', "json"),
    (b"unauthorized: Bearer sk-raw", "text"),
])
async def test_a_provider_quoting_our_key_in_its_error_never_shows_it_to_the_client(proxy_factory, fake_upstream,
                                                                                      tmp_path, body, kind):
    answer = (f"HTTP/1.1 401 Unauthorized\r\nContent-Type: {'application/json' if kind == 'json' else 'text/plain'}"
              f"\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    async with Scripted([[answer, None]]) as raw_url:
        proxy = proxy_factory(raw_config(tmp_path, fake_upstream.url, raw_url))
        status, relayed, _ = await post(proxy, {"model": "raw-model", "messages": [{"role": "user", "content": "hi"}]})
    assert status == 401 and b"sk-raw" not in relayed and b"[redacted]" in relayed
    json.loads(relayed)  # still JSON
