"""The unit of the fuzzer: a Case (exact bytes, class of input, note) and the Draft that builds it.

`Context` is what the generators may use besides the seed: the keys, and what the running
proxy made before the run (stored responses, web sessions). The same seed makes the same
choices; only those server-made values (ids, cookies) differ from one run to the next.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tests.fuzz import values as V
from tests.fuzz.routes import UPSTREAM_NAMES, Route
from tests.fuzz.wire import Headers, request_bytes

MISSING = object()
BODY_LIMIT = 1024 * 1024  # the proxy's server.max_body_bytes in the fuzz config
HOST_MARK = b"{host}"  # in a header value: the proxy's own host and port, filled in on the wire (Origin)


@dataclass
class Session:
    """A web face's session: its cookie line's value and the CSRF token its page carries."""

    cookie: bytes
    csrf: str


@dataclass
class Context:
    """What the generators draw on besides the seed."""

    keys: dict[str, str]  # acme, globex, admin
    responses: dict[str, list[str]] = field(default_factory=dict)  # customer -> ids of its stored responses
    portal: dict[str, Session] = field(default_factory=dict)  # customer -> its portal session
    console: Session | None = None  # the operator's console session
    key_ids: dict[str, str] = field(default_factory=dict)  # customer -> the id of its key of the config file


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
    upstream_path: str | None = None  # where the fake provider counts the call this case may cause
    model: Any = None
    stream: bool = False
    envelope: str = "openai"
    data: bytes | None = None  # raw cases: the exact bytes on the wire
    raw: bool = False  # malformed HTTP: must get a 400 and no key back
    expect: tuple[int, ...] = ()  # raw cases: the acceptable statuses
    owner: str | None = None  # stored responses: the customer whose response the path names

    def wire(self, port: int) -> bytes:
        if self.data is not None:
            return self.data
        host = b"127.0.0.1:%d" % port
        headers = [(name, value.replace(HOST_MARK, host)) for name, value in self.headers]
        return request_bytes(self.method, self.target, headers, self.body, port=port)

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
    # Key positions and raw values overriding `who` (several: several lines); "query": a raw ?key= value
    auth: list[tuple[str, bytes]] | None = None
    key_at: str = "bearer"  # where `who`'s key goes when `auth` is None
    content_type: bytes | None = b"application/json"
    classes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    model: Any = MISSING  # a model named in the path (Gemini), else the body's
    upstream_path: str | None = None  # overrides the route's (stored responses: the id's path)
    owner: str | None = None
    envelope: str | None = None  # overrides the route's (another method may reach another API's route)

    def mark(self, klass: str, note: str) -> None:
        self.classes.append(klass)
        self.notes.append(note)


_HEADER_OF = {"bearer": b"Authorization", "x-api-key": b"x-api-key", "x-goog-api-key": b"x-goog-api-key"}


def key_lines(auth: list[tuple[str, bytes]]) -> tuple[Headers, list[bytes]]:
    """Key positions as header lines and `key=` query values (raw, already percent-encoded)."""
    headers, query = [], []
    for where, value in auth:
        if where == "query":
            query.append(value)
        elif where == "bearer":
            headers.append((b"Authorization", value))
        else:
            headers.append((_HEADER_OF[where], value))
    return headers, query


def caller_key(who: str, keys: dict[str, str], key_at: str) -> list[tuple[str, bytes]]:
    """A caller's key in one position: a customer, the admin, nobody, or a wrong key."""
    if who == "none":
        return []
    key = keys.get(who, "pw-wrong-key-000000").encode()
    return [(key_at, b"Bearer " + key if key_at == "bearer" else key)]


def finish(n: int, d: Draft, keys: dict[str, str], family: str) -> Case:
    """Freeze a draft into case number `n`."""
    auth = d.auth if d.auth is not None else caller_key(d.who, keys, d.key_at)
    headers, key_query = key_lines(auth)
    if d.content_type is not None and (d.body is not None or d.obj is not MISSING):
        headers.append((b"Content-Type", d.content_type))
    headers += d.headers
    body = d.body if d.body is not None else (V.dumps(d.obj) if d.obj is not MISSING else None)
    obj = d.obj if isinstance(d.obj, dict) else {}
    model = d.model if d.model is not MISSING else obj.get("model")
    query = d.query
    for value in key_query:
        query += ("&" if query else "?") + "key=" + value.decode("latin-1")
    # A combination is one class: its parts would each make a row of their own in the table.
    klass = d.classes[0] if len(d.classes) == 1 else "combination" if d.classes else "valid"
    note = "; ".join(d.notes) or "valid"
    if len(d.classes) > 1:
        note = f"[{' + '.join(d.classes)}] {note}"
    same_method = d.method == d.route.method
    upstream = d.upstream_path or d.route.upstream
    if upstream and "{model}" in upstream:
        upstream = upstream.replace("{model}", UPSTREAM_NAMES.get(model, model) if isinstance(model, str) else "?")
    return Case(n=n, route=d.route.label, klass=klass, method=d.method, target=d.path + query, who=d.who,
                headers=headers, body=body, note=note, family=family,
                endpoint=d.route.endpoint if same_method else None,
                # a stored response's path is forwarded by every method it has a route for
                upstream_path=upstream if same_method or d.upstream_path else None,
                model=model, stream=obj.get("stream") is True, envelope=d.envelope or d.route.envelope,
                owner=d.owner)


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
