"""Hostile usage records for `POST /v1/usage/records`: types, amounts, strings, batches, callers."""

from __future__ import annotations

import copy

from tests.fuzz import values as V
from tests.fuzz.cases import Context, Draft, pick
from tests.fuzz.keys import m_auth
from tests.fuzz.model_cases import m_content_encoding, m_depth, m_encoding, m_header, m_method
from tests.fuzz.routes import Route

IDEMPOTENCY_POOL = ("order-1", "order-2", "sess-42", "inv-2026-001", "x")


def base_record(rng) -> dict:
    """A valid record the plan prices (`agent_actions`), sometimes with its own price, key and metadata."""
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
    """A valid record."""
    d.mark("record:valid", "a valid record")


def r_type(rng, d: Draft) -> None:
    """A value of another JSON type in one field of the record."""
    name = rng.choice(RECORD_FIELDS)
    label, value = rng.choice(V.TYPES)
    d.obj[name] = copy.deepcopy(value)
    d.mark(f"record:type:{V.TYPE_CLASSES.get(label, label)}", f"{name}={V.short(value, 40)}")


def r_amount(rng, d: Draft) -> None:
    """A quantity or unit price at or past every bound."""
    name = rng.choice(("quantity", "unit_price"))
    label, value = rng.choice(V.AMOUNTS)
    d.obj[name] = value
    d.mark(f"record:{name}:{V.AMOUNT_CLASSES.get(label, label)}", f"{name}={label}")


def r_string(rng, d: Draft) -> None:
    """Session, feature, metric, idempotency key or meta: too long, NUL, lone surrogates."""
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
    """`meta` at and past 4 KB, deep, wide, or not an object."""
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
    """Batches: 1000, 1001, empty, one bad record, two customers, long sessions."""
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


def r_customer(rng, d: Draft, ctx: Context) -> None:
    """Who records for whom: the admin naming (or not) a customer, a customer naming another."""
    kind = rng.choice(("admin-names-acme", "admin-names-globex", "admin-names-nobody", "admin-names-unknown",
                       "customer-names-other", "customer-names-self"))
    if kind.startswith("admin"):
        d.who = "admin"
        target = {"admin-names-acme": "acme", "admin-names-globex": "globex", "admin-names-unknown": "initech"}
        if kind in target:
            d.obj["customer"] = target[kind]
        else:
            d.obj.pop("customer", None)
    else:
        if d.who not in ("acme", "globex"):
            d.who = rng.choice(("acme", "globex"))
        d.obj["customer"] = "globex" if d.who == "acme" else "acme"
        if kind == "customer-names-self":
            d.obj["customer"] = d.who
    d.mark(f"record:{kind}", kind)


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


def records_case(rng, route: Route, ctx: Context) -> Draft:
    """A record (or a batch) with one hostile change, sometimes two. Usage is the merchant's to
    report: mostly the admin naming a customer (a customer's own key is a 403 that checks nothing else)."""
    who = rng.choice(("admin", "admin", "admin", "acme", "globex"))
    d = Draft(route=route, method=route.method, path=route.path, who=who, obj=base_record(rng))
    if who == "admin":
        d.obj["customer"] = rng.choice(("acme", "globex"))
    count = 1 if rng.random() < 0.95 else 2
    for _ in range(count):
        _, name, mutate = pick(rng, RECORD_MUTATORS)
        if name == "valid" and d.classes:
            continue
        mutate(rng, d, ctx) if name in ("auth", "customer") else mutate(rng, d)
        if name == "valid" or d.body is not None or not isinstance(d.obj, dict):
            break
    if not d.classes:
        d.mark("record:valid", "a valid record")
    _keep_acme_under_its_cap(d)
    return d


_COSTLY = ("record:quantity", "record:unit_price", "record:type", "record:batch")


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
