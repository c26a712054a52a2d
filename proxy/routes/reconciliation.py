"""Money out of the proxy, for the operator (admin key only):

- `GET /v1/admin/reconciliation[?provider=NAME]`: the last `payware reconcile` run (of that
  provider, or of any), as `metering.billing.reconcile` made it: `{object: "reconciliation", id,
  created_at, provider, kind, source, from, to, status, rows: [{day, model, status, provider,
  payware, matched, provider_only, payware_only, estimated}], totals, notes}`, each block
  `{tokens: {input, cached_input, cache_write, cache_write_1h, output, total}, cost}` (money as
  strings). 404 `reconciliation_not_found` before the first run.
- `GET /v1/admin/settlements[?customer=ID]`: every statement settled to Stripe, with its
  invoice id and status (`pending`, `invoiced`, `nothing_due`), as an OpenAI-style list.

`setup` also starts the settle-after-close job when the config says `settlement.after_close`.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from metering.store.money_runs import ReconciliationStore, SettlementStore
from proxy.appkeys import LIVE, RECORDER
from proxy.errors import Forbidden, NotFound


def _admin(request: web.Request) -> None:
    if not request.app[LIVE].keyring.caller(request).admin:
        raise Forbidden("the admin API needs the admin key")


async def last_reconciliation(request: web.Request) -> web.Response:
    """`GET /v1/admin/reconciliation`: the newest run, whole."""
    _admin(request)
    provider = request.query.get("provider")
    store = ReconciliationStore(request.app[RECORDER].ledger.engine)
    body = await asyncio.get_running_loop().run_in_executor(None, store.last, provider)
    if body is None:
        which = f" of provider {provider!r}" if provider else ""
        raise NotFound(f"no reconciliation{which} has run yet: run `payware reconcile PROVIDER --from --to`",
                       param="provider" if provider else None, code="reconciliation_not_found")
    return web.json_response(body)


async def list_settlements(request: web.Request) -> web.Response:
    """`GET /v1/admin/settlements`: statements and the invoices they became."""
    _admin(request)
    store = SettlementStore(request.app[RECORDER].ledger.engine)
    rows = await asyncio.get_running_loop().run_in_executor(None, store.all, request.query.get("customer"))
    data = [{"object": "settlement", "id": f"{row['customer']}:{row['period']}", "customer": row["customer"],
             "period": row["period"], "target": row["target"], "status": row["status"],
             "stripe_customer": row["external_customer"], "invoice_id": row["invoice_id"],
             "total": format(row["total"], "f"), "currency": row["currency"],
             "updated_at": row["updated_us"] // 1_000_000} for row in rows]
    return web.json_response({"object": "list", "data": data, "has_more": False,
                              "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None})


def setup(app: web.Application) -> None:
    """The routes above, and `settlement.after_close` (proxy/settle_job.py) when configured."""
    from proxy.settle_job import settle_job

    app.router.add_get("/v1/admin/reconciliation", last_reconciliation)
    app.router.add_get("/v1/admin/settlements", list_settlements)
    settlement = app[LIVE].config.settlement
    if settlement is not None and settlement.after_close:
        app.cleanup_ctx.append(settle_job)
