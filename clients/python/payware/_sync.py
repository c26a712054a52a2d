"""The synchronous client, on the standard library's `urllib.request`."""

from __future__ import annotations

import http.client
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from datetime import date, datetime
from typing import Any

from . import _core
from ._core import Call, Number, Options, Response
from ._errors import APIConnectionError, APITimeoutError, error_from


class UrllibTransport:
    """Sends one HTTP request with `urllib.request` (proxies from the environment apply)."""

    def __init__(self) -> None:
        self._opener = urllib.request.build_opener()

    def send(self, method: str, url: str, headers: Mapping[str, str], body: bytes | None,
             timeout: float) -> Response:
        """One attempt; raises APIConnectionError (or APITimeoutError) when no answer arrives."""
        request = urllib.request.Request(url, data=body, headers=dict(headers), method=method)
        try:
            with self._opener.open(request, timeout=timeout) as resp:
                return Response(resp.status, _lower(resp.headers.items()), resp.read())
        except urllib.error.HTTPError as exc:  # an answer, with an error status
            with exc:
                return Response(exc.code, _lower(exc.headers.items()), exc.read())
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, (TimeoutError, socket.timeout)):
                raise APITimeoutError(f"no answer from {url} within {timeout}s") from exc
            raise APIConnectionError(f"cannot reach {url}: {exc.reason}") from exc
        except (TimeoutError, socket.timeout) as exc:
            raise APITimeoutError(f"no answer from {url} within {timeout}s") from exc
        except (OSError, http.client.HTTPException) as exc:
            raise APIConnectionError(f"connection to {url} failed: {exc!r}") from exc


def _lower(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    return {name.lower(): value for name, value in items}


class Payware:
    """A client of Payware's usage and billing API.

    `Payware("pk_...", base_url="http://127.0.0.1:8080")`: the key is the admin key
    (`server.admin_key`), which names the customer on every call, or a customer key, which
    reads its own data. Without arguments the key comes from `PAYWARE_API_KEY` and the URL
    from `PAYWARE_BASE_URL`. Each call is retried up to `max_retries` times on a connection
    error, a timeout, a 429 or a 5xx, with backoff; a record call resends the same
    idempotency key, so it is kept once however often it is sent.
    """

    def __init__(self, api_key: str | None = None, *, base_url: str | None = None,
                 timeout: float | None = None, max_retries: int = _core.DEFAULT_MAX_RETRIES,
                 transport: UrllibTransport | None = None):
        self._options = Options.resolve(api_key, base_url, timeout, max_retries)
        self._transport = transport or UrllibTransport()
        self.usage = Usage(self)
        self.billing = Billing(self)

    @property
    def base_url(self) -> str:
        """The proxy's URL, without `/v1`."""
        return self._options.base_url

    def request(self, call: Call) -> Any:
        """Send `call`, retrying as the policy says, and return its parsed answer."""
        options = self._options
        url, headers = options.url(call), options.headers(call)
        attempt = 0
        while True:
            try:
                response = self._transport.send(call.method, url, headers, call.body, options.timeout)
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
            time.sleep(delay)
            attempt += 1

    def close(self) -> None:
        """Nothing to release (each call opens its own connection); here for symmetry."""

    def __enter__(self) -> Payware:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Usage:
    """`pw.usage`: record custom usage and read a customer's summary and events."""

    def __init__(self, client: Payware):
        self._client = client

    def record(self, *, customer: str, metric: str, quantity: Number, unit_price: Number | None = None,
               meta: Mapping[str, Any] | None = None, session: str | None = None, feature: str | None = None,
               idempotency_key: str | None = None) -> dict[str, Any]:
        """Record `quantity` units of `metric` for `customer`; returns
        `{id, object: "usage.record", metric, quantity, amount, duplicate}`.

        `quantity` and `unit_price` are an int, a Decimal or a decimal string (never a float).
        Without `unit_price` the customer's plan prices the metric. Without `idempotency_key`
        one is generated for this call and reused on each of its retries; give your own (a
        job or step id) to make replays across calls record once too (`duplicate: true`).
        """
        return self._client.request(_core.record_call(
            customer=customer, metric=metric, quantity=quantity, unit_price=unit_price, meta=meta,
            session=session, feature=feature, idempotency_key=idempotency_key))

    def record_batch(self, records: Iterable[Mapping[str, Any]], *, customer: str | None = None
                     ) -> list[dict[str, Any]]:
        """Record up to 1,000 records in one call, all or nothing; returns one result per record.

        Each record is a dict with `record`'s fields (`customer` in each, or once here). Each
        record without an `idempotency_key` gets its own, reused on every retry of the batch.
        """
        return self._client.request(_core.record_batch_call(records, customer))

    def summary(self, customer: str | None = None) -> dict[str, Any]:
        """The customer's open period as `GET /v1/usage/summary` shows it (period, tokens,
        amount_due, cap, by_model, …), plus `total`: the tokens' total (`tokens.total`)."""
        return self._client.request(_core.summary_call(customer))

    def events(self, customer: str | None = None, *, from_: datetime | date | str | int | None = None,
               to: datetime | date | str | int | None = None, session: str | None = None,
               model: str | None = None, feature: str | None = None, period: str | None = None
               ) -> list[dict[str, Any]]:
        """The customer's usage events (the ledger's evidence), oldest first, filtered by time
        (`from_`, `to`), `session`, `model`, `feature` or `period`. Money stays decimal strings."""
        return self._client.request(_core.events_call(customer, from_=from_, to=to, session=session, model=model,
                                                      feature=feature, period=period))

    def export_csv(self, customer: str | None = None, *, from_: datetime | date | str | int | None = None,
                   to: datetime | date | str | int | None = None, session: str | None = None,
                   model: str | None = None, feature: str | None = None, period: str | None = None) -> str:
        """The same events as `events`, as the CSV text Payware exports."""
        return self._client.request(_core.events_call(customer, from_=from_, to=to, session=session, model=model,
                                                      feature=feature, period=period, format="csv"))


class Billing:
    """`pw.billing`: a customer's spend cap and closed statements."""

    def __init__(self, client: Payware):
        self._client = client

    def cap(self, customer: str | None = None) -> dict[str, Any]:
        """The caps in force for the customer and what is spent, held and remaining."""
        return self._client.request(_core.cap_call(customer))

    def set_cap(self, customer: str | None, amount: Number | None) -> dict[str, Any]:
        """Set the customer's own cap (at most the operator's); `None` removes it. Returns `cap()`."""
        return self._client.request(_core.set_cap_call(customer, amount))

    def statements(self, customer: str | None = None) -> list[dict[str, Any]]:
        """The customer's closed periods, newest first, each with its line items and total."""
        return self._client.request(_core.statements_call(customer))
