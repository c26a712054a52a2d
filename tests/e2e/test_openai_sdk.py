"""End to end: the official `openai` SDK as the client, a real proxy process, the fake provider."""

from __future__ import annotations

import json
import time
import urllib.request
from decimal import Decimal

import openai
import pytest

from tests.conftest import ADMIN_KEY, KEYS, free_port, proxy_config
from tests.fakes import upstream as fake

# Worked out by hand from the fake's usage (13 prompt of which 4 cached, 7 completion) and the
# test config's prices (per 1M: input 0.15, cached 0.075, output 0.60) with markup 1.25:
#   cost   = (9 x 0.15 + 4 x 0.075 + 7 x 0.60) / 1e6 = 5.85 / 1e6 = 0.00000585
#   amount = 0.00000585 x 1.25 = 0.0000073125
FAKE_OK_COST = Decimal("0.00000585")
FAKE_OK_AMOUNT = Decimal("0.0000073125")


def client(proxy, key: str = KEYS["acme"], **kwargs) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.url + "/v1", api_key=key, max_retries=0, **kwargs)


def get_json(url: str, key: str = KEYS["acme"]) -> dict:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(request) as resp:
        return json.loads(resp.read())


def summary(proxy, key: str = KEYS["acme"], customer: str | None = None) -> dict:
    suffix = f"?customer={customer}" if customer else ""
    return get_json(proxy.url + "/v1/usage/summary" + suffix, key)


def events(proxy, key: str = KEYS["acme"]) -> list[dict]:
    request = urllib.request.Request(proxy.url + "/v1/usage/events", headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(request) as resp:
        return [json.loads(line) for line in resp.read().splitlines() if line.strip()]


def test_non_streamed_chat_returns_exactly_the_provider_answer_and_bills_it_at_once(proxy):
    completion = client(proxy).chat.completions.create(
        model="fake-ok", messages=[{"role": "user", "content": "hi"}])
    assert completion.model_dump(exclude_unset=True) == fake.completion_body("fake-ok")
    now = summary(proxy)  # no wait: the summary includes the call the instant it returned
    assert now["requests"] == 1
    assert now["tokens"] == {"input": 13, "cached_input": 4, "cache_write": 0, "cache_write_1h": 0, "output": 7,
                             "reasoning": 2, "total": 20}
    assert Decimal(now["amount_due_exact"]) == FAKE_OK_AMOUNT
    assert now["amount_due"] == "0.00"  # rounded once, to the cent, for display


def test_streamed_chat_without_include_usage_hides_the_forced_usage_chunk_but_bills_it(proxy):
    chunks = list(client(proxy).chat.completions.create(
        model="fake-ok", messages=[{"role": "user", "content": "hi"}], stream=True))
    expected = [json.loads(e[6:]) for e in fake.stream_events("fake-ok", True, "fake-ok")[:-1]]
    expected = [c for c in expected if c["choices"]]  # what the client would see without usage
    assert [c.model_dump(exclude_unset=True) for c in chunks] == expected
    assert all(c.usage is None for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == fake.REPLY
    event, = events(proxy)
    assert (event["input_tokens"], event["cached_input_tokens"], event["output_tokens"],
            event["reasoning_tokens"]) == (13, 4, 7, 2)
    assert event["stream"] is True and event["estimated"] is False and event["status"] == "ok"
    assert Decimal(event["amount"]) == FAKE_OK_AMOUNT and Decimal(event["cost"]) == FAKE_OK_COST


def test_streamed_chat_with_include_usage_delivers_the_usage_chunk(proxy):
    chunks = list(client(proxy).chat.completions.create(
        model="fake-ok", messages=[{"role": "user", "content": "hi"}], stream=True,
        stream_options={"include_usage": True}))
    expected = [json.loads(e[6:]) for e in fake.stream_events("fake-ok", True, "fake-ok")[:-1]]
    assert [c.model_dump(exclude_unset=True) for c in chunks] == expected
    assert chunks[-1].usage.prompt_tokens == fake.PROMPT_TOKENS
    assert summary(proxy)["tokens"]["total"] == 20


def test_embeddings_are_forwarded_and_billed(proxy):
    result = client(proxy).embeddings.create(model="fake-embed", input=["a", "b"])
    assert len(result.data) == 2 and result.data[0].embedding == [0.0, 1.0]
    now = summary(proxy)
    assert now["tokens"]["input"] == fake.EMBEDDING_TOKENS
    # 5 tokens x 0.02 / 1e6 x 1.25
    assert Decimal(now["amount_due_exact"]) == Decimal(5) * Decimal("0.02") / Decimal(10**6) * Decimal("1.25")


def test_model_list_shows_the_models_this_key_may_use(proxy):
    names = {m.id for m in client(proxy).models.list()}
    assert {"fake-ok", "fake-embed", "renamed"} <= names


def test_completions_endpoint_is_metered(proxy):
    result = client(proxy).completions.create(model="fake-ok", prompt="Say hi")
    assert result.choices[0].text == fake.REPLY
    assert summary(proxy)["tokens"]["output"] == fake.COMPLETION_TOKENS


def test_an_abandoned_stream_is_cancelled_upstream_and_billed_as_partial(proxy, fake_upstream):
    cancelled_before = fake_upstream.stats()["cancelled"]
    stream = client(proxy).chat.completions.create(
        model="fake-slow", messages=[{"role": "user", "content": "count"}], stream=True)
    seen = []
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            seen.append(chunk.choices[0].delta.content)
        if len(seen) == 10:
            break
    stream.close()  # the client walks away
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and fake_upstream.stats()["cancelled"] == cancelled_before:
        time.sleep(0.05)
    assert fake_upstream.stats()["cancelled"] == cancelled_before + 1  # the provider was stopped
    deadline = time.monotonic() + 5  # the handler records the partial call as it unwinds
    while not (found := events(proxy)) and time.monotonic() < deadline:
        time.sleep(0.05)
    event, = found
    assert event["status"] == "partial" and event["estimated"] is True
    assert event["output_tokens"] >= 10  # at least the deltas the client saw
    assert event["output_tokens"] < 200  # far from the whole answer
    assert event["input_tokens"] > 0 and Decimal(event["amount"]) > 0


@pytest.mark.parametrize("make_call, status, code", [
    (lambda c: c.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}]),
     404, "model_not_found"),
    (lambda c: c.chat.completions.create(model="fake-ok", messages=[{"role": "user", "content": "x" * 70_000}]),
     413, "request_too_large"),
    (lambda c: c.chat.completions.create(model="fake-ok", messages=[], stream="yes"),
     400, None),
])
def test_bad_requests_get_the_documented_error_and_bill_nothing(proxy, make_call, status, code):
    with pytest.raises(openai.APIStatusError) as info:
        make_call(client(proxy))
    assert info.value.status_code == status
    assert info.value.body.get("code") == code and info.value.body.get("message")
    assert summary(proxy)["requests"] == 0 and events(proxy) == []


def test_a_bad_key_is_a_401_invalid_api_key(proxy):
    with pytest.raises(openai.AuthenticationError) as info:
        client(proxy, key="pw-wrong").chat.completions.create(model="fake-ok", messages=[])
    assert info.value.body["code"] == "invalid_api_key"


def test_bad_json_is_a_400_invalid_request(proxy):
    request = urllib.request.Request(proxy.url + "/v1/chat/completions", data=b"{not json", method="POST",
                                     headers={"Authorization": f"Bearer {KEYS['acme']}",
                                              "Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request)
    assert info.value.code == 400
    assert json.loads(info.value.read())["error"]["type"] == "invalid_request_error"
    assert summary(proxy)["requests"] == 0


@pytest.mark.parametrize("model, status", [
    ("fake-error-500-text", 500), ("fake-error-429", 429), ("fake-error-400", 400)])
def test_upstream_failures_pass_through_in_openai_envelope_and_record_nothing(proxy, model, status):
    with pytest.raises(openai.APIStatusError) as info:
        client(proxy).chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == status
    assert isinstance(info.value.body, dict) and info.value.body.get("message")
    assert "sk-real-provider-secret" not in json.dumps(info.value.body)
    assert events(proxy) == [] and summary(proxy)["requests"] == 0


def test_an_unreachable_provider_is_a_502_that_records_nothing(proxy_factory, tmp_path):
    folder = tmp_path / "dead"
    folder.mkdir()
    text = proxy_config(f"http://127.0.0.1:{free_port()}/v1", folder)
    proxy = proxy_factory(text, name="dead")
    with pytest.raises(openai.APIStatusError) as info:
        client(proxy).chat.completions.create(model="fake-ok", messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 502 and info.value.body["code"] == "upstream_error"
    assert events(proxy) == []


def test_a_customer_key_sees_only_its_own_usage_and_the_admin_sees_any(proxy):
    client(proxy).chat.completions.create(model="fake-ok", messages=[{"role": "user", "content": "hi"}])
    assert summary(proxy, KEYS["globex"])["requests"] == 0
    assert events(proxy, KEYS["globex"]) == []
    with pytest.raises(urllib.error.HTTPError) as info:
        summary(proxy, KEYS["globex"], customer="acme")
    assert info.value.code == 403
    assert summary(proxy, ADMIN_KEY, customer="acme")["requests"] == 1


def test_usage_metadata_from_headers_and_body_is_kept_on_the_event(proxy):
    client(proxy, default_headers={"X-Payware-Session": "sess-42", "X-Payware-Feature": "summarize",
                                   "X-Payware-Meta-Ticket": "T-9"}).chat.completions.create(
        model="fake-ok", messages=[{"role": "user", "content": "hi"}], user="end-user-7",
        metadata={"order": "o-1"}, store=True)
    event, = events(proxy)
    assert event["session"] == "sess-42" and event["feature"] == "summarize"
    assert event["meta"] == {"ticket": "T-9", "user": "end-user-7", "metadata": {"order": "o-1"}}
