"""Provider kind `litellm`: the provider is reached through litellm's library, not over HTTP.

A model's `upstream` is a litellm model string (`anthropic/claude-…`, `gemini/…`, `bedrock/…`):
litellm translates the client's OpenAI body to that provider's API and its answer back to
OpenAI's. This module is the relay's other way to reach a provider, beside
`proxy.providers.upstream.open_upstream` (hence here, not in `proxy.formats`, whose modules are pure):
the route's wire format stays `openai_chat`, and what the bridge returns answers like an
`aiohttp.ClientResponse`, so the relay, the usage watcher and the billing are the same as for
an OpenAI provider.

- `import litellm` (seconds, side effects) happens once, at start-up, in a thread, and only
  when the config has a litellm provider (`litellm_ctx`); no other provider's call touches it.
- Only OpenAI's request fields reach litellm (`_FIELDS`): litellm's own keyword arguments
  (`api_base`, `api_key`, `extra_headers`, `mock_response`, …) never come from a client.
- Streams ask litellm for usage and become OpenAI SSE (`data: {json}` … `data: [DONE]`);
  the relay hides the usage chunk from a client that did not ask for it. A usage litellm made
  up itself (the provider reported none) is dropped, so the relay counts with tiktoken and
  flags the event `estimated`, as it does for an OpenAI provider that reports nothing.
- Usage: litellm reports it in OpenAI's convention, Anthropic's cache reads and writes folded
  into `prompt_tokens` (reads in `prompt_tokens_details.cached_tokens`, writes in
  `prompt_tokens_details.cache_write_tokens`, their 5-minute/1-hour split in
  `cache_creation_token_details`), which `metering.usage.normalized` reads as it reads
  Anthropic's own usage natively: the same token classes either way.
- Errors: the provider's status (`provider_status_code` when litellm remapped it, e.g. 529)
  and its message in OpenAI's envelope; unreachable 502, timed out 504, as over HTTP.
- A client that leaves closes litellm's stream, which closes the provider's connection.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from http import HTTPStatus
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from config.schema import Config, ModelConfig, ProviderConfig, ServerConfig
from proxy.limits.admission import DEFAULT_MAX_OUTPUT
from proxy.appkeys import BRIDGES
from proxy.errors import InvalidRequest, UpstreamError, UpstreamTimeout
from proxy.serving.redact import redact

log = logging.getLogger("payware.litellm")

KIND = "litellm"

# The request fields of OpenAI's API that go to litellm, per endpoint (plus `model`, `stream`
# and `stream_options`, which the bridge sets). NOTE: an allow-list, never the client's whole
# body: litellm takes its own settings as keyword arguments beside the API's fields, and a
# client's `api_base` or `extra_headers` would send the provider key where the client chose.
_COMMON = frozenset({"user", "temperature", "top_p", "n", "stop", "seed", "presence_penalty", "frequency_penalty",
                     "logit_bias", "logprobs", "max_tokens"})
_FIELDS = {
    "chat": _COMMON | {"messages", "max_completion_tokens", "top_logprobs", "response_format", "tools", "tool_choice",
                       "parallel_tool_calls", "functions", "function_call", "reasoning_effort", "modalities", "audio",
                       "prediction", "service_tier", "web_search_options", "verbosity", "prompt_cache_key",
                       "safety_identifier", "thinking", "top_k"},
    "completions": _COMMON | {"prompt", "best_of", "echo", "suffix"},
    "embeddings": frozenset({"input", "dimensions", "encoding_format", "user"}),
}
_SET_BY_BRIDGE = frozenset({"model", "stream", "stream_options"})
_PASSED_ERROR_HEADERS = ("retry-after", "retry-after-ms", "x-should-retry")
_DONE = b"data: [DONE]\n\n"


def import_litellm() -> Any:
    """`import litellm`, quiet: blocking (seconds), so run it in a thread, once."""
    # Prices come from the installed JSON (config.pricedb); litellm must not fetch its own.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    litellm.suppress_debug_info = True  # no "Provider List: …" banner on stdout for each error
    for name in ("LiteLLM", "LiteLLM Proxy", "LiteLLM Router"):
        # NOTE: litellm gives its loggers their own stderr handlers; their lines must go through
        # Payware's handlers alone, whose formatter removes secrets (proxy.serving.redact). Its INFO
        # lines (one per call) are left out.
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.propagate = True
        logger.setLevel(logging.WARNING)
    return litellm


def litellm_ctx(config: Config) -> Callable[[web.Application], AsyncIterator[None]]:
    """The app's clean-up context for the bridge: it registers it in `app[BRIDGES]` at start-up when
    `config` has a litellm provider (else nothing is imported), and on clean-up waits for the
    streams being closed and closes litellm's clients."""

    async def bridge(app: web.Application) -> AsyncIterator[None]:
        if not any(provider.kind == KIND for provider in config.providers.values()):
            yield
            return
        started = time.perf_counter()
        module = await asyncio.to_thread(import_litellm)
        opener = LitellmBridge(litellm=module, server=config.server)
        app[BRIDGES][KIND] = opener
        log.info("litellm %s ready in %.0f ms", importlib.metadata.version("litellm"),
                 (time.perf_counter() - started) * 1000)
        yield
        await opener.close()

    return bridge


class LitellmBridge:
    """The opener of provider kind `litellm` (see `proxy.appkeys.BRIDGES`)."""

    def __init__(self, *, litellm: Any, server: ServerConfig) -> None:
        import httpx
        import openai

        self._litellm = litellm
        self._calls: dict[str, Callable] = {"chat": litellm.acompletion, "completions": litellm.atext_completion,
                                            "embeddings": litellm.aembedding}
        self._timeout = httpx.Timeout(server.read_timeout, connect=server.connect_timeout)
        self._timeouts = (litellm.Timeout, openai.APITimeoutError, httpx.TimeoutException, asyncio.TimeoutError)
        self._unreachable = (openai.APIConnectionError, httpx.TransportError, aiohttp.ClientConnectionError,
                             ConnectionError)
        self._closing: set[asyncio.Task] = set()  # streams being closed after their client left

    async def __call__(self, *, provider: ProviderConfig, model: ModelConfig, body: dict, stream: bool,
                       fmt) -> BridgedResponse:
        """Call the provider through litellm; the answer, or the provider's error, as a response."""
        kwargs = self._arguments(provider, model, body, fmt.endpoint)
        if stream:
            kwargs["stream"] = True
            kwargs["stream_options"] = {"include_usage": True}  # the relay strips it if the client did not ask
        try:
            answer = await self._calls[fmt.endpoint](**kwargs)
        except Exception as exc:
            return self._failure(exc, provider)
        if not stream:
            return BridgedResponse(status=200, body=_answer_json(answer))
        try:  # the first chunk, so that a provider's refusal is a status, not a broken stream
            first = await answer.__anext__()
        except StopAsyncIteration:
            first = None
        except Exception as exc:
            self.stop(answer)
            return self._failure(exc, provider)
        except BaseException:  # the client left while the provider was starting
            self.stop(answer)
            raise
        return BridgedResponse(status=200, content=BridgedStream(self, answer, first, provider))

    def _arguments(self, provider: ProviderConfig, model: ModelConfig, body: dict, endpoint: str) -> dict:
        allowed = _FIELDS[endpoint]
        kwargs: dict[str, Any] = {}
        for name, value in body.items():
            if name in allowed:
                kwargs[name] = value
            elif name not in _SET_BY_BRIDGE and value is not None:
                raise InvalidRequest(f"`{name}` is not a field of OpenAI's API that Payware sends to a litellm "
                                     f"provider", param=name, code="unsupported_parameter")
        if endpoint == "chat" and kwargs.get("max_tokens") is None and kwargs.get("max_completion_tokens") is None:
            # NOTE: the worst case admission reserved; litellm would otherwise choose its own
            # default for providers that need one (Anthropic), possibly above it.
            kwargs["max_tokens"] = model.max_output_tokens or DEFAULT_MAX_OUTPUT
        kwargs.update(model=model.upstream, api_key=provider.api_key, api_base=provider.base_url,
                      timeout=self._timeout, max_retries=0)  # NOTE: no retries: one admitted call, one provider call
        return kwargs

    def _failure(self, exc: Exception, provider: ProviderConfig) -> BridgedResponse:
        """The provider's error as its status and OpenAI's envelope; 502/504 raised as over HTTP."""
        kind, link = self.classify(exc)
        if kind == "timeout":
            raise UpstreamTimeout(f"provider {provider.name!r} did not answer in time") from None
        if kind == "unreachable":
            raise UpstreamError(f"could not reach provider {provider.name!r}: {type(link).__name__}") from None
        status = _status(exc)
        if status is None:
            raise exc  # not litellm's view of a provider's answer: a bug, rendered as a 500 and logged
        headers = _error_headers(exc)
        body = {"error": _error_object(exc, status, provider)}
        return BridgedResponse(status=status, body=json.dumps(body).encode(), headers=headers)

    def classify(self, exc: BaseException) -> tuple[str, BaseException]:
        """("timeout" | "unreachable" | "answered", the link that says so): what the exception's
        chain says happened (litellm reports an unreachable host as a 500 from the provider)."""
        links = _chain(exc)
        for kind, types in (("timeout", self._timeouts), ("unreachable", self._unreachable)):
            for link in links:
                if isinstance(link, types):
                    return kind, link
        return "answered", exc

    def stop(self, stream: Any) -> None:
        """Close a litellm stream (and so the provider's connection) without waiting for it."""
        closer = stream if hasattr(stream, "aclose") else getattr(stream, "completion_stream", None)
        if closer is None or not hasattr(closer, "aclose"):
            return
        task = asyncio.get_running_loop().create_task(closer.aclose())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        """On clean-up: let closing streams finish, close litellm's cached HTTP clients."""
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        closer = getattr(self._litellm, "close_litellm_async_clients", None)
        if closer is not None:
            try:
                await closer()
            except Exception:  # NOTE: shutting down: a client that will not close must not stop the rest
                log.exception("closing litellm's clients failed")


class BridgedStream:
    """litellm's chunks as OpenAI SSE bytes, in the shape of aiohttp's `StreamReader.iter_any`."""

    def __init__(self, bridge: LitellmBridge, stream: Any, first: Any, provider: ProviderConfig) -> None:
        self._bridge = bridge
        self._stream = stream
        self._first = first
        self._provider = provider
        self._finished = False

    def iter_any(self) -> AsyncIterator[bytes]:
        return self._chunks()

    def ready(self) -> bool:
        """Whether the next chunk is at hand: the first one is, before the relay starts."""
        return self._first is not None

    def at_eof(self) -> bool:
        """Whether the last bytes (`[DONE]`, or the error event) have been handed over."""
        return self._finished

    async def _chunks(self) -> AsyncIterator[bytes]:
        chunk = self._first
        self._first = None
        try:
            while chunk is not None:
                if not _made_up_usage(chunk, self._stream):
                    yield b"data: " + _chunk_json(chunk) + b"\n\n"
                try:
                    chunk = await self._stream.__anext__()
                except StopAsyncIteration:
                    chunk = None
            self._finished = True
            yield _DONE
        except Exception as exc:
            # The provider failed mid-way: OpenAI's way to say so in a stream, and no [DONE], so
            # the relay bills what was generated as partial.
            self._finished = True
            yield b"data: " + json.dumps({"error": self._midstream_error(exc)}).encode() + b"\n\n"

    def _midstream_error(self, exc: Exception) -> dict:
        kind, _ = self._bridge.classify(exc)
        if kind == "timeout":
            return {"message": f"provider {self._provider.name!r} did not answer in time",
                    "type": "upstream_error", "param": None, "code": "upstream_timeout"}
        if kind == "unreachable":
            return {"message": f"provider {self._provider.name!r} broke off its answer",
                    "type": "upstream_error", "param": None, "code": "upstream_error"}
        return _error_object(exc, _status(exc) or 502, self._provider)

    def stop(self) -> None:
        if not self._finished:
            self._finished = True
            self._bridge.stop(self._stream)


class BridgedResponse:
    """What the relay gets from the bridge: the parts of an `aiohttp.ClientResponse` it reads."""

    def __init__(self, *, status: int, body: bytes = b"", content: BridgedStream | None = None,
                 headers: dict[str, str] | None = None) -> None:
        self.status = status
        try:
            self.reason = HTTPStatus(status).phrase
        except ValueError:  # 529 and other statuses of the providers' own
            self.reason = ""
        kind = "text/event-stream; charset=utf-8" if content is not None else "application/json"
        self.headers = CIMultiDict({"Content-Type": kind, **(headers or {})})
        self.content = content
        self._body = body

    async def read(self) -> bytes:
        return self._body

    def close(self) -> None:
        """The client left: stop the provider's stream at once."""
        if self.content is not None:
            self.content.stop()

    def release(self) -> None:
        """The relay is done with the answer; a stream it did not read to the end is stopped."""
        self.close()


def _answer_json(answer: Any) -> bytes:
    """A whole answer as OpenAI's JSON; a usage of all zeros is litellm's default, not the provider's
    count, and is removed so that the relay estimates it (as for a provider that reports none)."""
    data = answer.model_dump(mode="json", warnings=False)  # base64 embeddings are str where floats are typed
    usage = data.get("usage")
    if isinstance(usage, dict) and not any(usage.get(k) for k in ("prompt_tokens", "completion_tokens",
                                                                    "total_tokens")):
        data["usage"] = None
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()


def _chunk_json(chunk: Any) -> bytes:
    """One chunk as litellm's own proxy serializes it: unset and null fields left out."""
    try:
        return chunk.model_dump_json(exclude_none=True, exclude_unset=True).encode()
    except Exception:  # pydantic refused a field it cannot encode: the lenient way
        data = chunk.model_dump(mode="json", exclude_none=True, exclude_unset=True, fallback=str)
        return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()


def _made_up_usage(chunk: Any, stream: Any) -> bool:
    """Whether `chunk` is litellm's final usage chunk with counts it estimated itself.

    litellm keeps the chunks that carried the provider's usage in `CustomStreamWrapper.chunks`
    (`_record_and_strip_usage_chunk`); when none did, it fills the final usage chunk with its
    own token counter (`ChunkProcessor.calculate_usage`). The relay's estimate is flagged as
    one; litellm's would be billed as if the provider had reported it.
    """
    if getattr(chunk, "usage", None) is None or getattr(chunk, "choices", None):
        return False
    wrapper = stream if hasattr(stream, "chunks") else getattr(stream, "completion_stream", None)
    seen = getattr(wrapper, "chunks", None)
    if not isinstance(seen, list):
        return False  # a litellm without that record: its usage is trusted
    return not any(getattr(seen_chunk, "usage", None) is not None for seen_chunk in seen)


def _chain(exc: BaseException) -> list[BaseException]:
    """`exc` and what caused it, outermost first (litellm wraps the provider's error twice)."""
    links: list[BaseException] = []
    while exc is not None and exc not in links and len(links) < 16:
        links.append(exc)
        exc = exc.__cause__ or exc.__context__
    return links


def _status(exc: Exception) -> int | None:
    """The provider's own status (litellm maps some, e.g. Anthropic's 529 to 500, and keeps the
    original as `provider_status_code`), or None if the exception is not about an answer."""
    for name in ("provider_status_code", "status_code"):
        status = getattr(exc, name, None)
        if type(status) is int and 400 <= status <= 599:
            return status
    return None


def _provider_error(exc: BaseException) -> dict:
    """The provider's own error object, found in litellm's exception chain, or {}."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body  # an OpenAI-compatible provider's `error`, as the openai SDK parsed it
    for link in _chain(exc):
        text = getattr(link, "message", None)  # the provider's body (bytes when litellm streamed)
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        if not isinstance(text, str) or not text.startswith("{"):
            continue
        try:
            parsed = json.loads(text)
        except (ValueError, RecursionError):
            continue
        error = parsed.get("error") if isinstance(parsed, dict) else None
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return error  # Anthropic's {"type":"error","error":{…}}, Gemini's {"error":{…}}
    return {}


_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "not_found_error", 422: "invalid_request_error", 429: "rate_limit_error"}


def _error_object(exc: BaseException, status: int, provider: ProviderConfig) -> dict:
    """OpenAI's error object for a provider's error: its message, type and code when it gave them."""
    error = _provider_error(exc)
    message = error.get("message") or getattr(exc, "message", None) or str(exc) or type(exc).__name__
    kind = error.get("type") or error.get("status")  # Gemini names its kind `status`
    if not isinstance(kind, str):
        kind = _TYPES.get(status, "upstream_error" if status >= 500 else "invalid_request_error")
    code = error.get("code") if isinstance(error.get("code"), str) else None
    param = error.get("param") if isinstance(error.get("param"), str) else None
    secrets = [provider.api_key] if provider.api_key else []
    return {"message": redact(str(message), secrets), "type": kind, "param": param, "code": code}


def _error_headers(exc: BaseException) -> dict[str, str]:
    """The provider's retry advice (a 429's `retry-after`), when litellm kept its headers."""
    headers = getattr(exc, "litellm_response_headers", None) or getattr(getattr(exc, "response", None),
                                                                        "headers", None)
    if headers is None:
        return {}
    return {name: str(headers[name]) for name in _PASSED_ERROR_HEADERS if name in headers}
