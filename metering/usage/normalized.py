"""Token usage reported by a provider: read from a JSON response, or from a stream as it passes.

Everything here is pure and defensive: whatever the upstream sends, nothing raises, and a
field that is not a non-negative integer counts as 0.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from metering.usage.sse import Frame

_DONE = "[DONE]"
_LINE_END = re.compile(rb"\r\n|\r|\n")


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of one call, in OpenAI's convention (see DESIGN.md, "Token counts")."""

    input_tokens: int = 0  # every prompt token, cached ones included
    cached_input_tokens: int = 0  # the part of the input read from cache
    output_tokens: int = 0  # every completion token, reasoning ones included
    reasoning_tokens: int = 0  # the part of the output spent reasoning
    source: str = "provider"  # "provider" | "estimated"
    # The provider's own usage object, kept as evidence; not part of equality (nor hashable).
    raw: dict | None = field(default=None, compare=False)


def _count(value: object) -> int:
    """A token count as sent, or 0 unless it is a non-negative int (bools are ints in Python)."""
    return value if type(value) is int and value >= 0 else 0


def _sub(usage: dict, name: str, key: str) -> int:
    details = usage.get(name)
    return _count(details.get(key)) if isinstance(details, dict) else 0


def usage_from_json(obj: object) -> Usage | None:
    """The usage of a parsed response or stream chunk, or None if `obj["usage"]` is not an object.

    Reads OpenAI's names (chat, completions, embeddings, responses) and, when those are
    absent, Anthropic's, whose `input_tokens` excludes cache reads and writes: those are
    added back so that `input_tokens` counts every prompt token here too.
    """
    if not isinstance(obj, dict):
        return None
    usage = obj.get("usage")
    if not isinstance(usage, dict):
        return None
    get = usage.get
    if "prompt_tokens" in usage or "completion_tokens" in usage:
        input_tokens = _count(get("prompt_tokens"))
        output_tokens = _count(get("completion_tokens"))
        cached = (_sub(usage, "prompt_tokens_details", "cached_tokens")
                  or _count(get("prompt_cache_hit_tokens")))  # DeepSeek's name
        reasoning = _sub(usage, "completion_tokens_details", "reasoning_tokens")
        if not input_tokens and "completion_tokens" not in usage:
            input_tokens = _count(get("total_tokens"))  # embeddings servers sending only a total
    elif "input_tokens" in usage or "output_tokens" in usage:
        cache_read = _count(get("cache_read_input_tokens"))
        cache_write = _count(get("cache_creation_input_tokens"))
        input_tokens = _count(get("input_tokens")) + cache_read + cache_write
        output_tokens = _count(get("output_tokens"))
        # OpenAI's Responses API uses these names too, with details objects and cache included.
        cached = cache_read or _sub(usage, "input_tokens_details", "cached_tokens")
        reasoning = _sub(usage, "output_tokens_details", "reasoning_tokens")
    else:
        input_tokens = _count(get("total_tokens"))  # embeddings with only a total
        output_tokens = cached = reasoning = 0
    # A part never exceeds its whole, whatever the upstream claims: each token is priced once.
    return Usage(input_tokens=input_tokens, cached_input_tokens=min(cached, input_tokens),
                 output_tokens=output_tokens, reasoning_tokens=min(reasoning, output_tokens), raw=usage)


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

    It keeps the latest usage, a mid-stream error and whether `[DONE]` came, and decides the
    bytes the client gets. Text chunks are not parsed as they pass: their JSON is kept and
    parsed only if `output_text()` is asked for (usage missing, or the stream was cut).
    """

    __slots__ = ("strip_usage", "done", "usage", "error", "_pending", "_texts", "_chunks")

    def __init__(self, *, strip_usage: bool) -> None:
        self.strip_usage = strip_usage  # the client did not ask for usage: the proxy forced it
        self.done = False
        self.usage: Usage | None = None
        self.error: dict | None = None  # the value of a mid-stream `{"error": ...}`
        self._pending: list[str | dict] = []  # chunks not yet read for text (JSON text or parsed)
        self._texts: list[str] = []  # text already read out of chunks
        self._chunks = 0

    def process(self, frame: Frame) -> bytes:
        """The bytes to forward to the client for `frame` (b"" to drop it)."""
        data = frame.data
        if data is None:
            return frame.raw  # comments, pings, blank lines
        if data == _DONE:
            self.done = True
            return frame.raw
        self._chunks += 1
        if not (_may_carry_usage(data) or '"error"' in data or frame.event == "error"):
            self._pending.append(data)
            return frame.raw
        try:
            obj = json.loads(data)
        except (ValueError, RecursionError):  # deep nesting raises RecursionError, not ValueError
            obj = None
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
            return frame.raw
        usage = usage_from_json(obj)
        if usage is not None:
            self.usage = usage
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
                if isinstance(item, str):
                    try:
                        item = json.loads(item)
                    except (ValueError, RecursionError):
                        continue
                _collect_text(item, texts)
            self._pending = []
        return "".join(self._texts)

    def chunks_seen(self) -> int:
        """How many data frames other than `[DONE]` passed."""
        return self._chunks


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
