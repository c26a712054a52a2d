"""Rating: the exact amount of one usage event under a plan, at the customer's running position.

Everything is `Decimal` and nothing is rounded here: every function computes in a private
context (`EXACT`, 100 significant digits) that *raises* `decimal.Inexact` rather than round,
so an amount is either exact or an error. Rounding to the currency's minor unit happens once,
on the statement (`metering.billing.statements`).

Rating is marginal
------------------
An event is rated when it is recorded, in order, against the customer's running position in
the billing period: `position` is the period's usage of the metered quantity *before* this
event (tokens: input + output of every model call; a custom metric: its quantity). The parts
of a plan that depend on the position (the included quota, tiers) are charged as the marginal
amount `R(position + n) - R(position)`; the parts that do not (per-token prices, markup, the
per-request fee, a record's own unit price) are charged as they are. Summing the events of a
period therefore gives the rated total of the period exactly (the sum telescopes), however
the requests interleave, provided positions are handed out atomically (the counters' job).

Tokens (`rate_tokens`)
----------------------
- **Position order within a request.** The request's `n` tokens occupy positions
  `[position, position + n)` in this order: the cached input (providers cache a prompt's
  prefix), the rest of the input, then the output. So a request crossing the included quota
  has its input covered first, cached input before the rest.
- **Included quota** (`plan.included["tokens"] = Q`): the first `Q` tokens of the period are
  free. A request crossing the quota pays only for its tokens beyond it; the tokens inside
  the quota, allocated by type in the order above, are priced at 0 (`Rated.included_used`).
- **Tiers** (`plan.tiers.metric == "tokens"`): the tokens' amount is the tier amount,
  `tiered_total(b) - tiered_total(a)` with `a = max(position - Q, 0)` and
  `b = max(position + n - Q, 0)` (tiers start after the quota), *instead of* per-token
  prices or the markup, which a tiered plan ignores for tokens. Tier prices do not depend
  on the token type. A volume tier edge may make the marginal amount negative (crossing into
  a cheaper step reprices every unit of the period).
- **Pay-per-use** otherwise, by token type, on the tokens beyond the quota:
  `plan.model_prices[model]`, else `plan.per_million` (USD per 1M tokens: `input`,
  `cached_input` (defaults to the input price), `output`; a type not given costs 0); else
  `plan.markup` x the provider's cost (`ModelPrice` in force at `ts`); else 0. Cached input
  is priced at the cached price, the rest of the input at the input price; reasoning tokens
  are output tokens (already inside `output_tokens`) and are not priced again.
- **Per-request fee** (`plan.request_fee`): added to every model call, quota or not.
- **Base fee**: not per event; the statement adds it.
- `Rated.cost` is the provider's cost of *all* the tokens (the provider bills the free ones too).

Custom metrics (`rate_metric`)
------------------------------
- A record's own `unit_price`: `quantity x unit_price`, no markup, no quota, no tiers.
- Else the plan: tiers when `plan.tiers.metric == metric` (they win over a
  `plan.metric_prices` entry), else `plan.metric_prices[metric]` per unit; in both cases
  after the included quota `plan.included[metric]`, applied as for tokens. Tier prices are
  `per_million` per 1M units, whatever the unit.
- Neither: `ValueError` (the API answers 400). An amount that would need more than 18
  decimal places (the ledger's NUMERIC(38, 18)) is refused the same way, never rounded.

Tiers (`tiered_total`)
----------------------
A step covers the units above the previous step's `up_to` up to and including its own.
Graduated: each unit at its step's price, plus the `flat_fee` of every step reached (holding at
least one unit). Volume: every unit at the price of the step the total falls in, plus that
step's `flat_fee`. Zero units cost 0 in both modes (so sums of marginals start from 0).

Evidence (`Rated.pricing`)
--------------------------
Unit prices applied, the position, the quota used, the tier range, and `items`: the event's
amount split into statement lines, each `{"metric", "tier", "quantity", "unit_price",
"amount"}` (+ `"step"` for tier lines) as exact decimal strings, whose amounts sum to the
event's amount exactly. Token lines are `tokens.cached_input`, `tokens.input` (the input not
read from cache), `tokens.output`; the quota line is `{metric}` with tier `"included"`; tier
lines are `{metric}` with the tier's label; the fee line is `requests`. `unit_price` in an
item is per unit (per token), so `quantity x unit_price == amount` on every item.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import (
    ROUND_HALF_EVEN,
    Context,
    Decimal,
    DivisionByZero,
    Inexact,
    InvalidOperation,
    Overflow,
    localcontext,
)

from config.schema import ModelConfig, ModelPrice, PlanConfig, Tiers
from metering.store.events import decimal_str
from metering.usage.normalized import Usage

MILLION = Decimal(1_000_000)
ZERO = Decimal(0)
ONE = Decimal(1)
LEDGER_PLACES = 18  # the ledger stores money as NUMERIC(38, 18)
# Exact arithmetic: anything that would have to round raises instead (decimal.Inexact).
EXACT = Context(prec=100, rounding=ROUND_HALF_EVEN, Emin=-999999, Emax=999999,
                traps=[InvalidOperation, DivisionByZero, Overflow, Inexact])
# Position order of a request's tokens: cache reads, cache writes, the rest of the input, output.
TOKEN_ORDER = ("cached_input", "cache_write", "cache_write_1h", "input", "output")
TOKENS = "tokens"
INCLUDED = "included"
REQUESTS = "requests"


@dataclass(frozen=True, slots=True)
class Rated:
    cost: Decimal  # provider cost (ModelPrice per 1M tokens), unrounded
    amount: Decimal  # what the customer pays for this event, unrounded (negative possible: volume tiers)
    pricing: dict  # evidence: unit prices applied, tier(s) touched, included units used, items, as strings
    included_used: Decimal  # units of this event covered by the included quota


def _s(value: Decimal) -> str:
    return decimal_str(value + 0)  # + 0: never "-0"


def _number(value: object, name: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (int, Decimal)):
        raise TypeError(f"{name} must be an int or a Decimal, not {type(value).__name__}")
    number = Decimal(value)
    if not number.is_finite() or number < 0:
        raise ValueError(f"{name} must be a finite number of zero or more, not {value}")
    return number


class _Items(list):
    """The event's statement lines as evidence (dicts of exact strings), with their exact sum."""

    total: Decimal = ZERO

    def add(self, metric: str, quantity: Decimal, unit_price: Decimal, amount: Decimal, *,
            tier: str | None = None, step: int | None = None) -> None:
        item = {"metric": metric, "tier": tier, "quantity": _s(quantity), "unit_price": _s(unit_price),
                "amount": _s(amount)}
        if step is not None:
            item["step"] = step
        self.append(item)
        self.total += amount

    def add_priced(self, metric: str, quantity: int | Decimal, unit_price: str, amount: Decimal) -> None:
        """`add` with the unit price already a decimal string (from a `_Sheet`)."""
        self.append({"metric": metric, "tier": None,
                     "quantity": str(quantity) if type(quantity) is int else _s(quantity),
                     "unit_price": unit_price, "amount": _s(amount)})
        self.total += amount


def _free(quota: Decimal, position: Decimal, quantity: Decimal) -> Decimal:
    """The units of [position, position + quantity) that fall inside the quota [0, quota)."""
    return min(max(quota - position, ZERO), quantity)


# ---------------------------------------------------------------------------------------------
# Tiers


def _check_tiers(tiers: Tiers) -> None:
    if tiers.mode not in ("graduated", "volume"):
        raise ValueError(f"unknown tier mode {tiers.mode!r} (graduated | volume)")
    if not tiers.steps or tiers.steps[-1].up_to is not None:
        raise ValueError("the last tier step must be unbounded (up_to: null)")


def _bounds(tiers: Tiers, index: int) -> tuple[Decimal, Decimal | None]:
    lower = ZERO if index == 0 else Decimal(tiers.steps[index - 1].up_to)
    upper = tiers.steps[index].up_to
    return lower, None if upper is None else Decimal(upper)


def _step_of(tiers: Tiers, quantity: Decimal) -> int:
    """The step a (positive) total falls in: the first whose `up_to` is unbounded or >= it."""
    for index, step in enumerate(tiers.steps):
        if step.up_to is None or quantity <= step.up_to:
            return index
    return len(tiers.steps) - 1


def tier_label(tiers: Tiers, index: int) -> str:
    """A step's name on a statement: "1 (up to 1000000)", "2 (1000000-5000000)", "3 (over 5000000)"."""
    lower, upper = _bounds(tiers, index)
    if upper is None:
        return f"{index + 1} (all)" if index == 0 else f"{index + 1} (over {lower})"
    return f"{index + 1} (up to {upper})" if index == 0 else f"{index + 1} ({lower}-{upper})"


def tiered_total(tiers: Tiers, quantity: Decimal) -> Decimal:
    """The amount of `quantity` units under `tiers` alone (see the module docstring). Exact."""
    with localcontext(EXACT):
        _check_tiers(tiers)
        quantity = _number(quantity, "quantity")
        if quantity == 0:
            return ZERO
        if tiers.mode == "volume":
            step = tiers.steps[_step_of(tiers, quantity)]
            return quantity * step.per_million / MILLION + step.flat_fee
        total = ZERO
        for index, step in enumerate(tiers.steps):
            lower, upper = _bounds(tiers, index)
            if quantity <= lower:
                break
            units = (quantity if upper is None else min(quantity, upper)) - lower
            total += units * step.per_million / MILLION + step.flat_fee
        return total


def _tier_items(tiers: Tiers, metric: str, start: Decimal, end: Decimal, items: _Items) -> None:
    """Items whose amounts sum to `tiered_total(end) - tiered_total(start)` exactly.

    Graduated: the units of (start, end] in each step, and the flat fee of each step first
    reached. Volume: the units added in the step reached; when the total moves to another
    step, the units before it are taken out of their old step (negative quantity and amount)
    and put, with the new ones, into the new step; flat fees move the same way. Summed over a
    period, each step's line nets to what volume pricing charges for the final total.
    """
    if end <= start:
        return

    def units(index: int, quantity: Decimal) -> None:
        step = tiers.steps[index]
        unit_price = step.per_million / MILLION
        items.add(metric, quantity, unit_price, quantity * unit_price, tier=tier_label(tiers, index), step=index)

    def flat(index: int, sign: int) -> None:
        fee = tiers.steps[index].flat_fee
        if fee:
            items.add(metric, Decimal(sign), fee, sign * fee, tier=tier_label(tiers, index) + " flat fee", step=index)

    if tiers.mode == "volume":
        old = _step_of(tiers, start) if start > 0 else None
        new = _step_of(tiers, end)
        if old == new:
            units(new, end - start)
        else:
            if old is not None:
                units(old, -start)
                flat(old, -1)
            units(new, end)
            flat(new, 1)
        return
    for index in range(len(tiers.steps)):
        lower, upper = _bounds(tiers, index)
        if end <= lower:
            break
        top = end if upper is None else min(end, upper)
        overlap = top - max(start, lower)
        if overlap > 0:
            units(index, overlap)
        if start <= lower < end:
            flat(index, 1)


def max_tier_marginal(tiers: Tiers, n: int) -> Decimal:
    """The most that `n` whole units can add under `tiers`, at any position, quota or not.

    That is the max of `tiered_total(b) - tiered_total(a)` over integers `0 <= a <= b`, with
    `b - a == n`, or `a == 0 and b <= n` (a request crossing the included quota). Both are
    affine between the tier edges, so the max is at an edge: exact, for admission bounds.
    """
    with localcontext(EXACT):
        _check_tiers(tiers)
        if n <= 0:
            return ZERO
        def total(q: int) -> Decimal:
            return tiered_total(tiers, Decimal(q))

        edges = [step.up_to for step in tiers.steps if step.up_to is not None]
        starts = {0}
        for edge in edges:
            starts.update(x for x in (edge - n, edge - n + 1, edge, edge + 1) if x >= 0)
        best = max(total(a + n) - total(a) for a in starts)
        return max([best] + [total(min(edge, n)) for edge in edges])


# ---------------------------------------------------------------------------------------------
# Tokens


def _token_unit_prices(plan: PlanConfig, provider: ModelPrice, model: ModelConfig, pricing: dict,
                       classes: tuple[str, ...]) -> dict[str, Decimal] | None:
    """Per-token prices by class (per unit, not per 1M) under a pay-per-use plan, or None.

    A plan's own prices: a cache read defaults to its input price, a cache write to its input
    price, a 1-hour cache write to its cache-write price; markup: the provider's cost of each
    class (for the call's prompt size) times the markup.
    """
    prices = plan.model_prices.get(model.name) or plan.per_million
    if prices:
        unit_in = prices.get("input", ZERO)
        write = prices.get("cache_write", unit_in)
        per_million = {"input": unit_in, "cached_input": prices.get("cached_input", unit_in),
                       "cache_write": write, "cache_write_1h": prices.get("cache_write_1h", write),
                       "output": prices.get("output", ZERO)}
        pricing["price_per_million"] = {kind: _s(per_million[kind]) for kind in classes}
        pricing["price_source"] = "model" if plan.model_prices.get(model.name) else "plan"
        return {kind: value / MILLION for kind, value in per_million.items()}
    if plan.markup is not None:
        pricing["markup"] = _s(plan.markup)
        return {kind: value * plan.markup / MILLION for kind, value in provider.per_class().items()}
    return None


def rate_tokens(plan: PlanConfig, model: ModelConfig, usage: Usage, ts: datetime, position: int) -> Rated:
    """Cost and marginal amount of one model call at `position` tokens into the period.

    NOTE: runs on every call: the counts stay ints, and classes with no tokens (most calls use
    no cache) add neither cost nor items; every amount is still an exact Decimal.
    """
    with localcontext(EXACT):
        position = _number(position, "position")
        in_force = model.price_at(ts)
        prompt = usage.input_tokens
        provider = in_force.for_prompt(prompt)
        cached = min(usage.cached_input_tokens, prompt)
        written = min(usage.cache_write_tokens, prompt - cached)
        written_1h = min(usage.cache_write_1h_tokens, written)
        counts = (("cached_input", cached), ("cache_write", written - written_1h), ("cache_write_1h", written_1h),
                  ("input", prompt - cached - written), ("output", usage.output_tokens))  # in TOKEN_ORDER
        if min(cached, written_1h, written - written_1h, prompt - cached - written, usage.output_tokens) < 0:
            raise ValueError("token counts must not be negative")
        sheet = _sheet(plan, provider, model, bool(written))
        unit_costs = sheet.unit_costs
        cost = sum((unit_costs[kind] * count for kind, count in counts if count), ZERO) / MILLION
        n = Decimal(prompt + usage.output_tokens)
        pricing: dict = {"plan": plan.name, "cost_per_million": dict(sheet.cost_per_million),
                         "cost_source": provider.source, "position": _s(position)}
        if provider is not in_force:
            pricing["long_prompt"] = True  # the prices above a prompt-size threshold applied
        items = _Items()
        quota = plan.included.get(TOKENS, 0)
        free = _free(Decimal(quota), position, n) if quota else ZERO
        if quota:
            pricing["included"] = {"metric": TOKENS, "quota": _s(Decimal(quota)), "used": _s(free)}
        if free:
            items.add(TOKENS, free, ZERO, ZERO, tier=INCLUDED)
        tiers = plan.tiers if plan.tiers is not None and plan.tiers.metric == TOKENS else None
        if tiers is not None:
            _check_tiers(tiers)
            start, end = max(position - quota, ZERO), max(position + n - quota, ZERO)
            pricing["tiers"] = {"metric": TOKENS, "mode": tiers.mode, "from": _s(start), "to": _s(end)}
            _tier_items(tiers, TOKENS, start, end, items)
        elif sheet.unit_prices is not None:
            for name, value in sheet.price_evidence.items():
                pricing[name] = dict(value) if isinstance(value, dict) else value
            unit_prices, unit_price_strs = sheet.unit_prices, sheet.unit_price_strs
            left = free
            for kind, count in counts:  # the quota covers the cached input, then the input, then the output
                if not count:
                    continue
                billable = count
                if left:
                    covered = min(left, count)
                    left -= covered
                    billable = count - covered
                    if not billable:
                        continue
                items.add_priced(_TOKEN_METRICS[kind], billable, unit_price_strs[kind], billable * unit_prices[kind])
        if plan.request_fee:
            pricing["request_fee"] = _s(plan.request_fee)
            items.add(REQUESTS, ONE, plan.request_fee, plan.request_fee)
        amount = items.total
        pricing["items"] = list(items)
        return Rated(cost=cost, amount=amount, pricing=pricing, included_used=free)


_TOKEN_METRICS = {kind: f"{TOKENS}.{kind}" for kind in TOKEN_ORDER}  # an item's metric, by token class


@dataclass(frozen=True, slots=True)
class _Sheet:
    """What a call's rating needs that depends on its plan and prices only, not on its tokens."""

    plan: PlanConfig  # held so the cache key's ids cannot be reused by other objects
    provider: ModelPrice
    unit_costs: dict[str, Decimal]  # USD per 1M tokens, by class
    cost_per_million: dict[str, str]  # the evidence's copy of them
    unit_prices: dict[str, Decimal] | None  # per token, by class (None: a tiered plan, or no price)
    unit_price_strs: dict[str, str]
    price_evidence: dict  # price_per_million + price_source, or markup
    dearest_input: Decimal | None  # the dearest per-token price a prompt token can have (admission)


_SHEETS: dict[tuple, _Sheet] = {}


def _sheet(plan: PlanConfig, provider: ModelPrice, model: ModelConfig, writes: bool) -> _Sheet:
    """The plan's price sheet for `model` at `provider`'s prices, computed once per config.

    Rating runs on every call: the decimal strings of the evidence and the per-token prices do
    not change while the config does not, so they are kept (keyed by the objects' identity; a
    reloaded config has new objects, and the cache is emptied when it grows)."""
    key = (id(plan), id(provider), model.name, writes)
    sheet = _SHEETS.get(key)
    if sheet is not None and sheet.plan is plan and sheet.provider is provider:
        return sheet
    # the evidence names the cache-write classes only when the call has cache writes
    classes = tuple(k for k in TOKEN_ORDER if k not in ("cache_write", "cache_write_1h") or writes)
    unit_costs = provider.per_class()
    evidence: dict = {}
    unit_prices = _token_unit_prices(plan, provider, model, evidence, classes)
    sheet = _Sheet(plan=plan, provider=provider, unit_costs=unit_costs,
                   cost_per_million={kind: _s(unit_costs[kind]) for kind in classes},
                   unit_prices=unit_prices,
                   unit_price_strs={kind: _s(p) for kind, p in (unit_prices or {}).items()},
                   price_evidence=evidence,
                   dearest_input=None if unit_prices is None else max(
                       unit_prices[kind] for kind in ("input", "cached_input", "cache_write", "cache_write_1h")))
    if len(_SHEETS) >= 4096:
        _SHEETS.clear()
    _SHEETS[key] = sheet
    return sheet


def max_tokens_amount(plan: PlanConfig, model: ModelConfig, usage: Usage, ts: datetime) -> Decimal:
    """An upper bound of `rate_tokens(plan, model, usage, ts, p).amount` over every position `p`.

    For admission (the worst-case reservation), which does not know the position the call
    will settle at: the quota ignored (it only lowers a pay-per-use amount), the tiers at
    their worst (`max_tier_marginal`).
    """
    with localcontext(EXACT):
        tiers = plan.tiers if plan.tiers is not None and plan.tiers.metric == TOKENS else None
        if tiers is None:
            # Past the quota, a pay-per-use amount is linear in the tokens of each class. Any
            # prompt token may turn out to be a cache read or write, and a write can cost more
            # than input (Anthropic: 1.25x for 5 minutes, 2x for an hour): every prompt token
            # at the dearest input class.
            provider = model.price_at(ts).for_prompt(usage.input_tokens)
            sheet = _sheet(plan, provider, model, True)
            if sheet.unit_prices is None:
                return plan.request_fee
            return (usage.input_tokens * sheet.dearest_input + usage.output_tokens * sheet.unit_prices["output"]
                    + plan.request_fee)
        n = usage.input_tokens + usage.output_tokens
        return max_tier_marginal(tiers, n) + plan.request_fee


# ---------------------------------------------------------------------------------------------
# Custom metrics


def rate_metric(plan: PlanConfig, metric: str, quantity: Decimal, position: Decimal,
                unit_price: Decimal | None) -> Rated:
    """The marginal amount of `quantity` units of a custom metric at `position` into the period."""
    with localcontext(EXACT):
        if metric == TOKENS:
            raise ValueError("'tokens' is metered from model calls (rate_tokens), not recorded")
        quantity = _number(quantity, "quantity")
        pricing: dict = {"plan": plan.name, "metric": metric}
        items = _Items()
        free = ZERO
        if unit_price is not None:
            unit_price = _number(unit_price, "unit_price")
            pricing.update(unit_price=_s(unit_price), unit_price_source="record")
            if quantity:
                items.add(metric, quantity, unit_price, quantity * unit_price)
        else:
            tiers = plan.tiers if plan.tiers is not None and plan.tiers.metric == metric else None
            price = plan.metric_prices.get(metric)
            if tiers is None and price is None:
                raise ValueError(f"unknown metric {metric!r}: plan {plan.name!r} has no price for it; "
                                 "give unit_price or add it to the plan's price.metrics")
            position = _number(position, "position")
            pricing["position"] = _s(position)
            quota = Decimal(plan.included.get(metric, 0))
            free = _free(quota, position, quantity)
            if quota:
                pricing["included"] = {"metric": metric, "quota": _s(quota), "used": _s(free)}
            if free:
                items.add(metric, free, ZERO, ZERO, tier=INCLUDED)
            if tiers is not None:
                _check_tiers(tiers)
                start, end = max(position - quota, ZERO), max(position + quantity - quota, ZERO)
                pricing.update(unit_price_source="tiers",
                               tiers={"metric": metric, "mode": tiers.mode, "from": _s(start), "to": _s(end)})
                _tier_items(tiers, metric, start, end, items)
            else:
                pricing.update(unit_price=_s(price), unit_price_source="plan")
                billable = quantity - free
                if billable:
                    items.add(metric, billable, price, billable * price)
        amount = items.total
        if amount != amount.quantize(Decimal(1).scaleb(-LEDGER_PLACES), rounding=ROUND_HALF_EVEN,
                                     context=Context(prec=EXACT.prec)):
            raise ValueError(f"the amount {_s(amount)} needs more than {LEDGER_PLACES} decimal places; "
                             "give the quantity with fewer decimals")
        pricing["items"] = list(items)
        return Rated(cost=ZERO, amount=amount, pricing=pricing, included_used=free)


def uses_position(plan: PlanConfig, metric: str) -> bool:
    """Whether the amount of `metric` under `plan` depends on the period's running position.

    False: any position gives the same amount (pay-per-use), so the caller may pass 0 and
    skip the atomic position counter. A record with its own unit price never needs one.
    """
    return bool(plan.included.get(metric)) or (plan.tiers is not None and plan.tiers.metric == metric)


__all__ = ["EXACT", "LEDGER_PLACES", "MILLION", "Rated", "max_tier_marginal", "max_tokens_amount",
           "rate_metric", "rate_tokens", "tier_label", "tiered_total", "uses_position"]
