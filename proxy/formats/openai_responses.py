"""OpenAI's Responses API wire format (`POST /v1/responses`), the Agents SDK's default.

A stream is named events and no `[DONE]`: `response.created` first (the response's id), text
in `response.output_text.delta` (and function-call arguments, reasoning summaries, refusals in
their own `*.delta` events), and one terminal event holding the whole Response with its
usage: `response.completed`, `response.incomplete` or `response.failed`. Usage is always
reported, so nothing is forced on or stripped. An `event: error` (or `type: "error"`) frame
is a mid-stream error.

An event's type is its JSON's top-level `type`. OpenAI also names each frame with it (`event:`):
a frame named `response.*` is told by its name (and parsed only if it is one the watcher reads),
an `event: error` is parsed. A frame with no such name (a relay that dropped the `event:`
lines, or named them all `message`) is parsed for its `type`, whatever its JSON's whitespace,
key order or escapes: no search for bytes tells a member from text inside a string.

Chains: `previous_response_id` and `conversation` make the provider bill the earlier context
as input again, which the body does not show; the route (`proxy.routes.responses`) reserves
for it and refuses another customer's ids.
"""

from __future__ import annotations

import json
import re

from aiohttp import web

from config.schema import ModelConfig, ProviderConfig
from metering.usage.normalized import Usage, usage_from_json
from metering.usage.sse import Frame, SSEFramer, frames_of
from metering.usage.tokens import IMAGE_PART, PER_MESSAGE, REPLY_PRIMING, count_text
from proxy.errors import ApiError, InvalidRequest, openai_envelope
from proxy.formats.base import Outgoing, body_model, body_stream
from proxy.formats.openai_chat import check_max_tokens
from proxy.jsonbody import dump_json, load_json_or_none

TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})
_READ_NAMED = TERMINAL | {"error", "response.created"}  # the named events `process` parses
_CREATED = (b"event: response.created\n", b"event:response.created\n")  # the first frame, LF-ended
# An event line `skim` may pass over: a `response.*` name that `process` does not parse (a false
# alarm, such as `response.created_x`, only means more frames are read one by one)
_PASSABLE = (rb"event: ?response\.(?!" + "|".join(sorted(kind.removeprefix("response.") for kind in _READ_NAMED
                                                         if kind.startswith("response."))).encode() + rb")")
_PASSABLE_NAME = re.compile(_PASSABLE)
# Where `skim` stops: a frame that does not open with a passable name (unnamed, `error`, a name
# of another API, a comment), or a line in a frame that is neither `data:` nor a passable name.
# NOTE: so every frame skimmed is named, by its last `event:` line too, as `process` tells it.
_STOP = re.compile(rb"\n(?:\n(?!" + _PASSABLE + rb"|\Z)|(?!\n|data:|" + _PASSABLE + rb"))")
_TEXT_DELTAS = frozenset({"response.output_text.delta", "response.function_call_arguments.delta",
                          "response.reasoning_summary_text.delta", "response.reasoning_text.delta",
                          "response.refusal.delta", "response.custom_tool_call_input.delta"})


class ResponsesFormat:
    name = "openai.responses"
    endpoint = "responses"
    modes = ("chat",)
    kinds = ("openai",)
    path = "/responses"

    def model_name(self, body: dict, request: web.Request) -> str:
        return body_model(body, "Missing required parameter: 'model'.")

    def stream(self, body: dict, request: web.Request) -> bool:
        return body_stream(body, "`stream` must be a boolean")

    def validate(self, body: dict) -> None:
        check_max_tokens(body, ("max_output_tokens",))
        if body.get("background") is True:
            # NOTE: a background response finishes at the provider after the call returns:
            # Payware could not journal its usage before the answer, so it refuses it.
            raise InvalidRequest("background responses are not supported through Payware (their usage cannot be "
                                 "metered when the call returns); send background: false and stream instead",
                                 param="background", code="unsupported_parameter")
        previous = body.get("previous_response_id")
        if previous is not None and (not isinstance(previous, str) or not previous):
            raise InvalidRequest("`previous_response_id` must be a response id", param="previous_response_id")
        conversation = conversation_id(body)
        if body.get("conversation") is not None and conversation is None:
            raise InvalidRequest("`conversation` must be a conversation id or {\"id\": ...}", param="conversation")
        if previous is not None and conversation is not None:
            raise InvalidRequest("give `previous_response_id` or `conversation`, not both", param="conversation")

    def prompt_tokens(self, body: dict, model: str) -> int:
        return count_input(body, model)

    def max_output(self, body: dict) -> int | None:
        value = body.get("max_output_tokens")
        return value if type(value) is int and value > 0 else None

    def answers(self, body: dict) -> int:
        return 1  # one answer a call

    def max_output_field(self, body: dict) -> str:
        return "max_output_tokens"

    def with_max_output(self, body: dict, tokens: int) -> dict:
        return {**body, "max_output_tokens": tokens}

    def outgoing(self, raw: bytes, body: dict, model: ModelConfig, provider: ProviderConfig, stream: bool,
                 request: web.Request) -> Outgoing:
        if model.upstream == model.name and raw:
            return Outgoing(self.path, raw)
        return Outgoing(self.path, dump_json({**body, "model": model.upstream}))

    def watcher(self, outgoing: Outgoing) -> ResponsesStream:
        return ResponsesStream()

    def usage(self, parsed: object) -> Usage | None:
        return usage_from_json(parsed)

    def text(self, parsed: object) -> str:
        out: list[str] = []
        if isinstance(parsed, dict):
            _output_text(parsed.get("output"), out)
        return "".join(out)

    def answer_id(self, parsed: object) -> str | None:
        """The provider's id of a whole answer."""
        value = parsed.get("id") if isinstance(parsed, dict) else None
        return value if isinstance(value, str) else None

    def error_body(self, error: ApiError) -> dict:
        return openai_envelope(error)

    def upstream_error(self, status: int, text: str, provider: str) -> dict:
        return {"error": {"message": f"provider {provider!r} answered {status}: {text}", "type": "upstream_error",
                          "param": None, "code": "upstream_error"}}


RESPONSES = ResponsesFormat()


class ResponsesStream:
    """Watches a Responses stream: the response's id, text deltas, the terminal event's usage.

    Of named frames, only the first and the terminal event are parsed; a delta (told by its
    event name) is kept as its JSON text and read only if `output_text()` is asked for (no
    usage: the stream was cut), as the chat watcher does. A frame without a Responses event name
    is parsed for its `type` (see the module docstring). Every frame is forwarded as it came;
    once the id is known, whole frames before the first that may end the answer pass unframed
    (`skim`).
    """

    __slots__ = ("usage", "error", "done", "terminal", "answer_id", "status", "_pending", "_texts")

    def __init__(self) -> None:
        self.usage: Usage | None = None
        self.error: dict | None = None
        self.done = False
        self.terminal = False
        self.answer_id: str | None = None  # from response.created
        self.status: str | None = None  # the terminal event's response status
        self._pending: list[str | dict | bytes] = []  # deltas (JSON text or parsed), skimmed frames: text unread
        self._texts: list[str] = []  # text already read out of deltas

    def skim(self, chunk: bytes, framer: SSEFramer) -> int:
        """How many leading bytes of `chunk` go to the client as they came without the relay
        framing them: the whole frames before the first that may be terminal, an error or a
        new response, provided each is named `response.*` (another frame's type is in its data:
        `process` parses it). They are kept as bytes. One regex search finds where to stop.

        The first frame, `response.created`, is read here (its bytes go on as they came), so a
        read that holds most of a stream is skimmed past it too.
        """
        start = 0
        if self.answer_id is None:
            if not chunk.startswith(_CREATED):
                return 0
            start = chunk.find(b"\n\n") + 2
            if start < 2 or framer.whole(chunk, start) != start:
                return 0
            for frame in frames_of(chunk[:start]):
                self.process(frame)
            stop = _STOP.search(chunk, start - 2)
        elif _PASSABLE_NAME.match(chunk) is None:
            return 0
        else:
            stop = _STOP.search(chunk)
        look = stop.end() if stop is not None else len(chunk)
        passed = framer.whole(chunk, look) if look > start else 0
        if passed <= start:
            return start
        self._pending.append(chunk[start:passed] if start or passed < len(chunk) else chunk)
        return passed

    def process(self, frame: Frame) -> bytes:
        data = frame.data
        if data is None:
            return frame.raw
        kind = frame.event
        if kind in _TEXT_DELTAS:
            self._pending.append(data)
            return frame.raw
        if kind in _READ_NAMED:
            obj = _load(data)
            if obj is None:
                if kind == "error":
                    self.error = {"message": data}
            elif kind == "response.created":
                self._read(obj, kind)
            else:
                self._read(obj, obj["type"] if isinstance(obj.get("type"), str) else kind)
        elif kind is None or not kind.startswith("response."):
            obj = _load(data)  # no Responses event name: the type is the JSON's own `type` member
            if obj is not None:
                self._read(obj, obj["type"] if isinstance(obj.get("type"), str) else None)
        return frame.raw

    def _read(self, obj: dict, kind: str | None) -> None:
        """One parsed event of type `kind`."""
        if kind in _TEXT_DELTAS:
            self._pending.append(obj)
        elif kind == "error":
            self.error = obj
        elif kind in TERMINAL:
            response = obj.get("response")
            usage = usage_from_json(response)
            if usage is not None:
                self.usage = usage
            if isinstance(response, dict):
                self.status = response.get("status") if isinstance(response.get("status"), str) else None
                if self.answer_id is None and isinstance(response.get("id"), str):
                    self.answer_id = response["id"]
                if kind == "response.failed":
                    error = response.get("error")
                    self.error = error if isinstance(error, dict) else {"message": "response.failed"}
            self.terminal = self.done = True
        elif kind == "response.created" or self.answer_id is None:
            response = obj.get("response")  # response.created (or, first, another event that holds the Response)
            if isinstance(response, dict) and isinstance(response.get("id"), str):
                self.answer_id = response["id"]

    def output_text(self) -> str:
        if self._pending:
            for item in self._pending:
                if isinstance(item, bytes):  # skimmed frames: deltas among others (see `skim`)
                    for frame in frames_of(item):
                        if frame.data is not None and frame.event in _TEXT_DELTAS:
                            self._add_delta(frame.data)
                else:
                    self._add_delta(item)
            self._pending = []
        return "".join(self._texts)

    def _add_delta(self, data: str | dict) -> None:
        obj = _load(data) if isinstance(data, str) else data
        delta = obj.get("delta") if obj else None
        if isinstance(delta, str):
            self._texts.append(delta)


def _load(data: str) -> dict | None:
    obj = load_json_or_none(data)
    return obj if isinstance(obj, dict) else None


def conversation_id(body: dict) -> str | None:
    """The conversation a request continues (`"conv_..."` or `{"id": "conv_..."}`), or None."""
    value = body.get("conversation")
    if isinstance(value, dict):
        value = value.get("id")
    return value if isinstance(value, str) and value else None


def count_input(body: dict, model: str) -> int:
    """The request's own input as tiktoken counts it: instructions, input items, tools.

    The chat cookbook's per-message overhead is applied to each message item; images count
    as one low-detail image; tools count as their compact JSON (usually slightly high). The
    earlier context of a chain is not in the body: the route adds it.
    """
    total = REPLY_PRIMING
    instructions = body.get("instructions")
    if isinstance(instructions, str):
        total += PER_MESSAGE + count_text(instructions, model)
    given = body.get("input")
    if isinstance(given, str):
        total += PER_MESSAGE + count_text(given, model)
    elif isinstance(given, list):
        for item in given:
            if isinstance(item, dict):
                total += PER_MESSAGE + _count_item(item, model)
            elif isinstance(item, str):
                total += count_text(item, model)
    tools = body.get("tools")
    if tools:
        total += count_text(json.dumps(tools, ensure_ascii=False, separators=(",", ":"), default=str), model)
    return total


def _count_item(item: dict, model: str) -> int:
    total = 0
    for key in ("role", "name", "arguments", "output", "call_id"):
        value = item.get(key)
        if isinstance(value, str):
            total += count_text(value, model)
    content = item.get("content")
    if isinstance(content, str):
        total += count_text(content, model)
    elif isinstance(content, list):
        for part in content:
            if not isinstance(part, dict):
                continue
            if part.get("type") in ("input_image", "image", "image_url"):
                total += IMAGE_PART
            text = part.get("text")
            if isinstance(text, str):
                total += count_text(text, model)
    return total


def _output_text(output: object, out: list[str]) -> None:
    """The generated text of a Response's `output` items (messages, function calls, reasoning summaries)."""
    if not isinstance(output, list):
        return
    for item in output:
        if not isinstance(item, dict):
            continue
        for key in ("arguments", "input"):
            value = item.get(key)
            if isinstance(value, str):
                out.append(value)
        for field in ("content", "summary"):
            parts = item.get(field)
            if isinstance(parts, list):
                for part in parts:
                    if isinstance(part, dict):
                        for key in ("text", "refusal"):
                            value = part.get(key)
                            if isinstance(value, str):
                                out.append(value)
