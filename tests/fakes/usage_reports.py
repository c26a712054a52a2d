"""A fake of the providers' usage report endpoints, answering pages of recorded reports.

- OpenAI: `GET /v1/organization/usage/completions` with `Authorization: Bearer <admin key>`;
- Anthropic: `GET /v1/organizations/usage_report/messages` with `x-api-key: <admin key>` and an
  `anthropic-version` header.

Each answers the pages of its `--openai` / `--anthropic` file (a JSON list of pages) in order:
no `page` parameter gives the first, `page=<next_page of page n>` gives page n + 1. A wrong key
is the provider's 401 (in its own error envelope). `GET /_stats` lists the queries received.
Run as a process: `python -m tests.fakes.usage_reports --port 0 --admin-key K --openai F
--anthropic F` prints `LISTENING <url>`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from aiohttp import web

QUERIES = web.AppKey("queries", list)


def _pages(request: web.Request, pages: list[dict]) -> web.Response:
    request.app[QUERIES].append({"path": request.path, "query": list(request.query.items())})
    wanted = request.query.get("page")
    if wanted is None:
        return web.json_response(pages[0])
    for index, page in enumerate(pages[:-1]):
        if page.get("next_page") == wanted:
            return web.json_response(pages[index + 1])
    return web.json_response({"error": {"message": f"invalid page {wanted!r}", "type": "invalid_request_error"}},
                             status=400)


def make_app(*, admin_key: str, openai: list[dict], anthropic: list[dict]) -> web.Application:
    app = web.Application()
    app[QUERIES] = []

    async def openai_report(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {admin_key}":
            return web.json_response({"error": {"message": "Incorrect API key provided.", "type": "invalid_request_error",
                                                "param": None, "code": "invalid_api_key"}}, status=401)
        return _pages(request, openai)

    async def anthropic_report(request: web.Request) -> web.Response:
        if request.headers.get("x-api-key") != admin_key or not request.headers.get("anthropic-version"):
            return web.json_response({"type": "error", "error": {"type": "authentication_error",
                                                                 "message": "invalid x-api-key"}}, status=401)
        return _pages(request, anthropic)

    async def stats(request: web.Request) -> web.Response:
        return web.json_response({"queries": request.app[QUERIES]})

    app.router.add_get("/v1/organization/usage/completions", openai_report)
    app.router.add_get("/v1/organizations/usage_report/messages", anthropic_report)
    app.router.add_get("/_stats", stats)
    return app


async def _serve(args) -> None:
    app = make_app(admin_key=args.admin_key, openai=json.loads(Path(args.openai).read_text()),
                   anthropic=json.loads(Path(args.anthropic).read_text()))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, args.host, args.port).start()
    print(f"LISTENING http://{args.host}:{runner.addresses[0][1]}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--admin-key", required=True)
    parser.add_argument("--openai", required=True)
    parser.add_argument("--anthropic", required=True)
    try:
        asyncio.run(_serve(parser.parse_args()))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
