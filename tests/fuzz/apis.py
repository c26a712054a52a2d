"""The body of each model API the fuzzer attacks: a valid one to start from, and where its fields are.

One `Api` per body shape (a route names its own with `Route.api`): the mutators in
`model_cases` read these tables, so a new API is one more entry here, not a branch there.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from tests.fuzz.routes import MODELS_CHAT, MODELS_EMBED, MODELS_MESSAGES, MODELS_RESPONSES, UPSTREAM_ERROR_MODELS

Path = tuple


@dataclass(frozen=True)
class Api:
    """Where things are in one API's request body."""

    base: Callable[[random.Random], dict]  # a valid body
    fields: tuple[Path, ...]  # every field a wrong type may go into
    metadata: tuple[Path, ...]  # strings kept on the event as evidence ("KEY": a metadata key)
    prompt: tuple[Path, ...]  # strings only forwarded (and counted)
    output_limits: tuple[Path, ...]  # max_tokens and its kin
    prompt_text: Path  # where a 200 KB prompt goes
    prompt_list: Path  # a list that may hold 20,000 items
    model_in_body: bool = True  # Gemini names the model in the path
    upstream_errors: tuple[str, ...] = ()  # models the provider refuses


def _maybe_meta(rng: random.Random, body: dict) -> dict:
    if rng.random() < 0.3:
        body["user"] = f"user-{rng.randrange(1000)}"
        body["metadata"] = {"order": f"o-{rng.randrange(1000)}"}
    return body


def _chat(rng: random.Random) -> dict:
    return _maybe_stream(rng, {"model": rng.choice(MODELS_CHAT), "messages": [{"role": "user", "content": "hi"}]})


def _completions(rng: random.Random) -> dict:
    return _maybe_stream(rng, {"model": rng.choice(("fake-ok", "renamed")), "prompt": "say hi"})


def _maybe_stream(rng: random.Random, body: dict) -> dict:
    """An OpenAI body, streamed 30 % of the time (asking for usage in 30 % of those), with metadata maybe."""
    if rng.random() < 0.3:
        body["stream"] = True
        if rng.random() < 0.3:
            body["stream_options"] = {"include_usage": True}
    return _maybe_meta(rng, body)


def _embeddings(rng: random.Random) -> dict:
    return _maybe_meta(rng, {"model": rng.choice(MODELS_EMBED), "input": rng.choice(["hi", ["a", "b"]])})


def _responses(rng: random.Random) -> dict:
    body: dict = {"model": rng.choice(MODELS_RESPONSES),
                  "input": rng.choice(("hi", [{"role": "user", "content": "hi"}]))}
    if rng.random() < 0.3:
        body["stream"] = True
    if rng.random() < 0.2:
        body["instructions"] = "be brief"
    if rng.random() < 0.2:
        body["store"] = rng.choice((True, False))
    return _maybe_meta(rng, body)


def _messages(rng: random.Random, count: bool = False) -> dict:
    body: dict = {"model": rng.choice(MODELS_MESSAGES), "messages": [{"role": "user", "content": "hi"}]}
    if not count:
        body["max_tokens"] = rng.choice((16, 256, 1024))
        if rng.random() < 0.3:
            body["stream"] = True
        if rng.random() < 0.3:
            body["metadata"] = {"user_id": f"u-{rng.randrange(100)}"}
    if rng.random() < 0.2:
        body["system"] = "be brief"
    return body


def _gemini(rng: random.Random) -> dict:
    body: dict = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    if rng.random() < 0.3:
        body["generationConfig"] = {"maxOutputTokens": rng.choice((16, 256)), "temperature": 0.5}
    if rng.random() < 0.15:
        body["systemInstruction"] = {"parts": [{"text": "be brief"}]}
    return body


_OPENAI_META = (("user",), ("metadata", "k"), ("metadata", "KEY"))

APIS: dict[str, Api] = {
    "chat": Api(
        _chat,
        fields=(("model",), ("messages",), ("messages", 0), ("messages", 0, "role"), ("messages", 0, "content"),
                ("messages", 0, "name"), ("messages", 0, "tool_calls"), ("messages", 0, "content", 0),
                ("messages", 0, "content", 0, "type"), ("messages", 0, "content", 0, "text"), ("stream",),
                ("stream_options",), ("stream_options", "include_usage"), ("max_tokens",),
                ("max_completion_tokens",), ("n",), ("temperature",), ("user",), ("metadata",),
                ("metadata", "k"), ("tools",), ("tools", 0, "function", "name"), ("tool_choice",),
                ("response_format",), ("seed",), ("stop",), ("logit_bias",), ("x_unknown",)),
        metadata=_OPENAI_META,
        prompt=(("messages", 0, "content"), ("messages", 0, "role"), ("messages", 0, "name"), ("stop",),
                ("x_unknown",), ("messages", 0, "content", 0, "text")),
        output_limits=(("max_tokens",), ("max_completion_tokens",)),
        prompt_text=("messages", 0, "content"), prompt_list=("messages",),
        upstream_errors=UPSTREAM_ERROR_MODELS["chat"]),
    "completions": Api(
        _completions,
        fields=(("model",), ("prompt",), ("prompt", 0), ("stream",), ("stream_options",), ("max_tokens",), ("n",),
                ("echo",), ("suffix",), ("user",), ("metadata",), ("best_of",), ("logprobs",)),
        metadata=_OPENAI_META, prompt=(("prompt",), ("suffix",), ("prompt", 0)),
        output_limits=(("max_tokens",),), prompt_text=("prompt",), prompt_list=("prompt",),
        upstream_errors=UPSTREAM_ERROR_MODELS["completions"]),
    "embeddings": Api(
        _embeddings,
        fields=(("model",), ("input",), ("input", 0), ("encoding_format",), ("dimensions",), ("user",),
                ("metadata",), ("stream",)),
        metadata=_OPENAI_META, prompt=(("input",), ("input", 0)), output_limits=(),
        prompt_text=("input",), prompt_list=("input",), upstream_errors=UPSTREAM_ERROR_MODELS["embeddings"]),
    "responses": Api(
        _responses,
        fields=(("model",), ("input",), ("input", 0), ("input", 0, "role"), ("input", 0, "content"),
                ("input", 0, "content", 0), ("input", 0, "content", 0, "type"), ("input", 0, "content", 0, "text"),
                ("instructions",), ("stream",), ("max_output_tokens",), ("store",), ("background",),
                ("previous_response_id",), ("conversation",), ("conversation", "id"), ("tools",),
                ("tools", 0, "type"), ("reasoning",), ("reasoning", "effort"), ("text",), ("text", "format"),
                ("truncation",), ("include",), ("metadata",), ("metadata", "k"), ("user",), ("temperature",),
                ("parallel_tool_calls",), ("max_tool_calls",), ("x_unknown",)),
        metadata=_OPENAI_META,
        prompt=(("input",), ("input", 0, "content"), ("instructions",), ("input", 0, "content", 0, "text"),
                ("x_unknown",)),
        output_limits=(("max_output_tokens",),), prompt_text=("input",), prompt_list=("input",),
        upstream_errors=UPSTREAM_ERROR_MODELS["responses"]),
    "messages": Api(
        _messages,
        fields=(("model",), ("max_tokens",), ("messages",), ("messages", 0), ("messages", 0, "role"),
                ("messages", 0, "content"), ("messages", 0, "content", 0), ("messages", 0, "content", 0, "type"),
                ("messages", 0, "content", 0, "text"), ("messages", 0, "content", 0, "source"), ("system",),
                ("system", 0), ("system", 0, "text"), ("stream",), ("metadata",), ("metadata", "user_id"),
                ("stop_sequences",), ("temperature",), ("top_k",), ("tools",), ("tools", 0, "input_schema"),
                ("tool_choice",), ("thinking",), ("thinking", "budget_tokens"), ("thinking", "type"),
                ("service_tier",), ("x_unknown",)),
        metadata=(("metadata", "user_id"), ("metadata", "k"), ("metadata", "KEY")),
        prompt=(("messages", 0, "content"), ("system",), ("messages", 0, "role"), ("stop_sequences", 0),
                ("messages", 0, "content", 0, "text"), ("x_unknown",)),
        output_limits=(("max_tokens",), ("thinking", "budget_tokens")),
        prompt_text=("messages", 0, "content"), prompt_list=("messages",),
        upstream_errors=UPSTREAM_ERROR_MODELS["messages"]),
    "messages_count": Api(
        lambda rng: _messages(rng, count=True),
        fields=(("model",), ("messages",), ("messages", 0), ("messages", 0, "content"), ("system",), ("tools",),
                ("max_tokens",), ("thinking",), ("x_unknown",)),
        metadata=(("metadata", "user_id"),),
        prompt=(("messages", 0, "content"), ("system",), ("x_unknown",)),
        output_limits=(("max_tokens",),), prompt_text=("messages", 0, "content"), prompt_list=("messages",)),
    "gemini": Api(
        _gemini,
        fields=(("contents",), ("contents", 0), ("contents", 0, "role"), ("contents", 0, "parts"),
                ("contents", 0, "parts", 0), ("contents", 0, "parts", 0, "text"),
                ("contents", 0, "parts", 0, "inlineData"), ("generationConfig",),
                ("generationConfig", "maxOutputTokens"), ("generationConfig", "candidateCount"),
                ("generationConfig", "temperature"), ("generationConfig", "stopSequences"),
                ("generationConfig", "thinkingConfig"), ("systemInstruction",), ("systemInstruction", "parts"),
                ("safetySettings",), ("tools",), ("toolConfig",), ("cachedContent",), ("generateContentRequest",),
                ("generateContentRequest", "model"), ("model",), ("x_unknown",)),
        metadata=(("labels", "k"),),
        prompt=(("contents", 0, "parts", 0, "text"), ("contents", 0, "role"),
                ("systemInstruction", "parts", 0, "text"), ("cachedContent",), ("x_unknown",)),
        output_limits=(("generationConfig", "maxOutputTokens"), ("generationConfig", "candidateCount")),
        prompt_text=("contents", 0, "parts", 0, "text"), prompt_list=("contents",), model_in_body=False,
        upstream_errors=UPSTREAM_ERROR_MODELS["gemini"]),
}
