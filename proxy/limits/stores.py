"""The admission gate's resources: budget and rate-limit stores, the ledger behind them, renewals.

In this process (memory) or in Redis shared by many proxies. The budget learns a period's
spend from the ledger when it first needs it (`ledger_spends`); holds of calls in flight are
renewed while they run; customers' own caps are re-read from the shared ledger.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import datetime

from aiohttp import web

from metering.limits.budget import MAX_UNITS, MemoryBudget, RedisBudget, Spend, to_units
from metering.limits.ratelimit import MemoryRateLimiter, RedisRateLimiter
from metering.limits.redis_counters import RedisCounters
from metering.store.credits import CreditStore
from metering.store.events import UsageEvent, utcnow
from metering.usage.tokens import encoding_for
from metering.webhooks import MemoryDedupe, Notifier, RedisDedupe
from metering.limits.outages import store_down
from proxy.limits.admission import Gate
from proxy.appkeys import GATE, HTTP, LIVE, METER, RECORDER, REDIS
from proxy.limits.credits import CREDITS, CreditBook
from proxy.errors import ServiceUnavailable

log = logging.getLogger("payware.limits")

CAPS_REFRESH = 2.0  # seconds: how soon a cap a customer set on another proxy applies here


async def admission_ctx(app: web.Application) -> AsyncIterator[None]:
    """Budget, rate limits and webhooks for the life of the app."""
    config = app[LIVE].config
    storage = config.storage
    client = app[REDIS]
    if client is None:
        budget, limiter, dedupe = MemoryBudget(), MemoryRateLimiter(), MemoryDedupe()
    else:
        budget, limiter, dedupe = RedisBudget(client), RedisRateLimiter(client), RedisDedupe(client)
    notifier = Notifier(session=app[HTTP], config=config.webhooks, dedupe=dedupe) if config.webhooks else None
    recorder = app[RECORDER]

    async def resync() -> None:
        await resync_totals(app)

    gate = Gate(budget=budget, limiter=limiter, source=ledger_spends(app), shared=client is not None,
                reservation_ttl=storage.hold_ttl, notifier=notifier, on_recovery=resync,
                fail_open=storage.on_counter_failure == "fail_open")
    gate.budget.on_loss = lambda customer, period: (resync_totals(app, only=(customer, period))
                                                    if period != CREDITS else asyncio.sleep(0))
    gate.credits = CreditBook(store=CreditStore(recorder.ledger.engine),
                              events=lambda cid, since, until: customer_events(app, cid, since=since, until=until))
    gate.plans = config.plans

    rebuilds: set[asyncio.Task] = set()  # periods merged again for a cap a reload gave

    def reconfigured(changed) -> None:  # a reload, a grant or a customer made on any proxy
        gate.plans = changed.plans
        gate.credits.invalidate()
        for customer in gate.newly_capped(changed.customers):
            _spawn(rebuild_for_new_cap(app, customer), rebuilds)
    gate.customers = config.customers
    app[LIVE].on_change.append(reconfigured)
    recorder.on_counters_back = resync  # the counters may fail alone (an uncapped customer's calls)
    gate.customer_caps = await asyncio.get_running_loop().run_in_executor(None, recorder.ledger.customer_caps)
    app[GATE] = gate
    if counts_tokens(config):  # the tokenizers admission needs (~0.3 s, ~50 MiB), before serving
        await asyncio.get_running_loop().run_in_executor(None, load_tokenizers, config)
    app[LIVE].on_change.append(lambda changed: counts_tokens(changed) and gate.preload(
        lambda: load_tokenizers(changed)))
    tasks = [asyncio.create_task(_refresh_customer_caps(app), name="customer-caps"),
             asyncio.create_task(gate.run(), name="hold-renewals")]
    yield
    for task in [*tasks, *rebuilds]:
        task.cancel()
    await asyncio.gather(*tasks, *rebuilds, return_exceptions=True)
    if notifier is not None:
        await notifier.close()
    await budget.close()


async def rebuild_for_new_cap(app: web.Application, customer, *, attempts: int = 8) -> None:
    """A reload or a directory change gave `customer` a cap it did not have: its calls since its
    period's last cap (or ever) were not spent against the budget, so the period is merged from
    the ledger, or rebuilt if the store knew it (`Reservations.cap_applies`). Every proxy that
    sees the change does it (a file reload has no one proxy it happens on); each is idempotent
    by event id. Its capped calls wait for the merge (`Gate.first_cap`). Retried while the store
    is unreachable: until it is done, the cap counts only the calls since it applied."""
    gate, delay = app[GATE], 0.5
    for _ in range(attempts):
        if not gate.capped(gate.customers.get(customer.id, customer)):
            return  # the cap went away again meanwhile
        try:
            with gate.first_cap([customer.id]):  # NOTE: its reserves wait for the merge, its settles count by id
                await gate.budget.cap_applies(customer.id, app[METER].period(customer, utcnow()).key)
            return
        except store_down() as exc:
            log.warning("could not rebuild %s's spend for its new cap (%s): retrying in %.1f s",
                        customer.id, type(exc).__name__, delay)
        except Exception:
            log.exception("could not rebuild %s's spend for its new cap", customer.id)
            return
        await asyncio.sleep(delay)
        delay = min(delay * 2, 10.0)
    log.error("gave up rebuilding %s's spend for its new cap: its cap counts the calls since it applied only",
              customer.id)


def _spawn(coro, tasks: set[asyncio.Task]) -> None:
    task = asyncio.get_running_loop().create_task(coro)
    tasks.add(task)
    task.add_done_callback(tasks.discard)


def counts_tokens(config) -> bool:
    """Whether admission counts prompts: some customer has a cap or a TPM limit."""
    return any(c.cap is not None or c.key_caps or (c.rate_limit is not None and c.rate_limit.tpm)
               for c in config.customers.values())


def load_tokenizers(config) -> None:
    for model in config.models.values():
        encoding_for(model.upstream)


def spend_of(event: UsageEvent, key_caps: dict) -> Spend:
    """What an event spent against the caps: its amount in nano-USD (rounded up, as settlement
    rounds it), on the customer and, when that key has a cap, on its key."""
    units = max(-MAX_UNITS, min(to_units(event.amount), MAX_UNITS))
    scopes = ("customer", f"key:{event.key_id}") if event.key_id in key_caps else ("customer",)
    return Spend(event.id, units, scopes)


def ledger_spends(app: web.Application):
    """The budget's source: every event of a customer's period that this proxy knows of (for the
    credits "period", every event since the customer's first grant)."""

    async def source(customer_id: str, period: str, since: datetime | None = None) -> list[Spend]:
        if period == CREDITS:
            first = (await app[GATE].credits.state(customer_id)).first
            if first is None:
                return []
            events = await customer_events(app, customer_id, since=first if since is None else max(first, since))
            return [Spend(e.id, max(-MAX_UNITS, min(to_units(e.amount), MAX_UNITS)), ("credits",)) for e in events]
        events = await customer_events(app, customer_id, period=period, since=since)
        customer = app[LIVE].config.customers.get(customer_id)
        key_caps = customer.key_caps if customer is not None else {}
        return [spend_of(event, key_caps) for event in events]

    return source


async def customer_events(app: web.Application, customer_id: str, *, period: str | None = None,
                          since=None, until=None) -> list[UsageEvent]:
    """A customer's events of a period, or in [since, until): the ledger's after a flush, and
    the ones still queued here."""
    recorder = app[RECORDER]
    try:
        async with asyncio.timeout(5):
            await recorder.flush()
        events = await asyncio.get_running_loop().run_in_executor(
            None, lambda: list(recorder.ledger.events(customer=customer_id, period=period, start=since, end=until)))
    except Exception as exc:
        log.error("could not read %s's events from the ledger: %s", customer_id, type(exc).__name__)
        raise ServiceUnavailable("The ledger is unavailable, so this customer's spend cannot be checked; "
                                 "the request was not forwarded. Retry shortly.",
                                 headers={"Retry-After": "1"}) from None
    seen = {event.id for event in events}
    events += [e for e in recorder.queued() if e.customer == customer_id and e.id not in seen
               and (period is None or e.period == period) and (since is None or e.ts >= since)
               and (until is None or e.ts < until)]
    return events


async def resync_totals(app: web.Application, only: tuple[str, str] | None = None) -> None:
    """Set the real-time totals in Redis from the ledger: after an outage, every open period;
    after a loss the budget noticed, `only` that (customer, period).

    It never fails the request that noticed the store is back: a failed resync is retried by
    the next one.
    """
    recorder = app[RECORDER]
    counters = recorder.counters
    try:
        await recorder.flush()
        open_periods, since = app[METER].open_periods(utcnow())
        if only is not None:
            open_periods = {only[0]: only[1]}
        events = await asyncio.get_running_loop().run_in_executor(None, recorder.open_events, open_periods, since)
        by_period: dict[tuple[str, str], list] = {}
        for event in events:
            by_period.setdefault((event.customer, event.period), []).append(event)
        if isinstance(counters, RedisCounters):
            for customer, period in open_periods.items():
                await counters.replace(customer, period, by_period.get((customer, period), []))
    except Exception:
        log.exception("resync from the ledger failed; the next call retries it")
        recorder.counters_stale = True
        return
    recorder.counters_stale = False
    log.warning("real-time totals resynced from the ledger (%d events)", len(events))


async def _refresh_customer_caps(app: web.Application) -> None:
    """Customers' own caps live in the shared ledger; other proxies' changes arrive here.

    A customer who had no cap at all and now has one was never reserved against here: the
    proxy where the cap was set rebuilt its period from the ledger; this one merges the events
    of the last half of the budget's applied-id window (by event id) that the rebuild may have
    missed.
    """
    gate, ledger = app[GATE], app[RECORDER].ledger
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(CAPS_REFRESH)
        version = gate.caps_version
        try:
            caps = await loop.run_in_executor(None, ledger.customer_caps)
        except Exception as exc:  # the ledger may be briefly unreachable: keep the last known caps
            log.warning("could not refresh customers' caps: %s", type(exc).__name__)
            continue
        if version != gate.caps_version:  # a cap set here during the read is newer than the read
            continue
        config, now = app[LIVE].config, utcnow()
        newly = [config.customers[c] for c in caps.keys() - gate.customer_caps.keys()
                 if c in config.customers and not gate.capped(config.customers[c])]
        with gate.first_cap(c.id for c in newly):
            for customer in newly:
                try:
                    await gate.budget.merge_recent(customer.id, app[METER].period(customer, now).key)
                except Exception as exc:
                    log.warning("could not merge %s's spend for its new cap: %s", customer.id, type(exc).__name__)
            gate.customer_caps = caps
