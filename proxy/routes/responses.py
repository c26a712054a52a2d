"""The Responses API's routes: create (metered), and the stored responses, for their owner only.

Every response created through Payware is recorded with its customer, its provider and its
context (input + output tokens: what the provider bills again as input when the response is
continued with `previous_response_id`). A continued call is reserved for that context on top
of its own input, so a hard cap holds under chains; an id another customer created, or one
Payware never saw, is a 404 that reaches no provider. The same goes for reading, deleting,
listing the input items of, and cancelling a response.

`conversation` ids are refused the same way: Payware does not proxy the Conversations API, so
no conversation can belong to a customer yet.

A response's owner is read off its call's usage event (`metering.store.owned`): written with
the event's ledger batch, answered for by the recorder until then, so creating one waits for
no database. Proxies that share their counters (Redis) share a ledger: an id this proxy has
not seen may be another's, which that proxy announced in Redis before its answer was sent
(`metering.store.owned_redis`), so one look there and one in the ledger answer at once. Only
while Redis does not answer is the ledger asked again for up to ~0.8 s before the 404 (the
other proxy then writes its batch within `OWNED_FLUSH`). A proxy on in-process counters is
alone and answers at once.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from metering.limits.outages import counters_down
from metering.store.owned import STORED, Owned
from proxy.appkeys import GATE, LIVE, RECORDER, UPSTREAM_CLIENT, UPSTREAMS
from proxy.auth import Caller
from proxy.calls import model_call
from proxy.errors import ENVELOPE, InvalidRequest, NotFound
from proxy.formats.openai_responses import RESPONSES, conversation_id
from proxy.jsonbody import parse_json, read_body
from proxy.providers.upstream import forward, outgoing_headers


async def create_response(request: web.Request) -> web.StreamResponse:
    """`POST /v1/responses`, streamed or not."""
    request[ENVELOPE] = RESPONSES.error_body
    return await model_call(request, RESPONSES, before=_chain, evidence=_stored)


async def _chain(app: web.Application, caller: Caller, body: dict) -> int:
    """The context tokens the provider will bill again; 404 for an id that is not the caller's."""
    previous = body.get("previous_response_id")
    conversation = conversation_id(body)
    if conversation is not None:
        raise NotFound(f"Conversation with id '{conversation}' not found.", param="conversation",
                       code="conversation_not_found")
    if previous is None:
        return 0
    owned = await _owned(app, previous, caller)
    model = app[LIVE].config.models.get(body.get("model")) if isinstance(body.get("model"), str) else None
    if model is not None and model.provider != owned.provider:
        raise InvalidRequest(f"response '{previous}' was created by provider {owned.provider!r}; continue it "
                             "with a model of that provider", param="previous_response_id")
    return owned.context_tokens


def _stored(body: dict) -> dict:
    """The event's note that the provider keeps no response to own (`store: false`)."""
    return {STORED: False} if body.get("store") is False else {}


# Pauses between looks for an id another proxy may be writing, when Redis cannot say (~0.8 s in
# all: its batch is then due within OWNED_FLUSH, and takes a write; a busy ledger takes longer).
_MISS_PAUSES = (0.02, 0.05, 0.1, 0.2, 0.4)


async def _owned(app: web.Application, response_id: str, caller: Caller,
                 param: str | None = "previous_response_id") -> Owned:
    owned = await _owner(app, response_id, caller.customer.id)
    if owned is None or owned.kind != "response" or owned.customer != caller.customer.id:
        # NOTE: the same answer whether the id exists for another customer or not at all
        raise NotFound(f"Response with id '{response_id}' not found.", param=param, code="response_not_found")
    return owned


async def _owner(app: web.Application, object_id: str, customer: str) -> Owned | None:
    """Who owns `object_id`: this proxy's recorder, else what the other proxies announced for
    `customer` and their ledger batches do not hold yet (`metering.store.owned_redis`), else the
    ledger; with no answer from Redis, the ledger again for a while (another proxy's batch,
    written at once then, may be on its way)."""
    recorder, loop = app[RECORDER], asyncio.get_running_loop()
    owned = recorder.owner(object_id)
    if owned is not None:
        return owned
    pauses = _MISS_PAUSES if app[GATE].remote else ()
    if recorder.owners is not None:
        try:
            owned = await recorder.owners.lookup(customer, object_id)
        except counters_down():
            pass
        else:
            if owned is not None:
                return owned
            pauses = ()  # every proxy's object is announced before its answer is sent, or in the ledger
    for pause in (0.0, *pauses):
        if pause:
            await asyncio.sleep(pause)
        owned = recorder.owner(object_id) or await loop.run_in_executor(None, recorder.ledger.owned, object_id)
        if owned is not None:
            return owned
    return None


def _stored_route(method: str, suffix: str = "", *, on_success=None):
    """A route on one stored response (`/v1/responses/{id}` + `suffix`), for its owner only."""

    async def handler(request: web.Request) -> web.Response:
        app = request.app
        caller = app[LIVE].keyring.customer(request)
        response_id = request.match_info["id"]
        owned = await _owned(app, response_id, caller, param=None)
        provider = app[LIVE].config.providers.get(owned.provider)
        if provider is None:
            raise NotFound(f"Response with id '{response_id}' not found.", code="response_not_found")
        body = await read_body(request) if method == "POST" else None
        if body and body.strip():
            parse_json(body)  # a body that is not JSON fails here, before the provider is called
        # NOTE: every pair kept (`include` may repeat), but a Payware key given as ?key= never goes on
        params = [(name, value) for name, value in request.query.items() if name != "key"]
        response = await forward(app[UPSTREAM_CLIENT], method, f"{app[UPSTREAMS][provider.name]}/responses/{response_id}{suffix}",
                                 headers=outgoing_headers(provider), provider=provider, fmt=RESPONSES,
                                 params=params, body=body)
        if on_success is not None and response.status < 300:
            await on_success(app, owned)
        return response

    return handler


async def _disown(app: web.Application, owned: Owned) -> None:
    recorder = app[RECORDER]
    if recorder.owner(owned.id) is not None:
        await recorder.flush()  # NOTE: first, or its batch would write the row again after the DELETE
    await asyncio.get_running_loop().run_in_executor(None, recorder.ledger.disown, owned.id)
    if recorder.owners is not None:  # announced by another proxy whose batch is not written yet
        try:
            await recorder.owners.withdraw([owned])
        except counters_down():
            pass  # it expires (owned_redis.TTL); the provider has deleted the response meanwhile


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/responses", create_response)
    app.router.add_get("/v1/responses/{id}", _stored_route("GET"))
    app.router.add_delete("/v1/responses/{id}", _stored_route("DELETE", on_success=_disown))
    app.router.add_get("/v1/responses/{id}/input_items", _stored_route("GET", "/input_items"))
    app.router.add_post("/v1/responses/{id}/cancel", _stored_route("POST", "/cancel"))
