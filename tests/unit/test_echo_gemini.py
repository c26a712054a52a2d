"""The echo model speaks Gemini's wire: the google-genai SDK talks to it, its usage is real, and
Payware's Gemini watcher reads its stream as it reads Google's."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
from google import genai
from google.genai import types as genai_types

from metering.usage.sse import SSEFramer
from metering.usage.tokens import count_text
from proxy.echo.app import start_echo_server
from proxy.formats.base import Outgoing
from proxy.formats.gemini import GENERATE, count_prompt

SAID = "Hello there, echo! Ça va?"


def o200k(text: str) -> int:
    return count_text(text, "gpt-4o")


@pytest.fixture
async def echo_root() -> AsyncIterator[str]:
    runner, base_url = await start_echo_server()
    yield base_url.removesuffix("/v1")
    await runner.cleanup()


def sdk(root: str, version: str) -> genai.Client:
    return genai.Client(api_key="any key at all", http_options=genai_types.HttpOptions(base_url=root,
                                                                                       api_version=version))


def request_body(text: str = SAID, **config) -> dict:
    body = {"systemInstruction": {"parts": [{"text": "Be brief."}]},
            "contents": [{"role": "user", "parts": [{"text": "first"}]}, {"role": "model", "parts": [{"text": "ok"}]},
                         {"role": "user", "parts": [{"text": text}]}]}
    if config:
        body["generationConfig"] = config
    return body


@pytest.mark.parametrize("version", ["v1", "v1beta"])
async def test_the_sdk_reads_the_echo_answer_and_its_usage(echo_root, version):
    client = sdk(echo_root, version)
    config = genai_types.GenerateContentConfig(system_instruction="Be brief.")
    response = await client.aio.models.generate_content(model="echo", contents=SAID, config=config)
    assert response.text == SAID and response.candidates[0].finish_reason == "STOP"
    prompt = o200k("Be brief.") + o200k(SAID)
    usage = response.usage_metadata
    assert (usage.prompt_token_count, usage.candidates_token_count, usage.total_token_count) == (
        prompt, o200k(SAID), prompt + o200k(SAID))
    assert response.model_version == "echo"


async def test_the_sdk_reads_the_echo_stream_whose_last_chunk_has_the_final_usage(echo_root):
    client = sdk(echo_root, "v1")
    chunks = [c async for c in await client.aio.models.generate_content_stream(model="echo", contents=SAID)]
    assert "".join(c.text for c in chunks) == SAID and len(chunks) > 1
    assert chunks[-1].candidates[0].finish_reason == "STOP"
    assert [c.usage_metadata.candidates_token_count for c in chunks] == sorted(
        c.usage_metadata.candidates_token_count for c in chunks)
    assert chunks[-1].usage_metadata.candidates_token_count == o200k(SAID)


async def test_count_tokens_is_the_prompt_as_payware_estimates_it(echo_root):
    client = sdk(echo_root, "v1beta")
    result = await client.aio.models.count_tokens(model="echo", contents=SAID)
    assert result.total_tokens == o200k(SAID)


async def test_the_payware_watcher_reads_the_echo_stream_as_google_s(echo_root):
    body = request_body(maxOutputTokens=3)
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{echo_root}/v1/models/echo:streamGenerateContent?alt=sse", json=body) as resp:
            raw = await resp.read()
    assert raw.endswith(b"}\r\n\r\n") and b'{"candidates": [' in raw  # Gemini's framing and spacing
    watcher = GENERATE.watcher(Outgoing("", b""))
    for frame in SSEFramer().feed(raw):
        watcher.process(frame)
    assert watcher.done and watcher.usage.input_tokens == count_prompt(body, "gemini-2.5-pro")
    assert watcher.usage.output_tokens == 3 and o200k(watcher.output_text()) == 3
    assert json.loads(raw.rsplit(b"data: ", 1)[1])["candidates"][0]["finishReason"] == "MAX_TOKENS"


async def test_without_alt_sse_the_echo_streams_one_json_array(echo_root):
    body = request_body()
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{echo_root}/v1beta/models/echo:streamGenerateContent", json=body) as resp:
            chunks = json.loads(await resp.read())
    assert isinstance(chunks, list) and GENERATE.text(chunks) == SAID
    assert GENERATE.usage(chunks).output_tokens == o200k(SAID)


async def test_a_request_without_contents_is_a_400_in_google_s_envelope(echo_root):
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{echo_root}/v1/models/echo:generateContent", json={"contents": []}) as resp:
            status, body = resp.status, await resp.json()
    assert status == 400 and body["error"]["status"] == "INVALID_ARGUMENT" and body["error"]["code"] == 400
