"""Payware's client: record custom usage and read usage, caps and statements.

    from payware import Payware
    pw = Payware("pk_...", base_url="http://127.0.0.1:8080")
    pw.usage.record(customer="cust_abc123", metric="agent_actions", quantity=3)
    pw.usage.summary("cust_abc123")["amount_due"]

`AsyncPayware` has the same surface, awaited. Errors are `PaywareError` subclasses.
"""

from ._async import AsyncPayware
from ._core import VERSION as __version__
from ._errors import (
    APIConnectionError,
    APITimeoutError,
    AuthenticationError,
    InvalidRequestError,
    NotFoundError,
    PaywareError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    SpendCapReachedError,
)
from ._sync import Payware

__all__ = [
    "Payware", "AsyncPayware", "PaywareError", "AuthenticationError", "PermissionDeniedError", "NotFoundError",
    "InvalidRequestError", "RateLimitError", "SpendCapReachedError", "APIConnectionError", "APITimeoutError",
    "ServerError", "__version__",
]
