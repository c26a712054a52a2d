"""Running the app: the model calls' lane in front (`lane.py`), aiohttp's server behind it for
everything else, with malformed HTTP answered in our envelope.

aiohttp's HTTP parser refuses malformed requests (a NUL in a header, an over-long or
unparsable line, bad chunking, Transfer-Encoding with Content-Length…) before any middleware
runs, with a text/plain 400 that may quote the offending line, and logs that line with a
traceback. A quoted line can be an `Authorization` header. Here those answers are OpenAI's
JSON envelope with a fixed message, and the log line is one line, redacted. An `Expect` it
does not know (a 417 raised before any middleware) is refused in the envelope too.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
from collections.abc import Callable
from contextlib import suppress

from aiohttp import web
from aiohttp.web_protocol import RequestHandler, RequestPayloadError

from proxy.errors import ApiError, InvalidRequest, error_response
from proxy.serving.accesslog import edge_middleware
from proxy.serving.lane import LINGER, Lane

log = logging.getLogger("payware.http")


class _EnvelopeHandler(RequestHandler):
    """aiohttp's connection handler, answering parser errors in OpenAI's envelope."""

    def handle_error(self, request, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        # NOTE: never echo the request's bytes: the bad line may carry a key.
        kind = type(exc).__name__ if exc is not None else "error"
        log.warning("malformed HTTP from %s answered %d (%s)", request.remote, status, kind)
        if request.writer.output_size > 0:
            raise ConnectionError("the response had started; the connection is closed instead")
        error = ApiError(f"malformed HTTP request ({kind})" if status < 500 else "internal error")
        error.status = status
        error.code = "malformed_request" if status < 500 else "internal_error"
        if status >= 500:
            error.type = "server_error"
        response = error_response(error)
        response.force_close()
        return response

    async def finish_response(self, request, resp: web.StreamResponse,
                              start_time: float | None) -> tuple[web.StreamResponse, bool]:
        # NOTE: aiohttp meets an `Expect` header before any middleware runs, and refuses one it
        # does not know (anything but 100-continue) by raising a text/plain 417 past them all:
        # that refusal goes through the edge middleware after all (a request id, our envelope,
        # an access line).
        if isinstance(resp, web.HTTPExpectationFailed):
            resp = await edge_middleware(request, _expectation_failed)
        return await super().finish_response(request, resp, start_time)

    def log_exception(self, *args, **kwargs) -> None:
        # NOTE: a body left unread by an answered request (a 401, a GET with a body) is read by
        # aiohttp afterwards; one it cannot decode (a wrong Content-Encoding) raises there, past
        # every middleware, and would be logged as an "Unhandled exception" with a traceback for
        # each such request, by anyone, key or not. The answer was sent; aiohttp closes the
        # connection: one line says so.
        exc = kwargs.get("exc_info")
        if isinstance(exc, RequestPayloadError):
            log.warning("the unread body of an answered request could not be read (%s); connection closed",
                        str(exc).strip().splitlines()[-1].strip() if str(exc).strip() else type(exc).__name__)
            return
        super().log_exception(*args, **kwargs)


async def _expectation_failed(request: web.Request) -> web.StreamResponse:
    error = InvalidRequest("the Expect header asks for what this server does not do (it knows 100-continue only)",
                           code="expectation_failed")
    error.status = 417
    raise error


class _EnvelopeServer(web.Server):
    def __call__(self) -> RequestHandler:
        return _EnvelopeHandler(self, loop=self._loop, **self._kwargs)


class _Runner(web.AppRunner):
    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _EnvelopeServer  # same state, our handler class (aiohttp offers no hook)
        return server


BACKLOG = 128  # connections waiting to be accepted (aiohttp's sites' default)


def listen(host: str, port: int, *, reuse_port: bool = False) -> list[socket.socket]:
    """The listening sockets of `host:port` (every address it resolves to), bound now.

    NOTE: bound before the app exists, so a port in use fails the start before anything has
    run: no journal opened, no ledger migrated or replayed, nothing to clean up.
    """
    found = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, *_, address in dict.fromkeys(found):  # a resolver may list an address twice
            sockets.append(socket.create_server(address, family=family, backlog=BACKLOG, reuse_port=reuse_port))
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


SHUTDOWN_TIMEOUT = 60.0  # seconds requests in flight have to finish at shutdown (aiohttp's default)
YOUNG_COLLECTION_EVERY = 10_000  # tracked allocations (Python's default: 700)


def _tune_garbage_collector() -> None:
    """Collections made for a server's steady state, once start-up is done.

    - What start-up made (modules, the config, the ledger's metadata: ~115,000 objects) lives
      as long as the process, and every full collection walked it: under load one every few
      seconds, each an ~80 ms pause of every request. `gc.freeze()` takes it out of their sight.
      NOTE: no collection first: it takes ~45 ms of start-up and finds 0 (a migrated database:
      ~1,000) garbage objects, which stay frozen.
    - A call makes a few hundred tracked objects, freed by refcounts when it ends; a young
      collection every 700 allocations (one every ~8 calls on Redis counters) walked those of
      every call in flight, and promoted them to be walked again. Every 10,000: capped chat at
      c=64, 30,000 calls, ~33 -> ~6 µs of collection a call on Redis counters (p50 27-28 ->
      25 ms), ~13 -> ~3 on memory; the longest young and middle pauses 5 and 8 ms instead of
      3 and 5. (50,000 is worse: 57 ms pauses.)
    """
    gc.freeze()
    gc.set_threshold(YOUNG_COLLECTION_EVERY, *gc.get_threshold()[1:])


def run(app: web.Application, *, sockets: list[socket.socket], idle_timeout: float, max_body: int,
        loop: asyncio.AbstractEventLoop, on_ready: Callable[[], None] | None = None) -> None:
    """Serve `app` on `sockets` (see `listen`) until SIGINT or SIGTERM, then shut down cleanly
    (as `web.run_app` does).

    NOTE: handler_cancellation makes a client's disconnect cancel its handler at once, which
    is how an abandoned stream stops the provider and gets billed as partial. aiohttp's
    keep-alive timer also closes a connection whose request headers never complete, so
    `idle_timeout` is the header timeout too.
    """
    # lingering_time: after an answer sent before its body was read (a 401, a 408 for a slow
    # body), aiohttp reads the rest for keep-alive's sake; a slow client gets 1 s, not 10 (the
    # lane's the same).
    runner = _Runner(app, handle_signals=True, access_log=None, handler_cancellation=True,
                     keepalive_timeout=idle_timeout, lingering_time=LINGER, shutdown_timeout=SHUTDOWN_TIMEOUT)

    async def main() -> None:
        listening: list[asyncio.AbstractServer] = []
        lane: Lane | None = None
        try:
            await runner.setup()  # NOTE: inside: a start that fails midway closes what it opened
            # Every connection starts in the model calls' lane, which hands aiohttp's handler
            # (runner.server makes one) any connection whose request it does not take.
            lane = Lane(app, runner.server, idle_timeout=idle_timeout, max_body=max_body)
            for sock in sockets:
                # NOTE: the backlog again: create_server listens anew (asyncio's default is 100)
                listening.append(await asyncio.get_running_loop().create_server(lane, sock=sock, backlog=BACKLOG))
            _tune_garbage_collector()
            if on_ready is not None:
                on_ready()
            await asyncio.Event().wait()
        finally:
            for server in listening:
                server.close()
            if lane is not None:
                await lane.shutdown(SHUTDOWN_TIMEOUT)
            await runner.cleanup()

    asyncio.set_event_loop(loop)
    task = loop.create_task(main())
    try:
        loop.run_until_complete(task)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        if not task.done():
            task.cancel()
            with suppress(asyncio.CancelledError, web.GracefulExit):
                loop.run_until_complete(task)
        pending = asyncio.all_tasks(loop)
        for other in pending:
            other.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
        for sock in sockets:  # those the server never took (a start that failed)
            sock.close()
