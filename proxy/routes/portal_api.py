"""The portal page's data, `/portal/api/…`: always the session's customer, never a parameter.

The page polls `summary` every second (the real-time counters: a call shows the moment it
ended) and reads the ledger views (`daily`, `events`) when the request count moves. Setting
the customer's own cap is a post with the session's CSRF token from this host only.
"""

from __future__ import annotations

import asyncio
from functools import wraps

from aiohttp import web

from metering.store.events import decimal_str, utcnow
from proxy.appkeys import GATE, METER, RECORDER
from proxy.errors import InvalidRequest
from proxy.routes import billing
from proxy.routes.statements import close_periods
from proxy.routes.usage import summary_of
from proxy.web import history, sessions
from proxy.web.assets import json_answer, refused

SESSION = "portal.session"  # request key: the PortalSession of an API call


def portal_api(handler):
    """Run `handler` only for a request holding a portal session (else a 401 in JSON)."""
    @wraps(handler)
    async def guarded(request: web.Request) -> web.StreamResponse:
        session = sessions.portal_session(request)
        if session is None:
            return refused(request, 401, "Your portal session has ended: open your link again or sign in.")
        request[SESSION] = session
        return await handler(request)
    return guarded


async def _flushed(app: web.Application) -> None:
    """Wait (a little) for the ledger to hold every ended call: the views read the ledger."""
    try:
        async with asyncio.timeout(2):
            await app[RECORDER].flush()
    except asyncio.TimeoutError:
        pass


def _run(fn, *args, **kwargs):
    return asyncio.get_running_loop().run_in_executor(None, lambda: fn(*args, **kwargs))


@portal_api
async def summary(request: web.Request) -> web.Response:
    """The summary of `GET /v1/usage/summary`, with the caps the form needs."""
    customer = request[SESSION].customer
    data = await summary_of(request.app, customer)
    own = request.app[GATE].customer_caps.get(customer.id)
    admin = customer.cap
    data["cap_policy"] = {"admin": None if admin is None else decimal_str(admin.amount),
                          "own": None if own is None else decimal_str(own),
                          "action": admin.action if admin else "block", "mode": admin.mode if admin else "hard",
                          "throttle_rpm": admin.throttle_rpm if admin else None}
    data["now"] = utcnow().isoformat()
    return json_answer(data)


@portal_api
async def daily(request: web.Request) -> web.Response:
    """The open period's days, aggregated from the ledger's events."""
    app, customer = request.app, request[SESSION].customer
    period = app[METER].period(customer, utcnow())
    await _flushed(app)
    days = await _run(history.daily, app[RECORDER].ledger, customer.id, period)
    return json_answer({"period": {"start": period.start.isoformat(), "end": period.end.isoformat()}, "days": days})


@portal_api
async def events(request: web.Request) -> web.Response:
    """The latest events, newest first: `?limit=` (1-100) and `?before=` (the previous page's cursor)."""
    app, customer = request.app, request[SESSION].customer
    try:
        limit = int(request.query.get("limit", "10"))
    except ValueError:
        limit = 0
    if not 1 <= limit <= history.MAX_PAGE:
        raise InvalidRequest(f"limit must be a number from 1 to {history.MAX_PAGE}", param="limit")
    await _flushed(app)
    try:
        data, cursor = await _run(history.latest, app[RECORDER].ledger, customer.id, limit=limit,
                                  before=request.query.get("before") or None)
    except ValueError:
        raise InvalidRequest("before is not a cursor this list gave", param="before") from None
    return json_answer({"object": "list", "data": data, "next": cursor})


async def _statements(app: web.Application, customer) -> dict[str, dict]:
    try:
        await close_periods(app, [customer])  # whatever closed since the last pass shows at once
    except asyncio.TimeoutError:
        pass
    return await _run(app[RECORDER].ledger.statements, customer.id)


@portal_api
async def statements(request: web.Request) -> web.Response:
    """The customer's frozen statements, newest first."""
    frozen = await _statements(request.app, request[SESSION].customer)
    return json_answer({"object": "list", "data": history.statement_rows(frozen)})


@portal_api
async def statement_csv(request: web.Request) -> web.Response:
    """`?period=<key>`: one statement's line items as a CSV download."""
    frozen = await _statements(request.app, request[SESSION].customer)
    body = frozen.get(request.query.get("period", ""))
    if body is None:
        raise InvalidRequest("no statement for this period", param="period")
    return csv_download(history.statement_csv(body), f"statement-{body['period']['start'][:10]}.csv")


def csv_download(text: str, filename: str) -> web.Response:
    """A CSV answer the browser saves as `filename`."""
    return web.Response(text=text, headers=download_headers(filename))


def download_headers(filename: str) -> dict[str, str]:
    """The headers of a CSV answer the browser saves as `filename` (whole, or streamed)."""
    safe = "".join(c for c in filename if c.isalnum() or c in "-_.") or "export.csv"
    return {"Content-Type": "text/csv; charset=utf-8", "Content-Disposition": f'attachment; filename="{safe}"',
            "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


@portal_api
async def set_cap(request: web.Request) -> web.Response:
    """Set (`amount`) or remove (empty amount, or `remove`) the customer's own cap, within the operator's."""
    session = request[SESSION]
    fields = await sessions.form(request)
    reason = sessions.check_post(request, session.nonce, request.headers.get("X-CSRF-Token") or fields.get("csrf"))
    if reason is not None:
        return refused(request, 403, reason)
    text = fields.get("amount", "").strip()
    amount = None if "remove" in fields or text == "" else billing._amount(text.removeprefix("$"))
    return json_answer(await billing.set_own_cap(request.app, session.customer, amount))


def add_routes(app: web.Application) -> None:
    """The portal page's data routes."""
    app.router.add_get("/portal/api/summary", summary)
    app.router.add_get("/portal/api/daily", daily)
    app.router.add_get("/portal/api/events", events)
    app.router.add_get("/portal/api/statements", statements)
    app.router.add_get("/portal/api/statement.csv", statement_csv)
    app.router.add_post("/portal/api/cap", set_cap)
