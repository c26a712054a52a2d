"""Closing periods into statements, and `GET /v1/billing/statements`.

A period closes when its end has passed by a grace time (calls admitted before the end may
still be finishing, and other proxies' journals may hold a few unflushed events); its
statement is then built from the ledger's events, frozen in the ledger (the first one
stands, so proxies racing to close agree), and announced with a `statement.closed` webhook.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import timedelta

from aiohttp import web

from config.schema import CustomerConfig
from metering.store.events import utcnow
from metering.billing.statements import build_statement
from proxy.appkeys import GATE, LIVE, METER, RECORDER

log = logging.getLogger("payware.statements")

CLOSE_EVERY = 60.0  # seconds between two passes of the closing job
CLOSED = web.AppKey("statements_closer", asyncio.Task)


async def close_periods(app: web.Application, customers: list[CustomerConfig] | None = None) -> int:
    """Freeze the statement of every period that has closed (of `customers`, default all);
    returns how many were new."""
    config, meter, recorder = app[LIVE].config, app[METER], app[RECORDER]
    grace = timedelta(seconds=config.server.statement_grace)
    now = utcnow()
    # NOTE: bounded: with the ledger down, statements wait for the next pass, requests do not hang
    async with asyncio.timeout(5):
        await recorder.flush()
    loop = asyncio.get_running_loop()
    closed = 0
    for customer in customers if customers is not None else config.customers.values():
        open_key = meter.period(customer, now).key
        keys = await loop.run_in_executor(None, recorder.ledger.periods, customer.id)
        frozen = await loop.run_in_executor(None, recorder.ledger.statements, customer.id)
        plan = config.plans[customer.plan]
        if keys and plan.base_fee and plan.interval != "threshold":
            # NOTE: a period without usage owes its base fee too: every one since the first
            keys = sorted(set(keys) | set(meter.periods_between(customer, keys[0], open_key)))
        for index, key in enumerate(keys):
            if key in frozen or key == open_key:
                continue
            # a period ends where the next one starts: the next with events, else the open one
            following = keys[index + 1] if index + 1 < len(keys) else open_key
            period = meter.bounds(customer, key, following if following > key else None)
            if period.end + grace > now:
                continue
            events = await loop.run_in_executor(
                None, lambda k=key: list(recorder.ledger.events(customer=customer.id, period=k)))
            drawn, balance = (None, None)
            if plan.credits is not None:  # what the period's usage drew from each grant
                drawn, balance = await app[GATE].credits.at_period_end(customer.id, events, period.end)
            statement = build_statement(customer=customer.id, plan=plan, period_start=period.start,
                                        period_end=period.end, events=events, credits=drawn, credit_balance=balance)
            body = statement.to_json()
            first = await loop.run_in_executor(None, recorder.ledger.save_statement, customer.id, key,
                                               statement.total, body)
            if first:
                closed += 1
                notifier = app[GATE].notifier
                if notifier is not None:
                    await notifier.send(event_type="statement.closed", dedupe_key=f"{{{customer.id}}}:{key}:statement",
                                        data=body)
    return closed


async def closing_job(app: web.Application) -> AsyncIterator[None]:
    """Run `close_periods` at start and every minute."""
    async def loop() -> None:
        while True:
            try:
                count = await close_periods(app)
                if count:
                    log.info("closed %d statements", count)
            except Exception:  # a bad pass must not stop the next one
                log.exception("closing statements failed")
            await asyncio.sleep(CLOSE_EVERY)

    app[CLOSED] = asyncio.create_task(loop(), name="close-statements")
    yield
    app[CLOSED].cancel()
    try:
        await app[CLOSED]
    except asyncio.CancelledError:
        pass


async def list_statements(request: web.Request) -> web.Response:
    """`GET /v1/billing/statements`: the customer's closed periods, newest first, with line items."""
    app = request.app
    customer = app[LIVE].keyring.subject(request)
    try:
        await close_periods(app, [customer])  # whatever closed since the last pass shows at once
    except asyncio.TimeoutError:
        pass  # the ledger is behind: the statements frozen so far are still right
    frozen = await asyncio.get_running_loop().run_in_executor(None, app[RECORDER].ledger.statements, customer.id)
    data = [frozen[key] for key in sorted(frozen, reverse=True)]
    return web.json_response({"object": "list", "data": data})
