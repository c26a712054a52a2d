"""A minimal fixed-response upstream for the benchmark (bench/run.py starts it).

Canned answers by path (`ROUTES`), pre-encoded, whatever the prompt. `POST /v1/chat/completions`:
non-streamed, one realistic `chat.completion` (~750 bytes, usage with both details objects);
streamed, 40 `chat.completion.chunk` events written one `write()` each, no sleeps, then (when
`stream_options.include_usage` is true) `"usage":null` on every chunk and a final usage chunk
with `"choices":[]`, then `data: [DONE]`. It does as little as an aiohttp server can; the
reference pass-through (bench/passthrough.py) and Payware both call it, and the load client
calls it directly for the latency baseline.

A new API format is a handler here, registered in `ROUTES` under its path, plus a row in
bench/scenarios.py.

Run: `python bench/upstream.py --port 0` prints `LISTENING http://127.0.0.1:<port>`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal

from aiohttp import web

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


async def chat(request: web.Request) -> web.StreamResponse:
    try:
        body = json.loads(await request.read())
    except ValueError:
        return web.json_response({"error": {"message": "bad JSON", "type": "invalid_request_error",
                                            "param": None, "code": None}}, status=400)
    if not body.get("stream"):
        return web.Response(body=COMPLETION, content_type="application/json", headers=HEADERS)
    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    response = web.StreamResponse(headers={**HEADERS, "Content-Type": "text/event-stream; charset=utf-8"})
    await response.prepare(request)
    for event in STREAM[include_usage]:
        await response.write(event)
    await response.write_eof()
    return response


ROUTES = {"/v1/chat/completions": chat}  # path -> handler of POST: one per API format


async def main(host: str, port: int) -> None:
    app = web.Application()
    for path, handler in ROUTES.items():
        app.router.add_post(path, handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1]
    print(f"LISTENING http://{host}:{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    try:
        import uvloop  # as the proxies run: the upstream should not be the slow part
    except ImportError:
        asyncio.run(main(args.host, args.port))
    else:
        uvloop.run(main(args.host, args.port))
