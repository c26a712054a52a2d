"""A fake OpenAI provider that speaks the real wire format, byte for byte, SSE included.

Its behaviour is chosen by the request's `model`, so tests drive it through the proxy with
no side channel. It records what it received (`GET /_stats`) so tests can check what the
proxy forwarded, and that a refused request never arrived.

Run as a process: `python -m tests.fakes.upstream --port 0` prints `LISTENING <url>`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from aiohttp import web

# The usage `fake-ok` reports: tests assert the proxy billed exactly these.
PROMPT_TOKENS = 13
CACHED_TOKENS = 4
COMPLETION_TOKENS = 7
REASONING_TOKENS = 2
EMBEDDING_TOKENS = 5
REPLY = "Hello from fake."
WORDS = ["Hello", " from", " fake", "."]
CREATED = 1_732_000_000

STATS = web.AppKey("stats", dict)


def usage_object() -> dict:
    return {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS,
            "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
            "prompt_tokens_details": {"cached_tokens": CACHED_TOKENS, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": REASONING_TOKENS, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}


def _dump(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _chunk(model: str, delta: dict, finish: str | None, *, usage_field: bool, usage: dict | None = None,
           choices: bool = True) -> dict:
    chunk = {"id": "chatcmpl-fake123", "object": "chat.completion.chunk", "created": CREATED, "model": model,
             "system_fingerprint": "fp_fake",
             "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}] if choices else []}
    if usage_field or usage is not None:
        chunk["usage"] = usage
    return chunk


def stream_events(scenario: str, include_usage: bool, model: str, words: list[str] = WORDS) -> list[bytes]:
    """The SSE events (one bytes each) a chat stream of `scenario` consists of."""
    usage_field = include_usage and scenario not in ("fake-no-usage", "fake-finish-usage")
    newline = b"\r\n" if scenario == "fake-crlf" else b"\n"

    def event(obj: dict) -> bytes:
        return b"data: " + _dump(obj) + newline * 2

    events = [event(_chunk(model, {"role": "assistant", "content": "", "refusal": None}, None,
                           usage_field=usage_field))]
    for word in words:
        events.append(event(_chunk(model, {"content": word}, None, usage_field=usage_field)))
        if scenario == "fake-crlf":
            events.append(b": ping" + newline * 2)
    if scenario == "fake-finish-usage":
        events.append(event(_chunk(model, {}, "stop", usage_field=False, usage=usage_object())))
    else:
        events.append(event(_chunk(model, {}, "stop", usage_field=usage_field)))
        if usage_field:
            events.append(event(_chunk(model, {}, None, usage_field=True, usage=usage_object(), choices=False)))
    events.append(b"data: [DONE]" + newline * 2)
    return events


def completion_body(model: str) -> dict:
    return {"id": "chatcmpl-fake123", "object": "chat.completion", "created": CREATED, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": REPLY, "refusal": None},
                         "logprobs": None, "finish_reason": "stop"}],
            "usage": usage_object(), "system_fingerprint": "fp_fake"}


async def _record(request: web.Request) -> tuple[dict, bytes]:
    raw = await request.read()
    stats = request.app[STATS]
    stats["requests"][request.path] = stats["requests"].get(request.path, 0) + 1
    stats["last"].append({"path": request.path, "headers": dict(request.headers), "body": raw.decode()})
    del stats["last"][:-50]
    try:
        body = json.loads(raw)
    except ValueError:
        body = {}
    return body if isinstance(body, dict) else {}, raw


def _error(status: int, message: str, kind: str, code: str | None = None, headers: dict | None = None) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return web.Response(status=status, body=_dump(body), content_type="application/json", headers=headers)


async def _failure(scenario: str) -> web.Response | None:
    if scenario == "fake-error-500-text":
        return web.Response(status=500, text="upstream exploded", content_type="text/plain")
    if scenario == "fake-error-429":
        return _error(429, "Rate limit reached for requests", "requests", "rate_limit_exceeded",
                      headers={"retry-after": "1"})
    if scenario == "fake-error-400":
        return _error(400, "Invalid value for 'temperature'", "invalid_request_error")
    if scenario == "fake-hang":
        await asyncio.sleep(3600)
    return None


async def chat(request: web.Request) -> web.StreamResponse:
    body, _ = await _record(request)
    model = str(body.get("model", "fake-ok"))
    failure = await _failure(model)
    if failure is not None:
        return failure
    if not body.get("stream"):
        payload = completion_body(model)
        if model == "fake-no-usage":
            del payload["usage"]
        return web.Response(body=_dump(payload), content_type="application/json")
    options = body.get("stream_options") or {}
    include_usage = options.get("include_usage") is True
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
    await response.prepare(request)
    try:
        await _write_stream(request, response, model, include_usage)
    except (asyncio.CancelledError, ConnectionResetError):
        request.app[STATS]["cancelled"] += 1
        raise
    return response


async def _write_stream(request: web.Request, response: web.StreamResponse, model: str, include_usage: bool) -> None:
    if model == "fake-slow":
        delay = int(request.headers.get("x-fake-delay-ms", "20")) / 1000
        words = [f" w{i}" for i in range(200)]
        for piece in stream_events(model, include_usage, model, words):
            await response.write(piece)
            await asyncio.sleep(delay)
    elif model == "fake-stream-error":
        for piece in stream_events(model, include_usage, model)[:3]:
            await response.write(piece)
        await response.write(b'data: {"error":{"message":"The server had an error","type":"server_error"}}\n\n')
    elif model == "fake-cut":
        for piece in stream_events(model, include_usage, model)[:3]:
            await response.write(piece)
        await asyncio.sleep(0.05)
        request.transport.close()  # abrupt: no [DONE], no terminating chunk
        return
    elif model == "fake-split":
        data = b"".join(stream_events(model, include_usage, model))
        for i in range(0, len(data), 7):
            await response.write(data[i:i + 7])
            await asyncio.sleep(0)
    elif model == "fake-crlf":
        events = stream_events(model, include_usage, model)
        for i in range(0, len(events), 3):  # several events per network write
            await response.write(b"".join(events[i:i + 3]))
    else:
        for piece in stream_events(model, include_usage, model):
            await response.write(piece)
    await response.write_eof()


async def completions(request: web.Request) -> web.Response:
    body, _ = await _record(request)
    model = str(body.get("model", "fake-ok"))
    failure = await _failure(model)
    if failure is not None:
        return failure
    payload = {"id": "cmpl-fake123", "object": "text_completion", "created": CREATED, "model": model,
               "choices": [{"text": REPLY, "index": 0, "logprobs": None, "finish_reason": "stop"}],
               "usage": usage_object()}
    return web.Response(body=_dump(payload), content_type="application/json")


async def embeddings(request: web.Request) -> web.Response:
    body, _ = await _record(request)
    model = str(body.get("model", "fake-ok"))
    failure = await _failure(model)
    if failure is not None:
        return failure
    inputs = body.get("input")
    count = len(inputs) if isinstance(inputs, list) and inputs and not isinstance(inputs[0], int) else 1
    # "AAAAAAAAgD8=" is two little-endian float32s: 0.0 and 1.0
    vector = "AAAAAAAAgD8=" if body.get("encoding_format") == "base64" else [0.0, 1.0]
    payload = {"object": "list", "model": model,
               "data": [{"object": "embedding", "index": i, "embedding": vector} for i in range(count)],
               "usage": {"prompt_tokens": EMBEDDING_TOKENS, "total_tokens": EMBEDDING_TOKENS}}
    return web.Response(body=_dump(payload), content_type="application/json")


async def models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [{"id": "fake-ok", "object": "model", "created": 0,
                                                          "owned_by": "fake"}]})


async def stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATS])


async def reset(request: web.Request) -> web.Response:
    request.app[STATS].update(_fresh_stats())
    return web.json_response({"ok": True})


def _fresh_stats() -> dict:
    return {"requests": {}, "cancelled": 0, "last": []}


def make_fake_app() -> web.Application:
    app = web.Application()
    app[STATS] = _fresh_stats()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_get("/v1/models", models)
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
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    try:
        asyncio.run(_serve(args.host, args.port))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
