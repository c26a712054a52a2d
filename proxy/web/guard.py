"""What every page and form of the web faces shares: signing keys, cookies, origin checks, headers.

- Keys: derived from the admin key in force (`proxy.web.tokens.derive`), read at each request,
  so a config reload that changes the admin key ends every session and link.
- Cookies: HttpOnly, SameSite=Strict, `Secure` when the request came over HTTPS (directly or
  as `X-Forwarded-Proto: https` from a TLS terminator), scoped to their face's path.
- Posts: the `Origin` header (else the `Referer`) must name this very host; a post with
  neither, or with another site's, is refused. Each face also checks a per-session CSRF token.
- Pages: a strict Content-Security-Policy (every asset from Payware itself, no inline script,
  no framing), `nosniff`, a referrer for this host only, and no caching of pages that carry data.
"""

from __future__ import annotations

import secrets
from urllib.parse import urlsplit

from aiohttp import web

from proxy.appkeys import LIVE
from proxy.web import tokens

PROCESS_SECRET = web.AppKey("web_process_secret", bytes)  # signs portal sessions when there is no admin key

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


def init(app: web.Application) -> None:
    """The process's own secret, for portal sessions when no admin key is configured."""
    app[PROCESS_SECRET] = secrets.token_bytes(32)


def admin_key(app: web.Application) -> str | None:
    """The admin key in force (it follows a config reload), or None."""
    key = app[LIVE].config.server.admin_key
    return str(key) if key else None


def key_for(app: web.Application, purpose: str) -> bytes:
    """The signing key of `purpose` (see `proxy.web.tokens`)."""
    root = admin_key(app)
    return tokens.derive(root.encode() if root else app[PROCESS_SECRET], purpose)


def secure(request: web.Request) -> bool:
    """Whether the browser reached us over HTTPS (directly or through a TLS terminator)."""
    return request.secure or request.headers.get("X-Forwarded-Proto", "").lower() == "https"


def set_cookie(response: web.StreamResponse, request: web.Request, name: str, value: str, *, path: str,
               max_age: int) -> None:
    """A session cookie: HttpOnly, SameSite=Strict, Secure over HTTPS, on `path` only."""
    response.set_cookie(name, value, path=path, max_age=max(0, max_age), httponly=True, samesite="Strict",
                        secure=secure(request))


def clear_cookie(response: web.StreamResponse, request: web.Request, name: str, *, path: str) -> None:
    """Forget a session cookie (same attributes, so the browser matches it)."""
    response.del_cookie(name, path=path, httponly=True, samesite="Strict", secure=secure(request))


def same_origin(request: web.Request) -> bool:
    """Whether a post comes from a page of this host (Origin, else Referer; neither: no)."""
    source = request.headers.get("Origin")
    if source is None or source == "null":
        source = request.headers.get("Referer")
    if not source:
        return False
    try:
        parts = urlsplit(source)
    except ValueError:
        return False
    scheme = "https" if secure(request) else request.scheme
    # NOTE: a browser sets Origin itself; another site's page cannot forge it, nor X-Forwarded-Proto.
    return parts.scheme in (scheme, request.scheme) and parts.netloc.lower() == request.host.lower()


def harden(response: web.StreamResponse, *, cache: bool = False) -> web.StreamResponse:
    """The headers of every face's answer (see the module docstring)."""
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    # NOTE: not "no-referrer": with it a browser sends `Origin: null` on posts, and the origin check needs it
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Cache-Control"] = "no-cache" if cache else "no-store"
    return response


def see_other(location: str) -> web.Response:
    """A 303 to a page of this host (after a post, or to the login form)."""
    return harden(web.Response(status=303, headers={"Location": location}))
