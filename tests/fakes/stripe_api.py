"""A fake of the Stripe endpoints `payware settle` uses, speaking Stripe's wire: form-encoded
requests (`metadata[key]=value`, `period[start]=…`), JSON answers, Stripe's error envelope.

- `POST /v1/invoices` (a draft), `GET /v1/invoices?customer=&limit=&starting_after=`,
  `GET /v1/invoices/{id}`, `POST /v1/invoices/{id}/finalize`;
- `POST /v1/invoiceitems` (added to a draft invoice, whose `total` it moves),
  `GET /v1/invoiceitems?invoice=&limit=&starting_after=`.

Only `Authorization: Bearer <--api-key>` is let in (else 401, which the SDK raises as an
AuthenticationError); only the customers given with `--customers` exist (else 400
`resource_missing`). `Idempotency-Key` is honoured as Stripe does: the first answer to a key is
replayed for any later request with that key (header `Idempotent-Replayed: true`); the same key
with other parameters is a 400 `idempotency_error`.

`GET /_stats` counts what was created (`invoices_created`, `items_created`, `replays`, requests by
path) and lists the invoices with their items; `POST /_reset` forgets everything;
`POST /_fail {"path": "/v1/invoiceitems", "after": 1, "times": 3}` makes the requests to that path,
after `after` more successes, answer 500 `times` times (a failure mid-run, past the SDK's
retries); `POST /_expire_keys` forgets the idempotency keys (as Stripe does after 24 hours). Run as a process:
`python -m tests.fakes.stripe_api --port 0 --api-key sk_test_x --customers cus_A,cus_B`
prints `LISTENING <url>`.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import re
import sys
import time
from urllib.parse import parse_qsl

from aiohttp import web

STATE = web.AppKey("state", dict)


def _fresh() -> dict:
    return {"invoices": {}, "items": {}, "idempotency": {}, "fail": {}, "ids": itertools.count(1),
            "stats": {"invoices_created": 0, "items_created": 0, "finalized": 0, "replays": 0, "requests": {}}}


def form(pairs: list[tuple[str, str]]) -> dict:
    """Stripe's form encoding to nested values: `a[b][c]=v` -> {"a": {"b": {"c": "v"}}}."""
    out: dict = {}
    for name, value in pairs:
        keys = re.findall(r"[^\[\]]+", name)
        node = out
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    return out


def error(status: int, message: str, *, type: str = "invalid_request_error", code: str | None = None,
          param: str | None = None) -> web.Response:
    body = {"error": {"type": type, "message": message, **({"code": code} if code else {}),
                      **({"param": param} if param else {})}}
    return web.json_response(body, status=status)


@web.middleware
async def stripe_wire(request: web.Request, handler) -> web.StreamResponse:
    """Auth, the fail switch, the request count and Idempotency-Key replays, in Stripe's manner."""
    state = request.app[STATE]
    if request.path.startswith("/_"):
        return await handler(request)
    state["stats"]["requests"][request.path] = state["stats"]["requests"].get(request.path, 0) + 1
    if request.headers.get("Authorization") != f"Bearer {request.app['api_key']}":
        return error(401, "Invalid API Key provided.")
    raw = (await request.read()).decode()
    params = form(parse_qsl(raw, keep_blank_values=True)) if request.method == "POST" else form(list(request.query.items()))
    request["params"] = params
    fail = state["fail"].get(_route(request.path))
    if fail is not None and request.method == "POST":
        if fail["after"] > 0:
            fail["after"] -= 1
        elif fail["times"] > 0:
            fail["times"] -= 1
            return error(500, "An unexpected error occurred (injected).", type="api_error")
    key = request.headers.get("Idempotency-Key")
    if key and request.method == "POST":
        seen = state["idempotency"].get(key)
        fingerprint = (request.method, request.path, json.dumps(params, sort_keys=True))
        if seen is not None:
            if seen["fingerprint"] != fingerprint:
                return error(400, f"Keys for idempotent requests can only be used with the same parameters they "
                                  f"were first used with. Try using a key other than '{key}'.",
                             type="idempotency_error")
            state["stats"]["replays"] += 1
            return web.Response(status=seen["status"], body=seen["body"], content_type="application/json",
                                headers={"Idempotent-Replayed": "true", "Idempotency-Key": key})
        response = await handler(request)
        state["idempotency"][key] = {"fingerprint": fingerprint, "status": response.status, "body": response.body}
        return response
    return await handler(request)


def _route(path: str) -> str:
    return re.sub(r"/(in|ii)_[A-Za-z0-9]+", "/{id}", path)


def _new_id(state: dict, prefix: str) -> str:
    return f"{prefix}_fake{next(state['ids']):06d}"


def _customer(request: web.Request, params: dict) -> web.Response | None:
    customer = params.get("customer")
    if customer not in request.app["customers"]:
        return error(400, f"No such customer: '{customer}'", code="resource_missing", param="customer")
    return None


async def create_invoice(request: web.Request) -> web.Response:
    state, params = request.app[STATE], request["params"]
    refused = _customer(request, params)
    if refused is not None:
        return refused
    invoice_id = _new_id(state, "in")
    invoice = {"id": invoice_id, "object": "invoice", "customer": params["customer"],
               "currency": params.get("currency", "usd"), "status": "draft",
               "collection_method": params.get("collection_method", "charge_automatically"),
               "days_until_due": int(params["days_until_due"]) if "days_until_due" in params else None,
               "description": params.get("description"), "metadata": params.get("metadata", {}),
               "created": int(time.time()), "subtotal": 0, "total": 0, "amount_due": 0, "livemode": False}
    state["invoices"][invoice_id] = invoice
    state["stats"]["invoices_created"] += 1
    return web.json_response(invoice)


async def create_item(request: web.Request) -> web.Response:
    state, params = request.app[STATE], request["params"]
    refused = _customer(request, params)
    if refused is not None:
        return refused
    invoice = state["invoices"].get(params.get("invoice"))
    if invoice is None:
        return error(400, f"No such invoice: '{params.get('invoice')}'", code="resource_missing", param="invoice")
    if invoice["status"] != "draft":
        return error(400, "You can only add invoice items to draft invoices.", param="invoice")
    if params.get("currency", "").lower() != invoice["currency"]:
        return error(400, "The currency of an invoice item must match its invoice's.", param="currency")
    try:
        amount = int(params["amount"])
    except (KeyError, ValueError):
        return error(400, "Invalid integer: amount", param="amount")
    item_id = _new_id(state, "ii")
    item = {"id": item_id, "object": "invoiceitem", "invoice": invoice["id"], "customer": params["customer"],
            "amount": amount, "currency": invoice["currency"], "description": params.get("description"),
            "metadata": params.get("metadata", {}), "period": params.get("period"), "date": int(time.time())}
    state["items"][item_id] = item
    for name in ("subtotal", "total", "amount_due"):
        invoice[name] += amount
    state["stats"]["items_created"] += 1
    return web.json_response(item)


async def finalize(request: web.Request) -> web.Response:
    state = request.app[STATE]
    invoice = state["invoices"].get(request.match_info["id"])
    if invoice is None:
        return error(404, "No such invoice", code="resource_missing")
    if invoice["status"] != "draft":
        return error(400, f"This invoice is already finalized (status {invoice['status']}).")
    invoice["status"] = "open"
    state["stats"]["finalized"] += 1
    return web.json_response(invoice)


async def get_invoice(request: web.Request) -> web.Response:
    invoice = request.app[STATE]["invoices"].get(request.match_info["id"])
    if invoice is None:
        return error(404, "No such invoice", code="resource_missing")
    return web.json_response(invoice)


def _listing(request: web.Request, rows: list[dict], url: str) -> web.Response:
    params = request["params"]
    limit = int(params.get("limit", 10))
    rows = sorted(rows, key=lambda row: row["id"])
    after = params.get("starting_after")
    if after:
        rows = [row for row in rows if row["id"] > after]
    return web.json_response({"object": "list", "url": url, "has_more": len(rows) > limit, "data": rows[:limit]})


async def list_invoices(request: web.Request) -> web.Response:
    customer = request["params"].get("customer")
    rows = [i for i in request.app[STATE]["invoices"].values() if customer is None or i["customer"] == customer]
    return _listing(request, rows, "/v1/invoices")


async def list_items(request: web.Request) -> web.Response:
    invoice = request["params"].get("invoice")
    rows = [i for i in request.app[STATE]["items"].values() if invoice is None or i["invoice"] == invoice]
    return _listing(request, rows, "/v1/invoiceitems")


async def stats(request: web.Request) -> web.Response:
    state = request.app[STATE]
    invoices = [{**invoice, "items": [item for item in state["items"].values() if item["invoice"] == invoice["id"]]}
                for invoice in state["invoices"].values()]
    return web.json_response({**state["stats"], "invoices": invoices})


async def reset(request: web.Request) -> web.Response:
    request.app[STATE] = _fresh()
    return web.json_response({"reset": True})


async def fail(request: web.Request) -> web.Response:
    body = await request.json()
    request.app[STATE]["fail"][body["path"]] = {"after": int(body.get("after", 0)), "times": int(body.get("times", 1))}
    return web.json_response({"armed": body})


async def expire_keys(request: web.Request) -> web.Response:
    """Forget every idempotency key, as Stripe does 24 hours after a key's first use."""
    request.app[STATE]["idempotency"].clear()
    return web.json_response({"expired": True})


def make_app(*, api_key: str, customers: set[str]) -> web.Application:
    app = web.Application(middlewares=[stripe_wire])
    app[STATE] = _fresh()
    app["api_key"], app["customers"] = api_key, customers
    app.router.add_post("/v1/invoices", create_invoice)
    app.router.add_get("/v1/invoices", list_invoices)
    app.router.add_get("/v1/invoices/{id}", get_invoice)
    app.router.add_post("/v1/invoices/{id}/finalize", finalize)
    app.router.add_post("/v1/invoiceitems", create_item)
    app.router.add_get("/v1/invoiceitems", list_items)
    app.router.add_get("/_stats", stats)
    app.router.add_post("/_reset", reset)
    app.router.add_post("/_fail", fail)
    app.router.add_post("/_expire_keys", expire_keys)
    return app


async def _serve(host: str, port: int, api_key: str, customers: set[str]) -> None:
    runner = web.AppRunner(make_app(api_key=api_key, customers=customers), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    print(f"LISTENING http://{host}:{runner.addresses[0][1]}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--customers", default="", help="comma-separated Stripe customer ids that exist")
    args = parser.parse_args()
    try:
        asyncio.run(_serve(args.host, args.port, args.api_key, {c for c in args.customers.split(",") if c}))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
