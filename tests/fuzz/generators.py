"""Seeded, deterministic generation of hostile requests over every route in `routes.ROUTES`.

`generate(seed, count, keys)` gives the main phase (sent concurrently); `cap_phase` gives the
state-changing `PUT /v1/billing/cap` sequences (each followed by a probe call and a reset);
`raw.malformed` gives malformed HTTP. The same seed always gives the same cases, byte for byte.

Each case has a `klass` (the class of input, the unit of the failure table) and a `note`
(what exactly is hostile in it, for the example column).
"""

from __future__ import annotations

import copy
import functools
import gzip
import random
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable

from tests.fuzz import values as V
from tests.fuzz.routes import (MODELS_CHAT, MODELS_EMBED, MODELS_UPSTREAM_ERROR, ROUTES, UNKNOWN_PATHS, Route)
from tests.fuzz.wire import Headers, request_bytes

MISSING = object()
BODY_LIMIT = 1024 * 1024  # the proxy's server.max_body_bytes in the fuzz config


@dataclass
class Case:
    n: int
    route: str  # Route.label, "UNKNOWN <path>" or "RAW <template>"
    klass: str
    method: str
    target: str
    who: str  # acme | globex | admin | none | wrong
    headers: Headers
    body: bytes | None
    note: str = ""
    family: str = ""
    endpoint: str | None = None  # billed endpoint of a 2xx answer
    upstream_path: str | None = None
    model: Any = None
    stream: bool = False
    envelope: str = "openai"
    data: bytes | None = None  # raw cases: the exact bytes on the wire
    raw: bool = False  # malformed HTTP: must get a 400 and no key back
    expect: tuple[int, ...] = ()  # raw cases: the acceptable statuses

    def wire(self, port: int) -> bytes:
        if self.data is not None:
            return self.data
        return request_bytes(self.method, self.target, self.headers, self.body, port=port)

    def example(self, limit: int = 150) -> str:
        body = self.data if self.data is not None else self.body
        preview = "" if not body else f" body={ascii(body[:limit])[1:]}"
        if body and len(body) > limit:
            preview += f"...({len(body)} B)"
        return f"#{self.n} {self.method} {self.target[:80]} as {self.who}: {self.note}{preview}"


@dataclass
class Draft:
    """A case being built: the mutators change it, `finish` freezes it into a Case."""

    route: Route
    method: str
    path: str
    who: str
    obj: Any = MISSING  # the JSON body as a value
    body: bytes | None = None  # exact body bytes: wins over `obj`
    query: str = ""
    headers: Headers = field(default_factory=list)
    auth: list[bytes] | None = None  # Authorization values overriding `who` (several: several lines)
    content_type: bytes | None = b"application/json"
    classes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def mark(self, klass: str, note: str) -> None:
        self.classes.append(klass)
        self.notes.append(note)


def auth_header(who: str, keys: dict[str, str]) -> list[bytes]:
    if who == "none":
        return []
    key = keys.get(who, "pw-wrong-key-000000")
    return [b"Bearer " + key.encode()]


def finish(n: int, d: Draft, keys: dict[str, str], family: str) -> Case:
    headers: Headers = []
    for value in d.auth if d.auth is not None else auth_header(d.who, keys):
        headers.append((b"Authorization", value))
    if d.content_type is not None and (d.body is not None or d.obj is not MISSING):
        headers.append((b"Content-Type", d.content_type))
    headers += d.headers
    body = d.body if d.body is not None else (V.dumps(d.obj) if d.obj is not MISSING else None)
    obj = d.obj if isinstance(d.obj, dict) else {}
    model = obj.get("model")
    # A combination is one class: its parts would each make a row of their own in the table.
    klass = d.classes[0] if len(d.classes) == 1 else "combination" if d.classes else "valid"
    note = "; ".join(d.notes) or "valid"
    if len(d.classes) > 1:
        note = f"[{' + '.join(d.classes)}] {note}"
    return Case(n=n, route=d.route.label, klass=klass, method=d.method,
                target=d.path + d.query, who=d.who, headers=headers, body=body, note=note,
                family=family, endpoint=d.route.endpoint if d.method == d.route.method else None,
                upstream_path=d.route.upstream_path, model=model, stream=obj.get("stream") is True,
                envelope=d.route.envelope)


def put(obj: Any, path: tuple, value: Any) -> Any:
    """Set `value` at `path` in `obj`, making (or replacing) the containers on the way."""
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(head, int):
        if not isinstance(obj, list):
            obj = []
        while len(obj) <= head:
            obj.append({})
        obj[head] = put(obj[head], rest, value)
        return obj
    if not isinstance(obj, dict):
        obj = {}
    obj[head] = put(obj.get(head), rest, value)
    return obj


def dotted(path: tuple) -> str:
    return ".".join(str(p) for p in path)


# --------------------------------------------------------------------------- model routes

FIELDS = {
    "chat": (("model",), ("messages",), ("messages", 0), ("messages", 0, "role"), ("messages", 0, "content"),
             ("messages", 0, "name"), ("messages", 0, "tool_calls"), ("messages", 0, "content", 0),
             ("messages", 0, "content", 0, "type"), ("messages", 0, "content", 0, "text"), ("stream",),
             ("stream_options",), ("stream_options", "include_usage"), ("max_tokens",),
             ("max_completion_tokens",), ("n",), ("temperature",), ("user",), ("metadata",), ("metadata", "k"),
             ("tools",), ("tools", 0, "function", "name"), ("tool_choice",), ("response_format",), ("seed",),
             ("stop",), ("logit_bias",), ("x_unknown",)),
    "completions": (("model",), ("prompt",), ("prompt", 0), ("stream",), ("stream_options",), ("max_tokens",),
                    ("n",), ("echo",), ("suffix",), ("user",), ("metadata",), ("best_of",), ("logprobs",)),
    "embeddings": (("model",), ("input",), ("input", 0), ("encoding_format",), ("dimensions",), ("user",),
                   ("metadata",), ("stream",)),
}
# Where a string lands: evidence kept in the event, prompt text only forwarded, or the model name.
STRING_SPOTS = {
    "chat": {"metadata": (("user",), ("metadata", "k"), ("metadata", "KEY")),
             "prompt": (("messages", 0, "content"), ("messages", 0, "role"), ("messages", 0, "name"),
                        ("stop",), ("x_unknown",), ("messages", 0, "content", 0, "text")),
             "model": (("model",),)},
    "completions": {"metadata": (("user",), ("metadata", "k"), ("metadata", "KEY")),
                    "prompt": (("prompt",), ("suffix",), ("prompt", 0)), "model": (("model",),)},
    "embeddings": {"metadata": (("user",), ("metadata", "k"), ("metadata", "KEY")),
                   "prompt": (("input",), ("input", 0)), "model": (("model",),)},
}


def base_model_body(rng: random.Random, endpoint: str) -> dict:
    if endpoint == "embeddings":
        body: dict = {"model": rng.choice(MODELS_EMBED), "input": rng.choice(["hi", ["a", "b"]])}
    elif endpoint == "completions":
        body = {"model": rng.choice(("fake-ok", "renamed")), "prompt": "say hi"}
    else:
        body = {"model": rng.choice(MODELS_CHAT), "messages": [{"role": "user", "content": "hi"}]}
    if endpoint != "embeddings" and rng.random() < 0.3:
        body["stream"] = True
        if rng.random() < 0.3:
            body["stream_options"] = {"include_usage": True}
    if rng.random() < 0.3:
        body["user"] = f"user-{rng.randrange(1000)}"
        body["metadata"] = {"order": f"o-{rng.randrange(1000)}"}
    return body


def _forwarding(obj: Any) -> str:
    """Whether the proxy forwards the client's own bytes or serializes the body again."""
    if not isinstance(obj, dict):
        return "raw"
    options = obj.get("stream_options")
    include = isinstance(options, dict) and options.get("include_usage") is True
    return "reserialized" if obj.get("model") == "renamed" or (obj.get("stream") is True and not include) else "raw"


def m_type(rng, d: Draft) -> None:
    path = rng.choice(FIELDS[d.route.endpoint])
    label, value = rng.choice(V.TYPES)
    d.obj = put(d.obj, path, copy.deepcopy(value))
    d.mark(f"type:{V.TYPE_CLASSES.get(label, label)}", f"{dotted(path)}={V.short(value, 40)}")


def m_max_tokens(rng, d: Draft) -> None:
    name = rng.choice(("max_tokens", "max_completion_tokens") if d.route.endpoint == "chat" else ("max_tokens",))
    label, value = rng.choice(V.MAX_TOKENS)
    d.obj[name] = value
    d.mark(f"max_tokens:{V.MAX_TOKENS_CLASSES.get(label, label)}", f"{name}={label}")


def _string_spot(rng, d: Draft, payload: str, name: str) -> None:
    where = rng.choice(("metadata", "metadata", "prompt", "model"))
    path = rng.choice(STRING_SPOTS[d.route.endpoint][where])
    if path[-1] == "KEY":  # in a metadata key, not a value
        d.obj["metadata"] = {f"k{payload}": "v"}
    else:
        d.obj = put(d.obj, path, f"a{payload}b")
    d.mark(f"{name}:{where}/{_forwarding(d.obj)}", f"{name} in {dotted(path)} (model={d.obj.get('model')!r}, "
                                                 f"stream={d.obj.get('stream')})")


def m_surrogate(rng, d: Draft) -> None:
    _string_spot(rng, d, rng.choice(("\ud800", "\udfff", "\udc80")), "surrogate")


def m_nul(rng, d: Draft) -> None:
    if rng.random() < 0.2:
        text = V.dumps(d.obj).replace(b'"hi"', b'"h\x00i"').replace(b'"say hi"', b'"say\x00hi"')
        d.body = text if b"\x00" in text else text[:-1] + b',"x":"\x00"}'
        d.mark("nul:raw-byte-in-json", "a raw NUL byte inside a JSON string")
        return
    _string_spot(rng, d, "\x00", "nul")


DEPTHS = ((100, "depth:100"), (999, "depth:~1000"), (1000, "depth:~1000"), (1001, "depth:~1000"),
          (5000, "depth:5000"), (100000, "depth:100000"))


def m_depth(rng, d: Draft) -> None:
    depth, label = rng.choice(DEPTHS)
    kind = rng.choice(("list", "object"))
    where = rng.choice(("top", "content", "metadata", "x_unknown"))
    text = V.nested_text(depth, kind)
    base = V.dumps(d.obj)
    if where == "top":
        d.body = text.encode()
    else:
        spot = {"content": b'"hi"', "metadata": None, "x_unknown": None}[where] if d.route.endpoint == "chat" else None
        if spot is not None and spot in base:
            d.body = base.replace(spot, text.encode(), 1)
        else:
            name = "metadata" if where == "metadata" else "x_unknown"
            d.obj.pop(name, None)
            d.body = V.dumps(d.obj)[:-1] + b',"' + name.encode() + b'":' + text.encode() + b"}"
    d.mark(label, f"{kind} nested {depth} deep at {where}")


def m_huge(rng, d: Draft) -> None:
    what = rng.choice(("content-200KB", "messages-20000", "metadata-5000-keys", "user-20000", "model-20000",
                       "over-limit", "parts-5000", "stop-1000"))
    ep = d.route.endpoint
    if what == "content-200KB":
        text = "lorem ipsum " * 17000
        if ep == "chat":
            d.obj["messages"] = [{"role": "user", "content": text}]
        else:
            d.obj["prompt" if ep == "completions" else "input"] = text
    elif what == "messages-20000":
        if ep == "chat":
            d.obj["messages"] = [{"role": "user", "content": "hi"}] * 20000
        else:
            d.obj["prompt" if ep == "completions" else "input"] = ["hi"] * 20000
    elif what == "metadata-5000-keys":
        d.obj["metadata"] = {f"k{i}": "v" * 20 for i in range(5000)}
    elif what == "user-20000":
        d.obj["user"] = "u" * 20000
    elif what == "model-20000":
        d.obj["model"] = "m" * 20000
    elif what == "over-limit":
        d.obj["x_pad"] = "p" * (BODY_LIMIT + 4096)
    elif what == "parts-5000":
        d.obj["messages"] = [{"role": "user", "content": [{"type": "text", "text": "hi"}] * 5000}] \
            if ep == "chat" else None
        if ep != "chat":
            d.obj.pop("messages")
            d.obj["prompt" if ep == "completions" else "input"] = [[1, 2, 3]] * 5000
    else:
        d.obj["stop"] = ["s"] * 1000
    d.mark(f"huge:{what}", what)


ENCODINGS = ("non-utf8", "latin-1", "utf-16", "utf-32", "utf-8-bom", "truncated", "empty", "null", "[]", "1",
             '"str"', "text", "duplicate-keys", "trailing-garbage", "nan-literal", "int-5000-digits",
             "whitespace", "form-encoded")


def m_encoding(rng, d: Draft) -> None:
    kind = rng.choice(ENCODINGS)
    text = V.dumps(d.obj)
    unicode_text = text.decode().replace('"hi"', '"h\u00e9\u4e2di"')
    body = {
        "non-utf8": text.replace(b'"hi"', b'"h\xff\xfei"').replace(b'"say hi"', b'"say \xffhi"'),
        "latin-1": unicode_text.encode("latin-1", "replace"),
        "utf-16": unicode_text.encode("utf-16"),
        "utf-32": unicode_text.encode("utf-32-le"),
        "utf-8-bom": b"\xef\xbb\xbf" + text,
        "truncated": text[: max(1, len(text) // 2)],
        "empty": b"",
        "null": b"null", "[]": b"[]", "1": b"1", '"str"': b'"str"',
        "text": b"model=fake-ok&messages=hi",
        "duplicate-keys": text[:-1] + b',"model":"fake-ok","model":"nope"}',
        "trailing-garbage": text + b"}}garbage",
        "nan-literal": text[:-1] + b',"temperature":NaN,"top_p":-Infinity}',
        "int-5000-digits": text[:-1] + b',"seed":' + b"9" * 5000 + b"}",
        "whitespace": b" \r\n\t ",
        "form-encoded": text,
    }[kind]
    if kind == "form-encoded":
        d.content_type = b"application/x-www-form-urlencoded"
    d.body = body
    if not (kind == "non-utf8" and b"\xff" not in body):
        d.mark(f"body:{kind}", f"body {kind}")
    else:
        d.body = text[:-1] + b',"x":"\xff"}'
        d.mark("body:non-utf8", "body non-utf8")


def _header_name_value(rng) -> tuple[str, bytes, bytes]:
    name = rng.choice(("session", "feature", "meta"))
    header = {"session": b"X-Payware-Session", "feature": b"X-Payware-Feature"}.get(name, b"X-Payware-Meta-Tag")
    label, value = rng.choice(V.HEADER_VALUES)
    return f"{name}:{V.HEADER_CLASSES.get(label, label)}", header, value


def m_header(rng, d: Draft) -> None:
    roll = rng.random()
    if roll < 0.1:
        count = rng.choice((50, 100))
        d.headers += [(b"X-Payware-Meta-K%d" % i, b"v" * 100) for i in range(count)]
        d.mark(f"header:meta:{count}-headers", f"{count} X-Payware-Meta-* headers")
    elif roll < 0.18:
        length = rng.choice((100, 1000, 4000))
        d.headers.append((b"X-Payware-Meta-" + b"n" * length, b"v"))
        d.mark(f"header:meta:name-{length}", f"an X-Payware-Meta- header name of {length} chars")
    elif roll < 0.25:
        d.headers += [(b"X-Payware-Session", b"s-1"), (b"X-Payware-Session", b"s" * 300)]
        d.mark("header:session:duplicate", "two X-Payware-Session headers, the second 300 chars")
    else:
        klass, header, value = _header_name_value(rng)
        d.headers.append((header, value))
        d.mark(f"header:{klass}", f"{header.decode()}: {ascii(value[:40])[2:-1]}"
                                  + (f"...({len(value)} B)" if len(value) > 40 else ""))


AUTH = ("non-utf8", "latin-1-key", "key+non-utf8", "basic", "empty", "bearer-only", "double-space",
        "lowercase-scheme", "len-5000", "key+junk", "duplicate-wrong-first", "duplicate-right-first", "tab",
        "utf8-emoji", "no-header", "wrong-key", "admin-key")


def m_auth(rng, d: Draft, keys: dict[str, str]) -> None:
    kind = rng.choice(AUTH)
    key = keys[rng.choice(("acme", "globex"))].encode()
    d.who = "acme" if key == keys["acme"].encode() else "globex"
    values = {
        "non-utf8": [b"Bearer \xff\xfe\xfd"], "latin-1-key": [b"Bearer pw-caf\xe9"],
        "key+non-utf8": [b"Bearer " + key + b"\xff"], "basic": [b"Basic " + key],
        "empty": [b""], "bearer-only": [b"Bearer"], "double-space": [b"Bearer  " + key],
        "lowercase-scheme": [b"bearer " + key], "len-5000": [b"Bearer " + b"k" * 5000],
        "key+junk": [b"Bearer " + key + b" junk"], "duplicate-wrong-first": [b"Bearer nope", b"Bearer " + key],
        "duplicate-right-first": [b"Bearer " + key, b"Bearer nope"], "tab": [b"Bearer\t" + key],
        "utf8-emoji": ["Bearer \U0001f511".encode()], "no-header": [],
        "wrong-key": [b"Bearer pw-wrong-key-000000"], "admin-key": [b"Bearer " + keys["admin"].encode()],
    }[kind]
    d.auth = values
    if kind == "admin-key":
        d.who = "admin"
    klass = "non-utf8" if kind in ("non-utf8", "latin-1-key", "key+non-utf8") else kind
    d.mark(f"auth:{klass}", f"Authorization {kind}: {ascii(values[0][:40])[2:-1] if values else '(none)'}")


CONTENT_ENCODINGS = ("gzip-on-plain", "deflate-on-plain", "br-on-plain", "zstd-on-plain", "unknown-on-plain",
                     "gzip-valid", "deflate-valid", "gzip-truncated", "gzip-bomb", "gzip,gzip-on-once",
                     "identity")


@functools.lru_cache(maxsize=4)
def _gzip_bomb(text: bytes) -> bytes:
    """A small gzip body that inflates to 20 MB (past the body limit)."""
    return gzip.compress(text[:-1] + b',"pad":"' + b"0" * (20 * 1024 * 1024) + b'"}', mtime=0)


def m_content_encoding(rng, d: Draft) -> None:
    kind = rng.choice(CONTENT_ENCODINGS)
    text = V.dumps(d.obj)
    encoding, make = {
        "gzip-on-plain": (b"gzip", lambda: text), "deflate-on-plain": (b"deflate", lambda: text),
        "br-on-plain": (b"br", lambda: text), "zstd-on-plain": (b"zstd", lambda: text),
        "unknown-on-plain": (b"x-snappy", lambda: text),
        "gzip-valid": (b"gzip", lambda: gzip.compress(text, mtime=0)),
        "deflate-valid": (b"deflate", lambda: zlib.compress(text)),
        "gzip-truncated": (b"gzip", lambda: gzip.compress(text, mtime=0)[:-9]),
        "gzip-bomb": (b"gzip", lambda: _gzip_bomb(b'{"model":"fake-ok","messages":[{"role":"user","content":"hi"}]}')),
        "gzip,gzip-on-once": (b"gzip, gzip", lambda: gzip.compress(text, mtime=0)),
        "identity": (b"identity", lambda: text),
    }[kind]
    d.body = make()
    d.headers.append((b"Content-Encoding", encoding))
    d.mark(f"content-encoding:{kind}", f"Content-Encoding: {encoding.decode()} ({kind})")


def m_content_type(rng, d: Draft) -> None:
    value = rng.choice((None, b"text/plain", b"multipart/form-data; boundary=x", b"application/json; charset=latin-1",
                        b"application/json; charset=utf-16", b"\xff/\xfe", b"a" * 3000))
    d.content_type = value
    d.mark(f"content-type:{'none' if value is None else ascii(value[:30])[2:-1]}",
           f"Content-Type: {value!r}"[:80])


def m_method(rng, d: Draft) -> None:
    method = rng.choice([m for m in ("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS") if m != d.route.method])
    d.method = method
    d.mark(f"method:{method}", f"{method} on a {d.route.method} route")


def m_upstream_error(rng, d: Draft) -> None:
    d.obj["model"] = rng.choice(MODELS_UPSTREAM_ERROR)
    d.mark(f"provider-error:{d.obj['model']}", f"model {d.obj['model']} (the provider refuses)")


def m_valid(rng, d: Draft) -> None:
    if rng.random() < 0.5:
        d.headers += [(b"X-Payware-Session", b"sess-%d" % rng.randrange(100)), (b"X-Payware-Feature", b"chat"),
                      (b"X-Payware-Meta-Order", b"o-1")]
    d.mark("valid", "a valid call")


def m_query(rng, d: Draft) -> None:
    d.query = rng.choice(("?customer=globex", "?x=%00", "?x=%ff", "?" + "a=1&" * 500, "?stream=true"))
    d.mark("query-on-model-route", f"query {d.query[:40]}")


MODEL_MUTATORS: tuple[tuple[float, str, Callable], ...] = (
    (8, "valid", m_valid), (20, "type", m_type), (10, "max_tokens", m_max_tokens), (9, "surrogate", m_surrogate),
    (5, "nul", m_nul), (6, "depth", m_depth), (3, "huge", m_huge), (8, "encoding", m_encoding),
    (12, "header", m_header), (6, "auth", m_auth), (5, "content_encoding", m_content_encoding),
    (2, "content_type", m_content_type), (2, "method", m_method), (2, "upstream_error", m_upstream_error),
    (1, "query", m_query),
)
# Mutators that take the keys (they write the Authorization header themselves).
NEEDS_KEYS = {"auth"}
# Mutators after which another one would only blur the class (they replace the whole body).
TERMINAL = {"depth", "encoding", "content_encoding", "nul"}


def _pick(rng, table):
    total = sum(w for w, *_ in table)
    roll = rng.uniform(0, total)
    for entry in table:
        roll -= entry[0]
        if roll <= 0:
            return entry
    return table[-1]


def _apply(rng, d: Draft, table, keys) -> None:
    """One mutation, sometimes two or three (combinations find what single ones miss)."""
    count = 1 if rng.random() < 0.95 else rng.choice((2, 3))
    for _ in range(count):
        _, name, mutate = _pick(rng, table)
        if name == "valid" and d.classes:
            continue
        mutate(rng, d, keys) if name in NEEDS_KEYS else mutate(rng, d)
        if name == "valid" or name in TERMINAL or d.body is not None or not isinstance(d.obj, dict):
            break


def model_case(rng, route: Route, keys) -> Draft:
    d = Draft(route=route, method=route.method, path=route.path, who=rng.choice(("acme", "globex")),
              obj=base_model_body(rng, route.endpoint))
    _apply(rng, d, MODEL_MUTATORS, keys)
    return d


# --------------------------------------------------------------------------- records

IDEMPOTENCY_POOL = ("order-1", "order-2", "sess-42", "inv-2026-001", "x")


def base_record(rng) -> dict:
    record: dict = {"metric": "agent_actions", "quantity": rng.choice((1, 2, "3", "0.5"))}
    if rng.random() < 0.3:
        record["unit_price"] = rng.choice(("0.01", "0.5", "0"))
    if rng.random() < 0.3:
        record["idempotency_key"] = f"{rng.choice(IDEMPOTENCY_POOL)}-{rng.randrange(4)}"
    if rng.random() < 0.3:
        record["meta"] = {"job": f"j-{rng.randrange(100)}"}
    if rng.random() < 0.2:
        record["session"] = f"s-{rng.randrange(10)}"
        record["feature"] = "search"
    return record


RECORD_FIELDS = ("metric", "quantity", "unit_price", "meta", "idempotency_key", "customer", "session", "feature",
                 "x_unknown")
RECORD_STRINGS = (
    ("session", "len-256", "s" * 256), ("session", "len-257", "s" * 257), ("session", "len-300", "s" * 300),
    ("session", "len-1000", "s" * 1000), ("feature", "len-257", "f" * 257), ("feature", "len-400", "f" * 400),
    ("feature", "NUL", "fe\x00at"), ("session", "NUL", "se\x00ss"), ("metric", "NUL", "agent\x00actions"),
    ("idempotency_key", "NUL", "idem\x00key"), ("feature", "surrogate", "f\ud800"),
    ("session", "surrogate", "s\udfff"), ("idempotency_key", "surrogate", "k\ud800"),
    ("metric", "surrogate", "m\ud800"), ("idempotency_key", "len-10000", "k" * 10000),
    ("idempotency_key", "empty", ""), ("metric", "len-65", "m" * 65), ("customer", "NUL", "acme\x00"),
    ("meta.surrogate", "surrogate", "v\ud800"), ("meta.NUL", "NUL", "v\x00"),
)


def r_valid(rng, d: Draft) -> None:
    d.mark("record:valid", "a valid record")


def r_type(rng, d: Draft) -> None:
    name = rng.choice(RECORD_FIELDS)
    label, value = rng.choice(V.TYPES)
    d.obj[name] = copy.deepcopy(value)
    d.mark(f"record:type:{V.TYPE_CLASSES.get(label, label)}", f"{name}={V.short(value, 40)}")


def r_amount(rng, d: Draft) -> None:
    name = rng.choice(("quantity", "unit_price"))
    label, value = rng.choice(V.AMOUNTS)
    d.obj[name] = value
    d.mark(f"record:{name}:{V.AMOUNT_CLASSES.get(label, label)}", f"{name}={label}")


def r_string(rng, d: Draft) -> None:
    name, label, value = rng.choice(RECORD_STRINGS)
    if name.startswith("meta."):
        d.obj["meta"] = {"note": value}
    else:
        d.obj[name] = value
        if name == "metric":
            d.obj["unit_price"] = "0.01"
    klass = "len > 256" if label in ("len-257", "len-300", "len-400", "len-1000") else label
    d.mark(f"record:{name.split('.')[0]}:{klass}", f"{name}={V.short(value, 30)}")


def r_meta(rng, d: Draft) -> None:
    kind = rng.choice(("4096-bytes", "5000-bytes", "depth-1000", "depth-100", "keys-1000", "list"))
    d.obj["meta"] = {"4096-bytes": {"b": "x" * 4086}, "5000-bytes": {"b": "x" * 5000},
                     "depth-1000": V.nested(1000, "object"), "depth-100": V.nested(100, "object"),
                     "keys-1000": {f"k{i}": i for i in range(1000)}, "list": [1, 2]}[kind]
    if kind == "depth-1000":
        base = dict(d.obj)
        base.pop("meta")
        d.body = V.dumps(base)[:-1] + b',"meta":' + V.nested_text(1000, "object").encode() + b"}"
    d.mark(f"record:meta:{kind}", f"meta {kind}")


def r_batch(rng, d: Draft) -> None:
    kind = rng.choice(("1000", "1001", "empty-list", "one-bad", "records-not-list", "records-empty", "mixed-customers",
                       "list-of-lists", "200-with-long-session"))
    record = d.obj
    d.obj = {
        "1000": {"records": [dict(record, idempotency_key=None) for _ in range(1000)]},
        "1001": {"records": [record] * 1001},
        "empty-list": [],
        "one-bad": {"records": [record, dict(record, quantity="-1")]},
        "records-not-list": {"records": "x"},
        "records-empty": {"records": []},
        "mixed-customers": [dict(record, customer="acme"), dict(record, customer="globex")],
        "list-of-lists": [[record]],
        "200-with-long-session": {"records": [dict(record, session=f"s{i}" * 100) for i in range(200)]},
    }[kind]
    for item in d.obj.get("records", []) if isinstance(d.obj, dict) and isinstance(d.obj.get("records"), list) else []:
        if isinstance(item, dict) and item.get("idempotency_key") is None:
            item.pop("idempotency_key", None)
    d.mark(f"record:batch:{kind}", f"batch {kind}")


def r_customer(rng, d: Draft, keys) -> None:
    kind = rng.choice(("admin-names-acme", "admin-names-globex", "admin-names-nobody", "admin-names-unknown",
                       "customer-names-other", "customer-names-self"))
    if kind.startswith("admin"):
        d.who = "admin"
        target = {"admin-names-acme": "acme", "admin-names-globex": "globex", "admin-names-unknown": "initech"}
        if kind in target:
            d.obj["customer"] = target[kind]
    else:
        d.obj["customer"] = "globex" if d.who == "acme" else "acme"
        if kind == "customer-names-self":
            d.obj["customer"] = d.who
    d.mark(f"record:{kind}", kind)


def _with_keys(fn):
    def mutate(rng, d: Draft, keys) -> None:
        fn(rng, d)
    return mutate


def _model_mutator_for_records(fn):
    """Reuse a model-route mutator (headers, encodings, depth, ...) on a records body."""
    def mutate(rng, d: Draft) -> None:
        fn(rng, d)
        d.classes[-1] = "record:" + d.classes[-1]
    return mutate


RECORD_MUTATORS = (
    (10, "valid", r_valid), (14, "type", r_type), (12, "amount", r_amount), (14, "string", r_string),
    (5, "meta", r_meta), (4, "batch", r_batch), (6, "customer", r_customer),
    (6, "header", _model_mutator_for_records(m_header)), (4, "encoding", _model_mutator_for_records(m_encoding)),
    (3, "depth", _model_mutator_for_records(m_depth)), (3, "auth", m_auth),
    (2, "content_encoding", _model_mutator_for_records(m_content_encoding)),
    (1, "method", _model_mutator_for_records(m_method)),
)


def records_case(rng, route: Route, keys) -> Draft:
    d = Draft(route=route, method=route.method, path=route.path, who=rng.choice(("acme", "globex")),
              obj=base_record(rng))
    table = tuple((w, "auth" if n == "auth" else ("customer" if n == "customer" else n), f)
                  for w, n, f in RECORD_MUTATORS)
    count = 1 if rng.random() < 0.95 else 2
    for _ in range(count):
        _, name, mutate = _pick(rng, table)
        if name == "valid" and d.classes:
            continue
        mutate(rng, d, keys) if name in ("auth", "customer") else mutate(rng, d)
        if name == "valid" or d.body is not None or not isinstance(d.obj, dict):
            break
    if not d.classes:
        d.mark("record:valid", "a valid record")
    _keep_acme_under_its_cap(d)
    return d


_COSTLY = ("record:quantity", "record:unit_price", "record:type:quantity", "record:type:unit_price", "record:batch")


def _keep_acme_under_its_cap(d: Draft) -> None:
    """Records are not admitted against a cap: a costly one would spend acme's whole cap, and
    every capped model call after it would only meet the 429. Costly records bill globex."""
    billed = d.obj.get("customer") if d.who == "admin" and isinstance(d.obj, dict) else d.who
    if billed != "acme" or d.auth is not None:
        return
    if d.body is not None or any(c.startswith(_COSTLY) for c in d.classes) or not isinstance(d.obj, dict):
        if d.who == "admin":
            d.obj["customer"] = "globex"
        else:
            d.who = "globex"
    elif "unit_price" in d.obj:
        d.obj["unit_price"] = "0.0001"


# --------------------------------------------------------------------------- reads, health, unknown

QUERY_VALUES = (
    ("NUL", "%00"), ("non-utf8", "%ff%fe"), ("surrogate", "%ed%a0%80"), ("len-5000", "q" * 5000),
    ("1e308", "1e308"), ("20-nines", "9" * 20), ("11-nines", "9" * 11), ("-1", "-1"), ("garbage", "2026-13-45T99"),
    ("empty", ""), ("fullwidth-digits", "%EF%BC%91%EF%BC%92"), ("superscript-2", "%C2%B2"), ("nan", "nan"),
    ("iso-z", "2026-11-01T00:00:00Z"), ("0.5.5", "0.5.5"), ("percent-broken", "%zz"), ("plus", "+1"),
)


QUERY_CLASSES = {"surrogate": "non-utf8", "1e308": "number edge", "20-nines": "number edge",
                 "11-nines": "number edge", "-1": "number edge", "plus": "number edge", "garbage": "garbage",
                 "0.5.5": "garbage", "percent-broken": "garbage", "nan": "garbage", "fullwidth-digits": "unicode digits",
                 "superscript-2": "unicode digits", "iso-z": "valid", "empty": "valid"}


def q_param(rng, d: Draft, keys) -> None:
    params = d.route.query or ("customer",)
    name = rng.choice(params + ("x_unknown",))
    label, value = rng.choice(QUERY_VALUES)
    if name == "customer":
        d.who = rng.choice(("admin", "admin", "acme"))
    else:
        d.who = rng.choice(("admin", "acme", "globex"))
    extra = f"customer={rng.choice(('acme', 'globex'))}&" if d.who == "admin" and name != "customer" else ""
    repeat = rng.random() < 0.1
    d.query = f"?{extra}{name}={value}" + (f"&{name}=again" if repeat else "")
    d.mark(f"query:{name}:{QUERY_CLASSES.get(label, label)}", f"?{name}={value[:40]}" + (" (repeated)" if repeat else ""))


def q_who(rng, d: Draft, keys) -> None:
    kind = rng.choice(("admin-no-customer", "admin-acme", "admin-globex", "admin-unknown", "customer-other",
                       "customer-self", "none", "wrong"))
    d.who = {"none": "none", "wrong": "wrong", "customer-other": "acme", "customer-self": "globex"}.get(kind, "admin")
    d.query = {"admin-acme": "?customer=acme", "admin-globex": "?customer=globex", "admin-unknown": "?customer=initech",
               "customer-other": "?customer=globex", "customer-self": "?customer=globex"}.get(kind, "")
    d.mark(f"who:{kind}", kind)


def q_valid(rng, d: Draft, keys) -> None:
    if d.who == "admin":
        d.query = f"?customer={rng.choice(('acme', 'globex'))}"
    d.mark("valid", "a valid read")


READ_MUTATORS = (
    (4, "valid", q_valid), (10, "query", q_param), (5, "who", q_who), (5, "header", _with_keys(m_header)),
    (3, "auth", m_auth), (2, "method", _with_keys(m_method)), (1, "body", _with_keys(lambda rng, d: (
        setattr(d, "body", rng.choice((b"\xff\xfe", b"[" * 5000, b"{}"))), d.mark("body-on-get", "a body on GET")))),
)


def read_case(rng, route: Route, keys) -> Draft:
    d = Draft(route=route, method=route.method, path=route.path, who=rng.choice(("acme", "globex", "admin")),
              content_type=None)
    _, name, mutate = _pick(rng, READ_MUTATORS)
    mutate(rng, d, keys)
    if d.who == "admin" and not d.query and name not in ("who",) and rng.random() < 0.8:
        d.query = f"?customer={rng.choice(('acme', 'globex'))}"
    return d


def unknown_case(rng, keys) -> Draft:
    path = rng.choice(UNKNOWN_PATHS)
    method = rng.choice(("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"))
    route = Route(method, "UNKNOWN", "unknown")
    d = Draft(route=route, method=method, path=path, who=rng.choice(("acme", "globex", "admin", "none")),
              content_type=None)
    if method in ("POST", "PUT", "PATCH") and rng.random() < 0.7:
        d.obj = {"model": "fake-ok", "messages": [{"role": "user", "content": "hi"}]}
        d.content_type = b"application/json"
    d.mark(f"unknown:{method}", f"{method} {path[:40]}")
    return d


FAMILIES = {"model": model_case, "records": records_case, "read": read_case, "health": read_case}


def generate(seed: int, count: int, keys: dict[str, str]) -> list[Case]:
    """The main phase: `count` cases over every route of ROUTES, plus unknown paths."""
    rng = random.Random(seed)
    table = [(r.weight, r) for r in ROUTES if r.weight > 0 and r.family in FAMILIES]
    table.append((0.8, None))  # unknown paths
    cases = []
    for n in range(count):
        _, route = _pick(rng, table)
        if route is None:
            d = unknown_case(rng, keys)
            case = finish(n, d, keys, "unknown")
            case.route = f"{d.method} (unknown path)"
        else:
            d = FAMILIES[route.family](rng, route, keys)
            case = finish(n, d, keys, route.family)
        cases.append(case)
    return cases


# --------------------------------------------------------------------------- PUT /v1/billing/cap

def cap_phase(seed: int, keys: dict[str, str], start: int) -> list[list[Case]]:
    """Sequences of [PUT the cap, a probe call of that customer, PUT it back to null]."""
    rng = random.Random(seed + 1)
    route = next(r for r in ROUTES if r.family == "cap")
    chat = next(r for r in ROUTES if r.endpoint == "chat")
    sequences = []
    n = start
    bodies: list[tuple[str, bytes | Any]] = [(label, {"amount": value}) for label, value in V.AMOUNTS]
    bodies += [("not-json", b"amount=5"), ("array", [{"amount": "5"}]), ("no-amount", {"cap": "5"}),
               ("depth-1000", V.nested_text(1000, "object").encode()), ("surrogate", {"amount": "5\ud800"}),
               ("non-utf8", b'{"amount":"5\xff"}'), ("NUL", {"amount": "5\x00"}), ("extra-keys", {"amount": "5", "x": 1}),
               ("null (remove)", {"amount": None}), ('"50.01" (above admin)', {"amount": "50.01"}),
               ('"49.99"', {"amount": "49.99"})]
    for label, body in bodies:
        who = rng.choice(("acme", "globex", "globex", "admin"))
        subject = rng.choice(("acme", "globex")) if who == "admin" else who
        query = f"?customer={subject}" if who == "admin" else ""
        d = Draft(route=route, method="PUT", path=route.path, query=query, who=who)
        if isinstance(body, bytes):
            d.body = body
        else:
            d.obj = body
        d.mark(f"cap:{V.AMOUNT_CLASSES.get(label, label)}", f"PUT cap {label} for {subject}")
        put_case = finish(n, d, keys, "cap")
        probe = finish(n + 1, Draft(route=chat, method="POST", path=chat.path, who=subject,
                                    obj={"model": "fake-ok", "messages": [{"role": "user", "content": "hi"}]},
                                    classes=[f"probe after PUT cap: {V.AMOUNT_CLASSES.get(label, label)}"],
                                    notes=[f"a valid call after PUT cap {label}"]),
                       keys, "model")
        reset = finish(n + 2, Draft(route=route, method="PUT", path=route.path, query=query, who=who,
                                    obj={"amount": None}, classes=["cap:reset to null"],
                                    notes=[f"PUT cap null for {subject}"]), keys, "cap")
        sequences.append([put_case, probe, reset])
        n += 3
    return sequences
