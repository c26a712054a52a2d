"""Token counting with tiktoken: the fallback when a provider reports no usage.

tiktoken downloads its encodings unless they are in `TIKTOKEN_CACHE_DIR`; litellm ships
them, so the cache dir points into the litellm package (found without importing litellm,
whose import takes seconds).
"""

from __future__ import annotations

import importlib.util
import json
import os
from functools import lru_cache
from pathlib import Path

import tiktoken

PER_MESSAGE = 3  # OpenAI cookbook, num_tokens_from_messages: <|start|>role/name\n ... <|end|>
PER_NAME = 1
REPLY_PRIMING = 3  # every reply is primed with <|start|>assistant<|message|>
IMAGE_PART = 85  # a low-detail image; an estimate, images are rare on a fallback path


def litellm_tokenizers_dir() -> str | None:
    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "litellm_core_utils" / "tokenizers"
    return str(folder) if folder.is_dir() else None


@lru_cache(maxsize=4)
def _encoding(name: str) -> tiktoken.Encoding:
    if "TIKTOKEN_CACHE_DIR" not in os.environ:
        folder = litellm_tokenizers_dir()
        if folder:
            os.environ["TIKTOKEN_CACHE_DIR"] = folder
    return tiktoken.get_encoding(name)


@lru_cache(maxsize=256)
def _encoding_name(model: str) -> str:
    base = model.rsplit("/", 1)[-1]
    try:
        return tiktoken.encoding_name_for_model(base)
    except KeyError:
        pass
    if base.startswith(("gpt-3.5", "gpt-35", "text-embedding", "davinci", "babbage")) or (
            base.startswith("gpt-4") and not base.startswith(("gpt-4o", "gpt-4.1", "gpt-4.5"))):
        return "cl100k_base"
    return "o200k_base"  # the encoding of current OpenAI models


def encoding_for(model: str) -> tiktoken.Encoding:
    """The tokenizer of `model`; o200k_base for models tiktoken does not know."""
    return _encoding(_encoding_name(model))


def count_text(text: str, model: str) -> int:
    if not text:
        return 0
    return len(encoding_for(model).encode(text, disallowed_special=()))


def count_prompt(endpoint: str, body: dict, model: str) -> int:
    """Prompt tokens of a request body, the way OpenAI counts them (an estimate for tools)."""
    if endpoint == "chat":
        return _count_messages(body.get("messages"), body, model)
    return _count_inputs(body.get("prompt" if endpoint == "completions" else "input"), model)


def _count_messages(messages: object, body: dict, model: str) -> int:
    if not isinstance(messages, list):
        return 0
    total = REPLY_PRIMING
    for message in messages:
        if not isinstance(message, dict):
            continue
        total += PER_MESSAGE
        for key, value in message.items():
            if key == "name" and isinstance(value, str):
                total += PER_NAME + count_text(value, model)
            elif isinstance(value, str):
                total += count_text(value, model)
            elif key == "content" and isinstance(value, list):
                for part in value:
                    if isinstance(part, dict) and isinstance(part.get("text"), str):
                        total += count_text(part["text"], model)
                    elif isinstance(part, dict) and part.get("type") in ("image_url", "input_image"):
                        total += IMAGE_PART
            elif key in ("tool_calls", "function_call") and value:
                total += count_text(json.dumps(value, separators=(",", ":")), model)
    for key in ("tools", "functions"):
        if body.get(key):
            total += count_text(json.dumps(body[key], separators=(",", ":")), model)
    return total


def _count_inputs(value: object, model: str) -> int:
    if isinstance(value, str):
        return count_text(value, model)
    if not isinstance(value, list):
        return 0
    if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return len(value)  # already tokens
    return sum(_count_inputs(item, model) for item in value)
