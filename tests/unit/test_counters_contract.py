"""Real-time counters: the counters contract, run here on MemoryCounters and in
tests/integration/test_redis_counters.py on RedisCounters (same class, another `counters` fixture);
plus RedisCounters' exact integer split of a Decimal, which needs no server."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from metering.limits.counters import Counters, MemoryCounters, PeriodTotals, Totals
from metering.store.events import UsageEvent, money_str
from metering.limits.redis_counters import join_units, split_units

PERIOD = "2025-06-01T00:00:00+00:00"
NEXT_PERIOD = "2025-07-01T00:00:00+00:00"
TS = datetime(2025, 6, 3, 12, 0, tzinfo=UTC)


def event(i: int | str, *, customer: str = "acme", period: str = PERIOD, model: str | None = "gpt-4o-mini",
          metric: str = "tokens", input_tokens: int = 0, cached: int = 0, output: int = 0, reasoning: int = 0,
          quantity: Decimal | str | None = None, cost: Decimal | str = "0", amount: Decimal | str = "0") -> UsageEvent:
    if quantity is None:
        quantity = Decimal(input_tokens + output)
    return UsageEvent(id=f"ev-{i}", ts=TS, customer=customer, key_id="k1", metric=metric, quantity=Decimal(quantity),
                      period=period, model=model, input_tokens=input_tokens, cached_input_tokens=cached,
                      output_tokens=output, reasoning_tokens=reasoning, cost=Decimal(cost), amount=Decimal(amount))


def expected(events: list[UsageEvent]) -> PeriodTotals:
    """What the contract says: PeriodTotals.add over the events (exact at these sizes)."""
    totals = PeriodTotals()
    for e in events:
        totals.add(e)
    return totals


def random_events(n: int, seed: int = 7, **fixed) -> list[UsageEvent]:
    rng = random.Random(seed)
    models = ["gpt-4o-mini", "gpt-4o", "openrouter:anthropic/claude-3.5:beta", "all", "metric:tokens"]
    events = []
    for i in range(n):
        input_tokens = rng.randrange(0, 5000)
        output = rng.randrange(0, 2000)
        if rng.random() < 0.2:
            e = event(i, model=None, metric=rng.choice(["images", "agent_actions"]),
                      quantity=Decimal(rng.randrange(1, 10**6)).scaleb(-rng.randrange(0, 10)),
                      amount=Decimal(rng.randrange(-10**9, 10**12)).scaleb(-18), **fixed)
        else:
            e = event(i, model=rng.choice(models), input_tokens=input_tokens, cached=rng.randrange(0, input_tokens + 1),
                      output=output, reasoning=rng.randrange(0, output + 1),
                      cost=Decimal(rng.randrange(0, 10**13)).scaleb(-rng.randrange(9, 16)),
                      amount=Decimal(rng.randrange(0, 10**16)).scaleb(-rng.randrange(9, 19)), **fixed)
        events.append(e)
    return events


async def record_all(counters: Counters, events: list[UsageEvent]) -> None:
    for e in events:
        await counters.record(e)


class CountersContract:
    """What every Counters does. Subclasses provide the `counters` fixture (empty at the start)."""

    async def test_a_period_with_no_events_has_zero_totals(self, counters: Counters):
        totals = await counters.totals("acme", PERIOD)
        assert totals == PeriodTotals()
        assert totals.all.amount == 0 and totals.by_model == {}

    async def test_tiny_amounts_sum_exactly_to_the_last_digit(self, counters: Counters):
        events = []
        for i in range(500):
            events.append(event(f"a{i}", input_tokens=30, output=5, cost="0.00000585", amount="0.0000073125"))
            events.append(event(f"b{i}", input_tokens=1, cost=Decimal("1.2E-7"), amount=Decimal("1.5E-7")))
            events.append(event(f"c{i}", input_tokens=1, cost="0.000000000000000001", amount="0.000000000000000003"))
        await record_all(counters, events)
        totals = await counters.totals("acme", PERIOD)
        assert totals.all.amount == Decimal("0.0037312500000015")  # 500 x (7.3125e-6 + 1.5e-7 + 3e-18)
        assert totals.all.cost == Decimal("0.0029850000000005")
        assert money_str(totals.all.amount) == "0.0037312500000015"
        assert (totals.all.requests, totals.all.input_tokens, totals.all.output_tokens) == (1500, 16000, 2500)
        assert totals.all.quantity == Decimal(18500)
        assert totals == expected(events)

    async def test_large_and_small_amounts_keep_every_digit(self, counters: Counters):
        events = [event(1, amount="123456.123456789012345678"), event(2, amount="0.000000000000000001"),
                  event(3, amount="99999.999999999999999999")]
        await record_all(counters, events)
        assert (await counters.totals("acme", PERIOD)).all.amount == Decimal("223456.123456789012345678")

    async def test_totals_split_by_model_and_metric_as_period_totals_add_does(self, counters: Counters):
        events = [
            event(1, model="gpt-4o-mini", input_tokens=100, cached=40, output=20, cost="0.0000225", amount="0.000028125"),
            event(2, model="gpt-4o-mini", input_tokens=10, output=5, cost="0.0000045", amount="0.000005625"),
            event(3, model="ns:vendor/model:v1", input_tokens=7, output=3, reasoning=2, amount="0.001"),
            event(4, model=None, metric="images", quantity="2.5", amount="0.10"),
            event(5, model=None, metric="images", quantity="0.25", amount="0.01"),
            event(6, model="ignored-for-metrics", metric="agent_actions", quantity="3", amount="0.3"),
            event(7, model=None, input_tokens=4, output=1, amount="0.000000015"),  # tokens without a model
        ]
        await record_all(counters, events)
        totals = await counters.totals("acme", PERIOD)
        assert set(totals.by_model) == {"gpt-4o-mini", "ns:vendor/model:v1", "metric:images",
                                        "metric:agent_actions", "metric:tokens"}
        assert totals.by_model["gpt-4o-mini"] == Totals(requests=2, input_tokens=110, cached_input_tokens=40,
                                                        output_tokens=25, reasoning_tokens=0, quantity=Decimal(135),
                                                        cost=Decimal("0.000027"), amount=Decimal("0.00003375"))
        assert totals.by_model["ns:vendor/model:v1"].reasoning_tokens == 2
        images = totals.by_model["metric:images"]
        assert (images.requests, images.quantity, images.amount) == (2, Decimal("2.75"), Decimal("0.11"))
        assert totals.by_model["metric:agent_actions"].quantity == 3
        assert totals.by_model["metric:tokens"].quantity == 5
        assert totals.all.requests == 7 and totals.all.amount == Decimal("0.411033765")
        assert totals == expected(events)

    async def test_a_model_named_like_a_metric_or_all_shares_its_bucket_as_in_memory(self, counters: Counters):
        events = [event(1, model="all", amount="1"), event(2, model="metric:images", amount="2"),
                  event(3, model=None, metric="images", quantity="1", amount="3")]
        await record_all(counters, events)
        totals = await counters.totals("acme", PERIOD)
        assert totals == expected(events)
        assert totals.by_model["metric:images"].amount == 5 and totals.by_model["all"].amount == 1

    async def test_negative_amounts_sum_exactly(self, counters: Counters):
        events = [event(1, amount="0.0000073125"), event(2, amount="-0.0000000015"),
                  event(3, amount="-0.000000000000000001"), event(4, model="refunds", amount="-2.000000000000000007")]
        await record_all(counters, events)
        totals = await counters.totals("acme", PERIOD)
        assert totals.all.amount == Decimal("-1.999992689000000008")
        assert totals.by_model["refunds"].amount == Decimal("-2.000000000000000007")
        assert totals.by_model["gpt-4o-mini"].amount == Decimal("0.000007310999999999")
        assert totals == expected(events)

    async def test_a_negative_total_reads_back_exactly(self, counters: Counters):
        await record_all(counters, [event(1, amount="-0.0000000015"), event(2, amount="-1.5E-7")])
        assert (await counters.totals("acme", PERIOD)).all.amount == Decimal("-0.0000001515")

    async def test_customers_and_periods_are_counted_apart(self, counters: Counters):
        await record_all(counters, [event(1, amount="1.1"), event(2, customer="globex", amount="2.2"),
                                    event(3, period=NEXT_PERIOD, amount="3.3")])
        assert (await counters.totals("acme", PERIOD)).all.amount == Decimal("1.1")
        assert (await counters.totals("globex", PERIOD)).all.amount == Decimal("2.2")
        assert (await counters.totals("acme", NEXT_PERIOD)).all.amount == Decimal("3.3")
        assert (await counters.totals("globex", NEXT_PERIOD)) == PeriodTotals()

    async def test_many_random_events_match_period_totals_add(self, counters: Counters):
        events = random_events(400)
        await record_all(counters, events)
        assert await counters.totals("acme", PERIOD) == expected(events)

    async def test_rebuild_into_empty_counters_gives_what_recording_gives(self, counters: Counters):
        events = random_events(300, seed=11) + random_events(50, seed=12, customer="globex", period=NEXT_PERIOD)
        await counters.rebuild(events)
        assert await counters.totals("acme", PERIOD) == expected(events[:300])
        assert await counters.totals("globex", NEXT_PERIOD) == expected(events[300:])
        await counters.record(event("after", amount="0.5"))  # and recording goes on from there
        assert await counters.totals("acme", PERIOD) == expected(events[:300] + [event("after", amount="0.5")])


class TestMemoryCounters(CountersContract):
    @pytest.fixture
    def counters(self) -> MemoryCounters:
        return MemoryCounters()


# RedisCounters' integer split: nano = floor(x * 10**9), atto in [0, 10**9).

@pytest.mark.parametrize("value, nano, atto", [
    ("0", 0, 0),
    ("0.0000073125", 7312, 500_000_000),
    ("1.5E-7", 150, 0),
    ("0.000000000000000001", 0, 1),
    ("123.456789012345678901000", 123_456_789_012, 345_678_901),  # zeros past 18 places are fine
    ("-0.0000000015", -2, 500_000_000),  # floor: the remainder stays non-negative
    ("-0.000000000000000001", -1, 999_999_999),
    ("-2", -2_000_000_000, 0),
    ("1E+3", 1_000_000_000_000, 0),
])
def test_a_decimal_splits_into_floor_nano_units_and_a_non_negative_atto_remainder(value, nano, atto):
    assert split_units(Decimal(value)) == (nano, atto)
    assert 0 <= atto < 10**9
    assert join_units(nano, atto) == Decimal(value)


@pytest.mark.parametrize("value", ["0.0000000000000000001", "-1.0000000000000000005", "1E-19"])
def test_more_than_18_decimal_places_cannot_be_split(value):
    with pytest.raises(ValueError, match="more than 18 decimal places"):
        split_units(Decimal(value))


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_a_non_finite_decimal_cannot_be_split(value):
    with pytest.raises(ValueError, match="finite"):
        split_units(Decimal(value))


def test_joined_units_are_exact_beyond_the_decimal_context_precision():
    nano, atto = 123_456_789_012_345_678_901_234, 999_999_999  # 42 significant digits
    assert join_units(nano, atto) == Decimal("123456789012345.678901234999999999")
    assert str(join_units(5_000_000_000, 0)) == "5" and str(join_units(-1, 999_999_999)) == "-1E-18"
