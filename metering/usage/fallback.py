"""Final token counts of a call: the provider's when it reported them, else tiktoken's.

Each count records where it came from, so an estimate is never mistaken for a reported number.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from metering.usage.normalized import Usage, bounded_usage
from metering.usage.tokens import count_text

PROVIDER = {"input": "provider", "output": "provider"}
ESTIMATED = {"input": "tiktoken", "output": "tiktoken"}
# A stream cut before its final usage, whose provider had reported the input (Anthropic's
# message_start): the format estimates the output and marks the Usage "estimated".
OUTPUT_ESTIMATED = {"input": "provider", "output": "tiktoken"}


def final_usage(reported: Usage | None, *, prompt_tokens: int | None, output_text: Callable[[], str],
                model: str, embeddings: bool = False) -> tuple[Usage, dict]:
    """(usage, source of each count). `output_text` is only called when an estimate is needed;
    `prompt_tokens` is the prompt as tiktoken counts it (the request's wire format counts it),
    needed when nothing was reported or the input was not readable (`needs_prompt`)."""
    if reported is None:
        output_tokens = 0 if embeddings else count_text(output_text(), model)
        return Usage(input_tokens=_given(prompt_tokens), output_tokens=output_tokens, source="estimated"), ESTIMATED
    if not reported.unread:
        return reported, PROVIDER if reported.source == "provider" else OUTPUT_ESTIMATED
    # The provider sent a count that is not one: that count is estimated, the rest kept
    sources = dict(PROVIDER if reported.source == "provider" else OUTPUT_ESTIMATED)
    input_tokens, output_tokens = reported.input_tokens, reported.output_tokens
    if "input" in reported.unread:
        input_tokens, sources["input"] = _given(prompt_tokens), "tiktoken"
    if "output" in reported.unread:
        output_tokens, sources["output"] = (0 if embeddings else count_text(output_text(), model)), "tiktoken"
    usage = bounded_usage(input_tokens, reported.cached_input_tokens, output_tokens, reported.reasoning_tokens,
                          reported.cache_write_tokens, reported.cache_write_1h_tokens, reported.raw)
    return replace(usage, source="estimated"), sources


def needs_prompt(reported: Usage | None) -> bool:
    """Whether `final_usage` needs the prompt's tiktoken count for `reported`."""
    return reported is None or "input" in reported.unread


def _given(prompt_tokens: int | None) -> int:
    if prompt_tokens is None:
        raise ValueError("the prompt's count is needed to estimate the input (see needs_prompt)")
    return prompt_tokens
