"""The providers' own usage reports: read them (from their API or an exported file) into rows.

Two reports, each read in the shape its provider documents:

- **OpenAI**, `GET /v1/organization/usage/completions` (admin key as a bearer token):
  `{"object": "page", "data": [bucket], "has_more", "next_page"}`, a bucket being
  `{"object": "bucket", "start_time", "end_time", "results": [result]}` (unix seconds), a result
  `{"object": "organization.usage.completions.result", "input_tokens", "input_cached_tokens",
  "input_cache_write_tokens", "input_cache_write_12h_tokens", "output_tokens",
  "input_audio_tokens", "output_audio_tokens", "num_model_requests", "model", "api_key_id", …}`.
  `input_tokens` counts every prompt token, cached reads and cache writes included (Payware's
  `input`); `input_cached_tokens` is Payware's `cached_input`; the 30-minute cache writes are
  `cache_write` and the 12-hour ones are kept in `cache_write_1h` (the longer-retention class).
  Queried with `bucket_width=1d`, `group_by=model`, `group_by=api_key_id`, `limit=31`, and
  `page=<next_page>` until `has_more` is false.
- **Anthropic**, `GET /v1/organizations/usage_report/messages` (headers `x-api-key: <admin key>`
  and `anthropic-version`): `{"data": [bucket], "has_more", "next_page"}`, a bucket being
  `{"starting_at", "ending_at", "results": [result]}` (RFC 3339), a result
  `{"uncached_input_tokens", "cache_read_input_tokens", "cache_creation":
  {"ephemeral_5m_input_tokens", "ephemeral_1h_input_tokens"}, "output_tokens",
  "server_tool_use": {"web_search_requests"}, "model", "api_key_id", "workspace_id", …}`.
  Its parts are disjoint: uncached + cache reads + cache writes is Payware's `input`. Queried
  with `bucket_width=1d`, `group_by[]=model`, `group_by[]=api_key_id`, `limit=31`, `page`.

A file exported from either API is one page, or a JSON list of pages. Every problem is a
`ReportError` naming where it is (`data[0].results[2].output_tokens: -1 is not a count`).
Audio tokens (OpenAI) and web searches (Anthropic) are kept as `extra`, not compared.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any

from metering.billing.token_parts import Tokens

ANTHROPIC_VERSION = "2023-06-01"
MAX_PAGES = 1000  # a provider that keeps answering has_more: true is not followed forever
BUCKET_LIMIT = 31  # days per page: the most both APIs allow for 1-day buckets


class ReportError(ValueError):
    """A usage report that cannot be read: the message names the place and what is wrong."""


class FetchError(RuntimeError):
    """The provider's API could not be read (refused, unreachable, not a usage report)."""


@dataclass(frozen=True, slots=True)
class ProviderUsage:
    """One result of a provider's report: a day, a model, maybe an API key, and its tokens."""

    day: date
    model: str
    api_key_id: str | None
    tokens: Tokens
    requests: int | None  # None: the report does not count requests (Anthropic's)
    extra: dict[str, int] = field(default_factory=dict)  # counted by the provider, not compared


# -- reading ----------------------------------------------------------------------------------

def load_file(path: str | Path) -> list[dict]:
    """The pages of an exported report file (one page, or a list of pages)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ReportError(f"{path}: cannot read file: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ReportError(f"{path}: not UTF-8 text") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ReportError(f"{path}: not JSON ({exc})") from None
    pages = data if isinstance(data, list) else [data]
    if not pages or not all(isinstance(page, dict) for page in pages):
        raise ReportError(f"{path}: must be a usage report page (a JSON object with `data`) or a list of pages")
    return pages


def read_openai(pages: list[dict]) -> list[ProviderUsage]:
    """Rows of OpenAI's completions usage report (see the module docstring)."""
    rows = []
    for p, page in enumerate(pages):
        for bucket, where in _buckets(page, p, len(pages)):
            if "start_time" not in bucket and "starting_at" in bucket:
                raise ReportError(f"{where}: has starting_at, not start_time: this is Anthropic's usage report, "
                                  "not OpenAI's (reconcile an anthropic provider with it)")
            start = _integer(bucket, "start_time", where, required=True)
            try:
                day = datetime.fromtimestamp(start, timezone.utc).date()
            except (OverflowError, OSError, ValueError):
                raise ReportError(f"{where}.start_time: {start} is not a unix time") from None
            for r, result in enumerate(_list(bucket, "results", where)):
                at = f"{where}.results[{r}]"
                if not isinstance(result, dict):
                    raise ReportError(f"{at}: must be an object")
                kind = result.get("object", "organization.usage.completions.result")
                if kind != "organization.usage.completions.result":
                    raise ReportError(f"{at}.object: {kind!r} is not a completions usage result "
                                      "(export /v1/organization/usage/completions)")
                count = lambda name, required=False: _integer(result, name, at, required=required)  # noqa: E731
                writes_30m, writes_12h = count("input_cache_write_tokens"), count("input_cache_write_12h_tokens")
                try:
                    tokens = Tokens.from_classes(input=count("input_tokens", True),
                                                 cached_input=count("input_cached_tokens"),
                                                 cache_write=writes_30m + writes_12h, cache_write_1h=writes_12h,
                                                 output=count("output_tokens", True), where=at)
                except ValueError as exc:
                    raise ReportError(str(exc)) from None
                extra = {name: count(name) for name in ("input_audio_tokens", "output_audio_tokens") if result.get(name)}
                rows.append(ProviderUsage(day=day, model=_model(result, at), api_key_id=_key(result, at),
                                          tokens=tokens, requests=count("num_model_requests", True), extra=extra))
    return rows


def read_anthropic(pages: list[dict]) -> list[ProviderUsage]:
    """Rows of Anthropic's messages usage report (see the module docstring)."""
    rows = []
    for p, page in enumerate(pages):
        for bucket, where in _buckets(page, p, len(pages)):
            value = bucket.get("starting_at")
            if value is None and "start_time" in bucket:
                raise ReportError(f"{where}: has start_time, not starting_at: this is OpenAI's usage report, "
                                  "not Anthropic's (reconcile an openai provider with it)")
            if value is None:
                raise ReportError(f"{where}.starting_at: is required")
            try:
                moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
            except ValueError:
                raise ReportError(f"{where}.starting_at: {value!r} is not an RFC 3339 time") from None
            day = (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).astimezone(timezone.utc).date()
            for r, result in enumerate(_list(bucket, "results", where)):
                at = f"{where}.results[{r}]"
                if not isinstance(result, dict):
                    raise ReportError(f"{at}: must be an object")
                creation = result.get("cache_creation") or {}
                if not isinstance(creation, dict):
                    raise ReportError(f"{at}.cache_creation: must be an object")
                count = lambda name, required=False: _integer(result, name, at, required=required)  # noqa: E731
                tokens = Tokens(uncached=count("uncached_input_tokens", True), cache_read=count("cache_read_input_tokens"),
                                cache_write_5m=_integer(creation, "ephemeral_5m_input_tokens", f"{at}.cache_creation"),
                                cache_write_1h=_integer(creation, "ephemeral_1h_input_tokens", f"{at}.cache_creation"),
                                output=count("output_tokens", True))
                tools = result.get("server_tool_use") or {}
                extra = {}
                if isinstance(tools, dict) and tools.get("web_search_requests"):
                    extra["web_search_requests"] = _integer(tools, "web_search_requests", f"{at}.server_tool_use")
                rows.append(ProviderUsage(day=day, model=_model(result, at), api_key_id=_key(result, at),
                                          tokens=tokens, requests=None, extra=extra))
    return rows


READERS: dict[str, Callable[[list[dict]], list[ProviderUsage]]] = {"openai": read_openai,
                                                                    "anthropic": read_anthropic}


def _buckets(page: Any, p: int, pages: int):
    prefix = f"[{p}]." if pages > 1 else ""
    if not isinstance(page, dict):
        raise ReportError(f"{prefix or '(top level)'}: must be an object")
    buckets = _list(page, "data", prefix.rstrip(".") or None)
    for b, bucket in enumerate(buckets):
        where = f"{prefix}data[{b}]"
        if not isinstance(bucket, dict):
            raise ReportError(f"{where}: must be an object")
        yield bucket, where


def _list(data: dict, name: str, where: str | None) -> list:
    value = data.get(name)
    path = f"{where}.{name}" if where else name
    if not isinstance(value, list):
        raise ReportError(f"{path}: must be a list" + (" (is this a usage report?)" if value is None else ""))
    return value


def _integer(data: dict, name: str, where: str, *, required: bool = False) -> int:
    value = data.get(name)
    if value is None:
        if required:
            raise ReportError(f"{where}.{name}: is required")
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ReportError(f"{where}.{name}: {value!r} is not a count (a whole number, 0 or more)")
    return value


def _model(result: dict, where: str) -> str:
    model = result.get("model")
    if not isinstance(model, str) or not model:
        raise ReportError(f"{where}.model: {model!r}: the report must be grouped by model "
                          "(group_by=model for OpenAI, group_by[]=model for Anthropic)")
    return model


def _key(result: dict, where: str) -> str | None:
    key = result.get("api_key_id")
    if key is not None and not isinstance(key, str):
        raise ReportError(f"{where}.api_key_id: {key!r} must be a string")
    return key


# -- fetching ---------------------------------------------------------------------------------

def report_url(kind: str, base_url: str) -> str:
    """The usage report's URL under the provider's API base (with or without its /v1)."""
    root = base_url.rstrip("/").removesuffix("/v1")
    return root + ("/v1/organization/usage/completions" if kind == "openai"
                   else "/v1/organizations/usage_report/messages")


def query(kind: str, start: date, end: date, api_key_ids: tuple[str, ...] = (), page: str | None = None
          ) -> list[tuple[str, str]]:
    """The query of one page: days `start`..`end` (inclusive), 1-day buckets, by model and key."""
    since = datetime.combine(start, time(), timezone.utc)
    until = datetime.combine(end + timedelta(days=1), time(), timezone.utc)
    if kind == "openai":
        params = [("start_time", str(int(since.timestamp()))), ("end_time", str(int(until.timestamp()))),
                  ("bucket_width", "1d"), ("group_by", "model"), ("group_by", "api_key_id"),
                  ("limit", str(BUCKET_LIMIT))] + [("api_key_ids", k) for k in api_key_ids]
    else:
        params = [("starting_at", since.strftime("%Y-%m-%dT%H:%M:%SZ")),
                  ("ending_at", until.strftime("%Y-%m-%dT%H:%M:%SZ")), ("bucket_width", "1d"),
                  ("group_by[]", "model"), ("group_by[]", "api_key_id"),
                  ("limit", str(BUCKET_LIMIT))] + [("api_key_ids[]", k) for k in api_key_ids]
    return params + ([("page", page)] if page else [])


def headers(kind: str, admin_key: str) -> dict[str, str]:
    if kind == "openai":
        return {"Authorization": f"Bearer {admin_key}"}
    return {"x-api-key": admin_key, "anthropic-version": ANTHROPIC_VERSION}


async def fetch(session, *, kind: str, base_url: str, admin_key: str, start: date, end: date,
                api_key_ids: tuple[str, ...] = ()) -> list[dict]:
    """Every page of the provider's report for `start`..`end` (an aiohttp session, its timeouts).

    NOTE: the admin key goes only into the request's header: errors quote the provider's
    message and status, never the key or the request.
    """
    import aiohttp

    url, pages, page, seen = report_url(kind, base_url), [], None, set()
    for _ in range(MAX_PAGES):
        try:
            async with session.get(url, params=query(kind, start, end, api_key_ids, page),
                                   headers=headers(kind, admin_key)) as response:
                raw = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise FetchError(f"{url}: unreachable ({type(exc).__name__}: {exc})") from None
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if status != 200:
            raise FetchError(f"{url}: answered {status}: {_error_message(body, raw)}"
                             + (" (is providers.<name>.admin_key an admin key?)" if status in (401, 403) else ""))
        if not isinstance(body, dict) or not isinstance(body.get("data"), list):
            raise FetchError(f"{url}: the answer is not a usage report page")
        pages.append(body)
        page = body.get("next_page")
        if not body.get("has_more") or not page:
            return pages
        if page in seen:
            raise FetchError(f"{url}: the provider gave the page {page!r} twice")
        seen.add(page)
    raise FetchError(f"{url}: more than {MAX_PAGES} pages")


def _error_message(body: Any, raw: bytes) -> str:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("message") or body["error"].get("type") or "")[:300]
    return raw[:200].decode("utf-8", "replace")


__all__ = ["FetchError", "ProviderUsage", "READERS", "ReportError", "fetch", "load_file", "read_anthropic",
           "read_openai", "report_url"]
