"""Who is calling: a customer key (stored only as its SHA-256) or the admin key."""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass

from aiohttp import web

from config.schema import Config, CustomerConfig
from proxy.serving.accesslog import note
from proxy.errors import Forbidden, InvalidApiKey, InvalidRequest


@dataclass(frozen=True, slots=True)
class Caller:
    customer: CustomerConfig | None  # None for the admin
    key_id: str | None
    admin: bool = False


class KeyRing:
    """Resolves presented keys; built from the config (the file's customers and the runtime ones).

    A key works while its customer is active and until its `expires_at` (a rotated key's
    grace). `used` collects, per key id, when it was last used (written out in batches).
    """

    def __init__(self, config: Config):
        self._config = config
        self._index = config.key_index()
        self._admin = config.server.admin_key.encode() if config.server.admin_key else None
        self.used: dict[str, float] = {}

    def caller(self, request: web.Request) -> Caller:
        key = _bearer(request)
        if self._admin is not None and hmac.compare_digest(key, self._admin):
            note(request, customer=None, key_id="admin")
            return Caller(customer=None, key_id="admin", admin=True)
        found = self._index.get(hashlib.sha256(key).hexdigest())
        if found is None:
            raise InvalidApiKey("Incorrect API key provided. Use a Payware key issued for this proxy.")
        customer_id, key_id = found
        customer = self._config.customers[customer_id]
        policy = customer.key_policies.get(key_id)
        now = time.time()
        if not customer.active or (policy is not None and policy.expires_at is not None
                                   and policy.expires_at.timestamp() <= now):
            raise InvalidApiKey("Incorrect API key provided: this key was revoked or has expired.")
        self.used[key_id] = now
        note(request, customer=customer_id, key_id=key_id)
        return Caller(customer=customer, key_id=key_id)

    def customer(self, request: web.Request) -> Caller:
        """A customer key only: the model endpoints bill a customer, never the admin."""
        caller = self.caller(request)
        if caller.admin:
            raise InvalidRequest("the admin key cannot call models; use a customer key")
        return caller

    def subject(self, request: web.Request) -> CustomerConfig:
        """The customer whose data a metering call reads: the caller's own, or `?customer=` for the admin."""
        caller = self.caller(request)
        wanted = request.query.get("customer")
        if not caller.admin:
            if wanted is not None and wanted != caller.customer.id:
                raise Forbidden("a customer key can only read its own usage")
            return caller.customer
        if not wanted:
            raise InvalidRequest("the admin key must name a customer: ?customer=ID", param="customer")
        customer = self._config.customers.get(wanted)
        if customer is None:
            raise InvalidRequest(f"no customer {wanted!r}", param="customer", code="customer_not_found")
        return customer


def _bearer(request: web.Request) -> bytes:
    """The Payware key the client presented, as bytes (keys are printable ASCII).

    Each API's SDK sends its key its own way, and Payware takes it wherever that is:
    `Authorization: Bearer` (OpenAI's; Anthropic's SDK too), `x-api-key` (Anthropic's),
    `x-goog-api-key` or `?key=` (Gemini's).
    """
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    key = key.strip() if scheme.lower() == "bearer" else ""
    if not key:
        key = (request.headers.get("x-api-key") or request.headers.get("x-goog-api-key")
               or request.query.get("key") or "").strip()
    if not key:
        raise InvalidApiKey("You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.")
    try:
        return key.encode("ascii")
    except UnicodeEncodeError:  # aiohttp keeps bytes that are not UTF-8 as surrogate escapes
        raise InvalidApiKey("Incorrect API key provided. Use a Payware key issued for this proxy.") from None
