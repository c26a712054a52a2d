"""`/metrics` for Prometheus: what this proxy served, refused and still owes the ledger.

Counted where each request ends: the access-log middleware hands every finished request to
`Metrics.observe` (one call: dict increments and two histogram observations, all plain
Python numbers turned into samples at scrape time). The relay leaves on the request what only
it knows: the provider and when it was asked (`UPSTREAM`), when the answer was complete
(`UPSTREAM_DONE`) and the event it recorded (`EVENT`). What is a state rather than an event
(journal backlog, flush lag, the counter store's health) is read at scrape time by a
collector, so the hot path never touches it.

Label values are bounded: `route` is the router's canonical path (`/v1/models/{id}`, or
`unmatched`), never the raw path; `model` and `provider` are names from the config; `status`
is an HTTP status; `reason`, `class`, `code` and `op` come from fixed sets. No customer label:
customers are unbounded (the admin API makes them); their usage is in the ledger.

Protection: on the proxy's own port `/metrics` needs the admin key; `server.metrics_listen`
adds a listener that serves `/metrics` alone, without auth (bind it to a private address).
`PAYWARE_METRICS=off` turns all of it off (no route, no counting).

Counts are per process, since its start; Prometheus' `rate()`/`increase()` handle restarts.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import time
from bisect import bisect_left
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.utils import floatToGoString

from config.loader import ConfigError
from config.schema import Config
from metering.store.events import UsageEvent
from proxy.serving.accesslog import NOTES, OBSERVER
from proxy.serving.server import listen
from proxy.appkeys import GATE, LIVE, RECORDER
from proxy.errors import Forbidden

log = logging.getLogger("payware.metrics")

# Request keys the relay sets (proxy/calls.py).
UPSTREAM = "payware.upstream"  # (provider name, perf_counter() when the provider was asked)
UPSTREAM_DONE = "payware.upstream_done"  # perf_counter() when its answer was complete (metering starts)
EVENT = "payware.event"  # the UsageEvent this request recorded

REFUSALS = ("spend_cap_reached", "rate_limit_exceeded")
TOKEN_CLASSES = (("input", "input_tokens"), ("cached_input", "cached_input_tokens"),
                 ("cache_write", "cache_write_tokens"), ("cache_write_1h", "cache_write_1h_tokens"),
                 ("output", "output_tokens"), ("reasoning", "reasoning_tokens"))
# What the proxy adds is milliseconds; what providers take is seconds to minutes.
PROXY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
UPSTREAM_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)


# name, help, labels of each counter kept as plain counts (see `Metrics`)
COUNTERS = {
    "requests": ("payware_requests", "Requests answered, by route, model and HTTP status (499: the client left "
                 "first).", ("route", "model", "status")),
    "events": ("payware_usage_events", "Usage events recorded by model calls (each one ledger row), by model and "
               "status (ok | partial).", ("model", "status")),
    "tokens": ("payware_tokens", "Tokens billed, by model and class (input counts every prompt token, cached "
               "and cache writes included; output counts reasoning).", ("model", "class")),
    "refusals": ("payware_refusals", "Calls refused before any provider: spend cap reached, rate limit "
                 "exceeded.", ("reason",)),
    "upstream_errors": ("payware_upstream_errors", "Provider failures, by provider and code (the provider's "
                        "HTTP status; error: unreachable or broke off; timeout; error_body: a 200 whose body is an "
                        "error).", ("provider", "code")),
    "store_errors": ("payware_counter_store_errors", "Counter-store (Redis) failures on the request path: "
                     "admission (refused), record (real-time totals), position (a tiered plan's place in the "
                     "period).", ("op",)),
}


class Buckets:
    """One labelled histogram's observations: a count per bucket (the last one: above every
    bound) and their sum, shown as Prometheus' cumulative buckets at scrape time."""

    __slots__ = ("counts", "sum", "created")

    def __init__(self, bounds: tuple[float, ...]):
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.created = time.time()


class Histogram:
    """A latency histogram with one label: prometheus_client's takes a lock and validates on
    every observation; here it is a bisect and two additions (the event loop is the only writer)."""

    def __init__(self, name: str, help_text: str, label: str, bounds: tuple[float, ...]):
        self.name, self.help_text, self.label, self.bounds = name, help_text, label, bounds
        self.children: dict[str, Buckets] = {}

    def observe(self, label: str, value: float) -> None:
        child = self.children.get(label)
        if child is None:
            child = self.children[label] = Buckets(self.bounds)
        child.counts[bisect_left(self.bounds, value)] += 1  # NOTE: bucket i holds bounds[i-1] < v <= bounds[i]
        child.sum += value

    def family(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(self.name, self.help_text, labels=[self.label])
        for label, child in sorted(self.children.items()):
            running, buckets = 0, []
            for bound, count in zip((*map(floatToGoString, self.bounds), "+Inf"), child.counts):
                running += count
                buckets.append((bound, running))
            family.add_metric([label], buckets, child.sum)
        for label, child in sorted(self.children.items()):  # as prometheus_client's own histograms
            family.add_sample(self.name + "_created", {self.label: label}, child.created)
        return family


class Metrics:
    """One app's registry: counts kept on the request path, state read at scrape time.

    Counters are plain dicts of ints and the latency histograms plain lists (an increment, no
    lock: everything here runs on the app's event loop, scrapes included), turned into samples
    by the collector.
    """

    def __init__(self, app: web.Application):
        self.registry = CollectorRegistry()  # this app's own: prometheus_client's global one is never used
        self.proxy_added = Histogram("payware_proxy_added_seconds", "Latency Payware added to a call that went "
                                     "to a provider: its total time minus the provider's.", "route",
                                     PROXY_BUCKETS)
        self.upstream = Histogram("payware_upstream_seconds", "From asking the provider to its answer's last "
                                  "byte (a stream's, as it was relayed).", "provider", UPSTREAM_BUCKETS)
        self.counts: dict[str, dict[tuple, int]] = {name: {} for name in COUNTERS}
        for reason in REFUSALS:  # present at 0, so an alert on increase() sees the first one
            self.counts["refusals"][(reason,)] = 0
        for op in ("admission", "position"):  # "record" is the recorder's own count
            self.counts["store_errors"][(op,)] = 0
        # NOTE: exact Decimal sums, shown as floats only at scrape time. Billing never reads these:
        # amounts live in the ledger; a float here is an approximation for dashboards.
        self.amounts: dict[tuple[str, str], Decimal] = {}
        self.credits: dict[tuple[str, str], Decimal] = {}
        self._failed = False
        self.registry.register(_StateCollector(self, app))

    def observe(self, request: web.Request, status: int, seconds: float) -> None:
        """Count one finished request (called by the access-log middleware). Never raises."""
        try:
            self._observe(request, status, seconds)
        except Exception:  # NOTE: metrics must never fail or slow down a response
            if not self._failed:
                self._failed = True
                log.exception("counting a request for /metrics failed (logged once)")

    def _observe(self, request: web.Request, status: int, seconds: float) -> None:
        route = _route(request)
        notes = request.get(NOTES)
        model = notes.get("model", "") if notes else ""
        _add(self.counts["requests"], (route, model, status))
        upstream = request.get(UPSTREAM)
        if upstream is not None:
            provider, asked = upstream
            done = request.get(UPSTREAM_DONE)
            # Until metering started; else (a failure, nothing billed) until the end.
            provider_s = (done if done is not None else time.perf_counter()) - asked
            self.upstream.observe(provider, provider_s)
            self.proxy_added.observe(route, max(seconds - provider_s, 0.0))
        event: UsageEvent | None = request.get(EVENT)
        if event is not None:
            self._count_event(event)
        error = request.get("payware.error")
        if error is not None:
            self._count_error(request, error, upstream)

    def _count_event(self, event: UsageEvent) -> None:
        model = event.model or ""
        _add(self.counts["events"], (model, event.status))
        tokens = self.counts["tokens"]
        for name, attr in TOKEN_CLASSES:
            count = getattr(event, attr)
            if count:
                _add(tokens, (model, name), count)
        sums = self.amounts if event.amount >= 0 else self.credits
        key = (model, event.currency)
        sums[key] = sums.get(key, Decimal(0)) + abs(event.amount)
        if event.meta.get("position_unknown"):  # the counter store did not answer the period's position
            _add(self.counts["store_errors"], ("position",))

    def _count_error(self, request: web.Request, error: str, upstream) -> None:
        if error in REFUSALS:
            _add(self.counts["refusals"], (error,))
        elif error.startswith("upstream_") and upstream is not None:
            _add(self.counts["upstream_errors"], (upstream[0], _upstream_code(error)))
        elif error == "service_unavailable":
            gate = request.app.get(GATE)
            if gate is not None and gate.store_down:  # refused because the counter store did not answer
                _add(self.counts["store_errors"], ("admission",))

    def exposition(self) -> web.Response:
        """The registry in Prometheus' text format."""
        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


def _add(counts: dict[tuple, int], key: tuple, n: int = 1) -> None:
    counts[key] = counts.get(key, 0) + n


def _route(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def _upstream_code(error: str) -> str:
    """`upstream_500` -> "500"; `upstream_error` -> "error"; `upstream_timeout` -> "timeout"."""
    return error.removeprefix("upstream_")


class _StateCollector:
    """Turns the counts into samples, and reads the state: the ledger's backlog, the counter store."""

    def __init__(self, metrics: Metrics, app: web.Application):
        self._metrics = metrics
        self._app = app

    def collect(self) -> Iterator:
        metrics, app = self._metrics, self._app
        recorder, gate = app.get(RECORDER), app.get(GATE)
        yield metrics.proxy_added.family()
        yield metrics.upstream.family()
        counts = {name: dict(values) for name, values in metrics.counts.items()}
        counts["store_errors"][("record",)] = recorder.counter_errors if recorder is not None else 0
        for key, (name, help_text, labels) in COUNTERS.items():
            family = CounterMetricFamily(name, help_text, labels=labels)
            for values, count in sorted(counts[key].items(), key=_sort_key):
                family.add_metric([str(v) for v in values], count)
            yield family
        amount = CounterMetricFamily("payware_amount", "What customers were charged by model calls, by model and "
                                     "currency (a float view of exact sums; billing reads the ledger, never "
                                     "this).", labels=["model", "currency"])
        credit = CounterMetricFamily("payware_credit", "Negative marginal amounts (volume-tier credits), as "
                                     "positive numbers: charged = amount - credit.", labels=["model", "currency"])
        for family, sums in ((amount, metrics.amounts), (credit, metrics.credits)):
            for (model, currency), total in sorted(sums.items()):
                family.add_metric([model, currency], float(total))
            yield family
        yield GaugeMetricFamily("payware_counter_store_up", "0 while admission finds the counter store "
                                "unreachable (1 with in-process counters).",
                                value=0 if gate is not None and gate.store_down else 1)
        if recorder is None:
            return
        yield GaugeMetricFamily("payware_journal_backlog_events", "Events in this proxy's journal that the "
                                "ledger does not hold yet.", value=len(recorder.queued()))
        yield GaugeMetricFamily("payware_ledger_flush_lag_seconds", "Age of the oldest event waiting for the "
                                "ledger (0 when none waits).", value=recorder.lag())
        yield GaugeMetricFamily("payware_counters_resync_pending", "1 while the real-time totals wait to be "
                                "rebuilt from the ledger after a counter-store failure.",
                                value=1 if recorder.counters_stale else 0)
        yield GaugeMetricFamily("payware_ledger_dead_letters", "Events the ledger refused and kept aside (since "
                                "the ledger began), billed without their metadata.",
                                value=sum(recorder.dead_letters.values()))


def _sort_key(item: tuple[tuple, int]) -> tuple:
    return tuple(str(v) for v in item[0])


METRICS = web.AppKey("metrics", Metrics)


def install(app: web.Application, config: Config, *, enabled: bool | None = None) -> None:
    """Add `/metrics` (admin key) and the counting to `app`; and the separate listener if configured.

    `enabled` defaults to the environment: `PAYWARE_METRICS=off` (or 0, false) leaves all of it out.
    """
    if enabled is None:
        enabled = os.environ.get("PAYWARE_METRICS", "on").lower() not in ("0", "off", "false")
    if not enabled:
        if config.server.metrics_listen is not None:
            log.warning("PAYWARE_METRICS=off: server.metrics_listen is not opened")
        return
    metrics = app[METRICS] = Metrics(app)
    app[OBSERVER] = metrics.observe
    app.router.add_get("/metrics", metrics_with_admin_key)
    if config.server.metrics_listen is not None:
        # NOTE: bound now, as the proxy's own port is: an address in use fails the start
        # before anything has started (see proxy.serving.server.listen)
        app[_SOCKETS] = _bind(config)
        app.cleanup_ctx.append(_listener)


_SOCKETS = web.AppKey("metrics_listen_sockets", list)


def _bind(config: Config) -> list[socket.socket]:
    host, port = config.server.metrics_listen
    try:
        return listen(host, port)
    except OSError as exc:
        why = exc.strerror or str(exc)
        if exc.errno == errno.EADDRINUSE:  # NOTE: each worker of `serve --workers N` would bind it too
            why += " (by another process, or by another worker: a metrics listener needs --workers 1)"
        raise ConfigError(config.source, [f"server.metrics_listen: cannot listen on {host}:{port}: {why}"]) from None


async def metrics_with_admin_key(request: web.Request) -> web.Response:
    """`GET /metrics` on the proxy's port: the admin key only (401 without a key, 403 with another)."""
    caller = request.app[LIVE].keyring.caller(request)
    if not caller.admin:
        raise Forbidden("/metrics needs the admin key (or scrape server.metrics_listen)")
    return request.app[METRICS].exposition()


async def _listener(app: web.Application) -> AsyncIterator[None]:
    """`server.metrics_listen`: a second listener that serves `/metrics` and nothing else, without auth."""
    metrics = app[METRICS]

    async def scrape(_request: web.Request) -> web.Response:
        return metrics.exposition()

    side = web.Application()
    side.router.add_get("/metrics", scrape)
    runner = web.AppRunner(side, access_log=None)
    await runner.setup()
    for sock in app[_SOCKETS]:
        await web.SockSite(runner, sock).start()
    host, port = app[LIVE].config.server.metrics_listen
    log.info("metrics on http://%s:%d/metrics (no auth)", host, port)
    try:
        yield
    finally:
        await runner.cleanup()
