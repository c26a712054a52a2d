"""The aiohttp application: routes, middlewares and the lifetime of shared resources."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from datetime import datetime

import aiohttp
from aiohttp import web

from config.loader import ConfigError
from config.schema import Config
from metering.limits.counters import MemoryCounters
from metering.limits.outages import store_down
from metering.store.events import utcnow
from metering.store.journal import Journal
from metering.store.directory import DirectoryStore
from metering.store.instances import HEARTBEAT, Instances
from metering.store.ledger import Ledger
from metering.billing.meter import Meter
from metering.store.recorder import Recorder
from metering.limits.redis_counters import RedisCounters
from metering.store.owned_redis import AnnouncedOwners
from metering.billing.thresholds import REFRESH as THRESHOLD_REFRESH
from metering.billing.thresholds import RedisThresholds
from proxy.appkeys import BRIDGES, HTTP, LIVE, METER, RECORDER, REDIS, THRESHOLDS, UPSTREAM_CLIENT, UPSTREAMS
from proxy.live import Live
from proxy.routes.billing import get_cap, put_cap
from proxy.serving.accesslog import edge_middleware
from proxy.calls import may_use, model_handler
from proxy.formats import openai_chat
from proxy.errors import ModelNotFound
from proxy.jsonbody import BODY_TIMEOUT
from proxy.providers.litellm_bridge import litellm_ctx
from proxy.limits.stores import admission_ctx
from proxy.metrics import install as install_metrics
from proxy.routes import admin, credits, responses
from proxy.routes import gemini as gemini_routes
from proxy.routes import messages as anthropic_messages
from proxy.routes import reconciliation
from proxy.routes.records import post_records
from proxy.routes.statements import closing_job, list_statements
from proxy.providers.upstream import make_provider_client
from proxy.routes.usage import usage_events, usage_summary
from proxy.web.faces import add_faces

log = logging.getLogger("payware")



def make_app(config: Config) -> web.Application:
    """Build the proxy for `config`; resources open on start-up and close on clean-up."""
    app = web.Application(middlewares=[edge_middleware],
                          client_max_size=config.server.max_body_bytes)
    app[LIVE] = live = Live(config, store=None)  # the directory's store opens with the ledger
    app[BODY_TIMEOUT] = config.server.body_timeout
    app[BRIDGES] = {}
    app[METER] = meter = Meter(config)
    live.on_change.append(meter.reconfigure)
    app.cleanup_ctx.append(_upstreams)
    app.cleanup_ctx.append(litellm_ctx(config))  # imports litellm only if a provider is of its kind
    app.cleanup_ctx.append(_redis)
    app.cleanup_ctx.append(_recorder)
    app.cleanup_ctx.append(admission_ctx)
    app.cleanup_ctx.append(admin.runtime_ctx)
    app.cleanup_ctx.append(closing_job)
    app.router.add_post("/v1/chat/completions", model_handler(openai_chat.CHAT))
    app.router.add_post("/v1/completions", model_handler(openai_chat.COMPLETIONS))
    app.router.add_post("/v1/embeddings", model_handler(openai_chat.EMBEDDINGS))
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{id:.+}", retrieve_model)
    responses.add_routes(app)
    admin.add_routes(app)
    credits.add_routes(app)
    gemini_routes.add_routes(app)
    anthropic_messages.add_routes(app)
    reconciliation.setup(app)  # GET /v1/admin/reconciliation, /v1/admin/settlements; settle after close
    app.router.add_get("/v1/usage/summary", usage_summary)
    app.router.add_get("/v1/usage/events", usage_events)
    app.router.add_post("/v1/usage/records", post_records)
    app.router.add_get("/v1/billing/cap", get_cap)
    app.router.add_put("/v1/billing/cap", put_cap)
    app.router.add_get("/v1/billing/statements", list_statements)
    app.router.add_get("/healthz", healthz)
    add_faces(app)  # /portal (customers), /admin (the operator console), /static (their assets)
    install_metrics(app, config)  # /metrics, its counting, server.metrics_listen
    return app


async def _upstreams(app: web.Application) -> AsyncIterator[None]:
    """The providers' pooled client, the webhooks' session, and the in-process echo model if a
    provider uses it."""
    config = app[LIVE].config
    echo_runner = None
    upstreams = {}
    for provider in config.providers.values():
        if provider.kind == "echo":
            if echo_runner is None:
                from proxy.echo.app import start_echo_server

                echo_runner, echo_url = await start_echo_server()
            upstreams[provider.name] = echo_url
        else:
            upstreams[provider.name] = provider.base_url
    app[UPSTREAMS] = upstreams
    app[UPSTREAM_CLIENT] = make_provider_client(config.server)
    app[HTTP] = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))  # webhooks
    yield
    await app[UPSTREAM_CLIENT].close()
    await app[HTTP].close()
    if echo_runner is not None:
        await echo_runner.cleanup()


async def _redis(app: web.Application) -> AsyncIterator[None]:
    """The Redis client shared by counters, budget, rate limits and webhook dedupe, if configured."""
    storage = app[LIVE].config.storage
    if storage.counters == "memory":
        app[REDIS] = app[THRESHOLDS] = None
        yield
        return
    import redis.asyncio as redis

    from metering.limits.redis_batch import BatchingRedis

    # A blocking pool waits for a free connection under load instead of failing at 100.
    pool = redis.BlockingConnectionPool.from_url(storage.counters, max_connections=256, timeout=5,
                                                 socket_timeout=2, socket_connect_timeout=2)
    app[REDIS] = BatchingRedis.from_pool(pool)  # scripts issued together share a round trip
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
    meter, shared = app[METER], app[THRESHOLDS]
    while True:
        await asyncio.sleep(THRESHOLD_REFRESH)
        config, now = app[LIVE].config, utcnow()
        customers = [c for c in config.customers.values() if config.plans[c.plan].interval == "threshold"]
        for customer in customers:
            try:
                opened = await shared.open_period(customer=customer.id, month=meter.month_key(customer, now))
            except store_down():
                break
            if opened is not None:
                meter.adopt(customer, datetime.fromisoformat(opened))


async def _recorder(app: web.Application) -> AsyncIterator[None]:
    """Journal, ledger and counters; replays the journal before the first request."""
    storage = app[LIVE].config.storage
    ledger = Ledger(storage.ledger)
    instances = Instances(ledger.engine, journal=storage.journal, counters=storage.counters)
    loop = asyncio.get_running_loop()
    conflict = await loop.run_in_executor(None, instances.conflict)
    if conflict is not None:
        ledger.close()
        raise ConfigError(app[LIVE].config.source, [
            f"storage.counters: another proxy ({conflict.other}, counters: {conflict.counters}) uses this ledger; "
            "with counters: memory each proxy counts only its own calls and caps would drift: give every "
            "proxy of this ledger storage.counters: redis://…"])
    await loop.run_in_executor(None, instances.beat)
    live = app[LIVE]
    live.store = DirectoryStore(ledger.engine)
    # NOTE: before anything reads a customer: runtime customers merge with the file's (or, if
    # they do not fit together, the proxy refuses to start, naming each problem).
    live.load(await asyncio.get_running_loop().run_in_executor(None, live.store.load))
    journal = Journal(storage.journal)
    client = app[REDIS]
    counters = MemoryCounters() if client is None else RedisCounters(client)
    # NOTE: proxies on shared counters share their ledger (one on in-process counters is alone: see above)
    recorder = Recorder(journal=journal, counters=counters, ledger=ledger, flush_interval=storage.flush_interval,
                        flush_batch=storage.flush_batch, shared_ledger=client is not None,
                        owners=None if client is None else AnnouncedOwners(client))
    meter = app[METER]

    def open_periods() -> tuple[dict[str, str], datetime]:
        meter.restore_thresholds(ledger)  # threshold periods resume where the ledger left them
        return meter.open_periods(utcnow())

    started = time.perf_counter()
    await recorder.start(open_periods)
    log.info("ledger ready in %.0f ms (%d events recovered from the journal)",
             (time.perf_counter() - started) * 1000, recorder.recovered)
    app[RECORDER] = recorder
    heartbeat = asyncio.create_task(_heartbeat(instances), name="instance-heartbeat")
    yield
    heartbeat.cancel()
    await asyncio.gather(heartbeat, return_exceptions=True)
    await recorder.close()
    try:
        await loop.run_in_executor(None, instances.leave)
    except Exception:
        pass  # the row goes stale on its own
    live.store.close()
    ledger.close()


async def _heartbeat(instances: Instances) -> None:
    """Tell the other proxies of this ledger that this one is alive (see metering.store.instances)."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(HEARTBEAT)
        try:
            await loop.run_in_executor(None, instances.beat)
        except Exception as exc:
            log.warning("could not write this proxy's heartbeat: %s", type(exc).__name__)


async def list_models(request: web.Request) -> web.Response:
    """`GET /v1/models`: the models this key may use, in OpenAI's list format."""
    live = request.app[LIVE]
    config, caller = live.config, live.keyring.customer(request)
    data = [{"id": name, "object": "model", "created": 0, "owned_by": model.provider}
            for name, model in config.models.items() if may_use(caller, name)]
    return web.json_response({"object": "list", "data": data})


async def retrieve_model(request: web.Request) -> web.Response:
    """`GET /v1/models/{id}`: one model this key may use, in OpenAI's shape; 404 otherwise."""
    live = request.app[LIVE]
    config, caller = live.config, live.keyring.customer(request)
    name = request.match_info["id"]
    model = config.models.get(name)
    if model is None or not may_use(caller, name):
        raise ModelNotFound(f"The model '{name}' does not exist or you do not have access to it.", param="model")
    return web.json_response({"id": name, "object": "model", "created": 0, "owned_by": model.provider})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})
