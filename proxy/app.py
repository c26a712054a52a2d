"""The aiohttp application: routes, middlewares and the lifetime of shared resources."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime

from aiohttp import web

from config.schema import Config
from metering.limits.budget import MemoryBudget, RedisBudget, to_units
from metering.limits.counters import MemoryCounters
from metering.store.events import utcnow
from metering.store.journal import Journal
from metering.store.ledger import Ledger
from metering.billing.meter import Meter
from metering.limits.ratelimit import MemoryRateLimiter, RedisRateLimiter
from metering.store.recorder import Recorder
from metering.limits.redis_counters import RedisCounters
from metering.billing.thresholds import REFRESH as THRESHOLD_REFRESH
from metering.billing.thresholds import RedisThresholds
from metering.webhooks import MemoryDedupe, Notifier, RedisDedupe
from proxy.admission import STORE_DOWN, Gate
from proxy.appkeys import CONFIG, GATE, HTTP, KEYRING, METER, RECORDER, THRESHOLDS, UPSTREAMS
from proxy.auth import KeyRing
from proxy.routes.billing import get_cap, put_cap
from proxy.calls import endpoint_handler
from proxy.errors import error_middleware
from proxy.jsonbody import BODY_TIMEOUT
from proxy.routes.records import post_records
from proxy.routes.statements import closing_job, list_statements
from proxy.upstream import make_client_session
from proxy.routes.usage import usage_events, usage_summary

log = logging.getLogger("payware")

OPEN_EVENTS = web.AppKey("open_events", list)  # handed from the ledger start-up to the budget rebuild
REDIS = web.AppKey("redis", object)  # redis.asyncio.Redis, or None with in-process counters


@web.middleware
async def request_id_middleware(request: web.Request, handler) -> web.StreamResponse:
    # The request id is also the usage event's id: the key of exactly-once billing.
    request["request_id"] = "req_" + uuid.uuid4().hex
    return await handler(request)


def make_app(config: Config) -> web.Application:
    """Build the proxy for `config`; resources open on start-up and close on clean-up."""
    app = web.Application(middlewares=[request_id_middleware, error_middleware],
                          client_max_size=config.server.max_body_bytes)
    app[CONFIG] = config
    app[BODY_TIMEOUT] = config.server.body_timeout
    app[KEYRING] = KeyRing(config)
    app[METER] = Meter(config)
    app.cleanup_ctx.append(_upstreams)
    app.cleanup_ctx.append(_redis)
    app.cleanup_ctx.append(_recorder)
    app.cleanup_ctx.append(_admission)
    app.cleanup_ctx.append(closing_job)
    app.router.add_post("/v1/chat/completions", endpoint_handler("chat"))
    app.router.add_post("/v1/completions", endpoint_handler("completions"))
    app.router.add_post("/v1/embeddings", endpoint_handler("embeddings"))
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/usage/summary", usage_summary)
    app.router.add_get("/v1/usage/events", usage_events)
    app.router.add_post("/v1/usage/records", post_records)
    app.router.add_get("/v1/billing/cap", get_cap)
    app.router.add_put("/v1/billing/cap", put_cap)
    app.router.add_get("/v1/billing/statements", list_statements)
    app.router.add_get("/healthz", healthz)
    return app


async def _upstreams(app: web.Application) -> AsyncIterator[None]:
    """The pooled upstream session, and the in-process echo model if a provider uses it."""
    config = app[CONFIG]
    echo_runner = None
    upstreams = {}
    for provider in config.providers.values():
        if provider.kind == "echo":
            if echo_runner is None:
                from proxy.echo import start_echo_server

                echo_runner, echo_url = await start_echo_server()
            upstreams[provider.name] = echo_url
        else:
            upstreams[provider.name] = provider.base_url
    app[UPSTREAMS] = upstreams
    app[HTTP] = make_client_session(config.server)
    yield
    await app[HTTP].close()
    if echo_runner is not None:
        await echo_runner.cleanup()


async def _redis(app: web.Application) -> AsyncIterator[None]:
    """The Redis client shared by counters, budget, rate limits and webhook dedupe, if configured."""
    storage = app[CONFIG].storage
    if storage.counters == "memory":
        app[REDIS] = app[THRESHOLDS] = None
        yield
        return
    import redis.asyncio as redis

    # A blocking pool waits for a free connection under load instead of failing at 100.
    pool = redis.BlockingConnectionPool.from_url(storage.counters, max_connections=256, timeout=5,
                                                 socket_timeout=2, socket_connect_timeout=2)
    app[REDIS] = redis.Redis.from_pool(pool)
    app[THRESHOLDS] = RedisThresholds(app[REDIS])
    follower = asyncio.create_task(_follow_thresholds(app), name="threshold-periods")
    yield
    follower.cancel()
    try:
        await follower
    except asyncio.CancelledError:
        pass
    await app[REDIS].aclose()


async def _follow_thresholds(app: web.Application) -> None:
    """Adopt threshold periods other proxies opened (see metering.billing.thresholds)."""
    config, meter, shared = app[CONFIG], app[METER], app[THRESHOLDS]
    customers = [c for c in config.customers.values() if config.plans[c.plan].interval == "threshold"]
    while customers:
        await asyncio.sleep(THRESHOLD_REFRESH)
        now = utcnow()
        for customer in customers:
            try:
                opened = await shared.open_period(customer=customer.id, month=meter.month_key(customer, now))
            except STORE_DOWN:
                break
            if opened is not None:
                meter.adopt(customer, datetime.fromisoformat(opened))


async def _recorder(app: web.Application) -> AsyncIterator[None]:
    """Journal, ledger and counters; replays the journal before the first request."""
    storage = app[CONFIG].storage
    ledger = Ledger(storage.ledger)
    journal = Journal(storage.journal)
    client = app[REDIS]
    counters = MemoryCounters() if client is None else RedisCounters(client)
    recorder = Recorder(journal=journal, counters=counters, ledger=ledger,
                        flush_interval=storage.flush_interval, flush_batch=storage.flush_batch)
    meter = app[METER]

    def open_periods() -> tuple[dict[str, str], datetime]:
        meter.restore_thresholds(ledger)  # threshold periods resume where the ledger left them
        return meter.open_periods(utcnow())

    started = time.perf_counter()
    app[OPEN_EVENTS] = await recorder.start(open_periods)
    log.info("ledger ready in %.0f ms (%d events recovered from the journal)",
             (time.perf_counter() - started) * 1000, recorder.recovered)
    app[RECORDER] = recorder
    yield
    await recorder.close()
    ledger.close()


async def _admission(app: web.Application) -> AsyncIterator[None]:
    """Budget, rate limits and webhooks: in this process, or in Redis shared by many proxies."""
    config = app[CONFIG]
    storage = config.storage
    client = app[REDIS]
    if client is None:
        budget, limiter, dedupe = MemoryBudget(), MemoryRateLimiter(), MemoryDedupe()
    else:
        budget, limiter, dedupe = RedisBudget(client), RedisRateLimiter(client), RedisDedupe(client)
    notifier = Notifier(session=app[HTTP], config=config.webhooks, dedupe=dedupe) if config.webhooks else None
    recorder = app[RECORDER]

    async def resync() -> None:
        await _resync_budget(app, budget)

    gate = Gate(budget=budget, limiter=limiter, notifier=notifier, on_recovery=resync,
                fail_open=storage.on_counter_failure == "fail_open")
    recorder.on_counters_back = resync  # the counters may fail alone (an uncapped customer's calls)
    gate.customer_caps = await asyncio.get_running_loop().run_in_executor(None, recorder.ledger.customer_caps)
    events = app.pop(OPEN_EVENTS)
    try:
        for (customer, period), by_scope in _spent_by_scope(events).items():
            if await budget.usage(customer=customer, period=period, scope="customer") == (0, 0):
                await budget.rebuild(customer=customer, period=period, spent_by_scope=by_scope)
    except STORE_DOWN as exc:
        log.error("counter store unreachable at start (%s); it is rebuilt from the ledger when it is back",
                  type(exc).__name__)
        gate.store_down = True
    app[GATE] = gate
    refresher = asyncio.create_task(_refresh_customer_caps(gate, recorder.ledger), name="customer-caps")
    yield
    refresher.cancel()
    try:
        await refresher
    except asyncio.CancelledError:
        pass
    if notifier is not None:
        await notifier.close()
    await budget.close()


CAPS_REFRESH = 2.0  # seconds: how soon a cap a customer set on another proxy applies here


async def _refresh_customer_caps(gate: Gate, ledger: Ledger) -> None:
    """Customers' own caps live in the shared ledger; other proxies' changes arrive here."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(CAPS_REFRESH)
        version = gate.caps_version
        try:
            caps = await loop.run_in_executor(None, ledger.customer_caps)
        except Exception as exc:  # the ledger may be briefly unreachable: keep the last known caps
            log.warning("could not refresh customers' caps: %s", type(exc).__name__)
            continue
        if version == gate.caps_version:  # a cap set here during the read is newer than the read
            gate.customer_caps = caps


def _spent_by_scope(events) -> dict[tuple[str, str], dict[str, int]]:
    """Units spent per cap scope, per (customer, period), from ledger events.

    NOTE: units are summed per event, rounded up, exactly as settlement adds them.
    """
    spent: dict[tuple[str, str], dict[str, int]] = {}
    for event in events:
        scopes = spent.setdefault((event.customer, event.period), {})
        units = to_units(event.amount)
        scopes["customer"] = scopes.get("customer", 0) + units
        if event.key_id:
            scopes[f"key:{event.key_id}"] = scopes.get(f"key:{event.key_id}", 0) + units
    return spent


async def _resync_budget(app: web.Application, budget) -> None:
    """After a counter-store outage, set every open period's spend and totals from the ledger.

    NOTE: holds of calls in flight are dropped by the rebuild; their settlement still counts.
    It never fails the request that noticed the store is back: a failed resync is retried by
    the next one.
    """
    recorder = app[RECORDER]
    try:
        await recorder.flush()
        open_periods, since = app[METER].open_periods(utcnow())
        events = await asyncio.get_running_loop().run_in_executor(None, recorder.open_events, open_periods, since)
        spent = _spent_by_scope(events)
        by_period: dict[tuple[str, str], list] = {}
        for event in events:
            by_period.setdefault((event.customer, event.period), []).append(event)
        counters = recorder.counters
        for customer, period in open_periods.items():
            await budget.rebuild(customer=customer, period=period, spent_by_scope=spent.get((customer, period), {}))
            if isinstance(counters, RedisCounters):
                await counters.replace(customer, period, by_period.get((customer, period), []))
    except Exception:
        log.exception("resync from the ledger failed; the next call retries it")
        recorder.counters_stale = True
        if GATE in app:
            app[GATE].store_down = True
        return
    recorder.counters_stale = False
    log.warning("counter store resynced from the ledger (%d events)", len(events))


async def list_models(request: web.Request) -> web.Response:
    """`GET /v1/models`: the models this key may use, in OpenAI's list format."""
    caller = request.app[KEYRING].customer(request)
    config = request.app[CONFIG]
    names = caller.customer.models if caller.customer.models is not None else tuple(config.models)
    data = [{"id": name, "object": "model", "created": 0, "owned_by": config.models[name].provider}
            for name in names]
    return web.json_response({"object": "list", "data": data})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})
