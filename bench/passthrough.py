"""The reference pass-through: the cheapest honest aiohttp proxy, to quote Payware's CPU against.

It relays every request under `/v1/` and `/v1beta/` (Gemini's) to one upstream and the answer
back, and does nothing else: no parsing, no authentication, no accounting. The request body is
read whole and sent upstream with the provider's key in place of the client's (and with
Anthropic's `anthropic-version` and `anthropic-beta`, as Payware relays them); an answer with a
Content-Length is read whole and sent back whole, any other (a stream) is relayed chunk by
chunk as it arrives (`iter_any`, one `write()` per chunk). A few of the upstream's headers are
passed on, as Payware passes them.

It is served as Payware is, so the comparison is fair: `web.run_app` with
`handler_cancellation=True` and no access log, uvloop when it is installed; its upstream calls
go through aiohttp's own client (one pooled session: keep-alive, no auto-decompression, no
User-Agent added), what a naive proxy uses. Payware calls providers through a lean client of
its own (proxy/providers/http1.py), which is part of what the ratio measures.

Run: `python bench/passthrough.py --upstream http://127.0.0.1:PORT --port 8181`; bench/run.py
picks a free port and times start-up to the first relayed answer, as it does for Payware.
"""

from __future__ import annotations

import argparse
import asyncio

import aiohttp
from aiohttp import web

UPSTREAM = web.AppKey("upstream", str)
HTTP = web.AppKey("http", aiohttp.ClientSession)
PROVIDER_KEY = "sk-bench-dummy-provider-key"
RELAYED_REQUEST_HEADERS = ("anthropic-version", "anthropic-beta")
PASS_HEADERS = ("Content-Type", "openai-processing-ms", "openai-version", "x-request-id",
                "retry-after", "retry-after-ms", "x-should-retry")


async def relay(request: web.Request) -> web.StreamResponse:
    """Send the request's bytes upstream; send the answer's bytes back, streamed if it streams."""
    body = await request.read()
    headers = {"Content-Type": request.headers.get("Content-Type", "application/json"),
               "Accept-Encoding": "identity", "Authorization": f"Bearer {PROVIDER_KEY}"}
    for name in RELAYED_REQUEST_HEADERS:
        if name in request.headers:
            headers[name] = request.headers[name]
    async with request.app[HTTP].request(request.method, request.app[UPSTREAM] + request.path_qs,
                                         data=body, headers=headers) as upstream:
        out_headers = {name: upstream.headers[name] for name in PASS_HEADERS if name in upstream.headers}
        if upstream.content_length is not None:
            return web.Response(status=upstream.status, body=await upstream.read(), headers=out_headers)
        response = web.StreamResponse(status=upstream.status, headers=out_headers)
        await response.prepare(request)
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
        await response.write_eof()
        return response


def make_app(upstream: str) -> web.Application:
    """The relay on every `/v1/` and `/v1beta/` path; the upstream session opened and closed with the app."""
    app = web.Application()
    app[UPSTREAM] = upstream.rstrip("/")
    app.router.add_route("*", "/v1/{tail:.*}", relay)
    app.router.add_route("*", "/v1beta/{tail:.*}", relay)

    async def client_session(app: web.Application):
        connector = aiohttp.TCPConnector(limit=1000, limit_per_host=0, keepalive_timeout=60)
        timeout = aiohttp.ClientTimeout(total=None, connect=10, sock_read=600)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False,
                                         skip_auto_headers=("User-Agent",)) as session:
            app[HTTP] = session
            yield

    app.cleanup_ctx.append(client_session)
    return app


def _event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True, help="base URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(make_app(args.upstream), host=args.host, port=args.port, access_log=None,
                handler_cancellation=True, print=None, loop=_event_loop())


if __name__ == "__main__":
    main()
