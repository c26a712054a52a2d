"""Metering endpoints: the real-time summary and the event evidence.

A customer key sees its own data only; the admin key names a customer with `?customer=`.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
from datetime import datetime, timezone
from decimal import Decimal

from aiohttp import web

from metering.limits.counters import Totals
from metering.store.events import decimal_str, money_str, to_us, utcnow
from metering.billing.statements import round_money
from proxy.appkeys import GATE, LIVE, METER, RECORDER
from metering.limits.outages import store_down
from proxy.errors import InvalidRequest, counters_unavailable

_CSV_COLUMNS = ("id", "ts", "customer", "key_id", "metric", "quantity", "model", "upstream_model", "provider",
                "endpoint", "stream", "input_tokens", "cached_input_tokens", "cache_write_tokens", "cache_write_1h_tokens",
                "output_tokens", "reasoning_tokens",
                "cost", "amount", "currency", "session", "feature", "status", "estimated", "latency_ms", "period",
                "meta", "pricing", "usage_source", "raw_usage")


def _tokens(totals: Totals) -> dict:
    return {"input": totals.input_tokens, "cached_input": totals.cached_input_tokens,
            "cache_write": totals.cache_write_tokens, "cache_write_1h": totals.cache_write_1h_tokens,
            "output": totals.output_tokens, "reasoning": totals.reasoning_tokens,
            "total": totals.input_tokens + totals.output_tokens}


async def usage_summary(request: web.Request) -> web.Response:
    """`GET /v1/usage/summary`: the open period, including every response that has ended."""
    customer = request.app[LIVE].keyring.subject(request)
    return web.json_response(await summary_of(request.app, customer))


async def summary_of(app: web.Application, customer, *, at=None) -> dict:
    """A customer's period (the open one, or the one holding `at`), from the real-time counters."""
    plan = app[LIVE].config.plans[customer.plan]
    period = app[METER].period(customer, at or utcnow())
    try:
        totals = await app[RECORDER].counters.totals(customer.id, period.key)
    except store_down():
        raise counters_unavailable() from None
    due = plan.base_fee + totals.all.amount
    cap = None
    limit = app[GATE].cap_amount(customer)  # the admin's, or the customer's own when lower
    if limit is not None:
        remaining = max(limit - totals.all.amount, Decimal(0))
        cap = {"amount": money_str(limit), "spent": money_str(totals.all.amount), "remaining": money_str(remaining),
               "action": customer.cap.action if customer.cap else "block",
               "mode": customer.cap.mode if customer.cap else "hard"}
    by_model = [
        {"model": name, "requests": t.requests, "tokens": _tokens(t), "quantity": decimal_str(t.quantity),
         "amount": money_str(t.amount)}
        for name, t in sorted(totals.by_model.items())
    ]
    return {
        "customer": customer.id,
        "plan": plan.name,
        "period": {"start": period.start.isoformat(), "end": period.end.isoformat(), "interval": period.interval},
        "requests": totals.all.requests,
        "tokens": _tokens(totals.all),
        "base_fee": money_str(plan.base_fee),
        "amount_due": str(round_money(due, plan.currency)),
        "amount_due_exact": money_str(due),
        "currency": plan.currency,
        "cap": cap,
        "by_model": by_model,
        # events the ledger refused as they were (kept aside in dead_letters, billed without metadata)
        "evidence": {"kept_aside": app[RECORDER].dead_letters.get(customer.id, 0)},
    }


async def usage_events(request: web.Request) -> web.StreamResponse:
    """`GET /v1/usage/events`: every event with its full metadata, as JSON lines or CSV."""
    customer = request.app[LIVE].keyring.subject(request)
    fmt = request.query.get("format", "jsonl")
    if fmt not in ("jsonl", "csv"):
        raise InvalidRequest("format must be jsonl or csv", param="format")
    kind = "application/x-ndjson" if fmt == "jsonl" else "text/csv"
    return await send_events(request, customer.id, request.query, web.StreamResponse(headers={"Content-Type": kind}),
                             csv_format=fmt == "csv")


async def send_events(request: web.Request, customer: str, query, response: web.StreamResponse, *,
                      csv_format: bool) -> web.StreamResponse:
    """`customer`'s events, filtered by `query` (from, to, session, model, feature, period), sent
    in `response` (not yet prepared: its headers are the caller's) as JSON lines or CSV.

    NOTE: a page at a time, each read and encoded off the event loop: one customer's 100,000
    events, read whole and encoded on it, held 660 MB and delayed every other call by seconds.
    """
    start, end = _instant(query.get("from"), "from"), _instant(query.get("to"), "to")
    recorder = request.app[RECORDER]
    try:
        async with asyncio.timeout(5):
            await recorder.flush()  # the ledger holds every ended response
    except asyncio.TimeoutError:
        pass
    filters = {name: query.get(name) for name in ("session", "model", "feature", "period")}
    ledger, loop = recorder.ledger, asyncio.get_running_loop()

    def page(after: tuple[int, str] | None) -> tuple[bytes, tuple[int, str] | None]:
        """The next page's text, read and written in a worker thread; where the one after starts."""
        events = list(ledger.events(customer=customer, start=start, end=end, after=after, limit=EXPORT_PAGE,
                                    **filters))
        text = _csv_rows(events, header=after is None) if csv_format else "".join(e.to_json() + "\n" for e in events)
        last = (to_us(events[-1].ts), events[-1].id) if len(events) == EXPORT_PAGE else None
        return text.encode(), last

    text, after = await loop.run_in_executor(None, page, None)  # a bad filter fails here, before any byte
    await response.prepare(request)
    await response.write(text)
    while after is not None:
        text, after = await loop.run_in_executor(None, page, after)
        await response.write(text)
    await response.write_eof()
    return response


EXPORT_PAGE = 2000  # events read, written and sent at a time


def _csv_rows(events: list, *, header: bool = False) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    if header:
        writer.writerow(_CSV_COLUMNS)
    for event in events:
        data = json.loads(event.to_json())
        writer.writerow([json.dumps(data[c], separators=(",", ":")) if isinstance(data[c], (dict, list))
                         else "" if data[c] is None else _cell(data[c]) for c in _CSV_COLUMNS])
    return buffer.getvalue()


_NUMBER = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")


def _cell(value: object) -> object:
    """A text cell a spreadsheet would run as a formula (`=`, `+`, `-`, `@`, a tab or a CR first:
    a customer's session header, say) with a `'` before it (OWASP's advice); numbers as they are."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r") and not _NUMBER.fullmatch(value):
        return "'" + value
    return value


def _instant(value: str | None, param: str) -> datetime | None:
    if value is None or value == "":
        return None
    try:
        if value.replace(".", "", 1).isdigit():
            return datetime.fromtimestamp(float(value), tz=timezone.utc)
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except (ValueError, OverflowError):
        raise InvalidRequest(f"{param}={value!r} is not an ISO 8601 time or a unix timestamp", param=param) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
