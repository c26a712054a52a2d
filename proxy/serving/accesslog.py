"""One log line per request: who called, what it cost, how long it took, and why it was refused.

Fields: request id, method, path (never the query: Gemini clients may put a key there),
status, customer, key id, model, tokens (input/output), amount, total latency and the time
the provider took to answer (upstream), and the error code of a refusal or a failure
(`spend_cap_reached`, `rate_limit_exceeded`, `invalid_api_key`, `upstream_error`…), so every
refusal and every upstream failure has its line. Handlers leave what they know on the request
(`note`); the middleware writes the line when the answer is done (a stream: its last byte).
`PAYWARE_LOG_FORMAT=json` makes it (and every other log line) one JSON object per line.
A request writes exactly one line: in the text format, what a client chose (the decoded path
above all) has its control characters, backslashes and (in the path) spaces backslash-escaped.

Inside `payware serve` (see `write_directly`) the lines skip the logging module: each is one
f-string in the log's own format, and the lines of one event-loop turn go out in one
`write(2)`. The module's record, handler lock, formatter and a write per line cost ~10 % of a
proxied request. Elsewhere (an embedded app, tests) they go through the `payware.access` logger.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import time
from typing import NamedTuple, TextIO

from aiohttp import web

from metering.store.events import new_event_id
from proxy.errors import render_failure
from proxy.serving.redact import json_line

log = logging.getLogger("payware.access")

NOTES = "payware.access"  # request key: the fields handlers noted
# What else counts each finished request: a callable(request, status, seconds) (proxy/metrics.py).
OBSERVER = web.AppKey("access_observer", object)


def note(request: web.Request, **fields) -> None:
    """Add fields to this request's access-log line."""
    notes = request.get(NOTES)
    if notes is None:
        request[NOTES] = fields
    else:
        notes.update(fields)


@web.middleware
async def edge_middleware(request: web.Request, handler) -> web.StreamResponse:
    """The one middleware: the request's id, every failure rendered in its route's envelope, and
    the access-log line (one layer, not three: it runs on every request)."""
    # NOTE: the request id is also the usage event's id: the key of exactly-once billing.
    request["request_id"] = new_event_id("req_")
    started = time.perf_counter()
    status = 500
    try:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:  # a redirect is an answer, and aiohttp sends it
                status = exc.status
                raise
            response = render_failure(request, exc)
        except Exception as exc:  # CancelledError is a BaseException: it passes through
            response = render_failure(request, exc)
        status = response.status
        return response
    except asyncio.CancelledError:
        status = 499  # the client went away first (nginx's code for it)
        raise
    finally:
        observer = request.app.get(OBSERVER)
        if observer is not None:
            observer(request, status, time.perf_counter() - started)
        lines = _lines
        if lines.enabled():
            lines.add(_Line(request["request_id"], request.method, request.path, status, request.get(NOTES),
                            request.get("payware.error"), round((time.perf_counter() - started) * 1000, 1)))


class _Line(NamedTuple):
    """One request's access line, in parts: the text format is written from them directly."""

    request_id: str
    method: str
    path: str
    status: int
    notes: dict | None
    error: str | None
    latency_ms: float

    def fields(self) -> dict:
        return {"request_id": self.request_id, "method": self.method, "path": self.path, "status": self.status,
                **(self.notes or {}), "error": self.error, "latency_ms": self.latency_ms}

    def text(self) -> str:
        """`req_… POST /v1/chat/completions 200 customer=acme …` (the text format's message).

        NOTE: always one line whose fields split at spaces: what a client chose (a decoded '%0a'
        in the path) is escaped, so no request can write a line of its own. One check of the
        whole line is all the common case costs (for ASCII, bytes.translate: half the time of
        str.isprintable).
        """
        text = self._joined()
        if text.isascii():
            plain = len(text.encode().translate(None, _UNSAFE_ASCII)) == len(text)
        else:
            plain = text.isprintable() and "\\" not in text
        if plain and " " not in self.path:
            return text
        notes = {k: _escaped(str(v)) for k, v in self.notes.items() if v is not None} if self.notes else None
        return self._replace(method=_escaped(self.method, space=True), path=_escaped(self.path, space=True),
                             notes=notes, error=None if self.error is None else _escaped(self.error))._joined()

    def _joined(self) -> str:
        rest = [f"{k}={v}" for k, v in self.notes.items() if v is not None] if self.notes else []
        if self.error is not None:
            rest.append(f"error={self.error}")
        rest.append(f"latency_ms={self.latency_ms}")
        return f"{self.request_id} {self.method} {self.path} {self.status} {' '.join(rest)}"


_UNSAFE_ASCII = bytes(range(0x20)) + b"\x7f\\"  # C0 controls, DEL, the backslash
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\", " ": "\\x20"}


def _escaped(text: str, *, space: bool = False) -> str:
    """`text` with a backslash escape for each character that is not printable (C0 and C1
    controls, DEL, line and paragraph separators, format characters), for the backslash itself,
    and with `space` for the space (the path's: the line's fields are split at spaces)."""
    return "".join(_escape(c) if not c.isprintable() or c == "\\" or (space and c == " ") else c for c in text)


def _escape(char: str) -> str:
    code = ord(char)
    return _ESCAPES.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000
                                  else f"\\U{code:08x}")


def _json_escaped(text: str) -> str:
    """A JSON line with each character that is not printable as a `\\uXXXX` escape (the same
    JSON): `json.dumps(ensure_ascii=False)` escapes C0 controls, not DEL, C1 or U+2028."""
    return "".join(c if c.isprintable() else _json_escape(ord(c)) for c in text)


def _json_escape(code: int) -> str:
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000  # beyond the BMP: a surrogate pair, as JSON spells it
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


class _ThroughLogging:
    """Access lines as records of the `payware.access` logger (the default)."""

    def enabled(self) -> bool:
        return log.isEnabledFor(logging.INFO)

    def add(self, line: _Line) -> None:
        # NOTE: makeRecord + handle, not log.info: the line's source location is always this
        # one, and finding it again walks the stack on every request
        log.handle(log.makeRecord(log.name, logging.INFO, __file__, 0, line.text(), (), None,
                                  extra={"fields": line.fields()}))


class _Direct:
    """Access lines written straight to `stream` in the log's format, one write per loop turn."""

    def __init__(self, stream: TextIO, json_format: bool, on: bool):
        self.stream, self.json_format, self.on = stream, json_format, on
        self.pending: list[str] = []
        self._second, self._stamp = -1, ""
        atexit.register(self.flush)  # the last turn's lines, if the loop is gone

    def enabled(self) -> bool:
        return self.on

    def add(self, line: _Line) -> None:
        now = time.time()
        second = int(now)
        if second != self._second:  # the stamp's text changes once a second
            self._second = second
            self._stamp = (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)) if self.json_format
                           else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second)))
        millis = int((now - second) * 1000)
        if self.json_format:
            text = json_line(f"{self._stamp}.{millis:03d}Z", "info", log.name, line.fields())
            # NOTE: json.dumps escaped C0 controls, not DEL, C1 controls or U+2028 (ensure_ascii=False)
            if not (text.isascii() and "\x7f" not in text) and not text.isprintable():
                text = _json_escaped(text)
        else:  # as RedactingFormatter's "%(asctime)s %(levelname)s %(name)s %(message)s"
            text = f"{self._stamp},{millis:03d} INFO {log.name} {line.text()}"
        if not self.pending:
            asyncio.get_running_loop().call_soon(self.flush)
        self.pending.append(text + "\n")

    def flush(self) -> None:
        if not self.pending:
            return
        text = "".join(self.pending)
        self.pending.clear()
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # a closed or broken stderr must not fail anyone's request
            pass


_lines: _ThroughLogging | _Direct = _ThroughLogging()


def write_directly(stream: TextIO, *, json_format: bool) -> None:
    """Write access lines to `stream` without the logging module (`payware serve`, after it set
    up logging: the `payware.access` logger's level at this moment decides whether they are on)."""
    global _lines
    _lines = _Direct(stream, json_format, log.isEnabledFor(logging.INFO))
