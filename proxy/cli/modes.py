"""The two modes of the admin CLI (`proxy.cli.admin`): the same operations, the same answers.

- `Remote`: a running proxy's admin API over HTTP (urllib, the admin key as a bearer token);
  its errors come back in OpenAI's envelope.
- `Local`: the ledger database of a config file, changed as the admin API changes it, with the
  API's own validators (`proxy.routes.admin`, `config.loader.read_customer`), so a refusal names
  the same field with the same words. Proxies sharing the database see a change at their next
  directory poll (0.5 s), at once when Redis is configured or the database is PostgreSQL
  (which notifies them).

Both answer with the admin API's JSON objects; a failure is a `Failure` (a message and an exit
code: 1 nothing found, refused or unreachable; 2 bad input).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import sys
import urllib.error
import urllib.request
from contextlib import contextmanager
from datetime import datetime
from decimal import Decimal
from urllib.parse import quote, urlencode


EXIT_FAILED = 1  # nothing found, refused, unreachable
EXIT_BAD_INPUT = 2


class Failure(Exception):
    """What the user is told (one line on stderr), and the exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED):
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def api_failure(status: int, message: str, param: str | None = None, code: str | None = None) -> Failure:
    """An admin API error (over HTTP, or raised by its validators in direct mode) as a Failure."""
    if status in (401, 403):
        return Failure(message + " - check --admin-key or $PAYWARE_ADMIN_KEY")
    if status == 404 or (code or "").endswith("not_found") or status not in (400, 413, 422):
        return Failure(message)
    return Failure(message + (f" (field: {param})" if param else ""), EXIT_BAD_INPUT)


class Progress:
    """A counter on stderr every `every` items, for commands that may run long."""

    def __init__(self, what: str, every: int):
        self.what, self.every, self.count, self.shown = what, every, 0, 0

    def step(self, n: int = 1) -> None:
        self.count += n
        if self.count // self.every > self.shown:
            self.shown = self.count // self.every
            print(f"payware: {self.count} {self.what}…", file=sys.stderr, flush=True)

    def done(self) -> None:
        if self.shown:
            print(f"payware: {self.count} {self.what}, done", file=sys.stderr, flush=True)


class Remote:
    """A running proxy's admin API, over HTTP."""

    def __init__(self, url: str, admin_key: str, *, timeout: float = 60.0):
        if not url.startswith(("http://", "https://")):
            raise Failure(f"--url {url!r} must be http://HOST:PORT (the proxy's address)", EXIT_BAD_INPUT)
        self.base = url.rstrip("/").removesuffix("/v1")
        self.admin_key = admin_key
        self.timeout = timeout

    def call(self, method: str, path: str, body: dict | None = None, query: dict | None = None):
        url = self.base + path + ("?" + urlencode(query) if query else "")
        data = None if body is None else json.dumps(body, default=str).encode()
        request = urllib.request.Request(url, data=data, method=method, headers={
            "Authorization": f"Bearer {self.admin_key}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raise self._refused(exc) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise Failure(f"cannot reach the proxy at {self.base}: {reason}") from None
        try:
            return json.loads(raw)
        except ValueError:
            raise Failure(f"{self.base}{path} did not answer JSON: is it a Payware proxy?") from None

    def _refused(self, exc: urllib.error.HTTPError) -> Failure:
        try:
            error = json.loads(exc.read())["error"]
            return api_failure(exc.code, str(error["message"]), error.get("param"), error.get("code"))
        except (ValueError, KeyError, TypeError, OSError):
            return Failure(f"{self.base} answered {exc.code} {exc.reason}: is it a Payware proxy?")

    def _pages(self, path: str):
        after = None
        while True:
            page = self.call("GET", path, query={"limit": 100, **({"after": after} if after else {})})
            yield from page["data"]
            if not page["has_more"]:
                return
            after = page["last_id"]

    def create_customer(self, body: dict) -> dict:
        return self.call("POST", "/v1/admin/customers", body)

    def customers(self, progress: Progress | None = None):
        for view in self._pages("/v1/admin/customers"):
            if progress:
                progress.step()
            yield view

    def customer_ids(self) -> list[str]:
        return [view["id"] for view in self._pages("/v1/admin/customers")]

    def customer(self, customer_id: str) -> dict:
        return self.call("GET", f"/v1/admin/customers/{quote(customer_id, safe='')}")

    def update_customer(self, customer_id: str, body: dict) -> dict:
        return self.call("PATCH", f"/v1/admin/customers/{quote(customer_id, safe='')}", body)

    def deactivate_customer(self, customer_id: str) -> dict:
        return self.call("DELETE", f"/v1/admin/customers/{quote(customer_id, safe='')}")

    def create_key(self, customer_id: str, body: dict) -> dict:
        return self.call("POST", f"/v1/admin/customers/{quote(customer_id, safe='')}/keys", body)

    def keys(self, customer_id: str) -> list[dict]:
        return list(self._pages(f"/v1/admin/customers/{quote(customer_id, safe='')}/keys"))

    def revoke_key(self, key_id: str) -> dict:
        return self.call("DELETE", f"/v1/admin/keys/{quote(key_id, safe='')}")

    def rotate_key(self, key_id: str, grace: object) -> dict:
        return self.call("POST", f"/v1/admin/keys/{quote(key_id, safe='')}/rotate", {"grace_seconds": grace})

    def summary(self, customer_id: str) -> dict:
        return self.call("GET", "/v1/usage/summary", query={"customer": customer_id})

    def all_usage(self, period: str, progress: Progress | None = None) -> list[dict]:
        return self.call("GET", "/v1/admin/usage", query={"period": period})["data"]  # one answer: no progress


class Local:
    """The ledger database of a config file, changed as the admin API changes it (no proxy):
    the same operations (`proxy.admin_ops`), so a refusal names the same field in both modes."""

    def __init__(self, config_path: str | None):
        from config.loader import load_config
        from metering.store.directory import DirectoryStore
        from metering.store.ledger import Ledger

        self.file_config = load_config(config_path)
        url = self.file_config.storage.ledger
        try:
            self.ledger = Ledger(url)
        except Exception as exc:  # unreachable server, bad credentials, unwritable file
            raise Failure(f"cannot open the ledger {hide_password(url)}: {first_line(exc)}") from None
        self.store = DirectoryStore(self.ledger.engine)
        self._meter = self._own_caps = self._kept_aside = None
        self._load()

    def close(self) -> None:
        self.ledger.close()

    def _load(self) -> None:
        from proxy.live import merge

        self.config = merge(self.file_config, self.store.load())  # ConfigError if they no longer fit
        if self._meter is not None:
            self._meter.reconfigure(self.config)

    def _changed(self) -> None:
        """Read the directory again; tell proxies listening on Redis (the others poll it)."""
        self._load()
        counters = self.file_config.storage.counters
        if counters == "memory":
            return
        try:
            import redis

            from proxy.live import CHANNEL

            client = redis.Redis.from_url(counters, socket_timeout=2, socket_connect_timeout=2)
            try:
                client.publish(CHANNEL, "changed")
            finally:
                client.close()
        except Exception:  # best effort: every proxy also polls the directory's version
            pass

    # -- customers

    def create_customer(self, body: dict) -> dict:
        from proxy import admin_ops as ops

        customer_id = ops.create_customer(self.config, self.file_config, self.store, body)
        self._changed()
        return self.view(self.config.customers[customer_id])

    def customers(self, progress: Progress | None = None):
        for customer in sorted(self.config.customers.values(), key=lambda c: c.id):
            if progress:
                progress.step()
            yield self.view(customer)

    def customer_ids(self) -> list[str]:
        return sorted(self.config.customers)

    def customer(self, customer_id: str) -> dict:
        return self.view(self._find(customer_id))

    def update_customer(self, customer_id: str, body: dict) -> dict:
        from proxy import admin_ops as ops

        customer_id = ops.update_customer(self.config, self.store, customer_id, body)
        self._changed()
        return self.view(self.config.customers[customer_id])

    def deactivate_customer(self, customer_id: str) -> dict:
        from proxy import admin_ops as ops

        answer = ops.deactivate_customer(self.config, self.store, customer_id)
        self._changed()
        return answer

    def _find(self, customer_id: str):
        from proxy import admin_ops as ops

        return ops.find_customer(self.config, customer_id)

    def view(self, customer) -> dict:
        """The admin API's customer object, usage from the ledger."""
        from proxy import admin_ops as ops

        return ops.customer_view(customer, self.summary_of(customer))

    # -- keys

    def create_key(self, customer_id: str, body: dict) -> dict:
        from proxy import admin_ops as ops

        made = ops.issue_key(self.config, self.store, self._find(customer_id), body)
        self._changed()
        return made

    def keys(self, customer_id: str) -> list[dict]:
        from proxy import admin_ops as ops

        return ops.list_keys(self.store, self._find(customer_id))

    def file_key(self, kid: str) -> tuple[str, str] | None:
        """(customer, "sha256:…") of key `kid` if the config file declares it (not a runtime key)."""
        from config.schema import key_id

        if self.store.key(kid) is not None:
            return None
        for customer in self.file_config.customers.values():
            for entry in customer.keys:
                if key_id(entry.removeprefix("sha256:")) == kid:
                    return customer.id, entry
        return None

    def revoke_key(self, kid: str) -> dict:
        from proxy import admin_ops as ops

        answer, _customer = ops.revoke_key(self.config, self.store, kid)
        self._changed()
        return answer

    def rotate_key(self, kid: str, grace: object) -> dict:
        from proxy import admin_ops as ops

        fresh = ops.rotate_key(self.config, self.store, kid, grace)
        self._changed()
        return fresh

    # -- usage

    def summary_of(self, customer, *, at: datetime | None = None) -> dict:
        """The HTTP summary (`proxy.routes.usage.summary_of`) of a customer's period, from the ledger:
        every event a proxy has written (a running proxy writes them within its flush_interval)."""
        from metering.billing.meter import Meter
        from metering.billing.statements import round_money
        from metering.limits.counters import PeriodTotals
        from metering.store.events import decimal_str, money_str, utcnow
        from proxy.routes.usage import _tokens

        if self._meter is None:
            self._meter = Meter(self.config)
            self._meter.restore_thresholds(self.ledger)  # threshold periods resume where the ledger left them
            self._own_caps = self.ledger.customer_caps()
            self._kept_aside = self.ledger.dead_letter_counts()
        plan = self.config.plans[customer.plan]
        period = self._meter.period(customer, at or utcnow())
        totals = PeriodTotals()
        for event in self.ledger.events(customer=customer.id, period=period.key):
            totals.add(event)
        due = plan.base_fee + totals.all.amount
        own, admin = self._own_caps.get(customer.id), customer.cap.amount if customer.cap else None
        limit = admin if own is None else own if admin is None else min(own, admin)  # as admission's cap_amount
        cap = None
        if limit is not None:
            cap = {"amount": money_str(limit), "spent": money_str(totals.all.amount),
                   "remaining": money_str(max(limit - totals.all.amount, Decimal(0))),
                   "action": customer.cap.action if customer.cap else "block",
                   "mode": customer.cap.mode if customer.cap else "hard"}
        return {
            "customer": customer.id, "plan": plan.name,
            "period": {"start": period.start.isoformat(), "end": period.end.isoformat(), "interval": period.interval},
            "requests": totals.all.requests, "tokens": _tokens(totals.all), "base_fee": money_str(plan.base_fee),
            "amount_due": str(round_money(due, plan.currency)), "amount_due_exact": money_str(due),
            "currency": plan.currency, "cap": cap,
            "by_model": [{"model": name, "requests": t.requests, "tokens": _tokens(t),
                          "quantity": decimal_str(t.quantity), "amount": money_str(t.amount)}
                         for name, t in sorted(totals.by_model.items())],
            "evidence": {"kept_aside": self._kept_aside.get(customer.id, 0)},
        }

    def summary(self, customer_id: str) -> dict:
        from proxy.errors import InvalidRequest

        customer = self.config.customers.get(customer_id)
        if customer is None:  # as GET /v1/usage/summary?customer= answers
            raise InvalidRequest(f"no customer {customer_id!r}", param="customer", code="customer_not_found")
        return self.summary_of(customer)

    def all_usage(self, period: str, progress: Progress | None = None) -> list[dict]:
        """`GET /v1/admin/usage`'s rows (`proxy.routes.admin.all_usage`), from the ledger."""
        from proxy import admin_ops as ops

        at = ops.usage_moment(period)
        rows = []
        for customer in sorted(self.config.customers.values(), key=lambda c: c.id):
            rows.append(ops.usage_row(customer, self.summary_of(customer, at=at)))
            if progress:
                progress.step()
        return rows


@contextmanager
def backend(args):
    """The mode the arguments ask for: `Remote` with --url, else `Local` on the config's ledger."""
    if args.url:
        admin_key = args.admin_key or os.environ.get("PAYWARE_ADMIN_KEY")
        if not admin_key:
            raise Failure("--url needs the admin key: set PAYWARE_ADMIN_KEY or give --admin-key", EXIT_BAD_INPUT)
        yield Remote(args.url, admin_key)
        return
    local = Local(args.config)
    try:
        yield local
    finally:
        local.close()


def first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return (text.splitlines() or [type(exc).__name__])[0][:300]


def hide_password(url: str) -> str:
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)
