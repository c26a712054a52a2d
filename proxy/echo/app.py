"""The echo model: a local provider that speaks OpenAI's wire format, for trying Payware.

It answers with the last user message (or the prompt), streamed or not, with real usage
counted by tiktoken (o200k_base; prompts the OpenAI-cookbook way), so a newcomer can make a
metered request without a provider account. The proxy starts it in-process on a loopback port
and forwards to it over HTTP, exactly as it would to a real provider. It needs no API key.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import secrets
import struct
import time

from aiohttp import web

from metering.usage.tokens import count_prompt, encoding_for
from proxy.echo import anthropic as echo_anthropic, gemini as echo_gemini

_ENCODING_MODEL = "gpt-4o"  # any o200k_base model: the echo's tokenizer, whatever model was asked for
_FINGERPRINT = "fp_echo"
_DIMENSIONS = 8


def make_echo_app() -> web.Application:
    """The echo model's routes: chat and text completions (streamed or not), embeddings, models, and
    Anthropic's messages and count_tokens."""
    app = web.Application(middlewares=[_render_bad_requests])
    app.router.add_post("/v1/chat/completions", _chat)
    app.router.add_post("/v1/completions", _completions)
    app.router.add_post("/v1/embeddings", _embeddings)
    app.router.add_get("/v1/models", _models)
    echo_anthropic.add_routes(app)  # Anthropic's Messages wire, in its own module
    echo_gemini.add_routes(app)  # Gemini's generateContent wire, in its own module
    return app


async def start_echo_server(*, host: str = "127.0.0.1", port: int = 0) -> tuple[web.AppRunner, str]:
    """Serve the echo model; returns the runner (to clean up) and its `/v1` base URL."""
    # Load the tokenizer now, off the event loop, rather than on the first request.
    await asyncio.to_thread(encoding_for, _ENCODING_MODEL)
    runner = web.AppRunner(make_echo_app(), access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1]
    return runner, f"http://{host}:{bound}/v1"


class _BadRequest(Exception):
    """A 400 in OpenAI's error envelope, rendered by `_render_bad_requests`."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param, self.code = param, code


@web.middleware
async def _render_bad_requests(request: web.Request, handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except _BadRequest as exc:
        body = {"error": {"message": str(exc), "type": "invalid_request_error", "param": exc.param,
                          "code": exc.code}}
        return web.json_response(body, status=400)


async def _body(request: web.Request, required: str) -> dict:
    try:
        body = await request.json()
    except ValueError:
        raise _BadRequest("We could not parse the JSON body of your request.") from None
    if not isinstance(body, dict) or not isinstance(body.get("model"), str) or not body["model"]:
        raise _BadRequest("you must provide a model parameter")
    if body.get(required) is None:
        raise _BadRequest(f"Missing required parameter: '{required}'.", required, "missing_required_parameter")
    if body[required] == []:
        raise _BadRequest(f"Invalid '{required}': empty array. Expected an array with minimum length 1.",
                          required, "empty_array")
    for name in ("max_tokens", "max_completion_tokens"):
        limit = body.get(name)
        if limit is not None and (type(limit) is not int or limit < 1):
            raise _BadRequest(f"Invalid '{name}': expected an integer >= 1, got {limit!r}.", name,
                              "integer_below_min_value")
    return body


def _reply(text: str, body: dict) -> tuple[list[int], str]:
    """The reply's tokens, cut to the request's token limit, and the finish reason."""
    tokens = encoding_for(_ENCODING_MODEL).encode_ordinary(text)  # as metering.tokens.count_text counts
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    if limit is not None and limit < len(tokens):
        return tokens[:limit], "length"
    return tokens, "stop"


def _pieces(tokens: list[int]) -> list[str]:
    """One text piece per token, except that a character split across tokens waits for its end."""
    encoding = encoding_for(_ENCODING_MODEL)
    pieces, pending = [], b""
    for token in tokens:
        pending += encoding.decode_single_token_bytes(token)
        try:
            pieces.append(pending.decode())
        except UnicodeDecodeError:
            continue
        pending = b""
    if pending:  # a reply cut by max_tokens inside a character
        pieces.append(pending.decode(errors="replace"))
    return pieces


def _usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}


def _last_user_text(messages: object) -> str:
    for message in reversed(messages if isinstance(messages, list) else []):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):
                return "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
            return content if isinstance(content, str) else ""
    return ""


def _prompt_text(prompt: object) -> str:
    """The prompt as text: a string, strings (joined by spaces), or token arrays (decoded)."""
    if isinstance(prompt, str):
        return prompt
    if not isinstance(prompt, list):
        raise _BadRequest("Invalid type for 'prompt': expected a string or an array.", "prompt", "invalid_type")
    if all(type(token) is int for token in prompt):
        prompt = [prompt]  # one token array
    texts = []
    for item in prompt:
        if isinstance(item, list) and all(type(token) is int for token in item):
            try:
                item = encoding_for(_ENCODING_MODEL).decode(item)
            except (KeyError, ValueError, OverflowError):
                raise _BadRequest("Invalid token in 'prompt'.", "prompt", "invalid_value") from None
        if not isinstance(item, str):
            raise _BadRequest("Invalid type for 'prompt': expected strings or token arrays.", "prompt",
                              "invalid_type")
        texts.append(item)
    return " ".join(texts)


async def _chat(request: web.Request) -> web.StreamResponse:
    body = await _body(request, "messages")
    if not isinstance(body["messages"], list):
        raise _BadRequest("Invalid type for 'messages': expected an array.", "messages", "invalid_type")
    tokens, finish = _reply(_last_user_text(body["messages"]), body)
    usage = _usage(count_prompt("chat", body, _ENCODING_MODEL), len(tokens))
    ident, created, model = "chatcmpl-" + secrets.token_hex(14), int(time.time()), body["model"]
    if not body.get("stream"):
        message = {"role": "assistant", "content": "".join(_pieces(tokens)), "refusal": None, "annotations": []}
        return web.json_response({
            "id": ident, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
            "usage": usage, "service_tier": "default", "system_fingerprint": _FINGERPRINT})

    def chunk(choices: list) -> dict:
        return {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
                "service_tier": "default", "system_fingerprint": _FINGERPRINT, "choices": choices}

    def choice(delta: dict, finish_reason: str | None = None) -> list:
        return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]

    chunks = [chunk(choice({"role": "assistant", "content": "", "refusal": None}))]
    chunks += [chunk(choice({"content": piece})) for piece in _pieces(tokens)]
    chunks.append(chunk(choice({}, finish)))
    return await _stream(request, body, chunks, chunk([]), usage)


async def _completions(request: web.Request) -> web.StreamResponse:
    body = await _body(request, "prompt")
    tokens, finish = _reply(_prompt_text(body["prompt"]), body)
    prompt = count_prompt("completions", body, _ENCODING_MODEL)
    usage = {"prompt_tokens": prompt, "completion_tokens": len(tokens), "total_tokens": prompt + len(tokens)}
    head = {"id": "cmpl-" + secrets.token_hex(14), "object": "text_completion", "created": int(time.time())}

    def chunk(choices: list) -> dict:
        return {**head, "choices": choices, "model": body["model"], "system_fingerprint": _FINGERPRINT}

    def choice(text: str, finish_reason: str | None = None) -> list:
        return [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}]

    if not body.get("stream"):
        return web.json_response({**chunk(choice("".join(_pieces(tokens)), finish)), "usage": usage})
    chunks = [chunk(choice(piece)) for piece in _pieces(tokens)]
    chunks.append(chunk(choice("", finish)))
    return await _stream(request, body, chunks, chunk([]), usage)


async def _stream(request: web.Request, body: dict, chunks: list[dict], usage_chunk: dict,
                  usage: dict) -> web.StreamResponse:
    """Send `chunks` as server-sent events; then, only if the request asked, the usage chunk."""
    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    if include_usage:
        chunks = [{**c, "usage": None} for c in chunks] + [{**usage_chunk, "usage": usage}]  # as OpenAI does
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                           "Cache-Control": "no-cache"})
    await response.prepare(request)
    for chunk in chunks:
        await response.write(b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n")
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


def _vector(item: object) -> list[float]:
    """A deterministic unit-free vector in [-1, 1): the same input always embeds the same."""
    digest = hashlib.sha256(json.dumps(item).encode()).digest()
    return [(byte - 128) / 128 for byte in digest[:_DIMENSIONS]]


async def _embeddings(request: web.Request) -> web.Response:
    body = await _body(request, "input")
    inputs = body["input"]
    if isinstance(inputs, str) or (isinstance(inputs, list) and all(type(t) is int for t in inputs)):
        inputs = [inputs]  # one string, or one token array
    if not isinstance(inputs, list):
        raise _BadRequest("Invalid type for 'input': expected a string or an array.", "input", "invalid_type")
    data = []
    for index, item in enumerate(inputs):
        vector = _vector(item)
        if body.get("encoding_format") == "base64":  # the openai SDK's default: float32, little-endian
            embedding: list[float] | str = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        else:
            embedding = vector
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    prompt = count_prompt("embeddings", body, _ENCODING_MODEL)
    return web.json_response({"object": "list", "data": data, "model": body["model"],
                              "usage": {"prompt_tokens": prompt, "total_tokens": prompt}})


async def _models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [
        {"id": "echo", "object": "model", "created": 0, "owned_by": "payware"}]})
