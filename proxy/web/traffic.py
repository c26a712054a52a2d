"""Requests, errors and refusals per hour, as the console shows them.

Counted in memory, by this proxy, since it started (every proxy of a fleet counts its own):
each API answer (`/v1…`) is counted when it is prepared, by the same facts its access-log
line carries (status and the refusal's or failure's code). Classes:

- `refused`: 401, 403, 429 (bad keys, caps, rate limits: Payware said no);
- `invalid`: the other 4xx (bad input, unknown model, body too large);
- `errors`: 5xx (upstream failures and timeouts, Payware's own).
"""

from __future__ import annotations

import time
from collections import Counter

from aiohttp import web

KEEP_HOURS = 48


class Traffic:
    """Hourly buckets of counts, the newest `KEEP_HOURS` kept."""

    def __init__(self) -> None:
        self.hours: dict[int, Counter] = {}  # hour start (unix seconds) -> counts
        self.codes: dict[int, Counter] = {}  # hour start -> refusal and error codes

    def record(self, *, status: int, code: str | None, at: float | None = None) -> None:
        hour = int((time.time() if at is None else at) // 3600 * 3600)
        counts = self.hours.get(hour)
        if counts is None:
            counts = self.hours[hour] = Counter()
            self.codes[hour] = Counter()
            for old in [h for h in self.hours if h <= hour - KEEP_HOURS * 3600]:
                del self.hours[old], self.codes[old]
        counts["requests"] += 1
        kind = classify(status)
        counts[kind] += 1
        if kind != "ok":
            self.codes[hour][code or str(status)] += 1

    def recent(self, hours: int, *, now: float | None = None) -> list[dict]:
        """The last `hours` hours, oldest first, each with every class (zeros included)."""
        current = int((time.time() if now is None else now) // 3600 * 3600)
        rows = []
        for hour in range(current - (hours - 1) * 3600, current + 1, 3600):
            counts = self.hours.get(hour, Counter())
            rows.append({"hour": hour, **{k: counts[k] for k in ("requests", "ok", "refused", "invalid", "errors")}})
        return rows

    def top_codes(self, hours: int, *, now: float | None = None, limit: int = 8) -> list[tuple[str, int]]:
        current = int((time.time() if now is None else now) // 3600 * 3600)
        total: Counter = Counter()
        for hour, codes in self.codes.items():
            if hour > current - hours * 3600:
                total.update(codes)
        return total.most_common(limit)


def classify(status: int) -> str:
    """The traffic class of an answer's status (see the module docstring)."""
    if status >= 500:
        return "errors"
    if status in (401, 403, 429):
        return "refused"
    if status >= 400:
        return "invalid"
    return "ok"


TRAFFIC = web.AppKey("web_traffic", Traffic)


async def count_response(request: web.Request, response: web.StreamResponse) -> None:
    """`on_response_prepare`: count an API answer (the faces' own pages are not traffic)."""
    if request.path.startswith("/v1"):
        request.app[TRAFFIC].record(status=response.status, code=request.get("payware.error"))
