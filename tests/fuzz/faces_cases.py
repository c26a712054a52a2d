"""Hostile requests to the web faces: the customer portal (`/portal…`) and the operator console
(`/admin…`). These are pages for people: a refusal may be a small HTML page or OpenAI's JSON
(for scripts), but never a 500, and never a key in the answer.

Sessions come from `Context` (the test signs in once before the run): the cases use them, a
tampered or foreign cookie, or none; posts come from this host (`Origin` with HOST_MARK,
replaced by the proxy's address on the wire), another site, or nowhere; with the session's
CSRF token, a wrong one, or none; and forms carry hostile fields.
"""

from __future__ import annotations

from urllib.parse import quote_from_bytes

from tests.fuzz.cases import HOST_MARK, Context, Draft, Session, pick
from tests.fuzz.routes import Route

ORIGINS = (("same", b"http://" + HOST_MARK), ("same", b"http://" + HOST_MARK), ("other-site", b"https://evil.example"),
           ("null", b"null"), ("none", None), ("malformed", b"http://[::1"), ("non-utf8", b"http://\xff\xfe"),
           ("referer-only", None))
TOKENS = (("garbage", "abc"), ("two-dots", "a.b.c"), ("tampered", "eyJ0IjoicG9ydGFsIn0.AAAA"),
          ("non-ascii", "%C3%A9.%C3%A9"), ("NUL", "a%00.b"), ("long", "t" * 5000), ("empty", ""),
          ("non-utf8", "%ff.%fe"))
COOKIES = (("garbage", b"abc"), ("tampered", b"eyJ0IjoiY29uc29sZSJ9.AAAA"), ("non-utf8", b"\xff\xfe.\xfd"),
           ("long", b"c" * 4000), ("quoted", b'"a.b"'), ("many", None))
FIELDS = (("key", "customer-key"), ("key", "admin-key"), ("key", "wrong"), ("key", "empty"), ("key", "non-utf8"),
          ("key", "NUL"), ("key", "long"), ("name", "NUL"), ("name", "long"), ("name", "html"),
          ("expires_in", "huge"), ("expires_in", "word"), ("grace_seconds", "negative"), ("amount", "huge"),
          ("many-fields", ""), ("json-body", ""), ("not-urlencoded", ""))
VALUES = {"wrong": b"pw-wrong-key-000000", "empty": b"", "non-utf8": b"%ff%fe", "NUL": b"a%00b",
          "long": b"x" * 20000, "html": b"%3Cscript%3Ealert(1)%3C%2Fscript%3E", "huge": b"9" * 40, "word": b"abc",
          "negative": b"-5", "valid-ttl": b"3600", "zero": b"0"}
IDS = (("config", "acme"), ("config", "globex"), ("unknown", "initech"), ("NUL", "a%00"), ("non-utf8", "a%ff"),
       ("surrogate", "a%ED%A0%80"), ("long", "i" * 3000), ("html", "%3Cb%3E"))
KEY_IDS = (("unknown", "key_000000000000"), ("NUL", "key_%00"), ("long", "k" * 3000), ("non-utf8", "key_%ff"))
STATIC = (("asset", "style.css"), ("asset", "portal.js"), ("unknown", "nope.js"), ("dot-dot", "..%2fapp.py"),
          ("NUL", "style.css%00"), ("long", "s" * 3000), ("non-utf8", "%ff.css"))
QUERY_VALUES = (("NUL", "%00"), ("non-utf8", "%ff"), ("surrogate", "%ED%A0%80"), ("huge", "9" * 30),
                ("negative", "-1"), ("word", "abc"), ("long", "q" * 3000), ("empty", ""), ("valid", "5"),
                ("iso", "2026-11-01T00:00:00Z"))


def faces_case(rng, route: Route, ctx: Context) -> Draft:
    """A page, form or data call of a web face with one hostile part (its session, path, query,
    origin, CSRF token or form); the rest is what a browser holding a session would send."""
    portal = route.path.startswith("/portal")
    who = rng.choice(("acme", "globex")) if portal else "admin"
    d = Draft(route=route, method=route.method, path=route.path, who=who, content_type=None)
    d.auth = []  # a browser sends no key: the session is the cookie
    session = ctx.portal.get(who) if portal else ctx.console
    parts = [(3, "session"), (1, "valid")]
    parts += [(3, "path")] if "{" in route.path else []
    parts += [(2, "query")] if route.query else []
    parts += [(2, "origin"), (2, "csrf"), (4, "form")] if route.method == "POST" else []
    _, part = pick(rng, parts)
    klass = "valid"
    for name, pool in (("{id}", IDS), ("{key_id}", KEY_IDS + (("config's", ctx.key_ids.get("acme", "k")),)),
                       ("{name}", STATIC)):
        if name in d.path:
            label, value = rng.choice(pool if part == "path" else pool[:1])
            d.path = d.path.replace(name, value)
            klass = f"{name.strip('{}')}:{label}" if part == "path" else klass
    use = rng.choice(("none", "hostile-cookie", "other-face")) if part == "session" else "session"
    if session is None:
        use = "none"
    if use == "session":
        d.headers.append((b"Cookie", session.cookie))
    elif use == "other-face":  # the portal's cookie on the console, and the other way round
        other = ctx.console if portal else next(iter(ctx.portal.values()), None)
        if other is not None:
            d.headers.append((b"Cookie", other.cookie))
        klass = "session:other-face"
    elif use == "hostile-cookie":
        label, value = rng.choice(COOKIES)
        name = b"pw_portal" if portal else b"pw_console"
        cookie = b"; ".join(b"c%d=v" % i for i in range(300)) if value is None else name + b"=" + value
        d.headers.append((b"Cookie", cookie))
        klass = f"session:cookie:{label}"
    else:
        klass = "session:none" if part == "session" else klass
    if part == "query":
        name = rng.choice(route.query)
        label, value = rng.choice(TOKENS if name == "token" else QUERY_VALUES)
        d.query = f"?{name}={value}"
        klass = f"query:{name}:{label}"
    if route.method == "POST":
        klass = _post(rng, d, session if use == "session" else None, ctx, portal, part) or klass
    if rng.random() < 0.3:
        d.headers.append((b"Accept", b"application/json"))
    d.mark(f"faces:{klass}", f"{d.method} {d.path[:60]}{d.query[:30]} ({use})")
    return d


def _post(rng, d: Draft, session: Session | None, ctx: Context, portal: bool, part: str) -> str | None:
    """Origin, CSRF token and form fields of a post, one of them hostile if `part` names it;
    returns the class of what is hostile (None: nothing here)."""
    klass = None
    origin_label, origin = rng.choice(ORIGINS) if part == "origin" else ORIGINS[0]
    if origin_label == "referer-only":
        d.headers.append((b"Referer", b"http://" + HOST_MARK + b"/admin"))
    elif origin is not None:
        d.headers.append((b"Origin", origin))
    if part == "origin":
        klass = f"origin:{origin_label}"
    fields: list[bytes] = []
    csrf = rng.choice(("wrong", "none", "non-utf8-header")) if part == "csrf" else "right"
    if csrf == "right" and session is not None:
        fields.append(b"csrf=" + session.csrf.encode())
    elif csrf == "wrong":
        fields.append(b"csrf=AAAA")
    elif csrf == "non-utf8-header":
        d.headers.append((b"X-CSRF-Token", b"\xff\xfe"))
    if part == "csrf":
        klass = f"csrf:{csrf}"
    name, kind = rng.choice(FIELDS) if part == "form" else _valid_field(d)
    customer = d.who if d.who in ctx.keys else "acme"
    if name == "many-fields":
        fields += [b"f%d=v" % i for i in range(1000)]
    elif name == "json-body":
        fields = [b'{"key":"x","csrf":"y"}']
    elif name == "not-urlencoded":
        fields = [b"\xff\xfe\x00%%%"]
    elif kind == "customer-key":
        fields.append(b"key=" + quote_from_bytes(ctx.keys[customer if portal else "acme"].encode()).encode())
    elif kind == "admin-key":
        fields.append(b"key=" + quote_from_bytes(ctx.keys["admin"].encode()).encode())
    elif name:
        fields.append(name.encode() + b"=" + VALUES[kind])
    if part == "form":
        klass = f"form:{name}:{kind}" if kind else f"form:{name}"
    d.body = b"&".join(fields)
    content_types = (b"application/x-www-form-urlencoded", b"multipart/form-data", None)
    d.content_type = rng.choice(content_types) if part == "form" else content_types[0]
    return klass


def _valid_field(d: Draft) -> tuple[str, str]:
    """The form field a browser posts to this route (its value valid)."""
    path = d.route.path
    if path.endswith("/login"):
        return "key", "admin-key" if path.startswith("/admin") else "customer-key"
    if path.endswith("/keys"):
        return "name", "word"
    if path.endswith("/portal_link"):
        return "expires_in", "valid-ttl"
    if path.endswith("/rotate"):
        return "grace_seconds", "zero"
    return "", ""
