"""The fake provider's Gemini wire: `POST /v1beta/models/{model}:generateContent`,
`:streamGenerateContent?alt=sse` and `:countTokens`, and the same under `/v1/models/` (google-genai
3.x calls `v1` by default), byte for byte as generativelanguage.googleapis.com answers.

The scenario is the model named in the path (see SCENARIOS; an unknown name acts as
`gemini-fake-ok`); the key may come as `x-goog-api-key` or `?key=` (recorded, not checked).
The wire, as Gemini sends it (public captures of the real API, 2025-2026):

- a whole answer is JSON indented by 2: {"candidates": [{"content": {"parts": [...], "role": "model"},
  "finishReason", "index"}], "usageMetadata": {...}, "modelVersion", "responseId"}.
- a stream (`alt=sse`) is unnamed events framed with CRLF: `data: JSON\\r\\n\\r\\n`, each JSON on
  one line written `{"key": value,"key": value}` (a space after colons, none after commas). Every
  chunk repeats `usageMetadata` with cumulative counts, so the last chunk's values win; the last
  chunk carries `finishReason`. No terminator event.
- usageMetadata in field-number order: promptTokenCount (cached tokens included),
  candidatesTokenCount, totalTokenCount (= prompt + candidates + toolUsePrompt + thoughts),
  cachedContentTokenCount, promptTokensDetails, cacheTokensDetails, candidatesTokensDetails,
  toolUsePromptTokenCount, toolUsePromptTokensDetails, thoughtsTokenCount; zero counts are
  omitted (proto3 JSON).
- a prompt the provider blocks is a 200 with `promptFeedback.blockReason`, no candidates, and
  usage of the prompt alone.
- errors: {"error": {"code", "message", "status", "details"?}}, indented by 2.

Scenarios: `gemini-fake-ok`; `-cached-thoughts` (cached, tool-use prompt and thought tokens, a
thought part first); `-blocked` (200 with promptFeedback.blockReason); `-cut` (the connection drops
after two chunks, whose usage is partial; not streamed: dropped with no answer); `-slow` (200
chunks, SLOW_DELAY_MS apart or `x-fake-delay-ms`); `-error-400` (INVALID_ARGUMENT); `-overloaded`
(503 UNAVAILABLE). `:countTokens` answers COUNT_TOKENS for any model.
`stream_events` / `stream_bytes` give the exact bytes of each scenario's stream.
"""

from __future__ import annotations

import asyncio
import json

from aiohttp import web

from tests.fakes.common import CUT_AFTER_WORDS, SLOW_WORDS, drop, handler, slow_delay, write_stream

RESPONSE_ID = "FakeGeminiResponse00001"
CHUNKS = ["Hello", " from fake", " Gemini."]  # the text of each chunk of `gemini-fake-ok`
CHUNK_TOKENS = [2, 4, 3]  # the candidates tokens of each chunk (cumulative in usageMetadata)
REPLY = "".join(CHUNKS)
THOUGHT = "**Greeting the user**\n\nThe user said hi; a short answer will do.\n\n\n"

# The usage each scenario reports (its last chunk's usageMetadata): tests assert these exactly.
PROMPT_TOKENS = 11
CANDIDATES_TOKENS = sum(CHUNK_TOKENS)  # 9
CACHED_PROMPT_TOKENS = 1200  # gemini-fake-cached-thoughts: the whole prompt, cache included
CACHED_TOKENS = 1024
CACHED_CANDIDATES_TOKENS = 30
TOOL_USE_PROMPT_TOKENS = 50
THOUGHTS_TOKENS = 200
BLOCKED_PROMPT_TOKENS = 8
SLOW_CANDIDATES_TOKENS = len(SLOW_WORDS)
COUNT_TOKENS = 11  # what :countTokens answers

SCENARIOS = ("gemini-fake-ok", "gemini-fake-cached-thoughts", "gemini-fake-blocked", "gemini-fake-cut",
             "gemini-fake-slow", "gemini-fake-error-400", "gemini-fake-overloaded")

BAD_FIELD = "Invalid JSON payload received. Unknown name \"temperatur\" at 'generation_config': Cannot find field."
ERROR_400 = {"error": {"code": 400, "message": BAD_FIELD, "status": "INVALID_ARGUMENT", "details": [
    {"@type": "type.googleapis.com/google.rpc.BadRequest",
     "fieldViolations": [{"field": "generation_config", "description": BAD_FIELD}]}]}}
ERROR_503 = {"error": {"code": 503, "message": "The model is overloaded. Please try again later.",
                       "status": "UNAVAILABLE"}}
BLOCK_FEEDBACK = {"blockReason": "SAFETY", "safetyRatings": [
    {"category": "HARM_CATEGORY_SEXUALLY_EXPLICIT", "probability": "NEGLIGIBLE"},
    {"category": "HARM_CATEGORY_HATE_SPEECH", "probability": "NEGLIGIBLE"},
    {"category": "HARM_CATEGORY_HARASSMENT", "probability": "NEGLIGIBLE"},
    {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH"}]}


def _text(tokens: int) -> list[dict]:
    return [{"modality": "TEXT", "tokenCount": tokens}]


def usage_metadata(scenario: str, candidates: int | None = None) -> dict:
    """`scenario`'s usageMetadata with `candidates` tokens generated so far (None: all of them)."""
    if scenario == "gemini-fake-blocked":
        return {"promptTokenCount": BLOCKED_PROMPT_TOKENS, "totalTokenCount": BLOCKED_PROMPT_TOKENS,
                "promptTokensDetails": _text(BLOCKED_PROMPT_TOKENS)}
    cached = scenario == "gemini-fake-cached-thoughts"
    final = {"gemini-fake-cached-thoughts": CACHED_CANDIDATES_TOKENS,
             "gemini-fake-slow": SLOW_CANDIDATES_TOKENS}.get(scenario, CANDIDATES_TOKENS)
    done = candidates is None
    candidates = final if candidates is None else candidates
    prompt = CACHED_PROMPT_TOKENS if cached else PROMPT_TOKENS
    tool_use = TOOL_USE_PROMPT_TOKENS if cached else 0
    thoughts = THOUGHTS_TOKENS if cached else 0
    meta = {"promptTokenCount": prompt, "candidatesTokenCount": candidates,
            "totalTokenCount": prompt + candidates + tool_use + thoughts}
    if cached:
        meta["cachedContentTokenCount"] = CACHED_TOKENS
    meta["promptTokensDetails"] = _text(prompt)
    if cached:
        meta["cacheTokensDetails"] = _text(CACHED_TOKENS)
    if done:
        meta["candidatesTokensDetails"] = _text(candidates)
    if cached:
        meta.update(toolUsePromptTokenCount=tool_use, toolUsePromptTokensDetails=_text(tool_use),
                    thoughtsTokenCount=thoughts)
    return {key: value for key, value in meta.items() if value != 0}  # proto3 JSON omits zeros


def _plan(scenario: str) -> list[tuple[dict, int]]:
    """The parts of each chunk of `scenario`, with the cumulative candidates tokens after it."""
    if scenario == "gemini-fake-slow":
        return [({"text": word}, i + 1) for i, word in enumerate(SLOW_WORDS)]
    if scenario == "gemini-fake-cached-thoughts":
        return [({"text": THOUGHT, "thought": True}, 0), ({"text": "Hello from fake"}, 20),
                ({"text": " Gemini, cached."}, CACHED_CANDIDATES_TOKENS)]
    plan, total = [], 0
    for text, tokens in zip(CHUNKS, CHUNK_TOKENS):
        total += tokens
        plan.append(({"text": text}, total))
    return plan[:CUT_AFTER_WORDS] if scenario == "gemini-fake-cut" else plan


def _chunk(scenario: str, model: str, parts: list[dict], candidates: int | None, finish: bool) -> dict:
    if scenario == "gemini-fake-blocked":
        return {"promptFeedback": BLOCK_FEEDBACK, "usageMetadata": usage_metadata(scenario),
                "modelVersion": model, "responseId": RESPONSE_ID}
    candidate = {"content": {"parts": parts, "role": "model"}}
    if finish:
        candidate["finishReason"] = "STOP"
    candidate["index"] = 0
    return {"candidates": [candidate], "usageMetadata": usage_metadata(scenario, candidates),
            "modelVersion": model, "responseId": RESPONSE_ID}


def response_body(scenario: str, model: str) -> dict:
    """The non-streamed generateContent answer of `scenario`."""
    plan = _plan(scenario)
    parts = [part for part, _ in plan if part.get("thought")]
    parts.append({"text": "".join(part["text"] for part, _ in plan if not part.get("thought"))})
    return _chunk(scenario, model, parts, None, True)


def chunks(scenario: str, model: str) -> list[dict]:
    """The JSON objects a stream of `scenario` sends, in order."""
    if scenario == "gemini-fake-blocked":
        return [_chunk(scenario, model, [], None, True)]
    plan = _plan(scenario)
    last = len(plan) - 1
    cut = scenario == "gemini-fake-cut"
    return [_chunk(scenario, model, [part], None if i == last and not cut else tokens, i == last and not cut)
            for i, (part, tokens) in enumerate(plan)]


def sse_json(obj: dict) -> bytes:
    """One line of JSON as Gemini's streams write it: `{"key": value,"key": value}`."""
    return json.dumps(obj, separators=(",", ": "), ensure_ascii=False).encode()


def pretty(obj: dict | list) -> bytes:
    """A whole JSON answer as Gemini writes it: indented by 2, ending in a newline."""
    return json.dumps(obj, indent=2, ensure_ascii=False).encode() + b"\n"


def stream_events(scenario: str, model: str) -> list[bytes]:
    """The SSE events (one bytes each) a stream of `scenario` sends, in order."""
    return [b"data: " + sse_json(chunk) + b"\r\n\r\n" for chunk in chunks(scenario, model)]


def stream_bytes(scenario: str, model: str) -> list[bytes]:
    """The network writes of a stream of `scenario` (one event each)."""
    return stream_events(scenario, model)


def _json(body: dict | list, status: int = 200) -> web.Response:
    return web.Response(status=status, body=pretty(body), content_type="application/json", charset="UTF-8")


async def _models(request: web.Request, body: dict) -> web.StreamResponse:
    name, _, method = request.match_info["target"].rpartition(":")
    model = name.removeprefix("models/")
    scenario = model if model in SCENARIOS else "gemini-fake-ok"
    if method == "countTokens":
        return _json({"totalTokens": COUNT_TOKENS, "promptTokensDetails": _text(COUNT_TOKENS)})
    if method not in ("generateContent", "streamGenerateContent"):
        return _json({"error": {"code": 404, "message": f"Method not found: {method}.", "status": "NOT_FOUND"}}, 404)
    if scenario == "gemini-fake-error-400":
        return _json(ERROR_400, 400)
    if scenario == "gemini-fake-overloaded":
        return _json(ERROR_503, 503)
    if method == "streamGenerateContent":
        if request.query.get("alt") != "sse":  # without alt=sse Gemini streams one JSON array
            return _json(chunks(scenario, model))  # its exact layout is not known: not byte for byte
        delay = slow_delay(request) if scenario == "gemini-fake-slow" else 0
        return await write_stream(request, stream_bytes(scenario, model), content_type="text/event-stream",
                                  delay=delay, cut=scenario == "gemini-fake-cut")
    if scenario == "gemini-fake-cut":
        return drop(request)
    if scenario == "gemini-fake-slow":
        await asyncio.sleep(slow_delay(request) * 10)
    return _json(response_body(scenario, model))


def add_routes(app: web.Application, stats_key: web.AppKey) -> None:
    """Serve Gemini's generateContent routes (v1beta and v1) on `app`, recording into `app[stats_key]`."""
    answer = handler(stats_key, _models)
    app.router.add_post("/v1beta/models/{target}", answer)
    app.router.add_post("/v1/models/{target}", answer)
