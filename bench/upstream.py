"""A minimal fixed-answer upstream for the benchmark (bench/run.py starts it).

Canned answers by path (`ROUTES`), pre-encoded, whatever the prompt. `POST /v1/chat/completions`:
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

`POST /v1/messages`: Anthropic's Messages API with the same reply (the upstream of a `kind: litellm`
provider whose model is `anthropic/…`): a Message, or 44 named events, one `write()` each.

A new API format is a function here (request JSON -> `Answer`) registered in `ROUTES` under its
path, plus a row in bench/scenarios.py.

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

HEADERS = {"openai-version": "2020-10-01", "openai-processing-ms": "312",
           "x-request-id": "req_0123456789abcdef0123456789abcdef"}


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


CHAT = {None: Answer("application/json", body=COMPLETION)} | {  # stream and include_usage -> answer
    include_usage: Answer("text/event-stream; charset=utf-8", events=tuple(STREAM[include_usage]))
    for include_usage in (False, True)}


def chat(request: dict) -> Answer:
    """OpenAI chat completions: whole, or streamed with or without the usage chunk."""
    if not request.get("stream"):
        return CHAT[None]
    options = request.get("stream_options")
    return CHAT[isinstance(options, dict) and options.get("include_usage") is True]


# Anthropic Messages (what a litellm provider's `anthropic/…` model calls): the same reply, words
# and token counts, as Anthropic sends it: a Message; or named events, message_start (the input
# usage), content_block_start, ping, one content_block_delta per word, content_block_stop,
# message_delta (the cumulative usage), message_stop.
MESSAGE_ID = "msg_01BenchAnthropicMessage0001"
ANTHROPIC_USAGE = {"input_tokens": PROMPT_TOKENS, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                   "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
                   "output_tokens": COMPLETION_TOKENS, "service_tier": "standard"}


def _message(model: str, content: list, usage: dict, stop: str | None) -> dict:
    return {"model": model, "id": MESSAGE_ID, "type": "message", "role": "assistant", "content": content,
            "stop_reason": stop, "stop_sequence": None, "usage": usage}


def _anthropic_events(model: str) -> list[bytes]:
    def event(name: str, data: dict) -> bytes:
        return b"event: " + name.encode() + b"\ndata: " + _dump(data) + b"\n\n"

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
        return Answer("text/event-stream; charset=utf-8", events=tuple(_anthropic_events(model)))
    content = [{"type": "text", "text": CONTENT}]
    return Answer("application/json", body=_dump(_message(model, content, ANTHROPIC_USAGE, "end_turn")))


def messages(request: dict) -> Answer:
    """Anthropic Messages: one Message, or its stream (44 events, one write() each)."""
    return _anthropic(str(request.get("model", "claude-bench")), bool(request.get("stream")))


ROUTES = {"/v1/chat/completions": chat,  # path of a POST -> its canned answer: one per API format
          "/v1/messages": messages}


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
            *(f"{name}: {value}" for name, value in HEADERS.items())]
    if not answer.events:
        head.append(f"Content-Length: {len(answer.body)}")
        return (("\r\n".join(head) + "\r\n\r\n").encode() + answer.body,)
    head += ["Transfer-Encoding: chunked", "Cache-Control: no-cache"]
    chunks = [b"%x\r\n%s\r\n" % (len(event), event) for event in answer.events]
    return ((("\r\n".join(head) + "\r\n\r\n").encode() + chunks[0]), *chunks[1:], b"0\r\n\r\n")


class Server(asyncio.Protocol):
    """One client connection: read requests (head, then Content-Length bytes), write canned answers."""

    def __init__(self) -> None:
        self.transport = None
        self.buf = bytearray()
        self.head: tuple[str, str, int, bool] | None = None  # method, path, body length, keep-alive

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
                self.head = (method, target.split("?", 1)[0], length, keep)
            method, path, length, keep = self.head
            if len(self.buf) < length:
                return
            body = bytes(self.buf[:length])
            del self.buf[:length]
            self.head = None
            for part in encoded(self.answer(method, path, body)):
                self.transport.write(part)  # NOTE: one write per event, as a provider streams them
            if not keep:
                self.transport.close()
                return

    @staticmethod
    def answer(method: str, path: str, body: bytes) -> Answer:
        route = ROUTES.get(path)
        if route is None:
            return _error(404, f"no route {path}")
        if method != "POST":
            return _error(405, f"{method} {path}")
        try:
            request = json.loads(body)
        except ValueError:
            return _error(400, "bad JSON")
        return route(request) if isinstance(request, dict) else _error(400, "not a JSON object")


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
