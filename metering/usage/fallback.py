"""Final token counts of a call: the provider's when it reported them, else tiktoken's.

Each count records where it came from, so an estimate is never mistaken for a reported number.
"""

from __future__ import annotations

from collections.abc import Callable

from metering.usage.tokens import count_text
from metering.usage.normalized import Usage

PROVIDER = {"input": "provider", "output": "provider"}
ESTIMATED = {"input": "tiktoken", "output": "tiktoken"}
# A stream cut before its final usage, whose provider had reported the input (Anthropic's
# message_start): the format estimates the output and marks the Usage "estimated".
OUTPUT_ESTIMATED = {"input": "provider", "output": "tiktoken"}


def final_usage(reported: Usage | None, *, prompt_tokens: int, output_text: Callable[[], str], model: str,
                embeddings: bool = False) -> tuple[Usage, dict]:
    """(usage, source of each count). `output_text` is only called when an estimate is needed;
    `prompt_tokens` is the prompt as tiktoken counts it (the request's wire format counts it)."""
    if reported is not None:
        return reported, PROVIDER if reported.source == "provider" else OUTPUT_ESTIMATED
    output_tokens = 0 if embeddings else count_text(output_text(), model)
    return Usage(input_tokens=prompt_tokens, output_tokens=output_tokens, source="estimated"), ESTIMATED
