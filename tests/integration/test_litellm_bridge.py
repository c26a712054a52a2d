"""Provider kind `litellm`: a model whose `upstream` is a litellm model string, called with the
official openai SDK through a real proxy process; litellm speaks Anthropic's wire to the fake
provider (`anthropic/claude-fake-…`), or OpenAI's (`openai/fake-…`). Billed from the provider's
reported usage, in the same token classes as the native Anthropic route; abandoned streams
cancelled upstream and billed partial; provider errors mapped; litellm never imported by a
proxy whose config has no litellm provider.

One proxy serves the module (starting one imports litellm: seconds); each test reads its own
events by its `X-Payware-Session`.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.parse
import urllib.request
import uuid
from decimal import Decimal

import aiohttp
import openai
import pytest

from metering.usage.normalized import anthropic_usage, usage_from_json
from tests.conftest import KEYS, ProxyProcess, free_port, modules_at_start_up, proxy_config, python_env
from tests.fakes import anthropic_wire as claude
from tests.fakes import upstream as fake

HI = [{"role": "user", "content": "hi"}]
PROVIDER_KEY = "sk-ant-litellm-provider-secret"
# Claude Sonnet's list prices: a different price for every class, so a token in the wrong class shows.
PRICES = '{input: "3.00", cached_input: "0.30", cache_write: "3.75", cache_write_1h: "6.00", output: "15.00"}'
OPENAI_PRICES = '{input: "0.15", cached_input: "0.075", output: "0.60"}'
SCENARIOS = ("ok", "cache", "thinking", "slow", "overloaded", "error-400", "error-midstream", "cut")
# The same hand-worked amounts as the native route's (tests/e2e/test_anthropic_sdk.py), payg markup 1.25:
#   claude-fake-ok:    (25 x 3.00 + 12 x 15.00) / 1e6 = 0.000255, x 1.25 = 0.00031875
#   claude-fake-cache: (9 x 3.00 + 2048 x 0.30 + 1024 x 3.75 + 512 x 6.00 + 12 x 15.00) / 1e6
#                      = 7733.40 / 1e6 = 0.0077334, x 1.25 = 0.00966675
AMOUNTS = {"claude-fake-ok": (Decimal("0.000255"), Decimal("0.00031875")),
           "claude-fake-cache": (Decimal("0.0077334"), Decimal("0.00966675"))}


def models(upstream_url: str) -> tuple[str, str]:
    """(extra providers, extra models) of the test config."""
    root = upstream_url.removesuffix("/v1")
    providers = (f'  lite: {{kind: litellm, base_url: "{root}", api_key: "{PROVIDER_KEY}"}}\n'
                 f'  lite-openai: {{kind: litellm, base_url: "{upstream_url}", api_key: "sk-litellm-openai-secret"}}\n'
                 f'  lite-down: {{kind: litellm, base_url: "http://127.0.0.1:{free_port()}", api_key: "{PROVIDER_KEY}"}}\n')
    lines = [f"  lite-{s}: {{provider: lite, upstream: anthropic/claude-fake-{s}, cost: {PRICES}}}" for s in SCENARIOS]
    lines += [f"  lite-down: {{provider: lite-down, upstream: anthropic/claude-fake-ok, cost: {PRICES}}}",
              f"  lite-gpt: {{provider: lite-openai, upstream: openai/fake-ok, cost: {OPENAI_PRICES}}}",
              f"  lite-gpt-no-usage: {{provider: lite-openai, upstream: openai/fake-no-usage, cost: {OPENAI_PRICES}}}",
              f"  lite-gpt-429: {{provider: lite-openai, upstream: openai/fake-error-429, cost: {OPENAI_PRICES}}}",
              '  lite-embed: {provider: lite-openai, upstream: openai/fake-ok, mode: embedding, cost: {input: "0.02"}}']
    return providers, "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def proxy(tmp_path_factory, fake_upstream):
    folder = tmp_path_factory.mktemp("litellm")
    providers, extra = models(fake_upstream.url)
    path = folder / "payware.yaml"
    path.write_text(proxy_config(fake_upstream.url, folder, extra_providers=providers, extra_models=extra))
    process = ProxyProcess(config_path=path, port=free_port(), log_path=folder / "proxy.log")
    process.start()
    yield process
    process.stop()


@pytest.fixture
def session() -> str:
    return "litellm-" + uuid.uuid4().hex[:12]


def client(proxy, session: str) -> openai.AsyncOpenAI:
    """The openai SDK as an app configures it: Payware's URL, the customer's Payware key."""
    return openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key=KEYS["acme"], max_retries=0,
                              default_headers={"X-Payware-Session": session})


def events(proxy, session: str, count: int = 1, timeout: float = 5.0) -> list[dict]:
    """This test's events, waiting up to `timeout` for `count` of them (an abandoned call's is
    recorded as the client leaves, not before the client sees an answer)."""
    url = proxy.url + "/v1/usage/events?" + urllib.parse.urlencode({"session": session})
    deadline = time.monotonic() + timeout
    while True:
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {KEYS['acme']}"})
        with urllib.request.urlopen(request) as resp:
            found = [json.loads(line) for line in resp.read().splitlines() if line.strip()]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def classes(event: dict) -> tuple:
    return (event["input_tokens"], event["cached_input_tokens"], event["cache_write_tokens"],
            event["cache_write_1h_tokens"], event["output_tokens"], event["reasoning_tokens"])


def native(scenario: str) -> tuple:
    """The classes Payware's native Anthropic route bills for the fake's answer to `scenario`."""
    usage = anthropic_usage(claude.usage(scenario))
    return (usage.input_tokens, usage.cached_input_tokens, usage.cache_write_tokens, usage.cache_write_1h_tokens,
            usage.output_tokens, usage.reasoning_tokens)


async def post(proxy, path: str, body: dict, session: str) -> tuple[int, dict, bytes]:
    headers = {"Authorization": f"Bearer {KEYS['acme']}", "X-Payware-Session": session}
    async with aiohttp.ClientSession() as http:
        async with http.post(proxy.url + path, json=body, headers=headers) as resp:
            return resp.status, dict(resp.headers), await resp.read()


def wait_for_cancelled(fake_upstream, before: int, timeout: float = 5.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and fake_upstream.stats()["cancelled"] <= before:
        time.sleep(0.02)
    return fake_upstream.stats()["cancelled"]


# --- served and billed --------------------------------------------------------------------------

@pytest.mark.parametrize("scenario", ["claude-fake-ok", "claude-fake-cache", "claude-fake-thinking"])
async def test_a_litellm_model_answers_the_openai_sdk_and_is_billed_the_providers_usage(proxy, session, scenario):
    answer = await client(proxy, session).chat.completions.create(model=scenario.replace("claude-fake", "lite"),
                                                                  messages=HI)
    assert answer.choices[0].message.content == claude.REPLY
    assert answer.usage.prompt_tokens == native(scenario)[0]  # litellm's prompt_tokens: reads and writes in
    event, = events(proxy, session)  # no wait needed: recorded before the answer's last byte
    assert classes(event) == native(scenario)
    assert event["provider"] == "lite" and event["upstream_model"] == f"anthropic/{scenario}"
    assert event["status"] == "ok" and event["estimated"] is False and event["stream"] is False


@pytest.mark.parametrize("scenario", ["claude-fake-ok", "claude-fake-cache", "claude-fake-thinking"])
async def test_a_streamed_litellm_model_is_billed_the_providers_usage_and_hides_the_usage_chunk(
        proxy, session, scenario):
    stream = await client(proxy, session).chat.completions.create(
        model=scenario.replace("claude-fake", "lite"), messages=HI, stream=True)
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == claude.REPLY
    assert all(c.usage is None and c.choices for c in chunks)  # the client did not ask for usage
    event, = events(proxy, session)
    assert classes(event) == native(scenario)
    assert event["status"] == "ok" and event["estimated"] is False and event["stream"] is True


async def test_a_client_that_asks_for_usage_gets_litellms_usage_chunk(proxy, session):
    stream = await client(proxy, session).chat.completions.create(
        model="lite-cache", messages=HI, stream=True, stream_options={"include_usage": True})
    last = [chunk async for chunk in stream][-1]
    assert last.choices == [] and last.usage.prompt_tokens == 3593
    assert last.usage.prompt_tokens_details.cached_tokens == claude.CACHE_READ_TOKENS
    event, = events(proxy, session)
    assert classes(event) == native("claude-fake-cache")


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("scenario", ["claude-fake-ok", "claude-fake-cache"])
async def test_a_litellm_call_is_billed_its_hand_worked_amount(proxy, session, scenario, stream):
    sdk = client(proxy, session)
    answer = await sdk.chat.completions.create(model=scenario.replace("claude-fake", "lite"), messages=HI,
                                               stream=stream)
    if stream:
        [chunk async for chunk in answer]
    event, = events(proxy, session)
    assert (Decimal(event["cost"]), Decimal(event["amount"])) == AMOUNTS[scenario]


async def test_the_provider_gets_its_own_key_and_a_max_tokens_no_larger_than_the_reservation(
        proxy, session, fake_upstream):
    await client(proxy, session).chat.completions.create(model="lite-ok", messages=HI)
    last = [r for r in fake_upstream.stats()["last"] if r["path"] == "/v1/messages"][-1]
    assert last["headers"]["x-api-key"] == PROVIDER_KEY and KEYS["acme"] not in json.dumps(last)
    sent = json.loads(last["body"])
    assert sent["model"] == "claude-fake-ok" and sent["max_tokens"] == 4096  # admission's worst case


async def test_an_embedding_through_litellm_is_billed_the_providers_count(proxy, session):
    answer = await client(proxy, session).embeddings.create(model="lite-embed", input="hello")
    assert answer.data[0].embedding == [0.0, 1.0]
    event, = events(proxy, session)
    assert event["endpoint"] == "embeddings" and event["estimated"] is False
    assert event["input_tokens"] == answer.usage.prompt_tokens > 0 and event["output_tokens"] == 0


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_a_completion_through_litellm_is_billed_the_providers_usage(proxy, session, stream):
    answer = await client(proxy, session).completions.create(model="lite-gpt", prompt="hi", stream=stream)
    if stream:
        [chunk async for chunk in answer]
    event, = events(proxy, session)
    assert event["endpoint"] == "completions" and event["estimated"] is False
    assert (event["input_tokens"], event["cached_input_tokens"], event["output_tokens"]) == (13, 4, 7)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_usage_litellm_made_up_is_not_billed_as_the_providers(proxy, session, stream):
    # fake-no-usage reports none: litellm answers zeros (whole) or its own count (streamed);
    # Payware counts with tiktoken and says so, as for an OpenAI provider that reports nothing.
    answer = await client(proxy, session).chat.completions.create(model="lite-gpt-no-usage", messages=HI,
                                                                  stream=stream)
    if stream:
        [chunk async for chunk in answer]
    event, = events(proxy, session)
    assert event["estimated"] is True and event["usage_source"] == {"input": "tiktoken", "output": "tiktoken"}
    assert event["input_tokens"] > 0 and event["output_tokens"] > 0


# --- abandoned and broken streams ---------------------------------------------------------------

async def test_an_abandoned_stream_is_cancelled_upstream_and_billed_partial(proxy, session, fake_upstream):
    before = fake_upstream.stats()["cancelled"]
    stream = await client(proxy, session).chat.completions.create(model="lite-slow", messages=HI, stream=True)
    seen = 0
    async for chunk in stream:
        seen += 1
        if seen == 5:
            break
    await stream.close()
    assert wait_for_cancelled(fake_upstream, before) == before + 1  # litellm's call to the provider stopped
    event, = events(proxy, session)
    assert event["status"] == "partial" and event["estimated"] is True
    assert 4 <= event["output_tokens"] < claude.SLOW_OUTPUT_TOKENS  # the deltas relayed before the client left


@pytest.mark.parametrize("model", ["lite-error-midstream", "lite-cut"])
async def test_a_stream_the_provider_breaks_off_ends_with_an_error_and_is_billed_partial(proxy, session, model):
    status, _, received = await post(proxy, "/v1/chat/completions",
                                     {"model": model, "messages": HI, "stream": True}, session)
    assert status == 200
    frames = [json.loads(line[6:]) for line in received.decode().split("\n\n") if line.startswith("data: {")]
    assert "".join(f["choices"][0]["delta"].get("content") or "" for f in frames if f.get("choices")) == "Hello from"
    assert "error" in frames[-1] and not received.endswith(b"data: [DONE]\n\n")
    assert PROVIDER_KEY not in received.decode()
    event, = events(proxy, session)
    assert event["status"] == "partial" and event["estimated"] is True and event["output_tokens"] == 2


# --- errors -------------------------------------------------------------------------------------

@pytest.mark.parametrize("model, stream, status, kind, message", [
    ("lite-overloaded", False, 529, "overloaded_error", "Overloaded"),
    ("lite-overloaded", True, 529, "overloaded_error", "Overloaded"),
    ("lite-error-400", False, 400, "invalid_request_error", "max_tokens: Field required"),
    ("lite-error-400", True, 400, "invalid_request_error", "max_tokens: Field required"),
    ("lite-gpt-429", False, 429, "requests", "Rate limit reached for requests. Please try again in 1s."),
    ("lite-down", False, 502, "upstream_error", "could not reach provider 'lite-down': ConnectError"),
    ("lite-down", True, 502, "upstream_error", "could not reach provider 'lite-down': ConnectError"),
])
async def test_a_provider_error_keeps_its_status_in_openais_envelope_and_bills_nothing(
        proxy, session, model, stream, status, kind, message):
    with pytest.raises(openai.APIStatusError) as raised:
        answer = await client(proxy, session).chat.completions.create(model=model, messages=HI, stream=stream)
        [chunk async for chunk in answer]
    error = raised.value
    assert error.status_code == status
    assert error.body["type"] == kind and error.body["message"] == message
    assert PROVIDER_KEY not in json.dumps(error.body)
    if status == 429:
        assert error.response.headers["retry-after"] == "1"  # the provider's advice, relayed
    assert events(proxy, session, timeout=0.3) == []


async def test_a_field_litellm_would_take_as_its_own_setting_is_refused_before_any_provider_call(
        proxy, session, fake_upstream):
    before = fake_upstream.stats()["requests"].get("/v1/messages", 0)
    for field, value in [("api_base", "http://attacker.example"), ("extra_headers", {"x": "y"}),
                         ("mock_response", "free")]:
        status, _, body = await post(proxy, "/v1/chat/completions",
                                     {"model": "lite-ok", "messages": HI, field: value}, session)
        assert status == 400 and json.loads(body)["error"]["param"] == field
    assert fake_upstream.stats()["requests"].get("/v1/messages", 0) == before
    assert events(proxy, session, timeout=0.3) == []


# --- litellm's exceptions, mapped (the bridge in this process, no provider) ----------------------

@pytest.fixture(scope="module")
def bridge():
    from config.schema import ServerConfig
    from proxy.providers.litellm_bridge import LitellmBridge, import_litellm

    return LitellmBridge(litellm=import_litellm(), server=ServerConfig())


def _status_response(status: int):
    import httpx

    return httpx.Response(status, request=httpx.Request("POST", "https://provider.example/v1/messages"))


@pytest.mark.parametrize("make, status, kind", [
    (lambda m: m.AuthenticationError(f"invalid x-api-key {PROVIDER_KEY}", "anthropic", "m"), 401,
     "authentication_error"),
    (lambda m: m.PermissionDeniedError("denied", "anthropic", "m", response=_status_response(403)), 403,
     "permission_error"),
    (lambda m: m.NotFoundError("no such model", "m", "anthropic"), 404, "not_found_error"),
    (lambda m: m.RateLimitError("slow down", "anthropic", "m"), 429, "rate_limit_error"),
    (lambda m: m.ContextWindowExceededError("too long", "m", "anthropic"), 400, "invalid_request_error"),
    (lambda m: m.ServiceUnavailableError("down", "anthropic", "m"), 503, "upstream_error"),
    (lambda m: m.Timeout("timed out", "m", "anthropic"), 504, "upstream_error"),
    (lambda m: m.APIConnectionError("connection reset", "anthropic", "m"), 502, "upstream_error"),
], ids=["401", "403", "404", "429", "400", "503", "timeout", "connection"])
async def test_litellms_exceptions_become_the_providers_status_or_a_502_504(bridge, make, status, kind):
    from config.schema import ProviderConfig, Secret
    from proxy.errors import ApiError

    provider = ProviderConfig(name="lite", kind="litellm", base_url=None, api_key=Secret(PROVIDER_KEY))
    try:
        answer = bridge._failure(make(bridge._litellm), provider)
    except ApiError as raised:  # unreachable or timed out: rendered by the error middleware, as over HTTP
        assert (raised.status, raised.type) == (status, kind)
        return
    body = json.loads(await answer.read())
    assert (answer.status, body["error"]["type"]) == (status, kind)
    assert PROVIDER_KEY not in body["error"]["message"]


# --- litellm's usage convention, read as Payware reads it ----------------------------------------

def test_litellms_usage_for_an_anthropic_answer_has_the_native_routes_token_classes():
    # litellm's usage for claude-fake-cache, as its stream's usage chunk and model_dump() give it
    # (litellm 1.110.2, AnthropicConfig.calculate_usage): prompt_tokens counts cache reads and writes.
    litellm_usage = {
        "completion_tokens": 12, "prompt_tokens": 3593, "total_tokens": 3605,
        "completion_tokens_details": {"reasoning_tokens": 0, "text_tokens": 12},
        "prompt_tokens_details": {"cache_write_tokens": 1536, "cached_tokens": 2048, "text_tokens": 9,
                                  "cache_creation_tokens": 1536, "cache_creation_token_details": {
                                      "ephemeral_5m_input_tokens": 1024, "ephemeral_1h_input_tokens": 512}},
        "cache_creation_input_tokens": 1536, "cache_read_input_tokens": 2048}
    usage = usage_from_json({"usage": litellm_usage})
    assert (usage.input_tokens, usage.cached_input_tokens, usage.cache_write_tokens, usage.cache_write_1h_tokens,
            usage.output_tokens, usage.reasoning_tokens) == native("claude-fake-cache")


# --- start-up -----------------------------------------------------------------------------------

@pytest.mark.parametrize("with_litellm", [False, True], ids=["no-litellm-provider", "a-litellm-provider"])
def test_litellm_is_imported_at_start_up_only_when_a_provider_needs_it(tmp_path, fake_upstream, with_litellm):
    providers, extra = models(fake_upstream.url) if with_litellm else ("", "")
    path = tmp_path / "payware.yaml"
    path.write_text(proxy_config(fake_upstream.url, tmp_path, extra_providers=providers, extra_models=extra))
    env = {k: v for k, v in python_env().items() if k != "LITELLM_LOCAL_MODEL_COST_MAP"}
    loaded = modules_at_start_up(path, "litellm", env)
    assert (loaded > 0) is with_litellm, f"{loaded} litellm modules in a proxy whose config has " \
                                         f"{'a' if with_litellm else 'no'} litellm provider"
