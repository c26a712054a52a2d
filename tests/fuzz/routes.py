"""The routes the fuzzer attacks. A new route is one more row in ROUTES.

`family` picks the generator of bodies and queries (see `generators.FAMILIES`); `envelope`
names the error body the route must answer in (see `judge.ENVELOPES`); `endpoint` is the
usage event's endpoint a served call of the route is billed under (None: nothing is billed).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    family: str  # "model" | "records" | "cap" | "read" | "health" | "unknown"
    envelope: str = "openai"
    endpoint: str | None = None  # the billed endpoint ("chat", "records", ...) of a 2xx answer
    upstream_path: str | None = None  # where the fake provider counts a forwarded call
    weight: float = 1.0  # share of the generated cases
    query: tuple[str, ...] = ()  # the query parameters the route reads

    @property
    def label(self) -> str:
        return f"{self.method} {self.path}"


_READ = ("customer",)

ROUTES: tuple[Route, ...] = (
    Route("POST", "/v1/chat/completions", "model", endpoint="chat", upstream_path="/v1/chat/completions",
          weight=9),
    Route("POST", "/v1/completions", "model", endpoint="completions", upstream_path="/v1/completions", weight=4),
    Route("POST", "/v1/embeddings", "model", endpoint="embeddings", upstream_path="/v1/embeddings", weight=4),
    Route("GET", "/v1/models", "read", weight=0.6),
    Route("GET", "/v1/usage/summary", "read", weight=0.8, query=_READ),
    # NOTE: low weights: each of these waits for the ledger (5 s, or for good) while it is stuck
    Route("GET", "/v1/usage/events", "read", weight=0.25,
          query=_READ + ("from", "to", "format", "session", "model", "feature", "period")),
    Route("GET", "/v1/billing/statements", "read", weight=0.12, query=_READ),
    Route("POST", "/v1/usage/records", "records", endpoint="records", weight=5),
    Route("GET", "/v1/billing/cap", "read", weight=0.5, query=_READ),
    Route("PUT", "/v1/billing/cap", "cap", weight=0),  # state-changing: its own sequential phase
    Route("GET", "/healthz", "health", weight=0.2),
)

# Paths that no route serves (some are routes to come: they must still answer in the envelope).
UNKNOWN_PATHS = (
    "/", "/v1", "/v1/", "/v1/chat/completions/", "/v1//chat/completions", "/v1/Chat/Completions",
    "/v2/chat/completions", "/v1/responses", "/v1/messages", "/v1/models/fake-ok",
    "/v1beta/models/fake-ok:generateContent", "/v1/admin/customers", "/metrics", "/portal",
    "/%2e%2e/%2e%2e/etc/passwd", "/v1/chat%00/completions", "/v1/%ff%fe", "/v1/usage/events/../summary",
    "/v1/chat/completions?x=" + "a" * 2000, "/" + "a" * 4000, "/v1/%ed%a0%80", "/healthz/",
)

# Models whose upstream name differs (proxy_config): their body is always serialized again.
MODELS_RENAMED = ("renamed", "fake-embed")
MODELS_CHAT = ("fake-ok", "renamed", "fake-no-usage", "fake-finish-usage", "fake-crlf", "fake-split")
MODELS_EMBED = ("fake-embed",)
# The provider's own refusals: passed through, not billed, but counted by the fake provider.
MODELS_UPSTREAM_ERROR = ("fake-error-400", "fake-error-429")


def by_label() -> dict[str, Route]:
    return {route.label: route for route in ROUTES}
