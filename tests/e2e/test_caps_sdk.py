"""Spend caps and rate limits as the official openai SDK sees them."""

from __future__ import annotations

import json
import time
import urllib.request
from decimal import Decimal

import openai
import pytest

from tests.conftest import ADMIN_KEY, KEYS, key_hash

MESSAGES = [{"role": "user", "content": "hi"}]


def customers(cap: str, extra: str = "") -> str:
    return f"""
  acme: {{plan: payg, keys: ["{key_hash(KEYS['acme'])}"], cap: {{{cap}}}{extra}}}
  globex: {{plan: payg, keys: ["{key_hash(KEYS['globex'])}"]}}
"""


def customers_without_cap(extra: str = "") -> str:
    return f"""
  acme: {{plan: payg, keys: ["{key_hash(KEYS['acme'])}"]{extra}}}
"""


def sdk(proxy, key=KEYS["acme"], retries=2) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.url + "/v1", api_key=key, max_retries=retries)


def http(proxy, method: str, path: str, body: dict | None = None, key: str = KEYS["acme"]):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(proxy.url + path, data=data, method=method,
                                     headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def billed(proxy) -> Decimal:
    return Decimal(http(proxy, "GET", "/v1/usage/summary")[1]["amount_due_exact"])


def upstream_calls(fake_upstream) -> int:
    return fake_upstream.stats()["requests"].get("/v1/chat/completions", 0)


def test_a_blocked_request_is_a_429_the_sdk_does_not_retry_and_never_reaches_the_provider(
        proxy_factory, fake_upstream):
    # Each call reserves (9 prompt + 10 output tokens) ~ $0.0000092 and bills $0.0000073125.
    proxy = proxy_factory(customers=customers('amount: "0.00003", action: block'))
    fake_upstream.reset()
    served = 0
    with pytest.raises(openai.RateLimitError) as info:
        for _ in range(20):
            sdk(proxy).chat.completions.create(model="fake-ok", messages=MESSAGES, max_tokens=10)
            served += 1
    assert info.value.body["code"] == "spend_cap_reached" and info.value.body["type"] == "insufficient_quota"
    assert info.value.response.headers["x-should-retry"] == "false"
    assert upstream_calls(fake_upstream) == served  # the refused one (and no retry) never went upstream
    assert 1 <= served < 20
    assert billed(proxy) <= Decimal("0.00003")


def test_a_throttled_request_is_a_429_the_sdk_retries_after_retry_after(proxy_factory, fake_upstream):
    # Past the cap, 60 requests per minute are served (a minute's worth may come at once).
    proxy = proxy_factory(customers=customers('amount: "0.000001", action: throttle, throttle_rpm: 60'))
    client = sdk(proxy, retries=3)
    first = client.chat.completions.with_raw_response.create(model="fake-ok", messages=MESSAGES, max_tokens=10)
    assert first.headers["x-payware-cap-reached"] == "true"  # over the cap, served at the throttled rate
    served, began = 1, time.monotonic()
    with pytest.raises(openai.RateLimitError) as info:
        for _ in range(200):
            sdk(proxy, retries=0).chat.completions.create(model="fake-ok", messages=MESSAGES, max_tokens=10)
            served += 1
    refilled = time.monotonic() - began + 1  # one more a second while the loop ran
    assert 60 <= served <= 60 + refilled
    assert info.value.body["code"] == "rate_limit_exceeded"
    assert int(info.value.response.headers["retry-after"]) >= 1
    started = time.monotonic()
    client.chat.completions.create(model="fake-ok", messages=MESSAGES, max_tokens=10)  # waits, retries, succeeds
    assert time.monotonic() - started >= 0.5


def test_notify_serves_past_the_cap_and_flags_it(proxy_factory):
    proxy = proxy_factory(customers=customers('amount: "0.000001", action: notify'))
    for _ in range(3):
        response = sdk(proxy).chat.completions.with_raw_response.create(model="fake-ok", messages=MESSAGES)
        assert response.headers["x-payware-cap-reached"] == "true"
    assert billed(proxy) == 3 * Decimal("0.0000073125")


def test_a_customer_lowers_its_own_cap_and_is_held_to_it_at_once(proxy_factory, fake_upstream):
    proxy = proxy_factory(customers=customers('amount: "10.00", action: block'))
    sdk(proxy).chat.completions.create(model="fake-ok", messages=MESSAGES, max_tokens=10)
    status, view = http(proxy, "PUT", "/v1/billing/cap", {"amount": "0.00001"})
    assert status == 200 and view["amount"] == "0.00001" and view["customer_cap"] == "0.00001"
    fake_upstream.reset()
    with pytest.raises(openai.RateLimitError) as info:
        sdk(proxy).chat.completions.create(model="fake-ok", messages=MESSAGES, max_tokens=10)
    assert info.value.body["code"] == "spend_cap_reached"
    assert upstream_calls(fake_upstream) == 0
    assert http(proxy, "GET", "/v1/usage/summary")[1]["cap"]["amount"] == "0.00001"


def test_a_customer_cannot_raise_its_cap_past_the_admins(proxy_factory):
    proxy = proxy_factory(customers=customers('amount: "10.00", action: block'))
    status, error = http(proxy, "PUT", "/v1/billing/cap", {"amount": "10.01"})
    assert status == 400 and error["error"]["code"] == "cap_above_limit"
    assert http(proxy, "GET", "/v1/billing/cap")[1]["amount"] == "10.00"
    status, _ = http(proxy, "PUT", "/v1/billing/cap", {"amount": "lots"})
    assert status == 400


def test_the_customer_cap_survives_a_restart(proxy_factory):
    proxy = proxy_factory(customers=customers('amount: "10.00", action: block'))
    http(proxy, "PUT", "/v1/billing/cap", {"amount": "2.50"})
    proxy.stop()
    proxy.start()
    assert http(proxy, "GET", "/v1/billing/cap")[1]["amount"] == "2.50"
    assert http(proxy, "GET", "/v1/billing/cap?customer=acme", key=ADMIN_KEY)[1]["amount"] == "2.50"


def test_clamp_lowers_max_tokens_to_what_the_budget_pays_for(proxy_factory, fake_upstream):
    proxy = proxy_factory(customers=customers('amount: "0.00001", action: block, clamp: true'))
    fake_upstream.reset()
    response = sdk(proxy).chat.completions.with_raw_response.create(
        model="fake-ok", messages=MESSAGES, max_tokens=100_000)
    clamped = int(response.headers["x-payware-clamped-max-tokens"])
    assert 0 < clamped < 100_000
    assert json.loads(fake_upstream.stats()["last"][-1]["body"])["max_tokens"] == clamped


def test_each_of_n_answers_counts_in_the_worst_case(proxy_factory, fake_upstream):
    """A call for n answers may generate n times its output limit: all of it is reserved."""
    proxy = proxy_factory(customers=customers('amount: "0.01", action: block, mode: hard'))
    fake_upstream.reset()
    with pytest.raises(openai.RateLimitError) as info:  # 128 x 1000 tokens: ~$0.096
        sdk(proxy, retries=0).chat.completions.create(model="fake-ok", messages=MESSAGES, max_tokens=1000, n=128)
    assert "`max_tokens x n` of 128000" in info.value.body["message"]
    with pytest.raises(openai.RateLimitError) as info:  # no output limit: the model's maximum, each answer
        sdk(proxy, retries=0).chat.completions.create(model="fake-ok", messages=MESSAGES, n=4)
    assert "the model's maximum output of 4096 tokens for 4 answers" in info.value.body["message"]
    assert upstream_calls(fake_upstream) == 0
    sdk(proxy).chat.completions.create(model="fake-ok", messages=MESSAGES, max_tokens=1000, n=2)  # fits: served


def test_a_clamp_shares_its_tokens_among_the_n_answers(proxy_factory, fake_upstream):
    proxy = proxy_factory(customers=customers('amount: "0.00001", action: block, clamp: true'))
    fake_upstream.reset()
    response = sdk(proxy).chat.completions.with_raw_response.create(
        model="fake-ok", messages=MESSAGES, max_tokens=100_000, n=4)
    clamped = int(response.headers["x-payware-clamped-max-tokens"])  # every answer's together
    assert clamped % 4 == 0 and 0 < clamped < 400_000
    assert json.loads(fake_upstream.stats()["last"][-1]["body"])["max_tokens"] == clamped // 4


@pytest.mark.parametrize("field, value", [("n", 0), ("n", "2"), ("n", 129), ("n", 2.0), ("best_of", True)])
def test_an_answer_count_that_is_not_one_the_worst_case_can_hold_is_refused(proxy, field, value):
    status, body = http(proxy, "POST", "/v1/chat/completions" if field == "n" else "/v1/completions",
                        {"model": "fake-ok", "messages": MESSAGES, "prompt": "hi", field: value})
    assert status == 400 and body["error"]["param"] == field


def test_rate_limits_answer_429_with_retry_after_and_openai_headers(proxy_factory, fake_upstream):
    proxy = proxy_factory(customers=customers('amount: "10.00"', extra=", rate_limit: {rpm: 2}"))
    ok = sdk(proxy).chat.completions.with_raw_response.create(model="fake-ok", messages=MESSAGES)
    assert ok.headers["x-ratelimit-limit-requests"] == "2"
    assert ok.headers["x-ratelimit-remaining-requests"] == "1"
    sdk(proxy).chat.completions.create(model="fake-ok", messages=MESSAGES)
    fake_upstream.reset()
    with pytest.raises(openai.RateLimitError) as info:
        sdk(proxy, retries=0).chat.completions.create(model="fake-ok", messages=MESSAGES)
    assert info.value.body["code"] == "rate_limit_exceeded"
    assert int(info.value.response.headers["retry-after"]) >= 1
    assert upstream_calls(fake_upstream) == 0


def test_a_key_cap_holds_that_key_while_the_customer_goes_on(proxy_factory, fake_upstream):
    import hashlib

    from config.schema import key_id

    second = "pw-test-acme-second-key"
    limited = key_id(hashlib.sha256(KEYS["acme"].encode()).hexdigest())
    customers_text = f"""
  acme: {{plan: payg, keys: ["{key_hash(KEYS['acme'])}", "{key_hash(second)}"], cap: {{amount: "10.00"}},
          key_caps: {{{limited}: "0.00001"}}}}
  globex: {{plan: payg, keys: ["{key_hash(KEYS['globex'])}"]}}
"""
    proxy = proxy_factory(customers=customers_text)
    sdk(proxy).chat.completions.create(model="fake-ok", messages=MESSAGES, max_tokens=10)
    with pytest.raises(openai.RateLimitError) as info:
        sdk(proxy).chat.completions.create(model="fake-ok", messages=MESSAGES, max_tokens=10)
    assert "this key's spend cap" in info.value.body["message"]
    sdk(proxy, key=second).chat.completions.create(model="fake-ok", messages=MESSAGES, max_tokens=10)


def test_soft_mode_checks_what_is_spent_and_may_overshoot_by_what_is_in_flight(proxy_factory):
    proxy = proxy_factory(customers=customers('amount: "0.00001", action: block, mode: soft'))
    # Soft: a call is let in while spent < cap, even if its worst case does not fit.
    sdk(proxy).chat.completions.create(model="fake-ok", messages=MESSAGES, max_tokens=1000)
    sdk(proxy).chat.completions.create(model="fake-ok", messages=MESSAGES, max_tokens=1000)  # spent 0.0000073 < cap
    with pytest.raises(openai.RateLimitError):
        sdk(proxy).chat.completions.create(model="fake-ok", messages=MESSAGES)  # spent 0.0000146 >= cap
    assert billed(proxy) == 2 * Decimal("0.0000073125")


def test_tpm_is_charged_the_worst_case_up_front_and_gets_the_difference_back(proxy_factory):
    proxy = proxy_factory(customers=customers('amount: "10.00"', extra=", rate_limit: {tpm: 10000}"))
    first = sdk(proxy).chat.completions.with_raw_response.create(model="fake-ok", messages=MESSAGES, max_tokens=5000)
    # prompt 8 (tiktoken, cookbook formula) + max_tokens 5000 held while the call ran
    assert int(first.headers["x-ratelimit-remaining-tokens"]) == 10000 - 5008
    second = sdk(proxy).chat.completions.with_raw_response.create(model="fake-ok", messages=MESSAGES, max_tokens=10)
    # the first call really used 20 tokens (the provider said so): 4988 came back, less what refilled since
    remaining = int(second.headers["x-ratelimit-remaining-tokens"])
    assert 10000 - 20 - 18 <= remaining <= 10000 - 18


def test_a_cap_the_customer_lowers_on_one_proxy_holds_on_another_within_seconds(proxy_factory, tmp_path,
                                                                                 redis_url):
    import redis

    counters = redis_url.rsplit("/", 1)[0] + "/4"  # proxies sharing a ledger share their counters
    redis.Redis.from_url(counters).flushdb()
    ledger = f"sqlite:///{tmp_path}/shared.db"
    first, second = (proxy_factory(name=name, ledger=ledger, customers=customers('amount: "10.00"'),
                                   storage=f"  counters: {counters}") for name in ("a", "b"))
    sdk(second).chat.completions.create(model="fake-ok", messages=MESSAGES, max_tokens=10)
    assert http(first, "PUT", "/v1/billing/cap", {"amount": "0.000001"})[0] == 200
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            sdk(second, retries=0).chat.completions.create(model="fake-ok", messages=MESSAGES, max_tokens=10)
        except openai.RateLimitError as exc:
            assert exc.body["code"] == "spend_cap_reached"
            break
        time.sleep(0.2)
    else:
        raise AssertionError("the other proxy never applied the lower cap")


def test_a_customer_without_any_cap_sets_one_and_what_it_spent_already_counts(proxy_factory, fake_upstream):
    proxy = proxy_factory()  # no cap at all: calls are not reserved against anything
    for _ in range(3):
        sdk(proxy).chat.completions.create(model="fake-ok", messages=MESSAGES, max_tokens=10)
    # spent 3 x 0.0000073125 = 0.0000219375; a call reserves 0.000009: it no longer fits under 0.00003
    status, view = http(proxy, "PUT", "/v1/billing/cap", {"amount": "0.00003"})
    assert status == 200 and Decimal(view["spent"]) >= Decimal("0.0000219375")
    with pytest.raises(openai.RateLimitError) as info:
        sdk(proxy).chat.completions.create(model="fake-ok", messages=MESSAGES, max_tokens=10)
    assert info.value.body["code"] == "spend_cap_reached"


def test_a_worst_case_that_does_not_fit_says_so_and_how_to_fit_it(proxy_factory, fake_upstream):
    """The 429 names the worst case, where it came from and what remains, not "cap reached"."""
    proxy = proxy_factory(customers=customers('amount: "0.001", action: block, mode: hard'))
    with pytest.raises(openai.RateLimitError) as info:  # no max_tokens: the model's maximum is reserved
        sdk(proxy, retries=0).chat.completions.create(model="fake-ok", messages=MESSAGES)
    message = info.value.body["message"]
    assert "worst case" in message and "the model's maximum output of 4096 tokens" in message
    assert "$0.001 left" in message and "clamp: true" in message
    with pytest.raises(openai.RateLimitError) as info:
        sdk(proxy, retries=0).chat.completions.create(model="fake-ok", messages=MESSAGES,
                                                      max_completion_tokens=5000)
    assert "`max_completion_tokens` of 5000" in info.value.body["message"]
    sdk(proxy).chat.completions.create(model="fake-ok", messages=MESSAGES, max_tokens=100)  # fits: served


def _cap_just_above_spent(proxy) -> str:
    """A cap $0.000005 above what the customer spent (to the nano-dollar a cap allows): less than
    the worst case of one more call (~$0.0000092), so that call fits only if the budget missed
    some of the spend."""
    spent = Decimal(http(proxy, "GET", "/v1/billing/cap")[1]["spent"])
    return str((spent + Decimal("0.000005")).quantize(Decimal("1e-9"), rounding="ROUND_DOWN"))


def test_a_call_in_flight_when_the_customer_sets_a_first_cap_counts_against_it(proxy_factory, counters_storage):
    # No cap: the slow call is admitted without a reservation. (The TPM limit only makes the proxy
    # load its tokenizer at start-up, so the refused call's worst case is the exact ~$0.0000092.)
    proxy = proxy_factory(storage=counters_storage, customers=customers_without_cap(", rate_limit: {tpm: 1000000}"))
    stream = sdk(proxy).chat.completions.create(model="fake-slow", messages=MESSAGES, stream=True)
    next(iter(stream))  # the call is in flight
    assert http(proxy, "PUT", "/v1/billing/cap", {"amount": "1.00"})[0] == 200
    for _ in stream:
        pass
    assert Decimal(http(proxy, "GET", "/v1/billing/cap")[1]["spent"]) > 0
    assert http(proxy, "PUT", "/v1/billing/cap", {"amount": _cap_just_above_spent(proxy)})[0] == 200
    with pytest.raises(openai.RateLimitError) as info:  # served only if the budget missed the slow call
        sdk(proxy, retries=0).chat.completions.create(model="fake-ok", messages=MESSAGES, max_tokens=10)
    assert info.value.body["code"] == "spend_cap_reached"


def test_a_cap_a_reload_gives_back_counts_the_calls_made_while_it_was_away(proxy_factory, counters_storage):
    proxy = proxy_factory(customers=customers('amount: "1.00", action: block'), storage=counters_storage)
    for _ in range(2):
        sdk(proxy).chat.completions.create(model="fake-ok", messages=MESSAGES, max_tokens=10)
    capped_config = proxy.config_path.read_text()
    proxy.config_path.write_text(capped_config.replace(', cap: {amount: "1.00", action: block}', ""))
    assert http(proxy, "POST", "/v1/admin/reload", {}, key=ADMIN_KEY)[0] == 200
    assert http(proxy, "GET", "/v1/billing/cap")[1]["amount"] is None
    for _ in range(3):  # uncapped: nothing reserved or spent against a cap
        sdk(proxy).chat.completions.create(model="fake-ok", messages=MESSAGES, max_tokens=10)
    proxy.config_path.write_text(capped_config.replace('"1.00"', f'"{_cap_just_above_spent(proxy)}"'))
    assert http(proxy, "POST", "/v1/admin/reload", {}, key=ADMIN_KEY)[0] == 200
    deadline = time.monotonic() + 10
    while "applies a new cap" not in proxy.log_path.read_text():  # the merge runs after the swap
        assert time.monotonic() < deadline, "the period was never merged again"
        time.sleep(0.05)
    with pytest.raises(openai.RateLimitError) as info:  # served only if the budget missed the 3 calls
        sdk(proxy, retries=0).chat.completions.create(model="fake-ok", messages=MESSAGES, max_tokens=10)
    assert info.value.body["code"] == "spend_cap_reached"
