"""The model endpoints: authenticate, validate, forward, relay, meter.

The client's body goes upstream unchanged but for the model name and, for streams,
`stream_options.include_usage` (forced on so usage cannot be skipped). The provider's answer
comes back unchanged: status, body and stream, byte for byte, except the usage chunk the
client did not ask for.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from decimal import Decimal

import aiohttp
from aiohttp import web

from config.schema import MAX_OUTPUT_TOKENS, Config, CustomerConfig, ModelConfig
from metering.usage.fallback import final_usage
from metering.billing.meter import CallFacts
from metering.billing.plans import uses_position
from metering.store.recorder import COUNTERS_DOWN
from metering.usage.sse import SSEFramer
from metering.usage.normalized import StreamAccumulator, Usage, generated_text, usage_from_json
from metering.store.events import utcnow
from proxy.admission import BIG_PROMPT, Admitted, count_prompt_async, rate_headers
from proxy.appkeys import CONFIG, GATE, HTTP, KEYRING, METER, RECORDER, UPSTREAMS
from proxy.auth import Caller
from proxy.errors import InvalidRequest, ModelNotFound, UpstreamError
from proxy.jsonbody import dump_json, parse_json, read_body
from proxy.metadata import request_metadata
from proxy.recording import record_event
from proxy.upstream import PATHS, error_passthrough, open_upstream, outgoing_headers, relayed_headers

log = logging.getLogger("payware.calls")

_ENDPOINT_MODES = {"chat": ("chat",), "completions": ("completion", "chat"), "embeddings": ("embedding",)}
_UPSTREAM_CUT = (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, asyncio.TimeoutError)


@dataclass(slots=True)
class Call:
    """One model call in flight: what is needed to meter it whenever it ends."""

    request: web.Request
    caller: Caller
    model: ModelConfig
    endpoint: str
    stream: bool
    body: dict
    started: float
    admitted: Admitted
    size: int = 0  # the request body's bytes
    settled: bool = False

    async def record(self, reported: Usage | None, status: str, output_text=lambda: "") -> None:
        """Price, record and settle the call. NOTE: runs before the response's last byte is sent."""
        prompt = self.admitted.prompt_tokens if self.admitted.counted else None
        if reported is None and prompt is None and self.size >= BIG_PROMPT:  # off the event loop
            prompt = await count_prompt_async(self.endpoint, self.body, self.model.upstream, self.size)
        usage, source = final_usage(reported, endpoint=self.endpoint, body=self.body,
                                    model=self.model.upstream, output_text=output_text, prompt_tokens=prompt)
        session, feature, meta = request_metadata(self.request.headers, self.body)
        app = self.request.app
        facts = CallFacts(
            request_id=self.request["request_id"], customer=self.caller.customer, key_id=self.caller.key_id,
            model=self.model, endpoint=self.endpoint, stream=self.stream, usage=usage, usage_source=source,
            status=status, latency_ms=int((time.perf_counter() - self.started) * 1000),
            session=session, feature=feature, meta=meta, period=self.admitted.period,
        )
        plan = app[CONFIG].plans[self.caller.customer.plan]
        position = 0
        if uses_position(plan, "tokens"):  # included quota or tiers: take this call's place in the period
            tokens = Decimal(usage.input_tokens + usage.output_tokens)
            try:
                position = int(await app[RECORDER].counters.claim(self.caller.customer.id, self.admitted.period,
                                                                  "tokens", tokens))
            except COUNTERS_DOWN:
                # NOTE: never lose the event: bill it past the included quota, flagged in its meta
                position = plan.included.get("tokens", 0)
                facts.meta = {**facts.meta, "position_unknown": True}
        event = app[METER].call_event(facts, position=position)
        await record_event(app, event, self.caller.customer)
        self.settled = True  # NOTE: before settling: a failed settle must not also release the hold
        try:
            await app[GATE].settle(self.admitted, event.amount, event.id, self.caller.customer,
                                   tokens=event.input_tokens + event.output_tokens)
        except Exception:  # NOTE: the event is billed; a counter hiccup must not fail the response
            log.exception("settling %s failed; the cap counters resync from the ledger", event.id)

    async def release(self) -> None:
        """The call ended with nothing to bill: give its reservation back."""
        if not self.settled:
            self.settled = True
            await self.request.app[GATE].release(self.admitted)


def endpoint_handler(endpoint: str):
    async def handler(request: web.Request) -> web.StreamResponse:
        return await model_call(request, endpoint)

    handler.__name__ = f"{endpoint}_handler"
    return handler


async def model_call(request: web.Request, endpoint: str) -> web.StreamResponse:
    started = time.perf_counter()
    app = request.app
    caller = app[KEYRING].customer(request)
    raw = await read_body(request)
    size = len(raw)
    body = _json_object(raw)
    config = app[CONFIG]
    model = _model(config, caller.customer, body, endpoint)
    stream = _stream_flag(body, endpoint)
    _check_max_tokens(body)
    customer = caller.customer
    now = utcnow()
    admitted = await app[GATE].admit(
        request_id=request["request_id"], customer=customer, key_id=caller.key_id,
        plan=config.plans[customer.plan], model=model, endpoint=endpoint, body=body,
        period=app[METER].period(customer, now).key, now=now, size=size)
    if admitted.clamped_max_tokens is not None:
        body = {**body, _max_tokens_field(body): admitted.clamped_max_tokens}
        raw = b""  # the body changed: it must be serialized again
    outgoing, strip_usage = _upstream_body(raw, body, model, stream)
    provider = config.providers[model.provider]
    call = Call(request=request, caller=caller, model=model, endpoint=endpoint, stream=stream,
                body=body, started=started, admitted=admitted, size=size)
    try:
        upstream = await open_upstream(app[HTTP], app[UPSTREAMS][provider.name] + PATHS[endpoint],
                                       body=outgoing, headers=outgoing_headers(provider), provider=provider.name)
        if upstream.status >= 300:
            response = await error_passthrough(upstream, provider.name)  # nothing generated, nothing billed
            response.headers.update(rate_headers(admitted.rate))
            return response
        if stream:
            return await _relay_stream(request, upstream, call, strip_usage)
        return await _relay_json(upstream, call)
    finally:
        if not call.settled:
            await call.release()


async def _relay_json(upstream: aiohttp.ClientResponse, call: Call) -> web.Response:
    try:
        payload = await upstream.read()
    except asyncio.CancelledError:
        # The client left while the provider was answering: the prompt was processed.
        upstream.close()
        await call.record(None, "partial")
        raise
    except _UPSTREAM_CUT:
        upstream.close()
        raise UpstreamError(f"provider {call.model.provider!r} broke off its answer") from None
    finally:
        upstream.release()
    try:
        parsed = json.loads(payload)
    except (ValueError, RecursionError):  # whatever the provider sent, the call is still metered
        parsed = None
    await call.record(usage_from_json(parsed), "ok", lambda: generated_text(parsed))
    return web.Response(status=upstream.status, body=payload, headers=_response_headers(upstream, call))


async def _relay_stream(request: web.Request, upstream: aiohttp.ClientResponse, call: Call,
                        strip_usage: bool) -> web.StreamResponse:
    response = web.StreamResponse(status=upstream.status, headers=_response_headers(upstream, call))
    response.headers.setdefault("Cache-Control", "no-cache")
    framer = SSEFramer()
    stream = StreamAccumulator(strip_usage=strip_usage)
    recorded = False

    async def finish(status: str) -> None:
        nonlocal recorded
        if recorded:
            return
        recorded = True
        failed = status != "ok" or stream.error is not None
        if failed and status != "abandoned" and stream.usage is None and not stream.output_text():
            return  # the provider failed before generating anything: nothing to bill
        await call.record(stream.usage, "partial" if failed else "ok", stream.output_text)

    try:
        await response.prepare(request)
        async for chunk in upstream.content.iter_any():
            out = bytearray()
            for frame in framer.feed(chunk):
                if frame.data == "[DONE]" and not recorded:
                    if out:
                        await response.write(bytes(out))
                        out.clear()
                    await finish("ok")  # NOTE: the event is journaled before [DONE] reaches the client
                out += stream.process(frame)
            if out:
                await response.write(bytes(out))
        tail = framer.close()
        tail_bytes = stream.process(tail) if tail is not None else b""
        await finish("ok" if stream.done else "partial")
        if tail_bytes:
            await response.write(tail_bytes)
        await response.write_eof()
    except (asyncio.CancelledError, ConnectionResetError):
        # The client went away: stop the provider at once, bill what it generated so far.
        upstream.close()
        await finish("abandoned")
        raise
    except _UPSTREAM_CUT:
        upstream.close()
        await finish("partial")
        try:
            await response.write_eof()
        except ConnectionResetError:
            pass
    finally:
        upstream.release()
    return response


def _response_headers(upstream: aiohttp.ClientResponse, call: Call) -> dict[str, str]:
    headers = relayed_headers(upstream)
    headers["X-Payware-Request-Id"] = call.request["request_id"]
    headers.update(rate_headers(call.admitted.rate))
    if call.admitted.cap_reached:
        headers["X-Payware-Cap-Reached"] = "true"
    if call.admitted.clamped_max_tokens is not None:
        headers["X-Payware-Clamped-Max-Tokens"] = str(call.admitted.clamped_max_tokens)
    return headers


def _json_object(raw: bytes) -> dict:
    body = parse_json(raw)
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    return body


def _model(config: Config, customer: CustomerConfig, body: dict, endpoint: str) -> ModelConfig:
    name = body.get("model")
    if not isinstance(name, str) or not name:
        raise InvalidRequest("you must provide a model parameter", param="model")
    model = config.models.get(name)
    if model is None or (customer.models is not None and name not in customer.models):
        raise ModelNotFound(f"The model `{name}` does not exist or you do not have access to it.", param="model")
    if model.mode not in _ENDPOINT_MODES[endpoint]:
        raise InvalidRequest(f"the model `{name}` is a {model.mode} model and cannot be used on "
                             f"/v1{PATHS[endpoint]}", param="model")
    return model


def _stream_flag(body: dict, endpoint: str) -> bool:
    stream = body.get("stream", False)
    if stream is None:
        return False
    if not isinstance(stream, bool):
        raise InvalidRequest("`stream` must be a boolean", param="stream")
    if stream and endpoint == "embeddings":
        raise InvalidRequest("embeddings cannot be streamed", param="stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise InvalidRequest("`stream_options` must be an object", param="stream_options")
    return stream


def _check_max_tokens(body: dict) -> None:
    """`max_tokens` / `max_completion_tokens`: absent, null, or a whole number the counters can price."""
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if type(value) is not int or not 1 <= value <= MAX_OUTPUT_TOKENS:
            raise InvalidRequest(f"`{name}` must be an integer from 1 to {MAX_OUTPUT_TOKENS}", param=name,
                                 code="invalid_value")


def _max_tokens_field(body: dict) -> str:
    return "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"


def _upstream_body(raw: bytes, body: dict, model: ModelConfig, stream: bool) -> tuple[bytes, bool]:
    """The bytes to send upstream, and whether the client did not ask for the usage chunk."""
    changed = model.upstream != model.name or not raw
    strip_usage = False
    if stream:
        options = body.get("stream_options") or {}
        strip_usage = options.get("include_usage") is not True
        if strip_usage:
            changed = True
    if not changed:
        return raw, False  # the client's own bytes, untouched
    outgoing = dict(body)
    outgoing["model"] = model.upstream
    if stream:
        outgoing["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
    return dump_json(outgoing), strip_usage
