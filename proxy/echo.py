"""The echo model: a local provider that speaks OpenAI's wire format, for trying Payware.

It answers with the last user message (or the prompt), streamed or not, with real usage
counted by tiktoken, so a newcomer can make a metered request without a provider account.
The proxy starts it in-process on a loopback port and forwards to it over HTTP, exactly as
it would to a real provider.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import time
import uuid

from aiohttp import web

from metering.tokens import count_prompt, encoding_for

_ENCODING_MODEL = "gpt-4o"  # o200k_base


def make_echo_app() -> web.Application:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", _chat)
    app.router.add_post("/v1/completions", _completions)
    app.router.add_post("/v1/embeddings", _embeddings)
    app.router.add_get("/v1/models", _models)
    return app


async def start_echo_server(*, host: str = "127.0.0.1", port: int = 0) -> tuple[web.AppRunner, str]:
    """Serve the echo model; returns the runner (to clean up) and its `/v1` base URL."""
    encoding_for(_ENCODING_MODEL)  # load the tokenizer now, not on the first request
    runner = web.AppRunner(make_echo_app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1]
    return runner, f"http://{host}:{bound}/v1"


def _error(message: str, param: str | None = None) -> web.Response:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": None}}
    return web.json_response(body, status=400)


async def _body(request: web.Request) -> dict | web.Response:
    try:
        body = await request.json()
    except ValueError:
        return _error("We could not parse the JSON body of your request.")
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        return _error("you must provide a model parameter", "model")
    return body


def _reply_tokens(text: str, body: dict) -> tuple[list[int], str]:
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    tokens = encoding_for(_ENCODING_MODEL).encode(text or "(empty)", disallowed_special=())
    if isinstance(limit, int) and 0 < limit < len(tokens):
        return tokens[:limit], "length"
    return tokens, "stop"


def _usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}


def _last_user_text(messages: object) -> str:
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                return "".join(p.get("text", "") for p in content if isinstance(p, dict))
            return content if isinstance(content, str) else ""
    return ""


async def _chat(request: web.Request) -> web.StreamResponse:
    body = await _body(request)
    if isinstance(body, web.Response):
        return body
    if not isinstance(body.get("messages"), list) or not body["messages"]:
        return _error("messages must be a non-empty array", "messages")
    tokens, finish = _reply_tokens(_last_user_text(body["messages"]), body)
    usage = _usage(count_prompt("chat", body, _ENCODING_MODEL), len(tokens))
    head = {"id": "chatcmpl-" + uuid.uuid4().hex[:24], "created": int(time.time()), "model": body["model"]}
    if body.get("stream"):
        def chunk(delta: dict, finish_reason: str | None) -> dict:
            return {**head, "object": "chat.completion.chunk", "system_fingerprint": "fp_echo",
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}

        pieces = [chunk({"role": "assistant", "content": "", "refusal": None}, None)]
        pieces += [chunk({"content": encoding_for(_ENCODING_MODEL).decode([t])}, None) for t in tokens]
        pieces.append(chunk({}, finish))
        return await _stream(request, body, pieces, {**head, "object": "chat.completion.chunk",
                                                     "system_fingerprint": "fp_echo", "choices": []}, usage)
    text = encoding_for(_ENCODING_MODEL).decode(tokens)
    return web.json_response({
        **head, "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None,
                                             "annotations": []},
                     "logprobs": None, "finish_reason": finish}],
        "usage": usage, "service_tier": "default", "system_fingerprint": "fp_echo"})


async def _completions(request: web.Request) -> web.StreamResponse:
    body = await _body(request)
    if isinstance(body, web.Response):
        return body
    prompt = body.get("prompt")
    text = prompt if isinstance(prompt, str) else " ".join(p for p in prompt or () if isinstance(p, str))
    tokens, finish = _reply_tokens(text, body)
    usage = _usage(count_prompt("completions", body, _ENCODING_MODEL), len(tokens))
    head = {"id": "cmpl-" + uuid.uuid4().hex[:24], "object": "text_completion", "created": int(time.time()),
            "model": body["model"], "system_fingerprint": "fp_echo"}
    if body.get("stream"):
        enc = encoding_for(_ENCODING_MODEL)
        pieces = [{**head, "choices": [{"text": enc.decode([t]), "index": 0, "logprobs": None,
                                        "finish_reason": None}]} for t in tokens]
        pieces.append({**head, "choices": [{"text": "", "index": 0, "logprobs": None, "finish_reason": finish}]})
        return await _stream(request, body, pieces, {**head, "choices": []}, usage)
    return web.json_response({**head, "choices": [{"text": encoding_for(_ENCODING_MODEL).decode(tokens), "index": 0,
                                                   "logprobs": None, "finish_reason": finish}], "usage": usage})


async def _stream(request: web.Request, body: dict, pieces: list[dict], usage_head: dict,
                  usage: dict) -> web.StreamResponse:
    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                           "Cache-Control": "no-cache"})
    await response.prepare(request)
    for piece in pieces:
        if include_usage:
            piece["usage"] = None  # as OpenAI does once include_usage is on
        await response.write(b"data: " + json.dumps(piece, separators=(",", ":")).encode() + b"\n\n")
    if include_usage:
        tail = {**usage_head, "usage": usage}
        await response.write(b"data: " + json.dumps(tail, separators=(",", ":")).encode() + b"\n\n")
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


async def _embeddings(request: web.Request) -> web.Response:
    body = await _body(request)
    if isinstance(body, web.Response):
        return body
    inputs = body.get("input")
    if isinstance(inputs, str) or (isinstance(inputs, list) and inputs and isinstance(inputs[0], int)):
        inputs = [inputs]
    if not isinstance(inputs, list) or not inputs:
        return _error("input must be a string or an array", "input")
    data = []
    for index, item in enumerate(inputs):
        digest = hashlib.sha256(json.dumps(item).encode()).digest()
        vector = [(b - 128) / 128 for b in digest[:8]]
        if body.get("encoding_format") == "base64":
            embedding = base64.b64encode(struct.pack("<8f", *vector)).decode()
        else:
            embedding = vector
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    prompt = count_prompt("embeddings", body, _ENCODING_MODEL)
    return web.json_response({"object": "list", "data": data, "model": body["model"],
                              "usage": {"prompt_tokens": prompt, "total_tokens": prompt}})


async def _models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [
        {"id": "echo", "object": "model", "created": 0, "owned_by": "payware"}]})
