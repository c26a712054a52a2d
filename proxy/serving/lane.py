"""The model calls' lane: their requests read on a bare asyncio protocol, not aiohttp's server.

A model call is the proxy's hot path, and aiohttp's server layers (its request handler, the
request object, the application's routing and middleware chain) cost ~15 % of a capped call's
CPU (bench/ab.py). Each connection starts here. A request this lane can read with certainty
goes to the same route handler through the same middleware (`edge_middleware`), and its answer
is written by aiohttp's own response objects and writer (a stream), or by the lane exactly as
those would write it (a whole answer): the bytes on the wire are the ones aiohttp would send.
Anything else hands the connection, with every byte read so far, to aiohttp's request handler
for the rest of its life: another route, another method, a path or query that decoding could
change (a '%', a '+', a dot segment: Gemini's routes carry the model in the path and `alt=sse`
or the key in the query, and the lane takes them only in the plain characters that read the
same either way), HTTP/1.0, a chunked or compressed body, `Expect`, a head over 8 KiB or with
anything but plain ASCII tokens and values, a line not ended by CRLF (a bare LF, seen while the
head arrives), a second Content-Length, a body over the size limit... so malformed or unusual
HTTP is always aiohttp's to refuse, in our envelope (`server.py`).

What aiohttp's server does for a request, this lane does too: keep-alive with the idle timeout
(which is also the header timeout), requests pipelined on one connection answered in order,
the handler cancelled when the client goes away (how an abandoned stream stops the provider
and gets billed as partial), a body read with its deadline (`read_body`), the connection
closed after an answer that asked for it, the rest of a body the answer came before (a 401
for a bad key) read and dropped for up to `LINGER` seconds before the next request is read,
in-flight requests finished at shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable

from aiohttp import hdrs, web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http import SERVER_SOFTWARE, HttpVersion11
from aiohttp.http_writer import StreamWriter, _serialize_headers
from aiohttp.tcp_helpers import tcp_keepalive
from multidict import CIMultiDict, CIMultiDictProxy, MultiDict, MultiDictProxy

from proxy.serving.accesslog import edge_middleware

log = logging.getLogger("payware.http")

MAX_HEAD = 8190  # bytes of request line and headers (aiohttp's limit for a line); more: aiohttp's
MAX_HEADERS = 100
LINGER = 1.0  # seconds the rest of an unwanted body may take (aiohttp's `lingering_time`, server.py)
# The model routes this lane serves, POST only (the others are aiohttp's): exact paths, and
# Gemini's, whose last segment names the model and the method.
LANE_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses", "/v1/messages")
LANE_TARGETS = ("/v1beta/models/{target}", "/v1/models/{target}")
# A target and a query the lane reads as yarl would: characters that no decoding changes (no
# '%', '+' or ';'), a target that is never a dot segment ('model:method'). Anything else: aiohttp's.
_TARGET = re.compile(rb"[A-Za-z0-9._-]+:[A-Za-z0-9._-]+")
_QUERY = re.compile(rb"[A-Za-z0-9._~-]+=[A-Za-z0-9._~-]*(?:&[A-Za-z0-9._~-]+=[A-Za-z0-9._~-]*)*")
# RFC 9110: a header name is a token; a value is visible ASCII, spaces and tabs (no obs-text here).
_HEADER = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*([\x21-\x7e]+(?:[ \t]+[\x21-\x7e]+)*)?[ \t]*")
_NO_QUERY = MultiDictProxy(MultiDict())
_HANDED_OVER = ("transfer-encoding", "expect", "content-encoding", "upgrade")


class _Body:
    """`request.content`, as much of aiohttp's StreamReader as `read_body` asks of it."""

    __slots__ = ("waiter",)

    def __init__(self, waiter: asyncio.Future | None):
        self.waiter = waiter  # None: the whole body came with the head

    def is_eof(self) -> bool:
        return self.waiter is None or self.waiter.done()


class _MatchInfo(dict):
    """`request.match_info` of a lane route: its variables (Gemini's `target`), and what the
    middleware and /metrics read of it."""

    __slots__ = ("route", "http_exception")

    def __init__(self, route: web.AbstractRoute, variables: dict[str, str] | None = None):
        super().__init__(variables or ())
        self.route = route
        self.http_exception = None


class LaneRequest(dict):
    """What the model routes read of a request (`web.Request`'s names), and its own storage."""

    __slots__ = ("app", "method", "path", "headers", "match_info", "query", "content", "version", "keep_alive",
                 "transport", "_protocol", "_writer", "_body")

    def __init__(self, app: web.Application, path: str, headers: CIMultiDictProxy, match_info: _MatchInfo,
                 body: bytes | asyncio.Future, protocol: LaneProtocol, query: MultiDictProxy = _NO_QUERY):
        super().__init__()
        self.app, self.method, self.path, self.headers, self.match_info = app, "POST", path, headers, match_info
        self.query = query
        self.version = HttpVersion11
        self.keep_alive = True
        self.transport = protocol.transport
        self._protocol, self._writer = protocol, None
        self._body = body
        self.content = _Body(body if isinstance(body, asyncio.Future) else None)

    @property
    def _payload_writer(self) -> StreamWriter:
        """aiohttp's writer, for the answers it writes (`LaneProtocol._write_whole` writes the rest)."""
        if self._writer is None:
            self._writer = StreamWriter(self._protocol, self._protocol._loop)
        return self._writer

    async def read(self) -> bytes:
        body = self._body
        return body if isinstance(body, bytes) else await asyncio.shield(body)

    async def _prepare_hook(self, response: web.StreamResponse) -> None:
        await self.app.on_response_prepare.send(self, response)  # as aiohttp does for its requests


def _query(query: bytes) -> MultiDictProxy:
    """`name=value&...` of `_QUERY`'s characters, in order, repeated names kept (as yarl reads it)."""
    return MultiDictProxy(MultiDict(pair.decode().split("=", 1) for pair in query.split(b"&")))


def _whole(response: web.StreamResponse) -> bool:
    """An answer `_write_whole` writes exactly as aiohttp would: a `Response` of bytes, not yet
    started, with none of what takes aiohttp's other branches (a length of its own, chunking,
    compression, cookies, a status without a body)."""
    return (type(response) is web.Response and response._payload_writer is None and not response._eof_sent
            and isinstance(response._body, bytes) and not response._chunked and not response._compression
            and not response._cookies and hdrs.CONTENT_LENGTH not in response._headers
            and 200 <= response._status and response._status not in (204, 304))


def _bare_line_end(head: bytes) -> bool:
    """Whether the start of a head has a CR or an LF that is not one of a CRLF (a trailing CR may
    be one whose LF is on its way).

    NOTE: such a head is aiohttp's: the lane reads CRLF lines only, and a head ended by a bare
    LF ('\\n\\n') would have it wait for a CRLFCRLF that never comes (the idle timeout, then a
    closed connection, where aiohttp answers at once). Checked only while a head is incomplete,
    so the whole start each time: an LF may come in a read after its CR or its other LF.
    """
    crlf = head.count(b"\r\n")
    return head.count(b"\n") != crlf or head.count(b"\r") - head.endswith(b"\r") != crlf


class Lane:
    """The listening side: one per app; makes a `LaneProtocol` per connection."""

    def __init__(self, app: web.Application, handover: Callable[[], asyncio.Protocol], *, idle_timeout: float,
                 max_body: int):
        self.app, self.handover, self.idle_timeout, self.max_body = app, handover, idle_timeout, max_body
        self.routes: dict[bytes, tuple[Callable, _MatchInfo]] = {}
        self.targets: list[tuple[bytes, Callable, web.AbstractRoute]] = []  # (path up to the target, ...)
        for resource in app.router.resources():
            for route in resource:
                if route.method != "POST":
                    continue
                if resource.canonical in LANE_PATHS:
                    self.routes[resource.canonical.encode()] = (route.handler, _MatchInfo(route))
                elif resource.canonical in LANE_TARGETS:
                    self.targets.append((resource.canonical.removesuffix("{target}").encode(), route.handler, route))
        self.connections: set[LaneProtocol] = set()

    def __call__(self) -> LaneProtocol:
        return LaneProtocol(self)

    def route(self, target: bytes) -> tuple[str, Callable, _MatchInfo, MultiDictProxy] | None:
        """The path, handler, match info and query of a request-target the lane serves, each as
        aiohttp would read it; None for the others."""
        found = self.routes.get(target)
        if found is not None:
            return target.decode(), *found, _NO_QUERY
        path, mark, query = target.partition(b"?")
        if mark and not _QUERY.fullmatch(query):
            return None
        for prefix, handler, route in self.targets:
            if path.startswith(prefix) and _TARGET.fullmatch(path, len(prefix)):
                variables = {"target": path[len(prefix):].decode()}
                return path.decode(), handler, _MatchInfo(route, variables), _query(query) if mark else _NO_QUERY
        return None

    async def shutdown(self, timeout: float) -> None:
        """Close idle connections; let requests in flight finish for `timeout` s, then cancel them."""
        for conn in list(self.connections):
            if conn.task is None:
                conn.close()
        busy = [conn.task for conn in self.connections if conn.task is not None]
        if busy:
            _, pending = await asyncio.wait(busy, timeout=timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for conn in list(self.connections):
            conn.close()


class LaneProtocol(BaseProtocol):
    """One client connection while its requests are the lane's."""

    def __init__(self, lane: Lane):
        super().__init__(asyncio.get_running_loop())
        self.lane = lane
        self.buffer = b""  # bytes not yet read as a request (a head, a pipelined request)
        self.later: list[bytes] = []  # bytes that came while a request was served: read after it
        self.later_size = 0
        self.task: asyncio.Task | None = None
        self.body_waiter: asyncio.Future | None = None  # the body of the request being served, still arriving
        self.body: list[bytes] = []  # its pieces so far (joined once: a body may be megabytes in many reads)
        self.body_left = 0
        self.dropping = False  # the body still arriving is not wanted any more (answered before it came)
        self.idle: asyncio.TimerHandle | None = None
        self.closing = False

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)  # TCP_NODELAY, as aiohttp's connections
        tcp_keepalive(transport)  # SO_KEEPALIVE, as aiohttp's (its handler's default)
        self.lane.connections.add(self)
        self._wait_idle()

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        self.lane.connections.discard(self)
        self._stop_idle()
        if self.task is not None:
            self.task.cancel()  # the client left: its handler stops (an abandoned stream is billed as partial)
        if self.body_waiter is not None and not self.body_waiter.done():
            self.body_waiter.set_exception(ConnectionResetError("the client went away"))
            self.body_waiter.exception()  # retrieved: nobody may be waiting for it

    def data_received(self, data: bytes) -> None:
        if self.body_waiter is not None:  # the body of the request being served
            take = data[:self.body_left] if len(data) > self.body_left else data
            if not self.dropping:
                self.body.append(take)
            self.body_left -= len(take)
            data = data[len(take):]
            if self.body_left:
                return
            if self.dropping:  # the answered request's body is over: the next request may follow
                self.body_waiter, self.dropping = None, False
                self._stop_idle()
            else:
                self.body_waiter.set_result(b"".join(self.body))
                self.body_waiter, self.body = None, []
                if not data:
                    return
        if self.task is None:
            # NOTE: grows only while a head is incomplete, so by MAX_HEAD at most
            self.buffer = self.buffer + data if self.buffer else data
            self._next()
            return
        self.later.append(data)
        self.later_size += len(data)
        if self.later_size > MAX_HEAD + self.lane.max_body:
            self.transport.pause_reading()  # pipelined far ahead: wait until this answer is sent

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            self._stop_idle()
            if self.transport is not None:
                self.transport.close()

    # ---- reading a request

    def _next(self) -> None:
        """Serve the next request in the buffer, wait for more of it, or hand the connection over."""
        if self.closing or self.transport is None:
            return
        if self.later:
            self.buffer += b"".join(self.later)
            self.later, self.later_size = [], 0
        buffer = self.buffer
        if not buffer:
            self._wait_idle()
            return
        end = buffer.find(b"\r\n\r\n", 0, MAX_HEAD + 4)
        if end < 0:
            if (len(buffer) > MAX_HEAD or not buffer.startswith(b"POST /"[:len(buffer)])
                    or _bare_line_end(buffer)):
                self._hand_over()
            return  # the head is still arriving (the idle timer bounds it, as aiohttp's does)
        parsed = self._parse(buffer, end)
        if parsed is None:
            self._hand_over()
            return
        path, handler, match_info, query, headers, length = parsed
        start = end + 4
        body: bytes | asyncio.Future
        if len(buffer) - start >= length:
            body, self.buffer = buffer[start:start + length], buffer[start + length:]
        else:  # the rest of the body follows: the handler reads it with its deadline
            self.body, self.buffer = [buffer[start:]], b""
            self.body_left = length - (len(buffer) - start)
            body = self.body_waiter = self._loop.create_future()
        self._stop_idle()
        request = LaneRequest(self.lane.app, path, headers, match_info, body, self, query)
        self.task = self._loop.create_task(self._serve(request, handler))

    def _parse(self, buffer: bytes, end: int) -> tuple | None:
        """The lane's route (path, handler, match info, query), headers and body length of a
        request it reads with certainty; None for anything else (aiohttp's then)."""
        line_end = buffer.find(b"\r\n", 0, end + 2)
        method, _, rest = buffer[:line_end].partition(b" ")
        target, _, version = rest.partition(b" ")
        if method != b"POST" or version != b"HTTP/1.1":
            return None
        route = self.lane.route(target)
        if route is None:
            return None
        lines = buffer[line_end + 2:end].split(b"\r\n") if end > line_end else []
        if len(lines) > MAX_HEADERS:
            return None
        headers: CIMultiDict[str] = CIMultiDict()
        length = None
        for line in lines:
            match = _HEADER.fullmatch(line)
            if match is None:
                return None  # obs-fold, a bare CR or LF, a NUL, a space before the colon, non-ASCII...
            name, value = match.group(1).decode(), (match.group(2) or b"").decode()
            lowered = name.lower()
            if lowered == "content-length":
                if length is not None or not value.isdigit() or len(value) > 18:
                    return None
                length = int(value)
            elif lowered in _HANDED_OVER or (lowered == "connection" and value.lower() != "keep-alive"):
                return None
            headers.add(name, value)
        if length is None or length > self.lane.max_body:
            return None  # no length (a POST must say it here) or too large: aiohttp's 413
        return *route, CIMultiDictProxy(headers), length

    def _hand_over(self) -> None:
        """aiohttp's request handler takes this connection, and every byte read so far."""
        self.lane.connections.discard(self)
        self._stop_idle()
        handler = self.lane.handover()
        transport, buffer = self.transport, self.buffer + b"".join(self.later)
        self.buffer, self.later = b"", []
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if buffer:
            handler.data_received(buffer)
        self.transport = None

    # ---- answering it

    async def _serve(self, request: LaneRequest, handler: Callable) -> None:
        keep = False
        try:
            response = await edge_middleware(request, handler)
            if _whole(response):
                await self._write_whole(request, response)
            else:
                await response.prepare(request)  # as aiohttp's own handler finishes a response
                await response.write_eof()
            keep = response.keep_alive is not False
        except asyncio.CancelledError:
            pass  # the client left (or shutdown): nothing more to send
        except ConnectionError as exc:  # the client left while the answer was written
            log.debug("answer not sent: %s", type(exc).__name__)
        except Exception:
            log.exception("unhandled error while answering %s", request.get("request_id", "-"))
        finally:
            self.task = None
        if not keep or self.transport is None:
            self.close()
            return
        self.transport.resume_reading()
        if self.body_waiter is not None:
            self._drop_body()
            return
        self._next()

    def _drop_body(self) -> None:
        """Read the rest of a body the answer came before, and drop it; then the next request.

        NOTE: as aiohttp lingers: closing with the client still sending would have the kernel
        reset the connection, and a reset can destroy the answer before the client reads it.
        """
        self.body_waiter.cancel()  # nobody reads it now
        self.body, self.dropping = [], True
        self.idle = self._loop.call_later(LINGER, self.close)  # a body slower than that is not waited for

    async def _write_whole(self, request: LaneRequest, response: web.Response) -> None:
        """Write an answer whose body is all here, as aiohttp's `Response.prepare` and `write_eof`
        would (the same headers in the same order, the same signal, one write), without building
        its writer: ~5 % of a call's CPU (bench/ab.py). `_whole` says which answers qualify."""
        headers = response._headers
        headers[hdrs.CONTENT_LENGTH] = str(len(response._body))
        if response._body:
            headers.setdefault(hdrs.CONTENT_TYPE, "application/octet-stream")
        if hdrs.DATE not in headers:
            headers[hdrs.DATE] = rfc822_formatted_time()
        headers.setdefault(hdrs.SERVER, SERVER_SOFTWARE)
        keep_alive = response._keep_alive
        if keep_alive is None:
            keep_alive = response._keep_alive = request.keep_alive
        if not keep_alive and hdrs.CONNECTION not in headers:
            headers[hdrs.CONNECTION] = "close"
        response._req = request
        await request._prepare_hook(response)
        transport = self.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("Cannot write to closing transport")
        head = _serialize_headers(f"HTTP/1.1 {response._status} {response._reason}", headers)
        body = response._body
        if len(body) < 16384:  # as aiohttp's writer: one copy is cheaper than a vectored write
            transport.write(head + body)
        else:
            transport.writelines((head, body))
        response._eof_sent = True  # as aiohttp's write_eof: a later prepare() is a no-op
        if self._paused:  # as aiohttp's write_eof: the next answer waits until the client reads
            await self._drain_helper()

    # ---- keep-alive

    def _wait_idle(self) -> None:
        if self.idle is None and not self.closing:
            self.idle = self._loop.call_later(self.lane.idle_timeout, self.close)

    def _stop_idle(self) -> None:
        if self.idle is not None:
            self.idle.cancel()
            self.idle = None
