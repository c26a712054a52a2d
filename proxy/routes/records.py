"""`POST /v1/usage/records`: custom usage (agent actions, API calls, compute minutes, …).

A body is one record or a batch (`{"records": [...]}` or a list). Every record is checked
before any is kept: one bad record refuses the whole call and changes nothing. A record with
an `idempotency_key` is kept once, however often and however concurrently it is replayed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation

from aiohttp import web

from config.schema import CustomerConfig, PlanConfig
from metering.store.events import UsageEvent, decimal_str, money_str, new_event_id, utcnow
from metering.limits.budget import MAX_UNITS, NANO, to_units
from metering.billing.plans import Rated, rate_metric, uses_position
from proxy.appkeys import GATE, LIVE, METER, RECORDER
from proxy.auth import Caller
from metering.store.bounds import PAYWARE_META, TEXT_COLUMNS, is_clean, is_clean_json
from proxy.errors import Conflict, Forbidden, InvalidRequest
from proxy.jsonbody import parse_json, read_body
from proxy.recording import count_event

log = logging.getLogger(__name__)

_METRIC = re.compile(r"[a-z][a-z0-9_.:-]{0,63}")
_FIELDS = {"metric", "quantity", "unit_price", "meta", "idempotency_key", "customer", "session", "feature"}
MAX_BATCH = 1000
MAX_DECIMALS = 9
MAX_VALUE = Decimal(10) ** 9  # a quantity or a unit price; their product stays far inside the ledger's range


@dataclass(slots=True)
class _Record:
    metric: str
    quantity: Decimal
    unit_price: Decimal | None
    meta: dict
    idempotency_key: str | None
    session: str | None
    feature: str | None


async def post_records(request: web.Request) -> web.Response:
    app = request.app
    caller = app[LIVE].keyring.caller(request)
    body = parse_json(await read_body(request), parse_float=Decimal)
    items, batch = _items(body)
    customer = _customer(app, caller, body if isinstance(body, dict) else {}, items)
    plan = app[LIVE].config.plans[customer.plan]
    records = [_record(item, f"records[{i}]." if batch else "", plan) for i, item in enumerate(items)]
    priced = [_price(plan, record, f"records[{i}]." if batch else "") for i, record in enumerate(records)]
    stored = await _stored(app, caller, customer, records, batch)
    # NOTE: every record is checked and priced above, before the first one is kept; once keeping
    # starts it finishes even if the client leaves (a spend applied without its event would make
    # a replay a "duplicate" that nothing bills)
    results = await asyncio.shield(_keep_all(app, caller, customer, plan, records, priced, stored))
    return web.json_response({"object": "list", "data": results} if batch else results[0])


def _items(body: object) -> tuple[list[dict], bool]:
    if isinstance(body, list):
        items, batch = body, True
    elif isinstance(body, dict) and "records" in body:
        items, batch = body["records"], True
    else:
        items, batch = [body], False
    if not isinstance(items, list) or not items:
        raise InvalidRequest("records must be a non-empty list", param="records")
    if len(items) > MAX_BATCH:
        raise InvalidRequest(f"at most {MAX_BATCH} records per call", param="records")
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise InvalidRequest("each record must be an object", param=f"records[{i}]" if batch else None)
    return items, batch


def _customer(app: web.Application, caller: Caller, body: dict, items: list[dict]) -> CustomerConfig:
    """The customer billed: the one the merchant (admin key) names.

    Usage is the merchant's to report. A customer key may record only when its plan says
    `self_report: true`, and then only for itself, without a price of its own.
    """
    given = [item.get("customer") for item in items] + ([body.get("customer")] if "records" in body else [])
    if not all(name is None or isinstance(name, str) for name in given):
        raise InvalidRequest("customer must be a string", param="customer")
    named = {name for name in given if name is not None}
    if not caller.admin:
        if not app[LIVE].config.plans[caller.customer.plan].self_report:
            raise Forbidden("usage records come from the merchant: send them with the admin key, naming the "
                            "customer (this customer's plan does not allow self-reporting)")
        if named - {caller.customer.id}:
            raise Forbidden("a customer key records usage for its own customer only", param="customer")
        for i, item in enumerate(items):
            if item.get("unit_price") is not None:
                raise Forbidden("a customer cannot price its own usage: the plan prices self-reported records",
                                param=f"records[{i}].unit_price" if len(items) > 1 else "unit_price")
        return caller.customer
    if len(named) != 1:
        raise InvalidRequest("the admin key must name exactly one customer", param="customer")
    customer = app[LIVE].config.customers.get(named.pop())
    if customer is None:
        raise InvalidRequest("no such customer", param="customer", code="customer_not_found")
    return customer


def _record(item: dict, where: str, plan: PlanConfig) -> _Record:
    unknown = set(item) - _FIELDS
    if unknown:
        raise InvalidRequest(f"unknown field {sorted(unknown)[0]!r}", param=where + sorted(unknown)[0])
    metric = item.get("metric")
    if not isinstance(metric, str) or not _METRIC.fullmatch(metric) or metric == "tokens":
        raise InvalidRequest("metric must be a lowercase name such as \"agent_actions\" (not \"tokens\")",
                             param=where + "metric")
    quantity = _decimal(item.get("quantity"), where + "quantity", required=True)
    unit_price = _decimal(item.get("unit_price"), where + "unit_price", required=False)
    if unit_price is None and metric not in plan.metric_prices and not (plan.tiers and plan.tiers.metric == metric):
        raise InvalidRequest(f"unknown metric {metric!r}: plan {plan.name!r} has no price for it; "
                             "give unit_price or add it to the plan's price.metrics", param=where + "metric",
                             code="unknown_metric")
    meta = item.get("meta", {})
    if not isinstance(meta, dict) or len(json.dumps(meta, default=str)) > 4096:
        raise InvalidRequest("meta must be an object of at most 4 KB", param=where + "meta")
    if not is_clean_json(meta):
        raise InvalidRequest("meta must hold valid UTF-8 text without NUL, at most 16 levels deep",
                             param=where + "meta")
    ours = sorted(PAYWARE_META.intersection(meta) | ({"idempotency_key"} & meta.keys()))
    if ours:  # NOTE: evidence Payware writes itself (a record's key, a lost quota position): never a client's
        raise InvalidRequest(f"meta.{ours[0]} is a name Payware writes itself", param=where + "meta." + ours[0])
    key = item.get("idempotency_key")
    if key is not None and (not isinstance(key, str) or not 1 <= len(key) <= 255 or not is_clean(key)):
        raise InvalidRequest("idempotency_key must be a string of 1 to 255 characters (UTF-8, no NUL)",
                             param=where + "idempotency_key")
    strings = {}
    for name in ("session", "feature"):
        value = item.get(name)
        if value is not None and (not isinstance(value, str) or len(value) > TEXT_COLUMNS[name]
                                  or not is_clean(value)):
            raise InvalidRequest(f"{name} must be a string of at most {TEXT_COLUMNS[name]} characters "
                                 "(UTF-8, no NUL)", param=where + name)
        strings[name] = value
    return _Record(metric, quantity, unit_price, _plain(meta), key, strings["session"], strings["feature"])


def _decimal(value: object, param: str, *, required: bool) -> Decimal | None:
    if value is None:
        if required:
            raise InvalidRequest(f"{param} is required", param=param)
        return None
    if isinstance(value, bool) or not isinstance(value, (int, Decimal, str)):
        raise InvalidRequest(f"{param} must be a number or a decimal string", param=param)
    try:
        number = Decimal(value)
    except InvalidOperation:
        raise InvalidRequest(f"{param} {value!r} is not a number", param=param) from None
    if not number.is_finite() or number < 0:
        raise InvalidRequest(f"{param} must be a finite number of zero or more", param=param)
    if number.as_tuple().exponent < -MAX_DECIMALS:
        raise InvalidRequest(f"{param} has more than {MAX_DECIMALS} decimal places", param=param)
    if number > MAX_VALUE:
        raise InvalidRequest(f"{param} is too large (at most {MAX_VALUE})", param=param)
    return number


def _plain(meta: dict) -> dict:
    """JSON-safe copy (Decimals parsed from the body become strings)."""
    return json.loads(json.dumps(meta, default=str))


def _price(plan: PlanConfig, record: _Record, where: str) -> Rated:
    """The record priced at the period's start: proves it can be priced; a replay's answer."""
    try:
        rated = rate_metric(plan, record.metric, record.quantity, Decimal(0), record.unit_price)
    except ValueError as exc:
        raise InvalidRequest(str(exc), param=where + "metric") from None
    if to_units(rated.amount) > MAX_UNITS:  # NOTE: the spend counters could not add it (a 500 after checks)
        raise InvalidRequest(f"the record's amount {money_str(rated.amount)} is more than the counters hold "
                             f"({money_str(Decimal(MAX_UNITS) / NANO)})",
                             param=where + ("unit_price" if record.unit_price is not None else "quantity"))
    return rated


async def _stored(app: web.Application, caller: Caller, customer: CustomerConfig, records: list[_Record],
                  batch: bool) -> dict[str, UsageEvent]:
    """The events the ledger holds for the records' idempotency keys, by id; a 409 for a key
    used before, or twice in this call, for another record (its metric or quantity): a replay
    repeats its record, and its answer is the record kept then, never figures billed nowhere."""
    first: dict[str, _Record] = {}
    for i, record in enumerate(records):
        if record.idempotency_key is not None:
            seen = first.setdefault(_event_id(caller, customer, record), record)
            if (seen.metric, seen.quantity) != (record.metric, record.quantity):
                raise _reused(record, seen.metric, seen.quantity, f"records[{i}]." if batch else "")
    if not first:
        return {}
    ledger = app[RECORDER].ledger
    stored = await asyncio.get_running_loop().run_in_executor(None, ledger.events_by_id, list(first))
    for i, record in enumerate(records):
        event = stored.get(_event_id(caller, customer, record)) if record.idempotency_key is not None else None
        if event is not None and (event.metric, event.quantity) != (record.metric, record.quantity):
            raise _reused(record, event.metric, event.quantity, f"records[{i}]." if batch else "")
    return stored


def _reused(record: _Record, metric: str, quantity: Decimal, where: str) -> Conflict:
    return Conflict(f"idempotency_key {record.idempotency_key!r} names a record of {decimal_str(quantity)} "
                    f"{metric}, not of {decimal_str(record.quantity)} {record.metric}: a key names one record",
                    param=where + "idempotency_key", code="idempotency_key_reused")


async def _keep_all(app: web.Application, caller: Caller, customer: CustomerConfig, plan: PlanConfig,
                    records: list[_Record], priced: list[Rated], stored: dict[str, UsageEvent]) -> list[dict]:
    """Keep a call's records, in order, in a few round trips however many there are.

    A threshold plan's period may close on any record, and the next one then belongs to the
    new period: its records go one at a time.
    """
    step = 1 if plan.interval == "threshold" else len(records)
    views: list[dict] = []
    for start in range(0, len(records), step):
        views += await _keep_run(app, caller, customer, plan, records[start:start + step],
                                 priced[start:start + step], stored)
    return views


async def _keep_run(app: web.Application, caller: Caller, customer: CustomerConfig, plan: PlanConfig,
                    records: list[_Record], priced: list[Rated], stored: dict[str, UsageEvent]) -> list[dict]:
    """Keep `records`, all in the period open now (`stored`: what the ledger held of their
    keys): the positions claimed together, then the spends, then the counters (on Redis, a
    round trip each)."""
    recorder, budget = app[RECORDER], app[GATE].budget
    now = utcnow()
    period = app[METER].period(customer, now).key
    scopes = ("customer",) + ((f"key:{caller.key_id}",) if caller.key_id in customer.key_caps else ())
    ids = [_event_id(caller, customer, record) for record in records]
    # NOTE: the budget store's per-period "applied" set makes the first writer of an id win,
    # atomically across proxies (and within this batch: scripts issued together run in order);
    # the ledger check covers replays after a restart, and the budget's own list those whose
    # spend it has yet to apply (kept while the store did not answer).
    keyed = [event_id for event_id, record in zip(ids, records) if record.idempotency_key is not None]
    known: set[str] = set()
    if keyed:
        known = {event_id for event_id in keyed if event_id in stored}
        known |= budget.owed(keyed)  # NOTE: after the ledger: a spend applied meanwhile is in the store
    fresh, seen = [], set(known)
    for i, event_id in enumerate(ids):
        if event_id not in seen:  # NOTE: a key twice in one batch: the first is the record, the rest replays
            seen.add(event_id)
            fresh.append(i)
    # Quota or tiers on the metric: each record priced where it lands, before its spend counts
    # against the caps (priced at the period's start, 100 included actions made 8 more free)
    rated = list(priced)
    placed = [i for i in fresh if records[i].unit_price is None and uses_position(plan, records[i].metric)]
    positions, claim_error = await _together(
        recorder.counters.claim(customer.id, period, records[i].metric, records[i].quantity) for i in placed)
    unknown = set()
    for i, position in zip(placed, positions):
        if isinstance(position, BaseException):  # NOTE: never lose the record: billed past the quota, flagged
            position = Decimal(plan.included.get(records[i].metric, 0))
            unknown.add(i)
        rated[i] = rate_metric(plan, records[i].metric, records[i].quantity, position, None)
    if claim_error is not None:
        log.error("the quota position of %d usage record(s) of %s is unknown (%s): billed past the included "
                  "quota", len(unknown), customer.id, type(claim_error).__name__)
    applied, spend_error = await _together(
        budget.add_spent(customer=customer.id, period=period, scopes=scopes, units=to_units(rated[i].amount),
                         event_id=ids[i]) for i in fresh)
    # NOTE: a spend whose answer did not come may have been applied all the same (the answer
    # lost on the way), and the budget applies it by id once the store answers anyway: its
    # record is kept, as a model call's event is kept before its settlement, so a replay can
    # never find the spend applied and no event to bill. Only the store's "applied before" is
    # a duplicate.
    kept = [i for i, outcome in zip(fresh, applied) if outcome is not False]
    if spend_error is not None:
        log.error("the spend of %d usage record(s) of %s did not reach the budget store (%s): kept, and "
                  "counted against caps once the store answers", sum(isinstance(o, BaseException) for o in applied),
                  customer.id, type(spend_error).__name__)
    kept_ids = set(kept)
    # A replay racing its first (another request, at once) took a place it must give back
    given_back = [i for i in placed if i not in kept_ids and i not in unknown]
    if given_back:
        await _together(recorder.counters.claim(customer.id, period, records[i].metric, -records[i].quantity)
                        for i in given_back)
    events = [_event(caller, customer, plan, records[i], rated[i], ids[i], period, now, i in unknown)
              for i in kept]
    for event in events:
        recorder.keep(event)
    await asyncio.gather(*(count_event(app, event, customer) for event in events))
    return [_view(ids[i], records[i], rated[i], duplicate=False) if i in kept_ids
            else _stored_view(stored[ids[i]]) if ids[i] in stored
            else _view(ids[i], records[i], rated[i], duplicate=True) for i in range(len(records))]


async def _together(calls: Iterable[Awaitable]) -> tuple[list, BaseException | None]:
    """Every call's outcome (a value or its error), issued at once: on Redis their scripts share
    a round trip. Also the first error, for the caller's log."""
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    return outcomes, next((o for o in outcomes if isinstance(o, BaseException)), None)


def _event_id(caller: Caller, customer: CustomerConfig, record: _Record) -> str:
    if record.idempotency_key is None:
        return new_event_id("rec_")
    # NOTE: a self-reporting customer's keys live apart from the merchant's: a customer who
    # guesses the merchant's next key cannot make the merchant's record a "replay".
    space = "" if caller.admin else "\0self"
    digest = hashlib.sha256(f"{customer.id}{space}\0{record.idempotency_key}".encode()).hexdigest()
    return "rec_" + digest[:32]


def _event(caller: Caller, customer: CustomerConfig, plan: PlanConfig, record: _Record, rated: Rated,
           event_id: str, period: str, now: datetime, position_unknown: bool) -> UsageEvent:
    meta = dict(record.meta)
    if record.idempotency_key is not None:
        meta["idempotency_key"] = record.idempotency_key
    if position_unknown:
        meta["position_unknown"] = True
    return UsageEvent(
        id=event_id, ts=now, customer=customer.id, key_id=None if caller.admin else caller.key_id,
        metric=record.metric, quantity=record.quantity, period=period, endpoint="records",
        cost=Decimal(0), amount=rated.amount, currency=plan.currency, session=record.session,
        feature=record.feature, meta=meta, pricing=rated.pricing,
        usage_source={"quantity": "api", "priced_by": "record" if record.unit_price is not None else "plan"})


def _stored_view(event: UsageEvent) -> dict:
    """A replay's answer: the record kept then, as billed."""
    return {"id": event.id, "object": "usage.record", "metric": event.metric, "quantity": decimal_str(event.quantity),
            "amount": money_str(event.amount), "duplicate": True}


def _view(event_id: str, record: _Record, priced: Rated, *, duplicate: bool) -> dict:
    return {"id": event_id, "object": "usage.record", "metric": record.metric,
            "quantity": decimal_str(record.quantity), "amount": money_str(priced.amount),
            "duplicate": duplicate}
