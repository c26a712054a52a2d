"""Settlement: each frozen statement, once, as a Stripe invoice.

The invoice (`plan_invoice`, pure) has one item per statement line, the base fee as an item,
each credit applied (the statement body's `credits`: `[{grant, amount}]`, amount positive) as
a negative item, and, if needed, a **rounding item**. Stripe takes whole minor units (cents),
so each item is its exact amount rounded half up to the minor unit; the statement's `total`
(its exact subtotal rounded once) is what the invoice must total, so the difference between
that total and the sum of the rounded items, if any, is one more item, "Rounding". Each item
rounds by at most half a minor unit and so does the total, so the rounding item is bounded by
(items + 1) / 2 minor units; a larger gap means the lines do not add up to the total, and the
statement is refused rather than invoiced wrong.

`settle_statements` (the Stripe calls, through the official SDK):

1. a statement already `invoiced` (or `nothing_due`: a zero total) is left alone;
2. the invoice: the one recorded as `pending` for this statement, else one found at Stripe
   with this statement's metadata (a run that crashed before recording it), else a new draft
   (`pending_invoice_items_behavior: exclude`, so no stray pending item joins it); recorded
   `pending` at once;
3. its items, each with the statement's metadata and its line number: those Stripe already
   has (listed by the invoice) are not sent again;
4. finalized if `settlement.stripe.finalize`; then Stripe's invoice total is checked against
   the statement's total, to the minor unit, and the statement recorded `invoiced`.

NOTE: settle must stay idempotent. Every create carries an idempotency key derived from the
statement (`payware-<hash of customer and period>-invoice`, `…-item-<n>`, `…-finalize`), so two
runs at once (the CLI and the proxy's after-close job) make one invoice and one set of items:
Stripe replays the first answer to a key for 24 hours; past that, steps 2 and 3 find what
exists by its metadata before creating anything.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from metering.billing.statements import minor_units
from metering.store.events import money_str

MAX_ITEMS = 250  # Stripe's limit of invoice items on one invoice


class SettleError(ValueError):
    """A statement that cannot be invoiced as it is (the reason is shown, nothing is sent)."""


@dataclass(frozen=True, slots=True)
class InvoiceLine:
    description: str
    amount: int  # minor units (cents)
    exact: Decimal | None  # the statement's exact amount; None for the rounding line
    kind: str  # "usage" | "base_fee" | "credit" | "rounding"

    def to_json(self) -> dict:
        return {"description": self.description, "amount": self.amount, "kind": self.kind,
                "exact": None if self.exact is None else money_str(self.exact)}


@dataclass(frozen=True, slots=True)
class InvoicePlan:
    customer: str
    period: str
    currency: str
    total: Decimal  # the statement's total (rounded once)
    total_minor: int
    lines: tuple[InvoiceLine, ...]
    period_start: int | None = None  # unix seconds, for the items' `period`
    period_end: int | None = None

    @property
    def rounding(self) -> int:
        return sum(line.amount for line in self.lines if line.kind == "rounding")


@dataclass(slots=True)
class Outcome:
    """What happened to one statement."""

    customer: str
    period: str
    status: str  # invoiced | already | nothing_due | would_invoice | skipped | failed
    total: Decimal | None = None
    currency: str | None = None
    stripe_customer: str | None = None
    invoice_id: str | None = None
    reason: str | None = None
    lines: list[dict] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status not in ("skipped", "failed")

    def to_json(self) -> dict:
        return {"customer": self.customer, "period": self.period, "status": self.status,
                "total": None if self.total is None else format(self.total, "f"), "currency": self.currency,
                "stripe_customer": self.stripe_customer, "invoice_id": self.invoice_id, "reason": self.reason,
                "lines": self.lines}


def to_minor(amount: Decimal, currency: str) -> int:
    """`amount` in the currency's minor unit, rounded half up (ISO 4217 places, as statements)."""
    return int((amount * Decimal(10) ** minor_units(currency)).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def plan_invoice(customer: str, period: str, body: dict) -> InvoicePlan:
    """The invoice of a frozen statement (its JSON body); SettleError if it cannot be one."""
    try:
        currency = str(body["currency"])
        total = Decimal(str(body["total"]))
        lines = [(_describe(line), Decimal(str(line["amount"])), "usage") for line in body.get("lines", [])]
        base_fee = Decimal(str(body.get("base_fee") or "0"))
        credits = [(f"Credits applied (grant {credit['grant']})", -abs(Decimal(str(credit["amount"]))), "credit")
                   for credit in body.get("credits") or []]
    except (KeyError, TypeError, ValueError, InvalidOperation, AttributeError) as exc:
        raise SettleError(f"the statement's body is not one Payware wrote ({type(exc).__name__}: {exc})") from None
    places = minor_units(currency)
    if not total.is_finite() or total != total.quantize(Decimal(1).scaleb(-places)):
        raise SettleError(f"its total {body.get('total')!r} is not in whole {currency} minor units")
    if base_fee:
        lines.append((f"Base fee (plan {body.get('plan', '?')})", base_fee, "base_fee"))
    lines += credits
    items = [InvoiceLine(description=text, amount=to_minor(amount, currency), exact=amount, kind=kind)
             for text, amount, kind in lines]
    total_minor = to_minor(total, currency)
    gap = total_minor - sum(item.amount for item in items)
    if 2 * abs(gap) > len(items) + 1:
        raise SettleError(f"its lines add up to {sum(i.amount for i in items)} minor units, its total to "
                          f"{total_minor}: more than rounding apart")
    if gap:
        items.append(InvoiceLine(description=f"Rounding (the statement's total is rounded once, half up, to "
                                             f"{places} decimals; the lines above are rounded one by one)",
                                 amount=gap, exact=None, kind="rounding"))
    if len(items) > MAX_ITEMS:
        raise SettleError(f"{len(items)} invoice items: Stripe takes at most {MAX_ITEMS} on one invoice")
    period_json = body.get("period") or {}
    return InvoicePlan(customer=customer, period=period, currency=currency, total=total, total_minor=total_minor,
                       lines=tuple(items), period_start=_unix(period_json.get("start")),
                       period_end=_unix(period_json.get("end")))


def _describe(line: dict) -> str:
    """`gpt-4o-mini tokens.input (included): 1234 x 0.00000015`: model, metric, tier, quantity x price."""
    text = " ".join(str(part) for part in (line.get("model"), line["metric"]) if part)
    if line.get("tier"):
        text += f" ({line['tier']})"
    text += f": {line.get('quantity')}"
    if line.get("unit_price") is not None:
        text += f" x {line['unit_price']}"
    return text[:500]


def _unix(value: object) -> int | None:
    try:
        return int(datetime.fromisoformat(str(value)).timestamp()) if value else None
    except ValueError:
        return None


def statement_key(customer: str, period: str) -> str:
    """The statement's stable name at Stripe (idempotency keys, metadata): short, no customer text."""
    return "payware-" + hashlib.sha256(f"{customer}\0{period}".encode()).hexdigest()[:32]


def stripe_customers(customers: Iterable) -> dict[str, str | None]:
    """Each customer's Stripe id: the config's `stripe_customer`, else its `metadata.stripe_customer`
    (customers made through the admin API); None when it has neither (or one not shaped cus_…)."""
    found = {}
    for customer in customers:
        value = customer.stripe_customer or (customer.metadata or {}).get("stripe_customer")
        found[customer.id] = value if isinstance(value, str) and value.startswith("cus_") else None
    return found


class StripeInvoicer:
    """The Stripe calls of a settlement, through the official SDK's `StripeClient`."""

    def __init__(self, client, *, collection_method: str = "charge_automatically", days_until_due: int | None = None,
                 finalize: bool = False):
        self.api = getattr(client, "v1", client)  # the SDK's v1 namespace (stripe >= 12)
        self.collection_method = collection_method
        self.days_until_due = days_until_due
        self.finalize_invoices = finalize

    def find_invoice(self, stripe_customer: str, key: str) -> str | None:
        invoices = self.api.invoices.list(params={"customer": stripe_customer, "limit": 100})
        for invoice in invoices.auto_paging_iter():
            if _plain(invoice).get("metadata", {}).get("payware_statement") == key:
                return invoice["id"]
        return None

    def create_invoice(self, plan: InvoicePlan, stripe_customer: str, key: str) -> str:
        params = {"customer": stripe_customer, "currency": plan.currency.lower(),
                  "collection_method": self.collection_method, "pending_invoice_items_behavior": "exclude",
                  "description": f"Payware statement of {plan.customer}, period {plan.period}"[:500],
                  "metadata": _metadata(plan, key)}
        if self.collection_method == "send_invoice":
            params["days_until_due"] = self.days_until_due or 30
        return self.api.invoices.create(params=params, options={"idempotency_key": f"{key}-invoice"})["id"]

    def lines_present(self, invoice_id: str) -> set[int]:
        items = self.api.invoice_items.list(params={"invoice": invoice_id, "limit": 100})
        present = set()
        for item in items.auto_paging_iter():
            line = (_plain(item).get("metadata") or {}).get("payware_line")
            if line is not None and str(line).isdigit():
                present.add(int(line))
        return present

    def add_line(self, invoice_id: str, stripe_customer: str, plan: InvoicePlan, index: int, key: str) -> None:
        line = plan.lines[index]
        params = {"customer": stripe_customer, "invoice": invoice_id, "currency": plan.currency.lower(),
                  "amount": line.amount, "description": line.description,
                  "metadata": {**_metadata(plan, key), "payware_line": str(index), "payware_kind": line.kind,
                               "payware_exact": "" if line.exact is None else money_str(line.exact)}}
        if plan.period_start is not None and plan.period_end is not None:
            params["period"] = {"start": plan.period_start, "end": plan.period_end}
        self.api.invoice_items.create(params=params, options={"idempotency_key": f"{key}-item-{index}"})

    def finish(self, invoice_id: str, key: str) -> int:
        """Finalize if configured; Stripe's total of the invoice, in minor units."""
        if self.finalize_invoices:
            invoice = self.api.invoices.finalize_invoice(invoice_id, params={"auto_advance": True},
                                                         options={"idempotency_key": f"{key}-finalize"})
        else:
            invoice = self.api.invoices.retrieve(invoice_id)
        return int(invoice["total"])


def _plain(obj) -> dict:
    """A Stripe object as a plain dict (they are not dicts since stripe 15)."""
    return obj.to_dict() if hasattr(obj, "to_dict") else dict(obj)


def _metadata(plan: InvoicePlan, key: str) -> dict[str, str]:
    return {"payware_statement": key, "payware_customer": plan.customer[:500], "payware_period": plan.period}


def settle_statements(*, store, stripe_ids: dict[str, str | None], invoicer: StripeInvoicer | None,
                      customer: str | None = None, dry_run: bool = False) -> list[Outcome]:
    """Settle every frozen statement (of `customer`, or all) not settled yet; one Outcome each.

    `store`: a `metering.store.money_runs.SettlementStore`. With `dry_run` nothing is sent or
    written. A Stripe error on one statement is its `failed` outcome (the others go on); an
    authentication error stops the run (raised): every call would fail the same way.
    """
    import stripe

    outcomes = []
    for statement in store.statements(customer):
        who, period, body = statement["customer"], statement["period"], statement["body"]
        done = store.get(who, period)
        if done is not None and done["status"] in ("invoiced", "nothing_due"):
            outcomes.append(Outcome(who, period, "already", statement["total"], done["currency"],
                                    done["external_customer"], done["invoice_id"]))
            continue
        try:
            plan = plan_invoice(who, period, body)
        except SettleError as exc:
            outcomes.append(Outcome(who, period, "skipped", statement["total"], reason=str(exc)))
            continue
        stripe_id = stripe_ids.get(who)
        outcome = Outcome(who, period, "would_invoice", plan.total, plan.currency, stripe_id,
                          lines=[line.to_json() for line in plan.lines])
        if plan.total_minor == 0:
            outcome.status = "nothing_due"
            if not dry_run:
                store.record(customer=who, period=period, target="stripe", status="nothing_due",
                             external_customer=stripe_id, invoice_id=None, total=plan.total, currency=plan.currency,
                             detail={"lines": outcome.lines})
        elif stripe_id is None:
            outcome.status, outcome.reason = "skipped", (
                f"no Stripe customer for {who!r} (customers.{who}.stripe_customer in the config, or "
                "metadata.stripe_customer for a customer made through the admin API)")
        elif plan.total_minor < 0:
            outcome.status, outcome.reason = "skipped", "its total is negative (credits above the usage): not invoiced"
        elif not dry_run:
            try:
                _invoice(store, invoicer, plan, stripe_id, done, outcome)
            except stripe.AuthenticationError:
                raise
            except stripe.StripeError as exc:
                outcome.status = "failed"
                outcome.reason = f"Stripe: {exc.user_message or type(exc).__name__}"
        outcomes.append(outcome)
    return outcomes


def _invoice(store, invoicer: StripeInvoicer, plan: InvoicePlan, stripe_id: str, done: dict | None,
             outcome: Outcome) -> None:
    key = statement_key(plan.customer, plan.period)
    invoice_id = done["invoice_id"] if done is not None and done["invoice_id"] else None
    invoice_id = invoice_id or invoicer.find_invoice(stripe_id, key) or invoicer.create_invoice(plan, stripe_id, key)
    outcome.invoice_id = invoice_id

    def record(status: str, **detail) -> None:
        store.record(customer=plan.customer, period=plan.period, target="stripe", status=status,
                     external_customer=stripe_id, invoice_id=invoice_id, total=plan.total, currency=plan.currency,
                     detail={"statement_key": key, "lines": outcome.lines, "rounding": plan.rounding, **detail})

    record("pending")
    present = invoicer.lines_present(invoice_id)
    for index in range(len(plan.lines)):
        if index not in present:
            invoicer.add_line(invoice_id, stripe_id, plan, index, key)
    total = invoicer.finish(invoice_id, key)
    if total != plan.total_minor:
        outcome.status = "failed"
        outcome.reason = (f"Stripe's invoice {invoice_id} totals {total} minor units, the statement "
                          f"{plan.total_minor}: left pending, check it in Stripe")
        return
    record("invoiced", total_minor=total)
    outcome.status = "invoiced"


__all__ = ["InvoiceLine", "InvoicePlan", "Outcome", "SettleError", "StripeInvoicer", "plan_invoice",
           "settle_statements", "statement_key", "stripe_customers", "to_minor"]
