"""Reads of the ledger the faces show: a period's days, the latest events, statements as CSV.

Synchronous (the callers run them in a worker thread). Money is summed as `Decimal` here,
never in SQL (SQLite keeps it as text), and only the columns a view needs are selected.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

from sqlmodel import or_, select

from metering.billing.periods import Period
from metering.store.events import money_str
from metering.store.ledger import EventRow, Ledger

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
MAX_PAGE = 100


def daily(ledger: Ledger, customer: str, period: Period) -> list[dict]:
    """Each day of `period` (in its own time zone), with its requests, tokens and amount."""
    tz = period.start.tzinfo
    first, last = period.start.date(), (period.end - timedelta(microseconds=1)).astimezone(tz).date()
    days: dict[date, dict] = {}
    day = first
    while day <= last:
        days[day] = {"date": day.isoformat(), "requests": 0, "input": 0, "output": 0, "amount": Decimal(0)}
        day += timedelta(days=1)
    query = (select(EventRow.ts_us, EventRow.input_tokens, EventRow.output_tokens, EventRow.amount)
             .where(EventRow.customer == customer, EventRow.period == period.key))
    with ledger.engine.connect() as conn:
        for ts_us, input_tokens, output_tokens, amount in conn.execute(query):
            local = (_EPOCH + timedelta(microseconds=ts_us)).astimezone(tz).date()
            bucket = days.get(local)
            if bucket is None:  # an event admitted just before the end and finished after it
                bucket = days[max(first, min(local, last))]
            bucket["requests"] += 1
            bucket["input"] += input_tokens
            bucket["output"] += output_tokens
            bucket["amount"] += amount
    return [{**d, "tokens": d["input"] + d["output"], "amount": money_str(d["amount"])} for d in days.values()]


def latest(ledger: Ledger, customer: str, *, limit: int, before: str | None) -> tuple[list[dict], str | None]:
    """The customer's events, newest first, `limit` of them after the cursor `before`; and the next cursor."""
    query = select(EventRow).where(EventRow.customer == customer)
    if before:
        ts_us, event_id = _cursor(before)
        query = query.where(or_(EventRow.ts_us < ts_us, (EventRow.ts_us == ts_us) & (EventRow.id < event_id)))
    query = query.order_by(EventRow.ts_us.desc(), EventRow.id.desc()).limit(limit + 1)
    with ledger.engine.connect() as conn:
        rows = list(conn.execute(query))
    more = len(rows) > limit
    rows = rows[:limit]
    events = [_event(row) for row in rows]
    return events, (f"{rows[-1].ts_us}:{rows[-1].id}" if more else None)


_MAX_TS_US = 2**63 - 1  # the ledger's integers are 64-bit (SQLite's, PostgreSQL's BIGINT)


def _cursor(text: str) -> tuple[int, str]:
    """`<ts_us>:<event id>`, as `latest` gives it; ValueError for anything else.

    NOTE: a time past 64 bits overflowed SQLite's parameter binding (a 500); an id that is not
    printable ASCII (ids are) could fail its encoding there too.
    """
    ts, sep, event_id = text.partition(":")
    if (not sep or not ts.isascii() or not ts.isdigit() or len(ts) > 19 or not event_id or len(event_id) > 128
            or not event_id.isascii() or not event_id.isprintable()):
        raise ValueError("not a cursor")
    ts_us = int(ts)
    if ts_us > _MAX_TS_US:
        raise ValueError("not a cursor")
    return ts_us, event_id


def _event(row) -> dict:
    return {"id": row.id, "ts": (_EPOCH + timedelta(microseconds=row.ts_us)).isoformat(), "metric": row.metric,
            "model": row.model, "endpoint": row.endpoint, "stream": row.stream, "status": row.status,
            "estimated": row.estimated, "session": row.session, "feature": row.feature,
            "input_tokens": row.input_tokens, "cached_input_tokens": row.cached_input_tokens,
            "output_tokens": row.output_tokens, "reasoning_tokens": row.reasoning_tokens,
            "amount": money_str(row.amount), "currency": row.currency, "latency_ms": row.latency_ms}


def statement_rows(statements: dict[str, dict]) -> list[dict]:
    """Frozen statements, newest first, as the lists of the faces show them."""
    rows = []
    for key in sorted(statements, reverse=True):
        body = statements[key]
        rows.append({"period": key, "start": body["period"]["start"], "end": body["period"]["end"],
                     "total": body["total"], "currency": body["currency"], "events": body.get("event_count", 0),
                     "plan": body.get("plan")})
    return rows


_STATEMENT_COLUMNS = ("line", "metric", "model", "tier", "quantity", "unit_price", "amount", "currency")


def statement_csv(body: dict) -> str:
    """A statement as CSV: its line items, then base fee, subtotal and the rounded total."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(_STATEMENT_COLUMNS)
    currency = body.get("currency", "")
    for line in body.get("lines", []):
        writer.writerow(["usage", line.get("metric"), line.get("model") or "", line.get("tier") or "",
                         line.get("quantity"), line.get("unit_price") or "", line.get("amount"), currency])
    for name in ("base_fee", "subtotal"):
        writer.writerow([name, "", "", "", "", "", body.get(name, ""), currency])
    for credit in body.get("credits", []):  # what prepaid grants took off (subtotal - credits = total)
        writer.writerow(["credit", credit.get("grant"), "", "", "", "", "-" + credit.get("amount", "0"), currency])
    if "credits_applied" in body:
        writer.writerow(["credits_applied", "", "", "", "", "", body["credits_applied"], currency])
    writer.writerow(["total", "", "", "", "", "", body.get("total", ""), currency])
    if "credit_balance_carried" in body:
        writer.writerow(["credit_balance_carried", "", "", "", "", "", body["credit_balance_carried"], currency])
    writer.writerow(["period", "", "", "", "", "", json.dumps(body.get("period", {}), separators=(",", ":")), ""])
    return buffer.getvalue()
