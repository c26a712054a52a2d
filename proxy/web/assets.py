"""The faces' files (proxy/web/static, proxy/web/templates): served and rendered by Payware itself.

Every asset a page uses comes from here (no CDN, no external request). Files are read once,
when the app is built, from the installed package (they ship in the wheel). Templates are
`string.Template` text: every value is HTML-escaped unless it is `Html` (markup built here).
"""

from __future__ import annotations

import hashlib
import html
import json
from importlib import resources
from string import Template

from aiohttp import web

from proxy.web.guard import harden

_TYPES = {".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml", ".html": "text/html"}


class Html(str):
    """Markup that is already safe: inserted into a template as it is."""


def esc(value: object) -> str:
    """A value as HTML text (`Html` passes as it is)."""
    return value if isinstance(value, Html) else html.escape("" if value is None else str(value), quote=True)


class Assets:
    """The static files (by name, with their ETag) and the page templates."""

    def __init__(self, static: dict[str, bytes], templates: dict[str, str]):
        self.static = {name: (body, '"' + hashlib.sha256(body).hexdigest()[:20] + '"') for name, body in static.items()}
        self.templates = {name: Template(text) for name, text in templates.items()}

    @classmethod
    def load(cls) -> Assets:
        root = resources.files("proxy.web")
        static = {f.name: f.read_bytes() for f in (root / "static").iterdir() if f.is_file()}
        templates = {f.name: f.read_text(encoding="utf-8") for f in (root / "templates").iterdir()
                     if f.is_file() and f.name.endswith(".html")}
        return cls(static, templates)

    def render(self, name: str, **values: object) -> str:
        return self.templates[name].substitute({k: esc(v) for k, v in values.items()})


ASSETS = web.AppKey("web_assets", Assets)


async def static_file(request: web.Request) -> web.StreamResponse:
    """`GET /static/{name}`: one of the shipped files, revalidated by ETag."""
    found = request.app[ASSETS].static.get(request.match_info["name"])
    if found is None:
        raise web.HTTPNotFound()
    body, etag = found
    name = request.match_info["name"]
    if request.headers.get("If-None-Match") == etag:
        return harden(web.Response(status=304, headers={"ETag": etag}), cache=True)
    kind = _TYPES.get(name[name.rfind("."):], "application/octet-stream")
    return harden(web.Response(body=body, content_type=kind, charset="utf-8" if kind.startswith("text") else None,
                               headers={"ETag": etag}), cache=True)


def page(request: web.Request, template: str, *, status: int = 200, **values: object) -> web.Response:
    """A rendered page with the faces' security headers."""
    text = request.app[ASSETS].render(template, **values)
    return harden(web.Response(text=text, status=status, content_type="text/html", charset="utf-8"))


def json_answer(data: object, *, status: int = 200) -> web.Response:
    """JSON with the faces' headers (never cached)."""
    return harden(web.Response(text=json.dumps(data), status=status, content_type="application/json"))


def refused(request: web.Request, status: int, message: str, *, title: str = "Not allowed") -> web.Response:
    """A refusal: JSON in OpenAI's envelope for scripts, a small page for people."""
    if "application/json" in request.headers.get("Accept", ""):
        code = {401: "unauthorized", 403: "forbidden"}.get(status, "invalid_request")
        return json_answer({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                      "code": code}}, status=status)
    return page(request, "message.html", status=status, title=title, message=message)
