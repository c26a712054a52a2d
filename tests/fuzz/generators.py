"""Seeded, deterministic generation of hostile requests over every route in `routes.ROUTES`.

`generate(seed, count, keys)` gives the main phase (sent concurrently): each route's family
of mutators (`model_cases`, `record_cases`, the reads below) plus unknown paths; `cap_phase`
gives the state-changing `PUT /v1/billing/cap` sequences (each followed by a probe call and a
reset); `raw.malformed` gives malformed HTTP. The same seed gives the same cases, byte for byte.

Each case has a `klass` (the class of input, the unit of the failure table) and a `note`
(what exactly is hostile in it, for the example column).
"""

from __future__ import annotations

import random
from typing import Any

from tests.fuzz import values as V
from tests.fuzz.cases import Case, Draft, finish, pick
from tests.fuzz.model_cases import m_auth, m_header, m_method, model_case
from tests.fuzz.record_cases import records_case
from tests.fuzz.routes import ROUTES, UNKNOWN_PATHS, Route

# --------------------------------------------------------------------------- reads, health, unknown

def _with_keys(fn):
    """A mutator that does not need the keys, in the signature of those that do."""
    def mutate(rng, d: Draft, keys) -> None:
        fn(rng, d)
    return mutate


QUERY_VALUES = (
    ("NUL", "%00"), ("non-utf8", "%ff%fe"), ("surrogate", "%ed%a0%80"), ("len-5000", "q" * 5000),
    ("1e308", "1e308"), ("20-nines", "9" * 20), ("11-nines", "9" * 11), ("-1", "-1"), ("garbage", "2026-13-45T99"),
    ("empty", ""), ("fullwidth-digits", "%EF%BC%91%EF%BC%92"), ("superscript-2", "%C2%B2"), ("nan", "nan"),
    ("iso-z", "2026-11-01T00:00:00Z"), ("0.5.5", "0.5.5"), ("percent-broken", "%zz"), ("plus", "+1"),
)

QUERY_CLASSES = {"surrogate": "non-utf8", "1e308": "number edge", "20-nines": "number edge",
                 "11-nines": "number edge", "-1": "number edge", "plus": "number edge", "garbage": "garbage",
                 "0.5.5": "garbage", "percent-broken": "garbage", "nan": "garbage",
                 "fullwidth-digits": "unicode digits",
                 "superscript-2": "unicode digits", "iso-z": "valid", "empty": "valid"}


def q_param(rng, d: Draft, keys) -> None:
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


def q_who(rng, d: Draft, keys) -> None:
    """The admin with or without `?customer=`, a customer asking for another, no key, a wrong key."""
    kind = rng.choice(("admin-no-customer", "admin-acme", "admin-globex", "admin-unknown", "customer-other",
                       "customer-self", "none", "wrong"))
    d.who = {"none": "none", "wrong": "wrong", "customer-other": "acme", "customer-self": "globex"}.get(kind, "admin")
    d.query = {"admin-acme": "?customer=acme", "admin-globex": "?customer=globex", "admin-unknown": "?customer=initech",
               "customer-other": "?customer=globex", "customer-self": "?customer=globex"}.get(kind, "")
    d.mark(f"who:{kind}", kind)


def q_valid(rng, d: Draft, keys) -> None:
    """A valid read."""
    if d.who == "admin":
        d.query = f"?customer={rng.choice(('acme', 'globex'))}"
    d.mark("valid", "a valid read")


READ_MUTATORS = (
    (4, "valid", q_valid), (10, "query", q_param), (5, "who", q_who), (5, "header", _with_keys(m_header)),
    (3, "auth", m_auth), (2, "method", _with_keys(m_method)), (1, "body", _with_keys(lambda rng, d: (
        setattr(d, "body", rng.choice((b"\xff\xfe", b"[" * 5000, b"{}"))), d.mark("body-on-get", "a body on GET")))),
)


def read_case(rng, route: Route, keys) -> Draft:
    """A read route with one hostile change."""
    d = Draft(route=route, method=route.method, path=route.path, who=rng.choice(("acme", "globex", "admin")),
              content_type=None)
    _, name, mutate = pick(rng, READ_MUTATORS)
    mutate(rng, d, keys)
    if d.who == "admin" and not d.query and name not in ("who",) and rng.random() < 0.8:
        d.query = f"?customer={rng.choice(('acme', 'globex'))}"
    return d


def unknown_case(rng, keys) -> Draft:
    """A path no route serves, with any method."""
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
        _, route = pick(rng, table)
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
