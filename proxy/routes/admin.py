"""The admin API (admin key only): customers and keys at runtime, everyone's usage, config reload.

Customers and keys made here live in the ledger database (keys only as hashes) and apply on
every proxy sharing it within a second (`proxy.live`). The config file may still declare
customers; an id in both is an error. A customer of the file is changed by editing the file
and reloading; its keys, though, may be created and revoked here as for any customer.
Lists are OpenAI's: `{"object": "list", "data": [...], "has_more", "first_id", "last_id"}`,
paged with `?limit=` (1-100) and `?after=<id>`.
"""

from __future__ import annotations

import asyncio
import csv
import io
import logging
import signal

from aiohttp import web

from config.loader import ConfigError, load_config
from config.schema import CustomerConfig
from proxy import admin_ops as ops
from proxy.appkeys import LIVE, REDIS
from proxy.errors import Forbidden, InvalidRequest
from proxy.jsonbody import read_fields
from proxy.live import announce, follow, merge
from proxy.routes.usage import summary_of

log = logging.getLogger("payware.admin")


def _admin(request: web.Request) -> None:
    caller = request.app[LIVE].keyring.caller(request)
    if not caller.admin:
        raise Forbidden("the admin API needs the admin key")


async def in_thread(fn, *args, **kwargs):
    """`fn(*args, **kwargs)` in a worker thread: the directory store and the ledger block."""
    return await asyncio.get_running_loop().run_in_executor(None, lambda: fn(*args, **kwargs))


async def directory_changed(app: web.Application) -> None:
    """Apply a directory change here now, and tell the other proxies."""
    await app[LIVE].refresh(force=True)
    await announce(app.get(REDIS))


# -- customers -------------------------------------------------------------------------------

async def create_customer(request: web.Request) -> web.Response:
    """`POST /v1/admin/customers`."""
    _admin(request)
    app, live = request.app, request.app[LIVE]
    body = await read_fields(request, ops.CUSTOMER_FIELDS)
    customer_id = await in_thread(ops.create_customer, live.config, live.file_config, live.store, body)
    await directory_changed(app)
    log.info("customer %s created (plan %s)", customer_id, body["plan"])
    return web.json_response(await _view(app, live.config.customers[customer_id]), status=201)


async def list_customers(request: web.Request) -> web.Response:
    """`GET /v1/admin/customers`: every customer with its open period's usage, cap and remaining."""
    _admin(request)
    customers = sorted(request.app[LIVE].config.customers.values(), key=lambda c: c.id)
    page, has_more = _page(request, customers, lambda c: c.id)
    data = [await _view(request.app, c) for c in page]
    return _list(data, has_more)


async def get_customer(request: web.Request) -> web.Response:
    _admin(request)
    return web.json_response(await _view(request.app, _find(request)))


async def update_customer(request: web.Request) -> web.Response:
    """`PATCH /v1/admin/customers/{id}`: plan, cap, rate_limit, models, metadata, anchor_day."""
    _admin(request)
    app, live = request.app, request.app[LIVE]
    ops.runtime_customer(live.config, request.match_info["id"])  # before the body: a 404/409 says more
    body = await read_fields(request, tuple(f for f in ops.CUSTOMER_FIELDS if f != "id"))
    customer_id = await in_thread(ops.update_customer, live.config, live.store, request.match_info["id"], body)
    await directory_changed(app)
    log.info("customer %s updated (%s)", customer_id, ", ".join(sorted(body)))
    return web.json_response(await _view(app, live.config.customers[customer_id]))


async def deactivate_customer(request: web.Request) -> web.Response:
    """`DELETE /v1/admin/customers/{id}`: its keys stop working; its events and statements stay."""
    _admin(request)
    live = request.app[LIVE]
    answer = await in_thread(ops.deactivate_customer, live.config, live.store, request.match_info["id"])
    await directory_changed(request.app)
    log.info("customer %s deactivated", answer["id"])
    return web.json_response(answer)


def _find(request: web.Request) -> CustomerConfig:
    return ops.find_customer(request.app[LIVE].config, request.match_info["id"])


async def _view(app: web.Application, customer: CustomerConfig) -> dict:
    return ops.customer_view(customer, await summary_of(app, customer))


# -- keys ------------------------------------------------------------------------------------

async def create_key(request: web.Request) -> web.Response:
    """`POST /v1/admin/customers/{id}/keys`: the key is in this answer, and never again."""
    _admin(request)
    live = request.app[LIVE]
    customer = _find(request)
    body = await read_fields(request, ops.KEY_FIELDS)
    made = await in_thread(ops.issue_key, live.config, live.store, customer, body)
    await directory_changed(request.app)
    log.info("key %s created for %s", made["id"], customer.id)
    return web.json_response(made, status=201)


async def list_keys(request: web.Request) -> web.Response:
    """`GET /v1/admin/customers/{id}/keys`: ids, names, prefixes and dates, never a key."""
    _admin(request)
    data = await in_thread(ops.list_keys, request.app[LIVE].store, _find(request))
    page, has_more = _page(request, data, lambda k: k["id"])
    return _list(page, has_more)


async def revoke_key(request: web.Request) -> web.Response:
    """`DELETE /v1/admin/keys/{key_id}`: refused from now on, on every proxy within a second."""
    _admin(request)
    live, kid = request.app[LIVE], request.match_info["key_id"]
    answer, customer_id = await in_thread(ops.revoke_key, live.config, live.store, kid)
    await directory_changed(request.app)
    log.info("key %s of %s revoked", kid, customer_id)
    return web.json_response(answer)


async def rotate_key(request: web.Request) -> web.Response:
    """`POST /v1/admin/keys/{key_id}/rotate {grace_seconds}`: a new key (same name and limits);
    the old one keeps working for the grace period only."""
    _admin(request)
    live, kid = request.app[LIVE], request.match_info["key_id"]
    await in_thread(ops.runtime_key, live.config, live.store, kid)  # before the body: a 404/409 says more
    body = await read_fields(request, ("grace_seconds",))
    fresh = await in_thread(ops.rotate_key, live.config, live.store, kid, body.get("grace_seconds", 0))
    await directory_changed(request.app)
    log.info("key %s of %s rotated to %s (grace %s s)", kid, fresh["customer"], fresh["id"],
             body.get("grace_seconds", 0))
    return web.json_response(fresh, status=201)


# -- usage of every customer, reload ---------------------------------------------------------

async def all_usage(request: web.Request) -> web.StreamResponse:
    """`GET /v1/admin/usage?period=current|YYYY-MM[-DD]&format=json|csv`: every customer at once."""
    _admin(request)
    app = request.app
    at = ops.usage_moment(request.query.get("period", "current"))
    fmt = request.query.get("format", "json")
    if fmt not in ("json", "csv"):
        raise InvalidRequest("format must be json or csv", param="format")
    rows = []
    for customer in sorted(app[LIVE].config.customers.values(), key=lambda c: c.id):
        rows.append(ops.usage_row(customer, await summary_of(app, customer, at=at)))
    if fmt == "json":
        return web.json_response({"object": "list", "data": rows, "has_more": False})
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["customer"])
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
    return web.Response(text=buffer.getvalue(), content_type="text/csv")


async def reload_config(request: web.Request) -> web.Response:
    """`POST /v1/admin/reload`: the config file again, swapped in only if valid."""
    _admin(request)
    problems = await reload(request.app)
    if problems:
        return web.json_response({"object": "reload", "reloaded": False, "errors": problems}, status=400)
    return web.json_response({"object": "reload", "reloaded": True, "errors": [],
                              "source": request.app[LIVE].config.source})


# Sections a running proxy cannot change: its address, storage and listeners need a restart.
_RESTART_ONLY = ("server.host", "server.port", "server.max_body_bytes", "server.metrics_listen", "storage")


async def reload(app: web.Application) -> list[str]:
    """Load and validate the config file; swap it in if valid. Returns the problems (none: done).

    NOTE: a reload changes what the next calls see; calls in flight keep the config they started
    with, and past events keep their prices.
    """
    live = app[LIVE]
    source = live.file_config.source
    try:
        config = await in_thread(load_config, source)
        problems = _restart_only(live.file_config, config)
        if not problems:
            snapshot = await in_thread(live.store.load)
            merge(config, snapshot)  # raises if runtime customers no longer fit the file
    except ConfigError as exc:
        problems = exc.problems
    if problems:
        log.error("config reload of %s refused; still serving the previous config:\n  %s", source,
                  "\n  ".join(problems))
        return problems
    live.load(snapshot, file_config=config)
    log.warning("config reloaded from %s (%d models, %d plans, %d customers)", source, len(config.models),
                len(config.plans), len(live.config.customers))
    return []


def _restart_only(old, new) -> list[str]:
    problems = []
    for path in _RESTART_ONLY:
        section, _, name = path.partition(".")
        before, after = getattr(old, section), getattr(new, section)
        if name:
            before, after = getattr(before, name), getattr(after, name)
        if before != after:
            problems.append(f"{path}: changes only at a restart (it is {before!r}, the file says {after!r})")
    if set(old.providers) != set(new.providers) or any(
            (old.providers[p].kind, old.providers[p].base_url) != (new.providers[p].kind, new.providers[p].base_url)
            for p in old.providers if p in new.providers):
        problems.append("providers: adding, removing or moving a provider changes only at a restart")
    return problems


# -- helpers ----------------------------------------------------------------------------------

def _page(request: web.Request, items: list, ident) -> tuple[list, bool]:
    try:
        limit = int(request.query.get("limit", "20"))
    except ValueError:
        limit = 0
    if not 1 <= limit <= 100:
        raise InvalidRequest("limit must be a number from 1 to 100", param="limit")
    after = request.query.get("after")
    if after is not None:
        ids = [ident(item) for item in items]
        if after not in ids:
            raise InvalidRequest(f"no item {after!r} to page after", param="after")
        items = items[ids.index(after) + 1:]
    return items[:limit], len(items) > limit


def _list(data: list[dict], has_more: bool) -> web.Response:
    return web.json_response({"object": "list", "data": data, "has_more": has_more,
                              "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None})


async def runtime_ctx(app: web.Application):
    """Follow the directory (poll + pub/sub), write keys' last use, reload the file on SIGHUP."""
    live = app[LIVE]
    loop = asyncio.get_running_loop()

    def on_hup() -> None:
        log.warning("SIGHUP: reloading %s", live.file_config.source)
        asyncio.ensure_future(reload(app))

    try:
        loop.add_signal_handler(signal.SIGHUP, on_hup)
    except (NotImplementedError, RuntimeError):  # not the main thread (tests), or no signals here
        pass
    tasks = [asyncio.create_task(follow(live, app.get(REDIS)), name="directory"),
             asyncio.create_task(_write_last_used(live), name="keys-last-used")]
    yield
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    try:
        loop.remove_signal_handler(signal.SIGHUP)
    except (NotImplementedError, RuntimeError):
        pass


LAST_USED_EVERY = 60.0  # seconds: keys' last use is evidence, not a hot-path write


async def _write_last_used(live) -> None:
    while True:
        await asyncio.sleep(LAST_USED_EVERY)
        used, live.keyring.used = live.keyring.used, {}
        runtime = {kid: int(at * 1_000_000) for kid, at in used.items()}
        if runtime:
            try:
                await in_thread(live.store.touch_keys, runtime)
            except Exception as exc:
                log.warning("could not record keys' last use: %s", type(exc).__name__)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/admin/customers", create_customer)
    app.router.add_get("/v1/admin/customers", list_customers)
    app.router.add_get("/v1/admin/customers/{id}", get_customer)
    app.router.add_patch("/v1/admin/customers/{id}", update_customer)
    app.router.add_delete("/v1/admin/customers/{id}", deactivate_customer)
    app.router.add_post("/v1/admin/customers/{id}/keys", create_key)
    app.router.add_get("/v1/admin/customers/{id}/keys", list_keys)
    app.router.add_delete("/v1/admin/keys/{key_id}", revoke_key)
    app.router.add_post("/v1/admin/keys/{key_id}/rotate", rotate_key)
    app.router.add_get("/v1/admin/usage", all_usage)
    app.router.add_post("/v1/admin/reload", reload_config)
