"""Talking to providers: one pooled client (`http1`), the request we send, the errors we map.

Provider keys live only here, in the outgoing `Authorization` header: never in a response,
an error message or a log line.
"""

from __future__ import annotations

import asyncio
import json

from aiohttp import web

from config.schema import ProviderConfig, ServerConfig
from proxy.errors import InvalidRequest, UpstreamError, UpstreamTimeout
from proxy.providers.http1 import Answer, Client, HTTPClientError, UnsafeHeader
from proxy.serving.redact import MARK

# Provider response headers the client may see; rate-limit headers are our account's, not the
# customer's, and stay here. Content-Encoding is still there only on a body the provider client
# could not decode (br, zstd: it undoes gzip and deflate and drops the header), relayed as it
# came: the client decodes it. Content-Length never goes: the relay counts the bytes it sends.
_PASS_HEADERS = ("Content-Type", "Content-Encoding", "openai-processing-ms", "openai-version", "x-request-id",
                 "retry-after", "retry-after-ms", "x-should-retry")


def make_provider_client(server: ServerConfig) -> Client:
    """The app's one provider client: pooled keep-alive connections, explicit timeouts."""
    return Client(connect_timeout=server.connect_timeout, read_timeout=server.read_timeout)


def outgoing_headers(provider: ProviderConfig) -> dict[str, str]:
    """Headers every call to `provider` carries: its own key, as its kind of API wants it."""
    headers = {"Content-Type": "application/json", "Accept-Encoding": "identity", "User-Agent": "payware"}
    if provider.api_key:
        if provider.kind == "anthropic":
            headers["x-api-key"] = provider.api_key
        elif provider.kind == "gemini":
            headers["x-goog-api-key"] = provider.api_key
        else:
            headers["Authorization"] = f"Bearer {provider.api_key}"
    return headers


def relayed_headers(upstream: Answer) -> dict[str, str]:
    """The provider's headers that go on to the client with its answer's body."""
    return {name: upstream.headers[name] for name in _PASS_HEADERS if name in upstream.headers}


async def open_upstream(client: Client, url: str, *, body: bytes, headers: dict[str, str],
                        provider: str) -> Answer:
    """POST to a provider over HTTP (every kind but `litellm`, whose bridge calls the library)."""
    return await _request(client, "POST", url, headers=headers, provider=provider, body=body)


async def _request(client: Client, method: str, url: str, *, headers: dict[str, str], provider: str,
                   body: bytes | None = None, params=None) -> Answer:
    # a failure to reach the provider is a 502/504: nothing was generated
    try:
        return await client.request(method, url, headers=headers, body=body, params=params)
    except asyncio.TimeoutError:
        raise UpstreamTimeout(f"provider {provider!r} did not answer in time") from None
    except HTTPClientError as exc:
        raise UpstreamError(f"could not reach provider {provider!r}: {type(exc).__name__}") from None
    except UnsafeHeader:  # a relayed header (anthropic-beta…) with a line break in it
        raise InvalidRequest("a request header holds a character that cannot be relayed") from None


async def error_passthrough(upstream: Answer, provider: ProviderConfig, fmt) -> web.Response:
    """The provider's own status and body; a non-JSON body is wrapped in the route's envelope."""
    try:
        body = await upstream.read()
    except (HTTPClientError, asyncio.TimeoutError):
        body = b""
    finally:
        upstream.release()
    return _error_answer(upstream, body, provider, fmt)


def _error_answer(upstream: Answer, body: bytes, provider: ProviderConfig, fmt) -> web.Response:
    """A provider's error as it sent it if it is a JSON error, else wrapped in `fmt`'s envelope;
    never with the provider's key in it."""
    headers = relayed_headers(upstream)
    if headers.pop("Content-Encoding", None) is not None:
        body = b""  # encoded in a coding we cannot read: its text would be noise in our envelope
    if provider.api_key and provider.api_key.encode() in body:
        # NOTE: a provider may quote the key it was sent ("Invalid API key: sk-…"): it is ours, not
        # the client's (the mark holds no quote or backslash: a JSON string stays one)
        body = body.replace(provider.api_key.encode(), MARK.encode())
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), (dict, str)):
        headers["Content-Type"] = "application/json"
        return web.Response(status=upstream.status, body=body, headers=headers)
    text = body.decode("utf-8", "replace").strip()[:500] or upstream.reason or "no body"
    envelope = fmt.upstream_error(upstream.status, text, provider.name)
    headers["Content-Type"] = "application/json"
    return web.Response(status=upstream.status, body=json.dumps(envelope).encode(), headers=headers)


async def forward(client: Client, method: str, url: str, *, headers: dict[str, str],
                  provider: ProviderConfig, fmt, params=None, body: bytes | None = None) -> web.Response:
    """A call that generates nothing (retrieve, delete, list): the provider's answer, relayed whole
    (an error that is not JSON wrapped in `fmt`'s envelope, as `error_passthrough` does)."""
    upstream = await _request(client, method, url, headers=headers, provider=provider.name, body=body, params=params)
    try:
        payload = await upstream.read()
    except asyncio.TimeoutError:
        raise UpstreamTimeout(f"provider {provider.name!r} did not answer in time") from None
    except HTTPClientError as exc:
        raise UpstreamError(f"could not reach provider {provider.name!r}: {type(exc).__name__}") from None
    finally:
        upstream.release()
    if upstream.status >= 400:
        return _error_answer(upstream, payload, provider, fmt)
    return web.Response(status=upstream.status, body=payload, headers=relayed_headers(upstream))
