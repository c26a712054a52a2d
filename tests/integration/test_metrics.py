"""`/metrics` against a real proxy: after a mixed load its counters equal the ledger.

The load: chat served (JSON and streamed, two models, one without usage from the provider),
an embedding, a spend-cap refusal, a rate-limit refusal, the provider's 500, a bad key and a
path nobody routes. Then the ledger (read directly, once the journal backlog that /metrics
shows is zero) and the scrape must agree: events and served requests by model, tokens by
class, amounts by model to the float's precision; the refusals and the upstream error counted.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from collections import Counter
from decimal import Decimal

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from metering.store.ledger import Ledger
from tests.conftest import ADMIN_KEY, KEYS, ROOT, ProxyProcess, free_port, key_hash, proxy_config, python_env

CAPPED_KEY, LIMITED_KEY = "pw-test-capped-key", "pw-test-limited-key"
CUSTOMERS = f"""
  acme: {{plan: payg, keys: ["{key_hash(KEYS['acme'])}"]}}
  capped: {{plan: payg, keys: ["{key_hash(CAPPED_KEY)}"], cap: {{amount: "0.000001", action: block, mode: hard}}}}
  limited: {{plan: payg, keys: ["{key_hash(LIMITED_KEY)}"], rate_limit: {{rpm: 1}}}}
"""
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
HELLO = [{"role": "user", "content": "hello metrics"}]
CLASSES = {"input": "input_tokens", "cached_input": "cached_input_tokens", "cache_write": "cache_write_tokens",
           "cache_write_1h": "cache_write_1h_tokens", "output": "output_tokens", "reasoning": "reasoning_tokens"}


def series(text: str, sample: str) -> dict[frozenset, float]:
    """Every sample named `sample` in a scrape, by its labels."""
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == sample:
                found[frozenset(s.labels.items())] = s.value
    return found


def total(text: str, sample: str, **match) -> float:
    """The sum of `sample` over the series whose labels include `match`."""
    return sum(v for labels, v in series(text, sample).items() if set(match.items()) <= labels)


async def scrape(url: str, headers: dict | None = None) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as session:
        async with session.get(url, headers=headers or {}) as resp:
            return resp.status, await resp.text(), resp.headers.get("Content-Type", "")


async def call(session: aiohttp.ClientSession, proxy, key: str, body: dict, path: str = "/v1/chat/completions") -> int:
    async with session.post(proxy.url + path, json=body, headers={"Authorization": f"Bearer {key}"}) as resp:
        await resp.read()
        return resp.status


async def mixed_load(proxy) -> dict[str, int]:
    acme = KEYS["acme"]
    async with aiohttp.ClientSession() as session:
        statuses = {
            "chat": [await call(session, proxy, acme, {"model": "fake-ok", "messages": HELLO}) for _ in range(3)],
            "stream": await call(session, proxy, acme, {"model": "fake-ok", "stream": True, "messages": HELLO}),
            "stream_usage": await call(session, proxy, acme, {"model": "fake-ok", "stream": True, "messages": HELLO,
                                                              "stream_options": {"include_usage": True}}),
            "renamed": await call(session, proxy, acme, {"model": "renamed", "messages": HELLO}),
            "no_usage": await call(session, proxy, acme, {"model": "fake-no-usage", "messages": HELLO}),
            "embedding": await call(session, proxy, acme, {"model": "fake-embed", "input": "hello"}, "/v1/embeddings"),
            "cap": await call(session, proxy, CAPPED_KEY, {"model": "fake-ok", "messages": HELLO}),
            "rate_first": await call(session, proxy, LIMITED_KEY, {"model": "fake-ok", "messages": HELLO}),
            "rate_second": await call(session, proxy, LIMITED_KEY, {"model": "fake-ok", "messages": HELLO}),
            "upstream_500": await call(session, proxy, acme, {"model": "fake-error-500-text", "messages": HELLO}),
            "bad_key": await call(session, proxy, "pw-not-a-key", {"model": "fake-ok", "messages": HELLO}),
        }
        async with session.get(proxy.url + "/no/such/path-xyz-user-input", headers=ADMIN) as resp:
            statuses["unrouted"] = resp.status
    return statuses


async def settled_scrape(url: str, headers: dict | None = None) -> str:
    """A scrape taken once the ledger holds every event (journal backlog zero)."""
    deadline = time.monotonic() + 10
    while True:
        status, text, _ = await scrape(url, headers)
        assert status == 200
        if total(text, "payware_journal_backlog_events") == 0 or time.monotonic() > deadline:
            return text
        await asyncio.sleep(0.05)


@pytest.fixture
def metrics_port() -> int:
    return free_port()


@pytest.fixture
def proxy(proxy_factory, metrics_port):
    return proxy_factory(customers=CUSTOMERS, server=f', metrics_listen: "127.0.0.1:{metrics_port}"')


async def test_after_a_mixed_load_the_counters_equal_the_ledger(proxy, metrics_port):
    statuses = await mixed_load(proxy)
    assert statuses == {"chat": [200, 200, 200], "stream": 200, "stream_usage": 200, "renamed": 200, "no_usage": 200,
                        "embedding": 200, "cap": 429, "rate_first": 200, "rate_second": 429, "upstream_500": 500,
                        "bad_key": 401, "unrouted": 404}
    text = await settled_scrape(proxy.url + "/metrics", ADMIN)
    ledger = Ledger(f"sqlite:///{proxy.config_path.parent}/ledger.db")
    try:
        events = list(ledger.events())
    finally:
        ledger.close()
    assert len(events) == 9  # every 200 above is one ledger row
    by_model = Counter(e.model for e in events)
    assert by_model == {"fake-ok": 6, "renamed": 1, "fake-no-usage": 1, "fake-embed": 1}

    for model, count in by_model.items():
        assert total(text, "payware_usage_events_total", model=model) == count
        assert total(text, "payware_requests_total", model=model, status="200") == count
        tokens = {name: sum(getattr(e, attr) for e in events if e.model == model) for name, attr in CLASSES.items()}
        for name, expected in tokens.items():
            assert total(text, "payware_tokens_total", model=model, **{"class": name}) == expected, (model, name)
        amount = sum((e.amount for e in events if e.model == model), Decimal(0))
        charged = (total(text, "payware_amount_total", model=model, currency="USD")
                   - total(text, "payware_credit_total", model=model, currency="USD"))
        assert charged == float(amount)  # exact sums in the proxy, one float conversion: bit for bit
    assert sum(by_model.values()) == total(text, "payware_usage_events_total")
    assert tokens_sum(text, "input") == sum(e.input_tokens for e in events) > 0
    assert tokens_sum(text, "cached_input") == sum(e.cached_input_tokens for e in events) > 0
    assert tokens_sum(text, "reasoning") == sum(e.reasoning_tokens for e in events) > 0

    assert total(text, "payware_refusals_total", reason="spend_cap_reached") == 1
    assert total(text, "payware_refusals_total", reason="rate_limit_exceeded") == 1
    assert series(text, "payware_upstream_errors_total") == {frozenset({("provider", "fake"), ("code", "500")}): 1}
    chat = "/v1/chat/completions"
    assert total(text, "payware_requests_total", route=chat, status="429") == 2
    assert total(text, "payware_requests_total", route=chat, status="500", model="fake-error-500-text") == 1
    assert total(text, "payware_requests_total", route=chat, status="401", model="") == 1
    assert total(text, "payware_requests_total", route="unmatched", status="404") == 1
    assert "xyz" not in text  # a raw path never becomes a label value
    # Every call that reached the provider has its two latencies: the 9 served and the 500.
    assert total(text, "payware_upstream_seconds_count", provider="fake") == 10
    assert total(text, "payware_proxy_added_seconds_count") == 10
    assert total(text, "payware_ledger_flush_lag_seconds") == 0
    assert total(text, "payware_counter_store_up") == 1
    assert total(text, "payware_counter_store_errors_total") == 0

    # The separate listener: the same registry, without auth.
    status, side, content_type = await scrape(f"http://127.0.0.1:{metrics_port}/metrics")
    assert status == 200 and content_type.startswith("text/plain")
    assert total(side, "payware_usage_events_total") == 9


def tokens_sum(text: str, name: str) -> float:
    return total(text, "payware_tokens_total", **{"class": name})


async def test_metrics_on_the_proxy_port_need_the_admin_key(proxy):
    assert (await scrape(proxy.url + "/metrics"))[0] == 401
    assert (await scrape(proxy.url + "/metrics", {"Authorization": f"Bearer {KEYS['acme']}"}))[0] == 403
    assert (await scrape(proxy.url + "/metrics", {"Authorization": "Bearer pw-wrong"}))[0] == 401
    status, text, content_type = await scrape(proxy.url + "/metrics", ADMIN)
    assert status == 200 and content_type.startswith("text/plain")
    assert {f.name for f in text_string_to_metric_families(text)} >= {
        "payware_requests", "payware_proxy_added_seconds", "payware_upstream_seconds", "payware_usage_events",
        "payware_tokens", "payware_amount", "payware_credit", "payware_refusals", "payware_upstream_errors",
        "payware_journal_backlog_events", "payware_ledger_flush_lag_seconds", "payware_counter_store_errors",
        "payware_counter_store_up"}


async def test_the_metrics_listener_serves_metrics_without_auth_and_nothing_else(proxy, metrics_port):
    side = f"http://127.0.0.1:{metrics_port}"
    status, text, _ = await scrape(side + "/metrics")
    assert status == 200 and "payware_requests_total" in text
    async with aiohttp.ClientSession() as session:
        for method, path in [("GET", "/healthz"), ("GET", "/v1/models"), ("GET", "/v1/usage/summary"),
                             ("POST", "/v1/chat/completions"), ("GET", "/metrics/x"), ("GET", "/")]:
            async with session.request(method, side + path, headers={"Authorization": f"Bearer {KEYS['acme']}"},
                                       json={"model": "fake-ok", "messages": HELLO}) as resp:
                assert resp.status == 404, (method, path)
        async with session.post(side + "/metrics") as resp:
            assert resp.status == 405
    status, text, _ = await scrape(side + "/metrics")  # the chat sent to the listener reached no route
    assert total(text, "payware_usage_events_total") == 0
    assert total(text, "payware_requests_total", route="/v1/chat/completions") == 0


def test_metrics_can_be_turned_off(tmp_path, fake_upstream):
    path = tmp_path / "payware.yaml"
    path.write_text(proxy_config(fake_upstream.url, tmp_path))
    proxy = ProxyProcess(config_path=path, port=free_port(), log_path=tmp_path / "proxy.log",
                         extra_env={"PAYWARE_METRICS": "off"})
    proxy.start()
    try:
        import urllib.error
        import urllib.request

        request = urllib.request.Request(proxy.url + "/metrics", headers=ADMIN)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request)
        assert refused.value.code == 404
    finally:
        proxy.stop()


def test_a_metrics_address_in_use_stops_the_start_with_one_line_naming_the_field(tmp_path, fake_upstream):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = tmp_path / "payware.yaml"
        path.write_text(proxy_config(fake_upstream.url, tmp_path, server=f', metrics_listen: "127.0.0.1:{port}"'))
        result = subprocess.run([sys.executable, "-m", "proxy.cli", "serve", "--config", str(path), "--port",
                                 str(free_port()), "--workers", "1"], cwd=ROOT, env=python_env(),
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"server.metrics_listen: cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr
    # bound before anything started, as the proxy's own port is: no journal, no ledger
    assert not (tmp_path / "payware.journal").exists() and not (tmp_path / "ledger.db").exists()


def test_sums_by_model_are_kept_exactly_until_the_scrape():
    """Float sums drift (0.1 + 0.2 != 0.3); the proxy keeps Decimals and converts once."""
    from proxy.metrics import Metrics
    from metering.store.events import UsageEvent, utcnow
    from aiohttp import web

    metrics = Metrics(web.Application())
    for amount in ("0.1", "0.2", "-0.05"):
        metrics._count_event(UsageEvent(id=amount, ts=utcnow(), customer="c", key_id=None, metric="tokens",
                                        quantity=Decimal(1), period="p", model="m", amount=Decimal(amount)))
    text = metrics.exposition().body.decode()
    assert total(text, "payware_amount_total", model="m") == 0.3
    assert total(text, "payware_credit_total", model="m") == 0.05
