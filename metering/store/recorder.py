"""The write path of every event: journal (durable) -> counters (real time) -> ledger (batched).

`record` is called before the response's last byte is sent; when it returns the event is in
the journal (it survives `kill -9`) and in the counters (the summary shows it). A background
task moves events into the ledger in batches; on start the journal is replayed into the
ledger, idempotently, and the counters are rebuilt from the ledger for the open periods.

An event that makes its customer the owner of a provider object (a Responses call's response:
`metering.store.owned`) is answered for here until its batch is written (`owner`). When other
proxies share the ledger (`shared_ledger`), they learn of it at once from Redis (`owners`,
`metering.store.owned_redis`: announced in the call's own round trip, withdrawn once the batch
is in the ledger); if Redis does not take it, the batch goes out within `OWNED_FLUSH` rather
than the flush interval, so they find it in the ledger that soon. A proxy alone waits for the
next batch (a commit and an `fsync` every 10 ms cost a Responses call ~10 % more CPU).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

from metering.limits.outages import counters_down
from metering.limits.counters import Counters
from metering.store.bounds import bounded
from metering.store.events import UsageEvent, utcnow
from metering.store.journal import Journal
from metering.store.ledger import Ledger
from metering.store.owned import Owned, owned_by
from metering.store.owned_redis import AnnouncedOwners

log = logging.getLogger("payware.recorder")

ROTATE_BYTES = 16 * 1024 * 1024  # empty the journal once the ledger holds it all and it is this big
BEHIND = 5.0  # seconds: an event waiting longer than this for the ledger is worth a warning
OWNED_FLUSH = 0.01  # seconds: at most this long between an owned object's event and its batch


class Recorder:
    def __init__(self, *, journal: Journal, counters: Counters, ledger: Ledger,
                 flush_interval: float = 0.2, flush_batch: int = 500, shared_ledger: bool = False,
                 owners: AnnouncedOwners | None = None):
        self.journal = journal
        self.counters = counters
        self.ledger = ledger
        self.flush_interval = flush_interval
        self.flush_batch = flush_batch
        self._queue: list[UsageEvent] = []
        self._wake = asyncio.Event()
        self._flushed = asyncio.Condition()
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger")  # one writer keeps order
        self._task: asyncio.Task | None = None
        self._written = 0  # events the ledger has confirmed since start (new or already there)
        self._queued = 0
        self.counters_stale = False  # a counters write failed: resync them from the ledger
        self.counter_errors = 0  # counters writes that failed since start (shown by /metrics)
        self.on_counters_back: Callable[[], Awaitable[None]] | None = None  # the resync, set by the app
        self.recovered = 0  # events the journal held that the ledger did not, at start
        self._closing = False  # the flush loop ends on this flag, not by cancellation, so it drains first
        self.dead_letters: dict[str, int] = {}  # customer -> events the ledger kept aside (evidence)
        self._warned_behind = float("-inf")  # monotonic time of the last "ledger behind" warning
        self._owning: dict[str, Owned] = {}  # objects owned by queued events, until their batch is written
        self._owned_events: dict[str, Owned] = {}  # queued event id -> the object it owns (the same, by event)
        self.shared_ledger = shared_ledger  # other proxies look owned objects up in the ledger
        self._owned_flush: asyncio.TimerHandle | None = None
        self.owners = owners  # where the other proxies sharing the ledger learn of owned objects at once
        self._announcing: dict[str, Owned] = {}  # event id -> the object it owns, announced by `count`
        self._withdrawing: set[asyncio.Task] = set()  # NOTE: the loop keeps only weak references to tasks

    async def start(self, open_periods: Callable[[], tuple[dict[str, str], datetime]]) -> list[UsageEvent]:
        """Replay the journal into the ledger, rebuild counters, start the flusher.

        `open_periods`, called once the ledger is complete, gives each customer's open period
        key and the earliest start among them. Returns the events of the open periods (to
        rebuild other projections).
        """
        loop = asyncio.get_running_loop()
        self.dead_letters = await loop.run_in_executor(self._writer, self.ledger.dead_letter_counts)
        recovered = await loop.run_in_executor(self._writer, self._replay)
        events = await loop.run_in_executor(None, lambda: self.open_events(*open_periods()))
        await self.counters.rebuild(events)
        self._task = asyncio.create_task(self._flush_loop(), name="ledger-flush")
        self.recovered = recovered
        return events

    def queued(self) -> list[UsageEvent]:
        """Events recorded here and not yet confirmed by the ledger."""
        return list(self._queue)

    def open_events(self, open_periods: dict[str, str], since: datetime) -> list[UsageEvent]:
        """The ledger's events of each customer's open period (blocking: run it in a thread)."""
        return [e for e in self.ledger.events(start=since) if open_periods.get(e.customer) == e.period]

    def _replay(self) -> int:
        recovered, kept = replay(self.journal, self.ledger, self.flush_batch)
        self._kept_aside(kept)
        return recovered

    async def record(self, event: UsageEvent) -> None:
        """Make `event` durable and visible. Call before the response's last byte."""
        self.keep(event)
        await self.count(event)

    def keep(self, event: UsageEvent) -> None:
        """Make `event` durable: the journal now, the ledger with the next batch."""
        self.journal.append(bounded(event))  # NOTE: first, so a crash after this line cannot lose it
        self._queue.append(event)
        self._queued += 1
        if len(self._queue) >= self.flush_batch:
            self._wake.set()
        elif len(self._queue) == 1 and self._task is not None:  # NOTE: the flusher sleeps while nothing is
            self._task.get_loop().call_later(self.flush_interval, self._wake.set)  # queued: wake it in time
        owned = owned_by(event)
        if owned is not None:
            self._owning.setdefault(owned.id, owned)  # NOTE: the first owner stands, as in the ledger
            self._owned_events[event.id] = owned
            if self.shared_ledger:
                if self.owners is not None:
                    self._announcing[event.id] = owned
                else:
                    self._flush_owned_soon()

    def _flush_owned_soon(self) -> None:
        """Have the next batch written within OWNED_FLUSH (other proxies look the object up there)."""
        if self._owned_flush is None:
            self._owned_flush = asyncio.get_running_loop().call_later(OWNED_FLUSH, self._wake.set)

    def owner(self, object_id: str) -> Owned | None:
        """The ownership a queued event holds for `object_id` (None: ask the ledger)."""
        return self._owning.get(object_id)

    async def count(self, event: UsageEvent) -> None:
        """Make a kept `event` visible in the real-time totals (the ledger has it whatever happens),
        and the object it owns to every proxy."""
        owned = self._announcing.pop(event.id, None)
        if owned is None:
            await self._count(event)
            return
        # NOTE: announced before the answer's last byte, so no proxy can miss it; in the round
        # trip of the call's counters and settlement (issued first, awaited after them)
        announced = self.owners.announce(owned)
        try:
            await self._count(event)
        finally:
            await self._announced(announced, owned)

    async def _announced(self, announced: Awaitable, owned: Owned) -> None:
        try:
            await self.owners.announced(announced, owned)
        except counters_down() as exc:  # the ledger then, as soon as it can be written
            log.warning("owned %s %s not announced (%s): its batch goes out now", owned.kind, owned.id,
                        type(exc).__name__)
            self._flush_owned_soon()

    async def _count(self, event: UsageEvent) -> None:
        try:
            await self.counters.record(event)
        except counters_down() as exc:  # the ledger still gets it; the counters are resynced from it
            log.warning("counters unreachable (%s): event %s is in the ledger, counters resync later",
                        type(exc).__name__, event.id)
            self.counters_stale = True
            self.counter_errors += 1
            return
        if self.counters_stale and self.on_counters_back is not None:
            self.counters_stale = False  # first, so concurrent records do not resync again
            await self.on_counters_back()

    async def flush(self) -> None:
        """Wait until every event recorded so far is in the ledger."""
        target = self._queued
        self._wake.set()
        async with self._flushed:
            await self._flushed.wait_for(lambda: self._written >= target or self._task is None or self._task.done())

    async def _flush_loop(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = self.flush_interval
        while not self._closing:
            try:
                # NOTE: nothing queued, no retry due: no timer (an idle proxy wakes for nothing);
                # `keep` wakes it a flush interval after a batch's first event
                async with asyncio.timeout(backoff if self._queue else None):
                    await self._wake.wait()
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            if self._owned_flush is not None:
                self._owned_flush.cancel()
                self._owned_flush = None  # the next owned event asks for a batch of its own
            if not self._queue:
                continue
            batch = self._queue[: self.flush_batch]
            try:
                await loop.run_in_executor(self._writer, self._write, batch)
            except Exception:  # the journal still holds them: log, back off, retry
                log.exception("ledger write of %d events failed; retrying", len(batch))
                backoff = min(backoff * 2, 10.0)
                continue
            backoff = self.flush_interval
            del self._queue[: len(batch)]
            self._written += len(batch)
            if self._owned_events:  # (every announced event is among them)
                self._forget_owned(batch)
            self.warn_if_behind()
            if len(self._queue) >= self.flush_batch:
                self._wake.set()  # a full batch is waiting; otherwise the next one waits its interval
            elif not self._queue and self.journal.size() > ROTATE_BYTES:
                # Nothing is queued and no await happened since the check: the ledger holds
                # every event the journal holds.
                self.journal.truncate()
            async with self._flushed:
                self._flushed.notify_all()

    def _forget_owned(self, written: list[UsageEvent]) -> None:
        """The ledger holds the objects `written` made owned: it answers for them now."""
        announced = []
        for event in written:
            self._announcing.pop(event.id, None)  # a call cancelled between keep and count
            owned = self._owned_events.pop(event.id, None)
            if owned is not None and self._owning.get(owned.id) == owned:
                del self._owning[owned.id]
                announced.append(owned)
        if announced and self.owners is not None and self.shared_ledger:
            task = asyncio.get_running_loop().create_task(self._withdraw(announced))
            self._withdrawing.add(task)
            task.add_done_callback(self._withdrawing.discard)

    async def _withdraw(self, owned: list[Owned]) -> None:
        try:
            await self.owners.withdraw(owned)
        except counters_down() as exc:  # they expire on their own (owned_redis.TTL)
            log.info("%d announced objects not withdrawn (%s); they expire", len(owned), type(exc).__name__)

    def lag(self) -> float:
        """Seconds the oldest event not yet in the ledger has waited (0 when none waits)."""
        return max((utcnow() - min(e.ts for e in self._queue)).total_seconds(), 0.0) if self._queue else 0.0

    def warn_if_behind(self) -> None:
        """Say so (once a minute at most) when the ledger falls behind: what waits for it is held
        in memory, and reads that flush first (summaries, statements, cap seeding) wait too."""
        lag = self.lag()
        now = time.monotonic()
        if lag > BEHIND and now - self._warned_behind >= 60.0:
            self._warned_behind = now
            log.warning("the ledger is %.0f s behind: %d events wait for it (held in memory; "
                        "payware_journal_backlog_events)", lag, len(self._queue))

    def _write(self, batch: list[UsageEvent]) -> None:
        self.journal.sync()  # power-loss safety for what is about to be acknowledged
        self._kept_aside(self.ledger.write(batch))

    def _kept_aside(self, events: list[UsageEvent]) -> None:
        for event in events:
            self.dead_letters[event.customer] = self.dead_letters.get(event.customer, 0) + 1

    async def close(self) -> None:
        """Flush what is queued, then stop. Whatever is left stays in the journal."""
        if self._task is not None:
            try:
                async with asyncio.timeout(10):
                    await self.flush()
            except asyncio.TimeoutError:
                log.error("ledger flush timed out at shutdown; %d events stay in the journal", len(self._queue))
            self._closing = True
            self._wake.set()
            await self._task
            self._task = None
        if self._owned_flush is not None:
            self._owned_flush.cancel()
        if self._withdrawing:  # the last batches' announcements (else they expire)
            await asyncio.wait(self._withdrawing, timeout=2)
        self._writer.shutdown(wait=True)
        self.journal.close()


def replay(journal: Journal, ledger: Ledger, batch: int = 500) -> tuple[int, list[UsageEvent]]:
    """Write every event of `journal` into `ledger` (idempotent), then empty the journal.

    Returns (events the ledger did not have, events it kept aside). Raises only when the
    ledger is unreachable (the journal is then left as it is).
    """
    # NOTE: bounded again: a journal written by an older version may hold what the ledger refuses.
    events = [bounded(event) for event in journal.replay()]
    recovered, kept = 0, []
    for i in range(0, len(events), batch):
        chunk = events[i:i + batch]
        try:
            recovered += ledger.insert(chunk)
        except Exception:  # a row the ledger refuses: keep it aside, write the rest, start anyway
            if not ledger.reachable():
                raise
            kept += ledger.write(chunk)
    journal.sync()
    journal.truncate()
    if recovered:
        log.warning("replayed %d events from the journal %s into the ledger", recovered, journal.path)
    return recovered, kept
