"""Malformed HTTP on the wire, each carrying a customer key where a client may put one
(`Authorization: Bearer`, `x-api-key`, `x-goog-api-key`, or `?key=` in the target).

The parser refuses these before any handler runs; what is checked is that the answer is a
400 and that neither the answer nor the proxy's log repeats the key.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from tests.fuzz.cases import Case

BODY = b'{"model":"fake-ok","messages":[{"role":"user","content":"hi"}]}'
TARGETS = (("POST", b"/v1/chat/completions"), ("POST", b"/v1/usage/records"), ("GET", b"/v1/models"),
           ("GET", b"/v1/usage/summary"), ("PUT", b"/v1/billing/cap"), ("POST", b"/v1/responses"),
           ("GET", b"/v1/responses/resp_x"), ("POST", b"/v1/messages"),
           ("POST", b"/v1beta/models/gemini-fake-ok:generateContent"), ("POST", b"/v1/admin/customers"),
           ("GET", b"/metrics"), ("POST", b"/portal/login"))
# Where the key travels: a header line, or the target's query (then a harmless line stands in).
KEY_LINES = (b"Authorization: Bearer ", b"x-api-key: ", b"x-goog-api-key: ", None)


def _request(method: str, target: bytes, lines: list[bytes], body: bytes = b"", *, length: bool = True,
             version: bytes = b"HTTP/1.1") -> bytes:
    head = [method.encode() + b" " + target + b" " + version, b"Host: 127.0.0.1", b"Connection: close", *lines]
    if length and body:
        head.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def _auth_around(rng: random.Random, auth: bytes, bad: list[bytes]) -> list[bytes]:
    """The Authorization line before or after the bad lines (the parser may stop at either)."""
    return [auth, *bad] if rng.random() < 0.5 else [*bad, auth]


Template = Callable[[random.Random, bytes, str, bytes], bytes]

TEMPLATES: dict[str, Template] = {
    "NUL in a header value": lambda rng, auth, m, t: _request(m, t, _auth_around(
        rng, auth, [b"X-Payware-Session: a\x00b"]), BODY),
    "control bytes in a header value": lambda rng, auth, m, t: _request(m, t, _auth_around(
        rng, auth, [b"X-Payware-Feature: a\x01b\x7fc"]), BODY),
    "control byte in the Authorization line": lambda rng, auth, m, t: _request(m, t, [auth + b"\x01"], BODY),
    "NUL in the Authorization line": lambda rng, auth, m, t: _request(m, t, [auth + b"\x00tail"], BODY),
    "over-long header line": lambda rng, auth, m, t: _request(m, t, _auth_around(
        rng, auth, [b"X-Payware-Session: " + b"a" * 9000]), BODY),
    "over-long Authorization line": lambda rng, auth, m, t: _request(m, t, [auth + b"A" * 9000], BODY),
    "too many headers": lambda rng, auth, m, t: _request(m, t, _auth_around(
        rng, auth, [b"X-Junk-%d: v" % i for i in range(rng.choice((200, 1000)))]), BODY),
    "bad chunk size": lambda rng, auth, m, t: _request(m, t, [auth, b"Transfer-Encoding: chunked"],
                                                       b"zz\r\n" + BODY + b"\r\n0\r\n\r\n", length=False),
    "chunk size overflow": lambda rng, auth, m, t: _request(m, t, [auth, b"Transfer-Encoding: chunked"],
                                                            b"fffffffffffffffffffff\r\nab\r\n0\r\n\r\n", length=False),
    "chunk without CRLF": lambda rng, auth, m, t: _request(
        m, t, [auth, b"Transfer-Encoding: chunked"], b"%x\r\n" % len(BODY) + BODY + b"XX0\r\n\r\n", length=False),
    "chunk extension garbage": lambda rng, auth, m, t: _request(
        m, t, [auth, b"Transfer-Encoding: chunked"], b"%x;\x01\x02\r\n" % len(BODY) + BODY + b"\r\n0\r\n\r\n",
        length=False),
    "Transfer-Encoding + Content-Length": lambda rng, auth, m, t: _request(
        m, t, [auth, b"Transfer-Encoding: chunked", b"Content-Length: %d" % len(BODY)],
        b"%x\r\n" % len(BODY) + BODY + b"\r\n0\r\n\r\n", length=False),
    "Transfer-Encoding not chunked last": lambda rng, auth, m, t: _request(
        m, t, [auth, b"Transfer-Encoding: chunked, gzip"], BODY, length=False),
    "two different Content-Lengths": lambda rng, auth, m, t: _request(
        m, t, [auth, b"Content-Length: %d" % len(BODY), b"Content-Length: 3"], BODY, length=False),
    "negative Content-Length": lambda rng, auth, m, t: _request(m, t, [auth, b"Content-Length: -1"], BODY,
                                                                length=False),
    "non-numeric Content-Length": lambda rng, auth, m, t: _request(m, t, [auth, b"Content-Length: 1e3"], BODY,
                                                                   length=False),
    "request line of garbage": lambda rng, auth, m, t: b"GARBAGE \x01\x02 NONSENSE\r\n" + auth + b"\r\n\r\n",
    "control byte in the target": lambda rng, auth, m, t: _request(m, t + b"\x01x", [auth], BODY),
    "space in the target": lambda rng, auth, m, t: _request(m, t + b" x", [auth], BODY),
    "method of 100 letters": lambda rng, auth, m, t: _request("A" * 100 + "\x01", t, [auth], BODY),
    "bad HTTP version": lambda rng, auth, m, t: _request(m, t, [auth], BODY, version=b"HTTP/1.x"),
    "header without a colon": lambda rng, auth, m, t: _request(m, t, _auth_around(rng, auth, [b"NoColonHere"]), BODY),
    "space before the colon": lambda rng, auth, m, t: _request(m, t, [auth.replace(b":", b" :", 1)], BODY),
    "obsolete line folding": lambda rng, auth, m, t: _request(m, t, _auth_around(
        rng, auth, [b"X-Payware-Session: a", b"  folded"]), BODY),
    "bare CR in a header value": lambda rng, auth, m, t: _request(m, t, _auth_around(
        rng, auth, [b"X-Payware-Feature: a\rb"]), BODY),
    "bad character in a header name": lambda rng, auth, m, t: _request(m, t, _auth_around(
        rng, auth, [b"X(Bad)Name: v"]), BODY),
    "non-UTF-8 header name": lambda rng, auth, m, t: _request(m, t, _auth_around(rng, auth, [b"X-\xff\xfe: v"]), BODY),
}
# Statuses that also count as a correct refusal, per template (default: only 400).
EXPECT: dict[str, tuple[int, ...]] = {}


def malformed(seed: int, keys: dict[str, str], start: int, rounds: int = 4) -> list[Case]:
    """Every template `rounds` times, with a customer key, a route and the bad line's place varied."""
    rng = random.Random(seed + 2)
    cases = []
    n = start
    for _ in range(rounds):
        for name, template in TEMPLATES.items():
            who = rng.choice(("acme", "globex"))
            method, target = rng.choice(TARGETS)
            line = rng.choice(KEY_LINES)
            if line is None:
                target += b"?key=" + keys[who].encode()
                auth = b"X-Request-Note: the key is in the query"
            else:
                auth = line + keys[who].encode()
            data = template(rng, auth, method, target)
            cases.append(Case(n=n, route="(malformed HTTP)", klass=f"raw:{name}", method=method,
                              target=target.decode(), who=who, headers=[], body=None, note=name, family="raw",
                              data=data, raw=True, expect=EXPECT.get(name, (400,))))
            n += 1
    return cases
