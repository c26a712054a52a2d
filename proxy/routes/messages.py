"""Anthropic's Messages routes: `POST /v1/messages` (metered) and `POST /v1/messages/count_tokens`.

count_tokens generates nothing, so it is neither reserved nor billed: the caller is
authenticated, the model must be one it may use on a provider that speaks Anthropic's wire,
and the provider's answer is relayed whole. Every error on these routes, authentication
included, is in Anthropic's envelope.
"""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web

from proxy.appkeys import HTTP, LIVE, UPSTREAMS
from proxy.calls import _model, model_handler
from proxy.errors import ENVELOPE, InvalidRequest, UpstreamError, envelope_for_paths
from proxy.formats.anthropic_messages import MESSAGES, anthropic_headers, api_path
from proxy.jsonbody import dump_json, parse_json, read_body
from proxy.providers.upstream import error_passthrough, open_upstream, outgoing_headers, relayed_headers


async def count_tokens(request: web.Request) -> web.Response:
    """`POST /v1/messages/count_tokens`: the provider's count, relayed; not billed."""
    request[ENVELOPE] = MESSAGES.error_body
    app = request.app
    caller = app[LIVE].keyring.customer(request)
    raw = await read_body(request)
    body = parse_json(raw)
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    config = app[LIVE].config
    model = _model(config, caller, MESSAGES.model_name(body, request), MESSAGES)
    provider = config.providers[model.provider]
    if model.upstream != model.name:
        raw = dump_json({**body, "model": model.upstream})
    url = app[UPSTREAMS][provider.name] + api_path(provider, "/messages/count_tokens")
    headers = {**outgoing_headers(provider), **anthropic_headers(request)}
    upstream = await open_upstream(app[HTTP], url, body=raw, headers=headers, provider=provider.name)
    if upstream.status >= 300:
        return await error_passthrough(upstream, provider.name, MESSAGES)
    try:
        payload = await upstream.read()
    except (aiohttp.ClientError, asyncio.TimeoutError):
        raise UpstreamError(f"provider {provider.name!r} broke off its answer") from None
    finally:
        upstream.release()
    headers = relayed_headers(upstream)
    headers["X-Payware-Request-Id"] = request["request_id"]
    return web.Response(status=upstream.status, body=payload, headers=headers)


def add_routes(app: web.Application) -> None:
    """Anthropic's Messages routes on the proxy's `app`."""
    app.router.add_post("/v1/messages", model_handler(MESSAGES))
    app.router.add_post("/v1/messages/count_tokens", count_tokens)
    envelope_for_paths("anthropic", lambda path: path in ("/v1/messages", "/v1/messages/count_tokens"),
                       MESSAGES.error_body)
