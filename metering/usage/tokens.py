"""Token counting with tiktoken: the fallback when a provider reports no usage, and admission's estimate.

tiktoken downloads an encoding unless it is in `TIKTOKEN_CACHE_DIR`, with no timeout. litellm
ships the files (o200k_base, cl100k_base, p50k_base), so the cache dir points into the litellm
package, found without importing litellm (its import takes seconds), and only those encodings
are ever asked for: counting never touches the network.
"""

from __future__ import annotations

import importlib.util
import json
import os
import threading
from functools import lru_cache
from pathlib import Path

import tiktoken

# OpenAI cookbook, num_tokens_from_messages (gpt-3.5-turbo-0613 and every later chat model).
PER_MESSAGE = 3  # <|start|>{role/name}\n{content}<|end|>\n
PER_NAME = 1
REPLY_PRIMING = 3  # every reply is primed with <|start|>assistant<|message|>
# An image costs 85 tokens at low detail and 85 + 170 per 512px tile at high detail; its size
# is unknown without fetching it, so each image counts as one low-detail image (an estimate).
IMAGE_PART = 85

# Encodings whose files litellm bundles (o200k_harmony and p50k_edit reuse them).
_BUNDLED = frozenset({"o200k_base", "o200k_harmony", "cl100k_base", "p50k_base", "p50k_edit"})
_NEAREST_BUNDLED = "p50k_base"  # for r50k_base and gpt2: the same merges, fewer whitespace tokens
_CL100K_PREFIXES = ("gpt-3.5", "gpt-35", "gpt-4", "text-embedding", "davinci", "babbage")
_O200K_PREFIXES = ("gpt-4o", "gpt-4.1", "gpt-4.5")


def litellm_tokenizers_dir() -> str | None:
    """litellm's folder of tiktoken files, located without importing litellm; None if absent."""
    spec = importlib.util.find_spec("litellm")  # a top-level name: finds, does not import
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "litellm_core_utils" / "tokenizers"
    return str(folder) if folder.is_dir() else None


_LOADED: set[str] = set()


@lru_cache(maxsize=None)  # a handful of encodings, each loaded once (~0.1-0.5 s, ~25-55 MB)
def _encoding(name: str) -> tiktoken.Encoding:
    folder = litellm_tokenizers_dir()
    if folder is not None:
        # setdefault: an operator's own cache dir wins (then its files are their business).
        os.environ.setdefault("TIKTOKEN_CACHE_DIR", folder)
    encoding = tiktoken.get_encoding(name)
    # NOTE: tiktoken keeps a Python copy of the BPE ranks (~27 MiB of RSS for o200k_base) only
    # to pickle the encoding; the Rust core that encodes has its own. Nothing here pickles it.
    if isinstance(getattr(encoding, "_mergeable_ranks", None), dict):
        encoding._mergeable_ranks = {}
    _LOADED.add(name)
    return encoding


@lru_cache(maxsize=1024)
def _encoding_name(model: str) -> str:
    base = model.rsplit("/", 1)[-1]  # "openai/gpt-4o", "azure/gpt-4"
    try:
        name = tiktoken.encoding_name_for_model(base)
    except KeyError:
        if base.startswith(_CL100K_PREFIXES) and not base.startswith(_O200K_PREFIXES):
            return "cl100k_base"
        return "o200k_base"  # current OpenAI models, and the best guess for anyone else's
    return name if name in _BUNDLED else _NEAREST_BUNDLED


def loaded(model: str) -> bool:
    """Whether `model`'s tokenizer is in memory already (loading one takes ~0.5 s of CPU)."""
    return _encoding_name(model) in _LOADED


def encoding_for(model: str) -> tiktoken.Encoding:
    """The tokenizer of `model`: tiktoken's choice, else cl100k_base for gpt-3.5, gpt-4 (not
    gpt-4o/4.1/4.5) and text-embedding-*, else o200k_base. Loaded on first use, then cached."""
    return _encoding(_encoding_name(model))


def count_text(text: str, model: str) -> int:
    """Tokens of `text` for `model`; special-token strings count as plain text."""
    if not text:
        return 0
    name = _encoding_name(model)
    key = (name, text)
    count = _COUNTS.get(key)
    if count is None:
        count = len(_encoding(name).encode_ordinary(text))
        _COUNTS.keep(key, count)
    return count


class _Counts(dict):
    """Token counts of texts seen lately, by (encoding, text): most prompts repeat most of
    theirs (an app's system prompt in every call, a chat's history in each turn), and
    counting is the dearest part of admitting a call (~8 µs for a short text, ~0.1 ms a
    thousand tokens). A hit costs hashing the text once. Bounded in texts and characters;
    the oldest go first."""

    MAX_TEXTS = 20_000
    MAX_CHARS = 2_000_000  # the texts themselves: ~2-8 MB
    MAX_TEXT = 100_000  # a longer text is counted every time (it would push out too many others)

    def __init__(self) -> None:
        super().__init__()
        self._chars = 0
        self._lock = threading.Lock()  # NOTE: large prompts are counted in worker threads too

    def keep(self, key: tuple[str, str], count: int) -> None:
        size = len(key[1])
        if size > self.MAX_TEXT:
            return
        with self._lock:
            if key in self:
                return
            self[key] = count
            self._chars += size
            while len(self) > self.MAX_TEXTS or self._chars > self.MAX_CHARS:
                oldest = next(iter(self))
                del self[oldest]
                self._chars -= len(oldest[1])


_COUNTS = _Counts()


def count_prompt(endpoint: str, body: dict, model: str) -> int:
    """Prompt tokens of a request body ("chat", "completions" or "embeddings"), as OpenAI counts them.

    Exact for chat messages of plain text (the cookbook's formula); an estimate for images
    (IMAGE_PART each), tools and functions (their compact JSON), and assistant tool calls
    (their names and arguments). Audio and file parts count 0. Never raises on a bad shape:
    what cannot be read counts 0.
    """
    if not isinstance(body, dict):
        return 0
    if endpoint == "chat":
        return _count_chat(body, model)
    if endpoint == "completions":
        suffix = body.get("suffix")
        extra = count_text(suffix, model) if isinstance(suffix, str) else 0
        return _count_inputs(body.get("prompt"), model) + extra
    if endpoint == "embeddings":
        return _count_inputs(body.get("input"), model)
    return 0


def _count_chat(body: dict, model: str) -> int:
    messages = body.get("messages")
    total = 0
    if isinstance(messages, list):
        total += REPLY_PRIMING
        for message in messages:
            if isinstance(message, dict):
                total += PER_MESSAGE + _count_message(message, model)
    for key in ("tools", "functions"):
        # OpenAI renders these into its own compact schema syntax; their JSON is a close,
        # usually slightly high, estimate.
        value = body.get(key)
        if value:
            total += count_text(json.dumps(value, ensure_ascii=False, separators=(",", ":")), model)
    return total


def _count_message(message: dict, model: str) -> int:
    total = 0
    for key, value in message.items():
        if isinstance(value, str):
            total += count_text(value, model)  # role, content, name, tool_call_id, refusal
            if key == "name":
                total += PER_NAME
        elif key == "content" and isinstance(value, list):
            total += _count_parts(value, model)
        elif key == "tool_calls" and isinstance(value, list):
            for call in value:
                if isinstance(call, dict):
                    total += _count_function(call.get("function"), model)
        elif key == "function_call":
            total += _count_function(value, model)
    return total


def _count_parts(parts: list, model: str) -> int:
    total = 0
    for part in parts:
        if isinstance(part, str):
            total += count_text(part, model)
        elif isinstance(part, dict):
            kind = part.get("type")
            if kind in ("image_url", "input_image", "image"):
                total += IMAGE_PART
            else:
                text = part.get("text") if kind != "refusal" else part.get("refusal")
                if isinstance(text, str):
                    total += count_text(text, model)
    return total


def _count_function(function: object, model: str) -> int:
    if not isinstance(function, dict):
        return 0
    return sum(count_text(value, model) for value in (function.get("name"), function.get("arguments"))
               if isinstance(value, str))


def _count_inputs(value: object, model: str) -> int:
    """A prompt or input: a string, strings, a token array or token arrays (their lengths)."""
    if isinstance(value, str):
        return count_text(value, model)
    if not isinstance(value, list):
        return 0
    total = 0
    for item in value:
        if type(item) is int:  # bool is not a token
            total += 1
        elif isinstance(item, str):
            total += count_text(item, model)
        elif isinstance(item, list):
            total += sum(1 for token in item if type(token) is int)
    return total
