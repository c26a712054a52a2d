"""Final token counts of a call: the provider's when it reported them, else tiktoken's.

Each count records where it came from, so an estimate is never mistaken for a reported number.
The counting itself is the caller's (`needs_prompt`, `needs_output` say which counts it must
bring): a long output takes seconds to count, and the relay does it off the event loop.
"""

from __future__ import annotations

from dataclasses import replace

from metering.usage.normalized import Usage, bounded_usage

PROVIDER = {"input": "provider", "output": "provider"}
ESTIMATED = {"input": "tiktoken", "output": "tiktoken"}
# A stream cut before its final usage, whose provider had reported the input (Anthropic's
# message_start): the output is estimated and the Usage marked "estimated".
OUTPUT_ESTIMATED = {"input": "provider", "output": "tiktoken"}


def final_usage(reported: Usage | None, *, prompt_tokens: int | None, output_tokens: int | None,
                embeddings: bool = False) -> tuple[Usage, dict]:
    """(usage, source of each count). `prompt_tokens` is the prompt as tiktoken counts it (the
    request's wire format counts it), needed when `needs_prompt`; `output_tokens` the output
    text's tiktoken count, needed when `needs_output`. An estimated output is never below the
    output the provider did report (Anthropic's message_start counts some at once)."""
    if reported is None:
        return Usage(input_tokens=_given(prompt_tokens), output_tokens=0 if embeddings else _given(output_tokens),
                     source="estimated"), ESTIMATED
    if not reported.unread:
        return reported, PROVIDER if reported.source == "provider" else OUTPUT_ESTIMATED
    # The provider sent a count that is not one, or a stream ended before its final count:
    # that count is estimated, the rest kept
    sources = dict(PROVIDER if reported.source == "provider" else OUTPUT_ESTIMATED)
    input_tokens, output = reported.input_tokens, reported.output_tokens
    if "input" in reported.unread:
        input_tokens, sources["input"] = _given(prompt_tokens), "tiktoken"
    if "output" in reported.unread:
        output, sources["output"] = (0 if embeddings else max(output, _given(output_tokens))), "tiktoken"
    usage = bounded_usage(input_tokens, reported.cached_input_tokens, output, reported.reasoning_tokens,
                          reported.cache_write_tokens, reported.cache_write_1h_tokens, reported.raw)
    return replace(usage, source="estimated"), sources


def needs_prompt(reported: Usage | None) -> bool:
    """Whether `final_usage` needs the prompt's tiktoken count for `reported`."""
    return reported is None or "input" in reported.unread


def needs_output(reported: Usage | None, *, embeddings: bool = False) -> bool:
    """Whether `final_usage` needs the output text's tiktoken count for `reported`."""
    return not embeddings and (reported is None or "output" in reported.unread)


def _given(count: int | None) -> int:
    if count is None:
        raise ValueError("a count to estimate was not given (see needs_prompt and needs_output)")
    return count
