"""Real-time counters in Redis, shared by every proxy instance: the same `Counters` contract as
`MemoryCounters`, so the summary is the same whichever proxy a customer's request went through.

Layout: one hash per (customer, period), `{prefix}:{{customer}}:totals:{period}` (the customer is
the Redis Cluster hash tag, as for the budget keys). Its TTL (`key_ttl`, 40 days by default,
longer than any billing period) is refreshed on every write. Each field is `<stat>:<bucket>`:
`<stat>` is one of `STATS` (no ':' in any of them) and `<bucket>` is what `PeriodTotals.by_model`
is keyed by (the model name, or `metric:<name>`), verbatim. A field is split at its FIRST ':',
so a bucket may contain ':' or any other character. Only the buckets are stored; `all` is
their sum, computed on read (every event is in exactly one bucket), so the grand total can
never disagree with its split, and a write touches half the fields.

Money and quantities are exact, in integers only (no floats, no `INCRBYFLOAT`): a Decimal `x` is
kept as two integer fields, `nano = floor(x * 10**9)` and `atto = x * 10**18 - nano * 10**9`,
the remainder in [0, 10**9) even for a negative `x` (floor). Reading back,
`x = nano / 10**9 + atto / 10**18`, exactly. The write script carries a remainder that reaches
10**9 into `nano`, so `atto` stays in [0, 10**9) and every field stays far from Redis's 64-bit
limit (`nano` overflows at 9.2e9 USD per bucket and period).

This is exact as long as every event's `cost`, `amount` and `quantity` has at most 18 decimal
places (a value with more raises ValueError, before anything is written). The config loader
keeps computed amounts within that bound: prices per million with at most 9 places and
markups with at most 3 (tokens x price / 1e6 x markup has at most 18), custom quantities and
unit prices with at most 9 each; 18 places is also what the ledger's NUMERIC(38, 18) holds.

Read values are canonical Decimals (trailing fractional zeros dropped): equal (`==`) to
`MemoryCounters`' sums and printed identically by `decimal_str`/`money_str`, though their
exponent may differ (`Decimal("5")` where the memory sum of "2.50" + "2.50" is `Decimal("5.00")`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from decimal import Decimal
from operator import index
from typing import TYPE_CHECKING

from metering.limits.counters import POSITION_SCALE, PeriodTotals, Totals, positions_of
from metering.store.events import UsageEvent

if TYPE_CHECKING:
    import redis.asyncio as aioredis

KEY_TTL = 40 * 86400.0  # as the budget's: longer than any billing period
NANO = 10**9  # nano-units per unit: the `*_nano` fields
ATTO = 10**18  # atto-units per unit: nano * 10**9 + atto
PLACES = 18  # the most decimal places a counted Decimal may have
_INT64 = 2**63
_PIPELINE_CHUNK = 500  # (customer, period) hashes per round trip in `rebuild`

# The stats of one bucket, in the order the write script receives them. The three Decimals are
# stored as a (nano, atto) pair of fields each; the script carries atto into nano.
INT_STATS = ("requests", "input_tokens", "cached_input_tokens", "output_tokens", "reasoning_tokens",
             "cache_write_tokens", "cache_write_1h_tokens")
DECIMAL_STATS = ("quantity", "cost", "amount")
STATS = INT_STATS + tuple(f"{name}_{part}" for name in DECIMAL_STATS for part in ("nano", "atto"))
_GROUP = 1 + len(STATS)  # a bucket's name, then one increment per stat

# KEYS[1] = the (customer, period) hash.
# ARGV[1] = TTL in seconds; ARGV[2] = mode: "add" (increment), "fill" (write only if the hash
# does not exist; returns 0 if it did), "replace" (delete, then write); then one group per
# bucket: its name and one integer increment (a decimal string) per stat, in STATS order.
# Increments stay strings end to end: Redis parses them as 64-bit integers, Lua never does
# arithmetic on them, so no double rounding can happen. Returns 1 when it wrote.
_WRITE = f"""
local key, mode = KEYS[1], ARGV[2]
if mode == 'fill' then
  if redis.call('EXISTS', key) == 1 then return 0 end
elseif mode == 'replace' then
  redis.call('DEL', key)
end
local INTS, DECS, GROUP = {len(INT_STATS)}, {len(DECIMAL_STATS)}, {_GROUP}
local ints = {{{", ".join(repr(name) for name in INT_STATS)}}}
local decs = {{{", ".join(repr(name) for name in DECIMAL_STATS)}}}
for g = 3, #ARGV, GROUP do
  local bucket = ':' .. ARGV[g]
  for i = 1, INTS do
    local inc = ARGV[g + i]
    if inc ~= '0' then redis.call('HINCRBY', key, ints[i] .. bucket, inc) end
  end
  for d = 1, DECS do
    local nano, atto = ARGV[g + INTS + 2 * d - 1], ARGV[g + INTS + 2 * d]
    local nano_field, atto_field = decs[d] .. '_nano' .. bucket, decs[d] .. '_atto' .. bucket
    if nano ~= '0' then redis.call('HINCRBY', key, nano_field, nano) end
    if atto ~= '0' then
      -- both parts are < 10**9, so the sum is < 2 * 10**9: at most one carry, exact in a double
      if redis.call('HINCRBY', key, atto_field, atto) >= 1000000000 then
        redis.call('HINCRBY', key, atto_field, '-1000000000')
        redis.call('HINCRBY', key, nano_field, '1')
      end
    end
  end
end
if #ARGV >= 3 then redis.call('EXPIRE', key, ARGV[1]) end
return 1
"""

# KEYS[1] = a (customer, period) positions hash; ARGV = metric, units (an integer string), TTL.
# Returns the metric's units after the claim as Redis's string: a Lua number is a double, which
# would round positions past 2**53.
_CLAIM = """
redis.call('HINCRBY', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return redis.call('HGET', KEYS[1], ARGV[1])
"""


def split_units(value: Decimal, what: str = "value") -> tuple[int, int]:
    """`value` as (nano, atto): nano = floor(value * 10**9), atto in [0, 10**9). Exact.

    ValueError if `value` is not finite or has more than 18 decimal places (trailing zeros
    beyond them are fine: `Decimal("1.5000000000000000000000")` is 1.5).
    """
    if not isinstance(value, Decimal):
        if isinstance(value, int) and not isinstance(value, bool):
            value = Decimal(value)
        else:
            raise TypeError(f"{what} must be a Decimal, not {type(value).__name__}")
    if not value.is_finite():
        raise ValueError(f"{what} must be finite, not {value}")
    numerator, denominator = value.as_integer_ratio()  # in lowest terms: exact, in C
    units, rest = divmod(numerator * ATTO, denominator)
    if rest:
        raise ValueError(f"{what} {value} has more than {PLACES} decimal places: the counters "
                         f"(and the ledger's NUMERIC(38, {PLACES})) cannot hold it exactly")
    return divmod(units, NANO)  # floor division: atto is never negative


def join_units(nano: int, atto: int) -> Decimal:
    """nano / 10**9 + atto / 10**18, exactly, without trailing fractional zeros."""
    units = nano * NANO + atto
    whole, fraction = divmod(abs(units), ATTO)
    sign = "-" if units < 0 else ""
    if not fraction:
        return Decimal(f"{sign}{whole}")
    return Decimal(f"{sign}{whole}.{str(fraction).rjust(PLACES, '0').rstrip('0')}")  # string: no context rounding


def bucket_name(event: UsageEvent) -> str:
    """The `by_model` key of `event`, as `PeriodTotals.add` computes it."""
    return event.model if event.metric == "tokens" and event.model else f"metric:{event.metric}"


def event_units(event: UsageEvent) -> list[int]:
    """One event's increments, in STATS order; validates everything before any write."""
    units = [1]
    for name in INT_STATS[1:]:
        value = getattr(event, name)
        if isinstance(value, bool):
            raise TypeError(f"event {event.id}: {name} must be an int, not bool")
        units.append(index(value))  # TypeError for a float: it would fail half-way in Redis
    for name in DECIMAL_STATS:
        units.extend(split_units(getattr(event, name), f"event {event.id}: {name}"))
    return units


def _accumulate(buckets: dict[str, list[int]], event: UsageEvent) -> None:
    units = event_units(event)
    total = buckets.get(bucket_name(event))
    if total is None:
        buckets[bucket_name(event)] = units
    else:
        for i, value in enumerate(units):
            total[i] += value


def _normalise(units: list[int]) -> list[int]:
    """Carry each atto sum (which may exceed 10**9 in a summed bucket) into its nano."""
    units = list(units)
    for d in range(len(DECIMAL_STATS)):
        n = len(INT_STATS) + 2 * d
        carry, units[n + 1] = divmod(units[n + 1], NANO)
        units[n] += carry
    return units


def _args(ttl: str, mode: str, buckets: Mapping[str, list[int]]) -> list[str]:
    args = [ttl, mode]
    for name, units in buckets.items():
        units = _normalise(units)
        for stat, value in zip(STATS, units):
            if not -_INT64 <= value < _INT64:  # checked here: Redis would refuse it half-way through a write
                raise ValueError(f"{stat} of {name!r} ({value}) is out of the counters' 64-bit range")
        args.append(name)
        args.extend(str(value) for value in units)
    return args


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _totals(units: list[int]) -> Totals:
    ints = units[: len(INT_STATS)]
    decimals = [join_units(units[i], units[i + 1]) for i in range(len(INT_STATS), len(STATS), 2)]
    return Totals(*ints, *decimals)


class RedisCounters:
    """The `Counters` of a fleet of proxies: every proxy writes and reads the same hashes.

    `record` is one atomic script call (one round trip); `totals` is one HGETALL. The client
    belongs to the caller, who closes it; it may use `decode_responses` or not.
    """

    def __init__(self, client: aioredis.Redis, *, prefix: str = "pw", key_ttl: float = KEY_TTL):
        if "{" in prefix or "}" in prefix:
            raise ValueError("the key prefix must not contain braces: the customer is the hash tag")
        self._client = client
        self._prefix = prefix
        self._key_ttl = str(max(1, int(key_ttl)))
        self._write = client.register_script(_WRITE)
        self._claim = client.register_script(_CLAIM)

    def key(self, customer: str, period: str) -> str:
        if "{" in customer or "}" in customer:
            raise ValueError(f"customer {customer!r} must not contain braces: it is the hash tag")
        return f"{self._prefix}:{{{customer}}}:totals:{period}"

    async def record(self, event: UsageEvent) -> None:
        """Add `event` to its (customer, period): one atomic script, one round trip.

        Not idempotent: recording the same event twice counts it twice (the ledger is the
        idempotent store; counters are rebuilt from it). ValueError/TypeError, with nothing
        written, for an amount with more than 18 decimal places or a non-integer token count.
        """
        units = event_units(event)
        await self._write(keys=[self.key(event.customer, event.period)],
                          args=_args(self._key_ttl, "add", {bucket_name(event): units}))

    async def totals(self, customer: str, period: str) -> PeriodTotals:
        """The (customer, period) as every proxy sees it: one HGETALL."""
        raw = await self._client.hgetall(self.key(customer, period))
        positions = {name: i for i, name in enumerate(STATS)}
        buckets: dict[str, list[int]] = {}
        for field, value in raw.items():
            stat, sep, bucket = _text(field).partition(":")
            i = positions.get(stat)
            if not sep or i is None:
                continue  # not ours (a later version's field): ignore rather than fail the summary
            buckets.setdefault(bucket, [0] * len(STATS))[i] += int(value)
        result = PeriodTotals()
        grand = [0] * len(STATS)
        for bucket in sorted(buckets):
            units = buckets[bucket]
            result.by_model[bucket] = _totals(units)
            grand = [a + b for a, b in zip(grand, units)]
        if buckets:
            result.all = _totals(grand)
        return result

    async def rebuild(self, events: Iterable[UsageEvent]) -> None:
        events = list(events)
        await self.set_positions(events, overwrite=False)
        await self._fill(events)

    async def _fill(self, events: Iterable[UsageEvent]) -> None:
        """Fill, from the ledger's open-period `events`, every (customer, period) that Redis lacks.

        Unlike `MemoryCounters.rebuild`, this never wipes or rewrites a hash that exists: other
        live proxies write to it, and it holds events the ledger may not have yet (each proxy
        writes its ledger in batches). A (customer, period) is written only if its hash does not
        exist (Redis lost its data, or was never used), checked and written in one script so a
        concurrent `record` cannot be lost. All events are validated before anything is written.

        NOTE: if Redis lost its data while proxies kept running, their `record`s recreate the
        hash with only the events after the loss, and `rebuild` then skips it: resync such a
        (customer, period) with `replace` once the outage is over.
        """
        grouped: dict[tuple[str, str], dict[str, list[int]]] = {}
        for event in events:
            _accumulate(grouped.setdefault((event.customer, event.period), {}), event)
        items = [(self.key(customer, period), buckets) for (customer, period), buckets in grouped.items()]
        for start in range(0, len(items), _PIPELINE_CHUNK):
            async with self._client.pipeline(transaction=False) as pipe:
                for key, buckets in items[start:start + _PIPELINE_CHUNK]:
                    await self._write(keys=[key], args=_args(self._key_ttl, "fill", buckets), client=pipe)
                await pipe.execute()

    async def replace(self, customer: str, period: str, events: Iterable[UsageEvent]) -> None:
        """Overwrite one (customer, period) with the sum of `events`, atomically (one script).

        For an explicit resync after an outage. `events` should be all of the period's events
        (events of another customer or period raise ValueError); with none, the hash is deleted.
        NOTE: events recorded by any proxy but not yet in the ledger when `events` was read are
        dropped from the counters by this overwrite (the ledger still bills them): flush the
        proxies' ledger queues first, or accept a short under-count until the next resync.
        """
        events = list(events)
        await self.set_positions(events, overwrite=True)
        buckets: dict[str, list[int]] = {}
        for event in events:
            if (event.customer, event.period) != (customer, period):
                raise ValueError(f"event {event.id} is of ({event.customer!r}, {event.period!r}), "
                                 f"not ({customer!r}, {period!r})")
            _accumulate(buckets, event)
        await self._write(keys=[self.key(customer, period)], args=_args(self._key_ttl, "replace", buckets))

    def position_key(self, customer: str, period: str) -> str:
        return self.key(customer, period).replace(":totals:", ":positions:", 1)

    async def claim(self, customer: str, period: str, metric: str, quantity: Decimal) -> Decimal:
        """One script: the units after this claim, less this claim, is where it started. Claims
        issued together go out in one round trip and take their positions in the order issued."""
        units = int(quantity * POSITION_SCALE)
        after = await self._claim(keys=[self.position_key(customer, period)],
                                  args=[metric, units, self._key_ttl])
        return Decimal(int(after) - units) / POSITION_SCALE

    async def set_positions(self, events: Iterable[UsageEvent], *, overwrite: bool) -> None:
        """Positions from the ledger's events: fill what is missing, or overwrite after an outage."""
        async with self._client.pipeline(transaction=False) as pipe:
            for (customer, period, metric), used in positions_of(events).items():
                key, units = self.position_key(customer, period), int(used * POSITION_SCALE)
                (pipe.hset if overwrite else pipe.hsetnx)(key, metric, units)
                pipe.expire(key, int(self._key_ttl))
            await pipe.execute()

    async def close(self) -> None:
        """Nothing to close: the Redis client belongs to the caller."""


__all__ = ["KEY_TTL", "STATS", "RedisCounters", "join_units", "split_units"]
