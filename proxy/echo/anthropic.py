"""The echo model on Anthropic's Messages wire: `POST /v1/messages` (streamed or not) and
`POST /v1/messages/count_tokens`.

It answers with the last user message's text, as a Message or as Anthropic's named events
(message_start, content_block_start, ping, content_block_delta..., content_block_stop,
message_delta with the cumulative usage, message_stop), so an app on the `anthropic` SDK can
try Payware with no provider account. Usage is tiktoken's (o200k_base) count of the prompt's
texts plus the fixed costs of images, documents and tools that Payware's estimate uses
(`proxy.formats.anthropic_messages.prompt_parts`), and of the reply; count_tokens answers
the same input count. Errors are in Anthropic's envelope.
"""

from __future__ import annotations

import json
import secrets

from aiohttp import web

from metering.usage.tokens import count_text, encoding_for
from proxy.formats.anthropic_messages import anthropic_envelope, prompt_parts

_ENCODING_MODEL = "gpt-4o"  # any o200k_base model, as the OpenAI echo counts


def _bad_request(message: str) -> web.Response:
    return web.json_response(anthropic_envelope(400, message), status=400)


async def _body(request: web.Request, *, generate: bool) -> dict | web.Response:
    """The JSON body, or a 400 in Anthropic's envelope naming what is wrong."""
    try:
        body = await request.json()
    except ValueError:
        return _bad_request("There was an issue with the request body: it is not valid JSON.")
    if not isinstance(body, dict):
        return _bad_request("The request body must be a JSON object.")
    if not isinstance(body.get("model"), str) or not body["model"]:
        return _bad_request("model: Field required")
    if not isinstance(body.get("messages"), list):
        return _bad_request("messages: Field required")
    if generate:
        limit = body.get("max_tokens")
        if type(limit) is not int or limit < 1:
            return _bad_request("max_tokens: Field required (an integer >= 1)")
    return body


def _input_tokens(body: dict) -> int:
    texts, fixed = prompt_parts(body)
    return sum(count_text(text, _ENCODING_MODEL) for text in texts) + fixed


def _last_user_text(messages: list) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                return "".join(b["text"] for b in content
                               if isinstance(b, dict) and b.get("type") == "text" and isinstance(b.get("text"), str))
            return content if isinstance(content, str) else ""
    return ""


def _reply(body: dict) -> tuple[list[str], int, str]:
    """The reply's text pieces (one per token, a split character kept whole), its token count
    and the stop reason (`max_tokens` when the reply was cut to the request's limit)."""
    encoding = encoding_for(_ENCODING_MODEL)
    tokens = encoding.encode_ordinary(_last_user_text(body["messages"]))
    stop = "end_turn"
    if len(tokens) > body["max_tokens"]:
        tokens, stop = tokens[:body["max_tokens"]], "max_tokens"
    pieces, pending = [], b""
    for token in tokens:
        pending += encoding.decode_single_token_bytes(token)
        try:
            pieces.append(pending.decode())
        except UnicodeDecodeError:
            continue
        pending = b""
    if pending:
        pieces.append(pending.decode(errors="replace"))
    return pieces, len(tokens), stop


def _usage(input_tokens: int, output_tokens: int) -> dict:
    return {"input_tokens": input_tokens, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
            "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
            "output_tokens": output_tokens, "service_tier": "standard"}


def _event(name: str, data: dict) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


async def _messages(request: web.Request) -> web.StreamResponse:
    body = await _body(request, generate=True)
    if isinstance(body, web.Response):
        return body
    pieces, output_tokens, stop = _reply(body)
    input_tokens = _input_tokens(body)
    message = {"model": body["model"], "id": "msg_echo" + secrets.token_hex(12), "type": "message",
               "role": "assistant", "content": [{"type": "text", "text": "".join(pieces)}], "stop_reason": stop,
               "stop_sequence": None, "usage": _usage(input_tokens, output_tokens)}
    if not body.get("stream"):
        return web.json_response(message)
    start = {**message, "content": [], "stop_reason": None, "usage": _usage(input_tokens, min(output_tokens, 1))}
    events = [_event("message_start", {"type": "message_start", "message": start}),
              _event("content_block_start", {"type": "content_block_start", "index": 0,
                                             "content_block": {"type": "text", "text": ""}}),
              b'event: ping\ndata: {"type": "ping"}\n\n']
    events += [_event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                              "delta": {"type": "text_delta", "text": piece}}) for piece in pieces]
    events += [_event("content_block_stop", {"type": "content_block_stop", "index": 0}),
               _event("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
                                        "usage": {"input_tokens": input_tokens, "cache_creation_input_tokens": 0,
                                                  "cache_read_input_tokens": 0, "output_tokens": output_tokens}}),
               _event("message_stop", {"type": "message_stop"})]
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                           "Cache-Control": "no-cache"})
    await response.prepare(request)
    for event in events:
        await response.write(event)
    await response.write_eof()
    return response


async def _count_tokens(request: web.Request) -> web.Response:
    body = await _body(request, generate=False)
    if isinstance(body, web.Response):
        return body
    return web.json_response({"input_tokens": _input_tokens(body)})


def add_routes(app: web.Application) -> None:
    """Serve the echo model's Anthropic Messages routes on `app` (the echo server's app)."""
    app.router.add_post("/v1/messages", _messages)
    app.router.add_post("/v1/messages/count_tokens", _count_tokens)
