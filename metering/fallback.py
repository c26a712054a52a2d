"""Final token counts of a call: the provider's when it reported them, else tiktoken's.

Each count records where it came from, so an estimate is never mistaken for a reported number.
"""

from __future__ import annotations

from collections.abc import Callable

from metering.tokens import count_prompt, count_text
from metering.usage import Usage

PROVIDER = {"input": "provider", "output": "provider"}
ESTIMATED = {"input": "tiktoken", "output": "tiktoken"}


def final_usage(reported: Usage | None, *, endpoint: str, body: dict, model: str,
                output_text: Callable[[], str]) -> tuple[Usage, dict]:
    """(usage, source of each count). `output_text` is only called when an estimate is needed."""
    if reported is not None:
        return reported, PROVIDER
    input_tokens = count_prompt(endpoint, body, model)
    output_tokens = 0 if endpoint == "embeddings" else count_text(output_text(), model)
    return Usage(input_tokens=input_tokens, output_tokens=output_tokens, source="estimated"), ESTIMATED


def response_text(obj: object) -> str:
    """The generated text of a non-streamed chat or completions response, for estimation."""
    if not isinstance(obj, dict) or not isinstance(obj.get("choices"), list):
        return ""
    parts: list[str] = []
    for choice in obj["choices"]:
        if not isinstance(choice, dict):
            continue
        if isinstance(choice.get("text"), str):
            parts.append(choice["text"])
        message = choice.get("message")
        if isinstance(message, dict):
            for name in ("content", "reasoning_content", "refusal"):
                if isinstance(message.get(name), str):
                    parts.append(message[name])
            for call in message.get("tool_calls") or ():
                function = call.get("function") if isinstance(call, dict) else None
                if isinstance(function, dict):
                    parts.extend(v for v in (function.get("name"), function.get("arguments")) if isinstance(v, str))
    return "".join(parts)
