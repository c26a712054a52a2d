"""Recording an event from a request: the recorder, then the period bookkeeping it drives."""

from __future__ import annotations

from aiohttp import web

from config.schema import CustomerConfig
from metering.events import UsageEvent, utcnow
from metering.recorder import COUNTERS_DOWN
from proxy.appkeys import CONFIG, METER, RECORDER


async def record_event(app: web.Application, event: UsageEvent, customer: CustomerConfig) -> None:
    """Journal, count and queue `event`; close a threshold period that it filled."""
    recorder = app[RECORDER]
    await recorder.record(event)
    plan = app[CONFIG].plans[customer.plan]
    if plan.interval == "threshold":
        try:
            totals = await recorder.counters.totals(customer.id, event.period)
        except COUNTERS_DOWN:
            return  # the next event checks again; the event itself is recorded
        # NOTE: the usage amount, without the base fee (which every period carries)
        app[METER].close_if_reached(customer, event.period, totals.all.amount, utcnow())
