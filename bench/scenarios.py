"""The bench's scenarios: one row per (API format, streamed or not).

A scenario is what the load client sends (path, body, and the key in the header that API's
SDK uses) and how it knows the answer is whole. The same path is served by the bench upstream
(bench/upstream.py, which holds the canned answer for it), by the reference pass-through
(which relays every `/v1/` and `/v1beta/` path) and by Payware. Every API format Payware meters
natively has its rows: OpenAI Chat Completions, OpenAI Responses, Anthropic Messages, Gemini
generateContent. Each answers the same reply (38 tokens, 42 prompt tokens) in its provider's
own bytes. Adding a format is a row here plus its canned answer in `upstream.ROUTES` (and its
provider and model in `procs.payware_config`). A `litellm` row is served only by the Payware
variant with a litellm provider (`run.py --litellm`); the others skip it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

MODEL = "gpt-4o-mini"  # OpenAI Chat and Responses, on Payware's `kind: openai` provider
ANTHROPIC_MODEL = "claude-sonnet-4-5"  # on Payware's `kind: anthropic` provider
GEMINI_MODEL = "gemini-2.5-flash"  # on Payware's `kind: gemini` provider
LITELLM_MODEL = "claude-bench"  # Payware+litellm's model on its `kind: litellm` provider
ANTHROPIC_VERSION = "2023-06-01"
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
    # a stream with no terminator of its own (Responses, Anthropic, Gemini): its last event holds this
    last_event_has: bytes | None = None
    litellm: bool = False  # the model is behind a `kind: litellm` provider: only Payware+litellm serves it
    key_header: str = "Authorization"  # where the client puts its key, as that API's SDK does
    headers: tuple[tuple[str, str], ...] = ()  # more request headers that API's SDK sends

    def request_headers(self, key: str) -> dict[str, str]:
        """The request's headers with `key` (a Payware key, or a dummy for the reference and direct)."""
        auth = {"Authorization": f"Bearer {key}"} if self.key_header == "Authorization" else {self.key_header: key}
        return {"Content-Type": "application/json", **auth, **dict(self.headers)}


def _chat_body(model: str = MODEL, **extra) -> bytes:
    body = {"model": model, "messages": [{"role": "system", "content": SYSTEM},
                                         {"role": "user", "content": QUESTION}],
            "temperature": 0.2, "max_tokens": 256, **extra}
    return json.dumps(body).encode()


def _responses_body(**extra) -> bytes:
    """The same question to the Responses API: instructions and one input string."""
    body = {"model": MODEL, "instructions": SYSTEM, "input": QUESTION, "temperature": 0.2,
            "max_output_tokens": 256, **extra}
    return json.dumps(body).encode()


def _messages_body(**extra) -> bytes:
    """The same question to Anthropic's Messages API (max_tokens is required there)."""
    body = {"model": ANTHROPIC_MODEL, "max_tokens": 256, "system": SYSTEM,
            "messages": [{"role": "user", "content": QUESTION}], "temperature": 0.2, **extra}
    return json.dumps(body).encode()


def _gemini_body() -> bytes:
    """The same question to Gemini (the model is in the path; thinking off, so no thought tokens)."""
    body = {"contents": [{"role": "user", "parts": [{"text": QUESTION}]}],
            "systemInstruction": {"parts": [{"text": SYSTEM}]},
            "generationConfig": {"temperature": 0.2, "maxOutputTokens": 256, "thinkingConfig": {"thinkingBudget": 0}}}
    return json.dumps(body).encode()


ANTHROPIC_HEADERS = (("anthropic-version", ANTHROPIC_VERSION),)  # the anthropic SDK's key goes in x-api-key
GEMINI_PATH = f"/v1beta/models/{GEMINI_MODEL}"

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
    # OpenAI Responses (the Agents SDK's default): no [DONE]; the terminal event carries usage.
    # Each answer has a new response id (Payware records every stored response as its customer's).
    Scenario("responses", "/v1/responses", _responses_body(), stream=False,
             answer="one Response, JSON indented by 2 (~1.6 KB), usage with both details objects, a new id each"),
    Scenario("responses-stream", "/v1/responses", _responses_body(stream=True), stream=True,
             ends_with=b"\n\n", last_event_has=b'"type":"response.completed"',
             answer="46 named events (created, in_progress, item and part added, 38 output_text.delta, "
                    "the done events), then response.completed with the usage; one write() each"),
    # Anthropic Messages, as the anthropic SDK calls it: key in x-api-key, anthropic-version.
    Scenario("messages", "/v1/messages", _messages_body(), stream=False,
             key_header="x-api-key", headers=ANTHROPIC_HEADERS,
             answer="one Message, compact JSON (~560 bytes), usage with the cache fields"),
    Scenario("messages-stream", "/v1/messages", _messages_body(stream=True), stream=True,
             key_header="x-api-key", headers=ANTHROPIC_HEADERS, ends_with=b"\n\n",
             last_event_has=b'"type":"message_stop"',
             answer="44 named events: message_start (input usage), content_block_start, ping, 38 "
                    "content_block_delta, content_block_stop, message_delta (cumulative usage), message_stop"),
    # Gemini, as google-genai calls it: key in x-goog-api-key; the stream is SSE (alt=sse), CRLF.
    Scenario("gemini", GEMINI_PATH + ":generateContent", _gemini_body(), stream=False,
             key_header="x-goog-api-key",
             answer="one GenerateContentResponse, JSON indented by 2 (~780 bytes), usageMetadata"),
    Scenario("gemini-stream", GEMINI_PATH + ":streamGenerateContent?alt=sse", _gemini_body(), stream=True,
             key_header="x-goog-api-key", ends_with=b"\r\n\r\n", last_event_has=b'"finishReason": "STOP"',
             answer="4 chunks of several tokens, CRLF-framed, each with cumulative usageMetadata; the last "
                    "has finishReason; no terminator"),
]}

DEFAULT_SCENARIOS = ["chat", "chat-stream"]
