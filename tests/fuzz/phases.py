"""The sequential phases that need what an earlier answer made (the concurrent phase is `generators`).

- `key_phase`: a key made at runtime through the admin API, used, rotated with a hostile
  grace, revoked twice, and used again: refused. Its id and key are only known from the
  creation's answer, so the later cases carry NEW_KEY_ID / NEW_KEY and the test fills them in.
- `key_probe`: one valid call of every route that forwards to a provider, with the caller's
  key in each position a key may travel (Bearer, x-api-key, x-goog-api-key, ?key=), sent
  last so that the fake provider's record of its latest requests shows whether any key
  reached it.
"""

from __future__ import annotations

import random

from tests.fuzz.admin_cases import GRACE
from tests.fuzz.apis import APIS
from tests.fuzz.cases import Case, Context, Draft, finish
from tests.fuzz.routes import KEY_POSITIONS, ROUTES, Route

NEW_KEY_ID, NEW_KEY = "{new_key_id}", "{new_key}"  # filled in from the creation's answer


def _route(label: str) -> Route:
    return next(r for r in ROUTES if r.label == label)


def _admin(route: Route, path: str, obj=None, *, klass: str, note: str) -> Draft:
    d = Draft(route=route, method=route.method, path=path, who="admin", content_type=None)
    if obj is not None:
        d.obj, d.content_type = obj, b"application/json"
    d.mark(klass, note)
    return d


def _chat_with_new_key(klass: str, note: str) -> Draft:
    chat = _route("POST /v1/chat/completions")
    d = Draft(route=chat, method="POST", path=chat.path, who="globex",
              obj={"model": "fake-ok", "messages": [{"role": "user", "content": "with a runtime key"}]})
    d.auth = [("bearer", b"Bearer " + NEW_KEY.encode())]
    d.mark(klass, note)
    return d


def key_phase(seed: int, ctx: Context, start: int) -> list[list[Case]]:
    """Per hostile grace: [create a key, call with it, rotate it, revoke it, revoke it again, call: 401]."""
    rng = random.Random(seed + 3)
    create, rotate = _route("POST /v1/admin/customers/{id}/keys"), _route("POST /v1/admin/keys/{key_id}/rotate")
    revoke = _route("DELETE /v1/admin/keys/{key_id}")
    sequences, n = [], start
    for label, grace in GRACE:
        name = f"fz-lifecycle-{rng.randrange(10**6)}"
        drafts = [
            (_admin(create, "/v1/admin/customers/globex/keys", {"name": name},
                    klass="key-phase:create", note=f"a key for globex ({name})"), (201,)),
            (_chat_with_new_key("key-phase:call with the new key", "a call with the key just made"), (200,)),
            (_admin(rotate, f"/v1/admin/keys/{NEW_KEY_ID}/rotate", {"grace_seconds": grace},
                    klass=f"key-phase:rotate grace {label}", note=f"rotate with grace_seconds={grace!r}"), ()),
            (_admin(revoke, f"/v1/admin/keys/{NEW_KEY_ID}", klass="key-phase:revoke", note="revoke the old key"),
             (200,)),
            (_admin(revoke, f"/v1/admin/keys/{NEW_KEY_ID}", klass="key-phase:revoke again",
                    note="revoke it again"), (409,)),
            (_chat_with_new_key("key-phase:call with the revoked key", "a call with the revoked key"), (401,)),
        ]
        sequence = []
        for draft, expect in drafts:
            case = finish(n, draft, ctx.keys, draft.route.family)
            case.expect = expect
            sequence.append(case)
            n += 1
        sequences.append(sequence)
    return sequences


_PROBE_ROUTES = ("POST /v1/chat/completions", "POST /v1/responses", "POST /v1/messages",
                 "POST /v1/messages/count_tokens", "POST /v1beta/models/{model}:generateContent",
                 "POST /v1/models/{model}:countTokens")
_STORED = ("GET /v1/responses/{id}", "GET /v1/responses/{id}/input_items", "POST /v1/responses/{id}/cancel")


def key_probe(ctx: Context, start: int) -> list[Case]:
    """A valid call of each forwarding route with acme's key in each position (all served)."""
    rng = random.Random(0)  # the bodies' optional parts: fixed, these are not hostile
    cases, n = [], start
    for label in _PROBE_ROUTES + _STORED:
        route = _route(label)
        for where in KEY_POSITIONS:
            d = Draft(route=route, method=route.method, path=route.path, who="acme", key_at=where)
            if route.family == "stored":
                rid = ctx.responses["acme"][0]
                d.path, d.owner = route.path.replace("{id}", rid), "acme"
                d.upstream_path = route.upstream.replace("{id}", rid)
                d.content_type = None
            elif route.api == "gemini":
                d.obj, d.model = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}, "gemini-fake-ok"
                d.path = route.path.replace("{model}", "gemini-fake-ok")
            else:
                d.obj = {k: v for k, v in APIS[route.api].base(rng).items() if k not in ("stream", "store")}
            d.mark(f"key-probe:{where}", f"a valid call with the key as {where}")
            case = finish(n, d, ctx.keys, route.family)
            case.expect = (400,) if label.endswith("/cancel") else (200,)  # the fake: only background ones
            cases.append(case)
            n += 1
    return cases
