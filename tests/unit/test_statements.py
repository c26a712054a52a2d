"""Statements: line items from the events' evidence, exact subtotal, one rounding (worked by hand)."""

from __future__ import annotations

import random
from datetime import datetime, timezone
from decimal import ROUND_HALF_UP
from decimal import Decimal as D

import pytest

from config.schema import ModelConfig, ModelPrice, PlanConfig, Tiers, TierStep
from metering.store.events import UsageEvent
from metering.billing.plans import Rated, rate_metric, rate_tokens
from metering.billing.statements import LineItem, build_statement, minor_units, round_money
from metering.usage.normalized import Usage

UTC = timezone.utc
START, END = datetime(2028, 1, 1, tzinfo=UTC), datetime(2028, 2, 1, tzinfo=UTC)
TS = datetime(2028, 1, 15, tzinfo=UTC)
MINI = ModelConfig("gpt-4o-mini", "openai", "gpt-4o-mini", "chat",
                   (ModelPrice(D("0.15"), D("0.075"), D("0.60")),))
BIG = ModelConfig("gpt-4o", "openai", "gpt-4o", "chat", (ModelPrice(D("2.50"), D("1.25"), D("10.00")),))
STEPS = (TierStep(1_000_000, D("1.00")), TierStep(5_000_000, D("0.50")), TierStep(None, D("0.25")))


def U(input_tokens: int, cached: int, output: int) -> Usage:
    return Usage(input_tokens=input_tokens, cached_input_tokens=cached, output_tokens=output)


def event(n: int, rated: Rated, *, metric: str = "tokens", quantity: D, model: str | None = None,
          customer: str = "acme", currency: str = "USD") -> UsageEvent:
    return UsageEvent(id=f"ev{n}", ts=TS, customer=customer, key_id=None, metric=metric, quantity=quantity,
                      period=START.isoformat(), model=model, cost=rated.cost, amount=rated.amount,
                      currency=currency, pricing=rated.pricing)


def token_events(plan: PlanConfig, calls: list[tuple[ModelConfig, Usage]]) -> list[UsageEvent]:
    """Rate calls in order at the customer's running position, as the proxy does."""
    events, position = [], 0
    for n, (model, usage) in enumerate(calls):
        rated = rate_tokens(plan, model, usage, TS, position)
        quantity = usage.input_tokens + usage.output_tokens
        events.append(event(n, rated, quantity=D(quantity), model=model.name))
        position += quantity
    return events


def statement(plan: PlanConfig, events: list[UsageEvent]):
    s = build_statement(customer="acme", plan=plan, period_start=START, period_end=END, events=events)
    # the invariants, on every statement built here
    assert s.subtotal == sum((e.amount for e in events), D(0)) + plan.base_fee
    assert s.total == s.subtotal.quantize(D(1).scaleb(-minor_units(plan.currency)), rounding=ROUND_HALF_UP)
    assert sum((line.amount for line in s.lines), D(0)) + s.base_fee == s.subtotal
    assert s.event_count == len(events)
    return s


def lines(s) -> list[tuple]:
    return [(l.metric, l.model, l.tier, l.quantity, l.unit_price, l.amount) for l in s.lines]


PRO = PlanConfig("pro", base_fee=D("20.00"), included={"tokens": 1_000_000},
                 per_million={"input": D("0.30"), "cached_input": D("0.15"), "output": D("1.20")})


def test_base_fee_included_quota_and_overage():
    events = token_events(PRO, [
        # position 0, 800,000 tokens: all inside the quota -> 0
        (MINI, U(600_000, 100_000, 200_000)),
        # position 800,000, 400,000 tokens: 200,000 free = cached 50,000 + input 150,000;
        # input 100,000 x 0.30 = 30,000 + output 100,000 x 1.20 = 120,000 -> 0.15
        (MINI, U(300_000, 50_000, 100_000)),
        # beyond: cached 400,000 x 0.15 = 60,000 + input 600,000 x 0.30 = 180,000 + output 500,000 x 1.20
        # = 600,000 -> 840,000/1e6 = 0.84
        (MINI, U(1_000_000, 400_000, 500_000)),
        # input 10,000 x 0.30 = 3,000 + output 5,000 x 1.20 = 6,000 -> 0.009
        (BIG, U(10_000, 0, 5_000)),
    ])
    assert [e.amount for e in events] == [D("0"), D("0.15"), D("0.84"), D("0.009")]
    s = statement(PRO, events)
    assert lines(s) == [
        ("tokens", "gpt-4o-mini", "included", D(1_000_000), D(0), D(0)),  # 800,000 + 200,000
        ("tokens.cached_input", "gpt-4o-mini", None, D(400_000), D("0.00000015"), D("0.06")),  # 400,000 x 0.15/1e6
        ("tokens.input", "gpt-4o", None, D(10_000), D("0.0000003"), D("0.003")),  # 10,000 x 0.30/1e6
        ("tokens.input", "gpt-4o-mini", None, D(700_000), D("0.0000003"), D("0.21")),  # (100,000 + 600,000) x 0.30/1e6
        ("tokens.output", "gpt-4o", None, D(5_000), D("0.0000012"), D("0.006")),  # 5,000 x 1.20/1e6
        ("tokens.output", "gpt-4o-mini", None, D(600_000), D("0.0000012"), D("0.72")),  # (100,000 + 500,000) x 1.20/1e6
    ]
    assert s.included == {"tokens": D(1_000_000)}
    # 0.06 + 0.003 + 0.21 + 0.006 + 0.72 = 0.999; + 20.00 = 20.999 -> 21.00
    assert (s.base_fee, s.overage, s.subtotal, s.total) == (D("20.00"), D("0.999"), D("20.999"), D("21.00"))
    data = s.to_json()
    assert (data["base_fee"], data["overage"], data["subtotal"], data["total"]) == ("20.00", "0.999", "20.999", "21.00")
    assert data["included"] == {"tokens": "1000000"}
    assert data["lines"][1] == {"metric": "tokens.cached_input", "model": "gpt-4o-mini", "quantity": "400000",
                                "unit_price": "0.00000015", "tier": None, "amount": "0.06"}
    assert data["event_count"] == 4 and data["currency"] == "USD"


def test_graduated_tiers_one_line_per_tier_and_request_fees():
    plan = PlanConfig("scale", tiers=Tiers("tokens", "graduated", STEPS), request_fee=D("0.001"))
    events = token_events(plan, [
        (MINI, U(600_000, 0, 0)),  # 0 -> 600,000: 0.6 + fee 0.001
        (BIG, U(400_000, 0, 100_000)),  # -> 1,100,000: 400,000 x 1.00 + 100,000 x 0.50 = 0.45 + 0.001
        (MINI, U(4_000_000, 0, 0)),  # -> 5,100,000: 3,900,000 x 0.50 = 1.95 + 100,000 x 0.25 = 0.025 + 0.001
    ])
    assert [e.amount for e in events] == [D("0.601"), D("0.451"), D("1.976")]
    s = statement(plan, events)
    assert lines(s) == [
        ("requests", "gpt-4o", None, D(1), D("0.001"), D("0.001")),
        ("requests", "gpt-4o-mini", None, D(2), D("0.001"), D("0.002")),
        ("tokens", None, "1 (up to 1000000)", D(1_000_000), D("0.000001"), D("1")),  # 1,000,000 x 1.00/1e6
        ("tokens", None, "2 (1000000-5000000)", D(4_000_000), D("0.0000005"), D("2")),  # 4,000,000 x 0.50/1e6
        ("tokens", None, "3 (over 5000000)", D(100_000), D("0.00000025"), D("0.025")),  # 100,000 x 0.25/1e6
    ]
    # 0.003 + 1 + 2 + 0.025 = 3.028 -> 3.03
    assert (s.subtotal, s.total) == (D("3.028"), D("3.03"))


def test_volume_tiers_net_to_the_step_the_period_ended_in():
    plan = PlanConfig("volume", tiers=Tiers("tokens", "volume", STEPS))
    events = token_events(plan, [(MINI, U(600_000, 0, 0)), (BIG, U(500_000, 0, 0)), (MINI, U(4_000_000, 0, 0))])
    # T(600,000) = 0.6; T(1,100,000) = 0.55 -> -0.05; T(5,100,000) = 1.275 -> 0.725
    assert [e.amount for e in events] == [D("0.6"), D("-0.05"), D("0.725")]
    s = statement(plan, events)
    # steps 1 and 2 net to 0 units and 0.00; 5,100,000 x 0.25/1e6 = 1.275 -> 1.28 (half up)
    assert lines(s) == [("tokens", None, "3 (over 5000000)", D(5_100_000), D("0.00000025"), D("1.275"))]
    assert (s.subtotal, s.total) == (D("1.275"), D("1.28"))


def test_volume_flat_fees_move_with_the_units():
    plan = PlanConfig("flat", tiers=Tiers("actions", "volume", (TierStep(1000, D("10000"), D("1.00")),
                                                                 TierStep(None, D("5000"), D("3.00")))))
    events, position = [], D(0)
    for n, quantity in enumerate([D(999), D(2), D(500)]):
        events.append(event(n, rate_metric(plan, "actions", quantity, position, None), metric="actions",
                            quantity=quantity))
        position += quantity
    # T(999) = 999 x 0.01 + 1.00 = 10.99; T(1001) = 1001 x 0.005 + 3.00 = 8.005 -> -2.985;
    # T(1501) = 1501 x 0.005 + 3.00 = 10.505 -> 2.5
    assert [e.amount for e in events] == [D("10.99"), D("-2.985"), D("2.5")]
    s = statement(plan, events)
    assert lines(s) == [
        ("actions", None, "2 (over 1000)", D(1501), D("0.005"), D("7.505")),  # 1501 x 0.005
        ("actions", None, "2 (over 1000) flat fee", D(1), D("3.00"), D("3.00")),
    ]
    assert (s.subtotal, s.total) == (D("10.505"), D("10.51"))  # 7.505 + 3.00; 10.505 -> 10.51


def test_custom_metrics_lines_by_unit_price_and_quota():
    plan = PlanConfig("agents", base_fee=D("5"), included={"agent_actions": 100},
                      metric_prices={"agent_actions": D("0.01")})
    records = [("agent_actions", D(90), None), ("agent_actions", D(25), None),  # 10 free, 15 x 0.01 = 0.15
               ("agent_actions", D(3), D("0.05")),  # own price: 3 x 0.05 = 0.15 (outside the quota)
               ("agent_actions", D(7), None),  # 7 x 0.01 = 0.07
               ("emails", D(1000), D("0.0001"))]  # 1000 x 0.0001 = 0.1
    events, position = [], D(0)
    for n, (metric, quantity, unit_price) in enumerate(records):
        rated = rate_metric(plan, metric, quantity, position, unit_price)
        events.append(event(n, rated, metric=metric, quantity=quantity))
        if unit_price is None and metric == "agent_actions":
            position += quantity  # records with their own price do not use the plan's quota
    s = statement(plan, events)
    assert lines(s) == [
        ("agent_actions", None, "included", D(100), D(0), D(0)),  # 90 + 10
        ("agent_actions", None, None, D(22), D("0.01"), D("0.22")),  # (15 + 7) x 0.01
        ("agent_actions", None, None, D(3), D("0.05"), D("0.15")),
        ("emails", None, None, D(1000), D("0.0001"), D("0.1")),
    ]
    assert s.included == {"agent_actions": D(100)}
    # 0.22 + 0.15 + 0.1 = 0.47 + 5 = 5.47
    assert (s.overage, s.subtotal, s.total) == (D("0.47"), D("5.47"), D("5.47"))


# ---------------------------------------------------------------------------------------------
# Rounding: once, on the subtotal, half up, to the currency's minor unit


def plain(n: int, amount: str, currency: str = "USD") -> UsageEvent:
    return UsageEvent(id=f"r{n}", ts=TS, customer="acme", key_id=None, metric="api_calls", quantity=D(1),
                      period=START.isoformat(), amount=D(amount), currency=currency)


@pytest.mark.parametrize("currency, base_fee, amounts, subtotal, total, text", [
    ("USD", "0", ["4.285"], "4.285", "4.29", "4.29"),  # half up
    ("USD", "0", ["4.284999"], "4.284999", "4.28", "4.28"),
    ("USD", "0", ["4.28"], "4.28", "4.28", "4.28"),  # the seed example
    ("USD", "20.00", ["0.0049999"], "20.0049999", "20.00", "20.00"),
    ("USD", "0", ["0.005"], "0.005", "0.01", "0.01"),
    # rounded once: 1.0025 + 1.0025 = 2.005 -> 2.01 (rounding each line first would give 1.00 + 1.00)
    ("USD", "0", ["1.0025", "1.0025"], "2.005", "2.01", "2.01"),
    # negative marginals (volume tiers) are part of the exact sum: 0.6 - 0.05 + 0.725 = 1.275 -> 1.28
    ("USD", "0", ["0.6", "-0.05", "0.725"], "1.275", "1.28", "1.28"),
    ("USD", "0", ["0.0000073125"], "0.0000073125", "0.00", "0.00"),
    ("EUR", "9.99", ["0.000000000000000001"], "9.990000000000000001", "9.99", "9.99"),
    ("JPY", "0", ["1234.5"], "1234.5", "1235", "1235"),  # no minor unit
    ("JPY", "0", ["1234.4999"], "1234.4999", "1234", "1234"),
    ("JPY", "1000", ["0.25", "0.25"], "1000.5", "1001", "1001"),
    ("KRW", "0", ["999.5"], "999.5", "1000", "1000"),
    ("KWD", "0", ["1.2345"], "1.2345", "1.235", "1.235"),  # 3 decimals
])
def test_rounding_once(currency, base_fee, amounts, subtotal, total, text):
    plan = PlanConfig("p", currency=currency, base_fee=D(base_fee), markup=D(1))
    s = statement(plan, [plain(n, a, currency) for n, a in enumerate(amounts)])
    assert s.subtotal == D(subtotal)
    assert s.total == D(total)
    assert s.to_json()["total"] == text
    assert round_money(D(subtotal), currency) == D(total)


def test_minor_units():
    assert [minor_units(c) for c in ("USD", "eur", "JPY", "KRW", "KWD")] == [2, 2, 0, 0, 3]


# ---------------------------------------------------------------------------------------------
# Events without itemized evidence, and bad input


def test_events_without_items_give_one_line_each_group():
    plan = PlanConfig("payg", markup=D("1.25"))
    legacy = [
        # priced by the old per-record route: its unit price multiplies out, so it is shown
        UsageEvent(id="a", ts=TS, customer="acme", key_id=None, metric="agent_actions", quantity=D(3),
                   period="p", amount=D("0.15"), pricing={"unit_price": "0.05", "unit_price_source": "record"}),
        # a token event priced before itemization
        UsageEvent(id="b", ts=TS, customer="acme", key_id=None, metric="tokens", quantity=D(1500),
                   period="p", model="gpt-4o-mini", amount=D("0.000525"), pricing={"markup": "1.25"}),
        # items that do not add up to the amount are not trusted
        UsageEvent(id="c", ts=TS, customer="acme", key_id=None, metric="tokens", quantity=D(10),
                   period="p", model="gpt-4o-mini", amount=D("1"),
                   pricing={"items": [{"metric": "tokens.input", "tier": None, "quantity": "10",
                                       "unit_price": "0.01", "amount": "0.1"}]}),
    ]
    s = statement(plan, legacy)
    assert lines(s) == [
        ("agent_actions", None, None, D(3), D("0.05"), D("0.15")),
        ("tokens", "gpt-4o-mini", None, D(1510), None, D("1.000525")),  # 1500 + 10; 0.000525 + 1
    ]
    assert (s.subtotal, s.total) == (D("1.150525"), D("1.15"))


def test_the_journal_round_trip_keeps_the_statement_exact():
    """Events written as JSON lines (journal, export) and read back give the same statement."""
    plan = PlanConfig("scale", base_fee=D("0.5"), included={"tokens": 1000}, markup=D("1.375"),
                      tiers=Tiers("tokens", "volume", STEPS), request_fee=D("0.000123456789"))
    events = token_events(plan, [(MINI, U(900, 0, 600)), (BIG, U(999_000, 1000, 2000)), (MINI, U(3, 1, 4))])
    again = [UsageEvent.from_json(e.to_json()) for e in events]
    assert statement(plan, again) == statement(plan, events)


def test_an_empty_period_bills_the_base_fee():
    s = statement(PRO, [])
    assert (s.lines, s.included, s.overage, s.subtotal, s.total, s.event_count) == (
        (), {"tokens": D(0)}, D(0), D("20.00"), D("20.00"), 0)


@pytest.mark.parametrize("bad, message", [
    (UsageEvent(id="x", ts=TS, customer="globex", key_id=None, metric="m", quantity=D(1), period="p",
                amount=D(1)), "belongs to 'globex'"),
    (plain(0, "1", currency="EUR"), "is in EUR"),
])
def test_foreign_events_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        build_statement(customer="acme", plan=PRO, period_start=START, period_end=END, events=[bad])


def test_random_periods_keep_the_invariants():
    """Mixed plans and events, each rated at its running position: lines, subtotal and total agree."""
    rng = random.Random(2028)
    plans = [PRO, PlanConfig("v", base_fee=D("0.333"), tiers=Tiers("tokens", "volume", STEPS), request_fee=D("0.0001")),
             PlanConfig("g", included={"tokens": 50_000, "agent_actions": 5}, markup=D("1.375"),
                        metric_prices={"agent_actions": D("0.0125")},
                        tiers=Tiers("tokens", "graduated", STEPS))]
    for _ in range(50):
        plan = rng.choice(plans)
        events, tokens, actions = [], 0, D(0)
        for n in range(rng.randint(0, 40)):
            if rng.random() < 0.7:
                usage = U(rng.randint(0, 900_000), 0, rng.randint(0, 300_000))
                usage = U(usage.input_tokens, rng.randint(0, usage.input_tokens), usage.output_tokens)
                model = rng.choice([MINI, BIG])
                rated = rate_tokens(plan, model, usage, TS, tokens)
                quantity = usage.input_tokens + usage.output_tokens
                events.append(event(n, rated, quantity=D(quantity), model=model.name))
                tokens += quantity
            else:
                quantity = D(rng.randint(1, 5000)) / 100
                own = None if "agent_actions" in plan.metric_prices and rng.random() < 0.5 else D("0.07")
                rated = rate_metric(plan, "agent_actions", quantity, actions, own)
                events.append(event(n, rated, metric="agent_actions", quantity=quantity))
                actions += quantity if own is None else 0
        s = statement(plan, events)  # asserts the invariants
        for line in s.lines:
            assert isinstance(line, LineItem)
            if line.unit_price is not None:
                assert line.quantity * line.unit_price == line.amount
