"""What the fake providers' wires share: recording each request, counting abandoned ones, and
writing a stream piece by piece (paced, or cut off with no terminator).

The stats live on the app under the key `tests.fakes.upstream` made (passed in, never imported:
run as `python -m tests.fakes.upstream` that module is `__main__`, and a second import of it
would make a second, different key).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterable

from aiohttp import web

SLOW_DELAY_MS = 20  # between writes of a `*-slow` stream; a request header `x-fake-delay-ms` overrides it
SLOW_WORDS = [f" w{i}" for i in range(200)]
CUT_AFTER_WORDS = 2  # a `*-cut` (or mid-stream error) stream breaks off after these many text deltas

Answer = Callable[[web.Request, dict], Awaitable[web.StreamResponse]]


def compact(obj: object) -> bytes:
    """JSON as OpenAI's and Anthropic's streams write it: no spaces."""
    return json.dumps(obj, separators=(",", ":")).encode()


async def record(request: web.Request, stats_key: web.AppKey) -> dict:
    """Count and keep the request (path, query, headers, raw body); answer its JSON body, or {}."""
    raw = await request.read()
    stats = request.app[stats_key]
    stats["requests"][request.path] = stats["requests"].get(request.path, 0) + 1
    stats["last"].append({"path": request.path, "query": request.query_string, "headers": dict(request.headers),
                          "body": raw.decode("utf-8", "replace")})
    del stats["last"][:-50]
    try:
        body = json.loads(raw) if raw else {}
    except ValueError:
        body = {}
    return body if isinstance(body, dict) else {}


def handler(stats_key: web.AppKey, answer: Answer) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """A route that records its request, then answers; a client that leaves first is counted."""

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await record(request, stats_key)
        try:
            return await answer(request, body)
        except (asyncio.CancelledError, ConnectionResetError):
            request.app[stats_key]["cancelled"] += 1  # the client left before the answer was complete
            raise

    return handle


def slow_delay(request: web.Request) -> float:
    """Seconds between the writes of a slow stream (header `x-fake-delay-ms`, else SLOW_DELAY_MS)."""
    return int(request.headers.get("x-fake-delay-ms", SLOW_DELAY_MS)) / 1000


async def hang(request: web.Request) -> None:
    """Never answer; notice the client leaving even when the server does not cancel handlers."""
    while request.transport is not None and not request.transport.is_closing():
        await asyncio.sleep(0.05)
    raise ConnectionResetError("the client went away")


def drop(request: web.Request) -> web.StreamResponse:
    """Close the connection with no answer at all (a provider dropping a non-streamed call)."""
    request.transport.close()
    return web.StreamResponse()


async def write_stream(request: web.Request, pieces: Iterable[bytes], *, content_type: str, delay: float = 0,
                       cut: bool = False, headers: dict | None = None) -> web.StreamResponse:
    """Send `pieces` as separate network writes, `delay` seconds apart; `cut` ends with no terminator."""
    response = web.StreamResponse(headers={"Content-Type": content_type, **(headers or {})})
    await response.prepare(request)
    for piece in pieces:
        await response.write(piece)
        await asyncio.sleep(delay)  # 0: still yields, so each piece leaves in its own write
    if cut:
        # Abrupt: the transport closes with no chunked-encoding terminator (aiohttp's own
        # write_eof then finds it closed and quietly gives up).
        request.transport.close()
        return response
    await response.write_eof()
    return response
