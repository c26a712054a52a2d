"""Hostile calls of the admin API (`/v1/admin/…`, admin key only) and of `/metrics`.

Bodies start valid and get one hostile field (types, amounts, strings with NUL or surrogates,
instants past every bound, unknown fields), or hostile bytes (`model_cases`' encodings and
depths); paths name the config's customers (which the API must not change), runtime ones of a
small pool (so creations collide), unknown and hostile ids; callers are mostly the admin, and
sometimes a customer, nobody or a wrong key (a 403 or 401 that changes nothing).
"""

from __future__ import annotations

import copy

from tests.fuzz import values as V
from tests.fuzz.cases import Context, Draft, pick
from tests.fuzz.keys import m_auth
from tests.fuzz.model_cases import m_content_encoding, m_depth, m_encoding, m_header
from tests.fuzz.routes import Route

RUNTIME_CUSTOMERS = ("fz-1", "fz-2", "fz-3")
CUSTOMER_IDS = (
    ("config", "acme"), ("config", "globex"), ("runtime", "fz-1"), ("runtime", "fz-2"), ("runtime", "fz-3"),
    ("unknown", "initech"), ("NUL", "fz%00"), ("non-utf8", "fz%ff"), ("surrogate", "fz%ED%A0%80"),
    ("len-5000", "c" * 5000), ("dot-dot", "%2e%2e"), ("unicode", "fz-%C3%A9"), ("space", "fz%201"),
)
KEY_IDS = (("unknown", "key_000000000000"), ("NUL", "key_%00"), ("non-utf8", "key_%ff"),
           ("surrogate", "key_%ED%A0%80"), ("len-5000", "k" * 5000), ("not-a-key-id", "acme"))
INSTANTS = (
    ("past", "2001-01-01T00:00:00Z"), ("far-future", "9999-12-31T23:59:59Z"), ("year-10000", "10000-01-01"),
    ("garbage", "2026-13-45"), ("unix-1e20", 10**20), ("unix-1e308", 1e308), ("unix-negative", -1),
    ("NaN", float("nan")), ("NUL", "2030-01-01\x00"), ("empty", ""), ("bool", True), ("list", []),
    ("offset-+25:00", "2030-01-01T00:00:00+25:00"), ("valid", "2031-01-01T00:00:00Z"),
)
TEXTS = (("NUL", "a\x00b"), ("surrogate", "a\ud800"), ("len-300", "n" * 300), ("len-100000", "n" * 100_000),
         ("empty", ""), ("emoji", "\U0001f511"), ("int", 5), ("null", None))


def _customer_body(rng) -> dict:
    body: dict = {"id": rng.choice(RUNTIME_CUSTOMERS), "plan": "payg"}
    if rng.random() < 0.4:
        body["cap"] = {"amount": "5.00", "action": "block", "mode": "hard"}
    if rng.random() < 0.3:
        body["rate_limit"] = {"rpm": 100, "tpm": 10000}
    if rng.random() < 0.3:
        body["metadata"] = {"crm": "c-1"}
    return body


def _hostile_field(rng, body: dict, fields: dict) -> str:
    """One field of `body` set to a hostile value from its pool; returns the class."""
    name = rng.choice(sorted(fields))
    label, value = rng.choice(fields[name])
    if "." in name:
        outer, inner = name.split(".", 1)
        body[outer] = {**(body.get(outer) if isinstance(body.get(outer), dict) else {}), inner: copy.deepcopy(value)}
    else:
        body[name] = copy.deepcopy(value)
    return f"{name}:{label}"


_TYPES = tuple((V.TYPE_CLASSES.get(label, label), value) for label, value in V.TYPES)
_AMOUNTS = tuple((V.AMOUNT_CLASSES.get(label, label), value) for label, value in V.AMOUNTS)
_COUNTS = (("0", 0), ("-1", -1), ("2**63", 2**63), ("10**400", 10**400), ("1.5", 1.5), ('"5"', "5"),
           ("NaN", float("nan")), ("1e9", 10**9), ("valid", 60))
CUSTOMER_FIELDS = {
    "id": TEXTS + (("slash", "a/b"), ("config's", "acme"), ("len-129", "i" * 129)),
    "plan": TEXTS + (("unknown", "enterprise"),), "cap": _TYPES, "cap.amount": _AMOUNTS,
    "cap.action": TEXTS + (("unknown", "explode"),), "cap.mode": TEXTS, "rate_limit": _TYPES,
    "rate_limit.rpm": _COUNTS, "rate_limit.tpm": _COUNTS, "models": _TYPES + (("5000", ["m"] * 5000),
                                                                         ("unknown", ["gpt-nope"])),
    "metadata": _TYPES + (("4097-bytes", {"b": "x" * 4100}), ("depth-20", V.nested(20, "object")),
                          ("NUL-key", {"\x00": 1}), ("surrogate-value", {"k": "\ud800"})),
    "anchor_day": _COUNTS + (("32", 32), ("31", 31)), "x_unknown": _TYPES,
}
KEY_FIELDS = {"name": TEXTS, "expires_at": INSTANTS, "cap": _AMOUNTS, "rate_limit": _TYPES,
              "rate_limit.rpm": _COUNTS, "models": _TYPES + (("unknown", ["gpt-nope"]),), "x_unknown": _TYPES}
CREDIT_FIELDS = {"amount": _AMOUNTS, "expires_at": INSTANTS, "priority": _COUNTS + (("1001", 1001),),
                 "reason": TEXTS, "idempotency_key": TEXTS + (("len-256", "k" * 256),), "x_unknown": _TYPES}
GRACE = _COUNTS + (("30-days+1", 30 * 86400 + 1), ("null", None), ("string", "60"))
LINK_TTL = _COUNTS + (("59", 59), ("30-days+1", 30 * 86400 + 1), ("null", None))

QUERIES = {
    "period": (("current", "current"), ("month", "2026-11"), ("day", "2026-11-05"), ("year-9999", "9999-12"),
               ("day-9999-12-31", "9999-12-31"), ("year-1", "0001-01"), ("feb-30", "2026-02-30"),
               ("NUL", "%00"), ("non-utf8", "%ff"), ("long", "2" * 3000), ("iso-time", "2026-11-01T00:00:00Z")),
    "format": (("json", "json"), ("csv", "csv"), ("xml", "xml"), ("non-utf8", "%ff"), ("empty", "")),
    "limit": (("0", "0"), ("101", "101"), ("-1", "-1"), ("huge", "9" * 30), ("word", "abc"), ("NUL", "%00"),
              ("valid", "2"), ("fullwidth", "%EF%BC%92")),
    "after": (("unknown", "nobody"), ("NUL", "%00"), ("surrogate", "%ED%A0%80"), ("valid", "acme"),
              ("long", "a" * 3000)),
    "provider": (("known", "fake"), ("unknown", "nope"), ("NUL", "%00"), ("surrogate", "%ED%A0%80"),
                 ("long", "p" * 3000)),
    "customer": (("known", "acme"), ("unknown", "nope"), ("NUL", "%00"), ("non-utf8", "%ff"), ("long", "c" * 3000)),
}


def admin_case(rng, route: Route, ctx: Context) -> Draft:
    """One admin API call with one hostile part: its path, query, body, bytes, a header, or its caller."""
    d = Draft(route=route, method=route.method, path=route.path, who="admin", content_type=None)
    body = _body(rng, route)
    parts = [(3, "path")] if "{" in route.path else []
    parts += [(3, "query")] if route.query else []
    parts += [(5, "body"), (1.5, "bytes")] if body is not None else []
    parts += [(1, "header"), (1.2, "auth"), (1, "caller"), (1, "valid")]
    _, part = pick(rng, parts)
    # the path: a valid id unless the path is the hostile part
    pool = CUSTOMER_IDS if part == "path" else CUSTOMER_IDS[:5]
    label, ident = rng.choice(pool)
    d.path = d.path.replace("{id}", ident)
    if "{key_id}" in d.path:
        keys = KEY_IDS + (("config's", ctx.key_ids.get("acme", "key_x")),)
        label, kid = rng.choice(keys if part == "path" else keys[:1])
        d.path = d.path.replace("{key_id}", kid)
        label = f"key:{label}"
    klass = f"admin:path:{label}" if part == "path" else "admin:valid"
    if body is not None:
        d.obj, d.content_type = body[0], b"application/json"
        if part == "body":
            klass = "admin:" + body[1](rng, d.obj)
    if part == "query":
        name = rng.choice(route.query)
        qlabel, value = rng.choice(QUERIES[name])
        d.query = f"?{name}={value}"
        klass = f"admin:query:{name}:{qlabel}"
    elif part in ("bytes", "header", "auth"):
        if part == "bytes":
            rng.choice((m_encoding, m_depth, m_content_encoding))(rng, d)
        else:
            m_header(rng, d) if part == "header" else m_auth(rng, d, ctx)
        d.classes[-1] = "admin:" + d.classes[-1]
        return d
    elif part == "caller":
        d.who = rng.choice(("acme", "globex", "none", "wrong"))
        klass = f"admin:as-{d.who}"
    d.mark(klass, f"{route.method} {d.path[:60]}{d.query[:40]}")
    return d


def _body(rng, route: Route):
    """The route's valid JSON body and a function making one field of it hostile, or None: no body."""
    path, method = route.path, route.method
    if method in ("GET", "DELETE"):
        return None
    if path == "/v1/admin/customers":
        body, fields = _customer_body(rng), CUSTOMER_FIELDS
    elif method == "PATCH":
        body = {k: v for k, v in _customer_body(rng).items() if k != "id"}
        fields = {k: v for k, v in CUSTOMER_FIELDS.items() if k != "id"}
    elif path.endswith("/keys"):
        body, fields = {"name": f"fuzz-{rng.randrange(100)}"}, KEY_FIELDS
    elif path.endswith("/credits"):
        body = {"amount": "1.00", "reason": "fuzz", "idempotency_key": f"fz-{rng.randrange(5)}"}
        fields = CREDIT_FIELDS
    elif path.endswith("/rotate"):
        body, fields = {"grace_seconds": 0}, {"grace_seconds": GRACE}
    elif path.endswith("/portal_link"):
        body, fields = {"expires_in": 3600}, {"expires_in": LINK_TTL}
    else:  # reload: no body needed; junk is read and ignored, or refused
        return {}, lambda rng, obj: "reload-body:" + _hostile_field(rng, obj, {"x_unknown": _TYPES})
    return body, lambda rng, obj: _hostile_field(rng, obj, fields)


METRICS_QUERIES = ("", "?name[]=payware_requests_total", "?x=%00", "?x=%ff", "?" + "a=1&" * 500)
ACCEPTS = (None, b"application/openmetrics-text; version=1.0.0", b"text/plain;version=0.0.4", b"*/*", b"\xff",
           b"a" * 3000)


def metrics_case(rng, route: Route, ctx: Context) -> Draft:
    """`GET /metrics`: the admin key in any position, a customer's, none, a wrong one; odd Accept."""
    who = rng.choice(("admin", "admin", "admin", "acme", "none", "wrong"))
    d = Draft(route=route, method=route.method, path=route.path, who=who, content_type=None,
              key_at=rng.choice(("bearer", "bearer", "x-api-key", "x-goog-api-key", "query")))
    _, kind = pick(rng, ((5, "plain"), (2, "query"), (2, "accept"), (1, "auth"), (1, "method")))
    if kind == "query":
        d.query = rng.choice(METRICS_QUERIES)
    elif kind == "accept":
        accept = rng.choice(ACCEPTS)
        if accept is not None:
            d.headers.append((b"Accept", accept))
    elif kind == "auth":
        m_auth(rng, d, ctx)
        d.classes[-1] = "metrics:" + d.classes[-1]
        return d
    elif kind == "method":
        d.method = rng.choice(("POST", "PUT", "DELETE", "PATCH"))
    d.mark(f"metrics:{kind}:as-{who}", f"{d.method} /metrics{d.query[:30]} as {who} ({d.key_at})")
    return d
