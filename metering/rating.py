"""Price one metered request: the provider's cost and the customer's amount, in Decimal.

Nothing is rounded here: events carry exact amounts and rounding to the currency's minor
unit happens once, on the statement (see README, "Money").
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from config.schema import ModelConfig, PlanConfig
from metering.events import decimal_str
from metering.usage import Usage

MILLION = Decimal(1_000_000)


@dataclass(frozen=True, slots=True)
class Priced:
    cost: Decimal
    amount: Decimal
    pricing: dict  # evidence: the unit prices applied, as strings


def price_tokens(model: ModelConfig, plan: PlanConfig, usage: Usage, ts: datetime) -> Priced:
    """Cost and amount of `usage` on `model` under `plan`, at the prices in force at `ts`.

    Each token is priced once: cached input at the cached price, the rest of the input at
    the input price, all output (reasoning included) at the output price.
    """
    provider = model.price_at(ts)
    cached = min(usage.cached_input_tokens, usage.input_tokens)
    uncached = usage.input_tokens - cached
    cost = (uncached * provider.input + cached * provider.cached_input
            + usage.output_tokens * provider.output) / MILLION
    pricing = {
        "cost_per_million": {"input": decimal_str(provider.input),
                             "cached_input": decimal_str(provider.cached_input),
                             "output": decimal_str(provider.output)},
        "cost_source": provider.source,
    }
    plan_prices = plan.model_prices.get(model.name) or plan.per_million
    if plan_prices:
        unit_in = plan_prices.get("input", Decimal(0))
        unit_cached = plan_prices.get("cached_input", unit_in)
        unit_out = plan_prices.get("output", Decimal(0))
        amount = (uncached * unit_in + cached * unit_cached + usage.output_tokens * unit_out) / MILLION
        pricing["price_per_million"] = {"input": decimal_str(unit_in), "cached_input": decimal_str(unit_cached),
                                        "output": decimal_str(unit_out)}
    elif plan.markup is not None:
        amount = cost * plan.markup
        pricing["markup"] = decimal_str(plan.markup)
    else:
        amount = Decimal(0)  # tier-priced plans are rated on the period's totals
    if plan.request_fee:
        amount += plan.request_fee
        pricing["request_fee"] = decimal_str(plan.request_fee)
    pricing["plan"] = plan.name
    return Priced(cost=cost, amount=amount, pricing=pricing)
