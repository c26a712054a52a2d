"""Scripts sent to Redis together: EVALSHAs issued at once (within two turns of the event loop)
share a round trip.

Why: a capped, rate-limited call runs several scripts (the rate limit and the reservation before
it goes upstream; the counters, the settlement and the token adjustment after it). A round trip
each is a write, a wake-up and a read apiece, 100 µs and more of this process's CPU. Issued together
(`asyncio.gather`) they go out as one pipeline; under load the scripts of concurrent calls
share one too.

Each script still runs alone on the server, as before; nothing was ever atomic *across* two
scripts, and nothing is across a batch. A script's error (NOSCRIPT after a Redis restart, a
refused argument) is that script's answer only; a connection error is every script's answer,
as each would have met it on its own.
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis

_Pending = tuple[asyncio.Future, tuple[Any, ...]]


class BatchingRedis(aioredis.Redis):
    """A `redis.asyncio.Redis` whose `evalsha` (so every registered script's call) is batched."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._waiting: list[_Pending] = []
        self._sending: set[asyncio.Task] = set()  # NOTE: the loop keeps only weak references to tasks
        self.round_trips = 0  # batches sent: what the bench and the tests count

    async def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Any:  # type: ignore[override]
        loop = asyncio.get_running_loop()
        answer = loop.create_future()
        self._waiting.append((answer, ("EVALSHA", sha, numkeys, *keys_and_args)))
        if len(self._waiting) == 1:
            loop.call_soon(loop.call_soon, self._send)  # NOTE: two turns, see `_send`
        return await answer

    def _send(self) -> None:
        """Send what was issued during the last two turns of the loop: the tasks ready in the
        first, and the tasks those started (a gather within a gather) in the second."""
        batch, self._waiting = self._waiting, []
        task = asyncio.get_running_loop().create_task(self._run(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _run(self, batch: list[_Pending]) -> None:
        self.round_trips += 1
        try:
            if len(batch) == 1:
                replies = [await _reply(self.execute_command(*batch[0][1]))]
            else:
                async with self.pipeline(transaction=False) as pipe:
                    for _, command in batch:
                        pipe.execute_command(*command)
                    replies = await pipe.execute(raise_on_error=False)
        except BaseException as exc:  # the connection failed (or we are shutting down): everyone's answer
            for answer, _ in batch:
                if not answer.done():
                    answer.set_exception(exc if isinstance(exc, Exception) else ConnectionError("cancelled"))
            if not isinstance(exc, Exception):
                raise
            return
        for (answer, _), reply in zip(batch, replies):
            if answer.done():  # its caller was cancelled meanwhile
                continue
            if isinstance(reply, Exception):
                answer.set_exception(reply)
            else:
                answer.set_result(reply)


async def _reply(awaitable) -> Any:
    """One command's reply, or its error as a value (as the pipeline gives them)."""
    try:
        return await awaitable
    except aioredis.ResponseError as exc:
        return exc


__all__ = ["BatchingRedis"]
