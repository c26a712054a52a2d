"""Prepaid credits over HTTP: grants (admin key) and the balance (the customer's key too).

`POST /v1/admin/customers/{id}/credits {amount, expires_at?, priority?, reason, idempotency_key}`
records a grant once per idempotency key (a replay answers the first grant, 200 instead of
201); `GET /v1/admin/customers/{id}/credits` and `GET /v1/billing/credits` list the grants
with what is left of each, and the balance. Grants are drawn in priority order (lowest
number first), then soonest expiry, then oldest (`metering.billing.credits`).
"""

from __future__ import annotations

import asyncio
import secrets
from decimal import Decimal, InvalidOperation

from aiohttp import web

from config.schema import MAX_CAP
from metering.store.bounds import is_clean
from metering.store.events import money_str, utcnow
from proxy.appkeys import GATE, LIVE, REDIS
from proxy.limits.credits import grant_view
from proxy.errors import Forbidden, InvalidRequest
from proxy.admin_ops import find_customer, instant_us
from proxy.jsonbody import read_fields
from proxy.live import announce

_FIELDS = ("amount", "expires_at", "priority", "reason", "idempotency_key")


async def grant_credits(request: web.Request) -> web.Response:
    """`POST /v1/admin/customers/{id}/credits`."""
    app = request.app
    if not app[LIVE].keyring.caller(request).admin:
        raise Forbidden("granting credits needs the admin key")
    customer = find_customer(app[LIVE].config, request.match_info["id"])
    body = await read_fields(request, _FIELDS)
    amount = _amount(body.get("amount"))
    priority = body.get("priority", 0)
    if type(priority) is not int or not 0 <= priority <= 1000:
        raise InvalidRequest("priority must be a whole number from 0 (drawn first) to 1000", param="priority")
    reason = _text(body.get("reason", ""), "reason", 256, required=False)
    key = _text(body.get("idempotency_key"), "idempotency_key", 255, required=True)
    expires_us = instant_us(body.get("expires_at"), "expires_at")
    book = app[GATE].credits
    grant, new = await asyncio.get_running_loop().run_in_executor(None, lambda: book.store.grant(
        id="cg_" + secrets.token_hex(12), customer=customer.id, amount=amount, priority=priority,
        expires_us=expires_us, reason=reason, idempotency_key=key))
    if new:
        book.invalidate(customer.id)
        await app[LIVE].refresh(force=True)  # the directory's version moved: other proxies reload
        await announce(app.get(REDIS))
    state = await book.state(customer.id)
    return web.json_response({**grant_view(grant, state, utcnow()), "customer": customer.id,
                              "balance": money_str(state.balance), "duplicate": not new},
                             status=201 if new else 200)


async def list_credits(request: web.Request) -> web.Response:
    """`GET /v1/admin/customers/{id}/credits` (admin) and `GET /v1/billing/credits` (its own key)."""
    app = request.app
    if "id" in request.match_info:
        if not app[LIVE].keyring.caller(request).admin:
            raise Forbidden("this route needs the admin key; a customer reads GET /v1/billing/credits")
        customer = find_customer(app[LIVE].config, request.match_info["id"])
    else:
        customer = app[LIVE].keyring.subject(request)
    book = app[GATE].credits
    book.invalidate(customer.id)  # a read shows the balance as the ledger has it now
    state = await book.state(customer.id)
    plan = app[LIVE].config.plans[customer.plan]
    now = utcnow()
    data = [grant_view(g, state, now) for g in sorted(state.grants, key=lambda g: g.order())]
    return web.json_response({
        "object": "list", "data": data, "customer": customer.id, "balance": money_str(state.balance),
        "mode": plan.credits.mode if plan.credits else None,
        "top_up": None if plan.credits is None or plan.credits.top_up_below is None else {
            "below": money_str(plan.credits.top_up_below),
            "to": None if plan.credits.top_up_to is None else money_str(plan.credits.top_up_to)},
        "drawing_order": "priority (lowest first), then soonest expiry (never-expiring last), then oldest"})


def _amount(value: object) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (str, int, Decimal)):
        raise InvalidRequest("amount must be a decimal string such as \"50.00\"", param="amount")
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise InvalidRequest(f"amount {value!r} is not a decimal", param="amount") from None
    if not amount.is_finite() or amount <= 0 or amount > MAX_CAP or amount.as_tuple().exponent < -9:
        raise InvalidRequest(f"amount must be above 0, at most {MAX_CAP}, with at most 9 decimal places",
                             param="amount")
    return amount


def _text(value: object, name: str, limit: int, *, required: bool) -> str:
    if value is None or value == "":
        if required:
            raise InvalidRequest(f"{name} is required", param=name)
        return ""
    if not isinstance(value, str) or len(value) > limit or not is_clean(value):
        raise InvalidRequest(f"{name} must be a string of at most {limit} characters (UTF-8, no NUL)", param=name)
    return value


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/admin/customers/{id}/credits", grant_credits)
    app.router.add_get("/v1/admin/customers/{id}/credits", list_credits)
    app.router.add_get("/v1/billing/credits", list_credits)
