"""Usage metadata taken from the request: what a dispute needs to tie a charge to an action."""

from __future__ import annotations

from multidict import CIMultiDictProxy

_META_PREFIX = "x-payware-meta-"
_MAX_VALUE = 512  # metadata is evidence, not storage: long values are cut


def request_metadata(headers: CIMultiDictProxy[str], body: dict) -> tuple[str | None, str | None, dict]:
    """(session, feature, meta) from `X-Payware-*` headers and the body's `user`/`metadata`."""
    session = _clip(headers.get("X-Payware-Session"))
    feature = _clip(headers.get("X-Payware-Feature"))
    meta: dict = {}
    for name, value in headers.items():
        if name.lower().startswith(_META_PREFIX) and len(name) > len(_META_PREFIX):
            meta[name[len(_META_PREFIX):].lower()] = _clip(value)
    user = body.get("user")
    if isinstance(user, str):
        meta["user"] = _clip(user)
    metadata = body.get("metadata")
    if isinstance(metadata, dict):
        meta["metadata"] = {str(k)[:64]: _clip(str(v)) for k, v in list(metadata.items())[:16]}
    return session, feature, meta


def _clip(value: str | None) -> str | None:
    return value[:_MAX_VALUE] if value is not None else None
