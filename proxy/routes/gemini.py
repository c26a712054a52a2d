"""Gemini's routes: `POST /v1beta/models/{model}:{method}` and the same under `/v1/models/`.

`generateContent` and `streamGenerateContent` are metered calls (`proxy.formats.gemini` through
the one relay); `countTokens` is authenticated and forwarded, but generates nothing and is
neither reserved for nor billed. Any other method is a 404 that reaches no provider: Payware
forwards nothing it does not meter. Every error, authentication's included, is in Google's
envelope, so the google-genai SDK raises its own typed errors.
"""

from __future__ import annotations

from aiohttp import web

from config.schema import Config, ModelConfig
from proxy.appkeys import LIVE, UPSTREAM_CLIENT, UPSTREAMS
from proxy.auth import Caller
from proxy.calls import may_use, model_call
from proxy.errors import ENVELOPE, InvalidRequest, ModelNotFound, NotFound, envelope_for_paths
from proxy.formats.gemini import GENERATE, GENERATE_METHODS, resource_name, split_target, upstream_path
from proxy.jsonbody import dump_json, parse_json, read_body
from proxy.providers.upstream import forward, outgoing_headers


async def gemini_models(request: web.Request) -> web.StreamResponse:
    """`POST /{v1beta|v1}/models/{model}:{method}`."""
    request[ENVELOPE] = GENERATE.error_body
    _, method = split_target(request.match_info["target"])
    if method in GENERATE_METHODS:
        return await model_call(request, GENERATE)
    if method == "countTokens":
        return await count_tokens(request)
    raise NotFound(f"Method not found: {method or request.match_info['target']!r}. Payware serves "
                   "generateContent, streamGenerateContent and countTokens.")


async def count_tokens(request: web.Request) -> web.Response:
    """`:countTokens`: the provider's count, relayed; no reservation, nothing billed."""
    app = request.app
    live = app[LIVE]
    config, caller = live.config, live.keyring.customer(request)
    raw = await read_body(request)
    body = parse_json(raw)
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    model = _model(config, caller, GENERATE.model_name(body, request))
    provider = config.providers[model.provider]
    inner = body.get("generateContentRequest")
    if isinstance(inner, dict) and "model" in inner:
        # the full-request form names the model again: the provider must see its own name
        body = {**body, "generateContentRequest": {**inner, "model": resource_name(model)}}
        raw = dump_json(body)
    url = app[UPSTREAMS][provider.name] + upstream_path(model, provider, request, "countTokens")
    response = await forward(app[UPSTREAM_CLIENT], "POST", url, headers=outgoing_headers(provider), provider=provider,
                             fmt=GENERATE, body=raw)
    response.headers["X-Payware-Request-Id"] = request["request_id"]
    return response


def _model(config: Config, caller: Caller, name: str) -> ModelConfig:
    """The model `name` if this key may use it and its provider speaks Gemini's wire."""
    model = config.models.get(name)
    if model is None or not may_use(caller, name):
        raise ModelNotFound(f"models/{name} is not found, or this key may not use it.", param="model")
    kind = config.providers[model.provider].kind
    if kind not in GENERATE.kinds:
        raise InvalidRequest(f"the model `{name}` is served by a `{kind}` provider, which does not speak "
                             f"{GENERATE.name}", param="model")
    return model


def add_routes(app: web.Application) -> None:
    """Gemini's model routes, under both API versions (POST only: `GET /v1/models/{id}` is OpenAI's)."""
    app.router.add_post("/v1beta/models/{target}", gemini_models)
    app.router.add_post("/v1/models/{target}", gemini_models)
    envelope_for_paths("gemini", _gemini_path, GENERATE.error_body)


def _gemini_path(path: str) -> bool:
    """Gemini's model routes: anything under /v1beta/models/, and under /v1/models/ a `model:method`
    (a bare model id there is OpenAI's `GET /v1/models/{id}`)."""
    if path.startswith("/v1beta/models/"):
        return True
    return path.startswith("/v1/models/") and ":" in path.removeprefix("/v1/models/")
