"""Anthropic's Messages routes: `POST /v1/messages` (metered) and `POST /v1/messages/count_tokens`.

count_tokens generates nothing, so it is neither reserved nor billed: the caller is
authenticated, the model must be one it may use on a provider that speaks Anthropic's wire,
and the provider's answer is relayed whole. Every error on these routes, authentication
included, is in Anthropic's envelope.
"""

from __future__ import annotations

from aiohttp import web

from proxy.appkeys import LIVE, UPSTREAM_CLIENT, UPSTREAMS
from proxy.calls import _model, model_handler
from proxy.errors import ENVELOPE, InvalidRequest, envelope_for_paths
from proxy.formats.anthropic_messages import MESSAGES, anthropic_headers, api_path
from proxy.jsonbody import dump_json, parse_json, read_body
from proxy.providers.upstream import forward, outgoing_headers


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
    response = await forward(app[UPSTREAM_CLIENT], "POST", url, headers=headers, provider=provider, fmt=MESSAGES, body=raw)
    response.headers["X-Payware-Request-Id"] = request["request_id"]
    return response


def add_routes(app: web.Application) -> None:
    """Anthropic's Messages routes on the proxy's `app`."""
    app.router.add_post("/v1/messages", model_handler(MESSAGES))
    app.router.add_post("/v1/messages/count_tokens", count_tokens)
    envelope_for_paths("anthropic", lambda path: path in ("/v1/messages", "/v1/messages/count_tokens"),
                       MESSAGES.error_body)
