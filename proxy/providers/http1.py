"""The provider client: HTTP/1.1 over pooled keep-alive connections, on asyncio's own protocol.

Every model call makes one request to a provider, so this client's cost is paid on every call.
aiohttp's `ClientSession` was ~15 % of the serving process's CPU (cookie jar, tracing, URL
objects, payload registry, a stream reader per answer: machinery a proxy talking to a handful
of fixed base URLs does not use); this is what is left when only what a provider call needs is
kept: the request written in one `write()`, the status line and headers parsed once, the body
handed over as it arrives (Content-Length, chunked, or until the connection closes).

We ask for `Accept-Encoding: identity`; a provider that answers gzip or deflate anyway has its
body decoded here as it arrives (as aiohttp's client does), up to `max_decoded` bytes, and its
Content-Encoding and Content-Length dropped from `headers`: they described the bytes on the
wire, not the ones handed over. Another coding (br, zstd, a stack) is left as it came, header
and all, for the client to undo.

The answer object has the shape the relay reads (`status`, `reason`, `headers`, `read()`,
`content.iter_any()`, `close()`, `release()`), as the litellm bridge's does. Errors:
`ConnectFailed` (nothing was answered, or a head that cannot be read: a 502 to the client),
`AnswerCut` (the answer broke off midway, or its encoded body is corrupt or decodes to more than
`max_decoded` bytes), `TimeoutError` (no byte for `read_timeout` seconds, or no connection in
`connect_timeout`), `UnsafeHeader` (refused before anything is sent). A stalled consumer
pauses the provider's socket (flow control) rather than buffering without bound.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
import zlib
from collections import deque
from urllib.parse import quote, urlencode, urlsplit

from multidict import CIMultiDict, CIMultiDictProxy

_MAX_HEAD = 64 * 1024  # bytes of status line + headers (aiohttp's default limits are 8 KiB a line)
_HIGH_WATER = 256 * 1024  # buffered body bytes at which reading from the provider pauses
# A chunk up to this size cut by a read is handed over whole, once its end arrives: a provider
# writes each SSE event as a chunk, so a stream's pieces then start where an event does, and
# the relay's skim (whole frames passed unread) works whatever the network's reads look like.
_WHOLE_CHUNK = 64 * 1024
# The most a gzip or deflate body may decode to: a few compressed kilobytes can inflate to
# gigabytes (a decompression bomb); no model's answer comes near this.
_MAX_DECODED = 64 * 1024 * 1024
# Content-Encoding values this client undoes, and the zlib window bits each is read with (0:
# deflate, told zlib-wrapped or raw by its first byte, as aiohttp's client does).
_DECODED_CODINGS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": 0}
# What may stand unescaped in a request target (RFC 3986: unreserved, sub-delims, ":@/?%").
_PLAIN_TARGET = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/?%]*")


class HTTPClientError(Exception):
    """The provider could not be reached, or broke off its answer."""


class ConnectFailed(HTTPClientError):
    """No answer: the connection could not be made, or closed before a status line came."""


class AnswerCut(HTTPClientError):
    """The answer's body ended before its length (or its last chunk) was reached."""


class SentThenCancelled(asyncio.CancelledError):
    """The caller was cancelled (its client left) while waiting for the answer to a request the
    provider has been sent in full: it may bill for it."""


class UnsafeHeader(ValueError):
    """A header name or value that would break the request's framing (CR, LF or NUL in it)."""


class _Origin:
    """One URL split once: where to connect and what to put on the request line."""

    __slots__ = ("key", "host", "port", "tls", "host_header", "target")

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.tls = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.tls else 80)
        default = 443 if self.tls else 80
        name = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = name if self.port == default else f"{name}:{self.port}"
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if not _PLAIN_TARGET.fullmatch(target):
            target = quote(target, safe="/:?=&%@!$'()*+,;~-._")
        self.target = target
        self.key = (self.host, self.port, self.tls)


class Client:
    """Pooled connections to providers. One per app; `close()` at shutdown."""

    def __init__(self, *, connect_timeout: float, read_timeout: float, keepalive: float = 60.0,
                 limit: int = 1000, max_decoded: int = _MAX_DECODED) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.keepalive = keepalive
        self.limit = limit
        self.max_decoded = max_decoded
        self._idle: dict[tuple, list[tuple[_Connection, float]]] = {}
        self._origins: dict[str, _Origin] = {}
        self._open = 0
        self._slot_waiters: deque[asyncio.Future] = deque()
        self._tls: ssl.SSLContext | None = None
        self._closed = False

    async def request(self, method: str, url: str, *, headers: dict[str, str], body: bytes | None = None,
                      params: dict | None = None) -> Answer:
        """Send a request; return as soon as the answer's status line and headers are in."""
        if params:
            url = f"{url}{'&' if '?' in url else '?'}{urlencode(params)}"
        origin = self._origin(url)
        head = _head(method, origin, headers, body)
        conn = await self._connection(origin)
        answer = Answer(self, conn, method)
        conn.answer = answer
        try:
            conn.transport.write(head + body if body else head)
            await answer._wait_head()
        except asyncio.CancelledError as exc:
            conn.answer = None
            self._drop(conn)  # NOTE: a close, not an abort: what is buffered of the request still goes
            raise SentThenCancelled(*exc.args) from None
        except BaseException:
            conn.answer = None
            self._drop(conn)
            raise
        return answer

    async def post(self, url: str, *, body: bytes, headers: dict[str, str]) -> Answer:
        return await self.request("POST", url, headers=headers, body=body)

    async def close(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for conn, _ in idle:
                conn.transport.close()
        self._idle.clear()

    def _origin(self, url: str) -> _Origin:
        origin = self._origins.get(url)
        if origin is None:
            origin = _Origin(url)
            if len(self._origins) >= 4096:  # bounded: Gemini's paths carry the model's name
                self._origins.clear()
            self._origins[url] = origin
        return origin

    async def _connection(self, origin: _Origin) -> _Connection:
        idle = self._idle.get(origin.key)
        now = time.monotonic()
        while idle:
            conn, since = idle.pop()
            if not conn.lost and now - since < self.keepalive:
                return conn
            self._drop(conn)
        if self._closed:
            raise ConnectFailed("the client is closed")
        while self._open >= self.limit:  # NOTE: bounded descriptors, as aiohttp's connector limit
            waiter = asyncio.get_running_loop().create_future()
            self._slot_waiters.append(waiter)
            await waiter
        self._open += 1
        loop = asyncio.get_running_loop()
        try:
            tls = None
            if origin.tls:
                if self._tls is None:
                    self._tls = ssl.create_default_context()
                tls = self._tls
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(_Connection, origin.host, origin.port, ssl=tls,
                                                       server_hostname=origin.host if tls else None)
        except BaseException as exc:
            self._open -= 1
            self._wake_one()
            if isinstance(exc, OSError):
                raise ConnectFailed(f"{type(exc).__name__}: {exc.strerror or exc}") from None
            raise
        conn.origin_key = origin.key
        return conn

    def _reuse(self, conn: _Connection) -> None:
        if conn.lost or self._closed:
            self._drop(conn)
            return
        conn.answer = None
        self._idle.setdefault(conn.origin_key, []).append((conn, time.monotonic()))

    def _drop(self, conn: _Connection) -> None:
        if not conn.dropped:
            conn.dropped = True
            conn.transport.close()
            self._open -= 1
            self._wake_one()

    def _wake_one(self) -> None:
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return


def _head(method: str, origin: _Origin, headers: dict[str, str], body: bytes | None) -> bytes:
    lines = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
    # NOTE: a value relayed from a client (anthropic-beta…) must not smuggle a header in
    if lines.count("\n") != len(headers) or lines.count("\r") != len(headers) or "\0" in lines:
        raise UnsafeHeader("a header name or value holds a line break or NUL")
    length = f"Content-Length: {len(body)}\r\n" if body is not None else ""
    return (f"{method} {origin.target} HTTP/1.1\r\nHost: {origin.host_header}\r\n{lines}{length}\r\n"
            .encode("utf-8", "surrogateescape"))


class _Connection(asyncio.Protocol):
    __slots__ = ("transport", "answer", "lost", "dropped", "origin_key")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.answer: Answer | None = None
        self.lost = False
        self.dropped = False
        self.origin_key: tuple = ()

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.answer is not None:
            self.answer._feed(data)
        else:  # bytes nobody asked for: the connection cannot be trusted for the next request
            self.lost = True
            self.transport.close()

    def eof_received(self):
        return False  # close our side too

    def connection_lost(self, exc) -> None:
        self.lost = True
        if self.answer is not None:
            self.answer._lost()


# body framings
_LENGTH, _CHUNKED, _UNTIL_CLOSE = 0, 1, 2
# chunked decoder states
_SIZE, _DATA, _DATA_END, _TRAILER = 0, 1, 2, 3
_CR, _LF = 0x0D, 0x0A


_NO_HEADERS = CIMultiDictProxy(CIMultiDict())  # an answer's headers until its head is parsed


def _content_length(values: list[str]) -> int | None:
    """The body's length from its Content-Length header lines; None if one is not a length or
    two differ (RFC 9112 §6.3: such a message cannot be framed). One value repeated, in a line
    (`10, 10`) or in several, is that length."""
    if len(values) == 1 and values[0].isdigit() and values[0].isascii():  # the usual answer, quickly
        return int(values[0])
    lengths = set()
    for value in values:
        for text in value.split(","):
            text = text.strip()
            if not (text.isdigit() and text.isascii()):
                return None
            lengths.add(int(text))
    return lengths.pop() if len(lengths) == 1 else None


class _Decoder:
    """A gzip or deflate body undone as it arrives, to at most `limit` bytes in all."""

    __slots__ = ("_wbits", "_zlib", "_room", "_limit")

    def __init__(self, wbits: int, limit: int) -> None:
        self._wbits = wbits
        self._zlib = None  # made at the body's first byte, and again for each gzip member after it
        self._room = self._limit = limit

    def decode(self, data: bytes) -> bytes:
        """The decoded bytes of `data`; `AnswerCut` if it is corrupt or decodes past the limit."""
        out = []
        while data:
            inflater = self._zlib
            if inflater is None or inflater.eof:
                wbits = self._wbits or (zlib.MAX_WBITS if data[0] & 0x0F == 8 else -zlib.MAX_WBITS)
                inflater = self._zlib = zlib.decompressobj(wbits)
            try:
                # NOTE: at most one byte past the room: a bomb never takes more memory than the limit
                piece = inflater.decompress(data, self._room + 1)
            except zlib.error:
                raise AnswerCut("the provider's encoded body is corrupt") from None
            if len(piece) > self._room:
                raise AnswerCut(f"the provider's answer decodes to more than {self._limit} bytes")
            self._room -= len(piece)
            out.append(piece)
            data = inflater.unused_data  # what follows the end of a member: the next one
        return b"".join(out)

    def finished(self) -> bool:
        """Whether the body so far ends where its encoding does (nothing of it cut off)."""
        return self._zlib is None or self._zlib.eof


class Answer:
    """One provider answer, its body read as it arrives."""

    # NOTE: one per model call: slots make it smaller and its ~20 fields quicker to set and read
    __slots__ = ("_client", "_conn", "_method", "_loop", "status", "reason", "headers", "content_length", "_head",
                 "_head_done", "_framing", "_left", "_chunk_state", "_line", "_chunks", "_buffered", "_paused",
                 "_held", "_hold", "_decoder",
                 "_whole", "_complete", "_error", "_keep_alive", "_waiter", "_released", "__weakref__")

    def __init__(self, client: Client, conn: _Connection, method: str) -> None:
        self._client = client
        self._conn = conn
        self._method = method
        self._loop = asyncio.get_running_loop()
        self.status = 0
        self.reason = ""
        self.headers: CIMultiDict | CIMultiDictProxy = _NO_HEADERS
        self.content_length: int | None = None
        self._head = bytearray()
        self._head_done = False
        self._framing = _UNTIL_CLOSE
        self._left = 0  # body bytes still due (Content-Length), or of the current chunk
        self._chunk_state = _SIZE
        self._line = bytearray()  # a chunk-size or trailer line split across reads
        self._chunks: deque[bytes] = deque()
        self._held: list[bytes] = []  # the start of a chunk cut by a read, held until its end (_WHOLE_CHUNK)
        self._hold = False  # whether the current chunk is held so
        self._decoder: _Decoder | None = None  # a gzip or deflate body's, undone before it is buffered
        self._buffered = 0
        self._paused = False
        self._whole = False
        self._complete = False  # the whole body arrived
        self._error: BaseException | None = None
        self._keep_alive = False
        self._waiter: asyncio.Future | None = None
        self._released = False

    # ---- the consumer's side

    @property
    def content(self) -> Answer:
        """`answer.content.iter_any()`, as aiohttp's answers are read. NOTE: a property, not an
        attribute: `self.content = self` made every answer a reference cycle, freed only by the
        garbage collector instead of at once."""
        return self

    async def read(self) -> bytes:
        """The whole body."""
        self._whole = True  # read whole: nothing to pause for
        if self._paused:
            self._paused = False
            self._conn.transport.resume_reading()
        while not self._complete:
            await self._wait()
        data = b"".join(self._chunks)
        self._chunks.clear()
        return data

    def ready(self) -> bool:
        """Whether `iter_any`'s next step has something (or the end) at hand, without waiting."""
        return bool(self._chunks) or self._complete

    def at_eof(self) -> bool:
        """Whether every byte of the body has been handed over (as aiohttp's `StreamReader.at_eof`)."""
        return self._complete and not self._chunks

    async def iter_any(self):
        """The body's bytes as they arrive (everything buffered so far, each step)."""
        while True:
            if self._chunks:
                data = b"".join(self._chunks) if len(self._chunks) > 1 else self._chunks[0]
                self._chunks.clear()
                self._buffered = 0
                if self._paused:
                    self._paused = False
                    self._conn.transport.resume_reading()
                yield data
            elif self._complete:
                return
            else:
                await self._wait()

    def close(self) -> None:
        """Stop reading and hang up (the provider stops generating)."""
        if self._released:  # its connection may already serve another call
            return
        self._released = True
        self._conn.answer = None
        self._client._drop(self._conn)

    def release(self) -> None:
        """Done with the answer: its connection goes back to the pool if it can be reused."""
        if self._released:
            return
        self._released = True
        if self._complete and self._keep_alive and self._error is None:
            self._client._reuse(self._conn)
        else:
            self._conn.answer = None
            self._client._drop(self._conn)

    async def _wait_head(self) -> None:
        while not self._head_done:
            await self._wait()

    async def _wait(self) -> None:
        if self._error is not None:
            raise self._error
        waiter = self._waiter = self._loop.create_future()
        timer = self._loop.call_later(self._client.read_timeout, self._timed_out, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None
        if self._error is not None and not self._chunks and not (self._complete and self._head_done):
            raise self._error  # (bytes handed over with the error go first: the next wait raises it)

    def _timed_out(self, waiter: asyncio.Future) -> None:
        if not waiter.done():
            self._fail(TimeoutError(f"no data from the provider in {self._client.read_timeout:g} s"))

    # ---- the protocol's side

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error  # first: decoding what is held may fail too, and come back here
            if self._held:  # what arrived of a chunk cut short is handed over before the error
                held = b"".join(self._held)
                self._held.clear()
                self._push(held)
        self._conn.lost = True
        self._conn.transport.close()
        self._wake()

    def _lost(self) -> None:
        if self._complete:
            return
        if self._head_done and self._framing == _UNTIL_CLOSE:
            if self._decoder is None or self._ends_decoded():
                self._complete = True  # a body without length ends where the connection does
                self._wake()
        elif self._head_done:
            self._fail(AnswerCut("the provider closed the connection before the end of its answer"))
        else:
            self._fail(ConnectFailed("the provider closed the connection without answering"))

    def _feed(self, data: bytes) -> None:
        if self._error is not None or self._complete:
            return
        if not self._head_done:
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                if len(self._head) > _MAX_HEAD:
                    self._fail(ConnectFailed("the provider's answer headers are too long"))
                return
            head, data = bytes(self._head[:end]), bytes(self._head[end + 4:])
            self._head.clear()
            if not self._parse_head(head):
                if data:
                    self._feed(data)  # an interim 1xx answer: the real one follows
                return
            self._wake()
            if self._complete or not data:
                return
        if self._framing == _LENGTH:
            if len(data) > self._left:
                data = data[: self._left]  # bytes past the body: the connection is not reused
                self._keep_alive = False
            self._left -= len(data)
            self._push(data)
            if not self._left:
                self._complete = self._decoder is None or self._ends_decoded()
        elif self._framing == _CHUNKED:
            self._dechunk(data)
        else:
            self._push(data)
        self._wake()

    def _push(self, data: bytes) -> None:
        if self._decoder is not None:  # NOTE: all a body without Content-Encoding pays for decoding
            try:
                data = self._decoder.decode(data)
            except AnswerCut as exc:
                self._fail(exc)
                return
        if data:
            self._chunks.append(data)
            self._buffered += len(data)
            if self._buffered > _HIGH_WATER and not self._paused and not self._whole:
                self._paused = True
                self._conn.transport.pause_reading()

    def _ends_decoded(self) -> bool:
        """At the end of an encoded body: whether its encoding ended too (else the answer is cut)."""
        if self._error is None and not self._decoder.finished():
            self._fail(AnswerCut("the provider's encoded body ends before its encoding does"))
        return self._error is None

    def _parse_head(self, head: bytes) -> bool:
        """Status and headers; False for an interim (1xx) answer, or a head that fails the answer."""
        try:
            text = head.decode("latin-1")
            status_line, *lines = text.split("\r\n")
            version, _, rest = status_line.partition(" ")
            code, _, reason = rest.partition(" ")
            status = int(code)
            if not version.startswith("HTTP/1.") or not 100 <= status <= 999:
                raise ValueError(status_line)
        except (ValueError, UnicodeDecodeError):
            self._fail(ConnectFailed("the provider's answer is not HTTP/1.1"))
            return False
        if status < 200:
            return False
        headers = CIMultiDict()
        for line in lines:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                self._fail(ConnectFailed("the provider sent a malformed header line"))
                return False
            headers.add(name, value.strip())
        length = None
        if status in (204, 304) or self._method == "HEAD":
            framing, length = _LENGTH, 0
        elif "chunked" in headers.get("Transfer-Encoding", "").lower():
            framing = _CHUNKED
        elif "Content-Length" in headers:
            length = _content_length(headers.getall("Content-Length"))
            if length is None:  # failed before its head is taken: nothing of it reaches a client
                self._fail(ConnectFailed("the provider sent an invalid or conflicting Content-Length"))
                return False
            framing = _LENGTH
        else:
            framing = _UNTIL_CLOSE
        self.status, self.reason, self.headers = status, reason, headers
        self._head_done = True
        connection = headers.get("Connection", "").lower()
        self._keep_alive = "close" not in connection if version == "HTTP/1.1" else "keep-alive" in connection
        self._framing = framing
        if framing == _LENGTH:
            self.content_length = self._left = length
            self._complete = length == 0
        elif framing == _UNTIL_CLOSE:
            self._keep_alive = False
        if "Content-Encoding" in headers:
            self._take_coding(headers)
        return True

    def _take_coding(self, headers: CIMultiDict) -> None:
        """Decode a gzip or deflate body as it arrives; leave any other coding as it came."""
        values = headers.getall("Content-Encoding")
        codings = [c for c in (c.strip().lower() for value in values for c in value.split(","))
                   if c and c != "identity"]
        if len(codings) > 1 or (codings and codings[0] not in _DECODED_CODINGS):
            # NOTE: br, zstd, a stack: the body goes on as it came and the header stays, one line,
            # for the relay to pass on: the client decodes it (metering estimates, as for any
            # body it cannot read)
            if len(values) > 1:
                headers["Content-Encoding"] = ", ".join(values)
            return
        if codings:
            self._decoder = _Decoder(_DECODED_CODINGS[codings[0]], self._client.max_decoded)
            headers.popall("Content-Length", None)  # the encoded length: not the body's any more
            if not self._complete:
                self.content_length = None
        del headers["Content-Encoding"]

    def _dechunk(self, data: bytes) -> None:
        """Chunked transfer coding: the chunks' data, in order, without their framing.

        The data of every chunk in one read is passed on as one piece: a fast provider's
        read often holds dozens of chunks (one per SSE event)."""
        pieces: list[bytes] = []
        self._dechunk_into(data, pieces)
        if pieces:
            self._push(pieces[0] if len(pieces) == 1 else b"".join(pieces))

    def _dechunk_into(self, data: bytes, pieces: list[bytes]) -> None:
        if self._line:  # a size or trailer line began in the previous read
            data = bytes(self._line) + data
            self._line.clear()
        i, n = 0, len(data)
        push = pieces.append
        while i < n:
            state = self._chunk_state
            if state == _SIZE:
                # The common case inlined: whole chunks back to back (size, CRLF, data, CRLF). What
                # it does not take (a last chunk, an extension, a bare LF, a chunk cut by the
                # read) the state machine below does, from where it stopped.
                while True:
                    end = data.find(b"\r\n", i)
                    if end < 0:
                        break
                    try:
                        size = int(data[i:end], 16)
                    except ValueError:
                        break
                    stop = end + 2 + size
                    if size <= 0 or stop + 2 > n or data[stop] != _CR or data[stop + 1] != _LF:
                        break
                    push(data[end + 2:stop])
                    i = stop + 2
                if i >= n:
                    return
            if state == _DATA:
                left = self._left
                if left > n - i:  # the chunk goes on in the next read
                    if self._hold:
                        self._held.append(data[i:] if i else data)
                    else:
                        push(data[i:] if i else data)
                    self._left = left - (n - i)
                    return
                if self._held:
                    self._held.append(data[i:i + left])
                    push(b"".join(self._held))
                    self._held.clear()
                else:
                    push(data[i:i + left])
                i += left
                self._left = 0
                self._chunk_state = state = _DATA_END
                if data[i:i + 2] == b"\r\n":  # the data's line end, at once
                    i += 2
                    self._chunk_state = _SIZE
                    continue
            end = data.find(b"\n", i)
            if end < 0:
                self._line += data[i:]
                if len(self._line) > _MAX_HEAD:
                    self._fail(AnswerCut("the provider sent a malformed chunk"))
                return
            line = data[i:end].rstrip(b"\r")
            i = end + 1
            if state == _SIZE:
                try:
                    size = int(line, 16)
                except ValueError:  # chunk extensions (`;name=value`), or garbage
                    try:
                        size = int(line.split(b";", 1)[0].strip(), 16)
                    except ValueError:
                        size = -1
                if size < 0:
                    self._fail(AnswerCut("the provider sent a malformed chunk size"))
                    return
                if size:
                    self._left, self._chunk_state, self._hold = size, _DATA, size <= _WHOLE_CHUNK
                else:
                    self._chunk_state = _TRAILER
            elif state == _DATA_END:
                if line:
                    self._fail(AnswerCut("the provider sent a malformed chunk"))
                    return
                self._chunk_state = _SIZE
            elif not line:  # _TRAILER: the empty line after the last chunk ends the body
                if self._decoder is not None:  # its data decoded first: did the encoding end with it?
                    self._push(b"".join(pieces))
                    pieces.clear()
                    if not self._ends_decoded():
                        return
                self._complete = True
                if i < n:
                    self._keep_alive = False
                return
