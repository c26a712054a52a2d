"""Usage metadata taken from the request: what a dispute needs to tie a charge to an action.

Headers and body fields are the client's: any bytes, any length. They are cleaned and clipped
here to what the ledger holds (`metering.store.bounds`), never refused: the call is billed
whatever its metadata looks like.
"""

from __future__ import annotations

from multidict import CIMultiDictProxy

from metering.store.bounds import PAYWARE_META, TEXT_COLUMNS, clean_text

_META_PREFIX = "x-payware-meta-"
_MAX_VALUE = 512  # metadata is evidence, not storage: long values are cut
_MAX_NAME = 64
_MAX_ENTRIES = 16  # per source: X-Payware-Meta-* headers, the body's `metadata`


def request_metadata(headers: CIMultiDictProxy[str], body: dict) -> tuple[str | None, str | None, dict]:
    """(session, feature, meta) from `X-Payware-*` headers and the body's `user`/`metadata`."""
    session = _clip(headers.get("X-Payware-Session"), TEXT_COLUMNS["session"])
    feature = _clip(headers.get("X-Payware-Feature"), TEXT_COLUMNS["feature"])
    meta: dict = {}
    taken = 0
    for name, value in headers.items():
        if name.lower().startswith(_META_PREFIX) and len(name) > len(_META_PREFIX) and taken < _MAX_ENTRIES:
            key = clean_text(name[len(_META_PREFIX):].lower(), _MAX_NAME)
            # NOTE: names only Payware writes are dropped: no client can claim a provider object
            # (`metering.store.owned`) or pass for Payware's own evidence
            if key not in PAYWARE_META:
                meta[key] = _clip(value)
            taken += 1
    user = body.get("user")
    if isinstance(user, str):
        meta["user"] = _clip(user)
    metadata = body.get("metadata")
    if isinstance(metadata, dict):
        meta["metadata"] = {clean_text(str(k), _MAX_NAME): _clip(v if isinstance(v, str) else str(v)[:_MAX_VALUE])
                            for k, v in list(metadata.items())[:_MAX_ENTRIES]}
    return session, feature, meta


def _clip(value: str | None, limit: int = _MAX_VALUE) -> str | None:
    return clean_text(value, limit) if value is not None else None
