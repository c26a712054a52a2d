"""Counting a kept event from a request: the recorder's totals, then the period bookkeeping they drive."""

from __future__ import annotations

from datetime import datetime

from aiohttp import web

from config.schema import CustomerConfig
from metering.store.events import UsageEvent, utcnow
from metering.limits.outages import counters_down
from proxy.appkeys import LIVE, METER, RECORDER, THRESHOLDS


async def count_event(app: web.Application, event: UsageEvent, customer: CustomerConfig) -> None:
    """Count a kept `event` in the real-time totals; close a threshold period that it filled."""
    recorder = app[RECORDER]
    await recorder.count(event)
    plan = app[LIVE].config.plans[customer.plan]
    if plan.interval == "threshold":
        try:
            totals = await recorder.counters.totals(customer.id, event.period)
        except counters_down():
            return  # the next event checks again; the event itself is recorded
        meter, now = app[METER], utcnow()
        # NOTE: the usage amount, without the base fee (which every period carries)
        if not meter.threshold_reached(customer, event.period, totals.all.amount, now):
            return
        shared = app[THRESHOLDS]
        if shared is None:
            meter.adopt(customer, now)
            return
        try:
            opened = await shared.close(customer=customer.id, month=meter.month_key(customer, now),
                                        seen_open=event.period, next_start=now.isoformat())
        except counters_down():
            return  # the next event tries again
        meter.adopt(customer, datetime.fromisoformat(opened))
