"""The closed-loop load client and the arithmetic of its results.

`fire` keeps `concurrency` requests in flight until `count` have been answered, each worker
sending its next request on its own keep-alive connection when its last answer ended (closed
loop: the server under test sets the pace). A request's latency is the time to the last byte
of its answer. Every answer is checked: HTTP 200, and for a stream the bytes a whole answer
ends with and, for an API whose streams have no terminator of their own, what its last event
holds (Responses' `response.completed`, Anthropic's `message_stop`, Gemini's `finishReason`).

The client speaks HTTP/1.1 itself over asyncio protocols (pre-encoded request bytes, a small
incremental response parser: Content-Length or chunked) instead of through aiohttp's client:
on 2 cores the load side shares one core with the upstream, and aiohttp's client costs ~5x
more CPU per request; a cheaper client lets the proxy under test be the bottleneck at c=64.
"""

from __future__ import annotations

import asyncio
import math
import time
from urllib.parse import urlsplit

from scenarios import Scenario


class BenchError(RuntimeError):
    """The run cannot go on: a wrong answer, a dead process, the time budget spent."""


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection: send a request's bytes, get (status, body) back."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._buf = bytearray()
        self._waiter: asyncio.Future | None = None
        self._reset()

    def _reset(self) -> None:
        self._state = "head"  # head -> (length | size -> data -> size ... -> trailer) -> done
        self._status = 0
        self._need = 0
        self._body = bytearray()
        self._keep = True

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ConnectionError(f"connection lost mid-answer ({exc})"))

    def request(self, data: bytes) -> asyncio.Future:
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return self._waiter

    def data_received(self, data: bytes) -> None:
        self._buf += data
        try:
            self._parse()
        except (ValueError, IndexError) as exc:
            self.transport.close()
            if self._waiter is not None and not self._waiter.done():
                self._waiter.set_exception(BenchError(f"unparsable HTTP answer: {exc}"))

    def _parse(self) -> None:
        buf = self._buf
        while True:
            if self._state == "head":
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
                del buf[:end + 4]
                self._status = int(lines[0].split(" ", 2)[1])
                self._state, self._need = "length", 0  # no Content-Length, not chunked: empty body
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    name = name.strip().lower()
                    if name == "content-length":
                        self._need = int(value)
                    elif name == "transfer-encoding" and "chunked" in value.lower():
                        self._state = "size"
                    elif name == "connection" and value.strip().lower() == "close":
                        self._keep = False
            elif self._state == "length":
                if len(buf) < self._need:
                    return
                self._body += buf[:self._need]
                del buf[:self._need]
                return self._done()
            elif self._state in ("size", "trailer"):
                end = buf.find(b"\r\n")
                if end < 0:
                    return
                line = bytes(buf[:end])
                del buf[:end + 2]
                if self._state == "trailer":
                    if not line:
                        return self._done()
                    continue
                size = int(line.split(b";", 1)[0], 16)
                self._state, self._need = ("trailer", 0) if size == 0 else ("data", size + 2)  # + CRLF
            elif self._state == "data":
                if len(buf) < self._need:
                    return
                self._body += buf[:self._need - 2]
                del buf[:self._need]
                self._state = "size"

    def _done(self) -> None:
        status, body, keep = self._status, bytes(self._body), self._keep
        self._reset()
        if not keep:
            self.transport.close()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result((status, body))


class Client:
    """Up to `concurrency` keep-alive connections to one server, opened on first use, reopened if closed."""

    def __init__(self, base_url: str, concurrency: int):
        url = urlsplit(base_url)
        self.host, self.port = url.hostname, url.port
        self._conns: list[_Connection | None] = [None] * concurrency

    def encode(self, method: str, path: str, headers: dict[str, str], body: bytes) -> bytes:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}", "Accept: */*",
                 "Accept-Encoding: gzip, deflate", f"Content-Length: {len(body)}",
                 *(f"{name}: {value}" for name, value in headers.items())]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body

    async def connection(self, i: int) -> _Connection:
        conn = self._conns[i]
        if conn is None or conn.closed:
            _, conn = await asyncio.get_running_loop().create_connection(_Connection, self.host, self.port)
            self._conns[i] = conn
        return conn

    def close(self) -> None:
        for conn in self._conns:
            if conn is not None and not conn.closed:
                conn.transport.close()
        self._conns = [None] * len(self._conns)


async def fire(client: Client, path: str, headers: dict[str, str], scenario: Scenario, count: int,
               concurrency: int, deadline: float, label: str) -> list[int]:
    """Send `count` requests with `concurrency` workers; the latency of each, in ns."""
    latencies: list[int] = []
    remaining = count
    clock = time.perf_counter_ns
    request = client.encode("POST", path, headers, scenario.body)
    ends_with = scenario.ends_with
    last_event_has = scenario.last_event_has

    async def worker(i: int) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            conn = await client.connection(i)
            started = clock()
            try:
                status, payload = await conn.request(request)
            except ConnectionError as exc:
                raise BenchError(f"{label}: {exc}") from None
            latencies.append(clock() - started)
            if status != 200:
                raise BenchError(f"{label}: HTTP {status}: {payload[:300]!r}")
            if ends_with is not None and not payload.endswith(ends_with):
                raise BenchError(f"{label}: answer does not end with {ends_with!r}: {payload[-200:]!r}")
            if last_event_has is not None and last_event_has not in payload[last_event(payload):]:
                raise BenchError(f"{label}: the last event lacks {last_event_has!r}: {payload[-200:]!r}")
            if time.monotonic() > deadline:
                raise BenchError("time budget exceeded (--max-seconds)")

    workers = [asyncio.create_task(worker(i)) for i in range(min(concurrency, count))]
    try:
        await asyncio.gather(*workers)
    finally:
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
    return latencies


def last_event(payload: bytes) -> int:
    """Where the last SSE event of a stream starts (after the blank line before it; LF or CRLF)."""
    body = payload.rstrip(b"\r\n")
    return max(body.rfind(b"\n\n"), body.rfind(b"\r\n\r\n")) + 1


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
