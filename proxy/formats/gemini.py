"""Gemini's generateContent wire format (generativelanguage.googleapis.com), natively.

Requests: the model and the method are in the path, `/v1beta/models/{model}:generateContent`
or `:streamGenerateContent` (the same under `/v1/`, google-genai's default); the body never
names the model, so the client's bytes go upstream unchanged (only a clamped call is
serialized again), to the same API version the client called. A stream is SSE when the
client asks `?alt=sse` (every SDK does); without it Gemini streams one JSON array, which
Payware relays whole when the provider ends it and bills like a whole answer (its last
element's usage), so nothing goes unmetered.

Usage is `usageMetadata`, on every stream chunk with cumulative counts (the last one wins):
`promptTokenCount` includes `cachedContentTokenCount` (cache reads); `toolUsePromptTokenCount`
is input on top of it; `candidatesTokenCount + thoughtsTokenCount` is the output, the
thoughts being its reasoning. Streams have no terminator: the answer ends with the chunk
carrying a `finishReason` (for every candidate), or with `promptFeedback.blockReason` when
the provider blocks the prompt (a 200 billed as its usageMetadata says: the prompt alone).

Errors use Google's envelope `{"error": {"code", "message", "status", "details"}}`; Payware's
own carry a `google.rpc.ErrorInfo` detail (domain "payware") whose reason is Payware's code,
so a spend-cap refusal (429 RESOURCE_EXHAUSTED, reason SPEND_CAP_REACHED) is never mistaken
for the provider's quota.
"""

from __future__ import annotations

import json
import re
from urllib.parse import quote

from aiohttp import web

from config.schema import MAX_OUTPUT_TOKENS, ModelConfig, ProviderConfig
from metering.usage.normalized import Usage, bounded_usage, token_count, unread_counts
from metering.usage.sse import Frame, SSEFramer, first_of, frames_of
from metering.usage.tokens import count_text
from proxy.errors import ApiError, InvalidRequest
from proxy.formats.base import Outgoing
from proxy.jsonbody import dump_json, load_json_or_none

GENERATE_METHODS = ("generateContent", "streamGenerateContent")
# Gemini bills an image of up to 384 px (and each 768 px tile of a larger one) 258 tokens.
# The size of inline data or a file is not read here: each such part counts as one image (an
# estimate, low for long audio, video or PDFs, whose tokens only the provider can count).
INLINE_PART = 258
MAX_CANDIDATES = 100  # candidateCount above this is refused (Gemini allows up to 8 today)

# google.rpc.Code names by HTTP status, as Google's REST APIs pair them.
_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
           408: "DEADLINE_EXCEEDED", 409: "ABORTED", 413: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED",
           499: "CANCELLED", 500: "INTERNAL", 501: "UNIMPLEMENTED", 502: "UNAVAILABLE", 503: "UNAVAILABLE",
           504: "DEADLINE_EXCEEDED"}
_ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
_RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"


def split_target(target: str) -> tuple[str, str]:
    """(model, method) of a path's last segment, `gemini-2.5-pro:generateContent`; a client may
    write the model as its resource name, `models/gemini-2.5-pro` (URL-encoded)."""
    model, _, method = target.rpartition(":")
    return model.removeprefix("models/"), method


def rpc_status(status: int) -> str:
    """The google.rpc.Code name Google's APIs answer with `status`."""
    return _STATUS.get(status) or ("INTERNAL" if status >= 500 else "FAILED_PRECONDITION")


def gemini_usage(meta: object) -> Usage | None:
    """A `usageMetadata` object in Payware's classes, or None if it is not an object."""
    if not isinstance(meta, dict):
        return None
    thoughts = token_count(meta.get("thoughtsTokenCount"))
    return bounded_usage(token_count(meta.get("promptTokenCount")) + token_count(meta.get("toolUsePromptTokenCount")),
                         token_count(meta.get("cachedContentTokenCount")),
                         token_count(meta.get("candidatesTokenCount")) + thoughts, thoughts, 0, 0, meta,
                         unread_counts(meta, ("promptTokenCount", "toolUsePromptTokenCount"),
                                       ("candidatesTokenCount", "thoughtsTokenCount")))


class GeminiFormat:
    """generateContent and streamGenerateContent (see the module docstring)."""

    name = "gemini.generateContent"
    endpoint = "generate"
    modes = ("chat",)
    kinds = ("gemini", "echo")

    def model_name(self, body: dict, request: web.Request) -> str:
        model, _ = split_target(request.match_info.get("target", ""))
        if not model:
            raise InvalidRequest("the path must name a model: /v1beta/models/{model}:generateContent",
                                 param="model")
        return model

    def stream(self, body: dict, request: web.Request) -> bool:
        """An SSE stream: streamGenerateContent with `?alt=sse` (without it: a JSON array, relayed whole)."""
        _, method = split_target(request.match_info.get("target", ""))
        return method == "streamGenerateContent" and request.query.get("alt") == "sse"

    def validate(self, body: dict) -> None:
        config = body.get("generationConfig")
        if config is None:
            return
        if not isinstance(config, dict):
            raise InvalidRequest("`generationConfig` must be an object", param="generationConfig")
        for name, top in (("maxOutputTokens", MAX_OUTPUT_TOKENS), ("candidateCount", MAX_CANDIDATES)):
            value = config.get(name)
            if value is not None and (type(value) is not int or not 1 <= value <= top):
                raise InvalidRequest(f"`generationConfig.{name}` must be an integer from 1 to {top}",
                                     param=f"generationConfig.{name}", code="invalid_value")

    def prompt_tokens(self, body: dict, model: str) -> int:
        return count_prompt(body, model)

    def max_output(self, body: dict) -> int | None:
        """maxOutputTokens (thoughts included, on Gemini 2.5) for each candidate asked for."""
        config = body.get("generationConfig")
        if not isinstance(config, dict):
            return None
        value = config.get("maxOutputTokens")
        if type(value) is not int or value < 1:
            return None
        return value * _candidates(config)

    def answers(self, body: dict) -> int:
        """The candidates asked for: each may use the whole output limit."""
        config = body.get("generationConfig")
        return _candidates(config) if isinstance(config, dict) else 1

    def max_output_field(self, body: dict) -> str:
        config = body.get("generationConfig")
        if isinstance(config, dict) and _candidates(config) > 1:
            return "generationConfig.maxOutputTokens x generationConfig.candidateCount"
        return "generationConfig.maxOutputTokens"

    def with_max_output(self, body: dict, tokens: int) -> dict:
        config = body.get("generationConfig") if isinstance(body.get("generationConfig"), dict) else {}
        return {**body, "generationConfig": {**config, "maxOutputTokens": max(1, tokens // _candidates(config))}}

    def outgoing(self, raw: bytes, body: dict, model: ModelConfig, provider: ProviderConfig, stream: bool,
                 request: web.Request) -> Outgoing:
        """The client's bytes to the same method and API version; only `alt=sse` of its query
        goes along (never its `?key=`, which is a Payware key)."""
        _, method = split_target(request.match_info.get("target", ""))
        config = body.get("generationConfig")
        return Outgoing(upstream_path(model, provider, request, method, sse=stream), raw or dump_json(body),
                        answers=_candidates(config) if isinstance(config, dict) else 1)

    def watcher(self, outgoing: Outgoing) -> GeminiStream:
        return GeminiStream(answers=outgoing.answers)

    def usage(self, parsed: object) -> Usage | None:
        """A whole answer's usageMetadata; of a JSON-array stream, the last element's."""
        if isinstance(parsed, list):
            for item in reversed(parsed):
                if isinstance(item, dict) and isinstance(item.get("usageMetadata"), dict):
                    return gemini_usage(item["usageMetadata"])
            return None
        return gemini_usage(parsed.get("usageMetadata")) if isinstance(parsed, dict) else None

    def text(self, parsed: object) -> str:
        out: list[str] = []
        for item in parsed if isinstance(parsed, list) else [parsed]:
            if isinstance(item, dict):
                for candidate in _candidates_of(item):
                    _collect_text(candidate, out)
        return "".join(out)

    def answer_id(self, parsed: object) -> str | None:
        """The provider's `responseId`, kept on the event as evidence."""
        item = parsed[-1] if isinstance(parsed, list) and parsed else parsed
        value = item.get("responseId") if isinstance(item, dict) else None
        return value if isinstance(value, str) else None

    def error_body(self, error: ApiError) -> dict:
        return gemini_envelope(error)

    def upstream_error(self, status: int, text: str, provider: str) -> dict:
        return {"error": {"code": status, "message": f"provider {provider!r} answered {status}: {text}",
                          "status": rpc_status(status),
                          "details": [_error_info("UPSTREAM_ERROR", {"type": "upstream_error",
                                                                     "code": "upstream_error"})]}}


GENERATE = GeminiFormat()


def upstream_path(model: ModelConfig, provider: ProviderConfig, request: web.Request, method: str, *,
                  sse: bool = False) -> str:
    """The provider's path for `method` of `model`: under the API version the client called,
    unless the provider's base URL already names one (the echo model's ends in /v1)."""
    base = (provider.base_url or "").rstrip("/")
    if provider.kind == "echo" or base.endswith(("/v1", "/v1beta", "/v1alpha")):
        prefix = ""
    else:
        prefix = "/v1beta" if request.path.startswith("/v1beta/") else "/v1"
    return f"{prefix}/{quote(resource_name(model), safe='/')}:{method}" + ("?alt=sse" if sse else "")


def resource_name(model: ModelConfig) -> str:
    """The provider's name of `model`: `models/{upstream}`, or the upstream name as configured
    when it is already a resource name (`tunedModels/…`)."""
    return model.upstream if "/" in model.upstream else f"models/{model.upstream}"


def gemini_envelope(error: ApiError) -> dict:
    """A Payware error in Google's envelope, with Payware's type and code in an ErrorInfo."""
    reason = (error.code or error.type or "error").upper()
    metadata = {"type": error.type, "code": error.code or ""}
    if error.param:
        metadata["param"] = error.param
    details: list[dict] = [_error_info(reason, metadata)]
    retry = error.headers.get("Retry-After")
    if retry and retry.isdigit():
        details.append({"@type": _RETRY_INFO, "retryDelay": f"{retry}s"})
    return {"error": {"code": error.status, "message": error.message, "status": rpc_status(error.status),
                      "details": details}}


def _error_info(reason: str, metadata: dict) -> dict:
    return {"@type": _ERROR_INFO, "reason": reason, "domain": "payware", "metadata": metadata}


def _candidates(config: dict) -> int:
    count = config.get("candidateCount")
    return count if type(count) is int and count > 0 else 1


def _candidates_of(chunk: dict) -> list:
    candidates = chunk.get("candidates")
    return [c for c in candidates if isinstance(c, dict)] if isinstance(candidates, list) else []


def _collect_text(candidate: dict, out: list[str]) -> None:
    """The answer text of a candidate (function calls as their JSON); thought summaries are not
    the answer (their tokens come in thoughtsTokenCount)."""
    content = candidate.get("content")
    parts = content.get("parts") if isinstance(content, dict) else None
    for part in parts if isinstance(parts, list) else []:
        if not isinstance(part, dict) or part.get("thought") is True:
            continue
        if isinstance(part.get("text"), str):
            out.append(part["text"])
        elif isinstance(part.get("functionCall"), dict):
            out.append(json.dumps(part["functionCall"], ensure_ascii=False, separators=(",", ":")))
        elif isinstance(part.get("executableCode"), dict) and isinstance(part["executableCode"].get("code"), str):
            out.append(part["executableCode"]["code"])


# What `skim` stops at: the frames the watcher reads as they pass (an answer's end, an error, a
# blocked prompt, a candidate other than the first). A key is found only where it is a key: in
# a JSON string its quotes would be escaped. (A false alarm only means more frames are framed.)
_LOOK_AT = (b'"finishReason"', b'"error"', b'"blockReason"')
_OTHER_INDEX = re.compile(rb'"index"\s*:\s*-?[1-9]')


class GeminiStream:
    """Watches a Gemini SSE stream: the last usageMetadata, the end, a mid-stream error.

    Every chunk carries usageMetadata, with counts so far: only the last one counts. So the
    frames before the first that ends the answer or reports an error pass unread (`skim`),
    their bytes kept: the last usageMetadata among them is read only when the usage is asked
    for and no frame read after them had one, their text only for an estimate.
    """

    __slots__ = ("_meta", "_usage", "error", "done", "terminal", "_answer_id", "_texts", "_open", "_finished",
                 "_several", "_meta_unread", "_id_unread")

    def __init__(self, *, answers: int = 1) -> None:
        self._meta: dict | None = None  # the last usageMetadata object (cumulative: the last one wins)
        self._usage: Usage | None | bool = False  # `usage` of _meta; False: to compute
        self.error: dict | None = None
        self.done = False
        self.terminal = False
        self._answer_id: str | None = None
        self._texts: list[str | bytes] = []  # text read from frames, and skimmed frames not read yet
        self._open: set[int] = set()  # candidates seen without their finishReason yet
        self._finished: set[int] = set()
        self._several = answers > 1  # candidates side by side: every frame is read (see `process`)
        # skimmed bytes after the last frame read that had a usageMetadata (a responseId)
        self._meta_unread: list[bytes] = []
        self._id_unread: list[bytes] = []

    @property
    def usage(self) -> Usage | None:
        """The last usageMetadata seen, in Payware's classes (None before any)."""
        if self._meta_unread:
            meta = _last_in(self._meta_unread, "usageMetadata", dict)
            self._meta_unread = []
            if meta is not None:
                self._meta, self._usage = meta, False
        if self._usage is False:
            self._usage = gemini_usage(self._meta)
        return self._usage

    @property
    def answer_id(self) -> str | None:
        """The last responseId seen: the provider's own id of the answer."""
        if self._id_unread:
            answer_id = _last_in(self._id_unread, "responseId", str)
            self._id_unread = []
            if answer_id is not None:
                self._answer_id = answer_id
        return self._answer_id

    def skim(self, chunk: bytes, framer: SSEFramer) -> int:
        """How many leading bytes of `chunk` go to the client unread: the whole frames before the
        first that `_LOOK_AT` or another candidate's index may be in. Kept as bytes."""
        if self._several:
            return 0
        look = first_of(chunk, _LOOK_AT)
        other = _OTHER_INDEX.search(chunk, 0, look)
        passed = framer.whole(chunk, other.start() if other is not None else look)
        if passed:
            block = chunk[:passed] if passed < len(chunk) else chunk
            self._texts.append(block)
            self._meta_unread.append(block)
            self._id_unread.append(block)
            self.terminal = False
            if 0 not in self._finished and b'"candidates"' in block:
                self._open.add(0)  # the first candidate, unfinished (see `process`)
        return passed

    def process(self, frame: Frame) -> bytes:
        """Always the frame's own bytes: Gemini reports usage unasked, nothing is hidden."""
        self.terminal = False
        data = frame.data
        if data is None:
            return frame.raw
        chunk = load_json_or_none(data)
        if not isinstance(chunk, dict):
            return frame.raw
        if chunk.get("error") is not None:
            error = chunk["error"]
            self.error = error if isinstance(error, dict) else {"message": str(error)}
        meta = chunk.get("usageMetadata")
        if isinstance(meta, dict):  # read when asked: every chunk carries one, only the last counts
            self._meta, self._usage, self._meta_unread = meta, False, []
        if isinstance(chunk.get("responseId"), str):
            self._answer_id, self._id_unread = chunk["responseId"], []
        ends = False
        for candidate in _candidates_of(chunk):
            index = candidate.get("index") if type(candidate.get("index")) is int else 0
            _collect_text(candidate, self._texts)
            if candidate.get("finishReason"):
                ends = True
                self._open.discard(index)
                self._finished.add(index)
            elif index not in self._finished:
                self._open.add(index)
        feedback = chunk.get("promptFeedback")
        blocked = isinstance(feedback, dict) and bool(feedback.get("blockReason"))
        # NOTE: with candidateCount > 1, the answer ends when every candidate seen has finished.
        if (blocked or (ends and not self._open)) and not self.done:
            self.done = self.terminal = True
        return frame.raw

    def output_text(self) -> str:
        if any(isinstance(item, bytes) for item in self._texts):
            texts: list[str] = []
            for item in self._texts:
                if isinstance(item, str):
                    texts.append(item)
                    continue
                for frame in frames_of(item):  # skimmed frames, read now
                    chunk = load_json_or_none(frame.data) if frame.data is not None else None
                    for candidate in _candidates_of(chunk) if isinstance(chunk, dict) else ():
                        _collect_text(candidate, texts)
            self._texts = texts
        return "".join(self._texts)


def _last_in(blocks: list[bytes], key: str, kind: type) -> object | None:
    """The value of `key`, if a `kind`, in the last frame of `blocks` (skimmed bytes, in stream
    order) whose chunk has one."""
    for block in reversed(blocks):
        for frame in reversed(frames_of(block)):
            chunk = load_json_or_none(frame.data) if frame.data is not None else None
            if isinstance(chunk, dict) and isinstance(chunk.get(key), kind):
                return chunk[key]
    return None


def count_prompt(body: dict, model: str) -> int:
    """The prompt's tokens as tiktoken counts them: an estimate of Gemini's own tokenizer.

    Text parts of `contents` and `systemInstruction`, function calls and responses (their
    JSON), `tools` and `toolConfig` (their JSON), and INLINE_PART for each inline-data or file
    part. Content held in a `cachedContent` is not in the body and is not counted. Never
    raises on a bad shape: what cannot be read counts 0.
    """
    if not isinstance(body, dict):
        return 0
    total = 0
    contents = body.get("contents")
    for content in contents if isinstance(contents, list) else [contents]:
        total += _count_content(content, model)
    total += _count_content(body.get("systemInstruction"), model)
    for key in ("tools", "toolConfig"):
        value = body.get(key)
        if value:
            total += count_text(json.dumps(value, ensure_ascii=False, separators=(",", ":")), model)
    return total


def _count_content(content: object, model: str) -> int:
    if isinstance(content, str):  # the REST API wants a Content; a bare string is counted anyway
        return count_text(content, model)
    if not isinstance(content, dict):
        return 0
    parts = content.get("parts")
    total = 0
    for part in parts if isinstance(parts, list) else []:
        if isinstance(part, str):
            total += count_text(part, model)
        elif isinstance(part, dict):
            total += _count_part(part, model)
    return total


def _count_part(part: dict, model: str) -> int:
    text = part.get("text")
    if isinstance(text, str):
        return count_text(text, model)
    if "inlineData" in part or "fileData" in part:
        return INLINE_PART
    for key in ("functionCall", "functionResponse"):
        if isinstance(part.get(key), dict):
            return count_text(json.dumps(part[key], ensure_ascii=False, separators=(",", ":")), model)
    for key, field in (("executableCode", "code"), ("codeExecutionResult", "output")):
        value = part.get(key)
        if isinstance(value, dict) and isinstance(value.get(field), str):
            return count_text(value[field], model)
    return 0
