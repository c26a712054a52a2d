"""Billing endpoints: the customer's own spend cap."""

from __future__ import annotations

import asyncio
from decimal import Decimal, InvalidOperation

from aiohttp import web

from config.schema import MAX_CAP
from metering.limits.budget import NANO
from metering.store.events import decimal_str, money_str, utcnow
from proxy.appkeys import GATE, LIVE, METER, RECORDER
from metering.limits.outages import store_down
from proxy.errors import InvalidRequest, counters_unavailable
from proxy.jsonbody import parse_json, read_body


async def get_cap(request: web.Request) -> web.Response:
    """`GET /v1/billing/cap`: the caps in force and what is spent and held against them."""
    customer = request.app[LIVE].keyring.subject(request)
    return web.json_response(await _cap_view(request.app, customer))


async def put_cap(request: web.Request) -> web.Response:
    """`PUT /v1/billing/cap` `{"amount": "5.00"}` sets the customer's own cap; `null` removes it."""
    app = request.app
    customer = app[LIVE].keyring.subject(request)
    body = parse_json(await read_body(request))
    if not isinstance(body, dict) or "amount" not in body:
        raise InvalidRequest("give the cap as {\"amount\": \"5.00\"} (or null to remove it)", param="amount")
    return web.json_response(await set_own_cap(app, customer, _amount(body["amount"])))


async def set_own_cap(app: web.Application, customer, amount: Decimal | None) -> dict:
    """Set (None: remove) the customer's own cap, within the operator's; the cap view after it.

    Also the portal's cap form. What was spent is seeded before a first cap applies, then the
    ledger and this proxy's gate change together.
    """
    admin = customer.cap.amount if customer.cap is not None else None
    if amount is not None and admin is not None and amount > admin:
        raise InvalidRequest(f"the cap cannot be above the limit the operator set (${decimal_str(admin)})",
                             param="amount", code="cap_above_limit")
    gate = app[GATE]
    first = amount is not None and not gate.capped(customer)
    with gate.first_cap([customer.id] if first else []):
        if first:
            await _seed_spent(app, customer)  # first: a failure here changes nothing
        await asyncio.get_running_loop().run_in_executor(
            None, app[RECORDER].ledger.set_customer_cap, customer.id, amount)
        gate.caps_version += 1
        if amount is None:
            gate.customer_caps.pop(customer.id, None)
        else:
            gate.customer_caps[customer.id] = amount
    return await _cap_view(app, customer)


async def _seed_spent(app: web.Application, customer) -> None:
    """A customer without any cap was never reserved against: merge its period's spend from
    the ledger (every event once; see `Reservations.cap_applies`)."""
    period = app[METER].period(customer, utcnow()).key
    try:
        await app[GATE].budget.cap_applies(customer.id, period)
    except store_down():
        raise counters_unavailable() from None


def _amount(value: object) -> Decimal | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InvalidRequest("amount must be a decimal string such as \"5.00\"", param="amount")
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise InvalidRequest(f"amount {value!r} is not a decimal", param="amount") from None
    if not amount.is_finite() or amount < 0:
        raise InvalidRequest("amount must be a decimal of zero or more", param="amount")
    if amount.as_tuple().exponent < -9:
        raise InvalidRequest("amount has more than 9 decimal places", param="amount")
    if amount > MAX_CAP:
        raise InvalidRequest(f"amount is above the largest cap Payware holds, {MAX_CAP}", param="amount",
                             code="cap_above_limit")
    return amount


async def _cap_view(app: web.Application, customer) -> dict:
    gate = app[GATE]
    period = app[METER].period(customer, utcnow())
    # NOTE: spent is the exact real-time total (as the summary and the ledger have it); the
    # budget enforces the cap on amounts rounded up to the nano-dollar, and holds what is in flight.
    try:
        totals = await app[RECORDER].counters.totals(customer.id, period.key)
        held = 0
        if gate.capped(customer):
            _, held = await gate.budget.usage(customer=customer.id, period=period.key, scope="customer")
    except store_down():
        raise counters_unavailable() from None
    spent = max(totals.all.amount, Decimal(0))
    effective = gate.cap_amount(customer)
    admin = customer.cap
    return {
        "customer": customer.id,
        "period": {"start": period.start.isoformat(), "end": period.end.isoformat(), "interval": period.interval},
        "admin_cap": None if admin is None else {"amount": money_str(admin.amount), "action": admin.action,
                                                  "mode": admin.mode, "clamp": admin.clamp},
        "customer_cap": _money(gate.customer_caps.get(customer.id)),
        "amount": _money(effective),
        "spent": money_str(spent),
        "held": money_str(Decimal(held) / NANO),
        "remaining": None if effective is None else money_str(max(effective - spent - Decimal(held) / NANO,
                                                                  Decimal(0))),
    }


def _money(value: Decimal | None) -> str | None:
    return None if value is None else money_str(value)
