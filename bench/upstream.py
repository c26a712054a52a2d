"""A minimal fixed-answer upstream for the benchmark (bench/run.py starts it).

Canned answers by path (`ROUTES`, and `PREFIXES` for Gemini's model paths), pre-encoded, whatever
the prompt; every API format answers the same reply (38 tokens, 42 prompt tokens) in its
provider's own bytes, as tests/fakes/*_wire.py reproduce them. `POST /v1/chat/completions`:
non-streamed, one realistic `chat.completion` (~750 bytes, usage with both details objects);
streamed, 40 `chat.completion.chunk` events, each its own HTTP chunk and its own `write()`, no
sleeps, then (when `stream_options.include_usage` is true) `"usage":null` on every chunk and a
final usage chunk with `"choices":[]`, then `data: [DONE]`. The reference pass-through
(bench/passthrough.py) and Payware both call it, and the load client calls it directly for the
latency baseline.

It speaks HTTP/1.1 itself over an asyncio protocol (keep-alive, Content-Length request bodies,
answers written from pre-encoded bytes) rather than through aiohttp's server: on 2 cores it
shares a core with the load client while the proxy under test has the other, and the less it
costs, the more surely the proxy is the bottleneck at c=64. To the proxies it looks like any
HTTP/1.1 server: status line, Date, Content-Type, the provider's headers, Content-Length or
chunked.

`POST /v1/responses`: OpenAI's Responses API: one Response (JSON indented by 2), or 46 named events
ending with `response.completed` (the whole Response with its usage), no `[DONE]`; each answer
carries a new response id (Payware records each stored response as its customer's).

`POST /v1/messages`: Anthropic's Messages API (for a `kind: anthropic` provider, and for a
`kind: litellm` provider whose model is `anthropic/…`): a Message, or 44 named events, one
`write()` each, their JSON padded with spaces before the last `}` as Anthropic pads it.

`POST /v1beta/models/{model}:generateContent` (and under `/v1/models/`): Gemini: one answer
(JSON indented by 2); `:streamGenerateContent?alt=sse`: 4 CRLF-framed chunks of several tokens
each, every one with the cumulative `usageMetadata`, the last with `finishReason`, no terminator.

Each format answers with its provider's kind of response headers (OpenAI's, Anthropic's
`request-id`, Google's). A new API format is a function here (request JSON, request target ->
`Answer`) registered in `ROUTES` under its path, plus a row in bench/scenarios.py.

Run: `python bench/upstream.py --port 0` prints `LISTENING http://127.0.0.1:<port>`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from dataclasses import dataclass
from functools import cache

MODEL = "gpt-4o-mini-2024-07-18"
CREATED = 1_741_569_952
COMPLETION_ID = "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT"
FINGERPRINT = "fp_06737a9306"
PROMPT_TOKENS = 42
CACHED_TOKENS = 0
# The streamed reply: 38 content deltas (one token each), plus the role and finish chunks = 40 events.
WORDS = ["Sure", "!", " Here", " is", " a", " short", " answer", ":", " the", " capital", " of", " France",
         " is", " Paris", ",", " which", " is", " also", " its", " largest", " city", ".", " It", " sits",
         " on", " the", " Seine", " river", " and", " is", " known", " for", " the", " Eiffel", " Tower",
         " and", " art", "."]
COMPLETION_TOKENS = len(WORDS)
CONTENT = "".join(WORDS)

USAGE = {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS,
         "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
         "prompt_tokens_details": {"cached_tokens": CACHED_TOKENS, "audio_tokens": 0},
         "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                       "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}

HEADERS = (("openai-version", "2020-10-01"), ("openai-processing-ms", "312"),
           ("x-request-id", "req_0123456789abcdef0123456789abcdef"))
ANTHROPIC_HEADERS = (("request-id", "req_011CVbenchAnthropicRequest0001"),
                     ("anthropic-organization-id", "3e4f5a6b-0c1d-4e2f-8a9b-0c1d2e3f4a5b"), ("via", "1.1 google"))
GOOGLE_HEADERS = (("Vary", "Origin, X-Origin, Referer"), ("Server-Timing", "gfet4t7; dur=412"),
                  ("X-Content-Type-Options", "nosniff"))


def _dump(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


COMPLETION = _dump({
    "id": COMPLETION_ID, "object": "chat.completion", "created": CREATED, "model": MODEL,
    "choices": [{"index": 0, "message": {"role": "assistant", "content": CONTENT, "refusal": None,
                                         "annotations": []},
                 "logprobs": None, "finish_reason": "stop"}],
    "usage": USAGE, "service_tier": "default", "system_fingerprint": FINGERPRINT})


def _events(include_usage: bool) -> list[bytes]:
    def chunk(delta: dict, finish: str | None) -> dict:
        obj = {"id": COMPLETION_ID, "object": "chat.completion.chunk", "created": CREATED, "model": MODEL,
               "service_tier": "default", "system_fingerprint": FINGERPRINT,
               "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        if include_usage:
            obj["usage"] = None
        return obj

    chunks = [chunk({"role": "assistant", "content": "", "refusal": None}, None)]
    chunks += [chunk({"content": word}, None) for word in WORDS]
    chunks.append(chunk({}, "stop"))
    if include_usage:
        chunks.append({"id": COMPLETION_ID, "object": "chat.completion.chunk", "created": CREATED, "model": MODEL,
                       "service_tier": "default", "system_fingerprint": FINGERPRINT, "choices": [],
                       "usage": USAGE})
    return [b"data: " + _dump(c) + b"\n\n" for c in chunks] + [b"data: [DONE]\n\n"]


STREAM = {False: _events(False), True: _events(True)}


@dataclass(frozen=True)
class Answer:
    """A canned answer: one body (sent with a Content-Length), or events (each its own chunk)."""

    content_type: str
    body: bytes = b""
    events: tuple[bytes, ...] = ()
    status: int = 200
    headers: tuple[tuple[str, str], ...] = HEADERS  # the provider's own response headers
    unique: bytes = b""  # an id in the answer, replaced by a new one (same length) in each answer


CHAT = {None: Answer("application/json", body=COMPLETION)} | {  # stream and include_usage -> answer
    include_usage: Answer("text/event-stream; charset=utf-8", events=tuple(STREAM[include_usage]))
    for include_usage in (False, True)}


def chat(request: dict, target: str) -> Answer:
    """OpenAI chat completions: whole, or streamed with or without the usage chunk."""
    if not request.get("stream"):
        return CHAT[None]
    options = request.get("stream_options")
    return CHAT[isinstance(options, dict) and options.get("include_usage") is True]


# OpenAI Responses (tests/fakes/responses_wire.py has the wire): the same reply, words and token
# counts. A Response's keys in OpenAI's order; a stream's events `event: TYPE\ndata: JSON\n\n`,
# compact JSON with `type` first and the other keys sorted, `sequence_number` from 0, each text
# delta padded by `obfuscation`; `service_tier` "auto" while in progress. A non-reasoning model
# (gpt-4o-mini): no reasoning item. The response id is replaced in every answer (`unique`).
RESPONSE_ID = "resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b452d3795b"  # 48 hex digits: the placeholder
RESPONSE_MESSAGE_ID = "msg_67ccd2bf17f0819081ff3bb2cf6508e60bb6a6b452d3795b"
RESPONSE_CREATED = 1_741_476_542
OBFUSCATION = "mvkAadOd3983J1LnnINX8UTZOE4wuLRN"
RESPONSES_USAGE = {"input_tokens": PROMPT_TOKENS, "input_tokens_details": {"cached_tokens": CACHED_TOKENS},
                   "output_tokens": COMPLETION_TOKENS, "output_tokens_details": {"reasoning_tokens": 0},
                   "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS}


def _response_message(status: str, text: str | None) -> dict:
    content = [] if text is None else [{"type": "output_text", "annotations": [], "logprobs": [], "text": text}]
    return {"id": RESPONSE_MESSAGE_ID, "type": "message", "status": status, "content": content, "role": "assistant"}


def _response(settings: tuple, done: bool) -> dict:
    """The Response, in progress (no output, no usage) or completed; `settings` as the request gave them."""
    instructions, max_output, temperature, store = settings
    return {"id": RESPONSE_ID, "object": "response", "created_at": RESPONSE_CREATED,
            "status": "completed" if done else "in_progress", "background": False,
            "completed_at": RESPONSE_CREATED + 1 if done else None, "error": None, "frequency_penalty": 0.0,
            "incomplete_details": None, "instructions": instructions, "max_output_tokens": max_output,
            "max_tool_calls": None, "model": MODEL, "output": [_response_message("completed", CONTENT)] if done else [],
            "parallel_tool_calls": True, "presence_penalty": 0.0, "previous_response_id": None,
            "prompt_cache_key": None, "prompt_cache_retention": None, "reasoning": {"effort": None, "summary": None},
            "safety_identifier": None, "service_tier": "default" if done else "auto", "store": store,
            "temperature": temperature, "text": {"format": {"type": "text"}, "verbosity": "medium"},
            "tool_choice": "auto", "tools": [], "top_logprobs": 0, "top_p": 1.0, "truncation": "disabled",
            "usage": RESPONSES_USAGE if done else None, "user": None, "metadata": {}}


def _responses_events(settings: tuple) -> list[bytes]:
    events: list[bytes] = []

    def event(kind: str, **fields) -> None:
        data = {"type": kind, **dict(sorted({**fields, "sequence_number": len(events)}.items()))}
        events.append(b"event: " + kind.encode() + b"\ndata: " + _dump(data) + b"\n\n")

    event("response.created", response=_response(settings, False))
    event("response.in_progress", response=_response(settings, False))
    event("response.output_item.added", item=_response_message("in_progress", None), output_index=0)
    part = {"type": "output_text", "annotations": [], "logprobs": [], "text": ""}
    event("response.content_part.added", content_index=0, item_id=RESPONSE_MESSAGE_ID, output_index=0, part=part)
    for word in WORDS:
        start = len(events) * 5 % 16
        event("response.output_text.delta", content_index=0, delta=word, item_id=RESPONSE_MESSAGE_ID, logprobs=[],
              obfuscation=OBFUSCATION[start:start + 16 - len(word) % 16], output_index=0)
    event("response.output_text.done", content_index=0, item_id=RESPONSE_MESSAGE_ID, logprobs=[], output_index=0,
          text=CONTENT)
    event("response.content_part.done", content_index=0, item_id=RESPONSE_MESSAGE_ID, output_index=0,
          part={**part, "text": CONTENT})
    event("response.output_item.done", item=_response_message("completed", CONTENT), output_index=0)
    event("response.completed", response=_response(settings, True))
    return events


@cache
def _responses(settings: tuple, stream: bool) -> Answer:
    if stream:
        return Answer("text/event-stream; charset=utf-8", events=tuple(_responses_events(settings)),
                      unique=RESPONSE_ID.encode())
    return Answer("application/json", body=json.dumps(_response(settings, True), indent=2).encode(),
                  unique=RESPONSE_ID.encode())


def responses(request: dict, target: str) -> Answer:
    """OpenAI Responses: one Response, or its stream (46 events, one write() each); a new id each time."""
    def scalar(name: str, default=None):
        value = request.get(name, default)
        return value if isinstance(value, (str, int, float, bool, type(None))) else default

    settings = (scalar("instructions"), scalar("max_output_tokens"), scalar("temperature", 1.0),
                scalar("store", True))
    return _responses(settings, request.get("stream") is True)


# Anthropic Messages (tests/fakes/anthropic_wire.py has the wire; also what a litellm provider's
# `anthropic/…` model calls): the same reply, words and token counts, as Anthropic sends it: a
# Message (compact JSON); or named events, message_start (the input usage), content_block_start,
# ping, one content_block_delta per word, content_block_stop, message_delta (the cumulative
# usage), message_stop, each event's JSON but ping's padded with 0-15 spaces before its last `}`
# (as the API pads them; here deterministically, as the fake does).
MESSAGE_ID = "msg_01BenchAnthropicMessage0001"
ANTHROPIC_USAGE = {"input_tokens": PROMPT_TOKENS, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                   "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
                   "output_tokens": COMPLETION_TOKENS, "service_tier": "standard"}


def _message(model: str, content: list, usage: dict, stop: str | None) -> dict:
    return {"model": model, "id": MESSAGE_ID, "type": "message", "role": "assistant", "content": content,
            "stop_reason": stop, "stop_sequence": None, "usage": usage}


def _anthropic_events(model: str) -> list[bytes]:
    count = 0

    def event(name: str, data: dict) -> bytes:
        nonlocal count
        body = _dump(data)
        body = body[:-1] + b" " * (count * 7 % 16) + b"}"
        count += 1
        return b"event: " + name.encode() + b"\ndata: " + body + b"\n\n"

    start = _message(model, [], {**ANTHROPIC_USAGE, "output_tokens": 1}, None)
    events = [event("message_start", {"type": "message_start", "message": start}),
              event("content_block_start", {"type": "content_block_start", "index": 0,
                                            "content_block": {"type": "text", "text": ""}}),
              b'event: ping\ndata: {"type": "ping"}\n\n']
    events += [event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                             "delta": {"type": "text_delta", "text": word}}) for word in WORDS]
    events += [event("content_block_stop", {"type": "content_block_stop", "index": 0}),
               event("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn",
                                                                          "stop_sequence": None},
                                       "usage": {"input_tokens": PROMPT_TOKENS, "cache_creation_input_tokens": 0,
                                                 "cache_read_input_tokens": 0, "output_tokens": COMPLETION_TOKENS}}),
               event("message_stop", {"type": "message_stop"})]
    return events


@cache
def _anthropic(model: str, stream: bool) -> Answer:
    if stream:
        return Answer("text/event-stream; charset=utf-8", events=tuple(_anthropic_events(model)),
                      headers=ANTHROPIC_HEADERS)
    content = [{"type": "text", "text": CONTENT}]
    return Answer("application/json", body=_dump(_message(model, content, ANTHROPIC_USAGE, "end_turn")),
                  headers=ANTHROPIC_HEADERS)


def messages(request: dict, target: str) -> Answer:
    """Anthropic Messages: one Message, or its stream (44 events, one write() each)."""
    return _anthropic(str(request.get("model", "claude-bench")), bool(request.get("stream")))


# Gemini (tests/fakes/gemini_wire.py has the wire): the same reply and token counts. A whole
# answer is JSON indented by 2 with a final newline; a stream (`alt=sse`) is `data: JSON\r\n\r\n`
# events, each JSON on one line written `{"key": value,"key": value}`, every chunk with the
# cumulative usageMetadata (zero counts omitted), the last with finishReason; no terminator.
# Gemini streams a short reply in a few chunks of several tokens each, not one per token.
GEMINI_RESPONSE_ID = "ZsyWaNqLJI2kkdUPvOPd-Qc"
GEMINI_CHUNKS = (5, 11, 11, 11)  # words (= tokens) per stream chunk: 38 in all
assert sum(GEMINI_CHUNKS) == COMPLETION_TOKENS


def _gemini_usage(candidates: int, done: bool) -> dict:
    meta = {"promptTokenCount": PROMPT_TOKENS, "candidatesTokenCount": candidates,
            "totalTokenCount": PROMPT_TOKENS + candidates,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": PROMPT_TOKENS}]}
    if done:
        meta["candidatesTokensDetails"] = [{"modality": "TEXT", "tokenCount": candidates}]
    return meta


def _gemini_chunk(model: str, text: str, candidates: int, done: bool) -> dict:
    candidate = {"content": {"parts": [{"text": text}], "role": "model"}}
    if done:
        candidate["finishReason"] = "STOP"
    candidate["index"] = 0
    return {"candidates": [candidate], "usageMetadata": _gemini_usage(candidates, done), "modelVersion": model,
            "responseId": GEMINI_RESPONSE_ID}


@cache
def _gemini(model: str, stream: bool) -> Answer:
    if not stream:
        body = json.dumps(_gemini_chunk(model, CONTENT, COMPLETION_TOKENS, True), indent=2, ensure_ascii=False)
        return Answer("application/json; charset=UTF-8", body=body.encode() + b"\n", headers=GOOGLE_HEADERS)
    events, at = [], 0
    for i, size in enumerate(GEMINI_CHUNKS):
        chunk = _gemini_chunk(model, "".join(WORDS[at:at + size]), at + size, i == len(GEMINI_CHUNKS) - 1)
        at += size
        events.append(b"data: " + json.dumps(chunk, separators=(",", ": "), ensure_ascii=False).encode()
                      + b"\r\n\r\n")
    return Answer("text/event-stream", events=tuple(events), headers=GOOGLE_HEADERS)


def gemini(request: dict, target: str) -> Answer:
    """Gemini generateContent (whole) or streamGenerateContent?alt=sse, for the model in the path."""
    path, _, query = target.partition("?")
    model, _, method = path.rpartition("/")[2].rpartition(":")
    model = model.removeprefix("models/")
    if method == "generateContent":
        return _gemini(model, False)
    if method == "streamGenerateContent" and "alt=sse" in query.split("&"):
        return _gemini(model, True)
    return _error(404, f"the bench upstream serves generateContent and streamGenerateContent?alt=sse, not {method}")


ROUTES = {"/v1/chat/completions": chat,  # path of a POST -> its canned answer: one per API format
          "/v1/responses": responses,
          "/v1/messages": messages}
PREFIXES = (("/v1beta/models/", gemini), ("/v1/models/", gemini))  # the model is in the path


def _error(status: int, message: str) -> Answer:
    return Answer("application/json", status=status, body=_dump(
        {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}}))


REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}
DATE = "Thu, 26 Nov 2026 12:00:00 GMT"  # fixed: nothing reads it


@cache
def encoded(answer: Answer) -> tuple[bytes, ...]:
    """The bytes of an answer, by write(): whole; or the head with the first chunk, one per chunk, the end."""
    head = [f"HTTP/1.1 {answer.status} {REASONS.get(answer.status, 'Error')}", f"Date: {DATE}",
            "Server: bench-upstream", f"Content-Type: {answer.content_type}",
            *(f"{name}: {value}" for name, value in answer.headers)]
    if not answer.events:
        head.append(f"Content-Length: {len(answer.body)}")
        return (("\r\n".join(head) + "\r\n\r\n").encode() + answer.body,)
    head += ["Transfer-Encoding: chunked", "Cache-Control: no-cache"]
    chunks = [b"%x\r\n%s\r\n" % (len(event), event) for event in answer.events]
    return ((("\r\n".join(head) + "\r\n\r\n").encode() + chunks[0]), *chunks[1:], b"0\r\n\r\n")


@cache
def _holders(answer: Answer) -> tuple[int, ...]:
    """Which writes of `answer` hold its `unique` id."""
    return tuple(i for i, part in enumerate(encoded(answer)) if answer.unique in part)


_SCATTER = 0x9E3779B97F4A7C15F39CC0605CEDC8341082276BF3A27251  # odd: n -> n * _SCATTER mod 16**48 is one-to-one


def writes(answer: Answer, serial: int) -> tuple[bytes, ...]:
    """The writes of `answer`, its `unique` id (if any) replaced by the `serial`th one (same length)."""
    parts = encoded(answer)
    if not answer.unique:
        return parts
    prefix = answer.unique[:answer.unique.index(b"_") + 1]
    digits = len(answer.unique) - len(prefix)
    new = prefix + b"%0*x" % (digits, serial * _SCATTER % 16 ** digits)
    parts = list(parts)
    for i in _holders(answer):
        parts[i] = parts[i].replace(answer.unique, new)
    return tuple(parts)


class Server(asyncio.Protocol):
    """One client connection: read requests (head, then Content-Length bytes), write canned answers."""

    served = 0  # answers sent, by every connection: the serial of the next unique id

    def __init__(self) -> None:
        self.transport = None
        self.buf = bytearray()
        self.head: tuple[str, str, int, bool] | None = None  # method, target, body length, keep-alive

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            if self.head is None:
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                lines = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
                del self.buf[:end + 4]
                method, target, _ = lines[0].split(" ", 2)
                length, keep = 0, True
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    name = name.strip().lower()
                    if name == "content-length":
                        length = int(value)
                    elif name == "connection" and value.strip().lower() == "close":
                        keep = False
                    elif name == "transfer-encoding":  # the proxies send a Content-Length; say so loudly
                        self.transport.write(encoded(_error(400, "chunked request bodies are not supported"))[0])
                        self.transport.close()
                        return
                self.head = (method, target, length, keep)
            method, target, length, keep = self.head
            if len(self.buf) < length:
                return
            body = bytes(self.buf[:length])
            del self.buf[:length]
            self.head = None
            Server.served += 1
            for part in writes(self.answer(method, target, body), Server.served):
                self.transport.write(part)  # NOTE: one write per event, as a provider streams them
            if not keep:
                self.transport.close()
                return

    @staticmethod
    def answer(method: str, target: str, body: bytes) -> Answer:
        path = target.split("?", 1)[0]
        route = ROUTES.get(path) or next((fn for prefix, fn in PREFIXES if path.startswith(prefix)), None)
        if route is None:
            return _error(404, f"no route {path}")
        if method != "POST":
            return _error(405, f"{method} {path}")
        try:
            request = json.loads(body)
        except ValueError:
            return _error(400, "bad JSON")
        return route(request, target) if isinstance(request, dict) else _error(400, "not a JSON object")


async def main(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Server, host, port)
    bound = server.sockets[0].getsockname()[1]
    print(f"LISTENING http://{host}:{bound}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    try:
        import uvloop  # as the proxies run
    except ImportError:
        asyncio.run(main(args.host, args.port))
    else:
        uvloop.run(main(args.host, args.port))
