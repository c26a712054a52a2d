"""Owned objects announced in Redis, for proxies that share a ledger: every proxy finds a response
the moment its call ends, not when the owner's next batch reaches the ledger.

Why: a client may continue a response (`previous_response_id`) on any proxy as soon as it has
it. Before this, the owner wrote its batch within 10 ms of each Responses call (a commit and an
`fsync` every time, ~8 % of such a call's CPU), and a proxy that did not find an id looked for
it again for ~0.8 s (six ledger reads) before its 404, in case another proxy's batch was on its
way: anyone could make it do that with made-up ids.

Now the owner sets `{prefix}:{{customer}}:owned:{id}` in the round trip that settles the call
(so before the client has the answer), and deletes it once its batch is in the ledger. A lookup
asks Redis first, then the ledger: a key deleted only after the ledger's commit cannot be
missed by both. A key expires after `TTL` if its owner died before writing its batch (its
journal puts the event in the ledger when it starts again).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable
from typing import TYPE_CHECKING

import orjson

from metering.store.bounds import is_clean
from metering.store.owned import WIDTH, Owned

if TYPE_CHECKING:
    import redis.asyncio as aioredis

TTL = 600  # seconds: well past any batch; a ledger behind by more answers for itself later
_CHUNK = 1000  # keys per DEL (Lua's unpack takes a few thousand at most)

# Scripts rather than plain commands: they join the round trip of the call's other scripts
# (`metering.limits.redis_batch`).
_ANNOUNCE = "redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2]) return 1"
_LOOKUP = "return redis.call('GET', KEYS[1])"
_WITHDRAW = "return redis.call('DEL', unpack(KEYS))"


class AnnouncedOwners:
    """The owned objects of every proxy on one Redis that their ledger batches do not hold yet.
    The client belongs to the caller, who closes it."""

    def __init__(self, client: aioredis.Redis, *, prefix: str = "pw"):
        if "{" in prefix or "}" in prefix:
            raise ValueError("the key prefix must not contain braces: the customer is the hash tag")
        self._prefix = prefix
        self._announce = client.register_script(_ANNOUNCE)
        self._lookup = client.register_script(_LOOKUP)
        self._withdraw = client.register_script(_WITHDRAW)
        from redis.exceptions import NoScriptError  # NOTE: here: redis-py is loaded with a Redis client only
        self._no_script = NoScriptError

    def key(self, customer: str, object_id: str) -> str:
        if "{" in customer or "}" in customer:
            raise ValueError(f"customer {customer!r} must not contain braces: it is the hash tag")
        return f"{self._prefix}:{{{customer}}}:owned:{object_id}"

    def announce(self, owned: Owned) -> Awaitable:
        """Set `owned` now, in this turn's batch (one coroutine can issue it beside its own
        scripts without a task); await the result. On a client that does not batch: a task."""
        keys, args = self._set(owned)
        soon = getattr(self._announce, "soon", None)
        if soon is None:
            return asyncio.ensure_future(self._announce(keys=keys, args=args))
        return soon(keys, args)

    async def announced(self, announcing: Awaitable, owned: Owned) -> None:
        """Wait for an `announce`; one whose script Redis lost (restarted) is made again."""
        try:
            await announcing
        except self._no_script:
            keys, args = self._set(owned)
            await self._announce(keys=keys, args=args)

    def _set(self, owned: Owned) -> tuple[list, list]:
        return [self.key(owned.customer, owned.id)], [orjson.dumps(list(owned)), TTL]

    async def lookup(self, customer: str, object_id: str) -> Owned | None:
        """`customer`'s object `object_id`, if announced and not yet in the ledger (else None:
        ask the ledger). Another customer's object is never found here."""
        if not (len(object_id) <= WIDTH and is_clean(object_id)):  # never owned (`owned_by`): nothing to ask
            return None
        raw = await self._lookup(keys=[self.key(customer, object_id)])
        if raw is None:
            return None
        try:
            owned = Owned(*orjson.loads(raw))
        except (orjson.JSONDecodeError, TypeError):  # not a value this module wrote: the ledger decides
            return None
        return owned if owned.customer == customer and owned.id == object_id else None

    async def withdraw(self, owned: Iterable[Owned]) -> None:
        """Forget announced objects (their batch is in the ledger): one script per customer, all
        in one round trip."""
        keys: dict[str, list[str]] = {}
        for item in owned:
            keys.setdefault(item.customer, []).append(self.key(item.customer, item.id))
        calls = [self._withdraw(keys=chunk[i:i + _CHUNK]) for chunk in keys.values()
                 for i in range(0, len(chunk), _CHUNK)]
        await asyncio.gather(*calls)  # issued together: one round trip
