"""Rate limits: the limiter contract, run here in memory and in
tests/integration/test_ratelimit_redis.py on Redis (same class, another `limiter` fixture).

On Redis time runs on while the test runs, so timings are checked within `slack` seconds
(0 in memory, where the clock only moves when the test moves it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from metering.limits.ratelimit import Limit, MemoryRateLimiter, RateDecision, RateLimiter
from tests.unit.test_budget_memory import FakeClock

Advance = Callable[[float], Awaitable[None]]


async def acquire(limiter: RateLimiter, limits: list[Limit], tokens: int = 0, who: str = "acme") -> RateDecision:
    return await limiter.acquire(customer=who, limits=limits, tokens=tokens)


def within(value: float, expected: float, slack: float) -> bool:
    """`value` is `expected`, or up to `slack` less (time passed since the state was written)."""
    return expected - slack - 1e-9 <= value <= expected + 1e-9


class RateLimitContract:
    """What every RateLimiter does. Subclasses provide `limiter`, `advance` and `slack`."""

    async def test_rpm_allows_a_burst_of_the_minute_amount_then_refuses(self, limiter: RateLimiter, slack: float):
        limits = [Limit("key:k1", rpm=5, tpm=None)]
        remaining = [(await acquire(limiter, limits)).remaining_requests for _ in range(5)]
        assert remaining == [4, 3, 2, 1, 0]
        refused = await acquire(limiter, limits)
        assert not refused.allowed and refused.remaining_requests == 0 and refused.limit_requests == 5
        assert within(refused.retry_after, 12.0, slack)  # one request comes back every 60/5 s

    async def test_capacity_comes_back_after_retry_after(self, limiter: RateLimiter, advance: Advance,
                                                         slack: float):
        limits = [Limit("key:k1", rpm=120, tpm=None)]
        while (await acquire(limiter, limits)).allowed:
            pass
        refused = await acquire(limiter, limits)
        assert 0 < refused.retry_after <= 0.5
        await advance(refused.retry_after + slack)
        assert (await acquire(limiter, limits)).allowed
        again = await acquire(limiter, limits)
        assert not again.allowed and within(again.retry_after, 0.5, 2 * slack)

    async def test_tokens_per_minute_count_every_token(self, limiter: RateLimiter, slack: float):
        limits = [Limit("key:k1", rpm=None, tpm=1000)]
        first = await acquire(limiter, limits, 600)
        assert first.allowed and (first.limit_tokens, first.remaining_tokens) == (1000, 400)
        assert (first.limit_requests, first.remaining_requests, first.reset_requests) == (None, None, 0.0)
        refused = await acquire(limiter, limits, 500)
        assert not refused.allowed and refused.remaining_tokens == 400
        assert within(refused.retry_after, 6.0, slack)  # 100 tokens short at 1000 per minute
        last = await acquire(limiter, limits, 400)
        assert last.allowed and last.remaining_tokens == 0

    async def test_a_refused_request_consumes_nothing(self, limiter: RateLimiter):
        limits = [Limit("customer:acme", rpm=100, tpm=10_000), Limit("key:k1", rpm=100, tpm=500)]
        refused = await acquire(limiter, limits, 600)  # the key's tpm refuses it
        assert not refused.allowed and refused.remaining_requests == 100
        granted = await acquire(limiter, limits, 500)
        assert granted.allowed
        assert (granted.remaining_requests, granted.remaining_tokens) == (99, 0)  # 1 request, not 2
        customer_only = await acquire(limiter, limits[:1], 0)
        assert (customer_only.remaining_requests, customer_only.remaining_tokens) == (98, 9500)

    async def test_adjust_gives_back_unused_tokens_and_charges_extra_ones(self, limiter: RateLimiter,
                                                                         slack: float):
        limits = [Limit("key:k1", rpm=None, tpm=1000)]
        await acquire(limiter, limits, 800)
        await limiter.adjust(customer="acme", limits=limits, delta_tokens=-500)
        assert (await acquire(limiter, limits, 600)).remaining_tokens == 100
        await limiter.adjust(customer="acme", limits=limits, delta_tokens=200)
        refused = await acquire(limiter, limits, 1)
        assert not refused.allowed and refused.remaining_tokens == 0
        assert within(refused.retry_after, 101 * 0.06, slack)  # 1100 + 1 - 1000 tokens at 1 per 60 ms

    async def test_adjust_never_refunds_below_an_empty_bucket(self, limiter: RateLimiter):
        limits = [Limit("key:k1", rpm=None, tpm=1000)]
        await acquire(limiter, limits, 100)
        await limiter.adjust(customer="acme", limits=limits, delta_tokens=-5000)
        assert (await acquire(limiter, limits, 1000)).allowed
        assert not (await acquire(limiter, limits, 1)).allowed

    async def test_adjust_leaves_request_counts_alone(self, limiter: RateLimiter):
        limits = [Limit("key:k1", rpm=2, tpm=1000)]
        await acquire(limiter, limits, 10)
        await limiter.adjust(customer="acme", limits=limits, delta_tokens=50)
        decision = await acquire(limiter, limits, 10)
        assert (decision.remaining_requests, decision.remaining_tokens) == (0, 930)

    async def test_headers_describe_the_tightest_limit(self, limiter: RateLimiter):
        limits = [Limit("customer:acme", rpm=100, tpm=None), Limit("key:k1", rpm=10, tpm=2000)]
        decision = await acquire(limiter, limits, 100)
        assert (decision.allowed, decision.retry_after) == (True, 0.0)
        assert (decision.limit_requests, decision.remaining_requests, decision.reset_requests) == (10, 9, 6.0)
        assert (decision.limit_tokens, decision.remaining_tokens, decision.reset_tokens) == (2000, 1900, 3.0)

    async def test_a_request_larger_than_the_tpm_is_refused_for_a_full_window(self, limiter: RateLimiter):
        refused = await acquire(limiter, [Limit("key:k1", rpm=None, tpm=100)], 101)
        assert not refused.allowed and refused.retry_after == 60.0

    async def test_customers_do_not_share_buckets(self, limiter: RateLimiter):
        limits = [Limit("key:k1", rpm=1, tpm=None)]
        assert (await acquire(limiter, limits, who="acme")).allowed
        assert (await acquire(limiter, limits, who="globex")).allowed
        assert not (await acquire(limiter, limits, who="acme")).allowed

    async def test_no_limits_allow_everything(self, limiter: RateLimiter):
        decision = await acquire(limiter, [], 10**6)
        assert decision == RateDecision(True, 0.0, None, None, 0.0, None, None, 0.0)

    async def test_concurrent_acquires_grant_exactly_the_burst(self, limiter: RateLimiter):
        limits = [Limit("customer:acme", rpm=20, tpm=None), Limit("key:k1", rpm=None, tpm=10_000)]
        decisions = await asyncio.gather(*(acquire(limiter, limits, 100) for _ in range(50)))
        assert sum(d.allowed for d in decisions) == 20


class TestMemoryRateLimiter(RateLimitContract):
    @pytest.fixture
    def clock(self) -> FakeClock:
        return FakeClock()

    @pytest.fixture
    def limiter(self, clock: FakeClock) -> MemoryRateLimiter:
        return MemoryRateLimiter(clock=clock)

    @pytest.fixture
    def advance(self, clock: FakeClock) -> Advance:
        async def advance(seconds: float) -> None:
            clock.now += seconds
        return advance

    @pytest.fixture
    def slack(self) -> float:
        return 0.0

    async def test_a_request_comes_back_exactly_one_interval_later(self, limiter: MemoryRateLimiter,
                                                                  clock: FakeClock):
        limits = [Limit("key:k1", rpm=60, tpm=None)]
        for _ in range(60):
            assert (await acquire(limiter, limits)).allowed
        clock.now += 0.999
        refused = await acquire(limiter, limits)
        assert not refused.allowed and refused.retry_after == pytest.approx(0.001)
        clock.now += 0.001
        assert (await acquire(limiter, limits)).allowed

    async def test_a_full_bucket_resets_after_one_minute(self, limiter: MemoryRateLimiter, clock: FakeClock):
        limits = [Limit("key:k1", rpm=3, tpm=None)]
        for _ in range(3):
            last = await acquire(limiter, limits)
        assert last.reset_requests == 60.0
        clock.now += 60
        assert [(await acquire(limiter, limits)).allowed for _ in range(4)] == [True, True, True, False]

    async def test_drained_buckets_are_forgotten(self, limiter: MemoryRateLimiter, clock: FakeClock):
        await acquire(limiter, [Limit("key:k1", rpm=60, tpm=None)])
        clock.now += 120
        await acquire(limiter, [Limit("key:k2", rpm=60, tpm=None)])
        assert list(limiter._buckets) == [("acme", "key:k2")]


@pytest.mark.parametrize("rpm, tpm", [
    pytest.param(0, None, id="zero rpm"),
    pytest.param(None, -5, id="negative tpm"),
    pytest.param(1.5, None, id="float rpm"),
    pytest.param(True, None, id="bool rpm"),
    pytest.param(None, 10**9 + 1, id="tpm past the exact range"),
])
def test_limit_refuses_bad_rates(rpm, tpm):
    with pytest.raises(ValueError):
        Limit("key:k1", rpm=rpm, tpm=tpm)


@pytest.mark.parametrize("limits, tokens", [
    pytest.param([Limit("key:k1", 1, 1), Limit("key:k1", 2, 2)], 0, id="one name twice"),
    pytest.param([Limit("key:k1", 1, 1)], -1, id="negative tokens"),
    pytest.param([Limit("key:k1", 1, 1)], 10**10, id="too many tokens"),
])
async def test_acquire_refuses_bad_arguments(limits, tokens):
    with pytest.raises(ValueError):
        await acquire(MemoryRateLimiter(), limits, tokens)
