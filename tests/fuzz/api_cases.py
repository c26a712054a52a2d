"""What only one API has: Responses chains and stored responses, Gemini's model-and-method path,
and `GET /v1/models/{id}`.

A stored response is forwarded to the provider for its owner only; another customer's id, or
one Payware never saw, is a 404 that reaches no provider. The ids come from `Context`: the
test creates a few responses per customer before the run.
"""

from __future__ import annotations

from urllib.parse import unquote

from tests.fuzz import values as V
from tests.fuzz.cases import Context, Draft
from tests.fuzz.keys import m_auth
from tests.fuzz.routes import MODELS_CHAT, MODELS_GEMINI, MODELS_MESSAGES, Route

# Ids that are not any customer's: odd, long, not UTF-8, NUL, surrogates, path tricks.
HOSTILE_IDS = (
    ("unknown", "resp_0000000000000000000000000000000000000000000000000"), ("empty-ish", "%20"),
    ("NUL", "resp_%00x"), ("non-utf8", "resp_%ff%fe"), ("surrogate", "resp_%ED%A0%80"), ("len-5000", "r" * 5000),
    ("dot-dot", "%2e%2e"), ("slash-encoded", "resp_a%2Fb"), ("query-in-id", "resp_a%3Fx%3D1"),
    ("unicode", "resp_%C3%A9%E4%B8%AD"), ("percent-broken", "resp_%zz"), ("json-ish", "%7B%7D"),
)
# `previous_response_id` / `conversation` values that are no one's.
HOSTILE_CHAIN = (
    ("unknown", "resp_0000000000000000000000000000000000000000000000000"), ("NUL", "resp_\x00"),
    ("surrogate", "resp_\ud800"), ("len-10000", "r" * 10000), ("empty", ""), ("int", 5), ("list", ["resp_x"]),
    ("object", {"id": "resp_x"}), ("null", None), ("true", True),
)


def gemini_path(d: Draft, model_text: str) -> str:
    """The route's path with `model_text` (already fit for a URL) as its model."""
    return d.route.path.replace("{model}", model_text)


def m_chain(rng, d: Draft, ctx: Context) -> None:
    """`previous_response_id`: the caller's own response, another customer's, or no one's; a
    `conversation`; `background: true` (refused: its usage could not be metered)."""
    own = ctx.responses.get(d.who) or []
    other = ctx.responses.get("globex" if d.who == "acme" else "acme") or []
    kind = rng.choice(("own", "own", "other", "hostile", "hostile", "conversation", "both", "background"))
    if kind == "own" and own:
        d.obj["previous_response_id"] = rng.choice(own[:3])
        d.mark("chain:own-previous", "previous_response_id of the caller's own response")
    elif kind == "other" and other:
        d.obj["previous_response_id"] = rng.choice(other)
        d.mark("chain:another-customer's-previous", "previous_response_id of another customer's response")
    elif kind == "conversation":
        value = rng.choice(("conv_123", {"id": "conv_123"}, {"id": "\x00"}, {"x": 1}, "", 7, "c\ud800"))
        d.obj["conversation"] = value
        d.mark("chain:conversation", f"conversation={V.short(value, 30)}")
    elif kind == "both" and own:
        d.obj["previous_response_id"] = own[0]
        d.obj["conversation"] = "conv_123"
        d.mark("chain:previous+conversation", "both previous_response_id and conversation")
    elif kind == "background":
        d.obj["background"] = rng.choice((True, "true", 1))
        d.mark("chain:background", f"background={d.obj['background']!r}")
    else:
        label, value = rng.choice(HOSTILE_CHAIN)
        d.obj["previous_response_id"] = value
        d.mark(f"chain:previous:{label}", f"previous_response_id {label}")


TARGETS = (
    ("no-method", "{model}"), ("empty-method", "{model}:"), ("unknown-method", "{model}:embedContent"),
    ("method-case", "{model}:GenerateContent"), ("two-colons", "{model}:generateContent:x"),
    ("no-model", ":generateContent"), ("resource-name", "models%2F{model}:{method}"),
    ("unknown-model", "gemini-nope:{method}"), ("chat-model", "fake-ok:{method}"),
    ("claude-model", "claude-fake-ok:{method}"), ("NUL", "gem%00ini:{method}"), ("non-utf8", "gem%ffini:{method}"),
    ("surrogate", "gem%ED%A0%80:{method}"), ("dot-dot", "%2e%2e:{method}"), ("long-method", "{model}:" + "m" * 3000),
    ("unicode", "gemini-fake-ok%E2%80%8B:{method}"), ("space", "gemini%20fake:{method}"),
    ("colon-encoded", "{model}%3A{method}"),
)


def m_gemini_target(rng, d: Draft, ctx: Context) -> None:
    """Gemini's `{model}:{method}`: no method, an unknown one, another API's model, NUL, surrogates..."""
    label, template = rng.choice(TARGETS)
    model = rng.choice(MODELS_GEMINI)
    method = d.route.gemini_method
    target = template.replace("{model}", model).replace("{method}", method)
    prefix = d.route.path.split("/models/")[0]
    d.path = f"{prefix}/models/{target}"
    # The model as the proxy reads it (decoded, `models/` dropped): where a served call goes upstream
    name, _, _ = unquote(target, errors="surrogateescape").rpartition(":")
    d.model = name.removeprefix("models/")
    d.mark(f"target:{label}", f".../models/{target[:60]}")


# -------------------------------------------------------------------------- stored responses

QUERY_VALUES = (("NUL", "%00"), ("non-utf8", "%ff"), ("surrogate", "%ED%A0%80"), ("huge", "9" * 30),
                ("negative", "-1"), ("zero", "0"), ("word", "abc"), ("long", "x" * 3000), ("empty", ""),
                ("valid", "2"))


def stored_case(rng, route: Route, ctx: Context) -> Draft:
    """A stored response's route: the caller's own id (forwarded), another's (404), or no one's."""
    who = rng.choice(("acme", "globex"))
    d = Draft(route=route, method=route.method, path=route.path, who=who, content_type=None)
    own = ctx.responses.get(who) or []
    other = ctx.responses.get("globex" if who == "acme" else "acme") or []
    roll = rng.random()
    # NOTE: only the last of each customer's responses is ever deleted (by any method: a mutation may
    # turn a GET into a DELETE), and the first is left alone for `phases.key_probe`
    candidates = own[-1:] if route.method == "DELETE" else own[1:-1]
    if roll < 0.45 and candidates:
        rid, klass = rng.choice(candidates), "stored:own"
    elif roll < 0.6 and other:
        rid, klass = rng.choice(other), "stored:another-customer's"
    elif roll < 0.85:
        label, rid = rng.choice(HOSTILE_IDS)
        klass = f"stored:id:{label}"
    else:
        rid = rng.choice(candidates) if candidates else "resp_x"
        klass = _stored_mutation(rng, d, ctx)
    owner = next((customer for customer, ids in ctx.responses.items() if rid in ids), None)
    d.path = route.path.replace("{id}", rid)
    d.upstream_path = route.upstream.replace("{id}", rid) if owner else None
    d.owner = owner
    if route.query and rng.random() < 0.5:
        name = rng.choice(route.query + ("key", "x_unknown"))
        label, value = rng.choice(QUERY_VALUES)
        d.query = f"?{name}={value}"
        klass = klass if klass != "stored:own" else f"stored:own+query:{name}:{label}"
    if route.method == "POST" and rng.random() < 0.5:
        d.body = rng.choice((b"{}", b"", b"\xff\xfe", b"[" * 5000, b'{"x":"\\ud800"}'))
        d.content_type = b"application/json"
    d.mark(klass, f"{route.method} {d.path[:70]} (owner {owner})")
    return d


def _stored_mutation(rng, d: Draft, ctx: Context) -> str:
    """The caller's own id with a hostile key, method or header."""
    kind = rng.choice(("auth", "auth", "method", "admin-key", "header"))
    if kind == "method" and d.path.count("/") == 3:  # /v1/responses/{id}: DELETE would take it away
        kind = "header"
    if kind == "auth":
        m_auth(rng, d, ctx)
        d.notes.pop()
        return "stored:" + d.classes.pop()
    if kind == "method":
        d.method = rng.choice([m for m in ("GET", "POST", "PUT", "DELETE", "PATCH") if m != d.route.method])
        return f"stored:method:{d.method}"
    if kind == "admin-key":
        d.who = "admin"
        return "stored:admin-key"
    d.headers.append((b"X-Payware-Session", b"\xff" * 300))
    return "stored:header-non-utf8"


# -------------------------------------------------------------------------- GET /v1/models/{id}

MODEL_IDS = (
    ("served", "fake-ok"), ("served-other-api", "claude-fake-ok"), ("served-gemini", "gemini-fake-ok"),
    ("unknown", "gpt-nope"), ("NUL", "fake%00ok"), ("non-utf8", "fake%ff"), ("surrogate", "fake%ED%A0%80"),
    ("len-5000", "m" * 5000), ("slash", "a/b/c"), ("dot-dot", "../../v1/usage/summary"),
    ("gemini-target", "gemini-fake-ok:generateContent"), ("unicode", "%E2%80%8Bfake-ok"),
)


def model_id_case(rng, route: Route, ctx: Context) -> Draft:
    """`GET /v1/models/{id}`: a model the key may use, another API's, unknown or hostile ids, any key."""
    label, name = rng.choice(MODEL_IDS + (("served-chat", rng.choice(MODELS_CHAT)),
                                          ("served-claude", rng.choice(MODELS_MESSAGES))))
    who = rng.choice(("acme", "globex", "acme", "admin", "none", "wrong"))
    d = Draft(route=route, method=route.method, path=route.path.replace("{id}", name), who=who, content_type=None,
              key_at=rng.choice(("bearer", "bearer", "x-api-key", "x-goog-api-key", "query")))
    d.mark(f"model-id:{label}" + ("" if who in ("acme", "globex") else f":as-{who}"), f"/v1/models/{name[:40]}")
    return d
