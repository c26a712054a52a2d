"""The closed-loop load client and the arithmetic of its results.

`fire` keeps `concurrency` requests in flight until `count` have been answered, each worker
sending its next request when its last one ended (closed loop: the server under test sets the
pace). A request's latency is the time to the last byte of its answer. Every answer is checked:
HTTP 200, and for a stream the bytes a whole answer ends with.
"""

from __future__ import annotations

import asyncio
import math
import time

import aiohttp

from scenarios import Scenario


class BenchError(RuntimeError):
    """The run cannot go on: a wrong answer, a dead process, the time budget spent."""


def client_session(concurrency: int) -> aiohttp.ClientSession:
    """One per target and case: keep-alive connections, at most `concurrency` of them."""
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=0, keepalive_timeout=60)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60),
                                 auto_decompress=False, skip_auto_headers=("User-Agent",))


async def fire(session: aiohttp.ClientSession, url: str, headers: dict[str, str], scenario: Scenario,
               count: int, concurrency: int, deadline: float, label: str) -> list[int]:
    """Send `count` requests with `concurrency` workers; the latency of each, in ns."""
    latencies: list[int] = []
    remaining = count
    clock = time.perf_counter_ns
    body, ends_with = scenario.body, scenario.ends_with

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = clock()
            async with session.post(url, data=body, headers=headers) as resp:
                payload = await resp.read()
            latencies.append(clock() - started)
            if resp.status != 200:
                raise BenchError(f"{label}: HTTP {resp.status}: {payload[:300]!r}")
            if ends_with is not None and not payload.endswith(ends_with):
                raise BenchError(f"{label}: answer does not end with {ends_with!r}: {payload[-200:]!r}")
            if time.monotonic() > deadline:
                raise BenchError("time budget exceeded (--max-seconds)")

    workers = [asyncio.create_task(worker()) for _ in range(min(concurrency, count))]
    try:
        await asyncio.gather(*workers)
    finally:
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
    return latencies


def percentile(sorted_values: list[int], q: float) -> float:
    """Nearest-rank percentile."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def median(values: list[float]) -> float:
    values = sorted(v for v in values if not math.isnan(v))
    if not values:
        return math.nan
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def latency_stats(latencies_ns: list[int], seconds: float) -> dict:
    lat = sorted(latencies_ns)
    return {"requests": len(lat), "seconds": round(seconds, 4),
            "rps": len(lat) / seconds if seconds else math.nan,
            "p50_ms": percentile(lat, 50) / 1e6, "p90_ms": percentile(lat, 90) / 1e6,
            "p99_ms": percentile(lat, 99) / 1e6,
            "mean_ms": sum(lat) / len(lat) / 1e6 if lat else math.nan}
