"""/metrics' latency histograms (`proxy.metrics.Histogram`): what prometheus_client's own
`Histogram` would expose for the same observations, bucket for bucket."""

from __future__ import annotations

import random
import re

import prometheus_client
from prometheus_client import CollectorRegistry, generate_latest

from proxy.metrics import PROXY_BUCKETS, Histogram


class _Only:
    def __init__(self, histogram: Histogram):
        self.histogram = histogram

    def collect(self):
        yield self.histogram.family()


def _exposed(registry: CollectorRegistry) -> str:
    text = generate_latest(registry).decode()
    return re.sub(r"(_created\{[^}]*\}) \S+", r"\1 T", text)  # creation stamps differ by microseconds


def test_the_exposition_is_prometheus_clients_own():
    rng = random.Random(3)
    values = [rng.choice(PROXY_BUCKETS) for _ in range(200)]  # exactly on a bound: `le` includes it
    values += [rng.uniform(0, 6) for _ in range(300)] + [0.0, 1e9]
    theirs_registry, ours_registry = CollectorRegistry(), CollectorRegistry()
    theirs = prometheus_client.Histogram("x_seconds", "help", ["route"], buckets=PROXY_BUCKETS,
                                         registry=theirs_registry)
    ours = Histogram("x_seconds", "help", "route", PROXY_BUCKETS)
    ours_registry.register(_Only(ours))
    for i, value in enumerate(values):
        route = ("/a", "/b")[i % 2]
        theirs.labels(route).observe(value)
        ours.observe(route, value)
    assert _exposed(ours_registry) == _exposed(theirs_registry)
    assert 'x_seconds_bucket{le="+Inf",route="/a"} 251.0' in _exposed(ours_registry)
