"""More Gemini scenarios than `gemini_wire` has, in their own small process (that module's
scenarios stay as they are): the same wire (indented JSON answers, CRLF-framed SSE with the
`{"key": value,"key": value}` spacing), for the tests of the proxy's Gemini routes.

- `gemini-fake-long`: a prompt above 200k tokens (LONG_* below), so the prices "above 200k
  tokens" apply; answered whole or streamed (`?alt=sse`, two chunks, cumulative usage).
- `gemini-fake-error-text`: a 502 whose body is plain text, not Google's JSON envelope.

Run as a process: `python -m tests.fakes.gemini_extra --port 0` prints `LISTENING <url>`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from aiohttp import web

from tests.fakes.gemini_wire import RESPONSE_ID, pretty, sse_json

LONG_PROMPT_TOKENS = 250_000  # above Gemini 2.5 Pro's 200k threshold
LONG_CACHED_TOKENS = 200_000
LONG_CANDIDATES_TOKENS = 500
LONG_THOUGHTS_TOKENS = 1_500
LONG_REPLY = ["The contract's", " clauses agree."]
TEXT_ERROR = "upstream exploded"


def long_usage(candidates: int = LONG_CANDIDATES_TOKENS) -> dict:
    """The usageMetadata of `gemini-fake-long` after `candidates` tokens."""
    return {"promptTokenCount": LONG_PROMPT_TOKENS, "candidatesTokenCount": candidates,
            "totalTokenCount": LONG_PROMPT_TOKENS + candidates + LONG_THOUGHTS_TOKENS,
            "cachedContentTokenCount": LONG_CACHED_TOKENS,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": LONG_PROMPT_TOKENS}],
            "cacheTokensDetails": [{"modality": "TEXT", "tokenCount": LONG_CACHED_TOKENS}],
            "thoughtsTokenCount": LONG_THOUGHTS_TOKENS}


def long_chunks(model: str) -> list[dict]:
    first = {"content": {"parts": [{"text": LONG_REPLY[0]}], "role": "model"}, "index": 0}
    last = {"content": {"parts": [{"text": LONG_REPLY[1]}], "role": "model"}, "finishReason": "STOP", "index": 0}
    return [{"candidates": [first], "usageMetadata": long_usage(200), "modelVersion": model, "responseId": RESPONSE_ID},
            {"candidates": [last], "usageMetadata": long_usage(), "modelVersion": model, "responseId": RESPONSE_ID}]


def long_body(model: str) -> dict:
    candidate = {"content": {"parts": [{"text": "".join(LONG_REPLY)}], "role": "model"}, "finishReason": "STOP",
                 "index": 0}
    return {"candidates": [candidate], "usageMetadata": long_usage(), "modelVersion": model,
            "responseId": RESPONSE_ID}


def long_stream_bytes(model: str) -> bytes:
    return b"".join(b"data: " + sse_json(chunk) + b"\r\n\r\n" for chunk in long_chunks(model))


async def _models(request: web.Request) -> web.StreamResponse:
    await request.read()
    name, _, method = request.match_info["target"].rpartition(":")
    model = name.removeprefix("models/")
    if model == "gemini-fake-error-text":
        return web.Response(status=502, text=TEXT_ERROR, content_type="text/plain")
    if method == "streamGenerateContent" and request.query.get("alt") == "sse":
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for chunk in long_chunks(model):
            await response.write(b"data: " + sse_json(chunk) + b"\r\n\r\n")
            await asyncio.sleep(0)
        await response.write_eof()
        return response
    return web.Response(body=pretty(long_body(model)), content_type="application/json", charset="UTF-8")


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_post("/v1beta/models/{target}", _models)
    app.router.add_post("/v1/models/{target}", _models)
    return app


async def _serve(port: int) -> None:
    runner = web.AppRunner(make_app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    print(f"LISTENING http://127.0.0.1:{runner.addresses[0][1]}", flush=True)
    await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv if argv is not None else sys.argv[1:])
    asyncio.run(_serve(args.port))


if __name__ == "__main__":
    main()
