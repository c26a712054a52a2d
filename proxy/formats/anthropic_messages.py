"""Anthropic's Messages wire format: `POST /v1/messages`, streamed and not.

Requests: the model and `stream` from the body; `max_tokens` is required (as Anthropic
requires it) and is the worst case of the output. The client's bytes go upstream unless the
model is renamed, with its `anthropic-version` (default 2023-06-01) and `anthropic-beta`.

Streams are named SSE events with no `[DONE]`: `message_start` carries the Message with the
input side of its usage (and `output_tokens` 1, not a total), `content_block_delta`s carry
text, thinking and tool-input JSON, `message_delta` the cumulative usage (each field's last
value wins: fields are merged, never summed), `message_stop` ends the answer (the terminal
frame), and an `event: error` may end the body mid-way. Anthropic always reports usage, so
nothing is forced on nor stripped. A stream that ends before any `message_delta` keeps the
provider's input counts and estimates its output from the text seen (flagged estimated).

Anthropic's `input_tokens` excludes cache reads and writes: the normalized input is their
sum (`metering.usage.normalized.anthropic_usage`), and the 1-hour writes are kept apart.

Errors are Anthropic's envelope `{"type": "error", "error": {"type", "message"}}`, with
Payware's own `code` added inside `error` where it has one (a spend cap refusal is a 429
`rate_limit_error` with `code: spend_cap_reached` and `x-should-retry: false`).
"""

from __future__ import annotations

import json

from aiohttp import web

from config.schema import MAX_OUTPUT_TOKENS, ModelConfig, ProviderConfig
from metering.usage.normalized import Usage, anthropic_usage, token_count
from metering.usage.sse import Frame, SSEFramer, frames_of, skim_named
from metering.usage.tokens import count_text
from proxy.errors import ApiError, InvalidRequest
from proxy.formats.base import Outgoing, body_model, body_stream
from proxy.jsonbody import dump_json, load_json_or_none

DEFAULT_VERSION = "2023-06-01"  # what Anthropic's API requires when the client sent none
_RELAYED_HEADERS = ("anthropic-beta",)

# The prompt estimate (admission's worst case). Anthropic publishes no tokenizer; tiktoken's
# o200k_base is used, and the estimate leans high on purpose: an underestimate lets a hard
# cap be overrun, an overestimate only refuses a call near the cap a little early (the call
# is settled at the provider's own count). Anthropic gives 1.0-1.35x as the growth of Opus
# 4.7's tokenizer over its predecessor's, independent measurements found up to ~1.47x on
# technical text, and Claude's tokenizers count more than o200k for English and code: the
# margin below is a judgement from those figures, not a proven bound.
TEXT_MARGIN = (3, 2)  # text tokens x 1.5, rounded up
PER_MESSAGE = 5  # role and turn markers around each message
PER_BLOCK = 3  # framing of each content block
# Anthropic: an image costs about width x height / 750 tokens, and images past ~1.15 megapixels
# are scaled down first, so one image costs at most about 1,600 tokens (its size is unknown
# without decoding it: every image is counted at that maximum).
IMAGE_TOKENS = 1600
# A PDF costs its text plus an image per page (1,500-3,000 tokens a page); the page count is
# unknown without parsing it, so a base64 document counts one token per 3 base64 characters
# (1 per 2.25 bytes of PDF), and at least DOCUMENT_TOKENS (also a URL or file document's cost).
DOCUMENT_TOKENS = 3000
# The system prompt Anthropic adds when tools are given (its pricing page: 159 to 530 tokens
# depending on the model and tool_choice); the largest is reserved.
TOOLS_SYSTEM_PROMPT = 530


class AnthropicMessagesFormat:
    """`POST /v1/messages` (see the module docstring)."""

    name = "anthropic.messages"
    endpoint = "messages"
    modes = ("chat",)
    kinds = ("anthropic", "echo")

    def model_name(self, body: dict, request: web.Request) -> str:
        return body_model(body, "model: Field required")

    def stream(self, body: dict, request: web.Request) -> bool:
        return body_stream(body, "stream: Input should be a valid boolean")

    def validate(self, body: dict) -> None:
        value = body.get("max_tokens")
        if value is None:
            raise InvalidRequest("max_tokens: Field required", param="max_tokens")
        if type(value) is not int or not 1 <= value <= MAX_OUTPUT_TOKENS:
            raise InvalidRequest(f"max_tokens: must be an integer from 1 to {MAX_OUTPUT_TOKENS}",
                                 param="max_tokens", code="invalid_value")
        if not isinstance(body.get("messages"), list):
            raise InvalidRequest("messages: Field required (a list of messages)", param="messages")

    def prompt_tokens(self, body: dict, model: str) -> int:
        return count_messages_prompt(body, model)

    def max_output(self, body: dict) -> int | None:
        value = body.get("max_tokens")
        return value if type(value) is int and value > 0 else None

    def answers(self, body: dict) -> int:
        return 1  # one answer a call

    def max_output_field(self, body: dict) -> str:
        return "max_tokens"

    def with_max_output(self, body: dict, tokens: int) -> dict:
        body = {**body, "max_tokens": tokens}
        thinking = body.get("thinking")
        if isinstance(thinking, dict) and type(thinking.get("budget_tokens")) is int \
                and thinking["budget_tokens"] >= tokens:
            # Anthropic wants budget_tokens < max_tokens; below its minimum (1024) it answers a 400
            body["thinking"] = {**thinking, "budget_tokens": max(tokens - 1, 1)}
        return body

    def outgoing(self, raw: bytes, body: dict, model: ModelConfig, provider: ProviderConfig, stream: bool,
                 request: web.Request) -> Outgoing:
        """The client's bytes unless the model is renamed; its version and beta headers."""
        headers = anthropic_headers(request)
        path = api_path(provider, "/messages")
        if model.upstream == model.name and raw:
            return Outgoing(path, raw, headers)
        return Outgoing(path, dump_json({**body, "model": model.upstream}), headers)

    def watcher(self, outgoing: Outgoing) -> MessagesWatcher:
        return MessagesWatcher()

    def usage(self, parsed: object) -> Usage | None:
        if not isinstance(parsed, dict):
            return None
        usage = parsed.get("usage")
        return anthropic_usage(usage) if isinstance(usage, dict) else None

    def answer_id(self, parsed: object) -> str | None:
        """The provider's Message id (kept in the event's meta as evidence)."""
        value = parsed.get("id") if isinstance(parsed, dict) else None
        return value if isinstance(value, str) else None

    def text(self, parsed: object) -> str:
        out: list[str] = []
        content = parsed.get("content") if isinstance(parsed, dict) else None
        for block in content if isinstance(content, list) else ():
            _block_output(block, out)
        return "".join(out)

    def error_body(self, error: ApiError) -> dict:
        return anthropic_envelope(error.status, error.message, error.code)

    def upstream_error(self, status: int, text: str, provider: str) -> dict:
        return anthropic_envelope(status, f"provider {provider!r} answered {status}: {text}", "upstream_error")


MESSAGES = AnthropicMessagesFormat()


def api_path(provider: ProviderConfig, path: str) -> str:
    """`path` under Anthropic's /v1, whether the provider's base URL ends in /v1 or not."""
    if provider.kind == "echo" or (provider.base_url or "").endswith("/v1"):
        return path
    return "/v1" + path


def anthropic_headers(request: web.Request) -> dict[str, str]:
    """The client's `anthropic-version` (or the default) and `anthropic-beta`, for the provider."""
    headers = {"anthropic-version": request.headers.get("anthropic-version") or DEFAULT_VERSION}
    for name in _RELAYED_HEADERS:
        value = request.headers.get(name)
        if value:
            headers[name] = value
    return headers


# Anthropic's error types by status (its API reference, "Errors"); 529 is its "overloaded".
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
                403: "permission_error", 404: "not_found_error", 413: "request_too_large",
                429: "rate_limit_error", 500: "api_error", 502: "api_error", 503: "overloaded_error",
                504: "timeout_error", 529: "overloaded_error"}


def error_type(status: int) -> str:
    """Anthropic's error type for an HTTP status."""
    if status in _ERROR_TYPES:
        return _ERROR_TYPES[status]
    return "api_error" if status >= 500 else "invalid_request_error"


def anthropic_envelope(status: int, message: str, code: str | None = None) -> dict:
    """`{"type": "error", "error": {"type", "message"}}`; Payware's `code`, if any, inside `error`
    (Anthropic's SDKs read `type` and `message` and keep the rest)."""
    error: dict = {"type": error_type(status), "message": message}
    if code is not None:
        error["code"] = code
    return {"type": "error", "error": error}


# --- the prompt estimate ----------------------------------------------------------------------

def count_messages_prompt(body: dict, model: str) -> int:
    """An upper-bound-minded estimate of a Messages request's input tokens (see TEXT_MARGIN).

    Counts the system prompt (a string or text blocks), every message's blocks (text,
    thinking, tool_use names and inputs, tool_result contents, documents' text), the tool
    definitions and the system prompt tools add; images and binary documents at a fixed or
    size-based estimate. Never raises on a bad shape: what cannot be read counts its JSON.
    """
    texts, fixed = prompt_parts(body)
    tokens = sum(count_text(text, model) for text in texts if text)
    numerator, denominator = TEXT_MARGIN
    return -(-tokens * numerator // denominator) + fixed


def prompt_parts(body: dict) -> tuple[list[str], int]:
    """The texts of a Messages request's prompt, and the tokens it adds beyond them (images,
    documents, tools' system prompt, message and block framing)."""
    texts: list[str] = []
    fixed = 0
    if not isinstance(body, dict):
        return texts, fixed
    system = body.get("system")
    if isinstance(system, str):
        texts.append(system)
    elif isinstance(system, list):
        fixed += _blocks(system, texts)
    messages = body.get("messages")
    for message in messages if isinstance(messages, list) else ():
        fixed += PER_MESSAGE
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            fixed += _blocks(content, texts)
    tools = body.get("tools")
    if isinstance(tools, list) and tools:
        fixed += TOOLS_SYSTEM_PROMPT
        texts.extend(_json(tool) for tool in tools)
    choice = body.get("tool_choice")
    if choice is not None:
        texts.append(_json(choice))
    return texts, fixed


def _blocks(blocks: list, texts: list[str]) -> int:
    """Append the text of content blocks to `texts`; return the fixed tokens they add."""
    fixed = 0
    for block in blocks:
        fixed += PER_BLOCK
        if isinstance(block, str):
            texts.append(block)
            continue
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text":
            texts.append(_str(block.get("text")))
        elif kind == "image":
            fixed += IMAGE_TOKENS
        elif kind == "document":
            fixed += _document(block, texts)
        elif kind == "thinking":
            texts.append(_str(block.get("thinking")))
        elif kind == "redacted_thinking":
            texts.append(_str(block.get("data")))
        elif kind == "tool_use" or kind == "server_tool_use":
            texts.append(_str(block.get("name")))
            texts.append(_json(block.get("input")))
        elif kind == "tool_result":
            content = block.get("content")
            if isinstance(content, str):
                texts.append(content)
            elif isinstance(content, list):
                fixed += _blocks(content, texts)
        elif kind == "search_result":
            texts.append(_str(block.get("title")))
            texts.append(_str(block.get("source")))
            content = block.get("content")
            if isinstance(content, list):
                fixed += _blocks(content, texts)
        else:  # web search results, container uploads, future kinds: their JSON, an upper bound
            texts.append(_json({k: v for k, v in block.items() if k != "cache_control"}))
    return fixed


def _document(block: dict, texts: list[str]) -> int:
    for key in ("title", "context"):
        texts.append(_str(block.get(key)))
    source = block.get("source")
    if not isinstance(source, dict):
        return DOCUMENT_TOKENS
    kind = source.get("type")
    if kind == "text":
        texts.append(_str(source.get("data")))
        return 0
    if kind == "content":
        content = source.get("content")
        if isinstance(content, str):
            texts.append(content)
            return 0
        return _blocks(content, texts) if isinstance(content, list) else 0
    data = source.get("data")
    if isinstance(data, str):
        return max(DOCUMENT_TOKENS, len(data) // 3)
    return DOCUMENT_TOKENS


def _str(value: object) -> str:
    return value if isinstance(value, str) else ""


def _json(value: object) -> str:
    if value is None:
        return ""
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError):
        return ""


# --- reading the answer -----------------------------------------------------------------------

def _block_output(block: object, out: list[str]) -> None:
    """Append the generated text of one content block of a Message (for an estimate)."""
    if not isinstance(block, dict):
        return
    for key in ("text", "thinking"):
        value = block.get(key)
        if isinstance(value, str):
            out.append(value)
    if block.get("type") in ("tool_use", "server_tool_use"):
        out.append(_str(block.get("name")))
        out.append(_json(block.get("input")))


def _delta_output(event: object, out: list[str]) -> None:
    """Append the generated text of one content_block_delta or content_block_start event."""
    if not isinstance(event, dict):
        return
    delta = event.get("delta")
    if isinstance(delta, dict):
        for key in ("text", "thinking", "partial_json"):  # text_delta, thinking_delta, input_json_delta
            value = delta.get(key)
            if isinstance(value, str):
                out.append(value)
        return
    block = event.get("content_block")
    if isinstance(block, dict):
        _block_output(block, out)


def merge_usage(into: dict, usage: dict) -> None:
    """Merge Anthropic usage fields into `into`: each field's last non-null value wins
    (message_delta repeats cumulative totals; NOTE: never add them up). Nested objects
    (`cache_creation`, `output_tokens_details`, `server_tool_use`) merge field by field too."""
    for key, value in usage.items():
        if value is None:
            continue
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            merged = dict(into[key])
            merge_usage(merged, value)
            into[key] = merged
        else:
            into[key] = value


_STARTED = (b"event: message_start\n", b"event:message_start\n")  # a stream's first frame, LF-ended
# What `skim` stops at: the events `process` reads (message_start, message_delta, message_stop, error)
_LOOK_AT = (b"event: message_", b"event:message_", b"event: error", b"event:error")


class MessagesWatcher:
    """Watches an Anthropic Messages stream frame by frame, for metering; forwards every byte.

    message_start, message_delta, message_stop and error events are read as they pass;
    content deltas are kept as JSON text and parsed only if `output_text()` is asked for
    (a stream that ended before its final usage).
    """

    __slots__ = ("done", "terminal", "error", "answer_id", "_raw_usage", "_final", "_started_output", "_pending",
                 "_texts", "_usage")

    def __init__(self) -> None:
        self.done = False
        self.terminal = False
        self.error: dict | None = None
        self.answer_id: str | None = None  # message_start's Message id (evidence)
        self._raw_usage: dict = {}  # the provider's usage fields, merged (last value wins)
        self._final = False  # a message_delta reported the cumulative output
        self._started_output = 0  # message_start's output_tokens: a floor, not a total
        self._pending: list[str | dict | bytes] = []  # content events (or skimmed frames) not yet read for text
        self._texts: list[str] = []
        self._usage: Usage | None | bool = False  # cached `usage`; False: to compute

    @property
    def usage(self) -> Usage | None:
        """The usage so far: the provider's own once message_delta came; before that, its input
        counts with the output `unread` (source "estimated": the relay estimates it from the
        text seen, message_start's count its floor); None if no usage was seen at all, or if the
        stream failed before any text (nothing to bill)."""
        if self._usage is False:
            self._usage = self._compute_usage()
        return self._usage

    def _compute_usage(self) -> Usage | None:
        if not self._raw_usage:
            return None
        reported = anthropic_usage(dict(self._raw_usage))
        if self._final:
            return reported
        if self.error is not None and not self.output_text():
            return None  # the provider failed before generating anything: the relay bills nothing
        # The output so far is the relay's to estimate from the text (off the event loop: it may
        # be long); message_start's count is its floor
        return Usage(input_tokens=reported.input_tokens, cached_input_tokens=reported.cached_input_tokens,
                     output_tokens=self._started_output, source="estimated",
                     cache_write_tokens=reported.cache_write_tokens,
                     cache_write_1h_tokens=reported.cache_write_1h_tokens, raw=reported.raw,
                     unread=tuple(kind for kind in reported.unread if kind == "input") + ("output",))

    def skim(self, chunk: bytes, framer: SSEFramer) -> int:
        """How many leading bytes of `chunk` go to the client as they came without the relay
        framing them: the whole frames before the first `message_*` or error event (content
        events, pings: a false alarm only means more frames are read one by one), provided
        each is named (an unnamed frame's type is in its data). They are kept as bytes.

        The first frame, `message_start`, is read here (its bytes go on as they came), so a
        read that holds most of a stream is skimmed past it too.
        """
        opening = _STARTED if self.answer_id is None and not self._raw_usage else None
        start, passed = skim_named(chunk, framer, _LOOK_AT, opening, self.process)
        if passed > start:
            self._pending.append(chunk[start:passed] if start or passed < len(chunk) else chunk)
            if not self._final:
                self._usage = False  # the output estimate counts the text
        return passed

    def process(self, frame: Frame) -> bytes:
        """Read `frame`; the client always gets its exact bytes."""
        data = frame.data
        if data is None:
            return frame.raw  # blank lines, comments
        name = frame.event
        if name in ("content_block_delta", "content_block_start"):
            self._pending.append(data)
            if not self._final:
                self._usage = False
            return frame.raw
        if name in ("ping", "content_block_stop"):
            return frame.raw
        obj = load_json_or_none(data)
        if name is None and isinstance(obj, dict) and isinstance(obj.get("type"), str):
            name = obj["type"]  # a relay that dropped the `event:` lines: the data says it too
        if name == "error":
            error = obj.get("error") if isinstance(obj, dict) else None
            self.error = error if isinstance(error, dict) else {"message": data}
            self._usage = False
        elif not isinstance(obj, dict):
            return frame.raw
        elif name == "message_start":
            message = obj.get("message")
            if not isinstance(message, dict):
                return frame.raw
            if isinstance(message.get("id"), str):
                self.answer_id = message["id"]
            usage = message.get("usage")
            if isinstance(usage, dict):
                merge_usage(self._raw_usage, usage)
                output = usage.get("output_tokens")
                self._started_output = token_count(output)
                self._usage = False
        elif name == "message_delta":
            usage = obj.get("usage")
            if isinstance(usage, dict):
                merge_usage(self._raw_usage, usage)
                self._final = self._final or usage.get("output_tokens") is not None
                self._usage = False
        elif name == "message_stop":
            self.done = self.terminal = True
        elif name in ("content_block_delta", "content_block_start"):
            self._pending.append(obj)
        return frame.raw

    def output_text(self) -> str:
        """Every piece of generated text seen so far: text, thinking and tool-input JSON."""
        if self._pending:
            for item in self._pending:
                if isinstance(item, bytes):  # skimmed frames: content events among others (see `skim`)
                    for frame in frames_of(item):
                        if frame.event in ("content_block_delta", "content_block_start") and frame.data is not None:
                            item = load_json_or_none(frame.data)
                            if item is not None:
                                _delta_output(item, self._texts)
                    continue
                if isinstance(item, str):
                    item = load_json_or_none(item)
                    if item is None:
                        continue
                _delta_output(item, self._texts)
            self._pending = []
        return "".join(self._texts)
