"""Errors as values: each carries its HTTP status and OpenAI's type and code.

Handlers raise; one middleware (`proxy.serving.accesslog.edge_middleware`, through `render_failure`)
renders every error, ours or unexpected, in the route's envelope: OpenAI's
`{"error": {"message", "type", "param", "code"}}` unless the route set its API's own.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

from aiohttp import web

log = logging.getLogger("payware.errors")


class ApiError(Exception):
    """An error the client gets, in OpenAI's envelope."""

    status = 400
    type = "invalid_request_error"
    code: str | None = None
    close = False  # close the connection after the answer

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}

    def body(self) -> dict:
        return openai_envelope(self)


def openai_envelope(error: ApiError) -> dict:
    """OpenAI's error envelope, the default of every route."""
    return {"error": {"message": error.message, "type": error.type, "param": error.param, "code": error.code}}


# The request key under which a route keeps its API's envelope (a function of an ApiError);
# routes of other APIs (Anthropic, Gemini) set it first thing, so every error, auth included,
# reaches their clients in the shape their SDK reads.
ENVELOPE = "payware.envelope"

# Paths whose failures come before any handler (aiohttp's router answers a wrong method with a
# 405 itself) and still belong to another API's envelope: its routes module registers them.
_PATH_ENVELOPES: dict[str, tuple[Callable[[str], bool], Callable[[ApiError], dict]]] = {}


def envelope_for_paths(api: str, matches: Callable[[str], bool], envelope: Callable[[ApiError], dict]) -> None:
    """Render failures on the paths `matches` accepts in `envelope`, also when no handler ran."""
    _PATH_ENVELOPES[api] = (matches, envelope)


def _envelope_of(path: str) -> Callable[[ApiError], dict]:
    for matches, envelope in _PATH_ENVELOPES.values():
        if matches(path):
            return envelope
    return openai_envelope


class InvalidRequest(ApiError):
    status, type, code = 400, "invalid_request_error", None


class InvalidApiKey(ApiError):
    status, type, code = 401, "invalid_request_error", "invalid_api_key"


class Forbidden(ApiError):
    status, type, code = 403, "invalid_request_error", "forbidden"


class NotFound(ApiError):
    status, type, code = 404, "invalid_request_error", "not_found"


class ModelNotFound(ApiError):
    status, type, code = 404, "invalid_request_error", "model_not_found"


class BodyTooLarge(ApiError):
    status, type, code = 413, "invalid_request_error", "request_too_large"


class UnsupportedEncoding(ApiError):
    status, type, code = 415, "invalid_request_error", "unsupported_content_encoding"


class RequestTimeout(ApiError):
    status, type, code = 408, "invalid_request_error", "request_timeout"
    close = True  # the rest of the body may never come: do not wait for it


class Conflict(ApiError):
    status, type, code = 409, "invalid_request_error", "conflict"


class RateLimited(ApiError):
    status, type, code = 429, "requests", "rate_limit_exceeded"


class SpendCapReached(ApiError):
    status, type, code = 429, "insufficient_quota", "spend_cap_reached"


class CreditsExhausted(ApiError):
    """A credit_only customer's balance does not cover the call (the SDKs do not retry it)."""

    status, type, code = 429, "insufficient_quota", "credit_balance_exhausted"


class UpstreamError(ApiError):
    status, type, code = 502, "upstream_error", "upstream_error"


class UpstreamTimeout(ApiError):
    status, type, code = 504, "upstream_error", "upstream_timeout"


class ServiceUnavailable(ApiError):
    status, type, code = 503, "server_error", "service_unavailable"


def counters_unavailable() -> ServiceUnavailable:
    """The 503 of a metering read while the counter store does not answer."""
    return ServiceUnavailable("The usage counters are unavailable; retry shortly.", headers={"Retry-After": "1"})


def error_response(error: ApiError, envelope=openai_envelope) -> web.Response:
    response = web.Response(status=error.status, body=json.dumps(envelope(error)).encode(),
                            content_type="application/json", headers=error.headers)
    if error.close:
        response.force_close()
    return response


def render_failure(request: web.Request, exc: Exception) -> web.StreamResponse:
    """Every failure in the route's envelope (OpenAI's by default); an unknown one as a logged 500.

    Re-raises an aiohttp HTTPException below 400 (a redirect is an answer, not a failure).
    """
    envelope = request.get(ENVELOPE)
    if envelope is None:  # by the path only when the router answered: a handler that ran chose
        routed = getattr(request.match_info, "http_exception", None) is None
        envelope = openai_envelope if routed else _envelope_of(request.path)
    if isinstance(exc, ApiError):
        request["payware.error"] = exc.code or exc.type
        return error_response(exc, envelope)
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        # aiohttp's own text names the limit and the size: "Maximum request body size N exceeded, ..."
        request["payware.error"] = "request_too_large"
        return error_response(BodyTooLarge(f"request body too large: {exc.text}"), envelope)
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc
        kind = NotFound if exc.status == 404 else InvalidRequest
        error = kind(exc.reason or "bad request")
        error.status = exc.status
        request["payware.error"] = error.code or error.type
        return error_response(error, envelope)
    request_id = request.get("request_id", "-")
    log.error("unhandled error in request %s", request_id, exc_info=exc)
    error = ApiError(f"internal error (request id {request_id})")
    error.status, error.type, error.code = 500, "server_error", "internal_error"
    request["payware.error"] = "internal_error"
    return error_response(error, envelope)
