"""The asyncio client: aiohttp when it is installed, else the urllib transport in a thread."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from datetime import date, datetime
from typing import Any, Literal

from . import _core
from ._core import Call, Number, Options, Response
from ._errors import APIConnectionError, APITimeoutError, error_from
from ._sync import UrllibTransport

try:
    import aiohttp
except ImportError:  # the client stays dependency-free: AsyncPayware falls back to a thread
    aiohttp = None


class AiohttpTransport:
    """Sends requests over one `aiohttp.ClientSession`, opened on first use in the running loop."""

    def __init__(self) -> None:
        if aiohttp is None:
            raise RuntimeError("aiohttp is not installed: pip install 'payware-client[aiohttp]'")
        self._session: aiohttp.ClientSession | None = None

    async def send(self, method: str, url: str, headers: Mapping[str, str], body: bytes | None,
                   timeout: float) -> Response:
        """One attempt; raises APIConnectionError (or APITimeoutError) when no answer arrives."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(trust_env=True)
        try:
            async with self._session.request(method, url, headers=dict(headers), data=body,
                                             timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                return Response(resp.status, {k.lower(): v for k, v in resp.headers.items()}, await resp.read())
        except asyncio.TimeoutError as exc:
            raise APITimeoutError(f"no answer from {url} within {timeout}s") from exc
        except aiohttp.ClientError as exc:
            raise APIConnectionError(f"connection to {url} failed: {exc!r}") from exc

    async def close(self) -> None:
        """Close the session and its pooled connections."""
        if self._session is not None:
            await self._session.close()
            self._session = None


class ThreadTransport:
    """The synchronous urllib transport, run in a worker thread."""

    def __init__(self, sync: UrllibTransport | None = None) -> None:
        self._sync = sync or UrllibTransport()

    async def send(self, method: str, url: str, headers: Mapping[str, str], body: bytes | None,
                   timeout: float) -> Response:
        """One attempt in a worker thread; raises as `UrllibTransport.send` does."""
        return await asyncio.to_thread(self._sync.send, method, url, headers, body, timeout)

    async def close(self) -> None:
        """Nothing to release."""


class AsyncPayware:
    """The asyncio twin of `Payware`: the same arguments, resources and errors, awaited.

    `transport="auto"` uses aiohttp when it is importable, else urllib in a worker thread
    (`"aiohttp"` or `"thread"` to choose). Close it with `await pw.close()`, or use
    `async with AsyncPayware(...) as pw:`.
    """

    def __init__(self, api_key: str | None = None, *, base_url: str | None = None,
                 timeout: float | None = None, max_retries: int = _core.DEFAULT_MAX_RETRIES,
                 transport: Literal["auto", "aiohttp", "thread"] | AiohttpTransport | ThreadTransport = "auto"):
        self._options = Options.resolve(api_key, base_url, timeout, max_retries)
        if transport == "auto":
            transport = "aiohttp" if aiohttp is not None else "thread"
        if transport == "aiohttp":
            transport = AiohttpTransport()
        elif transport == "thread":
            transport = ThreadTransport()
        self._transport = transport
        self.usage = AsyncUsage(self)
        self.billing = AsyncBilling(self)

    @property
    def base_url(self) -> str:
        """The proxy's URL, without `/v1`."""
        return self._options.base_url

    async def request(self, call: Call) -> Any:
        """Send `call`, retrying as the policy says, and return its parsed answer."""
        options = self._options
        url, headers = options.url(call), options.headers(call)
        attempt = 0
        while True:
            try:
                response = await self._transport.send(call.method, url, headers, call.body, options.timeout)
            except APIConnectionError:
                if attempt >= options.max_retries:
                    raise
                delay = _core.retry_delay(attempt, None)
            else:
                if response.status < 400:
                    return call.parse(response)
                delay = _core.retry_delay(attempt, response) if attempt < options.max_retries else None
                if delay is None:
                    raise error_from(response.status, response.headers, response.body)
            await asyncio.sleep(delay)
            attempt += 1

    async def close(self) -> None:
        """Release the HTTP session."""
        await self._transport.close()

    async def __aenter__(self) -> AsyncPayware:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class AsyncUsage:
    """`pw.usage` of `AsyncPayware`: the methods of `payware.Usage`, awaited."""

    def __init__(self, client: AsyncPayware):
        self._client = client

    async def record(self, *, customer: str, metric: str, quantity: Number, unit_price: Number | None = None,
                     meta: Mapping[str, Any] | None = None, session: str | None = None,
                     feature: str | None = None, idempotency_key: str | None = None) -> dict[str, Any]:
        """Record `quantity` units of `metric` for `customer` (see `Usage.record`)."""
        return await self._client.request(_core.record_call(
            customer=customer, metric=metric, quantity=quantity, unit_price=unit_price, meta=meta,
            session=session, feature=feature, idempotency_key=idempotency_key))

    async def record_batch(self, records: Iterable[Mapping[str, Any]], *, customer: str | None = None
                           ) -> list[dict[str, Any]]:
        """Record up to 1,000 records in one call, all or nothing (see `Usage.record_batch`)."""
        return await self._client.request(_core.record_batch_call(records, customer))

    async def summary(self, customer: str | None = None) -> dict[str, Any]:
        """The customer's open period, plus `total` (see `Usage.summary`)."""
        return await self._client.request(_core.summary_call(customer))

    async def events(self, customer: str | None = None, *, from_: datetime | date | str | int | None = None,
                     to: datetime | date | str | int | None = None, session: str | None = None,
                     model: str | None = None, feature: str | None = None, period: str | None = None
                     ) -> list[dict[str, Any]]:
        """The customer's usage events, filtered (see `Usage.events`)."""
        return await self._client.request(_core.events_call(
            customer, from_=from_, to=to, session=session, model=model, feature=feature, period=period))

    async def export_csv(self, customer: str | None = None, *, from_: datetime | date | str | int | None = None,
                         to: datetime | date | str | int | None = None, session: str | None = None,
                         model: str | None = None, feature: str | None = None, period: str | None = None) -> str:
        """The same events as `events`, as CSV text."""
        return await self._client.request(_core.events_call(
            customer, from_=from_, to=to, session=session, model=model, feature=feature, period=period,
            format="csv"))


class AsyncBilling:
    """`pw.billing` of `AsyncPayware`: the methods of `payware.Billing`, awaited."""

    def __init__(self, client: AsyncPayware):
        self._client = client

    async def cap(self, customer: str | None = None) -> dict[str, Any]:
        """The caps in force for the customer and what is spent, held and remaining."""
        return await self._client.request(_core.cap_call(customer))

    async def set_cap(self, customer: str | None, amount: Number | None) -> dict[str, Any]:
        """Set the customer's own cap (at most the operator's); `None` removes it."""
        return await self._client.request(_core.set_cap_call(customer, amount))

    async def statements(self, customer: str | None = None) -> list[dict[str, Any]]:
        """The customer's closed periods, newest first, with line items."""
        return await self._client.request(_core.statements_call(customer))
