"""Rating math, table-driven: every expected amount is worked out by hand in the comment of its row.

Prices in the plans are USD per 1M tokens (or per 1M units for tiers); `x/1e6` below is that
division. Provider cost of the model `mini` (per 1M): input 0.15, cached input 0.075, output 0.60;
of `big`: input 2.50, cached input 1.25, output 10.00. Amounts are compared as exact Decimals.
"""

from __future__ import annotations

import itertools
import random
from datetime import datetime, timezone
from decimal import Decimal as D

import pytest

from config.schema import ModelConfig, ModelPrice, PlanConfig, Tiers, TierStep
from metering.billing.plans import (
    max_tier_marginal,
    max_tokens_amount,
    rate_metric,
    rate_tokens,
    tiered_total,
    uses_position,
)
from metering.usage.normalized import Usage

UTC = timezone.utc
TS = datetime(2028, 1, 15, 12, tzinfo=UTC)

MINI = ModelConfig("gpt-4o-mini", "openai", "gpt-4o-mini", "chat",
                   (ModelPrice(D("0.15"), D("0.075"), D("0.60")),))
BIG = ModelConfig("gpt-4o", "openai", "gpt-4o", "chat", (ModelPrice(D("2.50"), D("1.25"), D("10.00")),))
# The provider lowered its price on 2028-01-10.
DATED = ModelConfig("dated", "openai", "dated", "chat",
                    (ModelPrice(D("0.15"), D("0.075"), D("0.60")),
                     ModelPrice(D("0.10"), D("0.05"), D("0.40"), effective_from=datetime(2028, 1, 10, tzinfo=UTC))))


def U(input_tokens: int, cached: int, output: int, reasoning: int = 0) -> Usage:
    return Usage(input_tokens=input_tokens, cached_input_tokens=cached, output_tokens=output,
                 reasoning_tokens=reasoning)


TYPES = PlanConfig("types", per_million={"input": D("0.30"), "cached_input": D("0.15"), "output": D("1.20")})
NOCACHE = PlanConfig("nocache", per_million={"input": D("0.30"), "output": D("1.20")})
PER_MODEL = PlanConfig("per_model", per_million={"input": D("0.30"), "output": D("1.20")},
                       model_prices={"gpt-4o": {"input": D("5"), "cached_input": D("2.5"), "output": D("15")}})
MARKUP = PlanConfig("payg", markup=D("1.25"))

PRO = PlanConfig("pro", base_fee=D("20.00"), included={"tokens": 1_000_000},
                 per_million={"input": D("0.30"), "output": D("1.20")})
PRO_CACHED = PlanConfig("pro_cached", base_fee=D("20.00"), included={"tokens": 1_000_000},
                        per_million={"input": D("0.30"), "cached_input": D("0.15"), "output": D("1.20")})
QUOTA_MARKUP = PlanConfig("quota_markup", included={"tokens": 1_000_000}, markup=D("1.25"))

STEPS = (TierStep(1_000_000, D("1.00")), TierStep(5_000_000, D("0.50")), TierStep(None, D("0.25")))
GRAD = PlanConfig("grad", tiers=Tiers("tokens", "graduated", STEPS))
VOL = PlanConfig("vol", tiers=Tiers("tokens", "volume", STEPS))
GRAD_Q = PlanConfig("grad_q", included={"tokens": 100_000}, tiers=Tiers("tokens", "graduated", STEPS))
VOL_Q = PlanConfig("vol_q", included={"tokens": 100_000}, tiers=Tiers("tokens", "volume", STEPS))
# Flat fees: per_million 2000 = 0.002 a unit; 10000 = 0.01 a unit; 5000 = 0.005 a unit.
FLAT_GRAD = Tiers("tokens", "graduated", (TierStep(1000, D(0), D("5.00")), TierStep(None, D("2000"), D("1.00"))))
FLAT_VOL = Tiers("tokens", "volume", (TierStep(1000, D("10000"), D("1.00")), TierStep(None, D("5000"), D("3.00"))))


def tiers_on(tiers: Tiers, metric: str) -> Tiers:
    return Tiers(metric, tiers.mode, tiers.steps)


# ---------------------------------------------------------------------------------------------
# Pay-per-use by token type, cached tokens, markup


@pytest.mark.parametrize("plan, model, usage, ts, amount, cost", [
    # uncached 600 x 0.30 = 180, cached 400 x 0.15 = 60, output 500 x 1.20 = 600 -> 840/1e6
    # cost: 600 x 0.15 = 90 + 400 x 0.075 = 30 + 500 x 0.60 = 300 -> 420/1e6
    (TYPES, MINI, U(1000, 400, 500), TS, "0.00084", "0.00042"),
    # no cached price: cached input at the input price: 1000 x 0.30 = 300 + 500 x 1.20 = 600 -> 900/1e6
    (NOCACHE, MINI, U(1000, 400, 500), TS, "0.0009", "0.00042"),
    # reasoning tokens are inside output, not priced again: 1000 x 0.30 = 300 + 500 x 1.20 = 600 -> 900/1e6
    # cost: 1000 x 0.15 = 150 + 500 x 0.60 = 300 -> 450/1e6
    (TYPES, MINI, U(1000, 0, 500, reasoning=300), TS, "0.0009", "0.00045"),
    # cached above input is clamped to input: 100 cached x 0.15 = 15/1e6; cost 100 x 0.075 = 7.5/1e6
    (TYPES, MINI, U(100, 150, 0), TS, "0.000015", "0.0000075"),
    # per-model prices: uncached 1000 x 5 = 5000, cached 1000 x 2.5 = 2500, output 300 x 15 = 4500 -> 12000/1e6
    # cost: 1000 x 2.50 = 2500 + 1000 x 1.25 = 1250 + 300 x 10 = 3000 -> 6750/1e6
    (PER_MODEL, BIG, U(2000, 1000, 300), TS, "0.012", "0.00675"),
    # a model without its own prices falls back to per_million (cached at input price):
    # 2000 x 0.30 = 600 + 300 x 1.20 = 360 -> 960/1e6; cost 1000 x 0.15 + 1000 x 0.075 + 300 x 0.60 = 405 -> 405/1e6
    (PER_MODEL, MINI, U(2000, 1000, 300), TS, "0.00096", "0.000405"),
    # markup: cost 420/1e6 (first row) x 1.25 = 525/1e6
    (MARKUP, MINI, U(1000, 400, 500), TS, "0.000525", "0.00042"),
    # cost 2 x 2.50 + 1 x 10.00 = 15.00; x 1.25 = 18.75
    (MARKUP, BIG, U(2_000_000, 0, 1_000_000), TS, "18.75", "15"),
    # odd counts: uncached 1,000,000 x 0.15 = 150,000; cached 234,567 x 0.075 = 17,592.525;
    # output 89,012 x 0.60 = 53,407.2; sum 220,999.725 -> cost 0.220999725; x 1.25 = 0.27624965625
    (MARKUP, MINI, U(1_234_567, 234_567, 89_012), TS, "0.27624965625", "0.220999725"),
    # the price in force at ts: since 2028-01-10: 1000 x 0.10 + 1000 x 0.40 = 500 -> 0.0005; x 1.25 = 0.000625
    (MARKUP, DATED, U(1000, 0, 1000), TS, "0.000625", "0.0005"),
    # before 2028-01-10: 1000 x 0.15 + 1000 x 0.60 = 750 -> 0.00075; x 1.25 = 0.0009375
    (MARKUP, DATED, U(1000, 0, 1000), datetime(2028, 1, 5, tzinfo=UTC), "0.0009375", "0.00075"),
])
def test_pay_per_use(plan, model, usage, ts, amount, cost):
    for position in (0, 5_000_000):  # no quota, no tiers: the position does not matter
        rated = rate_tokens(plan, model, usage, ts, position)
        assert rated.amount == D(amount)
        assert rated.cost == D(cost)
        assert rated.included_used == 0
        assert sum(D(item["amount"]) for item in rated.pricing["items"]) == rated.amount


def test_pay_per_use_evidence_names_each_price():
    rated = rate_tokens(TYPES, MINI, U(1000, 400, 500), TS, 0)
    assert rated.pricing["price_per_million"] == {"input": "0.3", "cached_input": "0.15", "output": "1.2"}
    assert rated.pricing["cost_per_million"] == {"input": "0.15", "cached_input": "0.075", "output": "0.6"}
    assert [(i["metric"], i["quantity"], i["unit_price"], i["amount"]) for i in rated.pricing["items"]] == [
        ("tokens.cached_input", "400", "0.00000015", "0.00006"),  # 400 x 0.15/1e6
        ("tokens.input", "600", "0.0000003", "0.00018"),  # 600 x 0.30/1e6
        ("tokens.output", "500", "0.0000012", "0.0006"),  # 500 x 1.20/1e6
    ]


# ---------------------------------------------------------------------------------------------
# Base + included quota, crossing it mid-request (cached input, then input, then output)


@pytest.mark.parametrize("plan, usage, position, amount, included_used", [
    # inside the quota: free
    (PRO, U(1000, 0, 500), 0, "0", 1500),
    # ends exactly on the quota (998,500 + 1,500 = 1,000,000): free
    (PRO, U(1000, 0, 500), 998_500, "0", 1500),
    # crosses: 1,000 free, all input; input 500 x 0.30 = 150 + output 2000 x 1.20 = 2400 -> 2550/1e6
    (PRO, U(1500, 0, 2000), 999_000, "0.00255", 1000),
    # 1,000 free: cached 300, uncached 500, output 200; output 500 x 1.20 = 600 -> 600/1e6
    (PRO_CACHED, U(800, 300, 700), 999_000, "0.0006", 1000),
    # 200 free, all cached: cached 100 x 0.15 = 15 + uncached 500 x 0.30 = 150 + output 700 x 1.20 = 840 -> 1005/1e6
    (PRO_CACHED, U(800, 300, 700), 999_800, "0.001005", 200),
    # quota used up exactly: 1000 x 0.30 = 300 -> 300/1e6
    (PRO, U(1000, 0, 0), 1_000_000, "0.0003", 0),
    # far beyond: 1000 x 0.30 = 300 + 1000 x 1.20 = 1200 -> 1500/1e6
    (PRO, U(1000, 0, 1000), 7_000_000, "0.0015", 0),
    # markup after a quota: 500 input free; billable cost 500 x 0.15 = 75 + 1000 x 0.60 = 600 = 675/1e6;
    # x 1.25 = 843.75/1e6
    (QUOTA_MARKUP, U(1000, 0, 1000), 999_500, "0.00084375", 500),
])
def test_included_quota(plan, usage, position, amount, included_used):
    rated = rate_tokens(plan, MINI, usage, TS, position)
    assert rated.amount == D(amount)
    assert rated.included_used == included_used
    assert rated.pricing["included"]["used"] == str(included_used)
    # the provider's cost counts every token, free ones too
    assert rated.cost == rate_tokens(MARKUP, MINI, usage, TS, 0).cost


# ---------------------------------------------------------------------------------------------
# Tiers: graduated and volume, crossing edges inside one request


@pytest.mark.parametrize("plan, usage, position, amount", [
    # tier 1 only: 1000 x 1.00 -> 1000/1e6
    (GRAD, U(600, 0, 400), 0, "0.001"),
    # one edge: 1000 in tier 1 x 1.00 = 1000; 2000 in tier 2 x 0.50 = 1000 -> 2000/1e6
    (GRAD, U(1000, 0, 2000), 999_000, "0.002"),
    # two edges, 900,000 -> 5,100,000: tier 1 100,000 x 1.00 = 100,000; tier 2 4,000,000 x 0.50 = 2,000,000;
    # tier 3 100,000 x 0.25 = 25,000 -> 2,125,000/1e6
    (GRAD, U(4_000_000, 0, 200_000), 900_000, "2.125"),
    # tier 3: 1000 x 0.25 = 250 -> 250/1e6
    (GRAD, U(1000, 0, 0), 6_000_000, "0.00025"),
    # tiers ignore the token type: 1000 cached x 1.00 -> 1000/1e6
    (GRAD, U(1000, 1000, 0), 0, "0.001"),
    # after a 100,000 quota: 50,000 free, then billable 0 -> 50,000 x 1.00 -> 50,000/1e6
    (GRAD_Q, U(60_000, 0, 40_000), 50_000, "0.05"),
    # billable 990,000 -> 1,010,000: 10,000 x 1.00 + 10,000 x 0.50 = 15,000 -> 15,000/1e6
    (GRAD_Q, U(10_000, 0, 10_000), 1_090_000, "0.015"),
    # volume, tier 1: 1000 x 1.00 -> 1000/1e6
    (VOL, U(600, 0, 400), 0, "0.001"),
    # up to the edge, which belongs to tier 1: T(1,000,000) - T(999,000) = 1.00 - 0.999 = 0.001
    (VOL, U(1000, 0, 0), 999_000, "0.001"),
    # across it: T(1,001,000) = 1,001,000 x 0.50/1e6 = 0.5005; T(999,000) = 0.999 -> -0.4985
    (VOL, U(1000, 0, 1000), 999_000, "-0.4985"),
    # one token past the edge: T(1,000,001) = 0.5000005 - T(1,000,000) = 1.00 -> -0.4999995
    (VOL, U(1, 0, 0), 1_000_000, "-0.4999995"),
    # T(6,000,000) = 6 x 0.25 = 1.5; T(4,000,000) = 4 x 0.50 = 2.0 -> -0.5
    (VOL, U(1_000_000, 0, 1_000_000), 4_000_000, "-0.5"),
    # tier 3: 1,000,000 x 0.25 -> 0.25
    (VOL, U(1_000_000, 0, 0), 6_000_000, "0.25"),
    # after a 100,000 quota: billable 0 -> 50,000 at tier 1: 50,000 x 1.00 -> 0.05
    (VOL_Q, U(60_000, 0, 40_000), 50_000, "0.05"),
])
def test_tiers_per_request(plan, usage, position, amount):
    rated = rate_tokens(plan, MINI, usage, TS, position)
    assert rated.amount == D(amount)
    assert sum(D(item["amount"]) for item in rated.pricing["items"]) == rated.amount


@pytest.mark.parametrize("plan, amounts, total", [
    # T(600,000) = 0.6; T(1,100,000) = 1.00 + 100,000 x 0.50/1e6 = 1.05 -> 0.45;
    # T(5,100,000) = 1.00 + 4,000,000 x 0.50/1e6 + 100,000 x 0.25/1e6 = 3.025 -> 1.975; sum 3.025
    (GRAD, ["0.6", "0.45", "1.975"], "3.025"),
    # T(600,000) = 0.6; T(1,100,000) = 1.1 x 0.50 = 0.55 -> -0.05; T(5,100,000) = 5.1 x 0.25 = 1.275 -> 0.725;
    # sum 0.6 - 0.05 + 0.725 = 1.275 = T(5,100,000)
    (VOL, ["0.6", "-0.05", "0.725"], "1.275"),
])
def test_a_sequence_of_requests_sums_to_the_tier_total_of_the_period(plan, amounts, total):
    position, got = 0, []
    for n in (600_000, 500_000, 4_000_000):
        got.append(rate_tokens(plan, MINI, U(n, 0, 0), TS, position).amount)
        position += n
    assert got == [D(a) for a in amounts]
    assert sum(got) == D(total) == tiered_total(plan.tiers, D(position))


@pytest.mark.parametrize("tiers, quantity, total", [
    (STEPS, "0", "0"),
    # 0.5 x 1.00/1e6
    (STEPS, "0.5", "0.0000005"),
    # 1,000,000 x 1.00/1e6
    (STEPS, "1000000", "1"),
    # 1.00 + 1,000,000 x 0.50/1e6 = 1.5
    (STEPS, "2000000", "1.5"),
    # 1.00 + 4,000,000 x 0.50/1e6 + 2,000,000 x 0.25/1e6 = 1 + 2 + 0.5
    (STEPS, "7000000", "3.5"),
    # flat fees, graduated: nothing reached at 0
    (FLAT_GRAD.steps, "0", "0"),
    # step 1 reached: 1 x 0 + flat 5.00
    (FLAT_GRAD.steps, "1", "5"),
    (FLAT_GRAD.steps, "1000", "5"),
    # 5.00 + step 2: 1 x 0.002 + flat 1.00 = 6.002
    (FLAT_GRAD.steps, "1001", "6.002"),
    # 5.00 + 2000 x 0.002 = 4 + 1.00 = 10
    (FLAT_GRAD.steps, "3000", "10"),
])
def test_graduated_total(tiers, quantity, total):
    assert tiered_total(Tiers("x", "graduated", tuple(tiers)), D(quantity)) == D(total)


@pytest.mark.parametrize("tiers, quantity, total", [
    (STEPS, "0", "0"),
    # 1,000,000 x 1.00/1e6 (the edge is in tier 1)
    (STEPS, "1000000", "1"),
    # 2,000,000 x 0.50/1e6
    (STEPS, "2000000", "1"),
    # 7,000,000 x 0.25/1e6
    (STEPS, "7000000", "1.75"),
    (FLAT_VOL.steps, "0", "0"),
    # 500 x 0.01 + 1.00
    (FLAT_VOL.steps, "500", "6"),
    # 1000 x 0.01 + 1.00
    (FLAT_VOL.steps, "1000", "11"),
    # 1001 x 0.005 = 5.005 + 3.00
    (FLAT_VOL.steps, "1001", "8.005"),
    # 2000 x 0.005 = 10 + 3.00
    (FLAT_VOL.steps, "2000", "13"),
])
def test_volume_total(tiers, quantity, total):
    assert tiered_total(Tiers("x", "volume", tuple(tiers)), D(quantity)) == D(total)


@pytest.mark.parametrize("tiers, position, quantity, amount", [
    # graduated: first unit reaches step 1: flat 5.00 + 1 x 0
    (FLAT_GRAD, 0, 1, "5"),
    # 999 -> 1001: step 1 1 unit x 0 = 0; step 2 1 unit x 0.002 + flat 1.00 -> 1.002
    (FLAT_GRAD, 999, 2, "1.002"),
    # inside step 2: 10 x 0.002, no flat fee again
    (FLAT_GRAD, 2000, 10, "0.02"),
    # volume: T(1001) = 8.005; T(999) = 999 x 0.01 + 1.00 = 10.99 -> -2.985
    (FLAT_VOL, 999, 2, "-2.985"),
    # first unit: 1 x 0.01 + 1.00
    (FLAT_VOL, 0, 1, "1.01"),
])
def test_flat_fees_on_steps(tiers, position, quantity, amount):
    plan = PlanConfig("flat", tiers=tiers_on(tiers, "actions"))
    assert rate_metric(plan, "actions", D(quantity), D(position), None).amount == D(amount)
    plan = PlanConfig("flat_tokens", tiers=tiers)
    assert rate_tokens(plan, MINI, U(quantity, 0, 0), TS, position).amount == D(amount)


def test_volume_edge_moves_units_and_flat_fee_to_the_new_step():
    rated = rate_tokens(PlanConfig("flat", tiers=FLAT_VOL), MINI, U(2, 0, 0), TS, 999)
    assert [(i["tier"], i["quantity"], i["amount"]) for i in rated.pricing["items"]] == [
        ("1 (up to 1000)", "-999", "-9.99"),  # 999 x 0.01 taken out of step 1
        ("1 (up to 1000) flat fee", "-1", "-1"),
        ("2 (over 1000)", "1001", "5.005"),  # 1001 x 0.005
        ("2 (over 1000) flat fee", "1", "3"),
    ]  # -9.99 - 1 + 5.005 + 3 = -2.985


# ---------------------------------------------------------------------------------------------
# Per-request fee


@pytest.mark.parametrize("plan, usage, position, amount", [
    # markup 0.000525 (cost 420/1e6 x 1.25) + fee 0.002
    (PlanConfig("fee", markup=D("1.25"), request_fee=D("0.002")), U(1000, 400, 500), 0, "0.002525"),
    # inside the quota the tokens are free, the fee is not
    (PlanConfig("fee_q", included={"tokens": 1_000_000}, per_million={"input": D("0.30"), "output": D("1.20")},
                request_fee=D("0.01")), U(1000, 0, 1000), 0, "0.01"),
    # graduated one edge 0.002 (see above) + fee 0.001
    (PlanConfig("fee_t", tiers=Tiers("tokens", "graduated", STEPS), request_fee=D("0.001")),
     U(1000, 0, 2000), 999_000, "0.003"),
    # a call with no tokens still pays the fee
    (PlanConfig("fee", markup=D("1.25"), request_fee=D("0.002")), U(0, 0, 0), 0, "0.002"),
])
def test_request_fee(plan, usage, position, amount):
    rated = rate_tokens(plan, MINI, usage, TS, position)
    assert rated.amount == D(amount)
    assert rated.pricing["request_fee"] == str(plan.request_fee)


# ---------------------------------------------------------------------------------------------
# Custom metrics

AGENTS = PlanConfig(
    "agents", markup=D("1.25"), included={"agent_actions": 100},
    metric_prices={"agent_actions": D("0.01"), "api_calls": D("0.0004"), "compute_minutes": D("9.99")},
    # compute minutes: per_million 20000 = 0.02 a minute up to 1000, then 10000 = 0.01 a minute
    tiers=Tiers("compute_minutes", "graduated", (TierStep(1000, D("20000")), TierStep(None, D("10000")))))


@pytest.mark.parametrize("metric, quantity, position, unit_price, amount, included_used, source", [
    # a record's own price: 3 x 0.05, no markup, no quota (agent_actions has 100 included)
    ("agent_actions", "3", "0", "0.05", "0.15", "0", "record"),
    # a metric the plan does not know, priced by the record: 1000 x 0.0001
    ("emails", "1000", "0", "0.0001", "0.1", "0", "record"),
    # fractional quantity: 2.5 x 0.4
    ("gpu_hours", "2.5", "0", "0.4", "1", "0", "record"),
    # plan price inside the quota: free
    ("agent_actions", "50", "0", None, "0", "50", "plan"),
    # crossing the quota: 10 free, 15 x 0.01
    ("agent_actions", "25", "90", None, "0.15", "10", "plan"),
    # beyond it: 7 x 0.01
    ("agent_actions", "7", "200", None, "0.07", "0", "plan"),
    # no quota: 2500 x 0.0004
    ("api_calls", "2500", "0", None, "1", "0", "plan"),
    # tiers on the metric win over its plan price: 30 x 0.02
    ("compute_minutes", "30", "0", None, "0.6", "0", "tiers"),
    # crossing the edge: 10 x 0.02 + 10 x 0.01 = 0.2 + 0.1
    ("compute_minutes", "20", "990", None, "0.3", "0", "tiers"),
    # fractional: 999.5 -> 1000.75: 0.5 x 0.02 = 0.01 + 0.75 x 0.01 = 0.0075
    ("compute_minutes", "1.25", "999.5", None, "0.0175", "0", "tiers"),
])
def test_custom_metrics(metric, quantity, position, unit_price, amount, included_used, source):
    rated = rate_metric(AGENTS, metric, D(quantity), D(position), None if unit_price is None else D(unit_price))
    assert rated.amount == D(amount)
    assert rated.included_used == D(included_used)
    assert rated.cost == 0
    assert rated.pricing["unit_price_source"] == source


@pytest.mark.parametrize("metric, quantity, unit_price, message", [
    ("emails", "1", None, "unknown metric 'emails'"),
    ("tokens", "1", None, "metered from model calls"),
    ("agent_actions", "-1", None, "zero or more"),
    ("agent_actions", "1", "-0.5", "zero or more"),
    ("agent_actions", "NaN", None, "finite"),
])
def test_custom_metric_errors(metric, quantity, unit_price, message):
    with pytest.raises(ValueError, match=message):
        rate_metric(AGENTS, metric, D(quantity), D(0), None if unit_price is None else D(unit_price))


def test_an_amount_beyond_the_ledger_precision_is_refused_not_rounded():
    plan = PlanConfig("tiny", tiers=Tiers("bytes", "graduated", (TierStep(None, D("0.000000001")),)))
    # 1000 x 0.000000001/1e6 = 0.000000000001: 12 places, fine
    assert rate_metric(plan, "bytes", D(1000), D(0), None).amount == D("0.000000000001")
    # 0.123456789 x 1e-15 = 1.23456789e-16: 24 places
    with pytest.raises(ValueError, match="18 decimal places"):
        rate_metric(plan, "bytes", D("0.123456789"), D(0), None)


def test_uses_position():
    assert uses_position(PRO, "tokens") and uses_position(GRAD, "tokens")
    assert not uses_position(MARKUP, "tokens") and not uses_position(TYPES, "tokens")
    assert uses_position(AGENTS, "agent_actions") and uses_position(AGENTS, "compute_minutes")
    assert not uses_position(AGENTS, "api_calls") and not uses_position(AGENTS, "tokens")


# ---------------------------------------------------------------------------------------------
# Properties: sums of marginal amounts telescope (seeded random, reproducible)


def _split(rng: random.Random, cached: int, uncached: int, output: int, pieces: int) -> list[Usage]:
    """Cut the ordered token stream (cached input, input, output) at random points."""
    total = cached + uncached + output
    cuts = sorted({0, total, *(rng.randint(0, total) for _ in range(pieces - 1))})
    chunks = []
    for lo, hi in itertools.pairwise(cuts):
        c, i, o = (max(0, min(hi, b) - max(lo, a))
                   for a, b in ((0, cached), (cached, cached + uncached), (cached + uncached, total)))
        chunks.append(U(c + i, c, o))
    return chunks


@pytest.mark.parametrize("plan", [TYPES, MARKUP, PRO_CACHED, QUOTA_MARKUP, GRAD, VOL, GRAD_Q, VOL_Q,
                                  PlanConfig("flat_g", included={"tokens": 500}, tiers=FLAT_GRAD),
                                  PlanConfig("flat_v", tiers=FLAT_VOL)],
                         ids=lambda p: p.name)
def test_random_splits_of_a_request_sum_to_the_whole(plan):
    rng = random.Random(20280115)
    for _ in range(200):
        cached, uncached, output = (rng.choice([0, rng.randint(1, 3000), rng.randint(1, 3_000_000)])
                                    for _ in range(3))
        start = rng.choice([0, rng.randint(0, 2_000_000), 999_000, 99_000])
        whole = rate_tokens(plan, MINI, U(cached + uncached, cached, output), TS, start)
        position, amounts, free = start, [], 0
        for usage in _split(rng, cached, uncached, output, rng.randint(1, 12)):
            rated = rate_tokens(plan, MINI, usage, TS, position)
            amounts.append(rated.amount)
            free += rated.included_used
            position += usage.input_tokens + usage.output_tokens
        assert sum(amounts) == whole.amount
        assert free == whole.included_used


@pytest.mark.parametrize("plan", [GRAD_Q, VOL_Q, PlanConfig("fee_v", tiers=Tiers("tokens", "volume", STEPS),
                                                            included={"tokens": 1234}, request_fee=D("0.0007")),
                                  PlanConfig("flat_g", included={"tokens": 500}, tiers=FLAT_GRAD,
                                             request_fee=D("0.01")),
                                  PlanConfig("flat_v", tiers=FLAT_VOL)],
                         ids=lambda p: p.name)
def test_random_request_sequences_sum_to_the_period_tier_total(plan):
    rng = random.Random(7)
    quota = plan.included.get("tokens", 0)
    for _ in range(100):
        position, total, calls = 0, D(0), 0
        for _ in range(rng.randint(1, 30)):
            usage = U(rng.randint(0, 400_000), 0, rng.randint(0, 200_000))
            usage = U(usage.input_tokens, rng.randint(0, usage.input_tokens), usage.output_tokens)
            total += rate_tokens(plan, rng.choice([MINI, BIG]), usage, TS, position).amount
            position += usage.input_tokens + usage.output_tokens
            calls += 1
        assert total == tiered_total(plan.tiers, D(max(position - quota, 0))) + calls * plan.request_fee


@pytest.mark.parametrize("metric", ["agent_actions", "compute_minutes"])
@pytest.mark.parametrize("mode", ["graduated", "volume"])
def test_random_custom_records_sum_to_the_period_total(metric, mode):
    plan = PlanConfig("m", included={"agent_actions": 100, "compute_minutes": 40},
                      metric_prices={"agent_actions": D("0.01")},
                      tiers=Tiers("compute_minutes", mode, (TierStep(100, D("30000"), D("0.5")),
                                                            TierStep(1000, D("20000")),
                                                            TierStep(None, D("10000"), D("2")))))
    rng = random.Random(42)
    quota = D(plan.included[metric])
    for _ in range(100):
        position, total = D(0), D(0)
        for _ in range(rng.randint(1, 40)):
            quantity = D(rng.randint(0, 90_000)) / 1000  # up to 3 decimals
            total += rate_metric(plan, metric, quantity, position, None).amount
            position += quantity
        billable = max(position - quota, D(0))
        expected = billable * D("0.01") if metric == "agent_actions" else tiered_total(plan.tiers, billable)
        assert total == expected


# ---------------------------------------------------------------------------------------------
# Admission bound: the most a call can add at any position


@pytest.mark.parametrize("mode", ["graduated", "volume"])
@pytest.mark.parametrize("steps", [
    (TierStep(10, D("1000000"), D(0)), TierStep(25, D("3000000"), D("2")), TierStep(None, D("500000"), D("1"))),
    (TierStep(10, D("5000000"), D("3")), TierStep(25, D("1000000")), TierStep(None, D("4000000"), D("0.5"))),
    (TierStep(None, D("2000000"), D("1")),),
])
def test_max_tier_marginal_is_the_brute_force_max(mode, steps):
    tiers = Tiers("tokens", mode, steps)
    total = [tiered_total(tiers, D(q)) for q in range(200)]
    for n in range(60):
        brute = max([total[a + n] - total[a] for a in range(120)] + [total[m] for m in range(n + 1)])
        assert max_tier_marginal(tiers, n) == brute, n


@pytest.mark.parametrize("plan", [PRO_CACHED, QUOTA_MARKUP, GRAD_Q, VOL_Q,
                                  PlanConfig("fee_v", tiers=Tiers("tokens", "volume", STEPS), request_fee=D("0.1"))],
                         ids=lambda p: p.name)
def test_max_tokens_amount_bounds_every_position(plan):
    usage = U(700_000, 100_000, 400_000)
    bound = max_tokens_amount(plan, MINI, usage, TS)
    amounts = [rate_tokens(plan, MINI, usage, TS, p).amount for p in range(0, 7_000_000, 50_000)]
    assert max(amounts) <= bound
