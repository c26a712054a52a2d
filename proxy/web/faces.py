"""The faces people see: the customer portal (`/portal`), the operator console (`/admin`) and
their shipped assets (`/static/…`); registered on the app in one call."""

from __future__ import annotations

from aiohttp import web

from proxy.routes import console, portal, portal_api
from proxy.web import guard
from proxy.web.assets import ASSETS, Assets, static_file
from proxy.web.traffic import TRAFFIC, Traffic, count_response


def add_faces(app: web.Application) -> None:
    """Routes, assets and the console's traffic counters of the web faces."""
    guard.init(app)
    app[ASSETS] = Assets.load()
    app[TRAFFIC] = Traffic()
    app.on_response_prepare.append(count_response)
    app.router.add_get("/static/{name}", static_file)
    portal.add_routes(app)
    portal_api.add_routes(app)
    console.add_routes(app)
