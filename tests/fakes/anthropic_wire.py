"""The fake provider's Anthropic Messages wire: `POST /v1/messages` (streamed and not) and
`POST /v1/messages/count_tokens`, byte for byte as api.anthropic.com answers.

The scenario is the request's `model` (see SCENARIOS; an unknown name acts as `claude-fake-ok`).
The wire, as Anthropic sends it (public captures of the real API, 2025-2026):

- a Message is compact JSON, `model` first: {"model","id","type","role","content","stop_reason",
  "stop_sequence","usage"}; usage {input_tokens, cache_creation_input_tokens, cache_read_input_tokens,
  cache_creation: {ephemeral_5m_input_tokens, ephemeral_1h_input_tokens}, output_tokens, service_tier}.
  `input_tokens` excludes cache reads and writes.
- a stream is named events, `event: NAME\\ndata: JSON\\n\\n`: message_start (the Message, empty
  content, `output_tokens` 1), content_block_start, ping (`{"type": "ping"}`, the one event with
  spaces), content_block_delta..., content_block_stop, message_delta (stop_reason and the
  cumulative usage: each field's last value wins, never a sum), message_stop. No [DONE].
- the API pads most events' JSON with 0-15 spaces before its last `}` (seen in every capture
  since 2025; presumably against length side channels): the fake pads deterministically.
- a thinking answer's usage adds `output_tokens_details: {thinking_tokens}` (part of `output_tokens`).
- errors: `{"type":"error","error":{"type","message"},"request_id"}` with a `request-id` header;
  mid-stream as `event: error` (its `error` starts with `"details":null`), then the body ends.

Scenarios: `claude-fake-ok`; `-cache` (cache reads and both 5-minute and 1-hour cache writes);
`-thinking` (a thinking block with its signature, then text); `-cut` (the connection drops after two
text deltas; not streamed: dropped with no answer); `-slow` (200 deltas, SLOW_DELAY_MS apart or
`x-fake-delay-ms`); `-overloaded` (529); `-error-400`; `-error-midstream` (two deltas, then
`event: error`; not streamed: a 529); `-packed` (PACKED_EVENTS_PER_WRITE events per network write
and CRLF line ends: not what Anthropic sends, a framing robustness case).
`stream_events` / `stream_bytes` give the exact bytes of each scenario's stream.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from tests.fakes.common import CUT_AFTER_WORDS, SLOW_WORDS, compact, drop, handler, slow_delay, write_stream

MESSAGE_ID = "msg_01FakeAnthropicMsg0000001"
REQUEST_ID = "req_011CFakeAnthropicRequest01"
WORDS = ["Hello", " from", " fake", " Claude", "."]
REPLY = "".join(WORDS)
THINKING = ["The user says hi.", " A short greeting", " is enough."]
SIGNATURE = "EqQBCkYIBRgCKkBfakeSignatureOfTheThinkingBlock0123456789abcdefABCDEF=="
PACKED_EVENTS_PER_WRITE = 3  # `claude-fake-packed` sends this many events in one network write

# The usage each scenario reports (the final, cumulative values): tests assert these exactly.
INPUT_TOKENS = 25
OUTPUT_TOKENS = 12
CACHE_INPUT_TOKENS = 9  # claude-fake-cache: the uncached part after the last cache breakpoint
CACHE_READ_TOKENS = 2048
CACHE_WRITE_5M_TOKENS = 1024
CACHE_WRITE_1H_TOKENS = 512
THINKING_INPUT_TOKENS = 40
THINKING_OUTPUT_TOKENS = 96  # thinking included
THINKING_TOKENS = 70
SLOW_OUTPUT_TOKENS = len(SLOW_WORDS)
COUNT_TOKENS = 14  # what /v1/messages/count_tokens answers

SCENARIOS = ("claude-fake-ok", "claude-fake-cache", "claude-fake-thinking", "claude-fake-cut", "claude-fake-slow",
             "claude-fake-overloaded", "claude-fake-error-400", "claude-fake-error-midstream", "claude-fake-packed")

OVERLOADED = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}, "request_id": REQUEST_ID}
MIDSTREAM_ERROR = {"type": "error", "error": {"details": None, "type": "overloaded_error", "message": "Overloaded"},
                   "request_id": REQUEST_ID}
INVALID = {"type": "error", "error": {"type": "invalid_request_error", "message": "max_tokens: Field required"},
           "request_id": REQUEST_ID}


def usage(scenario: str) -> dict:
    """The final usage of `scenario` (a Message's `usage`, and what message_delta ends with)."""
    cache_read = CACHE_READ_TOKENS if scenario == "claude-fake-cache" else 0
    write_5m = CACHE_WRITE_5M_TOKENS if scenario == "claude-fake-cache" else 0
    write_1h = CACHE_WRITE_1H_TOKENS if scenario == "claude-fake-cache" else 0
    output = {"claude-fake-thinking": THINKING_OUTPUT_TOKENS, "claude-fake-slow": SLOW_OUTPUT_TOKENS}
    result = {"input_tokens": _input_tokens(scenario), "cache_creation_input_tokens": write_5m + write_1h,
              "cache_read_input_tokens": cache_read,
              "cache_creation": {"ephemeral_5m_input_tokens": write_5m, "ephemeral_1h_input_tokens": write_1h},
              "output_tokens": output.get(scenario, OUTPUT_TOKENS), "service_tier": "standard"}
    if scenario == "claude-fake-thinking":
        result["output_tokens_details"] = {"thinking_tokens": THINKING_TOKENS}
    return result


def _input_tokens(scenario: str) -> int:
    return {"claude-fake-cache": CACHE_INPUT_TOKENS, "claude-fake-thinking": THINKING_INPUT_TOKENS}.get(
        scenario, INPUT_TOKENS)


def _words(scenario: str) -> list[str]:
    if scenario == "claude-fake-slow":
        return SLOW_WORDS
    if scenario in ("claude-fake-cut", "claude-fake-error-midstream"):
        return WORDS[:CUT_AFTER_WORDS]
    return WORDS


def message(scenario: str, model: str) -> dict:
    """The non-streamed Message of `scenario`."""
    content = [{"type": "text", "text": "".join(_words(scenario))}]
    if scenario == "claude-fake-thinking":
        content.insert(0, {"type": "thinking", "thinking": "".join(THINKING), "signature": SIGNATURE})
    return {"model": model, "id": MESSAGE_ID, "type": "message", "role": "assistant", "content": content,
            "stop_reason": "end_turn", "stop_sequence": None, "usage": usage(scenario)}


def _start_usage(scenario: str) -> dict:
    """message_start's usage: the input side in full, output_tokens 1 (as Anthropic reports it)."""
    start = usage(scenario)
    start.pop("output_tokens_details", None)
    return {**start, "output_tokens": 1}


def _delta_usage(scenario: str) -> dict:
    """message_delta's cumulative usage: input fields repeated, output final."""
    final = usage(scenario)
    keys = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens", "output_tokens",
            "output_tokens_details")
    return {key: final[key] for key in keys if key in final}


def stream_events(scenario: str, model: str) -> list[bytes]:
    """The SSE events (one bytes each, pings included) a stream of `scenario` sends, in order."""
    newline = b"\r\n" if scenario == "claude-fake-packed" else b"\n"
    count = 0

    def event(name: str, data: dict) -> bytes:
        nonlocal count
        body = compact(data)
        if name != "error":  # a deterministic stand-in for the API's random padding
            body = body[:-1] + b" " * (count * 7 % 16) + b"}"
        count += 1
        return b"event: " + name.encode() + newline + b"data: " + body + newline * 2

    def ping() -> bytes:
        return b"event: ping" + newline + b'data: {"type": "ping"}' + newline * 2

    start = {"model": model, "id": MESSAGE_ID, "type": "message", "role": "assistant", "content": [],
             "stop_reason": None, "stop_sequence": None, "usage": _start_usage(scenario)}
    events = [event("message_start", {"type": "message_start", "message": start})]
    index = 0
    if scenario == "claude-fake-thinking":
        events.append(event("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {
            "type": "thinking", "thinking": "", "signature": ""}}))
        events.append(ping())
        for piece in THINKING:
            events.append(_delta(event, 0, {"type": "thinking_delta", "thinking": piece}))
        events.append(_delta(event, 0, {"type": "signature_delta", "signature": SIGNATURE}))
        events.append(event("content_block_stop", {"type": "content_block_stop", "index": 0}))
        index = 1
    events.append(event("content_block_start", {"type": "content_block_start", "index": index,
                                                "content_block": {"type": "text", "text": ""}}))
    if index == 0:
        events.append(ping())
    for word in _words(scenario):
        events.append(_delta(event, index, {"type": "text_delta", "text": word}))
    if scenario == "claude-fake-cut":
        return events
    if scenario == "claude-fake-error-midstream":
        return events + [event("error", MIDSTREAM_ERROR)]
    events.append(event("content_block_stop", {"type": "content_block_stop", "index": index}))
    events.append(event("message_delta", {"type": "message_delta", "delta": {
        "stop_reason": "end_turn", "stop_sequence": None}, "usage": _delta_usage(scenario)}))
    return events + [event("message_stop", {"type": "message_stop"})]


def _delta(event, index: int, delta: dict) -> bytes:
    return event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})


def stream_bytes(scenario: str, model: str) -> list[bytes]:
    """The network writes of a stream of `scenario`: `stream_events`, packed as it does."""
    events = stream_events(scenario, model)
    if scenario == "claude-fake-packed":
        n = PACKED_EVENTS_PER_WRITE
        return [b"".join(events[i:i + n]) for i in range(0, len(events), n)]
    return events


def _error(status: int, body: dict) -> web.Response:
    return web.Response(status=status, body=compact(body), content_type="application/json",
                        headers={"request-id": REQUEST_ID})


async def _messages(request: web.Request, body: dict) -> web.StreamResponse:
    model = str(body.get("model", "claude-fake-ok"))
    scenario = model if model in SCENARIOS else "claude-fake-ok"
    if scenario == "claude-fake-overloaded" or (scenario == "claude-fake-error-midstream" and not body.get("stream")):
        return _error(529, OVERLOADED)
    if scenario == "claude-fake-error-400":
        return _error(400, INVALID)
    if body.get("stream"):
        delay = slow_delay(request) if scenario == "claude-fake-slow" else 0
        return await write_stream(request, stream_bytes(scenario, model), delay=delay,
                                  cut=scenario == "claude-fake-cut", content_type="text/event-stream; charset=utf-8",
                                  headers={"request-id": REQUEST_ID})
    if scenario == "claude-fake-cut":
        return drop(request)
    if scenario == "claude-fake-slow":
        await asyncio.sleep(slow_delay(request) * 10)
    return web.Response(body=compact(message(scenario, model)), content_type="application/json",
                        headers={"request-id": REQUEST_ID})


async def _count_tokens(request: web.Request, body: dict) -> web.Response:
    return web.Response(body=compact({"input_tokens": COUNT_TOKENS}), content_type="application/json",
                        headers={"request-id": REQUEST_ID})


def add_routes(app: web.Application, stats_key: web.AppKey) -> None:
    """Serve Anthropic's Messages routes on `app`, recording into `app[stats_key]`."""
    app.router.add_post("/v1/messages", handler(stats_key, _messages))
    app.router.add_post("/v1/messages/count_tokens", handler(stats_key, _count_tokens))
