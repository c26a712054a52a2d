"""The seam between the one relay and each API's wire format.

A `WireFormat` knows, for one API (OpenAI chat, OpenAI Responses, Anthropic Messages, Gemini…),
everything that differs between them, and nothing else: how to read the model and the
stream flag of a request, the text to count for the worst case, how to ask the provider for
usage and hide from the client what it did not ask for, how to read usage from a body and
from each SSE frame, the generated text for a tiktoken estimate, and its error envelope.
The relay (`proxy.calls`), admission, recording and billing are one path for all of them:
adding an API adds a module here, never a branch in the relay.

Each module is pure (no I/O), tested on recorded streams and bodies.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from aiohttp import web

from config.schema import ModelConfig, ProviderConfig
from metering.usage.normalized import Usage
from metering.usage.sse import Frame
from proxy.errors import ApiError, InvalidRequest


def body_model(body: dict, missing: str) -> str:
    """The body's `model`, or a 400 in the API's own words (`missing`)."""
    name = body.get("model")
    if not isinstance(name, str) or not name:
        raise InvalidRequest(missing, param="model")
    return name


def body_stream(body: dict, not_boolean: str) -> bool:
    """The body's `stream` flag (absent or null: not streamed), or a 400 in the API's own words."""
    stream = body.get("stream", False)
    if stream is None:
        return False
    if not isinstance(stream, bool):
        raise InvalidRequest(not_boolean, param="stream")
    return stream


@dataclass(slots=True)
class Outgoing:
    """What goes to the provider: a path under its base URL, the body, the format's own headers."""

    path: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    strip_usage: bool = False  # usage was forced on: hide it from the client, who did not ask for it
    answers: int = 1  # answers generated side by side in one stream (Gemini's candidateCount)


class Watcher(Protocol):
    """One stream, frame by frame: what to forward, and what it says about usage."""

    usage: Usage | None  # the latest (or merged) usage seen
    error: dict | None  # a mid-stream error event
    done: bool  # the stream ended as the API says a complete answer ends
    terminal: bool  # the frame just processed ends the answer: record before forwarding it

    def process(self, frame: Frame) -> bytes:
        """The bytes to forward for `frame` (b"" to drop it)."""

    def output_text(self) -> str:
        """The text generated so far (for a tiktoken estimate when usage is missing)."""

    # Optional: `skim(chunk, framer) -> int`, how many leading bytes of a network read go to
    # the client without being framed: whole frames (`SSEFramer.whole`) before the first this
    # watcher must read, which it keeps for `output_text`. Most of a stream is text the
    # watcher reads only when an estimate needs it; a read of many such frames then costs a
    # few searches, not a frame each.


class WireFormat(Protocol):
    """One API's wire format (see the module docstring)."""

    name: str  # e.g. "openai.chat": shown in errors and logs
    endpoint: str  # the event's `endpoint`: "chat", "completions", "embeddings", "responses", "messages", …
    modes: tuple[str, ...]  # the model modes this API can call ("chat", "completion", "embedding")
    kinds: tuple[str, ...]  # the provider kinds that speak it natively

    def model_name(self, body: dict, request: web.Request) -> str:
        """The model the client asked for (from the body, or from the path for Gemini)."""

    def stream(self, body: dict, request: web.Request) -> bool:
        """Whether the client asked for a stream; InvalidRequest for a malformed flag."""

    def validate(self, body: dict) -> None:
        """Refuse, before the provider is called, what would fail later (InvalidRequest)."""

    def prompt_tokens(self, body: dict, model: str) -> int:
        """The prompt's tokens, counted with tiktoken (the worst case and the fallback)."""

    def max_output(self, body: dict) -> int | None:
        """The client's cap on output tokens, if it gave one: of every answer together."""

    def answers(self, body: dict) -> int:
        """How many answers the call generates side by side (OpenAI's `n`, Gemini's
        `candidateCount`): each may use the whole output limit, so the worst case is that many
        times it. `max_output` counts them all already; `with_max_output` shares its tokens out."""

    def max_output_field(self, body: dict) -> str:
        """The name of the request's output limit (for messages: "max_tokens")."""

    def with_max_output(self, body: dict, tokens: int) -> dict:
        """The body with its output cap set to `tokens` for every answer together (a clamped call)."""

    def outgoing(self, raw: bytes, body: dict, model: ModelConfig, provider: ProviderConfig, stream: bool,
                 request: web.Request) -> Outgoing:
        """What to send upstream: the client's own bytes when nothing had to change."""

    def watcher(self, outgoing: Outgoing) -> Watcher:
        """A fresh watcher for the stream that answers `outgoing`."""

    def usage(self, parsed: object) -> Usage | None:
        """The usage a whole (non-streamed) answer reports, or None."""

    def text(self, parsed: object) -> str:
        """The generated text of a whole answer (for a tiktoken estimate)."""

    def error_body(self, error: ApiError) -> dict:
        """`error` in this API's envelope."""

    def upstream_error(self, status: int, text: str, provider: str) -> dict:
        """A provider's error that was not JSON, in this API's envelope."""
