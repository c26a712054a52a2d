"""Plans rated through the real proxy: included quota crossed mid-request, graduated tiers."""

from __future__ import annotations

import json
import urllib.request
from decimal import Decimal

import openai

from tests.conftest import KEYS

MESSAGES = [{"role": "user", "content": "hi"}]
# Every fake-ok call reports 13 prompt tokens (4 of them cached) and 7 completion tokens: 20 in all.


def call(proxy) -> None:
    openai.OpenAI(base_url=proxy.url + "/v1", api_key=KEYS["acme"], max_retries=0).chat.completions.create(
        model="fake-ok", messages=MESSAGES)


def amounts(proxy) -> tuple[list[Decimal], dict]:
    def get(path):
        request = urllib.request.Request(proxy.url + path, headers={"Authorization": f"Bearer {KEYS['acme']}"})
        with urllib.request.urlopen(request) as resp:
            return resp.read()
    events = [json.loads(line) for line in get("/v1/usage/events").splitlines()]
    return [Decimal(e["amount"]) for e in sorted(events, key=lambda e: e["ts"])], json.loads(get("/v1/usage/summary"))


def test_base_fee_plus_included_quota_with_a_request_crossing_it(proxy_factory):
    plans = ('  payg: {interval: monthly, base_fee: "20.00", included: {tokens: 50}, '
             'price: {per_million: {input: "0.30", output: "1.20"}}}\n')
    proxy = proxy_factory(plans=plans)
    for _ in range(4):
        call(proxy)
    events, summary = amounts(proxy)
    # calls 1 and 2: tokens 0-40 of the period, inside the 50 included: free
    # call 3: tokens 40-60; the quota covers 10, in order cached (4) then input (6 of 9):
    #         billable 3 input x 0.30 + 7 output x 1.20 = 0.9 + 8.4 = 9.3 per 1M = 0.0000093
    # call 4: all billable, cached at the input price: (4 + 9) x 0.30 + 7 x 1.20 = 3.9 + 8.4 = 0.0000123
    assert events == [Decimal(0), Decimal(0), Decimal("0.0000093"), Decimal("0.0000123")]
    assert Decimal(summary["amount_due_exact"]) == Decimal("20.0000216")
    assert summary["amount_due"] == "20.00"


def test_graduated_tiers_across_an_edge(proxy_factory):
    plans = ('  payg: {interval: monthly, tiers: {metric: tokens, mode: graduated, steps: '
             '[{up_to: 30, per_million: "1.00"}, {up_to: null, per_million: "0.50"}]}}\n')
    proxy = proxy_factory(plans=plans)
    call(proxy)
    call(proxy)
    events, summary = amounts(proxy)
    # call 1: tokens 0-20, all in the first tier: 20 x 1.00 / 1M = 0.00002
    # call 2: tokens 20-40: 10 x 1.00 + 10 x 0.50 = 15 / 1M = 0.000015
    assert events == [Decimal("0.00002"), Decimal("0.000015")]
    assert Decimal(summary["amount_due_exact"]) == Decimal("0.000035")


def test_a_plan_change_mid_period_keeps_past_amounts_and_rates_new_calls_by_the_new_plan(proxy_factory):
    plans = ('  payg: {interval: monthly, price: {markup: "1.25"}}\n'
             '  premium: {interval: monthly, base_fee: "5.00", price: {markup: "2"}}\n')
    proxy = proxy_factory(plans=plans)
    call(proxy)
    proxy.stop()
    text = proxy.config_path.read_text()
    proxy.config_path.write_text(text.replace("acme: {plan: payg,", "acme: {plan: premium,"))
    proxy.start()
    call(proxy)
    events, summary = amounts(proxy)
    # before: cost 0.00000585 x 1.25; after: cost 0.00000585 x 2; the period takes premium's base fee
    assert events == [Decimal("0.0000073125"), Decimal("0.0000117")]
    assert Decimal(summary["amount_due_exact"]) == Decimal("5.0000190125")
    assert summary["plan"] == "premium"
