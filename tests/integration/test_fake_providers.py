"""The fake provider (a real process) speaks Anthropic Messages, Gemini and OpenAI's Responses API:
each official SDK, pointed straight at it, parses every part and reports exactly the fake's usage,
and the bytes on the wire are the wire modules' `stream_bytes` exactly."""

from __future__ import annotations

import json
import time

import aiohttp
import anthropic
import openai
from anthropic._constants import ANTHROPIC_API_VERSION
import pytest
from agents import Agent, OpenAIResponsesModel, RunConfig, Runner
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types

from tests.fakes import anthropic_wire as claude
from tests.fakes import gemini_wire as gemini
from tests.fakes import responses_wire as responses

HI = [{"role": "user", "content": "hi"}]


async def read_raw(url: str, body: dict | None, headers: dict | None = None) -> tuple[int, dict, bytes, bool]:
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
    while time.monotonic() < deadline and fake_upstream.stats()["cancelled"] <= before:
        time.sleep(0.02)
    return fake_upstream.stats()["cancelled"]


def root(fake_upstream) -> str:
    return fake_upstream.url.removesuffix("/v1")


@pytest.mark.parametrize("path, body", [
    ("/v1/messages", {"model": "claude-fake-cut", "max_tokens": 8, "messages": HI}),
    ("/v1beta/models/gemini-fake-cut:generateContent", {"contents": [{"parts": [{"text": "hi"}]}]}),
    ("/v1/responses", {"model": "responses-fake-cut", "input": "hi"}),
], ids=["anthropic", "gemini", "responses"])
async def test_a_non_streamed_cut_scenario_drops_the_connection_with_no_answer(fake_upstream, path, body):
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await session.post(root(fake_upstream) + path, json=body)


# --- Anthropic Messages ----------------------------------------------------------------------------

def claude_sdk(fake_upstream, **kwargs) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=root(fake_upstream), api_key="sk-ant-test", max_retries=0, **kwargs)


def claude_usage(usage) -> dict:
    """The SDK's usage as the wire's dict (unset optional fields left out)."""
    return usage.model_dump(exclude_none=True)


@pytest.mark.parametrize("scenario", ["claude-fake-ok", "claude-fake-cache", "claude-fake-thinking",
                                      "claude-fake-packed", "claude-fake-error-midstream"])
async def test_an_anthropic_stream_on_the_wire_is_exactly_stream_bytes(fake_upstream, scenario):
    status, headers, received, clean = await read_raw(fake_upstream.url + "/messages",
                                                      {"model": scenario, "stream": True, "max_tokens": 64})
    assert status == 200 and headers["Content-Type"] == "text/event-stream; charset=utf-8" and clean
    assert received == b"".join(claude.stream_bytes(scenario, scenario))
    assert headers["request-id"] == claude.REQUEST_ID


async def test_claude_fake_cut_drops_the_connection_after_two_deltas(fake_upstream):
    body = {"model": "claude-fake-cut", "stream": True}
    _, _, received, clean = await read_raw(fake_upstream.url + "/messages", body)
    assert not clean and received == b"".join(claude.stream_bytes("claude-fake-cut", "claude-fake-cut"))
    assert received.count(b"text_delta") == 2 and b"message_delta" not in received


@pytest.mark.parametrize("scenario", ["claude-fake-ok", "claude-fake-cache", "claude-fake-thinking"])
def test_the_anthropic_sdk_reads_a_message_and_its_usage(fake_upstream, scenario):
    message = claude_sdk(fake_upstream).messages.create(model=scenario, max_tokens=64, messages=HI)
    assert message.model_dump(exclude_unset=True) == claude.message(scenario, scenario)
    assert message.content[-1].text == claude.REPLY
    assert claude_usage(message.usage) == claude.usage(scenario)


def test_claude_fake_cache_reports_reads_and_both_cache_writes(fake_upstream):
    usage = claude_sdk(fake_upstream).messages.create(model="claude-fake-cache", max_tokens=64, messages=HI).usage
    writes = claude.CACHE_WRITE_5M_TOKENS + claude.CACHE_WRITE_1H_TOKENS
    assert (usage.input_tokens, usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == (
        claude.CACHE_INPUT_TOKENS, claude.CACHE_READ_TOKENS, writes)
    assert (usage.cache_creation.ephemeral_5m_input_tokens, usage.cache_creation.ephemeral_1h_input_tokens) == (
        claude.CACHE_WRITE_5M_TOKENS, claude.CACHE_WRITE_1H_TOKENS)


def test_the_fake_records_the_anthropic_key_version_and_beta_headers(fake_upstream):
    fake_upstream.reset()
    client = claude_sdk(fake_upstream, default_headers={"anthropic-beta": "context-1m-2025-08-07"})
    assert client.messages.count_tokens(model="claude-fake-ok", messages=HI).input_tokens == claude.COUNT_TOKENS
    (last,) = fake_upstream.stats()["last"]
    headers = {name.lower(): value for name, value in last["headers"].items()}
    assert last["path"] == "/v1/messages/count_tokens" and json.loads(last["body"])["messages"] == HI
    # NOTE: anthropic 2.x sends the key as a bearer token and a dated version; older SDKs, x-api-key
    assert headers["authorization"] == "Bearer sk-ant-test" and headers["anthropic-version"] == ANTHROPIC_API_VERSION
    assert headers["anthropic-beta"] == "context-1m-2025-08-07"


async def test_the_fake_records_an_x_api_key_as_given(fake_upstream):
    fake_upstream.reset()
    headers = {"x-api-key": "sk-ant-raw", "anthropic-version": "2023-06-01"}
    body = {"model": "claude-fake-ok", "max_tokens": 8, "messages": HI}
    await read_raw(fake_upstream.url + "/messages", body, headers)
    (last,) = fake_upstream.stats()["last"]
    assert {k.lower(): v for k, v in last["headers"].items()}["x-api-key"] == "sk-ant-raw"


@pytest.mark.parametrize("scenario", ["claude-fake-ok", "claude-fake-cache", "claude-fake-packed"])
def test_the_anthropic_sdk_reads_every_event_of_a_created_stream(fake_upstream, scenario):
    events = list(claude_sdk(fake_upstream).messages.create(model=scenario, max_tokens=64, messages=HI, stream=True))
    assert [e.type for e in events] == (["message_start", "content_block_start"] + ["content_block_delta"] * 5
                                        + ["content_block_stop", "message_delta", "message_stop"])  # ping skipped
    assert "".join(e.delta.text for e in events if e.type == "content_block_delta") == claude.REPLY
    start, delta = events[0].message.usage, events[-2].usage
    assert start.output_tokens == 1 and start.input_tokens == claude.usage(scenario)["input_tokens"]
    assert delta.model_dump(exclude_none=True) == {k: v for k, v in claude.usage(scenario).items()
                                                   if k not in ("cache_creation", "service_tier")}


@pytest.mark.parametrize("scenario", ["claude-fake-ok", "claude-fake-cache", "claude-fake-thinking"])
def test_the_anthropic_stream_helper_ends_with_the_cumulative_usage(fake_upstream, scenario):
    with claude_sdk(fake_upstream).messages.stream(model=scenario, max_tokens=64, messages=HI) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == claude.REPLY and final.stop_reason == "end_turn"
    assert claude_usage(final.usage) == claude.usage(scenario)
    if scenario == "claude-fake-thinking":
        assert final.content[0].thinking == "".join(claude.THINKING) and final.content[0].signature == claude.SIGNATURE
        assert final.usage.output_tokens_details.thinking_tokens == claude.THINKING_TOKENS


def test_claude_fake_overloaded_is_a_529_in_anthropics_envelope(fake_upstream):
    with pytest.raises(anthropic.OverloadedError) as caught:
        claude_sdk(fake_upstream).messages.create(model="claude-fake-overloaded", max_tokens=64, messages=HI)
    assert caught.value.status_code == 529 and caught.value.body == claude.OVERLOADED
    assert caught.value.response.headers["request-id"] == claude.REQUEST_ID


def test_claude_fake_error_midstream_raises_after_two_deltas(fake_upstream):
    texts = []
    with pytest.raises(anthropic.APIStatusError) as caught:
        for event in claude_sdk(fake_upstream).messages.create(model="claude-fake-error-midstream", max_tokens=64,
                                                               messages=HI, stream=True):
            if event.type == "content_block_delta":
                texts.append(event.delta.text)
    assert texts == claude.WORDS[:2] and caught.value.body == claude.MIDSTREAM_ERROR


def test_an_abandoned_claude_fake_slow_stream_is_counted_as_cancelled(fake_upstream):
    before = fake_upstream.stats()["cancelled"]
    client = claude_sdk(fake_upstream)
    stream = client.messages.create(model="claude-fake-slow", max_tokens=64, messages=HI, stream=True)
    for _ in range(5):
        next(iter(stream))
    stream.close()
    assert wait_for_cancelled(fake_upstream, before) == before + 1


# --- Gemini --------------------------------------------------------------------------------------

def gemini_sdk(fake_upstream, api_version: str | None = None) -> genai.Client:
    options = genai_types.HttpOptions(base_url=root(fake_upstream), api_version=api_version)
    return genai.Client(api_key="AIza-test", http_options=options)


def gemini_usage(response) -> dict:
    """The SDK's usage_metadata as the wire's dict (camelCase, unset fields left out)."""
    return response.usage_metadata.model_dump(mode="json", exclude_none=True, by_alias=True)


@pytest.mark.parametrize("scenario", ["gemini-fake-ok", "gemini-fake-cached-thoughts", "gemini-fake-blocked"])
@pytest.mark.parametrize("version", ["v1", "v1beta"])
async def test_a_gemini_stream_on_the_wire_is_exactly_stream_bytes(fake_upstream, scenario, version):
    url = f"{root(fake_upstream)}/{version}/models/{scenario}:streamGenerateContent?alt=sse"
    status, headers, received, clean = await read_raw(url, {"contents": [{"parts": [{"text": "hi"}]}]})
    assert status == 200 and headers["Content-Type"] == "text/event-stream" and clean
    assert received == b"".join(gemini.stream_bytes(scenario, scenario))
    assert received.endswith(b"}\r\n\r\n") and b"\n\n" not in received.replace(b"\r\n\r\n", b"")


async def test_gemini_fake_cut_drops_the_connection_with_partial_usage(fake_upstream):
    url = f"{root(fake_upstream)}/v1beta/models/gemini-fake-cut:streamGenerateContent?alt=sse&key=AIza-query"
    _, _, received, clean = await read_raw(url, {})
    assert not clean and received == b"".join(gemini.stream_bytes("gemini-fake-cut", "gemini-fake-cut"))
    assert b"finishReason" not in received
    assert fake_upstream.stats()["last"][-1]["query"] == "alt=sse&key=AIza-query"


@pytest.mark.parametrize("version", [None, "v1beta"])
@pytest.mark.parametrize("scenario", ["gemini-fake-ok", "gemini-fake-cached-thoughts"])
def test_the_genai_sdk_reads_generate_content_and_its_usage(fake_upstream, scenario, version):
    fake_upstream.reset()
    client = gemini_sdk(fake_upstream, version)  # NOTE: a Client closes its connection pool when collected
    response = client.models.generate_content(model=scenario, contents="hi")
    assert response.candidates[0].finish_reason == "STOP" and response.response_id == gemini.RESPONSE_ID
    assert response.model_version == scenario
    assert gemini_usage(response) == gemini.usage_metadata(scenario)
    (last,) = fake_upstream.stats()["last"]
    assert last["path"] == f"/{version or 'v1'}/models/{scenario}:generateContent"  # the SDK's default is v1
    assert last["headers"]["x-goog-api-key"] == "AIza-test"


def test_gemini_cached_thoughts_reports_every_token_class(fake_upstream):
    client = gemini_sdk(fake_upstream)
    response = client.models.generate_content(model="gemini-fake-cached-thoughts", contents="hi")
    usage, parts = response.usage_metadata, response.candidates[0].content.parts
    assert (usage.prompt_token_count, usage.cached_content_token_count, usage.candidates_token_count,
            usage.tool_use_prompt_token_count, usage.thoughts_token_count, usage.total_token_count) == (
        gemini.CACHED_PROMPT_TOKENS, gemini.CACHED_TOKENS, gemini.CACHED_CANDIDATES_TOKENS,
        gemini.TOOL_USE_PROMPT_TOKENS, gemini.THOUGHTS_TOKENS,
        gemini.CACHED_PROMPT_TOKENS + gemini.CACHED_CANDIDATES_TOKENS + gemini.TOOL_USE_PROMPT_TOKENS
        + gemini.THOUGHTS_TOKENS)
    assert parts[0].thought is True and parts[1].text == "Hello from fake Gemini, cached."


@pytest.mark.parametrize("scenario", ["gemini-fake-ok", "gemini-fake-cached-thoughts"])
def test_the_genai_sdk_reads_a_stream_whose_last_chunk_has_the_final_usage(fake_upstream, scenario):
    client = gemini_sdk(fake_upstream)
    chunks = list(client.models.generate_content_stream(model=scenario, contents="hi"))
    texts = [part.text for chunk in chunks for part in chunk.candidates[0].content.parts if not part.thought]
    assert "".join(texts) == gemini.response_body(scenario, scenario)["candidates"][0]["content"]["parts"][-1]["text"]
    assert gemini_usage(chunks[-1]) == gemini.usage_metadata(scenario)
    assert chunks[-1].candidates[0].finish_reason == "STOP"
    counts = [chunk.usage_metadata.candidates_token_count or 0 for chunk in chunks]
    assert counts == sorted(counts) and counts[-1] == chunks[-1].usage_metadata.candidates_token_count


@pytest.mark.parametrize("stream", [False, True])
def test_gemini_fake_blocked_is_a_200_with_prompt_feedback_and_prompt_usage(fake_upstream, stream):
    client = gemini_sdk(fake_upstream)
    models = client.models
    if stream:
        (response,) = list(models.generate_content_stream(model="gemini-fake-blocked", contents="hi"))
    else:
        response = models.generate_content(model="gemini-fake-blocked", contents="hi")
    assert response.prompt_feedback.block_reason == "SAFETY" and not response.candidates
    assert gemini_usage(response) == gemini.usage_metadata("gemini-fake-blocked")
    assert response.usage_metadata.prompt_token_count == gemini.BLOCKED_PROMPT_TOKENS


def test_the_genai_sdk_counts_tokens(fake_upstream):
    client = gemini_sdk(fake_upstream)
    assert client.models.count_tokens(model="gemini-fake-ok", contents="hi").total_tokens == gemini.COUNT_TOKENS


@pytest.mark.parametrize("scenario, error, body", [
    ("gemini-fake-error-400", genai_errors.ClientError, gemini.ERROR_400),
    ("gemini-fake-overloaded", genai_errors.ServerError, gemini.ERROR_503),
])
def test_gemini_errors_come_in_googles_envelope(fake_upstream, scenario, error, body):
    client = gemini_sdk(fake_upstream)
    with pytest.raises(error) as caught:
        client.models.generate_content(model=scenario, contents="hi")
    assert (caught.value.code, caught.value.status, caught.value.message) == (
        body["error"]["code"], body["error"]["status"], body["error"]["message"])


def test_an_abandoned_gemini_fake_slow_stream_is_counted_as_cancelled(fake_upstream):
    before = fake_upstream.stats()["cancelled"]
    client = gemini_sdk(fake_upstream)
    stream = client.models.generate_content_stream(model="gemini-fake-slow", contents="hi")
    for _ in range(3):
        next(stream)
    stream.close()
    assert wait_for_cancelled(fake_upstream, before) == before + 1


# --- OpenAI Responses ----------------------------------------------------------------------------

def openai_sdk(fake_upstream) -> openai.OpenAI:
    return openai.OpenAI(base_url=fake_upstream.url, api_key="sk-test", max_retries=0)


def wire(obj) -> dict:
    return obj.model_dump(mode="json", exclude_unset=True)


@pytest.mark.parametrize("scenario", ["responses-fake-ok", "responses-fake-incomplete", "responses-fake-failed"])
async def test_a_responses_stream_on_the_wire_is_exactly_stream_bytes(fake_upstream, scenario):
    status, headers, received, clean = await read_raw(fake_upstream.url + "/responses",
                                                      {"model": scenario, "input": "hi", "stream": True})
    assert status == 200 and headers["Content-Type"] == "text/event-stream; charset=utf-8" and clean
    rid = json.loads(received.split(b"\n")[1].removeprefix(b"data: "))["response"]["id"]
    assert received == b"".join(responses.stream_bytes(scenario, scenario, rid=rid))
    assert b"[DONE]" not in received


async def test_responses_fake_cut_drops_the_connection_before_any_usage(fake_upstream):
    _, _, received, clean = await read_raw(fake_upstream.url + "/responses",
                                           {"model": "responses-fake-cut", "input": "hi", "stream": True})
    rid = json.loads(received.split(b"\n")[1].removeprefix(b"data: "))["response"]["id"]
    assert not clean and received == b"".join(responses.stream_bytes("responses-fake-cut", "responses-fake-cut",
                                                                     rid=rid))
    assert received.count(b"event: response.output_text.delta") == 2 and b'"usage":{' not in received


def test_the_openai_sdk_creates_retrieves_lists_and_deletes_a_response(fake_upstream):
    client = openai_sdk(fake_upstream)
    created = client.responses.create(model="responses-fake-ok", input="hi")
    assert wire(created) == responses.response_object("responses-fake-ok", "responses-fake-ok", rid=created.id)
    assert created.output_text == responses.REPLY and wire(created.usage) == responses.usage("responses-fake-ok")
    assert wire(client.responses.retrieve(created.id)) == wire(created)
    (item,) = client.responses.input_items.list(created.id).data
    assert item.role == "user" and item.content[0].text == "hi"
    assert client.responses.delete(created.id) is None
    with pytest.raises(openai.NotFoundError, match=f"Response with id '{created.id}' not found"):
        client.responses.retrieve(created.id)


def test_the_openai_sdk_reads_every_event_of_a_created_stream(fake_upstream):
    events = list(openai_sdk(fake_upstream).responses.create(model="responses-fake-ok", input="hi", stream=True))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert [e.type for e in events] == (
        ["response.created", "response.in_progress"] + ["response.output_item.added", "response.output_item.done"]
        + ["response.output_item.added", "response.content_part.added"] + ["response.output_text.delta"] * 5
        + ["response.output_text.done", "response.content_part.done", "response.output_item.done",
           "response.completed"])
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == responses.REPLY
    assert wire(events[-1].response.usage) == responses.usage("responses-fake-ok")


def test_the_openai_stream_helper_ends_with_the_usage(fake_upstream):
    with openai_sdk(fake_upstream).responses.stream(model="responses-fake-ok", input="hi") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text == responses.REPLY
    usage = final.usage
    assert (usage.input_tokens, usage.input_tokens_details.cached_tokens, usage.output_tokens,
            usage.output_tokens_details.reasoning_tokens, usage.total_tokens) == (
        responses.INPUT_TOKENS, responses.CACHED_TOKENS, responses.OUTPUT_TOKENS, responses.REASONING_TOKENS,
        responses.INPUT_TOKENS + responses.OUTPUT_TOKENS)


@pytest.mark.parametrize("scenario, terminal", [("responses-fake-incomplete", "response.incomplete"),
                                                ("responses-fake-failed", "response.failed")])
def test_a_stream_can_end_incomplete_or_failed_with_its_usage(fake_upstream, scenario, terminal):
    events = list(openai_sdk(fake_upstream).responses.create(model=scenario, input="hi", stream=True))
    assert events[-1].type == terminal and wire(events[-1].response.usage) == responses.usage(scenario)
    if scenario == "responses-fake-incomplete":
        assert events[-1].response.incomplete_details.reason == "max_output_tokens"
    else:
        assert events[-1].response.error.code == "server_error"


def test_a_non_streamed_incomplete_or_failed_response(fake_upstream):
    client = openai_sdk(fake_upstream)
    incomplete = client.responses.create(model="responses-fake-incomplete", input="hi")
    assert incomplete.status == "incomplete" and incomplete.usage.output_tokens == responses.INCOMPLETE_OUTPUT_TOKENS
    with pytest.raises(openai.InternalServerError):
        client.responses.create(model="responses-fake-failed", input="hi")


def test_a_chained_response_is_billed_for_the_previous_ones(fake_upstream):
    client = openai_sdk(fake_upstream)
    first = client.responses.create(model="responses-fake-ok", input="hi")
    second = client.responses.create(model="responses-fake-ok", input="again", previous_response_id=first.id)
    third = client.responses.create(model="responses-fake-ok", input="more", previous_response_id=second.id)
    assert second.previous_response_id == first.id
    assert second.usage.input_tokens == responses.INPUT_TOKENS + responses.INPUT_TOKENS + responses.OUTPUT_TOKENS
    assert third.usage.input_tokens == responses.INPUT_TOKENS + second.usage.total_tokens
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="responses-fake-ok", input="hi", previous_response_id="resp_unknown")
    assert caught.value.code == "previous_response_not_found" and caught.value.param == "previous_response_id"


def test_a_background_response_is_queued_then_completed_or_cancelled(fake_upstream):
    client = openai_sdk(fake_upstream)
    queued = client.responses.create(model="responses-fake-ok", input="hi", background=True)
    assert queued.status == "queued" and queued.background and queued.usage is None
    done = client.responses.retrieve(queued.id)
    assert done.status == "completed" and wire(done.usage) == responses.usage("responses-fake-ok")
    other = client.responses.create(model="responses-fake-ok", input="hi", background=True)
    cancelled = client.responses.cancel(other.id)
    assert cancelled.status == "cancelled" and client.responses.retrieve(other.id).status == "cancelled"
    with pytest.raises(openai.BadRequestError, match="background=true"):
        client.responses.cancel(client.responses.create(model="responses-fake-ok", input="hi").id)


def test_models_retrieve_answers_for_the_fakes_models_only(fake_upstream):
    client = openai_sdk(fake_upstream)
    assert client.models.retrieve("responses-fake-ok").id == "responses-fake-ok"
    assert client.models.retrieve("fake-ok").owned_by == "fake"
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("gpt-unknown")
    assert caught.value.code == "model_not_found"


def test_an_abandoned_responses_fake_slow_stream_is_counted_as_cancelled(fake_upstream):
    before = fake_upstream.stats()["cancelled"]
    stream = openai_sdk(fake_upstream).responses.create(model="responses-fake-slow", input="hi", stream=True)
    for _ in range(8):
        next(iter(stream))
    stream.close()
    assert wait_for_cancelled(fake_upstream, before) == before + 1


async def test_an_agents_sdk_turn_on_the_default_responses_model(fake_upstream):
    fake_upstream.reset()
    client = openai.AsyncOpenAI(base_url=fake_upstream.url, api_key="sk-test", max_retries=0)
    agent = Agent(name="greeter", instructions="Greet.",
                  model=OpenAIResponsesModel(model="responses-fake-ok", openai_client=client))
    result = await Runner.run(agent, "hi", run_config=RunConfig(tracing_disabled=True))
    assert result.final_output == responses.REPLY
    usage = result.context_wrapper.usage
    assert (usage.requests, usage.input_tokens, usage.input_tokens_details.cached_tokens, usage.output_tokens,
            usage.output_tokens_details.reasoning_tokens, usage.total_tokens) == (
        1, responses.INPUT_TOKENS, responses.CACHED_TOKENS, responses.OUTPUT_TOKENS, responses.REASONING_TOKENS,
        responses.INPUT_TOKENS + responses.OUTPUT_TOKENS)
    assert fake_upstream.stats()["requests"] == {"/v1/responses": 1}  # one call, nothing else (no tracing)
    await client.close()
