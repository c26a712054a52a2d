"""The customer usage page, `/portal`: opened by a signed, expiring link or by a customer key.

- `POST /v1/admin/customers/{id}/portal_link {"expires_in": 3600}` (admin key) answers the URL
  `/portal?token=…` (the pattern of Stripe's customer portal). The token names the customer
  and its expiry and is signed with a key derived from the admin key (`proxy.web.tokens`).
- `GET /portal?token=…` checks the token (a tampered or expired one: a 403 page saying so),
  keeps it in an HttpOnly, SameSite=Strict cookie and moves on to `/portal`, so the token
  does not stay in the address bar or the history.
- `GET /portal` without a session shows a sign-in form: a customer key is posted once (never
  put in a URL) and exchanged for a session cookie that ends with the key.
- The page itself is static HTML and Payware's own script, which polls `/portal/api/…`
  (`proxy.routes.portal_api`): the customer is always the session's, never a parameter.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone

from aiohttp import web

from proxy.admin_ops import inactive
from proxy.appkeys import LIVE
from proxy.errors import Forbidden, InvalidRequest, NotFound
from proxy.jsonbody import parse_json, read_body
from proxy.web import sessions, tokens
from proxy.web.assets import page, refused
from proxy.web.guard import clear_cookie, key_for, same_origin, secure, see_other, set_cookie

LINK_TTL, MIN_LINK_TTL, MAX_LINK_TTL = 3600, 60, 30 * 86400  # seconds


async def create_link(request: web.Request) -> web.Response:
    """`POST /v1/admin/customers/{id}/portal_link`: a signed URL of the customer's portal."""
    app = request.app
    if not app[LIVE].keyring.caller(request).admin:
        raise Forbidden("portal links are made with the admin key")
    raw = await read_body(request)
    body = parse_json(raw) if raw.strip() else {}
    if not isinstance(body, dict) or set(body) - {"expires_in"}:
        raise InvalidRequest("the body is {\"expires_in\": seconds} (or empty)", param="expires_in")
    ttl = body.get("expires_in", LINK_TTL)
    if type(ttl) is not int or not MIN_LINK_TTL <= ttl <= MAX_LINK_TTL:
        raise InvalidRequest(f"expires_in must be a whole number of seconds from {MIN_LINK_TTL} to {MAX_LINK_TTL}",
                             param="expires_in")
    customer = app[LIVE].config.customers.get(request.match_info["id"])
    if customer is None:
        raise NotFound(f"no customer {request.match_info['id']!r}", param="id", code="customer_not_found")
    if not customer.active:
        raise inactive(customer)
    return web.json_response(link(request, customer.id, ttl), status=201)


def link(request: web.Request, customer_id: str, ttl: int) -> dict:
    """A portal link for `customer_id`, valid `ttl` seconds, on the host this request reached."""
    token, expires = sessions.portal_token(request.app, customer_id, ttl=ttl, kid=None)
    origin = f"{'https' if secure(request) else request.scheme}://{request.host}"
    return {"object": "portal_link", "customer": customer_id, "url": f"{origin}/portal?token={token}",
            "expires_at": datetime.fromtimestamp(expires, timezone.utc).isoformat()}


async def portal_page(request: web.Request) -> web.Response:
    """`GET /portal`: the page (with a session), a link's landing (`?token=`), or the sign-in form."""
    app = request.app
    if "token" in request.query:
        try:
            payload = tokens.verify(key_for(app, tokens.PORTAL), request.query["token"], kind=tokens.PORTAL)
        except tokens.BadToken as bad:
            message = ("This link has expired. Ask for a new link where you found this one."
                       if bad.reason == "expired" else "This link is not valid. Check that it was copied whole.")
            return page(request, "message.html", status=403, title="Link refused", message=message)
        if payload.get("k") is not None or sessions.holder(app, payload) is None:
            return page(request, "message.html", status=403, title="Link refused",
                        message="This link no longer opens an account.")
        response = page(request, "portal_open.html")
        set_cookie(response, request, sessions.PORTAL_COOKIE, request.query["token"], path=sessions.PORTAL_PATH,
                   max_age=payload["e"] - int(time.time()))
        return response
    session = sessions.portal_session(request)
    if session is None:
        return page(request, "portal_login.html", error="")
    return page(request, "portal.html", customer=session.customer.id, plan=session.customer.plan,
                csrf=sessions.csrf(app, session.nonce))


async def login(request: web.Request) -> web.Response:
    """`POST /portal/login` (form field `key`): a customer key opens its own portal."""
    if not same_origin(request):
        return refused(request, 403, "This sign-in was posted from another site; it was refused.")
    fields = await sessions.form(request)
    given = fields.get("key", "")
    if sessions.is_admin_key(request.app, given):
        return page(request, "portal_login.html", status=401,
                    error="This is the operator's key: it opens the console at /admin, not a customer's portal.")
    found = sessions.customer_by_key(request.app, given) if given else None
    if found is None:
        return page(request, "portal_login.html", status=401, error="This key is not valid (or was revoked).")
    customer, kid = found
    token, expires = sessions.portal_token(request.app, customer.id, ttl=sessions.LOGIN_TTL, kid=kid)
    response = see_other(sessions.PORTAL_PATH)
    set_cookie(response, request, sessions.PORTAL_COOKIE, token, path=sessions.PORTAL_PATH,
               max_age=expires - int(time.time()))
    return response


async def logout(request: web.Request) -> web.Response:
    """`POST /portal/logout`: forget the session cookie."""
    session = sessions.portal_session(request)
    if session is None:
        return refused(request, 401, "You are not signed in.")
    reason = sessions.check_post(request, session.nonce, (await sessions.form(request)).get("csrf"))
    if reason is not None:
        return refused(request, 403, reason)
    response = see_other(sessions.PORTAL_PATH)
    clear_cookie(response, request, sessions.PORTAL_COOKIE, path=sessions.PORTAL_PATH)
    return response


def add_routes(app: web.Application) -> None:
    """The portal's page, sign-in and link routes."""
    app.router.add_post("/v1/admin/customers/{id}/portal_link", create_link)
    app.router.add_get("/portal", portal_page)
    app.router.add_post("/portal/login", login)
    app.router.add_post("/portal/logout", logout)
