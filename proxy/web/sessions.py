"""Who holds a page: a portal session (one customer) or a console session (the operator).

Both live in an HttpOnly cookie that holds a signed, expiring token (`proxy.web.tokens`); the
server keeps nothing, so every proxy of a fleet (same admin key) accepts them. A portal
session is a portal link's token (the customer it names, until the link's expiry) or the
token made at a customer-key login (which also names the key: the session ends when the key
is revoked or expires). Every post must come from this host and carry the session's CSRF
token (`check_post`).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass
from urllib.parse import parse_qsl

from aiohttp import web

from config.schema import CustomerConfig, key_id
from proxy.appkeys import LIVE
from proxy.jsonbody import read_body
from proxy.web import tokens
from proxy.web.guard import admin_key, key_for, same_origin

PORTAL_COOKIE, PORTAL_PATH = "pw_portal", "/portal"
CONSOLE_COOKIE, CONSOLE_PATH = "pw_console", "/admin"
LOGIN_TTL = 8 * 3600  # seconds a login (portal by key, console) lasts


@dataclass(frozen=True, slots=True)
class PortalSession:
    """A portal page's holder: one customer, until `expires`."""
    customer: CustomerConfig
    nonce: str
    expires: int
    key_id: str | None  # the key it was opened with; None for a signed link


def portal_session(request: web.Request) -> PortalSession | None:
    """The portal session of this request's cookie, if it is valid and its customer (and key) still are."""
    token = request.cookies.get(PORTAL_COOKIE)
    if not token:
        return None
    try:
        payload = tokens.verify(key_for(request.app, tokens.PORTAL), token, kind=tokens.PORTAL)
    except tokens.BadToken:
        return None
    return holder(request.app, payload)


def holder(app: web.Application, payload: dict) -> PortalSession | None:
    """The session a verified portal payload opens, or None if its customer or key is gone."""
    customer = app[LIVE].config.customers.get(payload.get("c"))
    if customer is None or not customer.active or not isinstance(payload.get("n"), str):
        return None
    kid = payload.get("k")
    if kid is not None and not key_alive(customer, kid):
        return None
    return PortalSession(customer=customer, nonce=payload["n"], expires=payload["e"], key_id=kid)


def key_alive(customer: CustomerConfig, kid: str) -> bool:
    """Whether key `kid` of `customer` still works (not revoked, not past its rotation grace)."""
    if kid not in {key_id(entry.removeprefix("sha256:")) for entry in customer.keys}:
        return False
    policy = customer.key_policies.get(kid)
    return policy is None or policy.expires_at is None or policy.expires_at.timestamp() > time.time()


def portal_token(app: web.Application, customer_id: str, *, ttl: int, kid: str | None) -> tuple[str, int]:
    """A new portal token for `customer_id`, and its expiry (unix seconds)."""
    expires = int(time.time()) + ttl
    payload = {"t": tokens.PORTAL, "c": customer_id, "k": kid, "e": expires, "n": tokens.new_nonce()}
    return tokens.sign(key_for(app, tokens.PORTAL), payload), expires


def customer_by_key(app: web.Application, key: str) -> tuple[CustomerConfig, str] | None:
    """The customer and key id of a live customer key (never the admin key), or None."""
    try:
        digest = hashlib.sha256(key.strip().encode("ascii")).hexdigest()
    except UnicodeEncodeError:
        return None
    found = app[LIVE].config.key_index().get(digest)
    if found is None:
        return None
    customer = app[LIVE].config.customers[found[0]]
    return (customer, found[1]) if customer.active and key_alive(customer, found[1]) else None


def console_session(request: web.Request) -> str | None:
    """The nonce of this request's console session, if its cookie holds a valid one."""
    token = request.cookies.get(CONSOLE_COOKIE)
    if not token or admin_key(request.app) is None:
        return None
    try:
        payload = tokens.verify(key_for(request.app, tokens.CONSOLE), token, kind=tokens.CONSOLE)
    except tokens.BadToken:
        return None
    return payload["n"] if isinstance(payload.get("n"), str) else None


def console_token(app: web.Application) -> tuple[str, int]:
    """A new console session token, and its expiry (unix seconds)."""
    expires = int(time.time()) + LOGIN_TTL
    return tokens.sign(key_for(app, tokens.CONSOLE), {"t": tokens.CONSOLE, "e": expires,
                                                       "n": tokens.new_nonce()}), expires


def is_admin_key(app: web.Application, given: str) -> bool:
    """Whether `given` is the admin key in force (compared in constant time)."""
    admin = admin_key(app)
    return admin is not None and hmac.compare_digest(given.strip().encode("utf-8", "replace"), admin.encode())


def csrf(app: web.Application, nonce: str) -> str:
    """The CSRF token of the session whose nonce is `nonce`."""
    return tokens.csrf_token(key_for(app, tokens.CSRF), nonce)


def check_post(request: web.Request, nonce: str, given: str | None) -> str | None:
    """Why this post must be refused (cross-site, or without the session's CSRF token), or None."""
    if not same_origin(request):
        return "This form was posted from another site (or without an Origin header); it was refused."
    if not tokens.csrf_ok(key_for(request.app, tokens.CSRF), nonce, given):
        return "This form's security token is missing or wrong; reload the page and try again."
    return None


async def form(request: web.Request) -> dict[str, str]:
    """A posted form's fields (URL-encoded; the body bounded in size and time like any body)."""
    raw = await read_body(request)
    try:
        return dict(parse_qsl(raw.decode("utf-8"), keep_blank_values=True, max_num_fields=64))
    except (UnicodeDecodeError, ValueError):  # not UTF-8, or too many fields: an empty form
        return {}
