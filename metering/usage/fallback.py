"""Final token counts of a call: the provider's when it reported them, else tiktoken's.

Each count records where it came from, so an estimate is never mistaken for a reported number.
"""

from __future__ import annotations

from collections.abc import Callable

from metering.usage.tokens import count_prompt, count_text
from metering.usage.normalized import Usage

PROVIDER = {"input": "provider", "output": "provider"}
ESTIMATED = {"input": "tiktoken", "output": "tiktoken"}


def final_usage(reported: Usage | None, *, endpoint: str, body: dict, model: str,
                output_text: Callable[[], str], prompt_tokens: int | None = None) -> tuple[Usage, dict]:
    """(usage, source of each count). `output_text` is only called when an estimate is needed;
    `prompt_tokens`, when admission counted them already, saves counting the prompt again."""
    if reported is not None:
        return reported, PROVIDER
    input_tokens = count_prompt(endpoint, body, model) if prompt_tokens is None else prompt_tokens
    output_tokens = 0 if endpoint == "embeddings" else count_text(output_text(), model)
    return Usage(input_tokens=input_tokens, output_tokens=output_tokens, source="estimated"), ESTIMATED
