"""End to end: the OpenAI Responses API through Payware with the official `openai` SDK and the
`openai-agents` SDK (whose default model uses the Responses API), against the fake provider."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
import urllib.request
from decimal import Decimal

import aiohttp
import openai
import pytest
from agents import Agent, OpenAIResponsesModel, RunConfig, Runner

from tests.conftest import ADMIN_KEY, KEYS, key_hash
from tests.fakes import responses_wire as fake

MODELS = "\n".join(f"  {name}: {{provider: fake, cost: {{input: \"1.00\", cached_input: \"0.50\", output: \"4.00\"}}}}"
                   for name in fake.SCENARIOS)
# By hand, from the fake's usage (21 input of which 8 cached, 9 output) at these prices, markup 1.25:
#   cost   = (13 x 1.00 + 8 x 0.50 + 9 x 4.00) / 1e6 = 53 / 1e6
#   amount = 0.000053 x 1.25 = 0.00006625
OK_AMOUNT = Decimal("0.00006625")


@pytest.fixture
def proxy(proxy_factory):
    return proxy_factory(extra_models=MODELS)


def client(proxy, key: str = KEYS["acme"]) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.url + "/v1", api_key=key, max_retries=0)


def events(proxy, customer: str = "acme") -> list[dict]:
    request = urllib.request.Request(proxy.url + f"/v1/usage/events?customer={customer}",
                                     headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    with urllib.request.urlopen(request) as resp:
        return [json.loads(line) for line in resp.read().splitlines() if line.strip()]


def summary(proxy) -> dict:
    request = urllib.request.Request(proxy.url + "/v1/usage/summary", headers={"Authorization": f"Bearer {KEYS['acme']}"})
    with urllib.request.urlopen(request) as resp:
        return json.loads(resp.read())


def test_a_response_is_relayed_and_billed_from_its_usage_at_once(proxy):
    response = client(proxy).responses.create(model="responses-fake-ok", input="hi")
    assert response.output_text == fake.REPLY
    now = summary(proxy)  # no wait: the call is in the summary the instant it returned
    assert (now["requests"], now["tokens"]["input"], now["tokens"]["cached_input"], now["tokens"]["output"],
            now["tokens"]["reasoning"]) == (1, fake.INPUT_TOKENS, fake.CACHED_TOKENS, fake.OUTPUT_TOKENS,
                                             fake.REASONING_TOKENS)
    assert Decimal(now["amount_due_exact"]) == OK_AMOUNT
    event, = events(proxy)
    assert event["endpoint"] == "responses" and event["meta"]["provider_id"] == response.id
    assert event["usage_source"] == {"input": "provider", "output": "provider"}


async def test_a_streamed_response_reaches_the_client_byte_for_byte_and_is_billed(proxy, fake_upstream):
    body = {"model": "responses-fake-ok", "input": "hi", "stream": True}
    async with aiohttp.ClientSession() as session:
        async with session.post(proxy.url + "/v1/responses", json=body,
                                headers={"Authorization": f"Bearer {KEYS['acme']}"}) as resp:
            received = await resp.read()
    rid = json.loads(received.split(b"\n")[1][6:])["response"]["id"]
    assert received == b"".join(fake.stream_bytes("responses-fake-ok", "responses-fake-ok", rid=rid))
    event, = events(proxy)
    assert (event["input_tokens"], event["output_tokens"], event["status"]) == (21, 9, "ok")


def test_the_sdks_stream_helper_sees_every_event_and_the_final_usage(proxy):
    with client(proxy).responses.stream(model="responses-fake-ok", input="hi") as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert final.usage.output_tokens == fake.OUTPUT_TOKENS
    assert len(events(proxy)) == 1


@pytest.mark.parametrize("scenario, status, output", [
    ("responses-fake-incomplete", "ok", fake.INCOMPLETE_OUTPUT_TOKENS),
    ("responses-fake-failed", "partial", fake.FAILED_OUTPUT_TOKENS),
])
def test_incomplete_and_failed_streams_are_billed_from_their_terminal_events_usage(proxy, scenario, status, output):
    for _ in client(proxy).responses.create(model=scenario, input="hi", stream=True):
        pass
    event, = events(proxy)
    assert (event["output_tokens"], event["status"], event["estimated"]) == (output, status, False)


def test_a_chained_call_is_billed_the_chain_and_reserved_for_it(proxy, fake_upstream):
    sdk = client(proxy)
    first = sdk.responses.create(model="responses-fake-ok", input="hi")
    second = sdk.responses.create(model="responses-fake-ok", input="and then?", previous_response_id=first.id)
    chain = fake.INPUT_TOKENS + fake.OUTPUT_TOKENS  # the provider bills the first response again
    assert second.usage.input_tokens == fake.INPUT_TOKENS + chain
    assert [e["input_tokens"] for e in events(proxy)] == [fake.INPUT_TOKENS, fake.INPUT_TOKENS + chain]


def test_another_customers_response_is_a_404_that_reaches_no_provider(proxy, fake_upstream):
    mine = client(proxy).responses.create(model="responses-fake-ok", input="hi")
    theirs = client(proxy, KEYS["globex"])
    fake_upstream.reset()
    with pytest.raises(openai.NotFoundError):
        theirs.responses.create(model="responses-fake-ok", input="x", previous_response_id=mine.id)
    with pytest.raises(openai.NotFoundError):
        theirs.responses.create(model="responses-fake-ok", input="x", previous_response_id="resp_never_seen")
    for call in (lambda: theirs.responses.retrieve(mine.id), lambda: theirs.responses.delete(mine.id),
                 lambda: theirs.responses.input_items.list(mine.id), lambda: theirs.responses.cancel(mine.id)):
        with pytest.raises(openai.NotFoundError):
            call()
    with pytest.raises(openai.NotFoundError):
        theirs.responses.create(model="responses-fake-ok", input="x", conversation="conv_abc")
    assert fake_upstream.stats()["requests"] == {}
    assert events(proxy, "globex") == []


def test_the_owner_reads_lists_and_deletes_its_response(proxy):
    sdk = client(proxy)
    made = sdk.responses.create(model="responses-fake-ok", input=[{"role": "user", "content": "hi"}])
    assert sdk.responses.retrieve(made.id).id == made.id
    assert [item.role for item in sdk.responses.input_items.list(made.id).data] == ["user"]
    assert sdk.responses.delete(made.id) is None  # the SDK returns nothing for a delete
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(made.id)  # disowned: Payware no longer forwards it
    assert len(events(proxy)) == 1  # reading, listing and deleting are not billed


def test_a_stored_responses_query_reaches_the_provider_whole_but_for_a_payware_key(proxy, fake_upstream):
    sdk = client(proxy)
    made = sdk.responses.create(model="responses-fake-ok", input=[{"role": "user", "content": "hi"}])
    fake_upstream.reset()
    query = "include=message.input_image.image_url&include=file_search_call.results&limit=5&key=" + KEYS["acme"]
    request = urllib.request.Request(f"{proxy.url}/v1/responses/{made.id}/input_items?{query}",
                                     headers={"Authorization": f"Bearer {KEYS['acme']}"})
    with urllib.request.urlopen(request) as resp:
        assert resp.status == 200
    (seen,) = fake_upstream.stats()["last"]
    assert seen["query"] == "include=message.input_image.image_url&include=file_search_call.results&limit=5"


def test_background_responses_are_refused_clearly(proxy, fake_upstream):
    fake_upstream.reset()
    with pytest.raises(openai.BadRequestError) as caught:
        client(proxy).responses.create(model="responses-fake-ok", input="hi", background=True)
    assert caught.value.body["param"] == "background"
    assert fake_upstream.stats()["requests"] == {}


def test_a_hard_cap_holds_for_a_chain_whose_context_the_body_does_not_show(proxy_factory, fake_upstream):
    """The worst case of a chained call includes the context the provider bills again."""
    customers = f"""
  acme: {{plan: payg, keys: ["{key_hash(KEYS['acme'])}"], cap: {{amount: "0.01", mode: hard}}}}
"""
    proxy = proxy_factory(extra_models=MODELS, customers=customers)
    from metering.store.events import UsageEvent, utcnow
    from metering.store.ledger import Ledger

    # A chain of $1.25 of context at these prices, billed in an earlier period: its event, as a
    # journal replayed into the ledger would bring it, makes acme its owner.
    ledger = Ledger(f"sqlite:///{proxy.config_path.parent}/ledger.db")
    assert ledger.insert([UsageEvent(
        id="req_long_chain", ts=utcnow(), customer="acme", key_id=None, metric="tokens", quantity=Decimal(1_000_000),
        period="2020-01-01T00:00:00+00:00", model="responses-fake-ok", provider="fake", endpoint="responses",
        input_tokens=999_000, output_tokens=1_000, meta={"provider_id": "resp_long_chain"})]) == 1
    ledger.close()
    sdk = client(proxy)
    fake_upstream.reset()
    with pytest.raises(openai.RateLimitError) as caught:
        sdk.responses.create(model="responses-fake-ok", input="hi", previous_response_id="resp_long_chain",
                             max_output_tokens=16)
    assert caught.value.code == "spend_cap_reached"
    assert fake_upstream.stats()["requests"] == {}
    assert sdk.responses.create(model="responses-fake-ok", input="hi", max_output_tokens=16).output_text


async def test_an_abandoned_stream_is_cancelled_upstream_and_billed_for_what_was_generated(proxy, fake_upstream):
    before = fake_upstream.stats()["cancelled"]
    body = {"model": "responses-fake-slow", "input": "hi", "stream": True}
    async with aiohttp.ClientSession() as session:
        async with session.post(proxy.url + "/v1/responses", json=body,
                                headers={"Authorization": f"Bearer {KEYS['acme']}"}) as resp:
            seen = 0
            async for line in resp.content:
                seen += line.startswith(b"event: response.output_text.delta")
                if seen == 10:
                    break
    deadline = time.monotonic() + 10
    while fake_upstream.stats()["cancelled"] == before and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert fake_upstream.stats()["cancelled"] == before + 1
    for _ in range(100):
        found = events(proxy)
        if found:
            break
        await asyncio.sleep(0.05)
    event, = found
    assert event["status"] == "partial" and event["estimated"] is True
    assert 10 <= event["output_tokens"] < fake.SLOW_OUTPUT_TOKENS


def test_models_retrieve_answers_for_the_models_this_key_may_use(proxy):
    model = client(proxy).models.retrieve("responses-fake-ok")
    assert (model.id, model.object, model.owned_by) == ("responses-fake-ok", "model", "fake")
    with pytest.raises(openai.NotFoundError):
        client(proxy).models.retrieve("no-such-model")


async def test_an_agents_sdk_turn_through_payware_is_billed(proxy):
    sdk = openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key=KEYS["acme"], max_retries=0)
    agent = Agent(name="greeter", instructions="Greet.",
                  model=OpenAIResponsesModel(model="responses-fake-ok", openai_client=sdk))
    result = await Runner.run(agent, "hi", run_config=RunConfig(tracing_disabled=True))
    await sdk.close()
    assert result.final_output == fake.REPLY
    event, = events(proxy)
    assert (event["input_tokens"], event["output_tokens"], Decimal(event["amount"])) == (
        fake.INPUT_TOKENS, fake.OUTPUT_TOKENS, OK_AMOUNT)


def test_a_response_made_on_one_proxy_is_continued_at_once_on_another(proxy_factory, tmp_path, redis_url):
    """Proxies sharing counters share a ledger: the owner announces the response in Redis before
    its answer is sent, so the other proxy finds it although the owner's batch (30 s flush
    interval) is not written yet; an id nobody made is a 404 from one look in each."""
    import redis

    counters = redis_url.rsplit("/", 1)[0] + "/6"
    redis.Redis.from_url(counters).flushdb()
    ledger = f"sqlite:///{tmp_path}/shared.db"
    first, second = (proxy_factory(name=name, ledger=ledger, extra_models=MODELS,
                                   storage=f"  counters: {counters}\n  flush_interval: 30") for name in ("a", "b"))
    made = client(first).responses.create(model="responses-fake-ok", input="hi")
    after = client(second).responses.create(model="responses-fake-ok", input="and then?", previous_response_id=made.id)
    assert after.usage.input_tokens == 2 * fake.INPUT_TOKENS + fake.OUTPUT_TOKENS
    assert client(second).responses.retrieve(made.id).id == made.id
    with sqlite3.connect(f"{tmp_path}/shared.db") as db:  # found through Redis: no batch was written
        assert db.execute("SELECT count(*) FROM owned_objects").fetchone() == (0,)
    with pytest.raises(openai.NotFoundError):  # still the owner's only, on either proxy
        client(second, KEYS["globex"]).responses.retrieve(made.id)
    with pytest.raises(openai.NotFoundError):
        client(second).responses.retrieve("resp_never_made")
