"""Typed keys for the shared resources that live on the `web.Application`."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from metering.billing.meter import Meter
from metering.store.recorder import Recorder
from proxy.limits.admission import Gate
from proxy.live import Live
from proxy.providers.http1 import Client

LIVE = web.AppKey("live", Live)  # the config in force and its key ring (they change at runtime)
METER = web.AppKey("meter", Meter)
HTTP = web.AppKey("http", aiohttp.ClientSession)  # outgoing HTTP but the providers' (webhooks)
UPSTREAM_CLIENT = web.AppKey("upstream_client", Client)  # the providers' (proxy/providers/http1.py)
RECORDER = web.AppKey("recorder", Recorder)
GATE = web.AppKey("gate", Gate)
THRESHOLDS = web.AppKey("thresholds", object)  # metering.thresholds.RedisThresholds, or None in one process
REDIS = web.AppKey("redis", object)  # redis.asyncio.Redis, or None with in-process counters
# Provider kinds not reached over HTTP by Payware itself (litellm: its library makes the call):
# kind -> async opener(provider=, model=, body=, stream=, fmt=) returning an object that
# answers like an aiohttp.ClientResponse (status, headers, reason, read(), content.iter_any(),
# close(), release()), so the relay is the same for every kind.
BRIDGES = web.AppKey("bridges", dict)
UPSTREAMS = web.AppKey("upstreams", dict)  # provider name -> base URL (the echo provider's is known at start)
