"""What the sync and async clients share: the calls, their encoding, and the retry policy.

A `Call` is one logical API call: its method, path, query, body (encoded once, so every retry
sends the same bytes, the same idempotency keys included) and how to read its answer. The
clients differ only in how they send it and how they wait between attempts.
"""

from __future__ import annotations

import json
import os
import random
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timezone
from decimal import Decimal
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlencode

VERSION = "0.1.0"
DEFAULT_BASE_URL = "http://127.0.0.1:8080"
DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_RETRIES = 2
MAX_RETRY_AFTER = 60.0  # a longer Retry-After is not waited for: the backoff applies instead
_RECORD_FIELDS = ("customer", "metric", "quantity", "unit_price", "meta", "session", "feature", "idempotency_key")

Number = int | Decimal | str


@dataclass(frozen=True, slots=True)
class Response:
    """An HTTP answer as a transport got it; header names in lower case."""

    status: int
    headers: Mapping[str, str]
    body: bytes


@dataclass(frozen=True, slots=True)
class Call:
    """One logical API call, sent once or retried as is."""

    method: str
    path: str
    parse: Callable[[Response], Any]
    query: Mapping[str, str] | None = None
    body: bytes | None = None


@dataclass(frozen=True, slots=True)
class Options:
    """A client's settings, resolved from its arguments and the environment."""

    api_key: str
    base_url: str
    timeout: float
    max_retries: int

    @classmethod
    def resolve(cls, api_key: str | None, base_url: str | None, timeout: float | None,
                max_retries: int) -> Options:
        key = api_key or os.environ.get("PAYWARE_API_KEY")
        if not key:
            raise ValueError("give the Payware key: Payware(\"pk_...\") or set PAYWARE_API_KEY")
        if max_retries < 0:
            raise ValueError("max_retries must be 0 or more")
        url = (base_url or os.environ.get("PAYWARE_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        url = url.removesuffix("/v1")  # an OpenAI-style base URL works too
        return cls(api_key=key, base_url=url, timeout=DEFAULT_TIMEOUT if timeout is None else timeout,
                   max_retries=max_retries)

    def url(self, call: Call) -> str:
        query = f"?{urlencode(call.query)}" if call.query else ""
        return self.base_url + call.path + query

    def headers(self, call: Call) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.api_key}", "Accept": "application/json",
                   "User-Agent": f"payware-python/{VERSION}"}
        if call.body is not None:
            headers["Content-Type"] = "application/json"
        return headers


# -- retry policy -------------------------------------------------------------------------------

def retry_delay(attempt: int, response: Response | None) -> float | None:
    """Seconds to wait before the next attempt, or None if this outcome is final.

    `response` is None for a connection error or a timeout: retried. 429 and 5xx are retried
    unless the answer says `x-should-retry: false` or the spend cap is reached; any other 4xx
    is final. `Retry-After` (seconds or an HTTP date, up to a minute) is honoured.
    """
    if response is not None:
        if not (response.status == 429 or response.status >= 500):
            return None
        if response.headers.get("x-should-retry", "").lower() == "false" or _code(response) == "spend_cap_reached":
            return None
        waited = _retry_after(response.headers)
        if waited is not None:
            return waited
    return backoff(attempt)


def backoff(attempt: int) -> float:
    """Exponential backoff with jitter: about 0.5 s, 1 s, 2 s, … up to 8 s."""
    return min(0.5 * 2 ** attempt, 8.0) * (0.75 + random.random() / 4)


def _retry_after(headers: Mapping[str, str]) -> float | None:
    try:
        if "retry-after-ms" in headers:
            seconds = float(headers["retry-after-ms"]) / 1000
        elif "retry-after" in headers:
            value = headers["retry-after"].strip()
            try:
                seconds = float(value)
            except ValueError:
                seconds = (parsedate_to_datetime(value) - datetime.now(tz=timezone.utc)).total_seconds()
        else:
            return None
    except (TypeError, ValueError):
        return None
    return max(seconds, 0.0) if seconds <= MAX_RETRY_AFTER else None


def _code(response: Response) -> str | None:
    try:
        error = json.loads(response.body).get("error")
        return error.get("code") if isinstance(error, dict) else None
    except (ValueError, AttributeError):
        return None


# -- encoding -------------------------------------------------------------------------------------

def number(value: Number, name: str) -> int | str:
    """An exact quantity or price for the wire: an int as is, a Decimal or a str as text.

    NOTE: floats are refused, not converted: 0.1 + 0.2 is not 0.3, and money is exact.
    """
    if isinstance(value, bool) or not isinstance(value, (int, Decimal, str)):
        raise TypeError(f"{name} must be an int, a Decimal or a decimal string (not {type(value).__name__}); "
                        f"write {name}=\"0.25\" or Decimal(\"0.25\")")
    if isinstance(value, Decimal):
        return format(value, "f")  # plain digits, never an exponent
    return value


def record_body(*, customer: str | None, metric: str, quantity: Number, unit_price: Number | None = None,
                meta: Mapping[str, Any] | None = None, session: str | None = None, feature: str | None = None,
                idempotency_key: str | None = None) -> dict[str, Any]:
    """One record as the API takes it, with an idempotency key generated when none is given."""
    body: dict[str, Any] = {"metric": metric, "quantity": number(quantity, "quantity"),
                            "idempotency_key": idempotency_key or new_idempotency_key()}
    if customer is not None:
        body["customer"] = customer
    if unit_price is not None:
        body["unit_price"] = number(unit_price, "unit_price")
    if meta is not None:
        body["meta"] = dict(meta)
    if session is not None:
        body["session"] = session
    if feature is not None:
        body["feature"] = feature
    return body


def new_idempotency_key() -> str:
    """A fresh key for one logical record call (kept for all of that call's retries)."""
    return "pwc_" + uuid.uuid4().hex


def dumps(body: Any) -> bytes:
    return json.dumps(body, default=_json_default, separators=(",", ":")).encode()


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def loads(body: bytes) -> Any:
    """JSON with every non-integer number read as a Decimal, never a float."""
    return json.loads(body, parse_float=Decimal)


def _instant(value: datetime | date | str | int | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # a unix timestamp
    raise TypeError("from_/to must be a datetime, a date, an ISO 8601 string or a unix timestamp")


def _query(customer: str | None, **params: str | None) -> dict[str, str]:
    query = {"customer": customer} if customer is not None else {}
    query.update({name: value for name, value in params.items() if value is not None})
    return query


# -- the calls ----------------------------------------------------------------------------------

def _json(response: Response) -> Any:
    return loads(response.body)


def _data(response: Response) -> list[dict[str, Any]]:
    return loads(response.body)["data"]


def _summary(response: Response) -> dict[str, Any]:
    summary = loads(response.body)
    tokens = summary.get("tokens")
    if isinstance(tokens, dict) and "total" in tokens:
        summary.setdefault("total", tokens["total"])  # the issue's `summary(...)["total"]`
    return summary


def _jsonl(response: Response) -> list[dict[str, Any]]:
    return [loads(line) for line in response.body.splitlines() if line.strip()]


def _text(response: Response) -> str:
    return response.body.decode("utf-8")


def record_call(**record: Any) -> Call:
    return Call("POST", "/v1/usage/records", _json, body=dumps(record_body(**record)))


def record_batch_call(records: Iterable[Mapping[str, Any]], customer: str | None) -> Call:
    items = []
    for i, record in enumerate(records):
        unknown = set(record) - set(_RECORD_FIELDS)
        if unknown:
            raise TypeError(f"records[{i}]: unknown field {sorted(unknown)[0]!r}")
        items.append(record_body(**{"customer": None, **record}))
    if not items:
        raise ValueError("record_batch needs at least one record")
    body: dict[str, Any] = {"records": items}
    if customer is not None:
        body["customer"] = customer
    return Call("POST", "/v1/usage/records", _data, body=dumps(body))


def summary_call(customer: str | None) -> Call:
    return Call("GET", "/v1/usage/summary", _summary, query=_query(customer))


def events_call(customer: str | None, *, from_: Any, to: Any, session: str | None, model: str | None,
                feature: str | None, period: str | None, format: str = "jsonl") -> Call:
    query = _query(customer, **{"from": _instant(from_), "to": _instant(to)}, session=session, model=model,
                   feature=feature, period=period, format=format)
    return Call("GET", "/v1/usage/events", _jsonl if format == "jsonl" else _text, query=query)


def cap_call(customer: str | None) -> Call:
    return Call("GET", "/v1/billing/cap", _json, query=_query(customer))


def set_cap_call(customer: str | None, amount: Number | None) -> Call:
    value = None if amount is None else number(amount, "amount")
    return Call("PUT", "/v1/billing/cap", _json, query=_query(customer),
                body=dumps({"amount": None if value is None else str(value)}))


def statements_call(customer: str | None) -> Call:
    return Call("GET", "/v1/billing/statements", _data, query=_query(customer))
