"""Threshold periods shared by many proxies: which period is open, agreed in Redis.

A proxy that sees a period reach its threshold closes it with a compare-and-set: it names the
period it saw open and the start of the next one; if another proxy closed it first, it gets
that proxy's choice instead. Proxies also poll the open period, so one that had not seen the
close starts admitting into the new period within a second (`REFRESH`). An event admitted in
the old period just before that stays in it: every event is still in exactly one period.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import redis.asyncio as aioredis

REFRESH = 1.0  # seconds between two polls of the open period
KEY_TTL = 40 * 24 * 3600  # longer than any month the key lives in

# KEYS[1] the month's key; ARGV: period seen open, start of the next, month start, TTL
_CLOSE = """
local current = redis.call('GET', KEYS[1])
if (not current and ARGV[1] == ARGV[3]) or current == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[4])
  return ARGV[2]
end
return current or ARGV[3]
"""


class RedisThresholds:
    """The open threshold period of each customer, per month, in Redis."""

    def __init__(self, client: aioredis.Redis, *, prefix: str = "pw"):
        self._client = client
        self._prefix = prefix
        self._close = client.register_script(_CLOSE)

    def _key(self, customer: str, month: str) -> str:
        return f"{self._prefix}:{{{customer}}}:threshold:{month}"

    async def close(self, *, customer: str, month: str, seen_open: str, next_start: str) -> str:
        """Close `seen_open` (if it still is the open period); returns the open period's key."""
        result = await self._close(keys=[self._key(customer, month)],
                                   args=[seen_open, next_start, month, KEY_TTL])
        return result.decode() if isinstance(result, bytes) else result

    async def open_period(self, *, customer: str, month: str) -> str | None:
        """The open period's key, or None while the month's first period is open."""
        value = await self._client.get(self._key(customer, month))
        return value.decode() if isinstance(value, bytes) else value
