"""A frozen statement as a Stripe invoice (pure): one item per line in minor units, the base fee,
credits as negative items, and one rounding item so the invoice totals the statement's total."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal

import pytest

from config.loader import parse_config
from metering.billing.settle import SettleError, plan_invoice, statement_key, stripe_customers, to_minor
from metering.billing.statements import build_statement
from metering.store.events import UsageEvent

CONFIG = parse_config("""
providers: {openai: {kind: openai, api_key: sk-test}}
models: {mini: {provider: openai, upstream: gpt-4o-mini, cost: {input: "0.15", output: "0.60"}}}
plans:
  payg: {price: {markup: "1.25"}}
  pro: {base_fee: "20.00", price: {markup: "1.25"}}
  yen: {currency: JPY, base_fee: "1000", price: {markup: "1.25"}}
customers:
  acme: {plan: payg, stripe_customer: cus_acme}
  globex: {plan: pro}
""", env={})
START, END = datetime(2026, 11, 1, tzinfo=timezone.utc), datetime(2026, 12, 1, tzinfo=timezone.utc)


def statement(plan: str, amounts: list[tuple[str, str, str, str]], **extra) -> dict:
    """A statement body as the closing job freezes it; `amounts`: (metric, quantity, unit price, amount)."""
    events = [UsageEvent(id=f"req_{i}", ts=START, customer="acme", key_id=None, metric="tokens",
                         quantity=Decimal(q), period=START.isoformat(), model="mini", amount=Decimal(a),
                         currency=CONFIG.plans[plan].currency,
                         pricing={"items": [{"metric": m, "quantity": q, "unit_price": p, "amount": a}]})
              for i, (m, q, p, a) in enumerate(amounts)]
    body = build_statement(customer="acme", plan=CONFIG.plans[plan], period_start=START, period_end=END,
                           events=events).to_json()
    return {**body, **extra}


MANY_SMALL = [("tokens.input", "13", "0.0000001875", "0.0000024375")] * 3 + \
             [("tokens.output", "7", "0.00000075", "0.00000525")] * 3  # a few calls: $0.0000230625 in all


@pytest.mark.parametrize("plan, amounts, extra, items, total", [
    # sub-cent usage: both lines round to 0 cents, the total to 0: nothing to round
    ("payg", MANY_SMALL, {}, [("usage", 0), ("usage", 0)], 0),
    # lines 1.004 + 2.004 = 3.008: rounded one by one 1.00 + 2.00, the total 3.01: one cent of rounding
    ("payg", [("tokens.input", "1", "1.004", "1.004"), ("tokens.output", "1", "2.004", "2.004")], {},
     [("usage", 100), ("usage", 200), ("rounding", 1)], 301),
    # 1.005 + 2.005 = 3.01: rounded one by one 1.01 + 2.01 = 3.02: a rounding item of -1 cent
    ("payg", [("tokens.input", "1", "1.005", "1.005"), ("tokens.output", "1", "2.005", "2.005")], {},
     [("usage", 101), ("usage", 201), ("rounding", -1)], 301),
    # the base fee is an item of its own
    ("pro", [("tokens.input", "1000", "0.0003", "0.3")], {}, [("usage", 30), ("base_fee", 2000)], 2030),
    # credits applied (from the credits feature, when it writes them): negative items
    ("pro", [("tokens.input", "1000", "0.0003", "0.3")],
     {"credits": [{"grant": "gr_1", "amount": "5.00"}, {"grant": "gr_2", "amount": "0.25"}], "total": "15.05"},
     [("usage", 30), ("base_fee", 2000), ("credit", -500), ("credit", -25)], 1505),
    # JPY has no minor unit: 1000 + 12.6 = 1012.6 -> 1013
    ("yen", [("tokens.input", "1", "12.6", "12.6")], {}, [("usage", 13), ("base_fee", 1000)], 1013),
])
def test_the_invoice_totals_the_statements_total_to_the_minor_unit(plan, amounts, extra, items, total):
    body = statement(plan, amounts, **extra)
    invoice = plan_invoice("acme", START.isoformat(), body)
    assert [(line.kind, line.amount) for line in invoice.lines] == items
    assert invoice.total_minor == total == to_minor(Decimal(body["total"]), body["currency"])
    assert sum(line.amount for line in invoice.lines) == invoice.total_minor
    assert invoice.period_start == int(START.timestamp()) and invoice.period_end == int(END.timestamp())


def test_items_keep_the_exact_amount_and_say_what_they_bill():
    body = statement("pro", [("tokens.input", "1000", "0.0003", "0.3")])
    usage, base = plan_invoice("acme", "p", body).lines
    assert usage.description == "mini tokens.input: 1000 x 0.0003" and usage.exact == Decimal("0.3")
    assert base.description == "Base fee (plan pro)" and base.to_json()["exact"] == "20.00"


@pytest.mark.parametrize("change, message", [
    ({"total": "99.00"}, "more than rounding apart"),
    ({"total": "3.005"}, "not in whole USD minor units"),
    ({"total": None}, "not one Payware wrote"),
    ({"lines": [{"metric": "tokens"}]}, "not one Payware wrote"),
    ({"currency": None, "total": "x"}, "not one Payware wrote"),
    ({"lines": [{"metric": "t", "model": None, "quantity": "1", "amount": "0"}] * 251, "total": "0.00"},
     "Stripe takes at most 250"),
])
def test_a_statement_that_cannot_be_invoiced_is_refused_with_the_reason(change, message):
    body = {**statement("payg", [("tokens.input", "1", "3.00", "3.00")]), **change}
    with pytest.raises(SettleError, match=message):
        plan_invoice("acme", "p", body)


def test_stripe_ids_come_from_the_config_or_a_runtime_customers_metadata():
    from dataclasses import replace

    customers = [CONFIG.customers["acme"], CONFIG.customers["globex"],
                 replace(CONFIG.customers["globex"], id="initech", metadata={"stripe_customer": "cus_initech"}),
                 replace(CONFIG.customers["globex"], id="bad", metadata={"stripe_customer": "not-a-stripe-id"})]
    assert stripe_customers(customers) == {"acme": "cus_acme", "globex": None, "initech": "cus_initech", "bad": None}


def test_the_statement_key_is_stable_and_names_no_customer():
    key = statement_key("acme", "2026-11-01T00:00:00+00:00")
    assert key == statement_key("acme", "2026-11-01T00:00:00+00:00") != statement_key("acme", "2026-12-01")
    assert key.startswith("payware-") and "acme" not in key and len(key) == 40


def test_a_statement_with_credits_applied_is_invoiced_net_of_them():
    events = [UsageEvent(id="req_c", ts=START, customer="acme", key_id=None, metric="tokens", quantity=Decimal(1000),
                         period=START.isoformat(), model="mini", amount=Decimal("7.004"),
                         pricing={"items": [{"metric": "tokens.input", "quantity": "1000", "unit_price": "0.007004",
                                             "amount": "7.004"}]})]
    body = build_statement(customer="acme", plan=CONFIG.plans["pro"], period_start=START, period_end=END,
                           events=events, credits={"gr_promo": Decimal("5.00"), "gr_paid": Decimal("1.5025")},
                           credit_balance=Decimal("0")).to_json()
    invoice = plan_invoice("acme", START.isoformat(), body)
    # 7.004 + 20.00 - 5.00 - 1.5025 = 20.5015 -> total 20.50; items 7.00 + 20.00 - 5.00 - 1.50 = 20.50
    assert body["total"] == "20.50"
    assert [(line.kind, line.amount) for line in invoice.lines] == [
        ("usage", 700), ("base_fee", 2000), ("credit", -150), ("credit", -500)]
    assert invoice.lines[2].description == "Credits applied (grant gr_paid)"
