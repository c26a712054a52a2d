"""Seeded, deterministic generation of hostile requests over every route in `routes.ROUTES`.

`generate(seed, count, ctx)` gives the main phase (sent concurrently): each route's family
(`FAMILIES`: the model routes of every API, stored responses, records, reads, the admin API,
/metrics, the web faces) plus unknown paths; `cap_phase` gives the state-changing cap
sequences (`PUT /v1/billing/cap` and the portal's form, each followed by a probe call and a
reset); `phases` the key lifecycles and key probes; `raw.malformed` gives malformed HTTP. The
same seed gives the same cases, byte for byte but for what the proxy made before the run (the
stored responses' ids, the sessions' cookies: see `cases.Context`).

Each case has a `klass` (the class of input, the unit of the failure table) and a `note`
(what exactly is hostile in it, for the example column).
"""

from __future__ import annotations

import random
from typing import Any

from tests.fuzz import values as V
from tests.fuzz.admin_cases import admin_case, metrics_case
from tests.fuzz.api_cases import model_id_case, stored_case
from tests.fuzz.cases import HOST_MARK, Case, Context, Draft, finish, pick
from tests.fuzz.faces_cases import faces_case
from tests.fuzz.keys import m_auth
from tests.fuzz.model_cases import m_header, m_method, model_case
from tests.fuzz.record_cases import records_case
from tests.fuzz.routes import KEY_POSITIONS, NEAR_ROUTES, ROUTES, UNKNOWN_PATHS, Route

# --------------------------------------------------------------------------- reads, health, unknown

def _with_keys(fn):
    """A mutator that needs no context, in the signature of those that do."""
    def mutate(rng, d: Draft, ctx: Context) -> None:
        fn(rng, d)
    return mutate


QUERY_VALUES = (
    ("NUL", "%00"), ("non-utf8", "%ff%fe"), ("surrogate", "%ed%a0%80"), ("len-5000", "q" * 5000),
    ("1e308", "1e308"), ("20-nines", "9" * 20), ("11-nines", "9" * 11), ("-1", "-1"), ("garbage", "2026-13-45T99"),
    ("empty", ""), ("fullwidth-digits", "%EF%BC%91%EF%BC%92"), ("superscript-2", "%C2%B2"), ("nan", "nan"),
    ("iso-z", "2026-11-01T00:00:00Z"), ("0.5.5", "0.5.5"), ("percent-broken", "%zz"), ("plus", "+1"),
    ("year-9999", "9999-12-31"), ("year-1", "0001-01-01"), ("year-10000", "10000-01-01"),
)

QUERY_CLASSES = {"surrogate": "non-utf8", "1e308": "number edge", "20-nines": "number edge",
                 "11-nines": "number edge", "-1": "number edge", "plus": "number edge", "garbage": "garbage",
                 "0.5.5": "garbage", "percent-broken": "garbage", "nan": "garbage",
                 "fullwidth-digits": "unicode digits",
                 "superscript-2": "unicode digits", "iso-z": "valid", "empty": "valid", "year-9999": "year edge",
                 "year-1": "year edge", "year-10000": "year edge"}


def q_param(rng, d: Draft, ctx: Context) -> None:
    """One hostile query parameter of the route."""
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
    d.mark(f"query:{name}:{QUERY_CLASSES.get(label, label)}",
           f"?{name}={value[:40]}" + (" (repeated)" if repeat else ""))


def q_who(rng, d: Draft, ctx: Context) -> None:
    """The admin with or without `?customer=`, a customer asking for another, no key, a wrong key."""
    kind = rng.choice(("admin-no-customer", "admin-acme", "admin-globex", "admin-unknown", "customer-other",
                       "customer-self", "none", "wrong"))
    d.who = {"none": "none", "wrong": "wrong", "customer-other": "acme", "customer-self": "globex"}.get(kind, "admin")
    d.query = {"admin-acme": "?customer=acme", "admin-globex": "?customer=globex", "admin-unknown": "?customer=initech",
               "customer-other": "?customer=globex", "customer-self": "?customer=globex"}.get(kind, "")
    d.mark(f"who:{kind}", kind)


def q_valid(rng, d: Draft, ctx: Context) -> None:
    """A valid read."""
    if d.who == "admin":
        d.query = f"?customer={rng.choice(('acme', 'globex'))}"
    d.mark("valid", "a valid read")


READ_MUTATORS = (
    (4, "valid", q_valid), (10, "query", q_param), (5, "who", q_who), (5, "header", _with_keys(m_header)),
    (3, "auth", m_auth), (2, "method", _with_keys(m_method)), (1, "body", _with_keys(lambda rng, d: (
        setattr(d, "body", rng.choice((b"\xff\xfe", b"[" * 5000, b"{}"))), d.mark("body-on-get", "a body on GET")))),
)


def read_case(rng, route: Route, ctx: Context) -> Draft:
    """A read route with one hostile change."""
    d = Draft(route=route, method=route.method, path=route.path, who=rng.choice(("acme", "globex", "admin")),
              content_type=None, key_at=rng.choice(("bearer",) * 6 + KEY_POSITIONS))
    _, name, mutate = pick(rng, READ_MUTATORS)
    mutate(rng, d, ctx)
    if d.who == "admin" and not d.query and name not in ("who",) and rng.random() < 0.8:
        d.query = f"?customer={rng.choice(('acme', 'globex'))}"
    return d


def unknown_case(rng, ctx: Context) -> Draft:
    """A path no route serves, with any method and the key in any position."""
    path = rng.choice(UNKNOWN_PATHS)
    method = rng.choice(("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"))
    envelope = next((e for prefix, e in NEAR_ROUTES.items() if path.startswith(prefix)), "openai")
    route = Route(method, "UNKNOWN", "unknown", envelope=envelope)
    d = Draft(route=route, method=method, path=path, who=rng.choice(("acme", "globex", "admin", "none")),
              content_type=None, key_at=rng.choice(KEY_POSITIONS))
    if method in ("POST", "PUT", "PATCH") and rng.random() < 0.7:
        d.obj = {"model": "fake-ok", "messages": [{"role": "user", "content": "hi"}]}
        d.content_type = b"application/json"
    d.mark(f"unknown:{method}", f"{method} {path[:40]}")
    return d


FAMILIES = {"model": model_case, "records": records_case, "read": read_case, "health": read_case,
            "stored": stored_case, "model_id": model_id_case, "admin": admin_case, "metrics": metrics_case,
            "faces": faces_case}


def generate(seed: int, count: int, ctx: Context) -> list[Case]:
    """The main phase: `count` cases over every route of ROUTES, plus unknown paths."""
    keys = ctx.keys
    rng = random.Random(seed)
    table = [(r.weight, r) for r in ROUTES if r.weight > 0 and r.family in FAMILIES]
    table.append((0.8, None))  # unknown paths
    cases = []
    for n in range(count):
        _, route = pick(rng, table)
        if route is None:
            d = unknown_case(rng, ctx)
            case = finish(n, d, keys, "unknown")
            case.route = f"{d.method} (unknown path)"
        else:
            d = FAMILIES[route.family](rng, route, ctx)
            case = finish(n, d, keys, route.family)
        cases.append(case)
    return cases


# --------------------------------------------------------------------------- PUT /v1/billing/cap

def cap_phase(seed: int, ctx: Context, start: int) -> list[list[Case]]:
    """Sequences of [set the cap, a probe call of that customer, set it back to null]: through
    `PUT /v1/billing/cap` and through the portal's form (`POST /portal/api/cap`)."""
    keys = ctx.keys
    rng = random.Random(seed + 1)
    route = next(r for r in ROUTES if r.family == "cap")
    chat = next(r for r in ROUTES if r.endpoint == "chat")
    sequences = []
    n = start
    bodies: list[tuple[str, bytes | Any]] = [(label, {"amount": value}) for label, value in V.AMOUNTS]
    bodies += [("not-json", b"amount=5"), ("array", [{"amount": "5"}]), ("no-amount", {"cap": "5"}),
               ("depth-1000", V.nested_text(1000, "object").encode()), ("surrogate", {"amount": "5\ud800"}),
               ("non-utf8", b'{"amount":"5\xff"}'), ("NUL", {"amount": "5\x00"}),
               ("extra-keys", {"amount": "5", "x": 1}),
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
        reset = Draft(route=route, method="PUT", path=route.path, query=query, who=who, obj={"amount": None},
                      classes=["cap:reset to null"], notes=[f"PUT cap null for {subject}"])
        sequences.append(_cap_sequence(n, finish(n, d, keys, "cap"), subject, label, chat, reset, keys))
        n += 3
    portal_cap = next(r for r in ROUTES if r.label == "POST /portal/api/cap")
    for label, value in PORTAL_AMOUNTS:
        subject = rng.choice(("acme", "globex"))
        session = ctx.portal.get(subject)
        if session is None:
            break
        d = _portal_cap(portal_cap, subject, session, b"amount=" + value)
        d.mark(f"portal-cap:{label}", f"POST /portal/api/cap amount={ascii(value[:30])[2:-1]} for {subject}")
        reset = _portal_cap(portal_cap, subject, session, b"remove=1")
        reset.mark("portal-cap:remove", f"POST /portal/api/cap remove for {subject}")
        sequences.append(_cap_sequence(n, finish(n, d, keys, "faces"), subject, label, chat, reset, keys))
        n += 3
    return sequences


# The portal's cap form: the amount as the page posts it (a `$` allowed), and what it must refuse.
PORTAL_AMOUNTS = (
    ("plain", b"5.00"), ("dollar", b"%245.00"), ("above admin", b"50.01"), ("$ >= 2**53 nano", b"1e20"),
    ("$ >= 2**53 nano", b"9007199.254740993"), ("negative", b"-1"), ("nan/inf string", b"NaN"),
    ("nan/inf string", b"Infinity"), ("more than 9 places", b"1e-10"), ("zero", b"0"), ("odd format", b"1_000"),
    ("odd format", b"%EF%BC%95"), ("non-utf8", b"%ff"), ("NUL", b"5%00"), ("long", b"9" * 5000), ("empty", b""),
)


def _portal_cap(route: Route, customer: str, session, form: bytes) -> Draft:
    """`POST /portal/api/cap` from this host, with the session's cookie and CSRF token."""
    d = Draft(route=route, method="POST", path=route.path, who=customer, body=form + b"&csrf=" + session.csrf.encode(),
              content_type=b"application/x-www-form-urlencoded")
    d.auth = []
    d.headers += [(b"Cookie", session.cookie), (b"Origin", b"http://" + HOST_MARK), (b"Accept", b"application/json")]
    return d


def _cap_sequence(n: int, setting: Case, subject: str, label: str, chat: Route, reset: Draft,
                  keys: dict[str, str]) -> list[Case]:
    klass = V.AMOUNT_CLASSES.get(label, label)
    probe = finish(n + 1, Draft(route=chat, method="POST", path=chat.path, who=subject,
                                obj={"model": "fake-ok", "messages": [{"role": "user", "content": "hi"}]},
                                classes=[f"probe after {setting.klass.split(':')[0]}: {klass}"],
                                notes=[f"a valid call after {setting.note}"]),
                   keys, "model")
    return [setting, probe, finish(n + 2, reset, keys, setting.family)]
