"""The relay: one path for every model call, whatever its API (see `proxy.formats`).

authenticate -> read and validate the body (the route's wire format) -> admission (rate limits,
the cap's reservation) -> forward -> relay the answer while reading its usage -> price,
journal, count, settle -> the answer's last byte.

The client's body goes upstream unchanged but for what its format must change (the model
name, forcing usage on a stream). The provider's answer comes back unchanged: status, body
and stream, byte for byte, except the usage the client did not ask for.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from aiohttp import web

from config.schema import Config, ModelConfig, PlanConfig
from metering.billing.meter import CallFacts
from metering.billing.plans import uses_position
from metering.store.events import money_str, utcnow
from metering.store.owned import PROVIDER_ID
from metering.limits.outages import counters_down
from metering.usage.fallback import final_usage, needs_output, needs_prompt
from metering.usage.normalized import Usage
from metering.usage.sse import SSEFramer
from proxy.serving.accesslog import note
from proxy.limits.admission import Admitted, rate_headers, together
from proxy.appkeys import BRIDGES, GATE, LIVE, METER, RECORDER, UPSTREAM_CLIENT, UPSTREAMS
from proxy.auth import Caller
from proxy.errors import ENVELOPE, InvalidRequest, ModelNotFound, UpstreamError, UpstreamTimeout
from proxy.formats.base import Outgoing, WireFormat
from proxy.jsonbody import load_json_or_none, parse_json, read_body
from proxy.metadata import request_metadata
from proxy.metrics import EVENT, UPSTREAM, UPSTREAM_DONE
from proxy.recording import count_event
from proxy.providers.http1 import Answer, HTTPClientError, SentThenCancelled
from proxy.providers.upstream import error_passthrough, open_upstream, outgoing_headers, relayed_headers

log = logging.getLogger("payware.calls")

_UPSTREAM_CUT = (HTTPClientError, asyncio.TimeoutError)


@dataclass(slots=True)
class Call:
    """One model call in flight: what is needed to meter it whenever it ends."""

    request: web.Request
    fmt: WireFormat
    caller: Caller
    model: ModelConfig
    stream: bool
    body: dict
    started: float
    admitted: Admitted
    plan: PlanConfig  # pinned at the call's start: a config reloaded meanwhile prices later calls
    size: int = 0  # the request body's bytes
    settled: bool = False
    evidence: Callable[[dict], dict] | None = None  # the route's own facts for the event's meta, from the body
    answer_id: str | None = None  # the provider's id of its answer, when the format reads one
    late_after: datetime | None = None  # from then on, the statement of the call's period may be frozen

    async def record(self, reported: Usage | None, status: str, output_text=lambda: "") -> None:
        """Price, record and settle the call. NOTE: runs before the response's last byte is sent."""
        self.request.setdefault(UPSTREAM_DONE, time.perf_counter())  # the provider's part ends here (/metrics)
        gate, embeddings = self.request.app[GATE], self.model.mode == "embedding"
        prompt = self.admitted.prompt_tokens if self.admitted.counted else None
        if prompt is None and needs_prompt(reported):
            prompt = await gate.count_prompt(self.fmt, self.body, self.model, self.size)
        output = None
        if needs_output(reported, embeddings=embeddings):
            output = await gate.count_output(output_text(), self.model)
        usage, source = final_usage(reported, prompt_tokens=prompt, output_tokens=output, embeddings=embeddings)
        session, feature, meta = request_metadata(self.request.headers, self.body)
        if self.answer_id is not None:
            meta[PROVIDER_ID] = self.answer_id  # evidence: the provider's own id for this answer
        if self.evidence is not None:
            meta.update(self.evidence(self.body))
        app = self.request.app
        ts, period = utcnow(), self.admitted.period
        if self.late_after is not None and ts >= self.late_after:
            # NOTE: a call longer than its period's statement grace ended after that statement
            # could be frozen: billed in the period open now, else it would be billed nowhere
            period = app[METER].period(self.caller.customer, ts).key
            meta["admitted_in_period"] = self.admitted.period
        facts = CallFacts(
            request_id=self.request["request_id"], customer=self.caller.customer, key_id=self.caller.key_id,
            model=self.model, endpoint=self.fmt.endpoint, stream=self.stream, usage=usage, usage_source=source,
            status=status, latency_ms=int((time.perf_counter() - self.started) * 1000),
            session=session, feature=feature, meta=meta, period=period, plan=self.plan,
        )
        plan = self.plan
        position = 0
        if uses_position(plan, "tokens"):  # included quota or tiers: take this call's place in the period
            tokens = Decimal(usage.input_tokens + usage.output_tokens)
            try:
                position = int(await app[RECORDER].counters.claim(self.caller.customer.id, period,
                                                                  "tokens", tokens))
            except counters_down():
                # NOTE: never lose the event: bill it past the included quota, flagged in its meta
                position = plan.included.get("tokens", 0)
                facts.meta = {**facts.meta, "position_unknown": True}
        event = app[METER].call_event(facts, position=position, ts=ts)
        app[RECORDER].keep(event)  # NOTE: durable first; nothing below can lose it
        self.request[EVENT] = event  # counted by /metrics when the request ends
        note(self.request, input_tokens=event.input_tokens, output_tokens=event.output_tokens,
             amount=money_str(event.amount), billed=event.status)
        self.settled = True  # NOTE: before settling: a failed settle must not also release the hold
        # Counted and settled together: on Redis their scripts share one round trip.
        counted, settled = await together(
            gate.remote, count_event(app, event, self.caller.customer),
            gate.settle(self.admitted, event.amount, event.id, self.caller.customer,
                        tokens=event.input_tokens + event.output_tokens))
        if isinstance(settled, Exception):  # NOTE: the event is billed; a counter hiccup must not fail the response
            log.error("settling %s failed; the cap counters catch up when the store answers", event.id,
                      exc_info=settled)
        if isinstance(counted, Exception):
            raise counted

    async def release(self) -> None:
        """The call ended with nothing to bill: give its reservation back."""
        if not self.settled:
            self.settled = True
            await self.request.app[GATE].release(self.admitted)


def model_handler(fmt: WireFormat):
    """The aiohttp handler of one API's model route."""

    async def handler(request: web.Request) -> web.StreamResponse:
        request[ENVELOPE] = fmt.error_body
        return await model_call(request, fmt)

    handler.__name__ = f"{fmt.endpoint}_handler"
    return handler


async def model_call(request: web.Request, fmt: WireFormat, *, before=None, evidence=None,
                     extra_prompt: int = 0) -> web.StreamResponse:
    """One metered call of `fmt`. `before(app, caller, body)` may refuse it or return tokens the
    provider will bill on top of the body (a Responses chain); `evidence(body)` adds the route's
    own facts to the event's meta."""
    started = time.perf_counter()
    app = request.app
    live = app[LIVE]
    config, caller = live.config, live.keyring.customer(request)  # NOTE: this call's config, to its end
    raw = await read_body(request)
    size = len(raw)
    body = _json_object(raw)
    model = _model(config, caller, fmt.model_name(body, request), fmt)
    note(request, model=model.name)
    stream = fmt.stream(body, request)
    fmt.validate(body)
    if before is not None:
        extra_prompt = await before(app, caller, body)
    customer = caller.customer
    now = utcnow()
    period = app[METER].period(customer, now)
    admitted = await app[GATE].admit(
        request_id=request["request_id"], customer=customer, key_id=caller.key_id,
        plan=config.plans[customer.plan], model=model, fmt=fmt, body=body,
        period=period.key, now=now, size=size, extra_prompt=extra_prompt)
    if admitted.clamped_max_tokens is not None:
        body = fmt.with_max_output(body, admitted.clamped_max_tokens)
        raw = b""  # the body changed: it must be serialized again
    provider = config.providers[model.provider]
    outgoing = fmt.outgoing(raw, body, model, provider, stream, request)
    call = Call(request=request, fmt=fmt, caller=caller, model=model, stream=stream, body=body, started=started,
                admitted=admitted, plan=config.plans[customer.plan], size=size, evidence=evidence,
                late_after=period.end + timedelta(seconds=config.server.statement_grace))
    try:
        asked = time.perf_counter()
        request[UPSTREAM] = (provider.name, asked)
        bridge = app[BRIDGES].get(provider.kind)
        if bridge is None:
            try:
                upstream = await open_upstream(app[UPSTREAM_CLIENT], app[UPSTREAMS][provider.name] + outgoing.path,
                                               body=outgoing.body,
                                               headers={**outgoing_headers(provider), **outgoing.headers},
                                               provider=provider.name)
            except SentThenCancelled:
                # The client left while the provider was answering: the prompt was processed
                await call.record(None, "partial")
                raise
        else:
            upstream = await bridge(provider=provider, model=model, body=body, stream=stream, fmt=fmt)
        note(request, upstream_ms=round((time.perf_counter() - asked) * 1000, 1))
        if upstream.status >= 300:
            request["payware.error"] = f"upstream_{upstream.status}"
            log.warning("provider %s answered %d to %s (model %s)", provider.name, upstream.status,
                        request["request_id"], model.name)
            response = await error_passthrough(upstream, provider, fmt)  # nothing generated, nothing billed
            response.headers.update(rate_headers(admitted.rate))
            return response
        if stream and not _answered_whole(upstream):
            return await _relay_stream(request, upstream, call, outgoing)
        return await _relay_json(upstream, call)
    finally:
        if not call.settled:
            await call.release()


async def _relay_json(upstream: Answer, call: Call) -> web.Response:
    try:
        payload = await upstream.read()
    except asyncio.CancelledError:
        # The client left while the provider was answering: the prompt was processed.
        upstream.close()
        await call.record(None, "partial")
        raise
    except asyncio.TimeoutError:
        upstream.close()
        raise UpstreamTimeout(f"provider {call.model.provider!r} did not finish its answer in time") from None
    except HTTPClientError:
        upstream.close()
        raise UpstreamError(f"provider {call.model.provider!r} broke off its answer") from None
    finally:
        upstream.release()
    parsed = load_json_or_none(payload)  # whatever the provider sent, the call is still metered
    fmt = call.fmt
    usage = fmt.usage(parsed)
    if usage is None and isinstance(parsed, dict) and parsed.get("error") is not None and not fmt.text(parsed):
        # A 200 that reports an error and holds no answer: nothing generated, nothing billed
        # (as for a stream whose provider failed before its first text)
        call.request["payware.error"] = "upstream_error_body"
        await call.release()
    else:
        answer_id = getattr(fmt, "answer_id", None)
        call.answer_id = answer_id(parsed) if answer_id is not None else None
        await call.record(usage, "ok", lambda: fmt.text(parsed))
    return web.Response(status=upstream.status, body=payload, headers=_response_headers(upstream, call))


class _RelayedStream(web.StreamResponse):
    """A streamed answer whose headers wait for its first bytes, so that they go in one `write(2)`
    (aiohttp's own `Response` does so; a stream sends them alone by default)."""

    _send_headers_immediately = False


async def _relay_stream(request: web.Request, upstream: Answer, call: Call,
                        outgoing: Outgoing) -> web.StreamResponse:
    response = _RelayedStream(status=upstream.status, headers=_response_headers(upstream, call))
    response.headers.setdefault("Cache-Control", "no-cache")
    content = upstream.content
    framer = SSEFramer()
    watcher = call.fmt.watcher(outgoing)
    skim = getattr(watcher, "skim", None)  # frames a watcher need not read go on unframed
    recorded = False

    async def finish(status: str) -> None:
        nonlocal recorded
        if recorded:
            return
        recorded = True
        failed = status != "ok" or watcher.error is not None
        if failed and status != "abandoned" and watcher.usage is None and not watcher.output_text():
            return  # the provider failed before generating anything: nothing to bill
        call.answer_id = getattr(watcher, "answer_id", None)
        await call.record(watcher.usage, "partial" if failed else "ok", watcher.output_text)

    last = b""  # the provider's last bytes: sent with the stream's end, in one write
    try:
        await response.prepare(request)
        if not content.ready():  # nothing of the body came with the provider's headers: ours go now
            await response.write(b"")
        async for chunk in content.iter_any():
            # NOTE: a read that ends a frame begun in the last one is framed whole: no skim can pass it
            passed = skim(chunk, framer) if skim is not None and framer.between_frames else 0
            if passed and passed == len(chunk) and not content.at_eof():
                await response.write(chunk)
                continue
            out = bytearray(chunk[:passed])
            for frame in framer.feed(chunk[passed:] if passed else chunk):
                data = watcher.process(frame)
                if watcher.terminal and not recorded:
                    # NOTE: the event is journaled before the terminal frame is sent; what came
                    # before the frame in this read goes with it, one write (often the stream's last)
                    await finish("ok")
                out += data
            if content.at_eof():  # the loop ends without waiting for the provider
                last = bytes(out)
            elif out:
                await response.write(bytes(out))
        tail = framer.close()
        tail_bytes = watcher.process(tail) if tail is not None else b""
        await finish("ok" if watcher.done else "partial")
        await response.write_eof(last + tail_bytes)
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


def _answered_whole(upstream: Answer) -> bool:
    """Whether a provider answered a stream request with one JSON document (servers that ignore
    `stream`; Gemini without `alt=sse`): relayed whole, and metered from its usage as such."""
    media = upstream.headers.get("Content-Type", "").partition(";")[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def _response_headers(upstream: Answer, call: Call) -> dict[str, str]:
    headers = relayed_headers(upstream)
    headers["X-Payware-Request-Id"] = call.request["request_id"]
    headers.update(rate_headers(call.admitted.rate))
    if call.admitted.cap_reached:
        headers["X-Payware-Cap-Reached"] = "true"
    if call.admitted.clamped_max_tokens is not None:
        headers["X-Payware-Clamped-Max-Tokens"] = str(call.admitted.clamped_max_tokens)
    return headers


def may_use(caller: Caller, model: str) -> bool:
    """Whether the caller's customer, and its key, may call `model`."""
    customer = caller.customer
    if customer.models is not None and model not in customer.models:
        return False
    policy = customer.key_policies.get(caller.key_id)
    return policy is None or policy.models is None or model in policy.models


def _json_object(raw: bytes) -> dict:
    body = parse_json(raw)
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    return body


def _model(config: Config, caller: Caller, name: str, fmt: WireFormat) -> ModelConfig:
    model = config.models.get(name)
    if model is None or not may_use(caller, name):
        raise ModelNotFound(f"The model `{name}` does not exist or you do not have access to it.", param="model")
    if model.mode not in fmt.modes:
        raise InvalidRequest(f"the model `{name}` is a {model.mode} model and cannot be used with {fmt.name}",
                             param="model")
    kind = config.providers[model.provider].kind
    if kind not in fmt.kinds:
        raise InvalidRequest(f"the model `{name}` is served by a `{kind}` provider, which does not speak "
                             f"{fmt.name}", param="model")
    return model
