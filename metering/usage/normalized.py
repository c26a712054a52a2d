"""Token usage reported by a provider, normalized: one record whatever the API said it in.

Everything here is pure and defensive: whatever the upstream sends, nothing raises, and a
field that is not a non-negative integer counts as 0. Reading usage out of each API's
streams is each wire format's job (`proxy.formats`); they all end here.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of one call, in OpenAI's convention (see DESIGN.md, "Token counts")."""

    input_tokens: int = 0  # every prompt token, cache reads and writes included
    cached_input_tokens: int = 0  # the part of the input read from cache
    output_tokens: int = 0  # every completion token, reasoning ones included
    reasoning_tokens: int = 0  # the part of the output spent reasoning
    source: str = "provider"  # "provider" | "estimated"
    cache_write_tokens: int = 0  # the part of the input written to cache (5-minute and 1-hour)
    cache_write_1h_tokens: int = 0  # the part of the cache writes kept for an hour
    # The provider's own usage object, kept as evidence; not part of equality (nor hashable).
    raw: dict | None = field(default=None, compare=False)


def _count(value: object) -> int:
    """A token count as sent, or 0 unless it is a non-negative int (bools are ints in Python)."""
    return value if type(value) is int and value >= 0 else 0


def _sub(usage: dict, name: str, key: str) -> int:
    details = usage.get(name)
    return _count(details.get(key)) if isinstance(details, dict) else 0


def usage_from_json(obj: object) -> Usage | None:
    """The usage of a parsed response or stream chunk, or None if `obj["usage"]` is not an object.

    Reads OpenAI's names (chat, completions, embeddings, responses) and, when those are
    absent, Anthropic's, whose `input_tokens` excludes cache reads and writes: those are
    added back so that `input_tokens` counts every prompt token here too.
    """
    if not isinstance(obj, dict):
        return None
    usage = obj.get("usage")
    if not isinstance(usage, dict):
        return None
    get = usage.get
    if "prompt_tokens" in usage or "completion_tokens" in usage:
        input_tokens = _count(get("prompt_tokens"))
        output_tokens = _count(get("completion_tokens"))
        cached = (_sub(usage, "prompt_tokens_details", "cached_tokens")
                  or _count(get("prompt_cache_hit_tokens")))  # DeepSeek's name
        reasoning = _sub(usage, "completion_tokens_details", "reasoning_tokens")
        # Cache writes, within prompt_tokens: `cache_write_tokens` (litellm's name for Anthropic's
        # writes, OpenRouter's too), the 1-hour part in litellm's `cache_creation_token_details`
        written = _sub(usage, "prompt_tokens_details", "cache_write_tokens")
        details = get("prompt_tokens_details")
        written_1h = _sub(details, "cache_creation_token_details", "ephemeral_1h_input_tokens") \
            if isinstance(details, dict) else 0
        if not input_tokens and "completion_tokens" not in usage:
            input_tokens = _count(get("total_tokens"))  # embeddings servers sending only a total
    elif "input_tokens" in usage or "output_tokens" in usage:
        if "cache_read_input_tokens" in usage or "cache_creation_input_tokens" in usage:
            return anthropic_usage(usage)
        # OpenAI's Responses API: input_tokens counts cache reads (and writes) already.
        input_tokens = _count(get("input_tokens"))
        output_tokens = _count(get("output_tokens"))
        cached = _sub(usage, "input_tokens_details", "cached_tokens")
        reasoning = _sub(usage, "output_tokens_details", "reasoning_tokens")
        written = _sub(usage, "input_tokens_details", "cache_write_tokens")
        return bounded_usage(input_tokens, cached, output_tokens, reasoning, written, 0, usage)
    else:
        input_tokens = _count(get("total_tokens"))  # embeddings with only a total
        output_tokens = cached = reasoning = written = written_1h = 0
    return bounded_usage(input_tokens, cached, output_tokens, reasoning, written, written_1h, usage)


def anthropic_usage(usage: dict) -> Usage:
    """Anthropic's usage object: `input_tokens` excludes cache reads and writes, so the input is
    their sum; `cache_creation` splits the writes into 5-minute and 1-hour ones."""
    get = usage.get
    cache_read = _count(get("cache_read_input_tokens"))
    cache_write = _count(get("cache_creation_input_tokens"))
    write_1h = _sub(usage, "cache_creation", "ephemeral_1h_input_tokens")
    return bounded_usage(_count(get("input_tokens")) + cache_read + cache_write, cache_read,
                         _count(get("output_tokens")), _sub(usage, "output_tokens_details", "thinking_tokens"),
                         cache_write, write_1h, usage)


def bounded_usage(input_tokens: int, cached: int, output_tokens: int, reasoning: int, cache_write: int,
                  cache_write_1h: int, raw: dict | None) -> Usage:
    """A Usage whose parts never exceed their wholes, whatever the upstream claims: each token
    is priced once (cache reads first, then writes, within the input)."""
    cached = min(cached, input_tokens)
    cache_write = min(cache_write, input_tokens - cached)
    return Usage(input_tokens=input_tokens, cached_input_tokens=cached, output_tokens=output_tokens,
                 reasoning_tokens=min(reasoning, output_tokens), cache_write_tokens=cache_write,
                 cache_write_1h_tokens=min(cache_write_1h, cache_write), raw=raw)
