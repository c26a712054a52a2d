"""Token usage reported by a provider, normalized: one record whatever the API said it in.

Everything here is pure and defensive: whatever the upstream sends, nothing raises. A count
is a non-negative integer (an integral float such as 100.0 too) of at most `MAX_TOKENS`; a
field that is absent or null counts as 0. A main count (the input, the output) sent as
anything else (a string, a fraction, a negative number, 1e30) is not billed as 0 nor as sent:
the Usage names it in `unread`, and the relay estimates it with tiktoken instead
(`metering.usage.fallback`). A part (cached, reasoning, cache writes) sent so counts as 0.
Reading usage out of each API's streams is each wire format's job (`proxy.formats`); they
all end here.
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
    # The main counts ("input", "output") the provider sent but not as a count: to estimate
    unread: tuple[str, ...] = ()


# More tokens than one call can hold (ten times the longest context offered): a count above it
# is not a count, and billing it as sent would charge trillions for one call.
MAX_TOKENS = 100_000_000


def token_count(value: object) -> int:
    """A token count as sent, or 0 unless it is one (`readable`; bools are ints in Python)."""
    if type(value) is int:
        return value if 0 <= value <= MAX_TOKENS else 0
    if type(value) is float and value.is_integer() and 0 <= value <= MAX_TOKENS:
        return int(value)
    return 0


def readable(value: object) -> bool:
    """Whether `value` is absent (None) or a count `token_count` takes as sent."""
    return value is None or (type(value) in (int, float) and token_count(value) == value)


def unread_counts(usage: dict, inputs: tuple[str, ...], outputs: tuple[str, ...], *,
                  required: bool = False) -> tuple[str, ...]:
    """Which main counts, input and output (each made of the fields named, the first its own),
    `usage` sent in a form that is not a count; or did not send: none of the fields at all, or,
    where the API always sends them (`required`), the first one."""
    get = usage.get
    if all(get(name) is None for name in inputs + outputs):
        return ("input", "output")
    return tuple(kind for kind, names in (("input", inputs), ("output", outputs))
                 if names and ((required and get(names[0]) is None)
                               or not all(readable(get(name)) for name in names)))


def _sub(usage: dict, name: str, key: str) -> int:
    details = usage.get(name)
    return token_count(details.get(key)) if isinstance(details, dict) else 0


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
        prompt, completion = get("prompt_tokens"), get("completion_tokens")
        input_tokens, output_tokens = token_count(prompt), token_count(completion)
        # NOTE: both counts taken as sent (every call's case) need no closer look
        read = input_tokens == prompt and output_tokens == completion
        cached = (_sub(usage, "prompt_tokens_details", "cached_tokens")
                  or token_count(get("prompt_cache_hit_tokens")))  # DeepSeek's name
        reasoning = _sub(usage, "completion_tokens_details", "reasoning_tokens")
        # Cache writes, within prompt_tokens: `cache_write_tokens` (litellm's name for Anthropic's
        # writes, OpenRouter's too), the 1-hour part in litellm's `cache_creation_token_details`
        written = _sub(usage, "prompt_tokens_details", "cache_write_tokens")
        details = get("prompt_tokens_details")
        written_1h = _sub(details, "cache_creation_token_details", "ephemeral_1h_input_tokens") \
            if isinstance(details, dict) else 0
        if not input_tokens and "completion_tokens" not in usage:
            input_tokens = token_count(get("total_tokens"))  # embeddings servers sending only a total
        unread = () if read else unread_counts(usage, ("prompt_tokens",), ("completion_tokens",))
    elif "input_tokens" in usage or "output_tokens" in usage:
        if "cache_read_input_tokens" in usage or "cache_creation_input_tokens" in usage:
            return anthropic_usage(usage)
        # OpenAI's Responses API: input_tokens counts cache reads (and writes) already.
        given_input, given_output = get("input_tokens"), get("output_tokens")
        input_tokens, output_tokens = token_count(given_input), token_count(given_output)
        cached = _sub(usage, "input_tokens_details", "cached_tokens")
        reasoning = _sub(usage, "output_tokens_details", "reasoning_tokens")
        written = _sub(usage, "input_tokens_details", "cache_write_tokens")
        unread = () if input_tokens == given_input and output_tokens == given_output else \
            unread_counts(usage, ("input_tokens",), ("output_tokens",), required=True)
        return bounded_usage(input_tokens, cached, output_tokens, reasoning, written, 0, usage, unread)
    else:
        input_tokens = token_count(get("total_tokens"))  # embeddings with only a total
        output_tokens = cached = reasoning = written = written_1h = 0
        unread = unread_counts(usage, ("total_tokens",), ())
    return bounded_usage(input_tokens, cached, output_tokens, reasoning, written, written_1h, usage, unread)


def anthropic_usage(usage: dict) -> Usage:
    """Anthropic's usage object: `input_tokens` excludes cache reads and writes, so the input is
    their sum; `cache_creation` splits the writes into 5-minute and 1-hour ones."""
    get = usage.get
    cache_read = token_count(get("cache_read_input_tokens"))
    cache_write = token_count(get("cache_creation_input_tokens"))
    write_1h = _sub(usage, "cache_creation", "ephemeral_1h_input_tokens")
    return bounded_usage(token_count(get("input_tokens")) + cache_read + cache_write, cache_read,
                         token_count(get("output_tokens")), _sub(usage, "output_tokens_details", "thinking_tokens"),
                         cache_write, write_1h, usage,
                         unread_counts(usage, ("input_tokens", "cache_read_input_tokens",
                                               "cache_creation_input_tokens"), ("output_tokens",), required=True))


def bounded_usage(input_tokens: int, cached: int, output_tokens: int, reasoning: int, cache_write: int,
                  cache_write_1h: int, raw: dict | None, unread: tuple[str, ...] = ()) -> Usage:
    """A Usage whose parts never exceed their wholes, whatever the upstream claims: each token
    is priced once (cache reads first, then writes, within the input)."""
    cached = min(cached, input_tokens)
    cache_write = min(cache_write, input_tokens - cached)
    return Usage(input_tokens=input_tokens, cached_input_tokens=cached, output_tokens=output_tokens,
                 reasoning_tokens=min(reasoning, output_tokens), cache_write_tokens=cache_write,
                 cache_write_1h_tokens=min(cache_write_1h, cache_write), raw=raw, unread=unread)
