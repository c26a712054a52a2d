"""Signed, expiring tokens for the web faces: portal links, portal sessions, console sessions.

A token is `<payload>.<mac>`, both base64url without padding: the payload is compact JSON
(`{"t": kind, "c": customer, "k": key id, "e": expiry (unix seconds), "n": nonce}`), the mac
is HMAC-SHA256 over the payload's text. It is checked in constant time before anything in it
is read, so a tampered token is refused without a hint of why.

Keys are derived from `server.admin_key` (HMAC-SHA256 of the admin key over a purpose label),
one per purpose, so a portal token never opens the console and rotating the admin key ends
every link and session at once. Without an admin key the console is off and the portal's
sessions are signed with a random key of this process (a customer-key login then holds on
this proxy only).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time

PORTAL = "portal"  # portal links and portal logins
CONSOLE = "console"  # operator console sessions
CSRF = "csrf"  # per-session CSRF tokens of either face

MAX_TOKEN = 2048  # characters: longer is refused before any work


class BadToken(Exception):
    """A token that does not open anything; `reason` is "invalid" or "expired"."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def derive(root: bytes, purpose: str) -> bytes:
    """The signing key of one purpose, from the root secret (the admin key)."""
    return hmac.new(root, b"payware web v1:" + purpose.encode(), hashlib.sha256).digest()


def new_nonce() -> str:
    """A session's random id (its CSRF token is derived from it)."""
    return secrets.token_urlsafe(16)


def sign(key: bytes, payload: dict) -> str:
    """A token carrying `payload` (which must hold `e`, its expiry in unix seconds)."""
    body = _b64(json.dumps(payload, separators=(",", ":"), sort_keys=True).encode())
    return f"{body}.{_b64(_mac(key, body))}"


def verify(key: bytes, token: str, *, kind: str, now: float | None = None) -> dict:
    """The payload of a token of `kind` signed with `key`; BadToken if forged, altered or expired."""
    if (not isinstance(token, str) or not token or len(token) > MAX_TOKEN or not token.isascii()
            or token.count(".") != 1):
        raise BadToken("invalid")
    body, mac = token.split(".")
    # NOTE: the mac is compared in constant time before the payload is parsed or trusted, as
    # text: one spelling only (padding or other base64 variants of the same bytes are refused).
    if not hmac.compare_digest(mac.encode("ascii"), _b64(_mac(key, body)).encode("ascii")):
        raise BadToken("invalid")
    try:
        payload = json.loads(_unb64(body))
    except (binascii.Error, ValueError):
        raise BadToken("invalid") from None
    if not isinstance(payload, dict) or payload.get("t") != kind or not isinstance(payload.get("e"), int):
        raise BadToken("invalid")
    if payload["e"] <= (time.time() if now is None else now):
        raise BadToken("expired")
    return payload


def csrf_token(key: bytes, nonce: str) -> str:
    """The CSRF token of the session whose nonce is `nonce` (derived, so nothing is stored)."""
    return _b64(hmac.new(key, b"csrf:" + nonce.encode(), hashlib.sha256).digest())


def csrf_ok(key: bytes, nonce: str, given: str | None) -> bool:
    """Whether `given` is the CSRF token of the session `nonce` (constant time).

    NOTE: a token is base64url, so anything not ASCII is simply wrong; a header of non-UTF-8
    bytes arrives with lone surrogates, which `str.encode` refuses (was a 500)."""
    return (isinstance(given, str) and given.isascii()
            and hmac.compare_digest(given.encode("ascii"), csrf_token(key, nonce).encode("ascii")))


def _mac(key: bytes, body: str) -> bytes:
    return hmac.new(key, body.encode("ascii"), hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    if not text.isascii():
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
