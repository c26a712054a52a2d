"""The operator console, `/admin`: the admin key signs in; pages and forms on a session cookie.

- Sign-in posts the admin key once (a form, never a URL) and gets an HttpOnly, SameSite=Strict
  cookie (Secure over HTTPS) holding a signed session token that expires (`LOGIN_TTL`).
- Pages without a session redirect to the sign-in form; actions without one are a 401.
- Every post must come from this host (Origin, else Referer) and carry the session's CSRF
  token: a cross-site post is a 403 and changes nothing.
- Actions are the admin API's own (`proxy.routes.admin`): keys made there live in the ledger
  database as hashes, and a new key is shown on the answer's page only, never again.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from decimal import Decimal
from functools import wraps
from urllib.parse import quote

from aiohttp import web

from metering.store.money_runs import ReconciliationStore
from proxy.appkeys import LIVE, RECORDER
from proxy.errors import ApiError, InvalidRequest, NotFound
from proxy import admin_ops as ops
from proxy.routes import admin
from proxy.routes.portal import link as portal_link
from proxy.routes.portal_api import csv_download, download_headers
from proxy.routes.statements import close_periods
from proxy.routes.usage import send_events, summary_of
from proxy.web import console_views as views
from proxy.web import history, sessions
from proxy.web.assets import page, refused
from proxy.web.guard import admin_key, clear_cookie, same_origin, see_other, set_cookie
from proxy.web.traffic import TRAFFIC

log = logging.getLogger("payware.console")

HOURS = 12  # the traffic chart's window
RECONCILABLE = ("openai", "anthropic")  # provider kinds whose usage reports `payware reconcile` reads
NONCE, FIELDS = "console.nonce", "console.fields"  # request keys set by the guards below


def console_page(handler):
    """A page: without a session, a redirect to the sign-in form."""
    @wraps(handler)
    async def guarded(request: web.Request) -> web.StreamResponse:
        nonce = sessions.console_session(request)
        if nonce is None:
            return see_other("/admin/login")
        request[NONCE] = nonce
        return await handler(request)
    return guarded


def console_action(handler):
    """A post: 401 without a session, 403 from another site or without the CSRF token; an
    admin API error becomes a page saying what went wrong."""
    @wraps(handler)
    async def guarded(request: web.Request) -> web.StreamResponse:
        nonce = sessions.console_session(request)
        if nonce is None:
            return refused(request, 401, "Sign in to the console first.", title="Not signed in")
        fields = await sessions.form(request)
        reason = sessions.check_post(request, nonce, fields.get("csrf"))
        if reason is not None:
            return refused(request, 403, reason)
        request[NONCE], request[FIELDS] = nonce, fields
        try:
            return await handler(request)
        except ApiError as error:
            return _layout(request, "Not done", views.Html(
                f'<section class="card"><h1>Not done</h1><p>{views.esc(error.message)}</p>'
                f'<p><a href="/admin">Back</a></p></section>'), status=error.status)
    return guarded


def _layout(request: web.Request, title: str, body: views.Html, *, status: int = 200) -> web.Response:
    return page(request, "console.html", status=status, title=title, body=body,
                csrf=sessions.csrf(request.app, request[NONCE]))


# -- sign-in ---------------------------------------------------------------------------------

async def login_form(request: web.Request) -> web.Response:
    """`GET /admin/login`: the sign-in form (or the console, for a session)."""
    if admin_key(request.app) is None:
        return page(request, "message.html", status=404, title="Console off",
                    message="The console needs server.admin_key in the config.")
    if sessions.console_session(request) is not None:
        return see_other("/admin")
    return page(request, "console_login.html", error="")


async def login(request: web.Request) -> web.Response:
    """`POST /admin/login` (form field `key`): the admin key opens a session."""
    if not same_origin(request):
        return refused(request, 403, "This sign-in was posted from another site; it was refused.")
    given = (await sessions.form(request)).get("key", "")
    if not sessions.is_admin_key(request.app, given):
        await asyncio.sleep(0.5)  # a guess costs time (the key itself is at least 16 characters)
        return page(request, "console_login.html", status=401, error="This is not the admin key.")
    token, expires = sessions.console_token(request.app)
    response = see_other("/admin")
    set_cookie(response, request, sessions.CONSOLE_COOKIE, token, path=sessions.CONSOLE_PATH,
               max_age=expires - int(time.time()))
    return response


@console_action
async def logout(request: web.Request) -> web.Response:
    """`POST /admin/logout`: forget the session cookie."""
    response = see_other("/admin/login")
    clear_cookie(response, request, sessions.CONSOLE_COOKIE, path=sessions.CONSOLE_PATH)
    return response


# -- pages -----------------------------------------------------------------------------------

@console_page
async def overview(request: web.Request) -> web.Response:
    """`GET /admin`: every customer against its cap, top models and customers, the last hours."""
    app = request.app
    customers, by_model = [], {}
    for customer in sorted(app[LIVE].config.customers.values(), key=lambda c: c.id):
        usage = await summary_of(app, customer)
        cap = usage["cap"]
        customers.append({"id": customer.id, "plan": customer.plan, "active": customer.active,
                          "requests": usage["requests"], "tokens": usage["tokens"]["total"],
                          "amount_due": usage["amount_due"], "exact": Decimal(usage["amount_due_exact"]),
                          "currency": usage["currency"], "cap": cap["amount"] if cap else None,
                          "spent": cap["spent"] if cap else None})
        for row in usage["by_model"]:
            into = by_model.setdefault(row["model"], {"model": row["model"], "requests": 0, "tokens": 0,
                                                      "amount": Decimal(0)})
            into["requests"] += row["requests"]
            into["tokens"] += row["tokens"]["total"]
            into["amount"] += Decimal(row["amount"])
    models = sorted(by_model.values(), key=lambda m: (-m["amount"], -m["tokens"]))[:10]
    top = sorted([c for c in customers if c["requests"]], key=lambda c: -c["exact"])[:10]
    totals = {"amount": sum((c["exact"] for c in customers), Decimal(0)),
              "requests": sum(c["requests"] for c in customers), "tokens": sum(c["tokens"] for c in customers)}
    traffic = app[TRAFFIC]
    body = views.overview(customers=customers, models=models, top=top, traffic=traffic.recent(HOURS),
                          codes=traffic.top_codes(HOURS), totals=totals,
                          reconciliation=await _last_reconciliation(app, None))
    return _layout(request, "Overview", body)


async def _last_reconciliation(app: web.Application, provider: str | None) -> dict | None:
    """The newest `payware reconcile` run (of `provider`, or of any): one read, off the event loop."""
    store = ReconciliationStore(app[RECORDER].ledger.engine)
    return await asyncio.get_running_loop().run_in_executor(None, store.last, provider)


@console_page
async def reconciliation_page(request: web.Request) -> web.Response:
    """`GET /admin/reconciliation[?provider=NAME]`: the last reconciliation run, as
    `GET /v1/admin/reconciliation` serves it: totals, rows per day and model, notes."""
    app = request.app
    provider = request.query.get("provider") or None
    run = await _last_reconciliation(app, provider)
    # NOTE: the config's providers are offered as links, not read from the runs: no second store read.
    providers = sorted(p.name for p in app[LIVE].config.providers.values() if p.kind in RECONCILABLE)
    body = views.reconciliation(run=run, provider=provider, providers=providers)
    return _layout(request, "Reconciliation", body)


def _customer(request: web.Request):
    customer = request.app[LIVE].config.customers.get(request.match_info["id"])
    if customer is None:
        raise NotFound(f"no customer {request.match_info['id']!r}")
    return customer


async def _keys(app: web.Application, customer) -> list[dict]:
    """The customer's keys as the admin API lists them (the file's by id only; never a key)."""
    return await admin.in_thread(ops.list_keys, app[LIVE].store, customer)


async def _statements(app: web.Application, customer) -> dict[str, dict]:
    try:
        await close_periods(app, [customer])
    except asyncio.TimeoutError:
        pass
    return await admin.in_thread(app[RECORDER].ledger.statements, customer.id)


@console_page
async def customer_page(request: web.Request) -> web.Response:
    """`GET /admin/customers/{id}`: usage, keys, statements, evidence export, portal link."""
    app = request.app
    try:
        customer = _customer(request)
    except NotFound as missing:
        return _layout(request, "Not found", views.Html(f'<p>{views.esc(missing.message)}</p>'), status=404)
    usage = await summary_of(app, customer)
    body = views.customer_page(
        customer={"id": customer.id, "plan": customer.plan, "active": customer.active}, usage=usage,
        keys=await _keys(app, customer), statements=history.statement_rows(await _statements(app, customer)),
        csrf=sessions.csrf(app, request[NONCE]), notice=_notice(request))
    return _layout(request, customer.id, body)


def _notice(request: web.Request) -> str:
    """What the last action did (a key id from the redirect; no free text from a URL is shown)."""
    revoked = request.query.get("revoked", "")
    return f"Key {revoked} revoked." if re.fullmatch(r"key_[0-9a-f]{12}", revoked) else ""


@console_page
async def evidence_csv(request: web.Request) -> web.StreamResponse:
    """`GET /admin/customers/{id}/events.csv?from=&to=&session=`: `GET /v1/usage/events` as CSV."""
    customer = _customer(request)
    query = {k: v for k in ("from", "to", "session") if (v := request.query.get(k))}
    # The API's own export: the console's is the API's evidence, byte for byte
    response = web.StreamResponse(headers=download_headers(f"{customer.id}-events.csv"))
    return await send_events(request, customer.id, query, response, csv_format=True)


@console_page
async def statement_csv(request: web.Request) -> web.Response:
    """`GET /admin/customers/{id}/statement.csv?period=`: a frozen statement as CSV."""
    customer = _customer(request)
    body = (await _statements(request.app, customer)).get(request.query.get("period", ""))
    if body is None:
        raise NotFound("no statement for this period", param="period")
    return csv_download(history.statement_csv(body), f"{customer.id}-statement-{body['period']['start'][:10]}.csv")


# -- actions ---------------------------------------------------------------------------------

@console_action
async def create_key(request: web.Request) -> web.Response:
    """Create a key: shown on this page once, kept only as its hash."""
    customer = _customer(request)
    name = request[FIELDS].get("name", "").strip() or None
    live = request.app[LIVE]
    made = await admin.in_thread(ops.issue_key, live.config, live.store, customer, {"name": name})
    await admin.directory_changed(request.app)
    log.info("key %s created for %s (console)", made["id"], customer.id)
    return _shown_key(request, made, customer.id, "Key created")


@console_action
async def revoke_key(request: web.Request) -> web.Response:
    """Revoke a key made at runtime: refused from now on, on every proxy within a second."""
    live, kid = request.app[LIVE], request.match_info["key_id"]
    _answer, customer_id = await admin.in_thread(ops.revoke_key, live.config, live.store, kid)
    await admin.directory_changed(request.app)
    log.info("key %s of %s revoked (console)", kid, customer_id)
    return see_other(f"/admin/customers/{quote(customer_id, safe='')}?revoked={quote(kid, safe='')}")


@console_action
async def rotate_key(request: web.Request) -> web.Response:
    """A new key with the old one's name and limits; the old one works for the grace only."""
    live, kid = request.app[LIVE], request.match_info["key_id"]
    try:
        grace = int(request[FIELDS].get("grace_seconds", "0") or 0)
    except ValueError:
        grace = -1  # refused by rotate_key, with the admin API's words
    fresh = await admin.in_thread(ops.rotate_key, live.config, live.store, kid, grace)
    await admin.directory_changed(request.app)
    log.info("key %s of %s rotated to %s (console, grace %d s)", kid, fresh["customer"], fresh["id"], grace)
    return _shown_key(request, fresh, fresh["customer"], "Key rotated",
                      extra=f"The old key {kid} keeps working for {grace} seconds.")


def _shown_key(request: web.Request, made: dict, customer_id: str, title: str, extra: str = "") -> web.Response:
    body = views.secret_shown(title=title, value=made["key"], back=f"/admin/customers/{quote(customer_id, safe='')}",
                              what=f"The new key {made['id']} of {customer_id}. Copy it now: it is shown this once "
                                   "and Payware keeps only its hash.", extra=extra)
    return _layout(request, title, body)


@console_action
async def make_portal_link(request: web.Request) -> web.Response:
    """A portal link for the customer, shown on the answer's page."""
    customer = _customer(request)
    try:
        ttl = int(request[FIELDS].get("expires_in", "3600"))
    except ValueError:
        ttl = 0
    if not 60 <= ttl <= 30 * 86400:
        raise InvalidRequest("expires_in must be from 60 seconds to 30 days")
    made = portal_link(request, customer.id, ttl)
    body = views.secret_shown(title="Portal link", value=made["url"],
                              what=f"Give this link to {customer.id}: it opens their usage page until "
                                   f"{made['expires_at'][:16]} UTC.",
                              back=f"/admin/customers/{quote(customer.id, safe='')}")
    return _layout(request, "Portal link", body)


def add_routes(app: web.Application) -> None:
    """The console's pages and actions."""
    app.router.add_get("/admin", overview)
    app.router.add_get("/admin/login", login_form)
    app.router.add_get("/admin/reconciliation", reconciliation_page)
    app.router.add_post("/admin/login", login)
    app.router.add_post("/admin/logout", logout)
    app.router.add_get("/admin/customers/{id}", customer_page)
    app.router.add_get("/admin/customers/{id}/events.csv", evidence_csv)
    app.router.add_get("/admin/customers/{id}/statement.csv", statement_csv)
    app.router.add_post("/admin/customers/{id}/keys", create_key)
    app.router.add_post("/admin/customers/{id}/portal_link", make_portal_link)
    app.router.add_post("/admin/keys/{key_id}/revoke", revoke_key)
    app.router.add_post("/admin/keys/{key_id}/rotate", rotate_key)
