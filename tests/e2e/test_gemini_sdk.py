"""End to end: the official `google-genai` SDK as the client of Payware's Gemini routes, a real
proxy process, the fake Gemini provider (tests/fakes/gemini_wire.py, and gemini_extra.py for a
prompt above 200k tokens and a plain-text error)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from decimal import Decimal

import aiohttp
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types

from metering.usage.tokens import count_text
from tests.conftest import KEYS, ROOT, key_hash, python_env
from tests.fakes import gemini_extra as extra
from tests.fakes import gemini_wire as fake

PROVIDER_KEY = "AIza-real-provider-secret-0123456789"  # tests/conftest.py's fake-gemini provider
PRICE = '{input: "1.25", cached_input: "0.31", output: "10.00"}'
# Gemini 2.5 Pro's shape: other prices for the whole call when its prompt is above 200k tokens
LONG_PRICE = ('{input: "1.25", cached_input: "0.31", output: "10.00", '
              'above: {"200000": {input: "2.50", cached_input: "0.625", output: "15.00"}}}')
MODELS = "\n".join(f"  {name}: {{provider: fake-gemini, cost: {PRICE}}}" for name in fake.SCENARIOS) + f"""
  my-gemini: {{provider: fake-gemini, upstream: gemini-fake-ok, cost: {PRICE}}}
  gemini-fake-long: {{provider: fake-gemini-extra, cost: {LONG_PRICE}}}
  gemini-fake-error-text: {{provider: fake-gemini-extra, cost: {PRICE}}}
  gemini-echo: {{provider: echo, cost: {PRICE}}}
"""
VERSIONS = ["v1", "v1beta"]  # v1: google-genai's default; v1beta: Google's docs and older SDKs
HI = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}

# Worked out by hand (plan payg: markup 1.25; the models' prices per 1M tokens: input 1.25,
# cached input 0.31, output 10.00).
# gemini-fake-ok: prompt 11, candidates 9.
#   cost   = (11 x 1.25 + 9 x 10.00) / 1e6 = (13.75 + 90) / 1e6 = 0.00010375
#   amount = 0.00010375 x 1.25 = 0.0001296875
OK_COST, OK_AMOUNT = Decimal("0.00010375"), Decimal("0.0001296875")
# gemini-fake-cached-thoughts: promptTokenCount 1200 of which cachedContentTokenCount 1024,
# toolUsePromptTokenCount 50, candidatesTokenCount 30, thoughtsTokenCount 200.
#   input  = 1200 + 50 = 1250, of which 1024 cached: 226 at the input price
#   output = 30 + 200 = 230 (200 of them reasoning)
#   cost   = (226 x 1.25 + 1024 x 0.31 + 230 x 10.00) / 1e6 = (282.5 + 317.44 + 2300) / 1e6
#          = 2899.94 / 1e6 = 0.00289994
#   amount = 0.00289994 x 1.25 = 0.003624925
CACHED_COST, CACHED_AMOUNT = Decimal("0.00289994"), Decimal("0.003624925")
# gemini-fake-long: promptTokenCount 250000 (above 200000, so the `above` prices: input 2.50,
# cached 0.625, output 15.00) of which 200000 cached, candidates 500, thoughts 1500.
#   cost   = (50000 x 2.50 + 200000 x 0.625 + 2000 x 15.00) / 1e6 = (125000 + 125000 + 30000) / 1e6 = 0.28
#   amount = 0.28 x 1.25 = 0.35
#   (at the prices below the threshold it would be (62500 + 62000 + 20000) / 1e6 x 1.25 = 0.180625)
LONG_COST, LONG_AMOUNT = Decimal("0.28"), Decimal("0.35")

TOKENS = {  # what the summary must hold after one call of each scenario
    "gemini-fake-ok": {"input": 11, "cached_input": 0, "cache_write": 0, "cache_write_1h": 0, "output": 9,
                       "reasoning": 0, "total": 20},
    "gemini-fake-cached-thoughts": {"input": 1250, "cached_input": 1024, "cache_write": 0, "cache_write_1h": 0,
                                    "output": 230, "reasoning": 200, "total": 1480},
}
AMOUNTS = {"gemini-fake-ok": (OK_COST, OK_AMOUNT), "gemini-fake-cached-thoughts": (CACHED_COST, CACHED_AMOUNT)}


@pytest.fixture(scope="module")
def gemini_extra() -> Iterator[str]:
    proc = subprocess.Popen([sys.executable, "-m", "tests.fakes.gemini_extra", "--port", "0"], cwd=ROOT,
                            env=python_env(), stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    if not line.startswith("LISTENING "):
        proc.kill()
        raise RuntimeError(f"gemini_extra did not start: {line!r}")
    yield line.split()[1]
    proc.terminate()
    proc.wait(10)


def make_proxy(proxy_factory, gemini_extra, **kwargs):
    providers = (f'  fake-gemini-extra: {{kind: gemini, base_url: "{gemini_extra}", api_key: "AIza-extra-secret"}}\n'
                 "  echo: {kind: echo}\n")
    return proxy_factory(extra_models=MODELS, extra_providers=providers, **kwargs)


@pytest.fixture
def proxy(proxy_factory, gemini_extra, fake_upstream):
    fake_upstream.reset()
    return make_proxy(proxy_factory, gemini_extra)


def sdk(proxy, version: str | None = None, key: str = KEYS["acme"]) -> genai.Client:
    # NOTE: keep the client referenced during a call (a collected Client closes its connection pool)
    return genai.Client(api_key=key, http_options=genai_types.HttpOptions(base_url=proxy.url, api_version=version))


def get_json(url: str, key: str = KEYS["acme"]) -> dict:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(request) as resp:
        return json.loads(resp.read())


def summary(proxy) -> dict:
    return get_json(proxy.url + "/v1/usage/summary")


def events(proxy) -> list[dict]:
    request = urllib.request.Request(proxy.url + "/v1/usage/events",
                                     headers={"Authorization": f"Bearer {KEYS['acme']}"})
    with urllib.request.urlopen(request) as resp:
        return [json.loads(line) for line in resp.read().splitlines() if line.strip()]


def wire_usage(response) -> dict:
    return response.usage_metadata.model_dump(mode="json", exclude_none=True, by_alias=True)


def event_tokens(event: dict) -> tuple[int, int, int, int]:
    return event["input_tokens"], event["cached_input_tokens"], event["output_tokens"], event["reasoning_tokens"]


def assert_billed_exactly(proxy, scenario: str, stream: bool) -> dict:
    """The summary, read the instant the call returned, and the one event, hold the provider's
    tokens of every class and the hand-worked amount."""
    now = summary(proxy)  # no wait, no flush: the call is counted before its last byte was sent
    assert now["requests"] == 1 and now["tokens"] == TOKENS[scenario]
    cost, amount = AMOUNTS[scenario]
    assert Decimal(now["amount_due_exact"]) == amount
    (event,) = events(proxy)
    tokens = TOKENS[scenario]
    assert event_tokens(event) == (tokens["input"], tokens["cached_input"], tokens["output"], tokens["reasoning"])
    assert (Decimal(event["cost"]), Decimal(event["amount"])) == (cost, amount)
    assert (event["status"], event["estimated"], event["stream"], event["endpoint"]) == ("ok", False, stream,
                                                                                         "generate")
    assert event["model"] == event["upstream_model"] == scenario and event["provider"] == "fake-gemini"
    assert event["raw_usage"] == fake.usage_metadata(scenario)
    assert event["meta"]["provider_id"] == fake.RESPONSE_ID  # the provider's responseId, as evidence
    return event


async def post_raw(url: str, body: dict, headers: dict | None = None) -> tuple[int, dict, bytes]:
    async with aiohttp.ClientSession() as session:
        async with session.post(url, json=body, headers=headers) as resp:
            return resp.status, dict(resp.headers), await resp.read()


# --- metered calls --------------------------------------------------------------------------------

@pytest.mark.parametrize("scenario", ["gemini-fake-ok", "gemini-fake-cached-thoughts"])
@pytest.mark.parametrize("version", VERSIONS)
def test_generate_content_returns_the_provider_answer_and_bills_it_at_once(proxy, fake_upstream, version, scenario):
    client = sdk(proxy, version)
    response = client.models.generate_content(model=scenario, contents="hi")
    assert response.model_dump(mode="json", exclude_none=True, by_alias=True)["candidates"] == \
        fake.response_body(scenario, scenario)["candidates"]
    assert wire_usage(response) == fake.usage_metadata(scenario) and response.response_id == fake.RESPONSE_ID
    assert_billed_exactly(proxy, scenario, stream=False)
    (last,) = fake_upstream.stats()["last"]
    assert last["path"] == f"/{version}/models/{scenario}:generateContent"  # the version the client called


@pytest.mark.parametrize("scenario", ["gemini-fake-ok", "gemini-fake-cached-thoughts"])
@pytest.mark.parametrize("version", VERSIONS)
def test_generate_content_stream_delivers_every_chunk_and_bills_the_last_usage(proxy, fake_upstream, version,
                                                                               scenario):
    client = sdk(proxy, version)
    chunks = list(client.models.generate_content_stream(model=scenario, contents="hi"))
    expected = fake.chunks(scenario, scenario)
    assert [c.model_dump(mode="json", exclude_none=True, by_alias=True)["candidates"] for c in chunks] == \
        [c["candidates"] for c in expected]
    assert wire_usage(chunks[-1]) == fake.usage_metadata(scenario)
    assert_billed_exactly(proxy, scenario, stream=True)
    (last,) = fake_upstream.stats()["last"]
    assert (last["path"], last["query"]) == (f"/{version}/models/{scenario}:streamGenerateContent", "alt=sse")


@pytest.mark.parametrize("scenario", ["gemini-fake-ok", "gemini-fake-cached-thoughts", "gemini-fake-blocked"])
@pytest.mark.parametrize("version", VERSIONS)
async def test_the_client_gets_the_provider_bytes_exactly(proxy, fake_upstream, version, scenario):
    base = f"{proxy.url}/{version}/models/{scenario}"
    status, headers, streamed = await post_raw(f"{base}:streamGenerateContent?alt=sse", HI,
                                               {"x-goog-api-key": KEYS["acme"]})
    assert status == 200 and headers["Content-Type"] == "text/event-stream"
    assert streamed == b"".join(fake.stream_bytes(scenario, scenario))
    status, headers, whole = await post_raw(f"{base}:generateContent", HI, {"x-goog-api-key": KEYS["acme"]})
    assert status == 200 and whole == fake.pretty(fake.response_body(scenario, scenario))
    assert headers["X-Payware-Request-Id"].startswith("req_")
    assert [e["stream"] for e in events(proxy)] == [True, False]


async def test_the_payware_key_in_the_query_authenticates_and_never_reaches_the_provider(proxy, fake_upstream):
    url = f"{proxy.url}/v1beta/models/gemini-fake-ok:streamGenerateContent?alt=sse&key={KEYS['acme']}"
    raw = json.dumps(HI, separators=(",", ":"))
    async with aiohttp.ClientSession() as session:
        async with session.post(url, data=raw, headers={"Content-Type": "application/json"}) as resp:
            assert resp.status == 200 and await resp.read() == b"".join(fake.stream_bytes("gemini-fake-ok",
                                                                                         "gemini-fake-ok"))
    (last,) = fake_upstream.stats()["last"]
    assert last["query"] == "alt=sse" and last["body"] == raw  # the client's own bytes
    assert last["headers"]["x-goog-api-key"] == PROVIDER_KEY and KEYS["acme"] not in json.dumps(last)
    assert summary(proxy)["tokens"]["total"] == 20


def test_a_renamed_model_goes_upstream_under_its_provider_name(proxy, fake_upstream):
    client = sdk(proxy)
    response = client.models.generate_content(model="my-gemini", contents="hi")
    assert response.model_version == "gemini-fake-ok"
    assert fake_upstream.stats()["last"][-1]["path"] == "/v1/models/gemini-fake-ok:generateContent"
    (event,) = events(proxy)
    assert (event["model"], event["upstream_model"]) == ("my-gemini", "gemini-fake-ok")


@pytest.mark.parametrize("stream", [False, True])
def test_a_prompt_the_provider_blocks_is_billed_as_it_reports(proxy, stream):
    client = sdk(proxy)
    if stream:
        (response,) = list(client.models.generate_content_stream(model="gemini-fake-blocked", contents="hi"))
    else:
        response = client.models.generate_content(model="gemini-fake-blocked", contents="hi")
    assert response.prompt_feedback.block_reason == "SAFETY" and not response.candidates
    (event,) = events(proxy)
    assert event_tokens(event) == (fake.BLOCKED_PROMPT_TOKENS, 0, 0, 0) and event["status"] == "ok"
    # 8 x 1.25 / 1e6 x 1.25 = 0.0000125
    assert Decimal(event["amount"]) == Decimal("0.0000125") == Decimal(summary(proxy)["amount_due_exact"])


async def test_a_stream_without_alt_sse_is_relayed_whole_and_billed(proxy, fake_upstream):
    url = f"{proxy.url}/v1beta/models/gemini-fake-cached-thoughts:streamGenerateContent"
    status, _, body = await post_raw(url, HI, {"x-goog-api-key": KEYS["acme"]})
    assert status == 200 and body == fake.pretty(fake.chunks("gemini-fake-cached-thoughts",
                                                             "gemini-fake-cached-thoughts"))
    assert fake_upstream.stats()["last"][-1]["query"] == ""
    (event,) = events(proxy)
    assert event_tokens(event) == (1250, 1024, 230, 200) and Decimal(event["amount"]) == CACHED_AMOUNT
    assert event["stream"] is False  # relayed as one body, when the provider ended it


@pytest.mark.parametrize("stream", [False, True])
def test_a_prompt_above_200k_tokens_is_billed_at_the_prices_above_the_threshold(proxy, stream):
    client = sdk(proxy, "v1beta")
    if stream:
        chunks = list(client.models.generate_content_stream(model="gemini-fake-long", contents="the contract"))
        usage = chunks[-1].usage_metadata
    else:
        usage = client.models.generate_content(model="gemini-fake-long", contents="the contract").usage_metadata
    assert usage.prompt_token_count == extra.LONG_PROMPT_TOKENS
    now = summary(proxy)
    assert Decimal(now["amount_due_exact"]) == LONG_AMOUNT
    assert now["tokens"]["input"] == 250_000 and now["tokens"]["cached_input"] == 200_000
    assert now["tokens"]["output"] == 2_000 and now["tokens"]["reasoning"] == 1_500
    (event,) = events(proxy)
    assert (Decimal(event["cost"]), Decimal(event["amount"])) == (LONG_COST, LONG_AMOUNT)
    assert event["pricing"]["long_prompt"] is True
    assert event["pricing"]["cost_per_million"] == {"cached_input": "0.625", "input": "2.5", "output": "15"}


def test_count_tokens_is_forwarded_and_not_billed(proxy, fake_upstream):
    for version in VERSIONS:
        client = sdk(proxy, version)
        result = client.models.count_tokens(model="gemini-fake-ok", contents="hi")
        assert result.total_tokens == fake.COUNT_TOKENS
        last = fake_upstream.stats()["last"][-1]
        assert last["path"] == f"/{version}/models/gemini-fake-ok:countTokens"
        assert last["headers"]["x-goog-api-key"] == PROVIDER_KEY
    assert summary(proxy)["requests"] == 0 and events(proxy) == []
    cap = get_json(proxy.url + "/v1/billing/cap")
    assert Decimal(cap.get("held") or 0) == 0


def test_an_abandoned_stream_is_cancelled_upstream_and_billed_partial(proxy, fake_upstream):
    before = fake_upstream.stats()["cancelled"]
    client = sdk(proxy)
    stream = client.models.generate_content_stream(model="gemini-fake-slow", contents="count")
    seen = [next(stream) for _ in range(5)]
    stream.close()  # the client walks away
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and fake_upstream.stats()["cancelled"] == before:
        time.sleep(0.02)
    assert fake_upstream.stats()["cancelled"] == before + 1  # the provider was stopped
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not events(proxy):
        time.sleep(0.05)
    (event,) = events(proxy)
    assert event["status"] == "partial" and event["stream"] is True
    assert event["input_tokens"] == fake.PROMPT_TOKENS
    # the provider's own running count, from the last chunk the proxy relayed
    assert len(seen) <= event["output_tokens"] < fake.SLOW_CANDIDATES_TOKENS
    assert event["raw_usage"]["candidatesTokenCount"] == event["output_tokens"]
    assert Decimal(event["amount"]) > 0


async def test_a_stream_the_provider_cuts_is_billed_partial_from_its_running_usage(proxy):
    url = f"{proxy.url}/v1beta/models/gemini-fake-cut:streamGenerateContent?alt=sse"
    status, _, body = await post_raw(url, HI, {"x-goog-api-key": KEYS["acme"]})
    assert status == 200 and body == b"".join(fake.stream_bytes("gemini-fake-cut", "gemini-fake-cut"))
    (event,) = events(proxy)
    assert event["status"] == "partial" and event_tokens(event) == (fake.PROMPT_TOKENS, 0, 6, 0)  # 2 + 4 so far


async def test_an_answer_the_provider_drops_is_a_502_in_googles_envelope_and_bills_nothing(proxy):
    url = f"{proxy.url}/v1beta/models/gemini-fake-cut:generateContent"
    status, _, body = await post_raw(url, HI, {"x-goog-api-key": KEYS["acme"]})
    error = json.loads(body)["error"]
    assert (status, error["code"], error["status"]) == (502, 502, "UNAVAILABLE")
    assert error["details"][0]["reason"] == "UPSTREAM_ERROR" and events(proxy) == []


@pytest.mark.parametrize("version", VERSIONS)
def test_the_echo_model_answers_gemini_calls_and_is_billed_its_usage(proxy, version):
    said = "Hello there, echo!"
    client = sdk(proxy, version)
    assert client.models.generate_content(model="gemini-echo", contents=said).text == said
    chunks = list(client.models.generate_content_stream(model="gemini-echo", contents=said))
    assert "".join(c.text for c in chunks) == said and chunks[-1].candidates[0].finish_reason == "STOP"
    n = count_text(said, "gpt-4o")  # the echo's tokenizer (o200k_base): the prompt and the reply alike
    assert [event_tokens(e) for e in events(proxy)] == [(n, 0, n, 0)] * 2
    # per call: (n x 1.25 + n x 10.00) / 1e6 x 1.25
    per_call = Decimal(n) * (Decimal("1.25") + Decimal("10.00")) / 10**6 * Decimal("1.25")
    assert Decimal(summary(proxy)["amount_due_exact"]) == 2 * per_call
    assert all(e["provider"] == "echo" and not e["estimated"] for e in events(proxy))


# --- refused calls --------------------------------------------------------------------------------

def test_a_spend_cap_refusal_comes_in_googles_envelope_and_reaches_no_provider(proxy_factory, gemini_extra,
                                                                              fake_upstream):
    customers = f"""
  acme: {{plan: payg, cap: {{amount: "0.000001", action: block, mode: hard}}, keys: ["{key_hash(KEYS['acme'])}"]}}
"""
    capped = make_proxy(proxy_factory, gemini_extra, customers=customers, name="capped")
    fake_upstream.reset()
    client = sdk(capped)
    for call in (lambda: client.models.generate_content(model="gemini-fake-ok", contents="hi"),
                 lambda: list(client.models.generate_content_stream(model="gemini-fake-ok", contents="hi"))):
        with pytest.raises(genai_errors.ClientError) as caught:
            call()
        error = caught.value
        assert (error.code, error.status) == (429, "RESOURCE_EXHAUSTED") and "spend cap" in error.message
        info = error.details["error"]["details"][0]
        assert (info["reason"], info["domain"]) == ("SPEND_CAP_REACHED", "payware")
        assert info["metadata"]["code"] == "spend_cap_reached"
    assert fake_upstream.stats()["requests"] == {}
    assert summary(capped)["requests"] == 0 and events(capped) == []
    # countTokens is not metered: a customer at the cap may still count
    assert client.models.count_tokens(model="gemini-fake-ok", contents="hi").total_tokens == fake.COUNT_TOKENS


@pytest.mark.parametrize("version", VERSIONS)
def test_a_bad_key_is_a_401_unauthenticated(proxy, fake_upstream, version):
    client = sdk(proxy, version, key="pw-not-a-key")
    for call in (lambda: client.models.generate_content(model="gemini-fake-ok", contents="hi"),
                 lambda: client.models.count_tokens(model="gemini-fake-ok", contents="hi")):
        with pytest.raises(genai_errors.ClientError) as caught:
            call()
        assert (caught.value.code, caught.value.status) == (401, "UNAUTHENTICATED")
        assert caught.value.details["error"]["details"][0]["reason"] == "INVALID_API_KEY"
    assert fake_upstream.stats()["requests"] == {} and events(proxy) == []


@pytest.mark.parametrize("call, code, status", [
    (lambda c: c.models.generate_content(model="no-such-model", contents="hi"), 404, "NOT_FOUND"),
    (lambda c: c.models.generate_content(model="fake-ok", contents="hi"), 400, "INVALID_ARGUMENT"),
    (lambda c: c.models.generate_content(
        model="gemini-fake-ok", contents="hi", config=genai_types.GenerateContentConfig(max_output_tokens=0)),
     400, "INVALID_ARGUMENT"),
    (lambda c: c.models.count_tokens(model="no-such-model", contents="hi"), 404, "NOT_FOUND"),
    (lambda c: c.models.embed_content(model="gemini-fake-ok", contents="hi"), 404, "NOT_FOUND"),
], ids=["unknown model", "an openai model", "maxOutputTokens 0", "count unknown model", "unserved method"])
def test_a_bad_request_is_refused_in_googles_envelope_before_the_provider(proxy, fake_upstream, call, code, status):
    client = sdk(proxy)
    with pytest.raises(genai_errors.ClientError) as caught:
        call(client)
    assert (caught.value.code, caught.value.status) == (code, status) and caught.value.message
    assert fake_upstream.stats()["requests"] == {} and events(proxy) == []


@pytest.mark.parametrize("scenario, error, body", [
    ("gemini-fake-error-400", genai_errors.ClientError, fake.ERROR_400),
    ("gemini-fake-overloaded", genai_errors.ServerError, fake.ERROR_503),
])
@pytest.mark.parametrize("stream", [False, True])
def test_a_provider_error_is_its_own_and_bills_nothing(proxy, scenario, error, body, stream):
    client = sdk(proxy)
    with pytest.raises(error) as caught:
        if stream:
            list(client.models.generate_content_stream(model=scenario, contents="hi"))
        else:
            client.models.generate_content(model=scenario, contents="hi")
    assert caught.value.details == body  # the provider's body, as it sent it
    assert summary(proxy)["requests"] == 0 and events(proxy) == []


def test_a_provider_error_that_is_not_json_is_wrapped_in_googles_envelope(proxy):
    client = sdk(proxy)
    with pytest.raises(genai_errors.ServerError) as caught:
        client.models.generate_content(model="gemini-fake-error-text", contents="hi")
    assert (caught.value.code, caught.value.status) == (502, "UNAVAILABLE")
    assert caught.value.message == f"provider 'fake-gemini-extra' answered 502: {extra.TEXT_ERROR}"
    assert "AIza" not in json.dumps(caught.value.details)
    assert events(proxy) == []
