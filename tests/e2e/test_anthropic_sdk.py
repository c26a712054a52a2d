"""End to end: the official `anthropic` SDK pointed at Payware (a real proxy process) and the fake
Anthropic provider behind it: `POST /v1/messages` streamed and not, `messages.stream`,
`count_tokens`, cache classes billed to the last digit, abandoned streams, refusals."""

from __future__ import annotations

import json
import time
import urllib.request
from decimal import Decimal

import aiohttp
import anthropic
import pytest
from anthropic._constants import ANTHROPIC_API_VERSION

from tests.conftest import KEYS, key_hash
from tests.fakes import anthropic_wire as claude

HI = [{"role": "user", "content": "hi"}]
CAPPED_KEY = "pw-test-capped-key"

# Claude Sonnet's list prices (USD per 1M tokens): a different price for every token class, so
# a token billed in the wrong class changes the amount.
PRICES = '{input: "3.00", cached_input: "0.30", cache_write: "3.75", cache_write_1h: "6.00", output: "15.00"}'
MODELS = "".join(f"  {name}: {{provider: fake-anthropic, cost: {PRICES}}}\n" for name in claude.SCENARIOS)
MODELS += f"  claude-renamed: {{provider: fake-anthropic, upstream: claude-fake-ok, cost: {PRICES}}}\n"
CUSTOMERS = f"""
  acme: {{plan: payg, keys: ["{key_hash(KEYS['acme'])}"]}}
  globex: {{plan: payg, keys: ["{key_hash(KEYS['globex'])}"]}}
  capped: {{plan: payg, cap: {{amount: "0.001", action: block, mode: hard}}, keys: ["{key_hash(CAPPED_KEY)}"]}}
"""

# claude-fake-ok by hand: 25 input tokens, 12 output, no cache; the payg plan's markup is 1.25.
#   cost   = (25 x 3.00 + 12 x 15.00) / 1e6 = (75 + 180) / 1e6 = 0.000255
#   amount = 0.000255 x 1.25 = 0.00031875
OK_COST, OK_AMOUNT = Decimal("0.000255"), Decimal("0.00031875")
# claude-fake-cache by hand. The fake reports input_tokens 9 (Anthropic's: the uncached part only),
# cache_read_input_tokens 2048, cache_creation_input_tokens 1536 = 1024 (5-minute) + 512 (1-hour),
# output_tokens 12. Payware's input is 9 + 2048 + 1536 = 3593, each token priced once, in its class:
#   uncached input   9    x  3.00 =    27.00
#   cache reads   2048    x  0.30 =   614.40
#   5-min writes  1024    x  3.75 =  3840.00
#   1-hour writes  512    x  6.00 =  3072.00
#   output          12    x 15.00 =   180.00
#                                   -------
#   cost   = 7733.40 / 1e6          = 0.0077334
#   amount = 0.0077334 x 1.25       = 0.00966675
CACHE_COST, CACHE_AMOUNT = Decimal("0.0077334"), Decimal("0.00966675")
CACHE_TOKENS = {"input": 3593, "cached_input": 2048, "cache_write": 1536, "cache_write_1h": 512, "output": 12,
                "reasoning": 0, "total": 3605}


@pytest.fixture
def proxy(proxy_factory, fake_upstream):
    fake_upstream.reset()
    return proxy_factory(extra_models=MODELS, customers=CUSTOMERS)


def sdk(proxy, key: str = KEYS["acme"], **kwargs) -> anthropic.Anthropic:
    """The SDK as an app would configure it: Payware's URL, the customer's Payware key."""
    return anthropic.Anthropic(base_url=proxy.url, api_key=key, max_retries=0, **kwargs)


def get_json(url: str, key: str = KEYS["acme"]) -> dict:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(request) as resp:
        return json.loads(resp.read())


def summary(proxy, key: str = KEYS["acme"]) -> dict:
    return get_json(proxy.url + "/v1/usage/summary", key)


def events(proxy, key: str = KEYS["acme"]) -> list[dict]:
    request = urllib.request.Request(proxy.url + "/v1/usage/events", headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(request) as resp:
        return [json.loads(line) for line in resp.read().splitlines() if line.strip()]


def event_tokens(event: dict) -> tuple:
    return (event["input_tokens"], event["cached_input_tokens"], event["cache_write_tokens"],
            event["cache_write_1h_tokens"], event["output_tokens"], event["reasoning_tokens"])


def provider_tokens(scenario: str) -> tuple:
    """What the fake reports for `scenario`, in Payware's classes (input counts reads and writes)."""
    usage = claude.usage(scenario)
    reads, writes = usage["cache_read_input_tokens"], usage["cache_creation_input_tokens"]
    thinking = usage.get("output_tokens_details", {}).get("thinking_tokens", 0)
    return (usage["input_tokens"] + reads + writes, reads, writes,
            usage["cache_creation"]["ephemeral_1h_input_tokens"], usage["output_tokens"], thinking)


def forwarded(fake_upstream, path: str = "/v1/messages") -> list[dict]:
    return [r for r in fake_upstream.stats()["last"] if r["path"] == path]


def lower(headers: dict) -> dict:
    return {name.lower(): value for name, value in headers.items()}


async def read_raw(url: str, body: dict, headers: dict) -> tuple[int, dict, bytes]:
    async with aiohttp.ClientSession() as session:
        async with session.post(url, json=body, headers=headers) as resp:
            return resp.status, dict(resp.headers), await resp.read()


# --- served and billed --------------------------------------------------------------------------

@pytest.mark.parametrize("scenario", ["claude-fake-ok", "claude-fake-cache", "claude-fake-thinking"])
def test_messages_create_returns_the_provider_message_and_bills_its_tokens_at_once(proxy, scenario):
    message = sdk(proxy).messages.create(model=scenario, max_tokens=64, messages=HI)
    assert message.model_dump(exclude_unset=True) == claude.message(scenario, scenario)
    event, = events(proxy)  # no wait: recorded before the answer's last byte
    assert event_tokens(event) == provider_tokens(scenario)
    assert event["endpoint"] == "messages" and event["provider"] == "fake-anthropic" and event["stream"] is False
    assert event["status"] == "ok" and event["estimated"] is False
    assert event["raw_usage"] == claude.usage(scenario)
    assert event["meta"]["provider_id"] == claude.MESSAGE_ID
    tokens = summary(proxy)["tokens"]
    assert (tokens["input"], tokens["cached_input"], tokens["cache_write"], tokens["cache_write_1h"],
            tokens["output"], tokens["reasoning"]) == provider_tokens(scenario)


@pytest.mark.parametrize("scenario", ["claude-fake-ok", "claude-fake-cache", "claude-fake-thinking",
                                      "claude-fake-packed"])
def test_a_streamed_message_reaches_the_sdk_as_the_provider_sent_it_and_is_billed(proxy, scenario):
    with sdk(proxy).messages.create(model=scenario, max_tokens=64, messages=HI, stream=True) as stream:
        kinds = [event.type for event in stream]
    sent = [piece.split(b"\n", 1)[0].removeprefix(b"event: ").strip().decode()
            for piece in claude.stream_events(scenario, scenario)]
    assert kinds == [kind for kind in sent if kind != "ping"]  # the SDK yields every event but pings
    event, = events(proxy)
    assert event_tokens(event) == provider_tokens(scenario)
    assert event["stream"] is True and event["status"] == "ok" and event["estimated"] is False
    assert event["raw_usage"] == claude.usage(scenario)  # message_start and message_delta, merged


@pytest.mark.parametrize("scenario", ["claude-fake-ok", "claude-fake-cache", "claude-fake-thinking",
                                      "claude-fake-packed"])
async def test_the_client_gets_the_provider_stream_byte_for_byte(proxy, scenario):
    status, headers, received = await read_raw(
        proxy.url + "/v1/messages", {"model": scenario, "max_tokens": 64, "messages": HI, "stream": True},
        {"x-api-key": KEYS["acme"], "anthropic-version": "2023-06-01"})
    assert status == 200 and headers["Content-Type"] == "text/event-stream; charset=utf-8"
    assert received == b"".join(claude.stream_bytes(scenario, scenario))
    assert headers["X-Payware-Request-Id"] == events(proxy)[0]["id"]


def test_messages_stream_gives_the_final_message_and_its_usage_is_billed(proxy):
    with sdk(proxy).messages.stream(model="claude-fake-thinking", max_tokens=2048, messages=HI,
                                    thinking={"type": "enabled", "budget_tokens": 1024}) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == claude.REPLY
    assert final.usage.model_dump(exclude_none=True) == claude.usage("claude-fake-thinking")
    event, = events(proxy)
    assert (event["input_tokens"], event["output_tokens"], event["reasoning_tokens"]) == (
        final.usage.input_tokens, final.usage.output_tokens, claude.THINKING_TOKENS)


def test_cache_reads_and_both_cache_writes_are_billed_to_the_last_digit(proxy):
    sdk(proxy).messages.create(model="claude-fake-cache", max_tokens=64, messages=HI)
    with sdk(proxy).messages.stream(model="claude-fake-cache", max_tokens=64, messages=HI) as stream:
        stream.until_done()
    for event in events(proxy):
        assert Decimal(event["cost"]) == CACHE_COST and Decimal(event["amount"]) == CACHE_AMOUNT
        assert event["pricing"]["cost_per_million"] == {"cached_input": "0.3", "cache_write": "3.75",
                                                        "cache_write_1h": "6", "input": "3", "output": "15"}
    now = summary(proxy)
    assert now["requests"] == 2
    assert now["tokens"] == {k: 2 * v for k, v in CACHE_TOKENS.items()}
    assert Decimal(now["amount_due_exact"]) == 2 * CACHE_AMOUNT


def test_a_plain_call_is_billed_its_hand_worked_amount(proxy):
    sdk(proxy).messages.create(model="claude-fake-ok", max_tokens=64, messages=HI)
    event, = events(proxy)
    assert Decimal(event["cost"]) == OK_COST and Decimal(event["amount"]) == OK_AMOUNT
    assert Decimal(summary(proxy)["amount_due_exact"]) == OK_AMOUNT


# --- keys and headers ---------------------------------------------------------------------------

def test_the_sdk_key_is_accepted_and_the_provider_gets_its_own_key_and_the_client_headers(proxy, fake_upstream):
    client = sdk(proxy, default_headers={"anthropic-beta": "context-1m-2025-08-07"})
    client.messages.create(model="claude-fake-ok", max_tokens=64, messages=HI)
    last, = forwarded(fake_upstream)
    headers = lower(last["headers"])
    assert headers["x-api-key"] == "sk-ant-real-provider-secret"
    assert "authorization" not in headers and KEYS["acme"] not in json.dumps(last)
    # the SDK's own (dated) version is relayed, not replaced by the default
    assert headers["anthropic-version"] == ANTHROPIC_API_VERSION != "2023-06-01"
    assert headers["anthropic-beta"] == "context-1m-2025-08-07"


async def test_a_raw_request_with_the_key_in_x_api_key_is_served(proxy, fake_upstream):
    body = {"model": "claude-fake-ok", "max_tokens": 64, "messages": HI}
    status, _, received = await read_raw(proxy.url + "/v1/messages", body, {"x-api-key": KEYS["acme"]})
    assert status == 200 and json.loads(received) == claude.message("claude-fake-ok", "claude-fake-ok")
    last, = forwarded(fake_upstream)
    assert lower(last["headers"])["anthropic-version"] == "2023-06-01"  # the default, for a client that sent none
    assert json.loads(last["body"]) == body
    assert event_tokens(events(proxy)[0]) == provider_tokens("claude-fake-ok")


def test_a_renamed_model_goes_upstream_under_its_provider_name(proxy, fake_upstream):
    message = sdk(proxy).messages.create(model="claude-renamed", max_tokens=64, messages=HI)
    assert message.content[0].text == claude.REPLY
    last, = forwarded(fake_upstream)
    assert json.loads(last["body"])["model"] == "claude-fake-ok"
    event, = events(proxy)
    assert (event["model"], event["upstream_model"]) == ("claude-renamed", "claude-fake-ok")


# --- count_tokens -------------------------------------------------------------------------------

def test_count_tokens_is_forwarded_and_not_billed(proxy, fake_upstream):
    count = sdk(proxy).messages.count_tokens(model="claude-fake-ok", messages=HI)
    assert count.input_tokens == claude.COUNT_TOKENS
    last, = forwarded(fake_upstream, "/v1/messages/count_tokens")
    assert lower(last["headers"])["x-api-key"] == "sk-ant-real-provider-secret"
    assert json.loads(last["body"]) == {"model": "claude-fake-ok", "messages": HI}
    assert events(proxy) == [] and summary(proxy)["requests"] == 0


def test_count_tokens_needs_a_payware_key_and_answers_in_anthropic_s_envelope(proxy, fake_upstream):
    with pytest.raises(anthropic.AuthenticationError) as info:
        sdk(proxy, key="pw-wrong").messages.count_tokens(model="claude-fake-ok", messages=HI)
    assert info.value.body["type"] == "error" and info.value.body["error"]["type"] == "authentication_error"
    with pytest.raises(anthropic.NotFoundError) as info:
        sdk(proxy).messages.count_tokens(model="no-such-model", messages=HI)
    assert info.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError) as info:
        sdk(proxy).messages.count_tokens(model="fake-ok", messages=HI)  # an OpenAI-kind model
    assert "does not speak anthropic.messages" in info.value.body["error"]["message"]
    assert forwarded(fake_upstream, "/v1/messages/count_tokens") == []


# --- abandoned and failed streams ---------------------------------------------------------------

def test_an_abandoned_stream_is_cancelled_upstream_and_billed_partial(proxy, fake_upstream):
    before = fake_upstream.stats()["cancelled"]
    seen = []
    with sdk(proxy).messages.stream(model="claude-fake-slow", max_tokens=1024, messages=HI) as stream:
        for piece in stream.text_stream:
            seen.append(piece)
            if len(seen) == 10:
                break  # the client walks away: leaving the block closes the connection
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and fake_upstream.stats()["cancelled"] == before:
        time.sleep(0.02)
    assert fake_upstream.stats()["cancelled"] == before + 1  # the provider was stopped
    event, = events(proxy)
    assert event["status"] == "partial" and event["estimated"] is True
    assert event["input_tokens"] == claude.INPUT_TOKENS  # message_start's, the provider's own count
    assert event["usage_source"] == {"input": "provider", "output": "tiktoken"}
    assert 10 <= event["output_tokens"] < claude.SLOW_OUTPUT_TOKENS  # the deltas seen, far from the whole
    assert Decimal(event["amount"]) > 0


async def test_an_error_mid_stream_is_relayed_and_billed_partial_for_what_was_generated(proxy):
    scenario = "claude-fake-error-midstream"
    status, _, received = await read_raw(
        proxy.url + "/v1/messages", {"model": scenario, "max_tokens": 64, "messages": HI, "stream": True},
        {"x-api-key": KEYS["acme"]})
    assert status == 200 and received == b"".join(claude.stream_bytes(scenario, scenario))
    event, = events(proxy)
    assert event["status"] == "partial" and event["estimated"] is True
    assert (event["input_tokens"], event["output_tokens"]) == (claude.INPUT_TOKENS, 2)  # "Hello", " from"


def test_the_sdk_raises_on_an_error_event_mid_stream(proxy):
    with pytest.raises(anthropic.APIStatusError) as info:
        with sdk(proxy).messages.stream(model="claude-fake-error-midstream", max_tokens=64, messages=HI) as stream:
            stream.until_done()
    assert info.value.body["error"]["type"] == "overloaded_error"


@pytest.mark.parametrize("scenario, error, status", [
    ("claude-fake-overloaded", anthropic.InternalServerError, 529),
    ("claude-fake-error-400", anthropic.BadRequestError, 400),
])
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_provider_errors_pass_through_as_sent_and_bill_nothing(proxy, scenario, error, status, stream):
    with pytest.raises(error) as info:
        sdk(proxy).messages.create(model=scenario, max_tokens=64, messages=HI, stream=stream)
    assert info.value.status_code == status
    expected = claude.OVERLOADED if status == 529 else claude.INVALID
    assert info.value.body == expected
    assert events(proxy) == [] and summary(proxy)["requests"] == 0


# --- refusals -----------------------------------------------------------------------------------

def test_a_spend_cap_refusal_is_a_typed_rate_limit_error_that_reaches_no_provider(proxy, fake_upstream):
    with pytest.raises(anthropic.RateLimitError) as info:
        sdk(proxy, CAPPED_KEY).messages.create(model="claude-fake-ok", max_tokens=1000, messages=HI)
    body = info.value.body
    assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"
    assert body["error"]["code"] == "spend_cap_reached" and "spend cap" in body["error"]["message"]
    assert info.value.response.headers["x-should-retry"] == "false"
    assert forwarded(fake_upstream) == []
    assert events(proxy, CAPPED_KEY) == [] and summary(proxy, CAPPED_KEY)["requests"] == 0
    # a call whose worst case fits under the same cap goes through
    sdk(proxy, CAPPED_KEY).messages.create(model="claude-fake-ok", max_tokens=8, messages=HI)
    assert summary(proxy, CAPPED_KEY)["requests"] == 1


def test_a_bad_key_is_a_typed_authentication_error(proxy, fake_upstream):
    with pytest.raises(anthropic.AuthenticationError) as info:
        sdk(proxy, key="pw-wrong").messages.create(model="claude-fake-ok", max_tokens=64, messages=HI)
    assert info.value.body == {"type": "error", "error": {
        "type": "authentication_error", "code": "invalid_api_key",
        "message": "Incorrect API key provided. Use a Payware key issued for this proxy."}}
    assert forwarded(fake_upstream) == [] and events(proxy) == []


@pytest.mark.parametrize("body, error, kind", [
    ({"model": "claude-fake-ok", "messages": HI}, anthropic.BadRequestError, "invalid_request_error"),
    ({"model": "claude-fake-ok", "messages": HI, "max_tokens": "64"}, anthropic.BadRequestError,
     "invalid_request_error"),
    ({"model": "no-such-model", "messages": HI, "max_tokens": 64}, anthropic.NotFoundError, "not_found_error"),
    ({"model": "fake-ok", "messages": HI, "max_tokens": 64}, anthropic.BadRequestError, "invalid_request_error"),
    ({"model": "claude-fake-ok", "messages": [{"role": "user", "content": "x" * 70_000}], "max_tokens": 64},
     anthropic.APIStatusError, "request_too_large"),
], ids=["no max_tokens", "max_tokens a string", "unknown model", "openai-kind model", "body too large"])
def test_bad_requests_are_refused_in_anthropic_s_envelope_before_the_provider(proxy, fake_upstream, body, error,
                                                                               kind):
    with pytest.raises(error) as info:
        sdk(proxy).post("/v1/messages", cast_to=object, body=body)
    assert info.value.body["type"] == "error" and info.value.body["error"]["type"] == kind
    assert forwarded(fake_upstream) == [] and events(proxy) == []


# --- the echo model -----------------------------------------------------------------------------

ECHO_MODELS = MODELS + f"  claude-echo: {{provider: echo, cost: {PRICES}}}\n"


@pytest.fixture
def echo_proxy(proxy_factory):
    return proxy_factory(extra_models=ECHO_MODELS, customers=CUSTOMERS, extra_providers="  echo: {kind: echo}\n",
                         name="echo")


def test_the_echo_model_answers_messages_streamed_and_not_and_is_billed_its_usage(echo_proxy):
    client = sdk(echo_proxy)
    said = [{"role": "user", "content": "Hello there, echo!"}]
    message = client.messages.create(model="claude-echo", max_tokens=64, messages=said)
    assert message.content[0].text == "Hello there, echo!" and message.stop_reason == "end_turn"
    with client.messages.stream(model="claude-echo", max_tokens=3, messages=said) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert "Hello there, echo!".startswith(text) and final.stop_reason == "max_tokens"
    count = client.messages.count_tokens(model="claude-echo", messages=said)
    assert count.input_tokens == message.usage.input_tokens == final.usage.input_tokens
    whole, streamed = sorted(events(echo_proxy), key=lambda e: e["stream"])
    assert (whole["input_tokens"], whole["output_tokens"]) == (message.usage.input_tokens,
                                                               message.usage.output_tokens)
    assert (streamed["input_tokens"], streamed["output_tokens"]) == (final.usage.input_tokens, 3)
    assert whole["estimated"] is streamed["estimated"] is False
