"""The unit of the fuzzer: a Case (exact bytes, class of input, note) and the Draft that builds it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tests.fuzz import values as V
from tests.fuzz.routes import Route
from tests.fuzz.wire import Headers, request_bytes

MISSING = object()
BODY_LIMIT = 1024 * 1024  # the proxy's server.max_body_bytes in the fuzz config


@dataclass
class Case:
    """One request of the run: its exact bytes, and what the judge needs to know about it."""

    n: int
    route: str  # Route.label, "<METHOD> (unknown path)" or "(malformed HTTP)"
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
    """The Authorization value(s) of a caller: a customer, the admin, nobody, or a wrong key."""
    if who == "none":
        return []
    key = keys.get(who, "pw-wrong-key-000000")
    return [b"Bearer " + key.encode()]


def finish(n: int, d: Draft, keys: dict[str, str], family: str) -> Case:
    """Freeze a draft into case number `n`."""
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


def pick(rng, table):
    """One entry of a table of (weight, ...) rows, by weight."""
    total = sum(w for w, *_ in table)
    roll = rng.uniform(0, total)
    for entry in table:
        roll -= entry[0]
        if roll <= 0:
            return entry
    return table[-1]
