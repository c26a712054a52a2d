"""Rate limits: requests and tokens per minute, per key and per customer.

Algorithm: GCRA (generic cell rate), in its leaky-bucket form, in integers. Each limit has a
bucket per dimension (requests, tokens) whose level is counted in unit-milliseconds: a unit
adds `WINDOW_MS`, a rate of R per minute drains R per millisecond, and the bucket holds
R * WINDOW_MS. So a full minute's amount may go at once (the burst), after which capacity comes
back smoothly: one request every 60/R seconds. No division happens on the hot path, so the
arithmetic is exact in Python ints and in Redis Lua doubles (every level stays below 2^53).

`acquire` is all-or-nothing: 1 request and `tokens` go into every bucket of every limit, or
nothing goes anywhere. `adjust` moves the token buckets by actual - estimated after the
response, without a check: an underestimate becomes debt that later requests wait out.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from metering.limits import redis_scripts

if TYPE_CHECKING:
    import redis.asyncio as aioredis

WINDOW_MS = 60_000
MAX_RATE = 10**9  # per minute; with 10 windows of debt a level stays < 2^53 (exact in Lua)
MAX_TOKENS = 10**9  # per call, for the same reason
MAX_DEBT_WINDOWS = 10  # adjust never pushes a bucket past this many minutes of debt


@dataclass(frozen=True, slots=True)
class Limit:
    """Requests and tokens per minute for one subject."""

    name: str  # e.g. "customer:acme" / "key:key_abc"
    rpm: int | None
    tpm: int | None

    def __post_init__(self) -> None:
        for what, rate in (("rpm", self.rpm), ("tpm", self.tpm)):
            if rate is not None and (isinstance(rate, bool) or not isinstance(rate, int)
                                     or not 1 <= rate <= MAX_RATE):
                raise ValueError(f"limit {self.name!r}: {what} must be an int in [1, {MAX_RATE}], not {rate!r}")


@dataclass(frozen=True, slots=True)
class RateDecision:
    """The answer to `acquire`, with what OpenAI's `x-ratelimit-*` headers show.

    The request and token numbers each describe the tightest limit (fewest remaining).
    `reset_*` is the time until that bucket is empty again (fully reset), in seconds.
    """

    allowed: bool
    retry_after: float  # seconds until this request would fit, 0 when allowed
    limit_requests: int | None
    remaining_requests: int | None
    reset_requests: float
    limit_tokens: int | None
    remaining_tokens: int | None
    reset_tokens: float


class RateLimiter(Protocol):
    """Requests and tokens per minute; the memory and the Redis limiter behave the same."""

    async def acquire(self, *, customer: str, limits: list[Limit], tokens: int) -> RateDecision: ...

    async def adjust(self, *, customer: str, limits: list[Limit], delta_tokens: int) -> None: ...


Levels = tuple[int, int]  # (request level, token level) in unit-milliseconds


def _fits(level: int, cost: int, rate: int | None) -> bool:
    return rate is None or level + cost * WINDOW_MS <= rate * WINDOW_MS


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _decision(limits: Sequence[Limit], tokens: int, levels: Sequence[Levels], allowed: bool) -> RateDecision:
    """`levels` are after the grant when allowed, else as they stand (nothing was taken)."""
    retry_ms = 0
    if not allowed:
        for limit, (r, t) in zip(limits, levels):
            for rate, level, cost in ((limit.rpm, r, 1), (limit.tpm, t, tokens)):
                if _fits(level, cost, rate):
                    continue
                assert rate is not None
                if cost > rate:  # larger than the whole bucket: it never fits; back off a full window
                    wait = WINDOW_MS
                else:
                    wait = _ceil_div(level + cost * WINDOW_MS - rate * WINDOW_MS, rate)
                retry_ms = max(retry_ms, wait)
    limit_r, remaining_r, reset_r = _tightest(limits, levels, 0)
    limit_t, remaining_t, reset_t = _tightest(limits, levels, 1)
    return RateDecision(allowed, retry_ms / 1000, limit_r, remaining_r, reset_r, limit_t, remaining_t, reset_t)


def _tightest(limits: Sequence[Limit], levels: Sequence[Levels], dim: int) -> tuple[int | None, int | None, float]:
    """(limit, remaining, reset seconds) of the bucket of dimension `dim` (0: requests, 1:
    tokens) with the fewest units left, then the lowest rate; the first of equals."""
    best_rate = best_left = None
    best_level = 0
    for limit, pair in zip(limits, levels):
        rate = limit.tpm if dim else limit.rpm
        if rate is None:
            continue
        level = pair[dim]
        left = (rate * WINDOW_MS - level) // WINDOW_MS
        left = left if left > 0 else 0
        if best_rate is None or left < best_left or (left == best_left and rate < best_rate):
            best_rate, best_left, best_level = rate, left, level
    if best_rate is None:
        return None, None, 0.0
    return best_rate, best_left, -(-best_level // best_rate) / 1000


def _check(limits: Sequence[Limit], amount: int, what: str, low: int) -> None:
    if isinstance(amount, bool) or not isinstance(amount, int) or not low <= amount <= MAX_TOKENS:
        raise ValueError(f"{what} must be an int in [{low}, {MAX_TOKENS}], not {amount!r}")
    if len(limits) < 2:
        return
    names = [limit.name for limit in limits]
    if len(set(names)) != len(names):
        raise ValueError(f"limits must have distinct names, got {names}")  # one bucket would be charged twice


class MemoryRateLimiter:
    """Rate limits in this process. `clock` (seconds, `time.monotonic` by default) is injectable.

    NOTE: atomic because no method awaits between its check and its write.
    """

    def __init__(self, *, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._buckets: dict[tuple[str, str], tuple[int, int, int, int]] = {}  # -> (r, t, ts ms, empty at ms)
        self._swept = 0

    def _now(self) -> int:
        now = round(self._clock() * 1000)
        if now - self._swept >= WINDOW_MS:  # forget buckets that drained empty (Redis: PEXPIRE)
            self._swept = now
            for key in [k for k, state in self._buckets.items() if state[3] <= now]:
                del self._buckets[key]
        return now

    def _drained(self, customer: str, limit: Limit, now: int) -> Levels:
        r, t, ts, _ = self._buckets.get((customer, limit.name), (0, 0, 0, 0))
        elapsed = max(0, now - ts)  # a clock step back must not add debt
        r = max(0, r - limit.rpm * elapsed) if limit.rpm is not None else 0
        t = max(0, t - limit.tpm * elapsed) if limit.tpm is not None else 0
        return r, t

    def _store(self, customer: str, limit: Limit, now: int, r: int, t: int) -> None:
        empty_in = 0
        if limit.rpm is not None:
            empty_in = max(empty_in, _ceil_div(r, limit.rpm))
        if limit.tpm is not None:
            empty_in = max(empty_in, _ceil_div(t, limit.tpm))
        self._buckets[(customer, limit.name)] = (r, t, now, now + empty_in + 1000)

    async def acquire(self, *, customer: str, limits: list[Limit], tokens: int) -> RateDecision:
        """Take 1 request and `tokens` from every limit, or nothing if any would go over."""
        return self.take(customer, limits, tokens)

    async def adjust(self, *, customer: str, limits: list[Limit], delta_tokens: int) -> None:
        """Correct the token buckets by actual - estimated tokens (negative gives tokens back)."""
        self.correct(customer, limits, delta_tokens)

    # The work itself, synchronous: in-process admission calls these without awaiting.

    def take(self, customer: str, limits: list[Limit], tokens: int) -> RateDecision:
        """`acquire`, without a coroutine."""
        _check(limits, tokens, "tokens", 0)
        now = self._now()
        levels = [self._drained(customer, limit, now) for limit in limits]
        cost = tokens * WINDOW_MS
        for limit, (r, t) in zip(limits, levels):
            if not (_fits(r, 1, limit.rpm) and _fits(t, tokens, limit.tpm)):
                return _decision(limits, tokens, levels, False)
        granted = []
        for limit, (r, t) in zip(limits, levels):
            if limit.rpm is not None:
                r += WINDOW_MS
            if limit.tpm is not None:
                t += cost
            self._store(customer, limit, now, r, t)
            granted.append((r, t))
        return _decision(limits, tokens, granted, True)

    def correct(self, customer: str, limits: list[Limit], delta_tokens: int) -> None:
        """`adjust`, without a coroutine."""
        _check(limits, delta_tokens, "delta_tokens", -MAX_TOKENS)
        if delta_tokens == 0:
            return
        now = self._now()
        for limit in limits:
            if limit.tpm is None:
                continue
            r, t = self._drained(customer, limit, now)
            t = min(max(0, t + delta_tokens * WINDOW_MS), MAX_DEBT_WINDOWS * limit.tpm * WINDOW_MS)
            self._store(customer, limit, now, r, t)


class RedisRateLimiter:
    """Rate limits in Redis, shared by every proxy; one Lua script per call, on the server's clock.

    Keys: `{prefix}:{{customer}}:rate:{limit.name}`, a hash that expires once its buckets drain.
    The client belongs to the caller, who closes it.
    """

    def __init__(self, client: aioredis.Redis, *, prefix: str = "pw"):
        if "{" in prefix or "}" in prefix:
            raise ValueError("the key prefix must not contain braces: the customer is the hash tag")
        self._prefix = prefix
        self._acquire = client.register_script(redis_scripts.RATE_ACQUIRE)
        self._adjust = client.register_script(redis_scripts.RATE_ADJUST)

    def _keys_args(self, customer: str, limits: Sequence[Limit], first: int) -> tuple[list[str], list[str]]:
        keys = [f"{self._prefix}:{{{customer}}}:rate:{limit.name}" for limit in limits]
        args = [str(first)]
        for limit in limits:
            args += ["" if limit.rpm is None else str(limit.rpm), "" if limit.tpm is None else str(limit.tpm)]
        return keys, args

    async def acquire(self, *, customer: str, limits: list[Limit], tokens: int) -> RateDecision:
        """Take 1 request and `tokens` from every limit, or nothing if any would go over."""
        _check(limits, tokens, "tokens", 0)
        if not limits:
            return _decision(limits, tokens, [], True)
        keys, args = self._keys_args(customer, limits, tokens)
        reply = await self._acquire(keys=keys, args=args)
        levels = [(int(reply[i]), int(reply[i + 1])) for i in range(1, len(reply), 2)]
        return _decision(limits, tokens, levels, bool(reply[0]))

    async def adjust(self, *, customer: str, limits: list[Limit], delta_tokens: int) -> None:
        """Correct the token buckets by actual - estimated tokens (negative gives tokens back)."""
        _check(limits, delta_tokens, "delta_tokens", -MAX_TOKENS)
        if not any(limit.tpm is not None for limit in limits) or delta_tokens == 0:
            return
        keys, args = self._keys_args(customer, limits, delta_tokens)
        await self._adjust(keys=keys, args=args)


__all__ = ["Limit", "MemoryRateLimiter", "RateDecision", "RateLimiter", "RedisRateLimiter"]
