"""The admin operations on customers and keys, once: validation, the directory's change, the answer.

The admin API (`proxy.routes.admin`) runs them in a worker thread; the CLI's direct mode
(`proxy.cli.modes.Local`) calls them as they are, so a refusal names the same field, with the
same message and code, in both. Each is synchronous (the directory store is), takes the config
in force, and leaves telling the proxies about the change to its caller.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from datetime import datetime, timezone
from decimal import Decimal

from config.loader import ConfigError, read_customer, read_key_settings
from config.schema import Config, CustomerConfig, key_id
from metering.store.bounds import is_clean, is_clean_json
from metering.store.directory import INSTANTS_END, INSTANTS_END_TEXT, DirectoryStore, moment_of, now_us
from metering.store.events import to_us, utcnow
from proxy.errors import Conflict, InvalidRequest, NotFound

CUSTOMER_FIELDS = ("id", "plan", "cap", "rate_limit", "models", "metadata", "anchor_day")
KEY_FIELDS = ("name", "expires_at", "cap", "rate_limit", "models")
MAX_METADATA = 4096  # bytes of a customer's metadata JSON
MAX_GRACE = 30 * 86400  # seconds a rotated key may keep working


# -- validation --------------------------------------------------------------------------------

def invalid(exc: ConfigError, prefix: str) -> InvalidRequest:
    """A validation failure as a 400 naming the first field (and listing every problem)."""
    first = exc.problems[0]
    path = first.split(":", 1)[0]
    param = path.removeprefix(prefix).lstrip(".") or None
    return InvalidRequest("; ".join(exc.problems), param=param)


def text(value: object, name: str, limit: int, *, required: bool = False) -> str | None:
    if value is None:
        if required:
            raise InvalidRequest(f"{name} is required", param=name)
        return None
    if not isinstance(value, str) or not value or len(value) > limit or not is_clean(value):
        raise InvalidRequest(f"{name} must be a string of 1 to {limit} characters (UTF-8, no NUL)", param=name)
    return value


def metadata(value: object) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise InvalidRequest("metadata must be an object", param="metadata")
    dumped = json.dumps(value, default=str)
    if (len(dumped.encode("utf-8", "surrogatepass")) > MAX_METADATA or "\\u0000" in dumped
            or not is_clean_json(value, max_depth=8)):
        raise InvalidRequest(f"metadata must be at most {MAX_METADATA} bytes of valid UTF-8 without NUL",
                             param="metadata")
    return json.loads(dumped)


def customer_settings(body: dict) -> dict:
    """The customer settings kept in the database, in the config file's shape (strings for money)."""
    settings = {name: body[name] for name in ("cap", "rate_limit", "models", "anchor_day") if body.get(name) is not None}
    cap = settings.get("cap")
    if isinstance(cap, dict) and isinstance(cap.get("amount"), Decimal):
        settings["cap"] = {**cap, "amount": str(cap["amount"])}
    return settings


def instant_us(value: object, name: str) -> int | None:
    """A future moment (ISO 8601 or a unix timestamp) before `INSTANTS_END` (9999-01-01 UTC), in
    microseconds since the epoch; a 400 naming `name` otherwise, before anything is written.

    NOTE: bounded in UTC, after the offset: "9999-12-31T23:59:59-14:00" is in the year 10000,
    which no `datetime` holds; kept, it failed every later read of the directory or the grants.
    """
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
        raise InvalidRequest(f"{name} must be an ISO 8601 time or a unix timestamp before {INSTANTS_END_TEXT}",
                             param=name) from None
    if moment <= utcnow():
        raise InvalidRequest(f"{name} must be in the future", param=name)
    if moment >= INSTANTS_END:
        raise InvalidRequest(f"{name} must be before {INSTANTS_END_TEXT} (in UTC, after its offset)", param=name)
    return to_us(moment)


def iso(us: int | None) -> str | None:
    """A kept moment (microseconds since the epoch) as ISO 8601 in UTC, exactly."""
    return None if us is None else moment_of(us).isoformat()


def usage_moment(period: str) -> datetime | None:
    """A moment in the period `current`, `YYYY-MM` or `YYYY-MM-DD` names (None: now)."""
    if period == "current":
        return None
    try:
        at = datetime.fromisoformat(period + ("-01" if len(period) == 7 else "")).replace(tzinfo=timezone.utc)
    except ValueError:
        raise InvalidRequest("period must be current, YYYY-MM or YYYY-MM-DD", param="period") from None
    # NOTE: a period's arithmetic steps a month either side: years 1 and 9999 have no neighbour
    if not datetime.min.year < at.year < datetime.max.year:
        raise InvalidRequest("period must be within the years 0002 to 9998", param="period")
    return at


# -- customers ---------------------------------------------------------------------------------

def find_customer(config: Config, customer_id: str) -> CustomerConfig:
    customer = config.customers.get(customer_id)
    if customer is None:
        raise NotFound(f"no customer {customer_id!r}", param="id", code="customer_not_found")
    return customer


def runtime_customer(config: Config, customer_id: str) -> CustomerConfig:
    """A customer made at runtime: the file's are changed by editing the file."""
    customer = find_customer(config, customer_id)
    if customer.source != "api":
        raise Conflict(f"customer {customer.id!r} is declared in the config file: edit the file and reload",
                       param="id", code="declared_in_config")
    return customer


def create_customer(config: Config, file_config: Config, store: DirectoryStore, body: dict) -> str:
    """Validate and keep a new customer; its id."""
    customer_id = text(body.get("id"), "id", 128, required=True)
    settings, meta = customer_settings(body), metadata(body.get("metadata"))
    try:
        read_customer(customer_id, {"plan": body.get("plan"), **settings}, config, path="customer")
    except ConfigError as exc:
        raise invalid(exc, "customer") from None
    if customer_id in file_config.customers:
        raise Conflict(f"customer {customer_id!r} is declared in the config file", param="id",
                       code="customer_exists")
    if not store.create_customer(id=customer_id, plan=body["plan"], settings=settings, meta=meta):
        raise Conflict(f"customer {customer_id!r} exists already", param="id", code="customer_exists")
    return customer_id


def update_customer(config: Config, store: DirectoryStore, customer_id: str, body: dict) -> str:
    """Change a runtime customer (null removes a setting); its id."""
    customer = runtime_customer(config, customer_id)
    row = store.customer(customer.id)
    settings = {**row["settings"], **customer_settings(body)}
    for name in ("cap", "rate_limit", "models"):
        if name in body and body[name] is None:
            settings.pop(name, None)  # null removes it
    plan = body.get("plan", row["plan"])
    try:
        read_customer(customer.id, {"plan": plan, **settings}, config, path="customer")
    except ConfigError as exc:
        raise invalid(exc, "customer") from None
    values = {"plan": plan, "settings": settings}
    if "metadata" in body:
        values["meta"] = metadata(body["metadata"])
    store.update_customer(customer.id, **values)
    return customer.id


def deactivate_customer(config: Config, store: DirectoryStore, customer_id: str) -> dict:
    customer = runtime_customer(config, customer_id)
    store.update_customer(customer.id, active=False)
    return {"id": customer.id, "object": "customer", "deleted": True, "active": False}


def customer_view(customer: CustomerConfig, usage: dict) -> dict:
    """The admin API's customer object, with `usage`: its period's summary (`/v1/usage/summary`)."""
    cap, rate = customer.cap, customer.rate_limit
    return {"id": customer.id, "object": "customer", "plan": customer.plan, "active": customer.active,
            "source": customer.source, "metadata": customer.metadata, "anchor_day": customer.anchor_day,
            "cap": None if cap is None else {"amount": str(cap.amount), "action": cap.action, "mode": cap.mode,
                                             "clamp": cap.clamp},
            "rate_limit": None if rate is None else {"rpm": rate.rpm, "tpm": rate.tpm},
            "models": list(customer.models) if customer.models is not None else None,
            "usage": {"period": usage["period"], "requests": usage["requests"], "tokens": usage["tokens"],
                      "amount_due": usage["amount_due"], "amount_due_exact": usage["amount_due_exact"],
                      "currency": usage["currency"],
                      "cap": None if usage["cap"] is None else usage["cap"]["amount"],
                      "remaining": None if usage["cap"] is None else usage["cap"]["remaining"]}}


def usage_row(customer: CustomerConfig, usage: dict) -> dict:
    """One row of `GET /v1/admin/usage` (flat, for CSV too)."""
    return {"customer": customer.id, "plan": customer.plan, "active": customer.active,
            "period_start": usage["period"]["start"], "period_end": usage["period"]["end"],
            "requests": usage["requests"], **{f"tokens_{k}": v for k, v in usage["tokens"].items()},
            "amount_due": usage["amount_due"], "amount_due_exact": usage["amount_due_exact"],
            "currency": usage["currency"],
            "cap": None if usage["cap"] is None else usage["cap"]["amount"],
            "remaining": None if usage["cap"] is None else usage["cap"]["remaining"]}


# -- keys --------------------------------------------------------------------------------------

def inactive(customer: CustomerConfig) -> InvalidRequest:
    return InvalidRequest(f"customer {customer.id!r} is deactivated", param="id", code="customer_inactive")


def new_key() -> tuple[str, str]:
    """A new customer key and the hex SHA-256 that is all Payware keeps of it."""
    key = "pw-" + secrets.token_urlsafe(32)
    return key, hashlib.sha256(key.encode()).hexdigest()


def issue_key(config: Config, store: DirectoryStore, customer: CustomerConfig, body: dict, *,
              name: str | None = None) -> dict:
    """A new key for the customer, kept as its hash; the answer is the only place the key shows.
    A deactivated customer gets none (its keys are refused: a new one would be too)."""
    if not customer.active:
        raise inactive(customer)
    customer_id = customer.id
    name = text(body.get("name"), "name", 128) if name is None else name
    expires_us = instant_us(body.get("expires_at"), "expires_at")
    try:
        typed = read_key_settings({k: body[k] for k in ("cap", "rate_limit", "models") if body.get(k) is not None},
                                  config, path="key")
    except ConfigError as exc:
        raise invalid(exc, "key") from None
    settings = {}
    if typed["cap"] is not None:
        settings["cap"] = str(typed["cap"])
    if typed["rate_limit"] is not None:
        settings["rate_limit"] = {"rpm": typed["rate_limit"].rpm, "tpm": typed["rate_limit"].tpm}
    if typed["models"] is not None:
        settings["models"] = list(typed["models"])
    key, digest = new_key()
    kid = key_id(digest)
    store.create_key(id=kid, customer=customer_id, digest=digest, name=name or "", prefix=key[:8],
                     settings=settings, expires_us=expires_us)
    return {"id": kid, "object": "api_key", "key": key, "customer": customer_id, "name": name or "",
            "prefix": key[:8], "created_at": iso(now_us()), "expires_at": iso(expires_us), **settings}


def list_keys(store: DirectoryStore, customer: CustomerConfig) -> list[dict]:
    """Every key of the customer: ids, names, prefixes and dates, never a key."""
    rows = {row["id"]: row for row in store.keys_of(customer.id)}
    data = []
    for entry in customer.keys:  # the file's keys: only their ids are known
        kid = key_id(entry.removeprefix("sha256:"))
        if kid not in rows:
            data.append({"id": kid, "object": "api_key", "customer": customer.id, "source": "config", "name": "",
                         "prefix": None, "created_at": None, "last_used_at": None, "expires_at": None,
                         "revoked_at": None})
    for row in rows.values():
        data.append({"id": row["id"], "object": "api_key", "customer": customer.id, "source": "api",
                     "name": row["name"], "prefix": row["prefix"] + "…", "created_at": iso(row["created_us"]),
                     "last_used_at": iso(row["last_used_us"]), "expires_at": iso(row["expires_us"]),
                     "revoked_at": iso(row["revoked_us"]), **row["settings"]})
    return data


def runtime_key(config: Config, store: DirectoryStore, kid: str) -> dict:
    """A live key kept in the database (a file's key is changed in the file)."""
    row = store.key(kid)
    if row is None:
        for customer in config.customers.values():
            if any(key_id(k.removeprefix("sha256:")) == kid for k in customer.keys):
                raise Conflict(f"key {kid!r} is declared in the config file: remove it there and reload",
                               code="declared_in_config")
        raise NotFound(f"no key {kid!r}", code="key_not_found")
    if row["revoked_us"] is not None:
        raise Conflict(f"key {kid!r} was revoked already", code="key_revoked")
    return row


def revoke_key(config: Config, store: DirectoryStore, kid: str) -> tuple[dict, str]:
    """Refuse the key from now on; the answer, and whose key it was."""
    row = runtime_key(config, store, kid)
    store.end_key(kid, revoke=True, at_us=now_us())
    return {"id": kid, "object": "api_key", "deleted": True}, row["customer"]


def rotate_key(config: Config, store: DirectoryStore, kid: str, grace: object) -> dict:
    """A new key with the same name and limits; the old one works for `grace` seconds more."""
    row = runtime_key(config, store, kid)
    if type(grace) is not int or not 0 <= grace <= MAX_GRACE:
        raise InvalidRequest(f"grace_seconds must be a whole number of seconds from 0 to {MAX_GRACE} (30 days)",
                             param="grace_seconds")
    owner = config.customers.get(row["customer"])
    if owner is None:
        raise NotFound(f"no customer {row['customer']!r} for key {kid!r}", param="key_id")
    fresh = issue_key(config, store, owner, {**row["settings"]}, name=row["name"])
    ends_us = now_us() + grace * 1_000_000
    store.end_key(kid, revoke=False, at_us=ends_us)
    return {**fresh, "replaces": kid, "old_key_expires_at": iso(ends_us)}
