"""Token counts in disjoint parts, so two reports can be compared part by part and priced once.

Payware's classes overlap (DESIGN.md): `input` counts every prompt token, `cached_input` (cache
reads) and `cache_write` are parts of it, and `cache_write_1h` is a part of `cache_write`.
Providers cut the same tokens differently (OpenAI's `input_tokens` includes cached ones,
Anthropic's `uncached_input_tokens` does not). Both are turned into five disjoint parts:

    uncached        input neither read from nor written to the cache  (priced at `input`)
    cache_read      cached input                                       (`cached_input`)
    cache_write_5m  cache writes of the short retention                (`cache_write`)
    cache_write_1h  cache writes of the long retention                 (`cache_write_1h`)
    output          every completion token, reasoning included         (`output`)

Each token is in exactly one part, so `min`/`excess` part by part split two counts into what
both saw and what only one saw, and the price of a part never counts a token twice (the
same rule as rating: `metering.billing.plans`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from decimal import Decimal, localcontext

from config.schema import ModelPrice
from metering.billing.plans import EXACT

CLASSES = ("input", "cached_input", "cache_write", "cache_write_1h", "output")  # Payware's, as shown
MILLION = Decimal(1_000_000)


@dataclass(frozen=True, slots=True)
class Tokens:
    uncached: int = 0
    cache_read: int = 0
    cache_write_5m: int = 0
    cache_write_1h: int = 0
    output: int = 0

    @classmethod
    def from_classes(cls, *, input: int, cached_input: int = 0, cache_write: int = 0, cache_write_1h: int = 0,
                     output: int = 0, where: str = "usage") -> Tokens:
        """Payware's overlapping classes as parts; a part larger than what holds it is an error."""
        if cached_input + cache_write > input:
            raise ValueError(f"{where}: cached input ({cached_input}) and cache writes ({cache_write}) "
                             f"exceed the input ({input}) that includes them")
        if cache_write_1h > cache_write:
            raise ValueError(f"{where}: 1-hour cache writes ({cache_write_1h}) exceed the cache writes "
                             f"({cache_write}) that include them")
        return cls(uncached=input - cached_input - cache_write, cache_read=cached_input,
                   cache_write_5m=cache_write - cache_write_1h, cache_write_1h=cache_write_1h, output=output)

    @classmethod
    def of_event(cls, event) -> Tokens:
        """An event's tokens, bounded as the usage reader bounds them (never a negative part)."""
        cached = min(event.cached_input_tokens, event.input_tokens)
        written = min(event.cache_write_tokens, event.input_tokens - cached)
        written_1h = min(event.cache_write_1h_tokens, written)
        return cls(uncached=event.input_tokens - cached - written, cache_read=cached,
                   cache_write_5m=written - written_1h, cache_write_1h=written_1h, output=event.output_tokens)

    def classes(self) -> dict[str, int]:
        """In Payware's classes (overlapping), with `total` = input + output."""
        writes = self.cache_write_5m + self.cache_write_1h
        prompt = self.uncached + self.cache_read + writes
        return {"input": prompt, "cached_input": self.cache_read, "cache_write": writes,
                "cache_write_1h": self.cache_write_1h, "output": self.output, "total": prompt + self.output}

    @property
    def total(self) -> int:
        return self.uncached + self.cache_read + self.cache_write_5m + self.cache_write_1h + self.output

    def __add__(self, other: Tokens) -> Tokens:
        return Tokens(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def common(self, other: Tokens) -> Tokens:
        """Part by part, what both counted."""
        return Tokens(*(min(getattr(self, f.name), getattr(other, f.name)) for f in fields(self)))

    def excess(self, other: Tokens) -> Tokens:
        """Part by part, what this one counted beyond `other`."""
        return Tokens(*(max(getattr(self, f.name) - getattr(other, f.name), 0) for f in fields(self)))

    def cost(self, price: ModelPrice) -> Decimal:
        """Exact USD at `price` (per 1M tokens), each part at its class's price."""
        with localcontext(EXACT):
            return (self.uncached * price.input + self.cache_read * price.cached_input
                    + self.cache_write_5m * price.cache_write + self.cache_write_1h * price.cache_write_1h
                    + self.output * price.output) / MILLION


__all__ = ["CLASSES", "Tokens"]
