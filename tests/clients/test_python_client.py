"""The Python client (`clients/python`, imported as `payware`) against a real proxy process.

The admin key names the customer on every call, as the merchant's backend does. Retries are
driven by a relay (tests/clients/conftest.py) that drops, delays or answers in the proxy's place.
"""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from payware import (
    APIConnectionError,
    APITimeoutError,
    AsyncPayware,
    AuthenticationError,
    InvalidRequestError,
    NotFoundError,
    Payware,
    PaywareError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    SpendCapReachedError,
)
from payware._errors import error_from

from tests.clients.conftest import DROP, DROP_AFTER_FORWARD, HANG, Canned
from tests.conftest import ADMIN_KEY, KEYS, free_port


def admin(url: str, **kwargs) -> Payware:
    return Payware(ADMIN_KEY, base_url=url, **kwargs)


def session_id() -> str:
    return "sess_" + uuid.uuid4().hex[:12]


def chat(proxy, key: str = KEYS["acme"]) -> None:
    """A metered model call, so the summary has tokens as well as custom metrics."""
    body = json.dumps({"model": "fake-ok", "messages": [{"role": "user", "content": "hi"}]}).encode()
    request = urllib.request.Request(proxy.url + "/v1/chat/completions", data=body, method="POST",
                                     headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request) as resp:
        resp.read()


def test_a_record_is_priced_by_the_plan_and_its_metadata_reaches_the_ledger(records_proxy):
    pw, sess = admin(records_proxy.url), session_id()
    result = pw.usage.record(customer="acme", metric="agent_actions", quantity=7, meta={"run": "r-1"},
                             session=sess, feature="code-review")
    assert result["object"] == "usage.record" and result["duplicate"] is False
    assert result["quantity"] == "7" and Decimal(result["amount"]) == Decimal("0.014")  # 7 x 0.002, no markup
    event, = pw.usage.events("acme", session=sess)
    assert event["id"] == result["id"] and event["feature"] == "code-review"
    assert event["meta"]["run"] == "r-1" and event["meta"]["idempotency_key"].startswith("pwc_")


@pytest.mark.parametrize("quantity, unit_price, amount", [
    (Decimal("2.5"), "0.04", "0.10"),
    ("0.000000001", Decimal("1000"), "0.000001"),
    (Decimal("1E+3"), "0.000001", "0.001"),
])
def test_quantities_and_prices_travel_as_exact_decimals(records_proxy, quantity, unit_price, amount):
    result = admin(records_proxy.url).usage.record(customer="acme", metric="compute_minutes", quantity=quantity,
                                                   unit_price=unit_price, session=session_id())
    assert Decimal(result["amount"]) == Decimal(amount)
    assert Decimal(result["quantity"]) == Decimal(quantity)


@pytest.mark.parametrize("field", ["quantity", "unit_price"])
def test_a_float_is_refused_before_anything_is_sent(relay, field):
    hop = relay([])
    values = {"quantity": 1, "unit_price": "0.1"} | {field: 0.1}
    with pytest.raises(TypeError, match=field):
        admin(hop.url).usage.record(customer="acme", metric="agent_actions", **values)
    assert hop.seen == []


def test_a_replay_with_the_same_key_records_one_event(records_proxy):
    pw, sess = admin(records_proxy.url), session_id()
    first = pw.usage.record(customer="acme", metric="agent_actions", quantity=3, session=sess,
                            idempotency_key=f"{sess}/step-1")
    again = pw.usage.record(customer="acme", metric="agent_actions", quantity=3, session=sess,
                            idempotency_key=f"{sess}/step-1")
    assert (first["duplicate"], again["duplicate"]) == (False, True) and first["id"] == again["id"]
    assert len(pw.usage.events("acme", session=sess)) == 1


def test_a_call_without_a_key_gets_a_fresh_one_so_two_calls_are_two_events(records_proxy):
    pw, sess = admin(records_proxy.url), session_id()
    a = pw.usage.record(customer="acme", metric="agent_actions", quantity=1, session=sess)
    b = pw.usage.record(customer="acme", metric="agent_actions", quantity=1, session=sess)
    assert a["id"] != b["id"] and not a["duplicate"] and not b["duplicate"]
    assert len(pw.usage.events("acme", session=sess)) == 2


def test_a_dropped_answer_is_retried_with_the_same_generated_key_and_recorded_once(records_proxy, relay):
    hop, sess = relay([DROP_AFTER_FORWARD]), session_id()
    result = admin(hop.url).usage.record(customer="acme", metric="agent_actions", quantity=5, session=sess)
    first, second = hop.posts()
    assert json.loads(first.body)["idempotency_key"] == json.loads(second.body)["idempotency_key"]
    assert first.body == second.body  # the retry is the same call, byte for byte
    assert result["duplicate"] is True  # the proxy kept the first attempt; the retry found it
    event, = admin(records_proxy.url).usage.events("acme", session=sess)
    assert event["id"] == result["id"]


def test_a_dropped_batch_answer_is_retried_with_the_same_keys_for_every_record(records_proxy, relay):
    hop, sess = relay([DROP_AFTER_FORWARD]), session_id()
    results = admin(hop.url).usage.record_batch(
        [{"metric": "agent_actions", "quantity": q, "session": sess} for q in (1, 2, 3)], customer="acme")
    assert [r["duplicate"] for r in results] == [True, True, True]
    first, second = hop.posts()
    keys = [r["idempotency_key"] for r in json.loads(first.body)["records"]]
    assert len(set(keys)) == 3 and keys == [r["idempotency_key"] for r in json.loads(second.body)["records"]]
    assert len(admin(records_proxy.url).usage.events("acme", session=sess)) == 3


def test_a_429_is_retried_after_its_retry_after(relay):
    hop = relay([Canned(429, b'{"error": {"message": "slow down", "type": "requests", "param": null, '
                             b'"code": "rate_limit_exceeded"}}', {"Retry-After": "0.4"})])
    result = admin(hop.url).usage.record(customer="acme", metric="agent_actions", quantity=1, session=session_id())
    first, second = hop.posts()
    assert second.at - first.at >= 0.4 and result["duplicate"] is False


def test_5xx_is_retried_until_max_retries_then_raised_as_a_server_error(relay):
    fail = Canned(503, b'{"error": {"message": "down", "type": "server_error", "param": null, '
                       b'"code": "service_unavailable"}}', {"Retry-After": "0"})
    hop = relay([fail, fail, fail])
    with pytest.raises(ServerError) as caught:
        admin(hop.url, max_retries=2).usage.summary("acme")
    assert caught.value.status == 503 and caught.value.code == "service_unavailable"
    assert len(hop.seen) == 3
    assert admin(hop.url, max_retries=2).usage.summary("acme")["customer"] == "acme"  # script spent: forwarded


def test_a_client_error_is_never_retried(records_proxy, relay):
    hop = relay([])
    with pytest.raises(InvalidRequestError) as caught:
        admin(hop.url).usage.record(customer="acme", metric="teleports", quantity=1)
    assert caught.value.param == "metric" and caught.value.code == "unknown_metric"
    assert len(hop.posts()) == 1


def test_a_reached_spend_cap_is_typed_and_never_retried(relay):
    hop = relay([Canned(429, b'{"error": {"message": "cap reached", "type": "insufficient_quota", "param": null, '
                             b'"code": "spend_cap_reached"}}', {"x-should-retry": "false"})])
    with pytest.raises(SpendCapReachedError) as caught:
        admin(hop.url).usage.record(customer="acme", metric="agent_actions", quantity=1)
    assert caught.value.status == 429 and caught.value.type == "insufficient_quota"
    assert len(hop.posts()) == 1


def test_no_answer_at_all_is_a_connection_error_after_the_retries(relay):
    closed = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(APIConnectionError):
        admin(closed, max_retries=1).usage.summary("acme")
    hop = relay([DROP, DROP])
    with pytest.raises(APIConnectionError):
        admin(hop.url, max_retries=1).usage.summary("acme")
    assert len(hop.seen) == 2


def test_a_slow_answer_is_a_timeout_and_the_retry_gets_through(relay):
    hop = relay([HANG])
    assert admin(hop.url, timeout=0.3).usage.summary("acme")["customer"] == "acme"
    assert len(hop.seen) == 2
    hop = relay([HANG])
    with pytest.raises(APITimeoutError):
        admin(hop.url, timeout=0.3, max_retries=0).usage.summary("acme")


def test_the_summary_equals_the_ledger_events(records_proxy):
    pw = admin(records_proxy.url)
    chat(records_proxy, KEYS["globex"])
    chat(records_proxy, KEYS["globex"])
    pw.usage.record(customer="globex", metric="agent_actions", quantity=9)
    pw.usage.record(customer="globex", metric="compute_minutes", quantity="1.5", unit_price="0.04")
    summary, events = pw.usage.summary("globex"), pw.usage.events("globex")
    assert summary["customer"] == "globex" and summary["requests"] == len(events) >= 4
    assert summary["total"] == summary["tokens"]["total"] == sum(
        (e["input_tokens"] or 0) + (e["output_tokens"] or 0) for e in events) > 0
    assert Decimal(summary["amount_due_exact"]) == sum(Decimal(e["amount"]) for e in events)
    by_metric = {m["model"]: Decimal(m["quantity"]) for m in summary["by_model"]}
    assert by_metric["metric:agent_actions"] == sum(
        Decimal(e["quantity"]) for e in events if e["metric"] == "agent_actions")


def test_a_batch_is_all_or_nothing(records_proxy):
    pw, sess = admin(records_proxy.url), session_id()
    good = [{"metric": "agent_actions", "quantity": 1, "session": sess},
            {"metric": "compute_minutes", "quantity": "2", "unit_price": "0.04", "session": sess}]
    with pytest.raises(InvalidRequestError) as caught:
        pw.usage.record_batch(good + [{"metric": "agent_actions", "quantity": "many", "session": sess}],
                              customer="acme")
    assert caught.value.param == "records[2].quantity"
    assert pw.usage.events("acme", session=sess) == []
    results = pw.usage.record_batch(good, customer="acme")
    assert [r["metric"] for r in results] == ["agent_actions", "compute_minutes"]
    assert len(pw.usage.events("acme", session=sess)) == 2


def test_a_batch_record_with_an_unknown_field_is_refused_before_sending():
    with pytest.raises(TypeError, match="records\\[0\\]: unknown field 'colour'"):
        Payware(ADMIN_KEY, base_url="http://127.0.0.1:9").usage.record_batch(
            [{"metric": "agent_actions", "quantity": 1, "colour": "red"}], customer="acme")


@pytest.mark.parametrize("key, call, error, status, code, param", [
    ("pw-wrong-key", lambda pw: pw.usage.summary("acme"), AuthenticationError, 401, "invalid_api_key", None),
    (ADMIN_KEY, lambda pw: pw.usage.record(customer="acme", metric="Agent Actions", quantity=1),
     InvalidRequestError, 400, None, "metric"),
    (ADMIN_KEY, lambda pw: pw.usage.record(customer="acme", metric="agent_actions", quantity=-1),
     InvalidRequestError, 400, None, "quantity"),
    (KEYS["acme"], lambda pw: pw.usage.summary("globex"), PermissionDeniedError, 403, "forbidden", None),
    (ADMIN_KEY, lambda pw: pw.billing.set_cap("acme", "abc"), InvalidRequestError, 400, None, "amount"),
])
def test_errors_are_typed_with_the_envelope_fields(records_proxy, key, call, error, status, code, param):
    with pytest.raises(error) as caught:
        call(Payware(key, base_url=records_proxy.url))
    assert type(caught.value) is error
    assert (caught.value.status, caught.value.code, caught.value.param) == (status, code, param)
    assert caught.value.message and caught.value.type == "invalid_request_error"


@pytest.mark.parametrize("call", [
    lambda pw: pw.usage.record(customer="cust_nobody", metric="agent_actions", quantity=1),
    lambda pw: pw.usage.summary("cust_nobody"),
])
def test_an_unknown_customer_is_a_typed_error_naming_the_customer(records_proxy, call):
    with pytest.raises(PaywareError) as caught:
        call(admin(records_proxy.url))
    assert caught.value.code == "customer_not_found" and caught.value.param == "customer"
    assert type(caught.value) is {400: InvalidRequestError, 404: NotFoundError}[caught.value.status]


@pytest.mark.parametrize("status, body, error", [
    (404, b'{"error": {"message": "no route", "type": "invalid_request_error", "param": null, "code": "not_found"}}',
     NotFoundError),
    (429, b'{"error": {"message": "x", "type": "requests", "param": null, "code": "rate_limit_exceeded"}}',
     RateLimitError),
    (502, b"<html>bad gateway</html>", ServerError),
    (409, b"{}", PaywareError),
])
def test_every_status_maps_to_its_error_class(status, body, error):
    err = error_from(status, {"x-payware-request-id": "req_1"}, body)
    assert type(err) is error and err.status == status and err.request_id == "req_1" and err.message


def test_the_customer_sets_and_removes_its_own_cap_and_lists_statements(records_proxy):
    pw = admin(records_proxy.url)
    assert pw.billing.set_cap("acme", Decimal("5.00"))["customer_cap"] == "5.00"
    assert pw.billing.cap("acme")["amount"] == "5.00"
    assert pw.billing.set_cap("acme", None)["customer_cap"] is None
    assert pw.billing.statements("acme") == []  # the open period is not a statement yet


def test_events_are_filtered_by_time_and_exported_as_csv(records_proxy):
    pw, sess = admin(records_proxy.url), session_id()
    pw.usage.record(customer="acme", metric="agent_actions", quantity=2, session=sess)
    later = datetime.now(timezone.utc) + timedelta(minutes=1)
    assert len(pw.usage.events("acme", session=sess, to=later)) == 1
    assert pw.usage.events("acme", session=sess, from_=later) == []
    header, row = pw.usage.export_csv("acme", session=sess).splitlines()
    assert header.startswith("id,ts,customer") and sess in row


def test_a_customer_key_reads_its_own_usage_without_naming_itself(records_proxy):
    summary = Payware(KEYS["acme"], base_url=records_proxy.url + "/v1").usage.summary()
    assert summary["customer"] == "acme" and summary["total"] == summary["tokens"]["total"]


@pytest.mark.parametrize("transport", ["aiohttp", "thread"])
async def test_the_async_client_has_the_same_behaviour(records_proxy, relay, transport):
    sess = session_id()
    async with AsyncPayware(ADMIN_KEY, base_url=records_proxy.url, transport=transport) as pw:
        first = await pw.usage.record(customer="acme", metric="agent_actions", quantity=Decimal("4"),
                                      session=sess, idempotency_key=f"{sess}/1")
        again = await pw.usage.record(customer="acme", metric="agent_actions", quantity=4, session=sess,
                                      idempotency_key=f"{sess}/1")
        assert (first["duplicate"], again["duplicate"], Decimal(first["amount"])) == (False, True, Decimal("0.008"))
        batch = await pw.usage.record_batch([{"metric": "agent_actions", "quantity": 1, "session": sess}],
                                            customer="acme")
        assert len(batch) == 1 and len(await pw.usage.events("acme", session=sess)) == 2
        summary, events = await pw.usage.summary("acme"), await pw.usage.events("acme")
        assert Decimal(summary["amount_due_exact"]) == sum(Decimal(e["amount"]) for e in events)
        assert summary["total"] == summary["tokens"]["total"]
        assert (await pw.billing.cap("acme"))["customer"] == "acme"
        assert await pw.billing.statements("acme") == []
        with pytest.raises(InvalidRequestError) as caught:
            await pw.usage.record(customer="acme", metric="teleports", quantity=1)
        assert caught.value.param == "metric"
    hop = relay([DROP_AFTER_FORWARD])
    async with AsyncPayware(ADMIN_KEY, base_url=hop.url, transport=transport) as pw:
        retried = await pw.usage.record(customer="acme", metric="agent_actions", quantity=1, session=sess)
        assert retried["duplicate"] is True and len(hop.posts()) == 2
        assert len(await pw.usage.events("acme", session=sess)) == 3
    async with AsyncPayware("pw-wrong-key", base_url=records_proxy.url, transport=transport) as pw:
        with pytest.raises(AuthenticationError):
            await pw.usage.summary("acme")


def test_the_client_needs_a_key(monkeypatch):
    monkeypatch.delenv("PAYWARE_API_KEY", raising=False)
    with pytest.raises(ValueError, match="PAYWARE_API_KEY"):
        Payware()
    monkeypatch.setenv("PAYWARE_API_KEY", "pk_env")
    monkeypatch.setenv("PAYWARE_BASE_URL", "http://proxy.example:8080/v1/")
    assert Payware().base_url == "http://proxy.example:8080"


def test_backoff_waits_between_retries_of_a_dropped_connection(relay):
    hop = relay([DROP])
    started = time.monotonic()
    admin(hop.url).usage.summary("acme")
    assert time.monotonic() - started >= 0.3  # the first backoff is about 0.4 to 0.5 s
