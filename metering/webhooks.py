"""Outgoing webhooks: tell the app using Payware when a customer nears or reaches its cap.

Each event is a signed JSON POST (`Payware-Signature: t=<ts>,v1=<hex HMAC-SHA256>`, the Stripe
scheme, so receivers can reuse their code) carrying a `Payware-Event-Id` that stays the same on
every retry. Delivery runs in background tasks: the request path never waits on the receiver.

NOTE: delivery is at most once per dedupe key. The key is claimed in the dedupe store *before*
the first attempt, so two proxy instances sharing Redis never both send it; the price is that an
event whose retries all fail, or that is in flight when the process dies, is not sent again.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import random
import time
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp

from config.schema import WebhookConfig

if TYPE_CHECKING:
    import redis.asyncio as aioredis

log = logging.getLogger("payware.webhooks")

DEDUPE_TTL = 62 * 24 * 3600.0  # longer than any billing period, so a threshold fires once per period
RETRY_STATUSES = frozenset({429})  # besides every 5xx: the receiver may accept it later


class DedupeStore(Protocol):
    async def first(self, key: str, ttl: float) -> bool:
        """True for the first call with `key` (until `ttl` seconds pass), False for every other."""
        ...


class MemoryDedupe:
    """Dedupe within one process: enough for a single proxy instance."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._until: dict[str, float] = {}
        self._sweep_at = 1024

    async def first(self, key: str, ttl: float) -> bool:
        """Check and mark in one step; no await in between, so concurrent callers cannot both win."""
        now = self._clock()
        if self._until.get(key, now) > now:
            return False
        self._until[key] = now + ttl
        if len(self._until) >= self._sweep_at:  # amortised sweep keeps the dict bounded by live keys
            self._until = {k: t for k, t in self._until.items() if t > now}
            self._sweep_at = max(1024, 2 * len(self._until))
        return True

    def forget(self, key: str) -> None:
        """Release `key`, e.g. when the send it guarded could not happen."""
        self._until.pop(key, None)


class RedisDedupe:
    """Dedupe shared by every proxy instance: `SET {prefix}:hook:{key} 1 NX PX ttl`.

    Callers pass keys that start with the customer's hash tag (`"{cust_abc}:..."`), as
    `Notifier.threshold_crossed` does, so the key sits in that customer's Redis Cluster slot.
    The client belongs to the caller, who closes it.
    """

    def __init__(self, client: aioredis.Redis, *, prefix: str = "pw"):
        if "{" in prefix or "}" in prefix:
            raise ValueError("the key prefix must not contain braces: the customer is the hash tag")
        self._client = client
        self._prefix = prefix

    async def first(self, key: str, ttl: float) -> bool:
        """True if this call created the key; Redis decides, so the answer holds across instances."""
        created = await self._client.set(f"{self._prefix}:hook:{key}", b"1", nx=True, px=max(1, int(ttl * 1000)))
        return bool(created)


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """Hex HMAC-SHA256 of `"<timestamp>." + body`; the timestamp is signed so replays expire."""
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def verify(secret: str, header: str, body: bytes, *, tolerance: float = 300, now: float | None = None) -> bool:
    """Check a `Payware-Signature` header (`t=<ts>,v1=<hex>[,v1=...]`) as a receiver should."""
    timestamp: int | None = None
    signatures: list[str] = []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t" and value.isascii() and value.isdigit():
            timestamp = int(value)
        elif name == "v1":
            signatures.append(value)
    if timestamp is None or not signatures:
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False
    expected = sign(secret, timestamp, body).encode()
    # Bytes: compare_digest raises on non-ASCII str. Several v1 values: a secret being rotated.
    return any(hmac.compare_digest(expected, s.encode()) for s in signatures)


def _money(amount: Decimal) -> str:
    """JSON money: a plain decimal string, never a float and never an exponent ("1E+2")."""
    return format(amount, "f")


class Notifier:
    """Sends webhook events in the background, each at most once per dedupe key.

    `session` and `dedupe` belong to the caller; `close()` must run before they are closed.
    """

    def __init__(self, *, session: aiohttp.ClientSession, config: WebhookConfig | None, dedupe: DedupeStore,
                 base_delay: float = 0.5, max_delay: float = 30.0, attempt_timeout: float = 10.0,
                 dedupe_ttl: float = DEDUPE_TTL, clock: Callable[[], float] = time.time):
        self._session = session
        self._config = config
        self._dedupe = dedupe
        self._base_delay = base_delay
        self._max_delay = max_delay
        self._timeout = aiohttp.ClientTimeout(total=attempt_timeout)
        self._dedupe_ttl = dedupe_ttl
        self._clock = clock
        # Keys this instance knows are taken: skips a Redis round trip on every request past a threshold.
        self._known = MemoryDedupe()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    async def send(self, *, event_type: str, dedupe_key: str, data: dict[str, Any]) -> bool:
        """Schedule one event unless `dedupe_key` was sent already; True if it was scheduled."""
        if self._config is None or self._closed:
            return False
        if not await self._known.first(dedupe_key, self._dedupe_ttl):
            return False
        event_id = f"evt_{uuid.uuid4().hex}"
        event = {"id": event_id, "type": event_type, "created": int(self._clock()), "data": data}
        try:  # before the shared claim: a payload json cannot encode raises here, in the caller
            body = json.dumps(event, separators=(",", ":")).encode()
        except (TypeError, ValueError):
            self._known.forget(dedupe_key)
            raise
        try:
            claimed = await self._dedupe.first(dedupe_key, self._dedupe_ttl)
        except Exception:  # the store is down: skip now; a later call claims the key and sends it
            self._known.forget(dedupe_key)
            log.warning("webhook %s not sent: the dedupe store failed", event_type, exc_info=True)
            return False
        if not claimed:
            return False
        task = asyncio.create_task(self._deliver(self._config, event_id, event_type, body), name=f"webhook {event_id}")
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return True

    async def threshold_crossed(self, *, customer: str, period: str, spent: Decimal, limit: Decimal) -> list[int]:
        """Send "cap.threshold" / "cap.reached" (t >= 100) once per (customer, period, threshold t)."""
        if self._config is None:
            return []
        sent: list[int] = []
        for t in sorted(set(self._config.thresholds)):
            if spent * 100 < limit * t:  # exact in Decimal: no division, no rounding
                break
            remaining = max(limit - spent, 0 * limit)  # 0 * limit: zero in the cap's own scale, "0.00"
            data = {"customer": customer, "period": period, "threshold": t,
                    "cap": {"amount": _money(limit), "spent": _money(spent), "remaining": _money(remaining)}}
            if await self.send(event_type="cap.reached" if t >= 100 else "cap.threshold",
                               dedupe_key=f"{{{customer}}}:{period}:cap:{t}", data=data):
                sent.append(t)
        return sent

    async def close(self, timeout: float = 5.0) -> None:
        """Refuse new events, wait up to `timeout` for deliveries in flight, cancel the rest."""
        self._closed = True
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if pending:
            log.warning("%d webhook deliveries cancelled at shutdown", len(pending))

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("webhook delivery crashed", exc_info=task.exception())

    async def _deliver(self, config: WebhookConfig, event_id: str, event_type: str, body: bytes) -> None:
        """POST until a 2xx, a final 4xx or `max_attempts`; backoff doubles, capped, with jitter."""
        attempts, outcome = max(1, config.max_attempts), ""
        for attempt in range(1, attempts + 1):
            headers = {"Content-Type": "application/json", "Payware-Event-Id": event_id}
            if config.secret:
                ts = int(self._clock())  # fresh per attempt: a late retry must not fall outside tolerance
                headers["Payware-Signature"] = f"t={ts},v1={sign(config.secret, ts, body)}"
            try:
                # No redirects: following one would turn the POST into a GET or resend the body elsewhere.
                async with self._session.post(config.url, data=body, headers=headers, timeout=self._timeout,
                                              allow_redirects=False) as resp:
                    status = resp.status
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                outcome = type(exc).__name__  # not str(exc): it may carry the URL and its credentials
            else:
                if 200 <= status < 300:
                    return
                outcome = f"HTTP {status}"
                if status < 500 and status not in RETRY_STATUSES:
                    log.error("webhook %s %s rejected with %s; giving up", event_type, event_id, outcome)
                    return
            if attempt == attempts:
                break
            delay = min(self._max_delay, self._base_delay * 2 ** (attempt - 1))
            log.warning("webhook %s %s attempt %d/%d failed (%s); retrying in %.2fs",
                        event_type, event_id, attempt, attempts, outcome, delay)
            await asyncio.sleep(delay * (1 + random.random() / 10))  # jitter: retries of many events spread out
        log.error("webhook %s %s failed after %d attempts (%s); not sent",
                  event_type, event_id, attempts, outcome)
