"""Statements: a closed period's events turned into line items and a total, rounded once.

Money rule: every event carries its exact, unrounded amount (`metering.billing.plans`). A statement
adds them up exactly (`subtotal = sum of event amounts + base fee`) and rounds **once**, the
subtotal, to the currency's minor unit (ISO 4217: 2 decimals for USD/EUR/..., 0 for JPY, KRW
and the other zero-decimal currencies, 3 for BHD, KWD, ...), `ROUND_HALF_UP` (halves away
from zero): 4.285 -> 4.29, 4.284999 -> 4.28, JPY 1234.5 -> 1235. Line items are shown exact
and are not rounded one by one, so no sum of rounded lines can drift from the total.

Line items come from each event's `pricing["items"]` (written by `metering.billing.plans`): grouped
by (metric, model, tier, unit price), quantity and amount summed, so `quantity x unit_price ==
amount` on every line that has a unit price (per unit: per token for tokens); a price that
changed mid-period gives two lines. Tier lines span every model (model None), since tiers
count the period's usage of all of them; a volume tier edge moves the units of the old step
into the new one, so only the step the period ended in keeps a line. An event without usable
items (older events, a plan unknown here) gives one line for its own metric and model with
its whole amount. Either way the lines add up to the events' amounts exactly (checked).

`included` is the quota used per metric; `overage` is what the usage costs on top of the
base fee (the quota's units being free, that is the sum of the event amounts).

The plan given is the one whose base fee and currency the statement uses; events keep the
amounts they were rated at, so a plan change mid-period bills each event as it was rated.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Context, Decimal, InvalidOperation, localcontext

from config.schema import PlanConfig
from metering.store.events import UsageEvent, decimal_str, money_str
from metering.billing.plans import EXACT, INCLUDED

ZERO = Decimal(0)

# ISO 4217 minor units that are not 2.
_MINOR_UNITS = {
    **dict.fromkeys(("BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "UYI",
                     "VND", "VUV", "XAF", "XOF", "XPF"), 0),
    **dict.fromkeys(("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"), 3),
    "CLF": 4, "UYW": 4,
}


def minor_units(currency: str) -> int:
    """Decimal places of the currency's minor unit (ISO 4217): 2 unless listed otherwise."""
    return _MINOR_UNITS.get(currency.upper(), 2)


def round_money(amount: Decimal, currency: str) -> Decimal:
    """`amount` rounded to the currency's minor unit, ROUND_HALF_UP: the statement's one rounding."""
    exponent = Decimal(1).scaleb(-minor_units(currency))
    return amount.quantize(exponent, rounding=ROUND_HALF_UP, context=Context(prec=EXACT.prec))


@dataclass(frozen=True, slots=True)
class LineItem:
    metric: str  # "tokens.input" | "tokens.cached_input" | "tokens.output" | "tokens" | "requests" | a custom metric
    model: str | None
    quantity: Decimal
    unit_price: Decimal | None  # per unit; None for an event without itemized evidence
    tier: str | None  # "included", a tier's label, "<label> flat fee", or None
    amount: Decimal  # exact

    def to_json(self) -> dict:
        return {"metric": self.metric, "model": self.model, "quantity": decimal_str(self.quantity),
                "unit_price": None if self.unit_price is None else decimal_str(self.unit_price),
                "tier": self.tier, "amount": money_str(self.amount)}


@dataclass(frozen=True, slots=True)
class Statement:
    customer: str
    plan: str
    period_start: datetime
    period_end: datetime
    currency: str
    lines: tuple[LineItem, ...]
    base_fee: Decimal
    included: dict[str, Decimal]  # units used of the quota, per metric
    overage: Decimal  # usage amount beyond the included quota (exact)
    subtotal: Decimal  # exact: sum of event amounts + base fee
    total: Decimal  # (subtotal - credits applied) rounded once to the currency's minor unit, ROUND_HALF_UP
    event_count: int
    credits: tuple[tuple[str, Decimal], ...] = ()  # (grant id, amount its usage drew in this period)
    credit_balance: Decimal | None = None  # what the grants still held at the period's end (carried)

    def to_json(self) -> dict:
        """Money as strings: exact amounts with at least the cents, the total at the minor unit."""
        return {
            "object": "billing.statement",
            "customer": self.customer,
            "plan": self.plan,
            "period": {"start": self.period_start.isoformat(), "end": self.period_end.isoformat()},
            "currency": self.currency,
            "lines": [line.to_json() for line in self.lines],
            "base_fee": money_str(self.base_fee),
            "included": {metric: decimal_str(units) for metric, units in self.included.items()},
            "overage": money_str(self.overage),
            "subtotal": money_str(self.subtotal),
            **({"credits": [{"grant": grant, "amount": money_str(amount)} for grant, amount in self.credits],
                "credits_applied": money_str(sum((a for _, a in self.credits), ZERO)),
                "credit_balance_carried": money_str(self.credit_balance)} if self.credit_balance is not None else {}),
            "total": format(self.total, "f"),
            "rounding": f"once, on the subtotal, to {minor_units(self.currency)} decimals, half up",
            "event_count": self.event_count,
        }


# One part of an event's amount: (metric, model, tier, order, quantity, unit_price, amount).
_Part = tuple[str, str | None, str | None, int, Decimal, Decimal | None, Decimal]


def _parts(event: UsageEvent) -> list[_Part]:
    """The event's amount as line parts, from its evidence; one whole part if that is unusable."""
    items = event.pricing.get("items") if isinstance(event.pricing, dict) else None
    if isinstance(items, list):
        try:
            parts = []
            for item in items:
                step = item.get("step")
                tier = item.get("tier")
                if tier == INCLUDED:
                    order = -1
                elif step is not None:
                    order = 2 * int(step) + (2 if str(tier).endswith("flat fee") else 1)
                else:
                    order = 0
                price = item.get("unit_price")
                parts.append((str(item["metric"]), None if step is not None else event.model,
                              None if tier is None else str(tier), order, Decimal(item["quantity"]),
                              None if price is None else Decimal(price), Decimal(item["amount"])))
            if all(part[4].is_finite() and part[6].is_finite() for part in parts) \
                    and sum((part[6] for part in parts), ZERO) == event.amount:
                return parts
        except (AttributeError, KeyError, TypeError, ValueError, InvalidOperation):
            pass
    price = _decimal_or_none(event.pricing.get("unit_price") if isinstance(event.pricing, dict) else None)
    if price is not None and event.quantity * price != event.amount:
        price = None
    return [(event.metric, event.model, None, 0, event.quantity, price, event.amount)]


def _decimal_or_none(value: object) -> Decimal | None:
    try:
        number = Decimal(value) if isinstance(value, str) else None
    except InvalidOperation:
        return None
    return number if number is not None and number.is_finite() else None


def build_statement(*, customer: str, plan: PlanConfig, period_start: datetime, period_end: datetime,
                    events: Iterable[UsageEvent], credits: dict[str, Decimal] | None = None,
                    credit_balance: Decimal | None = None) -> Statement:
    """The statement of `customer`'s closed period from its events (every one, each once).

    `credits`: what the period's usage drew from each grant (`metering.billing.credits`), taken
    off the total as negative lines; `credit_balance`: what the grants held at the period's end.
    """
    with localcontext(EXACT):
        lines: dict[tuple[str, str | None, str | None, Decimal | None], list] = {}
        included = {metric: ZERO for metric in plan.included}
        usage = ZERO
        count = 0
        for event in events:
            if event.customer != customer:
                raise ValueError(f"event {event.id} belongs to {event.customer!r}, not {customer!r}")
            if event.currency != plan.currency:
                raise ValueError(f"event {event.id} is in {event.currency}, the plan bills in {plan.currency}")
            count += 1
            usage += event.amount
            for metric, model, tier, order, quantity, price, amount in _parts(event):
                line = lines.setdefault((metric, model, tier, price), [order, ZERO, ZERO])
                line[1] += quantity
                line[2] += amount
                if tier == INCLUDED:
                    included[metric] = included.get(metric, ZERO) + quantity
        items = []
        for (metric, model, tier, price), (order, quantity, amount) in sorted(
                lines.items(), key=lambda kv: (kv[0][0], kv[0][1] or "", kv[1][0], kv[0][2] or "",
                                               kv[0][3] is not None, kv[0][3] or ZERO)):
            if quantity == 0 and amount == 0:
                continue  # e.g. a volume step the period moved past
            items.append(LineItem(metric=metric, model=model, quantity=quantity + 0,
                                  unit_price=None if price is None else price + 0, tier=tier, amount=amount + 0))
        if sum((item.amount for item in items), ZERO) != usage:
            raise AssertionError("statement lines do not add up to the events' amounts")  # by construction
        subtotal = usage + plan.base_fee
        drawn = tuple(sorted((credits or {}).items()))
        due = subtotal - sum((amount for _, amount in drawn), ZERO)
        return Statement(customer=customer, plan=plan.name, period_start=period_start, period_end=period_end,
                         currency=plan.currency, lines=tuple(items), base_fee=plan.base_fee, included=included,
                         overage=usage, subtotal=subtotal, total=round_money(due, plan.currency),
                         event_count=count, credits=drawn, credit_balance=credit_balance)


__all__ = ["LineItem", "Statement", "build_statement", "minor_units", "round_money"]
