"""OpenAI's chat completions, completions and embeddings wire format.

Requests: the model and `stream` from the body; `stream_options.include_usage` is forced on
upstream, and the usage-only chunk is then removed from what the client sees (with a
`usage` a provider put in its finish chunk). Streams end with `data: [DONE]`; usage comes
in the last chunk (or the finish chunk, from some servers), and a stream may carry an
`{"error": ...}` chunk mid-way.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace

from aiohttp import web

from config.schema import MAX_OUTPUT_TOKENS, ModelConfig, ProviderConfig
from metering.usage.normalized import Usage, usage_from_json
from metering.usage.sse import Frame, SSEFramer, first_of, frames_of
from metering.usage.tokens import count_prompt
from proxy.errors import ApiError, InvalidRequest, openai_envelope
from proxy.formats.base import Outgoing, body_model, body_stream
from proxy.jsonbody import dump_json, load_json_or_none

_DONE = "[DONE]"
MAX_ANSWERS = 128  # `n` and `best_of` above this are refused (OpenAI's own limit for `n`)
_LINE_END = re.compile(rb"\r\n|\r|\n")


class OpenAIFormat:
    """One of OpenAI's three classic endpoints (see the module docstring)."""

    kinds = ("openai", "echo", "litellm")

    def __init__(self, endpoint: str, path: str, modes: tuple[str, ...]):
        self.endpoint = endpoint  # "chat" | "completions" | "embeddings"
        self.name = f"openai.{endpoint}"
        self.path = path  # under the provider's base URL (which ends in /v1)
        self.modes = modes

    def model_name(self, body: dict, request: web.Request) -> str:
        return body_model(body, "you must provide a model parameter")

    def stream(self, body: dict, request: web.Request) -> bool:
        stream = body_stream(body, "`stream` must be a boolean")
        if stream and self.endpoint == "embeddings":
            raise InvalidRequest("embeddings cannot be streamed", param="stream")
        options = body.get("stream_options")
        if options is not None and not isinstance(options, dict):
            raise InvalidRequest("`stream_options` must be an object", param="stream_options")
        return stream

    def validate(self, body: dict) -> None:
        check_max_tokens(body, ("max_tokens", "max_completion_tokens"))
        if self.endpoint != "embeddings":
            for name in ("n", "best_of"):  # each answer may use the whole output limit: the worst case
                value = body.get(name)
                if value is not None and (type(value) is not int or not 1 <= value <= MAX_ANSWERS):
                    raise InvalidRequest(f"`{name}` must be an integer from 1 to {MAX_ANSWERS}", param=name,
                                         code="invalid_value")

    def answers(self, body: dict) -> int:
        """How many answers the provider generates (and bills): `n`, or `best_of` (completions)."""
        if self.endpoint == "embeddings":
            return 1
        return max(body.get("n") or 1, body.get("best_of") or 1)

    def prompt_tokens(self, body: dict, model: str) -> int:
        return count_prompt(self.endpoint, body, model)

    def max_output(self, body: dict) -> int | None:
        if self.endpoint == "embeddings":
            return 0
        for name in ("max_completion_tokens", "max_tokens"):
            value = body.get(name)
            if type(value) is int and value > 0:
                return value * self.answers(body)
        return None

    def max_output_field(self, body: dict) -> str:
        field = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
        answers = "best_of" if (body.get("best_of") or 1) > (body.get("n") or 1) else "n"
        return f"{field} x {answers}" if self.answers(body) > 1 else field

    def with_max_output(self, body: dict, tokens: int) -> dict:
        field = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
        return {**body, field: max(1, tokens // self.answers(body))}

    def outgoing(self, raw: bytes, body: dict, model: ModelConfig, provider: ProviderConfig, stream: bool,
                 request: web.Request) -> Outgoing:
        """The client's bytes unless the model is renamed or usage must be forced on a stream."""
        changed = model.upstream != model.name or not raw
        strip_usage = False
        if stream:
            options = body.get("stream_options") or {}
            strip_usage = options.get("include_usage") is not True
            changed = changed or strip_usage
        if not changed:
            return Outgoing(self.path, raw)
        outgoing = dict(body)
        outgoing["model"] = model.upstream
        if stream:
            outgoing["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        return Outgoing(self.path, dump_json(outgoing), strip_usage=strip_usage)

    def watcher(self, outgoing: Outgoing) -> StreamAccumulator:
        return StreamAccumulator(strip_usage=outgoing.strip_usage)

    def usage(self, parsed: object) -> Usage | None:
        return usage_from_json(parsed)

    def text(self, parsed: object) -> str:
        return generated_text(parsed)

    def error_body(self, error: ApiError) -> dict:
        return openai_envelope(error)

    def upstream_error(self, status: int, text: str, provider: str) -> dict:
        return {"error": {"message": f"provider {provider!r} answered {status}: {text}", "type": "upstream_error",
                          "param": None, "code": "upstream_error"}}


def check_max_tokens(body: dict, names: tuple[str, ...]) -> None:
    """An output cap is absent, null, or a whole number the counters can price."""
    for name in names:
        value = body.get(name)
        if value is None:
            continue
        if type(value) is not int or not 1 <= value <= MAX_OUTPUT_TOKENS:
            raise InvalidRequest(f"`{name}` must be an integer from 1 to {MAX_OUTPUT_TOKENS}", param=name,
                                 code="invalid_value")


CHAT = OpenAIFormat("chat", "/chat/completions", ("chat",))
COMPLETIONS = OpenAIFormat("completions", "/completions", ("completion", "chat"))
EMBEDDINGS = OpenAIFormat("embeddings", "/embeddings", ("embedding",))


_SET_USAGE = re.compile(rb'"usage"(?!: ?null)')  # `_may_carry_usage` on a read's bytes (a literal prefix: fast)


def _may_carry_usage(data: str) -> bool:
    """Whether a chunk's JSON text may hold a non-null `usage` (false positives are harmless)."""
    at = data.find('"usage"')
    while at >= 0:
        at += 7
        if not (data.startswith(":null", at) or data.startswith(": null", at)):
            return True
        at = data.find('"usage"', at)
    return False


class StreamAccumulator:
    """Watches an OpenAI stream (chat or completions) frame by frame, for metering.

    It keeps the latest usage, a mid-stream error and whether `[DONE]` came (the terminal
    frame), and decides the bytes the client gets. Text chunks are not parsed as they pass:
    their JSON is kept and parsed only if `output_text()` is asked for (usage missing, or the
    stream was cut). Whole frames before the first one it must read pass unframed (`skim`).
    """

    __slots__ = ("strip_usage", "done", "terminal", "error", "_usage", "_after_usage", "_pending", "_texts")

    def __init__(self, *, strip_usage: bool) -> None:
        self.strip_usage = strip_usage  # the client did not ask for usage: the proxy forced it
        self.done = False
        self.terminal = False
        self.error: dict | None = None  # the value of a mid-stream `{"error": ...}`
        self._usage: Usage | None = None  # the latest usage reported
        self._after_usage = False  # whether chunks came after it (which it cannot have counted)
        # chunks not yet read for text: a frame's JSON text or parsed JSON, or skimmed bytes
        self._pending: list[str | dict | bytes] = []
        self._texts: list[str] = []  # text already read out of chunks

    @property
    def usage(self) -> Usage | None:
        """The latest usage reported. Chunks after it (a provider that reports usage early, then
        is cut) make its output a floor: the relay estimates the output from the text."""
        usage = self._usage
        if usage is None or not self._after_usage or "output" in usage.unread:
            return usage
        return replace(usage, unread=(*usage.unread, "output"))

    def skim(self, chunk: bytes, framer: SSEFramer) -> int:
        """How many leading bytes of `chunk` go to the client unread: the whole frames before
        the first that may hold `[DONE]`, an error, an event name or a usage that is not null
        (a false alarm only means more frames are read one by one). They are kept as bytes."""
        look = first_of(chunk, (b"[DONE]", b'"error"', b"event:"))
        usage = _SET_USAGE.search(chunk, 0, look)  # one not null (most chunks carry `"usage":null`)
        if usage is not None:
            look = usage.start()
        passed = framer.whole(chunk, look)
        if passed:
            self._pending.append(chunk[:passed] if passed < len(chunk) else chunk)
            self._after_usage = self._usage is not None
        return passed

    def process(self, frame: Frame) -> bytes:
        """The bytes to forward to the client for `frame` (b"" to drop it)."""
        data = frame.data
        if data is None:
            return frame.raw  # comments, pings, blank lines
        if data == _DONE:
            self.done = self.terminal = True
            return frame.raw
        if not (_may_carry_usage(data) or '"error"' in data or frame.event == "error"):
            self._pending.append(data)
            self._after_usage = self._usage is not None
            return frame.raw
        obj = load_json_or_none(data)
        if not isinstance(obj, dict):
            if frame.event == "error":
                self.error = {"message": data}
            return frame.raw
        self._pending.append(obj)
        error = obj.get("error")
        if error is not None:
            self.error = error if isinstance(error, dict) else {"message": str(error)}
        elif frame.event == "error":
            self.error = obj
        if obj.get("usage") is None:
            self._after_usage = self._usage is not None
            return frame.raw
        usage = usage_from_json(obj)
        if usage is not None:
            self._usage, self._after_usage = usage, False
        if not self.strip_usage:
            return frame.raw
        if not obj.get("choices"):
            return b""  # the usage-only chunk the client did not ask for
        try:
            return _without_usage(frame.raw, obj)
        except (ValueError, RecursionError):  # what json.loads took, json.dumps should give back
            return frame.raw

    def output_text(self) -> str:
        """Every piece of generated text seen so far, concatenated (for a tiktoken estimate)."""
        if self._pending:
            texts = self._texts
            for item in self._pending:
                if isinstance(item, bytes):  # skimmed frames: text chunks only (see `skim`)
                    for frame in frames_of(item):
                        if frame.data is not None:
                            _collect_text(load_json_or_none(frame.data), texts)
                    continue
                if isinstance(item, str):
                    item = load_json_or_none(item)
                _collect_text(item, texts)
            self._pending = []
        return "".join(self._texts)


def generated_text(obj: object) -> str:
    """The generated text of a non-streamed chat or completions response (for estimation)."""
    out: list[str] = []
    _collect_text(obj, out, part="message")
    return "".join(out)


def _collect_text(chunk: object, out: list[str], part: str = "delta") -> None:
    """Append the generated text of one chat or completions chunk (or, with part="message",
    response) to `out`."""
    if not isinstance(chunk, dict):
        return
    choices = chunk.get("choices")
    if not isinstance(choices, list):
        return
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        text = choice.get("text")  # /v1/completions
        if isinstance(text, str):
            out.append(text)
        delta = choice.get(part)
        if not isinstance(delta, dict):
            continue
        for key in ("content", "reasoning_content", "reasoning", "refusal"):
            value = delta.get(key)
            if isinstance(value, str):
                out.append(value)
        calls = delta.get("tool_calls")
        functions = [call.get("function") for call in calls if isinstance(call, dict)] \
            if isinstance(calls, list) else []
        functions.append(delta.get("function_call"))  # the legacy single-function form
        for function in functions:
            if isinstance(function, dict):
                for key in ("name", "arguments"):
                    value = function.get(key)
                    if isinstance(value, str):
                        out.append(value)


def _without_usage(raw: bytes, obj: dict) -> bytes:
    """`raw` with its data replaced by `obj` minus `usage`, other fields and line ends kept."""
    data = json.dumps({k: v for k, v in obj.items() if k != "usage"},
                      ensure_ascii=False, separators=(",", ":")).encode()
    parts = _LINE_END.split(raw)
    ends = _LINE_END.findall(raw)
    out: list[bytes] = []
    wrote = False
    for line, end in zip(parts, ends):
        if line == b"data" or line.startswith(b"data:"):
            if wrote:
                continue  # the other lines of a multi-line data field
            line, wrote = b"data: " + data, True
        out.append(line + end)
    out.append(parts[-1])  # bytes after the last line end: only in a truncated tail, kept as is
    return b"".join(out)
