"""`settlement.after_close: true`: the proxy settles statements to Stripe soon after they close.

Every `EVERY` seconds (the statements' closing job runs every minute), the statements frozen
and not settled yet are invoiced exactly as `payware settle --to stripe` does
(`metering.billing.settle`), in a worker thread (the SDK blocks). Proxies sharing a ledger may
all run it: every Stripe call carries the statement's idempotency key, so they make one
invoice. A statement skipped (no Stripe customer) or failed is logged and tried again on the
next pass; a refused Stripe key is logged once a pass and nothing else is tried.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator

from aiohttp import web

from proxy.appkeys import LIVE, RECORDER

log = logging.getLogger("payware.settle")

EVERY = 60.0
SETTLER = web.AppKey("settle_after_close", asyncio.Task)


def settle_once(app: web.Application) -> list:
    """One pass (blocking: run it in a thread): the outcomes, or [] with no Stripe key."""
    import stripe

    from metering.billing.settle import StripeInvoicer, settle_statements, stripe_customers
    from metering.store.money_runs import SettlementStore

    config = app[LIVE].config
    settings = config.settlement.stripe
    api_key = str(settings.api_key) if settings.api_key else os.environ.get("STRIPE_API_KEY")
    if not api_key:
        log.error("settlement.after_close: no Stripe key (settlement.stripe.api_key or $STRIPE_API_KEY)")
        return []
    client = stripe.StripeClient(api_key, base_addresses={"api": settings.api_base}, max_network_retries=2)
    invoicer = StripeInvoicer(client, collection_method=settings.collection_method,
                              days_until_due=settings.days_until_due, finalize=settings.finalize)
    try:
        outcomes = settle_statements(store=SettlementStore(app[RECORDER].ledger.engine),
                                     stripe_ids=stripe_customers(config.customers.values()), invoicer=invoicer)
    except stripe.StripeError as exc:
        log.error("settlement to Stripe stopped: %s", exc.user_message or type(exc).__name__)
        return []
    for outcome in outcomes:
        if outcome.status == "invoiced":
            log.info("statement %s %s invoiced to Stripe: %s (%s %s)", outcome.customer, outcome.period,
                     outcome.invoice_id, outcome.currency, outcome.total)
        elif not outcome.ok:
            log.warning("statement %s %s %s: %s", outcome.customer, outcome.period, outcome.status, outcome.reason)
    return outcomes


async def settle_job(app: web.Application) -> AsyncIterator[None]:
    """Run `settle_once` every EVERY seconds while the proxy serves."""
    async def loop() -> None:
        while True:
            await asyncio.sleep(EVERY)
            try:
                await asyncio.get_running_loop().run_in_executor(None, settle_once, app)
            except Exception:  # a bad pass must not stop the next one
                log.exception("settling statements failed")

    app[SETTLER] = asyncio.create_task(loop(), name="settle-after-close")
    yield
    app[SETTLER].cancel()
    try:
        await app[SETTLER]
    except asyncio.CancelledError:
        pass
