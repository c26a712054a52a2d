"""Hostile bodies, headers and encodings for the model routes of every API (see `apis.APIS`).

Each mutator changes a Draft and marks it with its class of input and a note. The body's
shape comes from the route's API, so one mutator covers OpenAI's, Anthropic's and Gemini's.
Keys are attacked in `keys`; Responses chains and Gemini's paths in `api_cases`.
"""

from __future__ import annotations

import copy
import functools
import gzip
import random
import zlib
from collections.abc import Callable

from tests.fuzz import values as V
from tests.fuzz.api_cases import gemini_path, m_chain, m_gemini_target
from tests.fuzz.apis import APIS
from tests.fuzz.keys import m_auth
from tests.fuzz.cases import BODY_LIMIT, Context, Draft, dotted, pick, put
from tests.fuzz.routes import MODELS_GEMINI, MODELS_RENAMED, Route


def _api(d: Draft):
    return APIS[d.route.api]


def _forwarding(d: Draft) -> str:
    """Whether the proxy forwards the client's own bytes or serializes the body again."""
    obj = d.obj
    if not isinstance(obj, dict):
        return "raw"
    if d.route.api == "gemini":  # the body never names the model: only a countTokens request may
        return "reserialized" if isinstance(obj.get("generateContentRequest"), dict) else "raw"
    options = obj.get("stream_options")
    include = isinstance(options, dict) and options.get("include_usage") is True
    forced = d.route.api in ("chat", "completions") and obj.get("stream") is True and not include
    return "reserialized" if obj.get("model") in MODELS_RENAMED or forced else "raw"


def m_type(rng, d: Draft) -> None:
    """A value of another JSON type (or an odd one) in one field."""
    path = rng.choice(_api(d).fields)
    label, value = rng.choice(V.TYPES)
    d.obj = put(d.obj, path, copy.deepcopy(value))
    d.mark(f"type:{V.TYPE_CLASSES.get(label, label)}", f"{dotted(path)}={V.short(value, 40)}")


def m_max_tokens(rng, d: Draft) -> None:
    """The output limit (max_tokens, max_output_tokens, maxOutputTokens...) huge, negative, a string, ..."""
    path = rng.choice(_api(d).output_limits or (("max_tokens",),))
    label, value = rng.choice(V.MAX_TOKENS)
    d.obj = put(d.obj, path, value)
    d.mark(f"max_tokens:{V.MAX_TOKENS_CLASSES.get(label, label)}", f"{dotted(path)}={label}")


def _string_spot(rng, d: Draft, payload: str, name: str) -> None:
    api = _api(d)
    where = rng.choice(("metadata", "metadata", "prompt", "model"))
    if where == "model" and not api.model_in_body:
        d.model = f"a{payload}b"
        d.path = gemini_path(d, V.percent(d.model))
        d.mark(f"{name}:model/path", f"{name} in the path's model")
        return
    path = rng.choice({"metadata": api.metadata, "prompt": api.prompt, "model": (("model",),)}[where])
    if path[-1] == "KEY":  # in a metadata key, not a value
        d.obj["metadata"] = {f"k{payload}": "v"}
    else:
        d.obj = put(d.obj, path, f"a{payload}b")
    d.mark(f"{name}:{where}/{_forwarding(d)}", f"{name} in {dotted(path)} (model={d.obj.get('model', d.model)!r}, "
                                                f"stream={d.obj.get('stream')})")


def m_surrogate(rng, d: Draft) -> None:
    """A lone surrogate (escaped in the JSON) in evidence, prompt or model strings."""
    _string_spot(rng, d, rng.choice(("\ud800", "\udfff", "\udc80")), "surrogate")


def m_nul(rng, d: Draft) -> None:
    """A NUL, escaped in a JSON string or as a raw byte."""
    if rng.random() < 0.2:
        text = V.dumps(d.obj).replace(b'"hi"', b'"h\x00i"').replace(b'"say hi"', b'"say\x00hi"')
        d.body = text if b"\x00" in text else text[:-1] + b',"x":"\x00"}'
        d.mark("nul:raw-byte-in-json", "a raw NUL byte inside a JSON string")
        return
    _string_spot(rng, d, "\x00", "nul")


DEPTHS = ((100, "depth:100"), (999, "depth:~1000"), (1000, "depth:~1000"), (1001, "depth:~1000"),
          (5000, "depth:5000"), (100000, "depth:100000"))


def m_depth(rng, d: Draft) -> None:
    """JSON nested 100 to 100,000 deep, at the top or inside a field."""
    depth, label = rng.choice(DEPTHS)
    kind = rng.choice(("list", "object"))
    where = rng.choice(("top", "content", "metadata", "x_unknown"))
    text = V.nested_text(depth, kind).encode()
    base = V.dumps(d.obj)
    if where == "top":
        d.body = text
    elif where == "content" and b'"hi"' in base:
        d.body = base.replace(b'"hi"', text, 1)
    else:
        where = "metadata" if where == "metadata" else "x_unknown"
        d.obj.pop(where, None)
        d.body = V.dumps(d.obj)[:-1] + b',"' + where.encode() + b'":' + text + b"}"
    d.mark(label, f"{kind} nested {depth} deep at {where}")


def m_huge(rng, d: Draft) -> None:
    """Big strings, long lists, many keys, and a body past the size limit."""
    api = _api(d)
    what = rng.choice(("content-200KB", "list-20000", "metadata-5000-keys", "user-20000", "model-long",
                       "over-limit", "parts-5000", "stop-1000"))
    if what == "content-200KB":
        d.obj = put(d.obj, api.prompt_text, "lorem ipsum " * 17000)
    elif what == "list-20000":
        item = V.get(d.obj, api.prompt_list + (0,), "hi")
        d.obj = put(d.obj, api.prompt_list, [item] * 20000)
    elif what == "metadata-5000-keys":
        d.obj["metadata"] = {f"k{i}": "v" * 20 for i in range(5000)}
    elif what == "user-20000":
        d.obj["user"] = "u" * 20000
    elif what == "model-long":
        if api.model_in_body:
            d.obj["model"] = "m" * 20000
        else:  # a request line stays under aiohttp's 8190 bytes
            d.model = "m" * 5000
            d.path = gemini_path(d, d.model)
    elif what == "over-limit":
        d.obj["x_pad"] = "p" * (BODY_LIMIT + 4096)
    elif what == "parts-5000":
        part = {"text": "hi"} if d.route.api == "gemini" else {"type": "text", "text": "hi"}
        if d.route.api in ("chat", "messages", "messages_count", "responses", "gemini"):
            container = api.prompt_text[:-1] + (("parts",) if d.route.api == "gemini" else ("content",))
            d.obj = put(d.obj, container, [part] * 5000)
        else:
            d.obj = put(d.obj, api.prompt_list, [[1, 2, 3]] * 5000)
    else:
        d.obj["stop"] = ["s"] * 1000
        d.obj["stop_sequences"] = ["s"] * 1000
    d.mark(f"huge:{what}", what)


ENCODINGS = ("non-utf8", "latin-1", "utf-16", "utf-32", "utf-8-bom", "truncated", "empty", "null", "[]", "1",
             '"str"', "text", "duplicate-keys", "trailing-garbage", "nan-literal", "int-5000-digits",
             "whitespace", "form-encoded")


def m_encoding(rng, d: Draft) -> None:
    """The body's bytes: not UTF-8, UTF-16/32, a BOM, truncated, not an object, ..."""
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
    """Hostile `X-Payware-Session`, `-Feature` and `-Meta-*` headers: long, not UTF-8, many."""
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


def m_relayed_header(rng, d: Draft) -> None:
    """Headers the proxy relays to the provider (Anthropic's `anthropic-version`, `anthropic-beta`)."""
    name = rng.choice((b"anthropic-version", b"anthropic-beta"))
    label, value = rng.choice(V.HEADER_VALUES + (("comma-list", b"a, b,,c"), ("duplicate", None)))
    if value is None:
        d.headers += [(name, b"2023-06-01"), (name, b"x" * 300)]
    else:
        d.headers.append((name, value))
    d.mark(f"relayed-header:{V.HEADER_CLASSES.get(label, label)}", f"{name.decode()}: {label}")


CONTENT_ENCODINGS = ("gzip-on-plain", "deflate-on-plain", "br-on-plain", "zstd-on-plain", "unknown-on-plain",
                     "gzip-valid", "deflate-valid", "gzip-truncated", "gzip-bomb", "gzip,gzip-on-once",
                     "identity")


@functools.lru_cache(maxsize=4)
def _gzip_bomb(text: bytes) -> bytes:
    """A small gzip body that inflates to 20 MB (past the body limit)."""
    return gzip.compress(text[:-1] + b',"pad":"' + b"0" * (20 * 1024 * 1024) + b'"}', mtime=0)


def m_content_encoding(rng, d: Draft) -> None:
    """Content-Encoding on a plain body, a valid compressed body, a truncated one, a bomb."""
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
    """A missing or odd Content-Type."""
    value = rng.choice((None, b"text/plain", b"multipart/form-data; boundary=x", b"application/json; charset=latin-1",
                        b"application/json; charset=utf-16", b"\xff/\xfe", b"a" * 3000))
    d.content_type = value
    d.mark(f"content-type:{'none' if value is None else ascii(value[:30])[2:-1]}",
           f"Content-Type: {value!r}"[:80])


def m_method(rng, d: Draft) -> None:
    """Another method on the route's path."""
    method = rng.choice([m for m in ("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS") if m != d.route.method])
    d.method = method
    if method == "GET" and d.path.startswith("/v1/models/"):
        d.envelope = "openai"  # GET /v1/models/{id} is OpenAI's: the Gemini-looking id is a model it lacks
    d.mark("method:another", f"{method} on a {d.route.method} route")


def m_upstream_error(rng, d: Draft) -> None:
    """A model the provider refuses (its refusal is passed through, not billed)."""
    models = _api(d).upstream_errors
    if not models:
        d.mark("valid", "a valid call")
        return
    model = rng.choice(models)
    if _api(d).model_in_body:
        d.obj["model"] = model
    else:
        d.model = model
        d.path = gemini_path(d, model)
    d.mark(f"provider-error:{model}", f"model {model} (the provider refuses)")


def m_valid(rng, d: Draft) -> None:
    """A valid call, with metadata headers half of the time."""
    if rng.random() < 0.5:
        d.headers += [(b"X-Payware-Session", b"sess-%d" % rng.randrange(100)), (b"X-Payware-Feature", b"chat"),
                      (b"X-Payware-Meta-Order", b"o-1")]
    d.mark("valid", "a valid call")


def m_query(rng, d: Draft) -> None:
    """A query string on a model route (ignored, but for Gemini's `alt`)."""
    extra = rng.choice(("customer=globex", "x=%00", "x=%ff", "a=1&" * 500, "stream=true", "alt=json", "alt=%ff",
                        "alt=sse&alt=json", "alt=" + "s" * 3000))
    d.query = (d.query + "&" if d.query else "?") + extra
    d.mark("query-on-model-route", f"query {d.query[:40]}")


def _with_ctx(fn):
    """A mutator that needs no context, in the signature of those that do."""
    def mutate(rng, d: Draft, ctx: Context) -> None:
        fn(rng, d)
    mutate.__doc__ = fn.__doc__
    return mutate


Mutator = Callable[[random.Random, Draft, Context], None]


@functools.cache
def model_mutators() -> tuple[tuple[float, str, Mutator], ...]:
    """(weight, name, mutator) of the model routes; `keys` and `api_cases` add theirs."""
    plain = ((8, "valid", m_valid), (20, "type", m_type), (10, "max_tokens", m_max_tokens),
             (9, "surrogate", m_surrogate), (5, "nul", m_nul), (6, "depth", m_depth), (3, "huge", m_huge),
             (8, "encoding", m_encoding), (12, "header", m_header), (5, "content_encoding", m_content_encoding),
             (2, "content_type", m_content_type), (2, "method", m_method), (2, "upstream_error", m_upstream_error),
             (1, "query", m_query), (3, "relayed_header", m_relayed_header))
    return tuple((w, name, _with_ctx(fn)) for w, name, fn in plain) + (
        (8, "auth", m_auth), (6, "chain", m_chain), (6, "target", m_gemini_target))


# Mutators for one API only (elsewhere they are skipped by `model_case`).
ONLY = {"chain": ("responses",), "target": ("gemini",), "relayed_header": ("messages", "messages_count")}
# Mutators after which another one would only blur the class (they replace the whole body).
TERMINAL = {"depth", "encoding", "content_encoding", "nul"}


def _apply(rng, d: Draft, table, ctx: Context) -> None:
    """One mutation, sometimes two or three (combinations find what single ones miss)."""
    table = [row for row in table if d.route.api in ONLY.get(row[1], (d.route.api,))]
    count = 1 if rng.random() < 0.95 else rng.choice((2, 3))
    for _ in range(count):
        _, name, mutate = pick(rng, table)
        if name == "valid" and d.classes:
            continue
        mutate(rng, d, ctx)
        if name == "valid" or name in TERMINAL or d.body is not None or not isinstance(d.obj, dict):
            break


def model_case(rng, route: Route, ctx: Context) -> Draft:
    """A model call with one hostile change, sometimes two or three."""
    api = APIS[route.api]
    who = rng.choice(("acme", "globex"))
    d = Draft(route=route, method=route.method, path=route.path, who=who, obj=api.base(rng),
              key_at=rng.choice(route.key_at))
    if not api.model_in_body:
        d.model = rng.choice(MODELS_GEMINI)
        d.path = gemini_path(d, d.model)
        if route.gemini_method == "streamGenerateContent" and rng.random() < 0.85:
            d.query = "?alt=sse"
    _apply(rng, d, model_mutators(), ctx)
    return d
