"""Hostile keys in every position a Payware key may travel: `Authorization: Bearer`, `x-api-key`,
`x-goog-api-key` and `?key=` (each API's SDK uses its own, and Payware takes any of them).

Values are not UTF-8, too long, empty, duplicated, the admin key, a key with junk around it;
combinations put a wrong key in one position and the right one in another (the Bearer
header wins when its scheme is Bearer and it holds a key; else the next position is read).
"""

from __future__ import annotations

from tests.fuzz.cases import Context, Draft
from tests.fuzz.routes import KEY_POSITIONS

# Raw header values, given the key `k` (bytes); for Authorization they follow "Bearer ".
HEADER_VALUES = {
    "non-utf8": lambda k: b"\xff\xfe\xfd", "latin-1-key": lambda k: b"pw-caf\xe9",
    "key+non-utf8": lambda k: k + b"\xff",
    "empty": lambda k: b"", "len-5000": lambda k: b"k" * 5000, "key+junk": lambda k: k + b" junk",
    "spaces-around": lambda k: b"  " + k + b"  ", "utf8-emoji": lambda k: "\U0001f511".encode(),
    "wrong-key": lambda k: b"pw-wrong-key-000000", "key-prefix": lambda k: k[:-1], "key+1": lambda k: k + b"1",
}
# Only in Authorization: the scheme itself.
SCHEMES = {
    "basic": lambda k: b"Basic " + k, "bearer-only": lambda k: b"Bearer", "double-space": lambda k: b"Bearer  " + k,
    "lowercase-scheme": lambda k: b"bearer " + k, "tab": lambda k: b"Bearer\t" + k, "no-scheme": lambda k: k,
}
# Raw `?key=` values (percent-encoded as a client would, or not).
QUERY_VALUES = {
    "non-utf8": lambda k: b"%ff%fe", "latin-1-key": lambda k: b"pw-caf%e9", "key+non-utf8": lambda k: k + b"%ff",
    "empty": lambda k: b"", "len-5000": lambda k: b"k" * 5000, "key+NUL": lambda k: k + b"%00",
    "key+junk": lambda k: k + b"%20junk", "plus-around": lambda k: b"+" + k + b"+",
    "utf8-emoji": lambda k: b"%F0%9F%94%91", "wrong-key": lambda k: b"pw-wrong-key-000000",
    "surrogate": lambda k: k + b"%ED%A0%80", "percent-broken": lambda k: k + b"%z",
}


def m_auth(rng, d: Draft, ctx: Context) -> None:
    """A hostile key in one position, or the right key and a wrong one in two positions."""
    who = rng.choice(("acme", "globex"))
    key = ctx.keys[who].encode()
    d.who = who
    roll = rng.random()
    if roll < 0.2:
        _two_positions(rng, d, key, ctx)
        return
    where = rng.choice(d.route.key_at + KEY_POSITIONS)
    if roll < 0.27:
        d.auth = [(where, _placed(where, key)), (where, _placed(where, b"pw-wrong-key-000000"))]
        order = "right-first"
        if rng.random() < 0.5:
            d.auth.reverse()
            order = "wrong-first"
        d.mark(f"auth:{where}:duplicate-{order}", f"two {where} keys, {order}")
        return
    if roll < 0.32:
        d.auth = [(where, _placed(where, ctx.keys["admin"].encode()))]
        d.who = "admin"
        d.mark(f"auth:{where}:admin-key", f"the admin key as {where}")
        return
    if roll < 0.36:
        d.auth = []
        d.who = "none"
        d.mark("auth:no-key", "no key anywhere")
        return
    if where == "query":
        kind = rng.choice(sorted(QUERY_VALUES))
        d.auth = [("query", QUERY_VALUES[kind](key))]
    elif where == "bearer" and rng.random() < 0.4:
        kind = rng.choice(sorted(SCHEMES))
        d.auth = [("bearer", SCHEMES[kind](key))]
    else:
        kind = rng.choice(sorted(HEADER_VALUES))
        d.auth = [(where, _placed(where, HEADER_VALUES[kind](key)))]
    klass = "non-utf8" if kind in ("non-utf8", "latin-1-key", "key+non-utf8", "surrogate") else kind
    d.mark(f"auth:{where}:{klass}", f"{where} {kind}: {ascii(d.auth[0][1][:40])[2:-1]}")


def _placed(where: str, value: bytes) -> bytes:
    return b"Bearer " + value if where == "bearer" else value


def _two_positions(rng, d: Draft, key: bytes, ctx: Context) -> None:
    """The right key in one position and something else in another, in either order of precedence."""
    first, second = rng.sample(KEY_POSITIONS, 2)
    other = rng.choice((b"pw-wrong-key-000000", b"", b"\xff", ctx.keys["admin"].encode()))
    if first == "query" and other == b"\xff":
        other = b"%ff"
    right_in = rng.choice((first, second))
    d.auth = [(first, _placed(first, key if right_in == first else other)),
              (second, _placed(second, key if right_in == second else other))]
    label = {b"pw-wrong-key-000000": "wrong", b"": "empty", b"\xff": "non-utf8", b"%ff": "non-utf8"}.get(other, "admin")
    d.mark(f"auth:two-positions:{label}", f"the key as {right_in}, {label} as "
                                          f"{second if right_in == first else first}")
