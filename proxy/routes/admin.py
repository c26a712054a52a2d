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
import hashlib
import io
import logging
import secrets
import signal
from datetime import datetime, timezone
from decimal import Decimal

from aiohttp import web

from config.loader import ConfigError, load_config, read_customer, read_key_settings
from config.schema import CustomerConfig, key_id
from metering.store.bounds import is_clean
from metering.store.directory import now_us
from metering.store.events import utcnow
from proxy.appkeys import LIVE, REDIS
from proxy.errors import ApiError, Forbidden, InvalidRequest, NotFound
from proxy.jsonbody import parse_json, read_body
from proxy.live import announce, follow, merge
from proxy.routes.usage import summary_of

log = logging.getLogger("payware.admin")

_CUSTOMER_FIELDS = ("id", "plan", "cap", "rate_limit", "models", "metadata", "anchor_day")
_KEY_FIELDS = ("name", "expires_at", "cap", "rate_limit", "models")
_MAX_METADATA = 4096  # bytes of a customer's metadata JSON


class Conflict(ApiError):
    status, type, code = 409, "invalid_request_error", "conflict"


def _admin(request: web.Request) -> None:
    caller = request.app[LIVE].keyring.caller(request)
    if not caller.admin:
        raise Forbidden("the admin API needs the admin key")


async def _body(request: web.Request, allowed: tuple[str, ...]) -> dict:
    body = parse_json(await read_body(request), parse_float=Decimal)
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object")
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise InvalidRequest(f"unknown field {unknown[0]!r} (expected: {', '.join(allowed)})", param=unknown[0])
    return body


def _invalid(exc: ConfigError, prefix: str) -> InvalidRequest:
    """A validation failure as a 400 naming the first field (and listing every problem)."""
    first = exc.problems[0]
    path = first.split(":", 1)[0]
    param = path.removeprefix(prefix).lstrip(".") or None
    return InvalidRequest("; ".join(exc.problems), param=param)


def _text(value: object, name: str, limit: int, *, required: bool = False) -> str | None:
    if value is None:
        if required:
            raise InvalidRequest(f"{name} is required", param=name)
        return None
    if not isinstance(value, str) or not value or len(value) > limit or not is_clean(value):
        raise InvalidRequest(f"{name} must be a string of 1 to {limit} characters (UTF-8, no NUL)", param=name)
    return value


def _metadata(value: object) -> dict:
    import json

    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise InvalidRequest("metadata must be an object", param="metadata")
    text = json.dumps(value, default=str)
    if len(text.encode("utf-8", "surrogatepass")) > _MAX_METADATA or "\\u0000" in text or not _clean(value):
        raise InvalidRequest(f"metadata must be at most {_MAX_METADATA} bytes of valid UTF-8 without NUL",
                             param="metadata")
    return json.loads(json.dumps(value, default=str))


def _clean(value: object, depth: int = 0) -> bool:
    if isinstance(value, str):
        return is_clean(value)
    if isinstance(value, dict):
        return depth < 8 and all(_clean(k) and _clean(v, depth + 1) for k, v in value.items())
    if isinstance(value, list):
        return depth < 8 and all(_clean(v, depth + 1) for v in value)
    return True


def _settings(body: dict) -> dict:
    """The customer settings kept in the database, in the config file's shape (strings for money)."""
    settings = {name: body[name] for name in ("cap", "rate_limit", "models", "anchor_day") if body.get(name) is not None}
    cap = settings.get("cap")
    if isinstance(cap, dict) and isinstance(cap.get("amount"), Decimal):
        settings["cap"] = {**cap, "amount": str(cap["amount"])}
    return settings


async def _run(fn, *args, **kwargs):
    return await asyncio.get_running_loop().run_in_executor(None, lambda: fn(*args, **kwargs))


async def _changed(app: web.Application) -> None:
    """Apply a directory change here now, and tell the other proxies."""
    await app[LIVE].refresh(force=True)
    await announce(app.get(REDIS))


# -- customers -------------------------------------------------------------------------------

async def create_customer(request: web.Request) -> web.Response:
    """`POST /v1/admin/customers`."""
    _admin(request)
    app, live = request.app, request.app[LIVE]
    body = await _body(request, _CUSTOMER_FIELDS)
    customer_id = _text(body.get("id"), "id", 128, required=True)
    settings, meta = _settings(body), _metadata(body.get("metadata"))
    try:
        read_customer(customer_id, {"plan": body.get("plan"), **settings}, live.config, path="customer")
    except ConfigError as exc:
        raise _invalid(exc, "customer") from None
    if customer_id in live.file_config.customers:
        raise Conflict(f"customer {customer_id!r} is declared in the config file", param="id",
                       code="customer_exists")
    if not await _run(live.store.create_customer, id=customer_id, plan=body["plan"], settings=settings, meta=meta):
        raise Conflict(f"customer {customer_id!r} exists already", param="id", code="customer_exists")
    await _changed(app)
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
    customer = _runtime(request)
    body = await _body(request, tuple(f for f in _CUSTOMER_FIELDS if f != "id"))
    row = await _run(live.store.customer, customer.id)
    settings = {**row["settings"], **_settings(body)}
    for name in ("cap", "rate_limit", "models"):
        if name in body and body[name] is None:
            settings.pop(name, None)  # null removes it
    plan = body.get("plan", row["plan"])
    try:
        read_customer(customer.id, {"plan": plan, **settings}, live.config, path="customer")
    except ConfigError as exc:
        raise _invalid(exc, "customer") from None
    values = {"plan": plan, "settings": settings}
    if "metadata" in body:
        values["meta"] = _metadata(body["metadata"])
    await _run(live.store.update_customer, customer.id, **values)
    await _changed(app)
    log.info("customer %s updated (%s)", customer.id, ", ".join(sorted(body)))
    return web.json_response(await _view(app, live.config.customers[customer.id]))


async def deactivate_customer(request: web.Request) -> web.Response:
    """`DELETE /v1/admin/customers/{id}`: its keys stop working; its events and statements stay."""
    _admin(request)
    live = request.app[LIVE]
    customer = _runtime(request)
    await _run(live.store.update_customer, customer.id, active=False)
    await _changed(request.app)
    log.info("customer %s deactivated", customer.id)
    return web.json_response({"id": customer.id, "object": "customer", "deleted": True, "active": False})


def _find(request: web.Request) -> CustomerConfig:
    customer = request.app[LIVE].config.customers.get(request.match_info["id"])
    if customer is None:
        raise NotFound(f"no customer {request.match_info['id']!r}", param="id", code="customer_not_found")
    return customer


def _runtime(request: web.Request) -> CustomerConfig:
    customer = _find(request)
    if customer.source != "api":
        raise Conflict(f"customer {customer.id!r} is declared in the config file: edit the file and reload",
                       param="id", code="declared_in_config")
    return customer


async def _view(app: web.Application, customer: CustomerConfig) -> dict:
    cap = customer.cap
    usage = await summary_of(app, customer)
    return {"id": customer.id, "object": "customer", "plan": customer.plan, "active": customer.active,
            "source": customer.source, "metadata": customer.metadata, "anchor_day": customer.anchor_day,
            "cap": None if cap is None else {"amount": str(cap.amount), "action": cap.action, "mode": cap.mode,
                                             "clamp": cap.clamp},
            "rate_limit": None if customer.rate_limit is None else {"rpm": customer.rate_limit.rpm,
                                                                     "tpm": customer.rate_limit.tpm},
            "models": list(customer.models) if customer.models is not None else None,
            "usage": {"period": usage["period"], "requests": usage["requests"], "tokens": usage["tokens"],
                      "amount_due": usage["amount_due"], "amount_due_exact": usage["amount_due_exact"],
                      "currency": usage["currency"],
                      "cap": None if usage["cap"] is None else usage["cap"]["amount"],
                      "remaining": None if usage["cap"] is None else usage["cap"]["remaining"]}}


# -- keys ------------------------------------------------------------------------------------

async def create_key(request: web.Request) -> web.Response:
    """`POST /v1/admin/customers/{id}/keys`: the key is in this answer, and never again."""
    _admin(request)
    customer = _find(request)
    body = await _body(request, _KEY_FIELDS)
    return web.json_response(await _issue(request.app, customer.id, body), status=201)


async def _issue(app: web.Application, customer_id: str, body: dict, *, name: str | None = None) -> dict:
    live = app[LIVE]
    name = _text(body.get("name"), "name", 128) if name is None else name
    expires_us = _instant_us(body.get("expires_at"), "expires_at")
    try:
        typed = read_key_settings({k: body[k] for k in ("cap", "rate_limit", "models") if body.get(k) is not None},
                                  live.config, path="key")
    except ConfigError as exc:
        raise _invalid(exc, "key") from None
    settings = {}
    if typed["cap"] is not None:
        settings["cap"] = str(typed["cap"])
    if typed["rate_limit"] is not None:
        settings["rate_limit"] = {"rpm": typed["rate_limit"].rpm, "tpm": typed["rate_limit"].tpm}
    if typed["models"] is not None:
        settings["models"] = list(typed["models"])
    key = "pw-" + secrets.token_urlsafe(32)
    digest = hashlib.sha256(key.encode()).hexdigest()
    kid = key_id(digest)
    await _run(live.store.create_key, id=kid, customer=customer_id, digest=digest, name=name or "",
               prefix=key[:8], settings=settings, expires_us=expires_us)
    await _changed(app)
    log.info("key %s created for %s", kid, customer_id)
    return {"id": kid, "object": "api_key", "key": key, "customer": customer_id, "name": name or "",
            "prefix": key[:8], "created_at": _iso(now_us()), "expires_at": _iso(expires_us), **settings}


async def list_keys(request: web.Request) -> web.Response:
    """`GET /v1/admin/customers/{id}/keys`: ids, names, prefixes and dates, never a key."""
    _admin(request)
    customer = _find(request)
    rows = {row["id"]: row for row in await _run(request.app[LIVE].store.keys_of, customer.id)}
    data = []
    for entry in customer.keys:  # the file's keys: only their ids are known
        kid = key_id(entry.removeprefix("sha256:"))
        if kid not in rows:
            data.append({"id": kid, "object": "api_key", "customer": customer.id, "source": "config", "name": "",
                         "prefix": None, "created_at": None, "last_used_at": None, "expires_at": None,
                         "revoked_at": None})
    for row in rows.values():
        data.append({"id": row["id"], "object": "api_key", "customer": customer.id, "source": "api",
                     "name": row["name"], "prefix": row["prefix"] + "…", "created_at": _iso(row["created_us"]),
                     "last_used_at": _iso(row["last_used_us"]), "expires_at": _iso(row["expires_us"]),
                     "revoked_at": _iso(row["revoked_us"]), **row["settings"]})
    page, has_more = _page(request, data, lambda k: k["id"])
    return _list(page, has_more)


async def revoke_key(request: web.Request) -> web.Response:
    """`DELETE /v1/admin/keys/{key_id}`: refused from now on, on every proxy within a second."""
    _admin(request)
    kid = request.match_info["key_id"]
    row = await _runtime_key(request, kid)
    await _run(request.app[LIVE].store.end_key, kid, revoke=True, at_us=now_us())
    await _changed(request.app)
    log.info("key %s of %s revoked", kid, row["customer"])
    return web.json_response({"id": kid, "object": "api_key", "deleted": True})


async def rotate_key(request: web.Request) -> web.Response:
    """`POST /v1/admin/keys/{key_id}/rotate {grace_seconds}`: a new key (same name and limits);
    the old one keeps working for the grace period only."""
    _admin(request)
    kid = request.match_info["key_id"]
    row = await _runtime_key(request, kid)
    body = await _body(request, ("grace_seconds",))
    grace = body.get("grace_seconds", 0)
    if type(grace) is not int or not 0 <= grace <= 30 * 86400:
        raise InvalidRequest("grace_seconds must be a whole number of seconds from 0 to 2592000 (30 days)",
                             param="grace_seconds")
    fresh = await _issue(request.app, row["customer"], {**row["settings"]}, name=row["name"])
    await _run(request.app[LIVE].store.end_key, kid, revoke=False, at_us=now_us() + grace * 1_000_000)
    await _changed(request.app)
    log.info("key %s of %s rotated to %s (grace %d s)", kid, row["customer"], fresh["id"], grace)
    return web.json_response({**fresh, "replaces": kid, "old_key_expires_at": _iso(now_us() + grace * 1_000_000)},
                             status=201)


async def _runtime_key(request: web.Request, kid: str) -> dict:
    row = await _run(request.app[LIVE].store.key, kid)
    if row is None:
        for customer in request.app[LIVE].config.customers.values():
            if any(key_id(k.removeprefix("sha256:")) == kid for k in customer.keys):
                raise Conflict(f"key {kid!r} is declared in the config file: remove it there and reload",
                               code="declared_in_config")
        raise NotFound(f"no key {kid!r}", code="key_not_found")
    if row["revoked_us"] is not None:
        raise Conflict(f"key {kid!r} was revoked already", code="key_revoked")
    return row


# -- usage of every customer, reload ---------------------------------------------------------

async def all_usage(request: web.Request) -> web.StreamResponse:
    """`GET /v1/admin/usage?period=current|YYYY-MM[-DD]&format=json|csv`: every customer at once."""
    _admin(request)
    app = request.app
    period = request.query.get("period", "current")
    at = None
    if period != "current":
        try:
            at = datetime.fromisoformat(period + ("-01" if len(period) == 7 else "")).replace(tzinfo=timezone.utc)
        except ValueError:
            raise InvalidRequest("period must be current, YYYY-MM or YYYY-MM-DD", param="period") from None
        # NOTE: a period's arithmetic steps a month either side: years 1 and 9999 have no neighbour
        if not datetime.min.year < at.year < datetime.max.year:
            raise InvalidRequest("period must be within the years 0002 to 9998", param="period")
    fmt = request.query.get("format", "json")
    if fmt not in ("json", "csv"):
        raise InvalidRequest("format must be json or csv", param="format")
    rows = []
    for customer in sorted(app[LIVE].config.customers.values(), key=lambda c: c.id):
        usage = await summary_of(app, customer, at=at)
        rows.append({"customer": customer.id, "plan": customer.plan, "active": customer.active,
                     "period_start": usage["period"]["start"], "period_end": usage["period"]["end"],
                     "requests": usage["requests"], **{f"tokens_{k}": v for k, v in usage["tokens"].items()},
                     "amount_due": usage["amount_due"], "amount_due_exact": usage["amount_due_exact"],
                     "currency": usage["currency"],
                     "cap": None if usage["cap"] is None else usage["cap"]["amount"],
                     "remaining": None if usage["cap"] is None else usage["cap"]["remaining"]})
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
        config = await _run(load_config, source)
        problems = _restart_only(live.file_config, config)
        if not problems:
            snapshot = await _run(live.store.load)
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


def _instant_us(value: object, name: str) -> int | None:
    if value is None:
        return None
    try:
        if isinstance(value, (int, Decimal)) and not isinstance(value, bool):
            moment = datetime.fromtimestamp(float(value), tz=timezone.utc)
        elif isinstance(value, str):
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
            moment = moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
        else:
            raise ValueError
    except (ValueError, OverflowError, OSError):
        raise InvalidRequest(f"{name} must be an ISO 8601 time or a unix timestamp", param=name) from None
    if moment <= utcnow():
        raise InvalidRequest(f"{name} must be in the future", param=name)
    delta = moment - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _iso(us: int | None) -> str | None:
    return None if us is None else datetime.fromtimestamp(us / 1e6, timezone.utc).isoformat()


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
                await _run(live.store.touch_keys, runtime)
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
