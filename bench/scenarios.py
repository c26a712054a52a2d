"""The bench's scenarios: one row per (API format, streamed or not).

A scenario is what the load client sends and how it knows the answer is whole. The same path
is served by the bench upstream (bench/upstream.py, which holds the canned answer for it), by
the reference pass-through (which relays any path) and by Payware. Adding an API format
(OpenAI Responses, Anthropic Messages, Gemini) is a row here plus its canned answer in
`upstream.ROUTES`; nothing else in the bench changes. A `litellm` row is served only by the
Payware variant with a litellm provider (`run.py --litellm`); the others skip it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

MODEL = "gpt-4o-mini"
LITELLM_MODEL = "claude-bench"  # Payware+litellm's model on its `kind: litellm` provider
SYSTEM = "You are a concise assistant. Answer in one or two sentences."
QUESTION = "What is the capital of France, and what is it known for? Keep it short please."
SSE_DONE = b"data: [DONE]\n\n"


@dataclass(frozen=True)
class Scenario:
    """One kind of request: where it goes, what it carries, what the upstream answers."""

    name: str
    path: str  # the request path, the same on the upstream, the reference and Payware
    body: bytes
    stream: bool
    answer: str  # the upstream's canned answer, in words (the bytes are in upstream.py)
    ends_with: bytes | None = None  # a whole answer ends so (streams); None: only HTTP 200 is checked
    litellm: bool = False  # the model is behind a `kind: litellm` provider: only Payware+litellm serves it


def _chat_body(model: str = MODEL, **extra) -> bytes:
    body = {"model": model, "messages": [{"role": "system", "content": SYSTEM},
                                         {"role": "user", "content": QUESTION}],
            "temperature": 0.2, "max_tokens": 256, **extra}
    return json.dumps(body).encode()


SCENARIOS: dict[str, Scenario] = {s.name: s for s in [
    Scenario("chat", "/v1/chat/completions", _chat_body(), stream=False,
             answer="one chat.completion, ~750 bytes, usage with both details objects"),
    # The client does not ask for usage: Payware adds stream_options.include_usage upstream and
    # strips the usage chunk from what the client sees, so the upstream's answer to Payware is
    # one chunk longer than its answer to the reference (which relays the request as it is).
    Scenario("chat-stream", "/v1/chat/completions", _chat_body(stream=True), stream=True,
             answer="40 chat.completion.chunk events, one write() each, then [DONE]", ends_with=SSE_DONE),
    # The client asks for usage: the upstream sends the same bytes to both proxies.
    Scenario("chat-stream-usage", "/v1/chat/completions",
             _chat_body(stream=True, stream_options={"include_usage": True}), stream=True,
             answer="40 chunks with usage:null, a usage chunk, then [DONE]", ends_with=SSE_DONE),
    # The same OpenAI request for a model behind a litellm provider (`anthropic/claude-sonnet-4-5`:
    # a name litellm knows, as in a real config; the bench upstream answers any model):
    # Payware's bridge has litellm call the upstream's Anthropic Messages route and turn its
    # answer back into OpenAI's; the reference relays the request to the OpenAI route as it is,
    # so the ratio is the bridge's cost against relaying the same reply from an OpenAI provider.
    Scenario("litellm-chat", "/v1/chat/completions", _chat_body(LITELLM_MODEL), stream=False, litellm=True,
             answer="Payware: litellm -> /v1/messages, one Message (same reply and tokens); reference: as chat"),
    Scenario("litellm-chat-stream", "/v1/chat/completions", _chat_body(LITELLM_MODEL, stream=True), stream=True,
             litellm=True, ends_with=SSE_DONE,
             answer="Payware: litellm -> /v1/messages, 44 named events; reference: as chat-stream"),
]}

DEFAULT_SCENARIOS = ["chat", "chat-stream"]
