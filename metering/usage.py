"""Usage as providers report it: pure extraction from responses and from streams.

Counts follow OpenAI's convention: `input` counts every prompt token (cached included) and
`output` every completion token (reasoning included); cached and reasoning are the parts.
Nothing from upstream is trusted to be well-formed: bad values count as 0, never raise.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from metering.sse import Frame


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    source: str = "provider"  # "provider" | "estimated"
    raw: dict | None = None  # the provider's usage object, verbatim, as evidence


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def usage_from_json(obj: object) -> Usage | None:
    """The usage of a response or stream chunk, or None if it carries none."""
    if not isinstance(obj, dict):
        return None
    usage = obj.get("usage")
    if not isinstance(usage, dict):
        return None
    prompt_details = usage.get("prompt_tokens_details")
    completion_details = usage.get("completion_tokens_details")
    if "prompt_tokens" in usage or "completion_tokens" in usage:
        input_tokens = _count(usage.get("prompt_tokens"))
        output_tokens = _count(usage.get("completion_tokens"))
        cached = _count(prompt_details.get("cached_tokens")) if isinstance(prompt_details, dict) else 0
    elif "input_tokens" in usage or "output_tokens" in usage:  # Anthropic-style names
        cached = _count(usage.get("cache_read_input_tokens"))
        input_tokens = _count(usage.get("input_tokens")) + cached + _count(usage.get("cache_creation_input_tokens"))
        output_tokens = _count(usage.get("output_tokens"))
    else:  # embeddings may report only total_tokens
        input_tokens, output_tokens, cached = _count(usage.get("total_tokens")), 0, 0
    reasoning = _count(completion_details.get("reasoning_tokens")) if isinstance(completion_details, dict) else 0
    return Usage(input_tokens=input_tokens, cached_input_tokens=min(cached, input_tokens),
                 output_tokens=output_tokens, reasoning_tokens=min(reasoning, output_tokens), raw=usage)


class StreamAccumulator:
    """Follows an OpenAI stream (chat or completions) frame by frame.

    Keeps the latest usage the provider sent, a mid-stream error, and, lazily, the text
    generated so far (parsed only if needed: usage missing or the stream was cut). With
    `strip_usage`, the usage the proxy forced upstream is removed from what the client sees.
    """

    def __init__(self, *, strip_usage: bool):
        self.strip_usage = strip_usage
        self.done = False
        self.usage: Usage | None = None
        self.error: dict | None = None
        self._texts: list[str] = []  # raw JSON of content chunks, parsed only on demand
        self._chunks = 0

    def process(self, frame: Frame) -> bytes:
        """The bytes to forward for `frame` (its raw bytes, or less)."""
        data = frame.data
        if data is None:
            return frame.raw
        if data == "[DONE]":
            self.done = True
            return frame.raw
        self._chunks += 1
        if not _may_carry_usage_or_error(data):
            self._texts.append(data)
            return frame.raw
        try:
            chunk = json.loads(data)
        except ValueError:
            return frame.raw
        if not isinstance(chunk, dict):
            return frame.raw
        if isinstance(chunk.get("error"), (dict, str)):
            self.error = chunk["error"] if isinstance(chunk["error"], dict) else {"message": chunk["error"]}
            return frame.raw
        self._texts.append(data)
        usage = usage_from_json(chunk)
        if usage is None:
            return frame.raw
        self.usage = usage
        if not self.strip_usage:
            return frame.raw
        if not chunk.get("choices"):
            return b""  # the usage-only chunk the client did not ask for
        del chunk["usage"]  # usage in the finish chunk: keep the chunk, drop the field
        newline = b"\r\n" if frame.raw.endswith(b"\r\n") else b"\r" if frame.raw.endswith(b"\r") else b"\n"
        return b"data: " + json.dumps(chunk, separators=(",", ":"), ensure_ascii=False).encode() + newline * 2

    def output_text(self) -> str:
        """All text generated so far: content, reasoning, refusals, tool calls, completions."""
        parts: list[str] = []
        for data in self._texts:
            try:
                chunk = json.loads(data)
            except ValueError:
                continue
            if isinstance(chunk, dict):
                _collect_text(chunk, parts)
        return "".join(parts)

    def chunks_seen(self) -> int:
        return self._chunks


def _may_carry_usage_or_error(data: str) -> bool:
    # Cheap test first: OpenAI puts `"usage":null` in every chunk once include_usage is on.
    if '"error"' in data:
        return True
    index = data.find('"usage"')
    if index < 0:
        return False
    rest = data[index + 7:index + 20].lstrip(" :")
    return not rest.startswith("null")


def _collect_text(chunk: dict, parts: list[str]) -> None:
    choices = chunk.get("choices")
    if not isinstance(choices, list):
        return
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        if isinstance(choice.get("text"), str):
            parts.append(choice["text"])
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            continue
        for name in ("content", "reasoning_content", "reasoning", "refusal"):
            if isinstance(delta.get(name), str):
                parts.append(delta[name])
        for call in delta.get("tool_calls") or ():
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                parts.extend(v for v in (function.get("name"), function.get("arguments")) if isinstance(v, str))
