"""Reading and writing JSON bodies: one place where any bytes become a 400, never a 500.

A request body may be anything: not JSON, not UTF-8, nested a million deep, compressed with
a `Content-Encoding` that does not match its bytes, or sent slower than any client should.
`read_json` turns each of those into an `InvalidRequest` (or a 408 for the slow body) that
names the problem. `dump_json` serializes a body we changed, whatever strings it holds.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import Callable

import orjson
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage
from aiohttp.web_protocol import RequestPayloadError

from proxy.errors import InvalidRequest, RequestTimeout, UnsupportedEncoding

MAX_DEPTH = 64  # deeper JSON is refused: no API we serve nests anywhere near this
# Arrays and objects in one body: more are refused before parsing. Each costs ~0.3 µs to
# build and walk, on the event loop that serves every call (8 MB of `[],` took it 1.8 s); no
# request of an API we serve comes near this many.
MAX_CONTAINERS = 100_000
# Numbers parsed as Decimal (usage records) in one body: the same reason, ~0.4 µs each
MAX_DECIMALS = 100_000
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')  # a JSON string, escapes included

BODY_TIMEOUT = web.AppKey("body_timeout", float)  # seconds to receive a whole request body
_CODINGS = frozenset({"identity", "gzip", "deflate", "br", "zstd", ""})  # what a request body may be encoded with


async def read_body(request: web.Request) -> bytes:
    """The request's body, decompressed; a 400 if its encoding is wrong, a 408 if it is too slow.

    NOTE: the deadline bounds a client that sends its headers and then trickles the body.
    """
    timeout = request.app.get(BODY_TIMEOUT, 30.0)
    coding = request.headers.get("Content-Encoding")
    if coding is not None and coding.strip().lower() not in _CODINGS:
        # NOTE: aiohttp decodes these only, and passes any other coding's bytes on as if plain
        raise UnsupportedEncoding(f"Content-Encoding {coding!r} is not supported "
                                  "(identity, gzip, deflate, br or zstd)")
    try:
        if request.content.is_eof():  # all of it came with the headers (most bodies): nothing to wait for
            return await request.read()
        async with asyncio.timeout(timeout):
            return await request.read()
    except asyncio.TimeoutError:
        raise RequestTimeout(f"the request body did not arrive within {timeout:g} s") from None
    except (RequestPayloadError, BadHttpMessage) as exc:
        message = str(exc).strip().splitlines()[-1].strip() if str(exc).strip() else type(exc).__name__
        # NOTE: the rest of this body cannot be read: end it here (else aiohttp, reading it after our
        # answer for keep-alive's sake, logs the same error again as unhandled) and close the connection.
        request.content.feed_eof()
        error = InvalidRequest(f"the request body could not be read: {message}")
        error.close = True
        raise error from None


def parse_json(raw: bytes, *, parse_float: Callable[[str], object] | None = None, what: str = "body") -> object:
    """`raw` as JSON, or InvalidRequest saying why not."""
    # NOTE: what a parse would cost is bounded first, by counting bytes (C speed); brackets and
    # dots inside strings are not counted when the first count is high
    if raw.count(b"[") + raw.count(b"{") > MAX_CONTAINERS:
        structure = _outside_strings(raw)
        if structure.count(b"[") + structure.count(b"{") > MAX_CONTAINERS:
            raise InvalidRequest(f"the JSON {what} holds more than {MAX_CONTAINERS:,} arrays and objects")
    if parse_float is not None and raw.count(b".") + raw.count(b"e") + raw.count(b"E") > MAX_DECIMALS:
        structure = _outside_strings(raw)
        if structure.count(b".") + structure.count(b"e") + structure.count(b"E") > MAX_DECIMALS:
            raise InvalidRequest(f"the JSON {what} holds more than {MAX_DECIMALS:,} decimal numbers")
    try:
        value = json.loads(raw.decode(), parse_float=parse_float) if parse_float is not None else load_json(raw)
    except RecursionError:
        raise InvalidRequest(f"the JSON {what} is nested too deeply (at most {MAX_DEPTH} levels)") from None
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequest(f"We could not parse the JSON {what} of your request. (HINT: This likely means "
                             "you aren't using your HTTP library correctly.)") from None
    # The brackets bound the depth: most bodies need no walk at all.
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and _too_deep(value):
        raise InvalidRequest(f"the JSON {what} is nested too deeply (at most {MAX_DEPTH} levels)")
    return value


def load_json(raw: bytes | str) -> object:
    """`json.loads(raw)`, by orjson when it can (3-5x faster on the bodies and answers of every
    call). orjson accepts only strict JSON, and parses what it accepts to the same values; what
    it refuses (NaN, integers past 64 bits, a lone surrogate, other encodings than UTF-8) is left
    to the standard library, so what is accepted and what it means do not change. Bytes are
    UTF-8 only (the standard library would read UTF-16 and UTF-32 too: not JSON of the web)."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw.decode() if isinstance(raw, bytes) else raw)


def load_json_or_none(raw: bytes | str) -> object:
    """`load_json`, for what a provider sent: None for what is not JSON or nests too deeply
    (deep nesting raises RecursionError, not ValueError); whatever came, the call is metered."""
    try:
        return load_json(raw)
    except (ValueError, RecursionError):
        return None


def _outside_strings(raw: bytes) -> bytes:
    """`raw` without its JSON strings (an upper bound of its structure: an unclosed quote keeps
    the rest, whose parse fails anyway)."""
    return _STRING.sub(b"", raw)


def _too_deep(value: object) -> bool:
    """Whether `value` nests more than MAX_DEPTH containers (iterative: no recursion limit)."""
    if not isinstance(value, (dict, list)):
        return False
    level = [value]
    for _ in range(MAX_DEPTH):
        deeper = []
        for item in level:
            children = item.values() if isinstance(item, dict) else item
            deeper.extend(child for child in children if isinstance(child, (dict, list)))
        if not deeper:
            return False
        level = deeper
    return True


async def read_json(request: web.Request, **kwargs) -> object:
    """`read_body` then `parse_json`."""
    return parse_json(await read_body(request), **kwargs)


async def read_fields(request: web.Request, allowed: tuple[str, ...]) -> dict:
    """A JSON object body whose fields are all in `allowed` (the admin routes'); fractions as Decimal."""
    from decimal import Decimal

    body = await read_json(request, parse_float=Decimal)
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object")
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise InvalidRequest(f"unknown field {unknown[0]!r} (expected: {', '.join(allowed)})", param=unknown[0])
    return body


def dump_json(value: object) -> bytes:
    """Compact UTF-8 JSON; strings that UTF-8 cannot hold (lone surrogates) go as \\u escapes.

    orjson's when it writes the values the standard library would (~5x faster: a stream's body
    is written again on most calls, to ask for its usage; a float may be spelled otherwise,
    `1e-7` for `1e-07`, the same number): it refuses lone surrogates and integers past 64 bits,
    and would write NaN and Infinity (which `load_json` accepts) as null."""
    try:
        dumped = orjson.dumps(value)
        if b"null" not in dumped or not _non_finite(value):
            return dumped
    except TypeError:
        pass
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
    except UnicodeEncodeError:
        return json.dumps(value, ensure_ascii=True, separators=(",", ":")).encode()


def _non_finite(value: object) -> bool:
    """Whether `value` holds a NaN or an infinite float anywhere (iterative, as `_too_deep`)."""
    todo = [value]
    while todo:
        item = todo.pop()
        if type(item) is float:
            if item != item or item in (math.inf, -math.inf):
                return True
        elif isinstance(item, dict):
            todo.extend(item.values())
        elif isinstance(item, list):
            todo.extend(item)
    return False
