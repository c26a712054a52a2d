"""The echo model speaks OpenAI's wire format: the official SDK talks to it, and its usage is real."""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import AsyncIterator

import aiohttp
import openai
import pytest

from metering.usage.tokens import PER_MESSAGE, REPLY_PRIMING, count_text
from proxy.echo.app import start_echo_server

HELLO = [{"role": "system", "content": "Be brief."}, {"role": "assistant", "content": "Hi."},
         {"role": "user", "content": "Echo this back, please."}]


def o200k(text: str) -> int:
    return count_text(text, "gpt-4o")


def cookbook_prompt_tokens(messages: list[dict]) -> int:
    return REPLY_PRIMING + sum(PER_MESSAGE + o200k(m["role"]) + o200k(m["content"]) for m in messages)


@pytest.fixture
async def echo_url() -> AsyncIterator[str]:
    runner, base_url = await start_echo_server()
    yield base_url
    await runner.cleanup()


@pytest.fixture
async def sdk(echo_url) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(base_url=echo_url, api_key="any key at all", max_retries=0)
    yield client
    await client.close()


async def post_raw(url: str, body: dict) -> tuple[int, str, bytes]:
    async with aiohttp.ClientSession() as session:
        async with session.post(url, json=body) as resp:
            return resp.status, resp.headers["Content-Type"], await resp.read()


def sse_chunks(raw: bytes) -> list[dict]:
    events = raw.split(b"\n\n")
    assert events[-2:] == [b"data: [DONE]", b""]
    assert all(e.startswith(b"data: ") for e in events[:-1])
    return [json.loads(e[6:]) for e in events[:-2]]


async def test_chat_echoes_the_last_user_message_with_cookbook_usage(sdk):
    completion = await sdk.chat.completions.create(model="echo-4o-mini", messages=HELLO)
    assert completion.id.startswith("chatcmpl-") and completion.object == "chat.completion"
    assert completion.model == "echo-4o-mini" and completion.system_fingerprint == "fp_echo"
    choice, = completion.choices
    assert (choice.index, choice.finish_reason, choice.logprobs) == (0, "stop", None)
    assert (choice.message.role, choice.message.content, choice.message.refusal) == (
        "assistant", "Echo this back, please.", None)
    usage = completion.usage
    assert usage.prompt_tokens == cookbook_prompt_tokens(HELLO)
    assert usage.completion_tokens == o200k("Echo this back, please.")
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert usage.prompt_tokens_details.cached_tokens == 0
    assert usage.completion_tokens_details.reasoning_tokens == 0


async def test_chat_body_has_openais_exact_shape(echo_url):
    status, content_type, raw = await post_raw(echo_url + "/chat/completions", {"model": "m", "messages": HELLO})
    assert status == 200 and content_type.startswith("application/json")
    body = json.loads(raw)
    assert list(body) == ["id", "object", "created", "model", "choices", "usage", "service_tier",
                          "system_fingerprint"]
    assert body["usage"]["prompt_tokens_details"] == {"cached_tokens": 0, "audio_tokens": 0}
    assert body["usage"]["completion_tokens_details"] == {"reasoning_tokens": 0, "audio_tokens": 0,
                                                          "accepted_prediction_tokens": 0,
                                                          "rejected_prediction_tokens": 0}


async def test_stream_without_include_usage_sends_one_chunk_per_token_and_no_usage(echo_url):
    status, content_type, raw = await post_raw(echo_url + "/chat/completions",
                                               {"model": "m", "messages": HELLO, "stream": True})
    assert status == 200 and content_type.startswith("text/event-stream")
    chunks = sse_chunks(raw)
    assert all("usage" not in c and c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    contents = [c["choices"][0]["delta"]["content"] for c in chunks[1:-1]]
    assert len(contents) == o200k("Echo this back, please.")
    assert "".join(contents) == "Echo this back, please."
    assert chunks[-1]["choices"][0]["delta"] == {} and chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_stream_with_include_usage_ends_with_a_usage_chunk_and_null_usage_before(echo_url):
    _, _, raw = await post_raw(echo_url + "/chat/completions", {
        "model": "m", "messages": HELLO, "stream": True, "stream_options": {"include_usage": True}})
    chunks = sse_chunks(raw)
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["prompt_tokens"] == cookbook_prompt_tokens(HELLO)
    assert chunks[-1]["usage"]["completion_tokens"] == len(chunks) - 3  # minus role, finish and usage chunks


async def test_the_sdk_reads_the_stream_and_its_usage(sdk):
    stream = await sdk.chat.completions.create(model="m", messages=HELLO, stream=True,
                                               stream_options={"include_usage": True})
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Echo this back, please."
    assert chunks[-1].usage.total_tokens == cookbook_prompt_tokens(HELLO) + o200k("Echo this back, please.")


@pytest.mark.parametrize("text", ["naïve café", "日本語のテキスト", "emoji 🙂🚀 ok", "<|endoftext|> is text"])
async def test_streamed_pieces_are_whole_characters_and_add_up_to_the_reply(sdk, text):
    messages = [{"role": "user", "content": text}]
    stream = await sdk.chat.completions.create(model="m", messages=messages, stream=True,
                                               stream_options={"include_usage": True})
    chunks = [chunk async for chunk in stream]
    pieces = [c.choices[0].delta.content for c in chunks[1:-2]]
    assert "".join(pieces) == text and "\ufffd" not in "".join(pieces)
    assert chunks[-1].usage.completion_tokens == o200k(text)


@pytest.mark.parametrize("limit", ["max_tokens", "max_completion_tokens"])
@pytest.mark.parametrize("stream", [False, True])
async def test_a_token_limit_cuts_the_reply_with_finish_reason_length(sdk, limit, stream):
    text = "one two three four five six seven"
    kwargs = {"model": "m", "messages": [{"role": "user", "content": text}], limit: 3}
    if stream:
        chunks = [c async for c in await sdk.chat.completions.create(
            **kwargs, stream=True, stream_options={"include_usage": True})]
        reply = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finish, usage = chunks[-2].choices[0].finish_reason, chunks[-1].usage
    else:
        completion = await sdk.chat.completions.create(**kwargs)
        reply, finish, usage = (completion.choices[0].message.content, completion.choices[0].finish_reason,
                                completion.usage)
    assert (reply, finish, usage.completion_tokens) == ("one two three", "length", 3)


@pytest.mark.parametrize("stream", [False, True])
async def test_completions_echo_the_prompt_with_its_usage(sdk, stream):
    prompt = "Say this is a test"
    if stream:
        chunks = [c async for c in await sdk.completions.create(
            model="echo-instruct", prompt=prompt, stream=True, stream_options={"include_usage": True})]
        text = "".join(c.choices[0].text for c in chunks if c.choices)
        assert chunks[-2].choices[0].finish_reason == "stop" and chunks[-1].choices == []
        usage = chunks[-1].usage
    else:
        completion = await sdk.completions.create(model="echo-instruct", prompt=prompt)
        assert completion.object == "text_completion" and completion.model == "echo-instruct"
        text, usage = completion.choices[0].text, completion.usage
    assert text == prompt
    assert (usage.prompt_tokens, usage.completion_tokens) == (o200k(prompt), o200k(prompt))


async def test_embeddings_are_deterministic_and_base64_is_little_endian_float32(sdk, echo_url):
    via_sdk = await sdk.embeddings.create(model="echo-embed", input=["alpha", "beta"])  # the SDK asks for base64
    _, _, raw = await post_raw(echo_url + "/embeddings", {"model": "echo-embed", "input": ["alpha", "beta"],
                                                          "encoding_format": "float"})
    floats = json.loads(raw)
    assert [d.embedding for d in via_sdk.data] == [d["embedding"] for d in floats["data"]]
    assert via_sdk.data[0].embedding != via_sdk.data[1].embedding
    assert via_sdk.usage.prompt_tokens == via_sdk.usage.total_tokens == o200k("alpha") + o200k("beta")
    _, _, raw = await post_raw(echo_url + "/embeddings", {"model": "e", "input": "alpha", "encoding_format": "base64"})
    encoded = json.loads(raw)["data"][0]["embedding"]
    assert list(struct.unpack("<8f", base64.b64decode(encoded))) == floats["data"][0]["embedding"]


async def test_models_lists_the_echo_model(sdk):
    assert [m.id async for m in sdk.models.list()] == ["echo"]


@pytest.mark.parametrize("path, body, param", [
    ("/chat/completions", {"messages": HELLO}, None),
    ("/chat/completions", {"model": "m"}, "messages"),
    ("/chat/completions", {"model": "m", "messages": []}, "messages"),
    ("/chat/completions", {"model": "m", "messages": HELLO, "max_tokens": 0}, "max_tokens"),
    ("/completions", {"model": "m"}, "prompt"),
    ("/completions", {"model": "m", "prompt": {"a": 1}}, "prompt"),
    ("/embeddings", {"model": "m"}, "input"),
    ("/embeddings", {"input": "x"}, None),
])
async def test_bad_requests_get_a_400_in_openais_error_envelope(echo_url, path, body, param):
    status, content_type, raw = await post_raw(echo_url + path, body)
    assert status == 400 and content_type.startswith("application/json")
    error = json.loads(raw)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["message"]


async def test_the_sdk_raises_bad_request_for_an_empty_message_list(sdk):
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk.chat.completions.create(model="m", messages=[])
    assert caught.value.param == "messages"


async def test_a_body_that_is_not_json_is_a_400(echo_url):
    async with aiohttp.ClientSession() as session:
        async with session.post(echo_url + "/chat/completions", data=b"{nope") as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]["type"] == "invalid_request_error"
