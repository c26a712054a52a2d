"""The fake provider's OpenAI Responses wire: `POST /v1/responses` (streamed and not), the stored
responses (`GET`/`DELETE /v1/responses/{id}`, `…/input_items`, `POST …/cancel`), `previous_response_id`
chains, `background: true`, and `GET /v1/models/{id}`, byte for byte as api.openai.com answers.

The scenario is the request's `model` (see SCENARIOS; an unknown name acts as `responses-fake-ok`).
The wire, as OpenAI sends it (public captures of the real API, 2025 to January 2026):

- a whole Response is JSON indented by 2; an error is OpenAI's envelope indented by 4.
- a stream is named events, `event: TYPE\\ndata: JSON\\n\\n`, each JSON compact, `type` first and
  the other keys in alphabetical order, `sequence_number` counting from 0: response.created,
  response.in_progress, response.output_item.added (a reasoning item first when the model
  reasoned), response.content_part.added, response.output_text.delta... (each with `obfuscation`
  padding delta + obfuscation to 16 characters), response.output_text.done,
  response.content_part.done, response.output_item.done, then one terminal event holding the
  whole Response with its usage: response.completed, response.incomplete or response.failed.
  No [DONE]. `service_tier` is "auto" while in progress and "default" once done.
- usage {input_tokens, input_tokens_details {cached_tokens}, output_tokens, output_tokens_details
  {reasoning_tokens}, total_tokens}; a `previous_response_id` makes the provider bill the chain: the
  fake's input_tokens then add the previous response's input and output tokens.

Scenarios: `responses-fake-ok` (a reasoning item, then the message); `-incomplete` (stops at
max_output_tokens: response.incomplete); `-failed` (two deltas, then response.failed with its
usage; not streamed: a 500); `-cut` (the connection drops after two deltas, no usage; not
streamed: dropped with no answer); `-slow` (200 deltas, SLOW_DELAY_MS apart or `x-fake-delay-ms`);
`-error-429`. Every created response is stored unless `store: false`; `background: true` answers
"queued", and the next GET (or cancel) finds it completed (or cancelled).

Simplification: a Response echoes the request's model, previous_response_id, background and store;
its other settings (instructions, tools, metadata, temperature...) are this module's fixed values.
`stream_events` / `stream_bytes` give the exact bytes of each scenario's stream.
"""

from __future__ import annotations

import asyncio
import json

from aiohttp import web

from tests.fakes.common import CUT_AFTER_WORDS, SLOW_WORDS, compact, drop, handler, slow_delay, write_stream

CREATED = 1_768_475_254
WORDS = ["Hello", " from", " fake", " Responses", "."]
REPLY = "".join(WORDS)
OBFUSCATION = "mvkAadOd3983J1LnnINX8UTZOE4wuLRN"

# The usage each scenario reports (without a chain): tests assert these exactly.
INPUT_TOKENS = 21
CACHED_TOKENS = 8
OUTPUT_TOKENS = 9
REASONING_TOKENS = 3
INCOMPLETE_OUTPUT_TOKENS = 16  # responses-fake-incomplete stops at max_output_tokens
INCOMPLETE_REASONING_TOKENS = 14
FAILED_OUTPUT_TOKENS = 5
FAILED_REASONING_TOKENS = 3
SLOW_OUTPUT_TOKENS = len(SLOW_WORDS)

SCENARIOS = ("responses-fake-ok", "responses-fake-incomplete", "responses-fake-failed", "responses-fake-cut",
             "responses-fake-slow", "responses-fake-error-429")
FAILED_ERROR = {"code": "server_error", "message": "The model produced invalid content. Please try again."}

STORE = web.AppKey("responses_store", dict)


def response_id(n: int) -> str:
    """The id of the fake's `n`th created response (as long as OpenAI's: resp_ and 50 hex digits)."""
    return f"resp_0fa4e{n:045x}"


RESPONSE_ID = response_id(0)


def usage(scenario: str, chain_tokens: int = 0) -> dict | None:
    """`scenario`'s usage; `chain_tokens` are the previous responses' tokens billed again as input."""
    if scenario == "responses-fake-cut":
        return None
    tokens = {"responses-fake-incomplete": (INCOMPLETE_OUTPUT_TOKENS, INCOMPLETE_REASONING_TOKENS),
              "responses-fake-failed": (FAILED_OUTPUT_TOKENS, FAILED_REASONING_TOKENS),
              "responses-fake-slow": (SLOW_OUTPUT_TOKENS, 0)}
    output, reasoning = tokens.get(scenario, (OUTPUT_TOKENS, REASONING_TOKENS))
    input_tokens = INPUT_TOKENS + chain_tokens
    return {"input_tokens": input_tokens, "input_tokens_details": {"cached_tokens": CACHED_TOKENS},
            "output_tokens": output, "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": input_tokens + output}


def _words(scenario: str) -> list[str]:
    if scenario == "responses-fake-slow":
        return SLOW_WORDS
    if scenario in ("responses-fake-incomplete", "responses-fake-failed", "responses-fake-cut"):
        return WORDS[:CUT_AFTER_WORDS]
    return WORDS


def _reasons(scenario: str) -> bool:
    return scenario != "responses-fake-slow"


def _final_status(scenario: str) -> str:
    return {"responses-fake-incomplete": "incomplete", "responses-fake-failed": "failed",
            "responses-fake-cut": "in_progress"}.get(scenario, "completed")


def _message(rid: str, status: str, text: str | None) -> dict:
    content = [] if text is None else [{"type": "output_text", "annotations": [], "logprobs": [], "text": text}]
    return {"id": "msg_" + rid[5:], "type": "message", "status": status, "content": content, "role": "assistant"}


def _reasoning(rid: str) -> dict:
    return {"id": "rs_" + rid[5:], "type": "reasoning", "summary": []}


def _output(scenario: str, rid: str) -> list[dict]:
    """The finished output items of `scenario` (a failed response keeps none)."""
    if scenario == "responses-fake-failed":
        return []
    status = "incomplete" if scenario == "responses-fake-incomplete" else "completed"
    items = [_reasoning(rid)] if _reasons(scenario) else []
    return items + [_message(rid, status, "".join(_words(scenario)))]


def response_object(scenario: str, model: str, *, rid: str = RESPONSE_ID, status: str | None = None,
                    previous_response_id: str | None = None, chain_tokens: int = 0, background: bool = False,
                    store: bool = True) -> dict:
    """The Response of `scenario` in `status` (default: its final one), in OpenAI's field order."""
    status = status or _final_status(scenario)
    done = status in ("completed", "incomplete", "failed")
    return {"id": rid, "object": "response", "created_at": CREATED, "status": status, "background": background,
            "completed_at": CREATED + 1 if status == "completed" else None,
            "error": FAILED_ERROR if status == "failed" else None, "frequency_penalty": 0.0,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "instructions": None, "max_output_tokens": None, "max_tool_calls": None, "model": model,
            "output": _output(scenario, rid) if done else [], "parallel_tool_calls": True, "presence_penalty": 0.0,
            "previous_response_id": previous_response_id, "prompt_cache_key": None, "prompt_cache_retention": None,
            "reasoning": {"effort": "medium", "summary": None}, "safety_identifier": None,
            "service_tier": "default" if done else "auto", "store": store, "temperature": 1.0,
            "text": {"format": {"type": "text"}, "verbosity": "medium"}, "tool_choice": "auto", "tools": [],
            "top_logprobs": 0, "top_p": 1.0, "truncation": "disabled",
            "usage": usage(scenario, chain_tokens) if done else None, "user": None, "metadata": {}}


def stream_events(scenario: str, model: str, *, rid: str = RESPONSE_ID, previous_response_id: str | None = None,
                  chain_tokens: int = 0, store: bool = True) -> list[bytes]:
    """The SSE events (one bytes each) a stream of `scenario` sends, in order."""
    events: list[bytes] = []

    def event(kind: str, **fields) -> None:
        data = {"type": kind, **dict(sorted({**fields, "sequence_number": len(events)}.items()))}
        events.append(b"event: " + kind.encode() + b"\ndata: " + compact(data) + b"\n\n")

    def whole(status: str | None = None) -> dict:
        return response_object(scenario, model, rid=rid, status=status, previous_response_id=previous_response_id,
                               chain_tokens=chain_tokens, store=store)

    event("response.created", response=whole("in_progress"))
    event("response.in_progress", response=whole("in_progress"))
    index = 0
    if _reasons(scenario):
        event("response.output_item.added", item=_reasoning(rid), output_index=0)
        event("response.output_item.done", item=_reasoning(rid), output_index=0)
        index = 1
    item_id = "msg_" + rid[5:]
    event("response.output_item.added", item=_message(rid, "in_progress", None), output_index=index)
    part = {"type": "output_text", "annotations": [], "logprobs": [], "text": ""}
    event("response.content_part.added", content_index=0, item_id=item_id, output_index=index, part=part)
    for word in _words(scenario):
        start = len(events) * 5 % 16
        event("response.output_text.delta", content_index=0, delta=word, item_id=item_id, logprobs=[],
              obfuscation=OBFUSCATION[start:start + 16 - len(word) % 16], output_index=index)
    if scenario == "responses-fake-cut":
        return events
    if scenario == "responses-fake-failed":
        event("response.failed", response=whole())
        return events
    text = "".join(_words(scenario))
    event("response.output_text.done", content_index=0, item_id=item_id, logprobs=[], output_index=index, text=text)
    event("response.content_part.done", content_index=0, item_id=item_id, output_index=index,
          part={**part, "text": text})
    status = "incomplete" if scenario == "responses-fake-incomplete" else "completed"
    event("response.output_item.done", item=_message(rid, status, text), output_index=index)
    event(f"response.{status}", response=whole())
    return events


def stream_bytes(scenario: str, model: str, **kwargs) -> list[bytes]:
    """The network writes of a stream of `scenario` (one event each); kwargs as `stream_events`."""
    return stream_events(scenario, model, **kwargs)


def pretty(obj: dict, indent: int = 2) -> bytes:
    """A whole JSON answer as OpenAI writes it (Responses by 2, error envelopes by 4)."""
    return json.dumps(obj, indent=indent).encode()


def _json(obj: dict, status: int = 200, headers: dict | None = None) -> web.Response:
    return web.Response(status=status, body=pretty(obj), content_type="application/json", headers=headers)


def _error(status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
           code: str | None = None, headers: dict | None = None) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return web.Response(status=status, body=pretty(body, 4) + b"\n", content_type="application/json", headers=headers)


def input_items(body: dict, rid: str) -> list[dict]:
    """The request's `input` as the stored input items (a string is one user message)."""
    given = body.get("input", [])
    given = [{"role": "user", "content": given}] if isinstance(given, str) else given
    items = []
    for i, item in enumerate(given if isinstance(given, list) else []):
        if not isinstance(item, dict):
            continue
        item = dict(item)
        if isinstance(item.get("content"), str):
            kind = "output_text" if item.get("role") == "assistant" else "input_text"
            item["content"] = [{"type": kind, "text": item["content"]}]
        if "role" in item:
            item.setdefault("type", "message")
            item.setdefault("status", "completed")
        item.setdefault("id", f"msg_{rid[5:-3]}{i + 1:03x}")
        items.append(item)
    return items


async def _create(request: web.Request, body: dict) -> web.StreamResponse:
    store = request.app[STORE]
    model = str(body.get("model", "responses-fake-ok"))
    scenario = model if model in SCENARIOS else "responses-fake-ok"
    if scenario == "responses-fake-error-429":
        return _error(429, "Rate limit reached for requests. Please try again in 1s.", "requests",
                      code="rate_limit_exceeded", headers={"retry-after": "1"})
    previous = body.get("previous_response_id")
    chain_tokens = 0
    if previous is not None:
        if previous not in store["responses"]:
            return _error(400, f"Previous response with id '{previous}' not found.", param="previous_response_id",
                          code="previous_response_not_found")
        earlier = store["responses"][previous]["final"]["usage"] or {"input_tokens": 0, "output_tokens": 0}
        chain_tokens = earlier["input_tokens"] + earlier["output_tokens"]
    store["count"] += 1
    rid = response_id(store["count"])
    keep = body.get("store") is not False
    background = body.get("background") is True and not body.get("stream")
    settings = {"rid": rid, "previous_response_id": previous, "chain_tokens": chain_tokens}
    final = response_object(scenario, model, background=background, store=keep, **settings)
    if keep:
        store["responses"][rid] = {"final": final, "status": "queued" if background else final["status"],
                                   "input_items": input_items(body, rid)}
    if background:
        return _json(response_object(scenario, model, status="queued", background=True, store=keep, **settings))
    if scenario == "responses-fake-failed" and not body.get("stream"):
        return _error(500, "The server had an error processing your request. Sorry about that!", "server_error",
                      code="server_error")
    if body.get("stream"):
        delay = slow_delay(request) if scenario == "responses-fake-slow" else 0
        pieces = stream_bytes(scenario, model, store=keep, **settings)
        return await write_stream(request, pieces, content_type="text/event-stream; charset=utf-8", delay=delay,
                                  cut=scenario == "responses-fake-cut")
    if scenario == "responses-fake-cut":
        return drop(request)
    if scenario == "responses-fake-slow":
        await asyncio.sleep(slow_delay(request) * 10)
    return _json(final)


def _stored(request: web.Request) -> dict | None:
    return request.app[STORE]["responses"].get(request.match_info["id"])


def _not_found(request: web.Request) -> web.Response:
    return _error(404, f"Response with id '{request.match_info['id']}' not found.")


def _current(entry: dict) -> dict:
    """The stored response as it stands: a queued background response is done once looked at again."""
    if entry["status"] == "queued":
        entry["status"] = entry["final"]["status"]
    if entry["status"] == "cancelled":
        return {**entry["final"], "status": "cancelled", "completed_at": None, "output": [], "usage": None}
    return entry["final"]


async def _retrieve(request: web.Request, body: dict) -> web.Response:
    entry = _stored(request)
    return _not_found(request) if entry is None else _json(_current(entry))


async def _delete(request: web.Request, body: dict) -> web.Response:
    if request.app[STORE]["responses"].pop(request.match_info["id"], None) is None:
        return _not_found(request)
    return _json({"id": request.match_info["id"], "object": "response", "deleted": True})


async def _cancel(request: web.Request, body: dict) -> web.Response:
    entry = _stored(request)
    if entry is None:
        return _not_found(request)
    if not entry["final"]["background"]:
        return _error(400, "Only responses created with background=true can be cancelled.")
    if entry["status"] == "queued":
        entry["status"] = "cancelled"
    return _json(_current(entry))


async def _input_items(request: web.Request, body: dict) -> web.Response:
    entry = _stored(request)
    if entry is None:
        return _not_found(request)
    items = list(entry["input_items"])
    if request.query.get("order", "desc") == "desc":
        items.reverse()
    after = request.query.get("after")
    if after is not None:
        ids = [item["id"] for item in items]
        items = items[ids.index(after) + 1:] if after in ids else []
    limit = int(request.query.get("limit", 20))
    page = items[:limit]
    return _json({"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
                  "last_id": page[-1]["id"] if page else None, "has_more": len(items) > limit})


def add_routes(app: web.Application, stats_key: web.AppKey, *, models: tuple[str, ...] = ()) -> None:
    """Serve the Responses routes and `GET /v1/models/{id}` (for `models` and SCENARIOS) on `app`."""
    app[STORE] = {"count": 0, "responses": {}}
    known = set(models) | set(SCENARIOS)

    async def retrieve_model(request: web.Request, body: dict) -> web.Response:
        name = request.match_info["id"]
        if name not in known:
            return _error(404, f"The model '{name}' does not exist or you do not have access to it.",
                          code="model_not_found")
        return web.Response(body=compact({"id": name, "object": "model", "created": 1_732_000_000, "owned_by": "fake"}),
                            content_type="application/json")

    app.router.add_post("/v1/responses", handler(stats_key, _create))
    app.router.add_get("/v1/responses/{id}", handler(stats_key, _retrieve))
    app.router.add_delete("/v1/responses/{id}", handler(stats_key, _delete))
    app.router.add_get("/v1/responses/{id}/input_items", handler(stats_key, _input_items))
    app.router.add_post("/v1/responses/{id}/cancel", handler(stats_key, _cancel))
    app.router.add_get("/v1/models/{id}", handler(stats_key, retrieve_model))
