"""The echo model on Gemini's wire: `POST /v1/models/{model}:generateContent`,
`:streamGenerateContent` and `:countTokens` (and the same under /v1beta/).

It answers with the last user turn's text, as a GenerateContentResponse or, with `?alt=sse`,
as Gemini's stream (one chunk per token, CRLF-framed, each repeating the cumulative
usageMetadata, the last one carrying finishReason; without `alt=sse` the chunks as one JSON
array), so an app on the google-genai SDK can try Payware with no Google account. Usage is
tiktoken's (o200k_base) count of the prompt, as Payware estimates it
(`proxy.formats.gemini.count_prompt`), and of the reply; countTokens answers the same prompt
count. `generationConfig.maxOutputTokens` cuts the reply (finishReason MAX_TOKENS). Errors are
in Google's envelope.
"""

from __future__ import annotations

import json
import secrets

from aiohttp import web

from metering.usage.tokens import encoding_for
from proxy.formats.gemini import count_prompt, rpc_status, split_target

_ENCODING_MODEL = "gpt-4o"  # any o200k_base model, as the OpenAI echo counts


def add_routes(app: web.Application) -> None:
    """Gemini's model routes on the echo app, under both API versions."""
    app.router.add_post("/v1/models/{target}", _models)
    app.router.add_post("/v1beta/models/{target}", _models)


def _error(status: int, message: str) -> web.Response:
    body = {"error": {"code": status, "message": message, "status": rpc_status(status)}}
    return web.Response(status=status, body=_pretty(body), content_type="application/json")


def _pretty(obj: object) -> bytes:
    """A whole answer as Gemini writes it: JSON indented by 2."""
    return json.dumps(obj, indent=2, ensure_ascii=False).encode() + b"\n"


def _sse(obj: dict) -> bytes:
    """One stream event as Gemini writes it: `{"key": value,"key": value}`, CRLF-framed."""
    return b"data: " + json.dumps(obj, separators=(",", ": "), ensure_ascii=False).encode() + b"\r\n\r\n"


def _last_user_text(contents: object) -> str:
    turns = contents if isinstance(contents, list) else [contents]
    for turn in reversed(turns):
        if isinstance(turn, str):
            return turn
        if isinstance(turn, dict) and turn.get("role", "user") == "user":
            parts = turn.get("parts")
            return "".join(p["text"] for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str)
                           and not p.get("thought")) if isinstance(parts, list) else ""
    return ""


def _pieces(body: dict) -> tuple[list[tuple[str, int]], str]:
    """The reply's text pieces (one per token, a split character kept whole), each with the
    tokens generated up to its end, and the finishReason."""
    encoding = encoding_for(_ENCODING_MODEL)
    tokens = encoding.encode_ordinary(_last_user_text(body.get("contents")))
    config = body.get("generationConfig") if isinstance(body.get("generationConfig"), dict) else {}
    limit, finish = config.get("maxOutputTokens"), "STOP"
    if type(limit) is int and 0 < limit < len(tokens):
        tokens, finish = tokens[:limit], "MAX_TOKENS"
    pieces, pending = [], b""
    for count, token in enumerate(tokens, 1):
        pending += encoding.decode_single_token_bytes(token)
        try:
            pieces.append((pending.decode(), count))
        except UnicodeDecodeError:
            continue
        pending = b""
    if pending:
        pieces.append((pending.decode(errors="replace"), len(tokens)))
    return pieces, finish


def _usage(prompt: int, candidates: int, done: bool) -> dict:
    """usageMetadata in Gemini's field order; zero counts omitted, as proto3 JSON does."""
    usage = {"promptTokenCount": prompt, "candidatesTokenCount": candidates, "totalTokenCount": prompt + candidates,
             "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}]}
    if done:
        usage["candidatesTokensDetails"] = [{"modality": "TEXT", "tokenCount": candidates}]
    return {key: value for key, value in usage.items() if value != 0}


async def _models(request: web.Request) -> web.StreamResponse:
    model, method = split_target(request.match_info["target"])
    try:
        body = json.loads(await request.read())
    except ValueError:
        return _error(400, "Invalid JSON payload received.")
    if not isinstance(body, dict):
        return _error(400, "Invalid JSON payload received: the body must be an object.")
    if method == "countTokens":
        inner = body.get("generateContentRequest")
        prompt = count_prompt(inner if isinstance(inner, dict) else body, _ENCODING_MODEL)
        return web.Response(body=_pretty({"totalTokens": prompt, "promptTokensDetails": [
            {"modality": "TEXT", "tokenCount": prompt}]} if prompt else {}), content_type="application/json")
    if method not in ("generateContent", "streamGenerateContent"):
        return _error(404, f"Method not found: {method}.")
    if not body.get("contents"):
        return _error(400, "* GenerateContentRequest.contents: contents is not specified\n")
    prompt = count_prompt(body, _ENCODING_MODEL)
    pieces, finish = _pieces(body)
    response_id = secrets.token_urlsafe(16)

    def chunk(text: str, candidates: int, last: bool) -> dict:
        candidate: dict = {"content": {"parts": [{"text": text}], "role": "model"}}
        if last:
            candidate["finishReason"] = finish
        candidate["index"] = 0
        return {"candidates": [candidate], "usageMetadata": _usage(prompt, candidates, last), "modelVersion": model,
                "responseId": response_id}

    generated = pieces[-1][1] if pieces else 0
    if method == "generateContent":
        text = "".join(piece for piece, _ in pieces)
        return web.Response(body=_pretty(chunk(text, generated, True)), content_type="application/json")
    last = len(pieces) - 1
    chunks = [chunk(piece, count, i == last) for i, (piece, count) in enumerate(pieces)] or [chunk("", 0, True)]
    if request.query.get("alt") != "sse":
        return web.Response(body=_pretty(chunks), content_type="application/json")
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for item in chunks:
        await response.write(_sse(item))
    await response.write_eof()
    return response
