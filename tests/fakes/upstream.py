"""A fake OpenAI provider that speaks the real wire format, byte for byte, SSE included.

Its behaviour is chosen by the request's `model` (see SCENARIOS; an unknown name acts as
`fake-ok`), so tests drive it through the proxy with no side channel. It records what it
received (`GET /_stats`, `POST /_reset`) so tests can check what the proxy forwarded, that a
refused request never arrived, and that an abandoned one was cancelled.

`stream_events` and `stream_bytes` give the exact bytes a stream of a scenario consists of, so
a test can assert the client received exactly what the provider sent.

The same process also speaks Anthropic Messages, Gemini and OpenAI's Responses API, each in its
own module with its own scenarios and exact bytes: anthropic_wire.py, gemini_wire.py, responses_wire.py.

Run as a process: `python -m tests.fakes.upstream --port 0` prints `LISTENING <url>`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from aiohttp import web

from tests.fakes import anthropic_wire, gemini_wire, responses_wire

# The usage `fake-ok` reports: tests assert the proxy billed exactly these.
PROMPT_TOKENS = 13
CACHED_TOKENS = 4
COMPLETION_TOKENS = 7
REASONING_TOKENS = 2
EMBEDDING_TOKENS = 5
REPLY = "Hello from fake."
WORDS = ["Hello", " from", " fake", "."]  # one o200k token each
SLOW_WORDS = [f" w{i}" for i in range(200)]
SLOW_DELAY_MS = 20  # between writes of `fake-slow`; a request header `x-fake-delay-ms` overrides it, or
# the body's `x_fake_delay_ms` (through a proxy, which relays the body but not such a header)
SPLIT_BYTES = 7  # the write size of `fake-split`
CRLF_EVENTS_PER_WRITE = 3  # `fake-crlf` packs this many events into one network write
CUT_AFTER_WORDS = 2  # `fake-stream-error` and `fake-cut` break off after these many content chunks
CREATED = 1_732_000_000
STREAM_ERROR = {"error": {"message": "The server had an error while processing your request. Sorry about that!",
                          "type": "server_error", "param": None, "code": None}}

SCENARIOS = ("fake-ok", "fake-no-usage", "fake-finish-usage", "fake-crlf", "fake-split", "fake-slow",
             "fake-error-500-text", "fake-error-429", "fake-error-400", "fake-hang", "fake-stream-error",
             "fake-cut", "fake-bad-usage", "fake-ignores-stream")
# `fake-bad-usage` reports an output count no call can hold (2**62), in its body and its stream;
# `fake-ignores-stream` answers a stream request whole, as a server without streaming does
BAD_COMPLETION_TOKENS = 2 ** 62

STATS = web.AppKey("stats", dict)


def usage_object(model: str = "fake-ok") -> dict:
    """The usage `fake-ok` reports for chat and completions (`fake-bad-usage`: its output count)."""
    completion = BAD_COMPLETION_TOKENS if model == "fake-bad-usage" else COMPLETION_TOKENS
    return {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": completion,
            "total_tokens": PROMPT_TOKENS + completion,
            "prompt_tokens_details": {"cached_tokens": CACHED_TOKENS, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": REASONING_TOKENS, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}


def completion_body(model: str) -> dict:
    """The non-streamed `/v1/chat/completions` answer (`fake-no-usage` drops `usage`)."""
    body = {"id": "chatcmpl-fake123", "object": "chat.completion", "created": CREATED, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": REPLY, "refusal": None},
                         "logprobs": None, "finish_reason": "stop"}],
            "usage": usage_object(model), "system_fingerprint": "fp_fake"}
    if model == "fake-no-usage":
        del body["usage"]
    return body


def text_completion_body(model: str) -> dict:
    """The non-streamed `/v1/completions` answer (`fake-no-usage` drops `usage`)."""
    body = {"id": "cmpl-fake123", "object": "text_completion", "created": CREATED, "model": model,
            "choices": [{"text": REPLY, "index": 0, "logprobs": None, "finish_reason": "stop"}],
            "usage": usage_object(model)}
    if model == "fake-no-usage":
        del body["usage"]
    return body


def _dump(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _chunk(endpoint: str, model: str, choice: dict | None) -> dict:
    """One stream chunk of `endpoint` ("chat" or "completions"); no choice: the usage chunk's `[]`."""
    choices = [] if choice is None else [choice]
    if endpoint == "chat":
        return {"id": "chatcmpl-fake123", "object": "chat.completion.chunk", "created": CREATED, "model": model,
                "system_fingerprint": "fp_fake", "choices": choices}
    return {"id": "cmpl-fake123", "object": "text_completion", "created": CREATED, "choices": choices,
            "model": model, "system_fingerprint": "fp_fake"}


def _choice(endpoint: str, text: str | None, finish: str | None = None) -> dict:
    """A chunk's choice: `text` None is the finish chunk's (an empty delta, or empty text)."""
    if endpoint == "chat":
        delta = {} if text is None else {"content": text}
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    return {"text": text or "", "index": 0, "logprobs": None, "finish_reason": finish}


def stream_events(scenario: str, include_usage: bool, model: str, words: list[str] | None = None, *,
                  endpoint: str = "chat") -> list[bytes]:
    """The SSE events (one bytes each, pings included) a stream of `scenario` sends, in order.

    `endpoint` is "chat" or "completions". `include_usage` is what the request asked for;
    `fake-no-usage` ignores it and `fake-finish-usage` always puts usage in the finish chunk.
    """
    if words is None:
        words = SLOW_WORDS if scenario == "fake-slow" else WORDS
    if scenario in ("fake-stream-error", "fake-cut"):
        words = words[:CUT_AFTER_WORDS]
    usage_field = include_usage and scenario not in ("fake-no-usage", "fake-finish-usage")
    newline = b"\r\n" if scenario == "fake-crlf" else b"\n"

    def event(chunk: dict) -> bytes:
        if usage_field:
            chunk.setdefault("usage", None)  # as OpenAI does once include_usage is on
        return b"data: " + _dump(chunk) + newline * 2

    events = []
    if endpoint == "chat":
        role = {"index": 0, "delta": {"role": "assistant", "content": "", "refusal": None}, "logprobs": None,
                "finish_reason": None}
        events.append(event(_chunk(endpoint, model, role)))
    for word in words:
        events.append(event(_chunk(endpoint, model, _choice(endpoint, word))))
        if scenario == "fake-crlf":
            events.append(b": ping" + newline * 2)
    if scenario == "fake-stream-error":
        return events + [b"data: " + _dump(STREAM_ERROR) + b"\n\n"]
    if scenario == "fake-cut":
        return events
    finish = _chunk(endpoint, model, _choice(endpoint, None, "stop"))
    if scenario == "fake-finish-usage":
        finish["usage"] = usage_object()
    events.append(event(finish))
    if usage_field:
        events.append(event({**_chunk(endpoint, model, None), "usage": usage_object(scenario)}))
    return events + [b"data: [DONE]" + newline * 2]


def stream_bytes(scenario: str, include_usage: bool, model: str, *, endpoint: str = "chat") -> list[bytes]:
    """The network writes of a stream of `scenario`: `stream_events`, packed or split as it does."""
    events = stream_events(scenario, include_usage, model, endpoint=endpoint)
    if scenario == "fake-crlf":
        n = CRLF_EVENTS_PER_WRITE
        return [b"".join(events[i:i + n]) for i in range(0, len(events), n)]
    if scenario == "fake-split":
        data = b"".join(events)
        return [data[i:i + SPLIT_BYTES] for i in range(0, len(data), SPLIT_BYTES)]
    return events


async def _record(request: web.Request) -> dict:
    raw = await request.read()
    stats = request.app[STATS]
    stats["requests"][request.path] = stats["requests"].get(request.path, 0) + 1
    stats["last"].append({"path": request.path, "headers": dict(request.headers),
                          "body": raw.decode("utf-8", "replace")})
    del stats["last"][:-50]
    try:
        body = json.loads(raw)
    except ValueError:
        body = {}
    return body if isinstance(body, dict) else {}


def _error(status: int, message: str, kind: str, param: str | None = None, code: str | None = None,
           headers: dict | None = None) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return web.Response(status=status, body=_dump(body), content_type="application/json", headers=headers)


async def _hang(request: web.Request) -> None:
    """Never answer; notice the client leaving even when the server does not cancel handlers."""
    while request.transport is not None and not request.transport.is_closing():
        await asyncio.sleep(0.05)
    raise ConnectionResetError("the client went away")


async def _failure(request: web.Request, scenario: str) -> web.Response | None:
    if scenario == "fake-error-500-text":
        return web.Response(status=500, text="upstream exploded", content_type="text/plain")
    if scenario == "fake-error-429":
        return _error(429, "Rate limit reached for requests. Please try again in 1s.", "requests",
                      code="rate_limit_exceeded", headers={"retry-after": "1"})
    if scenario == "fake-error-400":
        return _error(400, "Invalid value for 'temperature': expected a number.", "invalid_request_error",
                      param="temperature", code="invalid_value")
    if scenario == "fake-hang":
        await _hang(request)
    return None


async def _stream(request: web.Request, scenario: str, include_usage: bool, model: str,
                  endpoint: str, body_delay: object = None) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
    await response.prepare(request)
    delay_ms = int(request.headers.get("x-fake-delay-ms", body_delay if type(body_delay) is int else SLOW_DELAY_MS))
    delay = delay_ms / 1000 if scenario == "fake-slow" else 0
    for piece in stream_bytes(scenario, include_usage, model, endpoint=endpoint):
        await response.write(piece)
        await asyncio.sleep(delay)  # 0: still yields, so `fake-split` pieces leave one by one
    if scenario == "fake-cut":
        # Abrupt: the transport closes with no [DONE] and no chunked-encoding terminator
        # (aiohttp's own write_eof then finds it closed and quietly gives up).
        request.transport.close()
        return response
    await response.write_eof()
    return response


async def _answer(request: web.Request, endpoint: str) -> web.StreamResponse:
    body = await _record(request)
    model = str(body.get("model", "fake-ok"))
    scenario = model if model in SCENARIOS else "fake-ok"
    try:
        failure = await _failure(request, scenario)
        if failure is not None:
            return failure
        if body.get("stream") and endpoint != "embeddings" and scenario != "fake-ignores-stream":
            options = body.get("stream_options")
            include_usage = isinstance(options, dict) and options.get("include_usage") is True
            return await _stream(request, scenario, include_usage, model, endpoint, body.get("x_fake_delay_ms"))
    except (asyncio.CancelledError, ConnectionResetError):
        request.app[STATS]["cancelled"] += 1  # the client left before the answer was complete
        raise
    if endpoint == "embeddings":
        payload = _embeddings(body)
    else:
        payload = completion_body(model) if endpoint == "chat" else text_completion_body(model)
    return web.Response(body=_dump(payload), content_type="application/json")


def _embeddings(body: dict) -> dict:
    inputs = body.get("input")
    count = len(inputs) if isinstance(inputs, list) and inputs and not isinstance(inputs[0], int) else 1
    # "AAAAAAAAgD8=" is two little-endian float32s: 0.0 and 1.0 (the openai SDK asks for base64)
    vector = "AAAAAAAAgD8=" if body.get("encoding_format") == "base64" else [0.0, 1.0]
    return {"object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": vector} for i in range(count)],
            "model": str(body.get("model", "fake-ok")),
            "usage": {"prompt_tokens": EMBEDDING_TOKENS, "total_tokens": EMBEDDING_TOKENS}}


async def chat(request: web.Request) -> web.StreamResponse:
    return await _answer(request, "chat")


async def completions(request: web.Request) -> web.StreamResponse:
    return await _answer(request, "completions")


async def embeddings(request: web.Request) -> web.StreamResponse:
    return await _answer(request, "embeddings")


async def models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [
        {"id": name, "object": "model", "created": CREATED, "owned_by": "fake"} for name in SCENARIOS]})


async def stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATS])


async def reset(request: web.Request) -> web.Response:
    request.app[STATS].update(_fresh_stats())
    return web.json_response({"ok": True})


def _fresh_stats() -> dict:
    return {"requests": {}, "cancelled": 0, "last": []}


def make_fake_app() -> web.Application:
    """The fake provider as an aiohttp app (serve it with `handler_cancellation=True`)."""
    app = web.Application()
    app[STATS] = _fresh_stats()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_get("/v1/models", models)
    anthropic_wire.add_routes(app, STATS)  # the other providers' wires, recorded into the same stats
    gemini_wire.add_routes(app, STATS)
    responses_wire.add_routes(app, STATS, models=SCENARIOS)
    app.router.add_get("/_stats", stats)
    app.router.add_post("/_reset", reset)
    return app


async def _serve(host: str, port: int) -> None:
    runner = web.AppRunner(make_fake_app(), access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    print(f"LISTENING http://{host}:{runner.addresses[0][1]}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    try:
        asyncio.run(_serve(args.host, args.port))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
