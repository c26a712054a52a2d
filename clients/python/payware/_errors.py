"""Typed errors: one class per kind of failure, each carrying Payware's error envelope.

Payware answers every error as `{"error": {"message", "type", "param", "code"}}` with an
HTTP status; `error_from` turns such an answer into the matching class.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


class PaywareError(Exception):
    """Any failure of a Payware call.

    `status` is the HTTP status (None when no answer arrived); `type`, `code`, `param` and
    `message` are the fields of Payware's error envelope; `request_id` is the answer's
    `X-Payware-Request-Id` when it carried one; `body` is the parsed answer, if any.
    """

    def __init__(self, message: str, *, status: int | None = None, type: str | None = None,
                 code: str | None = None, param: str | None = None, request_id: str | None = None,
                 body: Any = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type
        self.code = code
        self.param = param
        self.request_id = request_id
        self.body = body

    def __str__(self) -> str:
        parts = [str(self.status)] if self.status is not None else []
        if self.code:
            parts.append(self.code)
        head = " ".join(parts)
        text = f"{head}: {self.message}" if head else self.message
        if self.param:
            text += f" (param: {self.param})"
        if self.request_id:
            text += f" [request {self.request_id}]"
        return text

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(status={self.status!r}, type={self.type!r}, code={self.code!r}, "
                f"param={self.param!r}, message={self.message!r}, request_id={self.request_id!r})")


class InvalidRequestError(PaywareError):
    """400 (or 413, 422): the request is wrong; `param` names the field. Never retried."""


class AuthenticationError(PaywareError):
    """401: the key is missing or not a Payware key. Never retried."""


class PermissionDeniedError(PaywareError):
    """403: the key is valid but may not do this (a customer key naming another customer,
    or recording usage, which is the admin key's). Never retried."""


class NotFoundError(PaywareError):
    """404: no such route or object. Never retried."""


class RateLimitError(PaywareError):
    """429 `rate_limit_exceeded`: too many requests; retried after `Retry-After` until
    `max_retries` is spent."""


class SpendCapReachedError(PaywareError):
    """429 with code `spend_cap_reached`: the customer's spend cap is reached. Never retried:
    waiting does not lift a cap."""


class ServerError(PaywareError):
    """5xx: Payware or a provider failed; retried with backoff until `max_retries` is spent."""


class APIConnectionError(PaywareError):
    """No answer: the connection failed or was dropped. Retried; a record call resends the
    same idempotency key, so a record that did reach Payware is kept once."""


class APITimeoutError(APIConnectionError):
    """No answer within `timeout` seconds. Retried like any connection error."""


def error_from(status: int, headers: Mapping[str, str], body: bytes) -> PaywareError:
    """The typed error for an HTTP error answer (`headers` keyed in lower case)."""
    parsed: Any = None
    try:
        parsed = json.loads(body)
    except ValueError:
        pass
    envelope = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(envelope, dict):
        message = str(envelope.get("message") or f"HTTP {status}")
        kind, code, param = envelope.get("type"), envelope.get("code"), envelope.get("param")
    else:  # not Payware's envelope (a load balancer's page, say): keep the start of the text
        message = body[:500].decode("utf-8", "replace").strip() or f"HTTP {status}"
        kind = code = param = None
    if status == 429:
        cls = SpendCapReachedError if code == "spend_cap_reached" else RateLimitError
    elif status >= 500:
        cls = ServerError
    else:
        cls = _BY_STATUS.get(status, PaywareError)
    return cls(message, status=status, type=kind, code=code, param=param,
               request_id=headers.get("x-payware-request-id"), body=parsed)


_BY_STATUS: dict[int, type[PaywareError]] = {
    400: InvalidRequestError, 413: InvalidRequestError, 422: InvalidRequestError,
    401: AuthenticationError, 403: PermissionDeniedError, 404: NotFoundError,
}
