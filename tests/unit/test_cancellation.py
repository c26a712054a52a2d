"""Background loops stop when cancelled, whenever the cancellation lands.

Python 3.11's `asyncio.wait_for` returns the inner result when a cancellation arrives as the
inner wait completes: the cancellation is lost, and a loop built on it runs on, so a shutdown
that cancels and awaits it hangs. Payware's loops wait with `asyncio.timeout` instead.
"""

from __future__ import annotations

import asyncio

from proxy.live import follow


class _PubSub:
    """A Redis pub/sub that delivers a directory message each time `trigger` is set."""

    def __init__(self, trigger: asyncio.Event):
        self.trigger = trigger

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        return False

    async def subscribe(self, channel: str) -> None:
        pass

    async def listen(self):
        while True:
            await self.trigger.wait()
            self.trigger.clear()
            yield {"type": "message", "data": b"changed"}


class _Redis:
    def __init__(self, trigger: asyncio.Event):
        self.trigger = trigger

    def pubsub(self) -> _PubSub:
        return _PubSub(self.trigger)


class _Live:
    store = None  # no database to listen to

    def __init__(self) -> None:
        self.reads = 0

    async def refresh(self) -> bool:
        self.reads += 1
        return False


async def test_the_directory_follower_stops_when_cancelled_as_a_message_wakes_it():
    for turns in range(8):  # a cancellation landing 0..7 loop turns after the message
        trigger, live = asyncio.Event(), _Live()
        task = asyncio.create_task(follow(live, _Redis(trigger)))
        for _ in range(3):
            await asyncio.sleep(0)  # subscribed and waiting
        trigger.set()
        for _ in range(turns):
            await asyncio.sleep(0)
        task.cancel()
        for _ in range(20):
            await asyncio.sleep(0)
        stopped = task.done()
        if not stopped:
            task.cancel()  # the second cancellation lands: clean up
            await asyncio.gather(task, return_exceptions=True)
        assert stopped, f"the follower ran on after a cancellation {turns} turns after a message"
        assert task.cancelled()
