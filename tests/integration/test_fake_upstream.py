"""The fake provider (a real process) speaks OpenAI's wire format: the official SDK reads every
scenario as it would the real provider's, and the bytes on the wire are `stream_bytes` exactly."""

from __future__ import annotations

import base64
import json
import struct
import time
import urllib.request

import aiohttp
import openai
import pytest

from tests.fakes import upstream as fake

USER = [{"role": "user", "content": "hi"}]
STREAMS = ["fake-ok", "fake-no-usage", "fake-finish-usage", "fake-crlf", "fake-split", "fake-stream-error"]


def sdk(fake_upstream, **kwargs) -> openai.OpenAI:
    return openai.OpenAI(base_url=fake_upstream.url, api_key="sk-test", max_retries=0, **kwargs)


async def read_raw(url: str, body: dict, headers: dict | None = None) -> tuple[int, dict, bytes, bool]:
    """Status, headers, every byte received, and whether the body ended cleanly."""
    received = b""
    async with aiohttp.ClientSession() as session:
        async with session.post(url, json=body, headers=headers) as resp:
            try:
                async for data in resp.content.iter_any():
                    received += data
            except aiohttp.ClientPayloadError:
                return resp.status, dict(resp.headers), received, False
            return resp.status, dict(resp.headers), received, True


def wait_for_cancelled(fake_upstream, before: int, timeout: float = 5.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        cancelled = fake_upstream.stats()["cancelled"]
        if cancelled > before:
            return cancelled
        time.sleep(0.02)
    return fake_upstream.stats()["cancelled"]


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
@pytest.mark.parametrize("include_usage", [False, True])
@pytest.mark.parametrize("scenario", STREAMS)
async def test_a_stream_on_the_wire_is_exactly_stream_bytes(fake_upstream, scenario, include_usage, endpoint):
    path = "/chat/completions" if endpoint == "chat" else "/completions"
    body = {"model": scenario, "stream": True, "stream_options": {"include_usage": include_usage}}
    status, headers, received, clean = await read_raw(fake_upstream.url + path, body)
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream") and clean
    assert received == b"".join(fake.stream_bytes(scenario, include_usage, scenario, endpoint=endpoint))


async def test_fake_slow_streams_200_words_at_the_asked_pace(fake_upstream):
    body = {"model": "fake-slow", "stream": True}
    started = time.monotonic()
    _, _, received, clean = await read_raw(fake_upstream.url + "/chat/completions", body, {"x-fake-delay-ms": "1"})
    assert clean and received == b"".join(fake.stream_bytes("fake-slow", False, "fake-slow"))
    assert received.count(b'"content":" w') == 200 and time.monotonic() - started < 4  # not 200 x 20 ms


async def test_fake_cut_closes_the_connection_without_done_or_usage(fake_upstream):
    body = {"model": "fake-cut", "stream": True, "stream_options": {"include_usage": True}}
    status, _, received, clean = await read_raw(fake_upstream.url + "/chat/completions", body)
    assert status == 200 and not clean
    assert received == b"".join(fake.stream_bytes("fake-cut", True, "fake-cut"))
    assert b"[DONE]" not in received and b'"usage":{' not in received


def test_the_sdk_reads_fake_ok_with_its_fixed_usage(fake_upstream):
    completion = sdk(fake_upstream).chat.completions.create(model="fake-ok", messages=USER)
    assert completion.model_dump(exclude_unset=True) == fake.completion_body("fake-ok")
    assert completion.choices[0].message.content == fake.REPLY
    usage = completion.usage
    assert (usage.prompt_tokens, usage.prompt_tokens_details.cached_tokens, usage.completion_tokens,
            usage.completion_tokens_details.reasoning_tokens) == (
        fake.PROMPT_TOKENS, fake.CACHED_TOKENS, fake.COMPLETION_TOKENS, fake.REASONING_TOKENS)


@pytest.mark.parametrize("scenario", ["fake-ok", "fake-crlf", "fake-split"])
def test_the_sdk_reads_every_framing_of_a_stream_alike(fake_upstream, scenario):
    chunks = list(sdk(fake_upstream).chat.completions.create(
        model=scenario, messages=USER, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == fake.REPLY
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == fake.PROMPT_TOKENS + fake.COMPLETION_TOKENS
    assert all(c.usage is None for c in chunks[:-1])


def test_fake_finish_usage_carries_usage_on_the_finish_chunk(fake_upstream):
    chunks = list(sdk(fake_upstream).chat.completions.create(model="fake-finish-usage", messages=USER, stream=True))
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert chunks[-1].usage.prompt_tokens == fake.PROMPT_TOKENS


@pytest.mark.parametrize("stream", [False, True])
def test_fake_no_usage_never_reports_usage(fake_upstream, stream):
    client = sdk(fake_upstream)
    if stream:
        chunks = list(client.chat.completions.create(model="fake-no-usage", messages=USER, stream=True,
                                                     stream_options={"include_usage": True}))
        assert chunks and all(c.usage is None and c.choices for c in chunks)
    else:
        assert client.chat.completions.create(model="fake-no-usage", messages=USER).usage is None
        assert client.completions.create(model="fake-no-usage", prompt="hi").usage is None


def test_the_sdk_reads_text_completions(fake_upstream):
    completion = sdk(fake_upstream).completions.create(model="fake-ok", prompt="hi")
    assert completion.choices[0].text == fake.REPLY and completion.usage.completion_tokens == fake.COMPLETION_TOKENS
    chunks = list(sdk(fake_upstream).completions.create(model="fake-ok", prompt="hi", stream=True,
                                                        stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == fake.REPLY
    assert chunks[-1].usage.prompt_tokens == fake.PROMPT_TOKENS


def test_the_sdk_decodes_the_base64_embedding(fake_upstream):
    result = sdk(fake_upstream).embeddings.create(model="fake-ok", input=["a", "b"])  # the SDK asks for base64
    assert [d.embedding for d in result.data] == [[0.0, 1.0], [0.0, 1.0]]
    assert (result.usage.prompt_tokens, result.usage.total_tokens) == (fake.EMBEDDING_TOKENS, fake.EMBEDDING_TOKENS)
    assert struct.unpack("<2f", base64.b64decode("AAAAAAAAgD8=")) == (0.0, 1.0)


def test_models_lists_the_scenarios(fake_upstream):
    assert [m.id for m in sdk(fake_upstream).models.list()] == list(fake.SCENARIOS)


@pytest.mark.parametrize("model, error, status", [
    ("fake-error-400", openai.BadRequestError, 400),
    ("fake-error-429", openai.RateLimitError, 429),
    ("fake-error-500-text", openai.InternalServerError, 500),
])
def test_error_scenarios_answer_as_the_provider_would(fake_upstream, model, error, status):
    with pytest.raises(error) as caught:
        sdk(fake_upstream).chat.completions.create(model=model, messages=USER)
    response = caught.value.response
    assert response.status_code == status
    if model == "fake-error-500-text":
        assert response.headers["content-type"].startswith("text/plain") and response.text == "upstream exploded"
    else:
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    if model == "fake-error-429":
        assert response.headers["retry-after"] == "1" and caught.value.code == "rate_limit_exceeded"
    if model == "fake-error-400":
        assert response.json()["error"]["type"] == "invalid_request_error"


def test_fake_stream_error_sends_two_content_chunks_then_an_error_event(fake_upstream):
    contents = []
    with pytest.raises(openai.APIError, match="The server had an error"):
        for chunk in sdk(fake_upstream).chat.completions.create(model="fake-stream-error", messages=USER, stream=True):
            contents.append(chunk.choices[0].delta.content)
    assert contents == ["", "Hello", " from"]


def test_fake_hang_never_answers_and_notices_the_client_giving_up(fake_upstream):
    before = fake_upstream.stats()["cancelled"]
    with pytest.raises(openai.APITimeoutError):
        sdk(fake_upstream, timeout=0.3).chat.completions.create(model="fake-hang", messages=USER)
    assert wait_for_cancelled(fake_upstream, before) == before + 1


def test_an_abandoned_fake_slow_stream_is_counted_as_cancelled(fake_upstream):
    before = fake_upstream.stats()["cancelled"]
    stream = sdk(fake_upstream).chat.completions.create(model="fake-slow", messages=USER, stream=True)
    for _ in range(3):
        next(stream)
    stream.close()  # mid-stream: the connection goes, the fake's handler is cancelled
    assert wait_for_cancelled(fake_upstream, before) == before + 1


def test_stats_record_the_raw_body_and_headers_and_reset_clears_them(fake_upstream):
    fake_upstream.reset()
    sdk(fake_upstream).embeddings.create(model="fake-ok", input="x")
    raw = b'{"model":  "fake-ok",\n "messages": [{"role": "user", "content": "h\\u00e9"}], "x_extra": [1]}'
    headers = {"Authorization": "Bearer sk-provider", "Content-Type": "application/json"}
    request = urllib.request.Request(fake_upstream.url + "/chat/completions", data=raw, headers=headers)
    urllib.request.urlopen(request).read()
    stats = fake_upstream.stats()
    assert stats["requests"] == {"/v1/embeddings": 1, "/v1/chat/completions": 1}
    first, last = stats["last"]
    assert first["path"] == "/v1/embeddings" and first["headers"]["Authorization"] == "Bearer sk-test"
    assert last["path"] == "/v1/chat/completions" and last["body"].encode() == raw
    assert last["headers"]["Authorization"] == "Bearer sk-provider"
    fake_upstream.reset()
    assert fake_upstream.stats() == {"requests": {}, "cancelled": 0, "last": []}


def test_stats_keep_the_last_50_requests(fake_upstream):
    fake_upstream.reset()
    client = sdk(fake_upstream)
    for i in range(55):
        client.embeddings.create(model="fake-ok", input=str(i), encoding_format="float")
    stats = fake_upstream.stats()
    assert stats["requests"] == {"/v1/embeddings": 55}
    assert [json.loads(r["body"])["input"] for r in stats["last"]] == [str(i) for i in range(5, 55)]
