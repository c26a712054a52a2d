"""Which provider object an event makes its customer the owner of: a Responses call's response.

The ownership is read off the event, so it travels with it: the ledger writes it in the same
transaction as the event's row (`Ledger.append`), and a journal replayed after a crash brings
it back with the event (`Ledger.insert`, for events the ledger did not have: a response its
owner deleted is not handed back). Nothing on a call's path waits for a database; until the
next batch is written the recorder answers for the ownerships it holds (`Recorder.owner`).

The event's `meta` carries what only the proxy writes there: the provider's id of the
answer (`provider_id`) and, for a response the caller asked the provider not to keep,
`stored: false`. A client cannot set either (`proxy.metadata` drops those names from its
`X-Payware-Meta-*` headers), so no customer can claim an id through its metadata.
"""

from __future__ import annotations

from typing import NamedTuple

from metering.store.bounds import is_clean
from metering.store.events import UsageEvent, to_us

# Two of bounds.PAYWARE_META: kept when a client's metadata is cut, never taken from a client
PROVIDER_ID = "provider_id"  # meta: the provider's own id of the answer (evidence, and the owned object)
STORED = "stored"  # meta: False when the caller asked the provider not to keep the answer
OWNING_ENDPOINTS = {"responses": "response"}  # event endpoint -> the kind of object a call of it creates
WIDTH = 128  # the owned_objects text columns' width (`OwnedRow`)


class Owned(NamedTuple):
    """One row of `owned_objects`: who may read or continue a provider object, and the tokens
    the provider bills again as input when it is continued."""

    id: str
    kind: str  # "response"
    customer: str
    provider: str
    model: str
    context_tokens: int
    created_us: int


def owned_by(event: UsageEvent) -> Owned | None:
    """The object `event` made its customer the owner of, or None.

    NOTE: an id or name the ledger could not hold whole is not owned (its row would fail the
    event's batch): continuing it is then a 404, never another object's owner."""
    kind = OWNING_ENDPOINTS.get(event.endpoint)
    if kind is None:
        return None
    meta = event.meta
    object_id = meta.get(PROVIDER_ID)
    if not isinstance(object_id, str) or not object_id or meta.get(STORED) is False:
        return None
    names = (object_id, event.customer, event.provider, event.model)
    if not all(isinstance(name, str) and len(name) <= WIDTH and is_clean(name) for name in names):
        return None
    return Owned(object_id, kind, event.customer, event.provider, event.model,
                 event.input_tokens + event.output_tokens, to_us(event.ts))
