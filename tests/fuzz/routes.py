"""The routes the fuzzer attacks. A new route is one more row in ROUTES.

`family` picks the generator of the case (see `generators.FAMILIES`); `api` the shape of a
model route's body (see `apis.APIS`); `envelope` names the error body the route must answer
in (see `judge.ENVELOPES`); `endpoint` is the usage event's endpoint a served call of the
route is billed under (None: nothing is billed); `upstream` is where the fake provider counts
a call the route forwards ("{model}" is the model's upstream name); `key_at` is where the
API's own SDK puts the caller's key (the first is the usual one).
"""

from __future__ import annotations

from dataclasses import dataclass

# Where a Payware key may travel: each API's SDK sends it its own way, and Payware takes any.
KEY_POSITIONS = ("bearer", "x-api-key", "x-goog-api-key", "query")


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # "{model}", "{id}", "{key_id}", "{name}" are filled in by the generator
    family: str  # "model" | "stored" | "records" | "cap" | "read" | "admin" | "metrics" | "faces" | ...
    envelope: str = "openai"
    endpoint: str | None = None  # the billed endpoint ("chat", "records", ...) of a 2xx answer
    upstream: str | None = None  # where the fake provider counts a forwarded call
    weight: float = 1.0  # share of the generated cases
    query: tuple[str, ...] = ()  # the query parameters the route reads
    api: str | None = None  # the body's shape (model routes): "chat", "responses", "messages", "gemini", ...
    key_at: tuple[str, ...] = ("bearer",)
    gemini_method: str | None = None  # Gemini's `:method` of the path

    @property
    def label(self) -> str:
        return f"{self.method} {self.path}"


_READ = ("customer",)
_ANTHROPIC_KEYS = ("x-api-key", "x-api-key", "bearer")
_GOOGLE_KEYS = ("x-goog-api-key", "x-goog-api-key", "query")


def _gemini(version: str, method: str, weight: float, endpoint: str | None) -> Route:
    return Route("POST", f"/{version}/models/{{model}}:{method}", "model", envelope="google", endpoint=endpoint,
                 upstream=f"/{version}/models/{{model}}:{method}", weight=weight, api="gemini", key_at=_GOOGLE_KEYS,
                 gemini_method=method)


def _admin(method: str, path: str, weight: float, query: tuple[str, ...] = ()) -> Route:
    return Route(method, path, "admin", weight=weight, query=query)


def _face(method: str, path: str, weight: float, query: tuple[str, ...] = ()) -> Route:
    # NOTE: pages for people: an error may be a small HTML page or OpenAI's JSON (for scripts)
    return Route(method, path, "faces", envelope="page", weight=weight, query=query)


ROUTES: tuple[Route, ...] = (
    # OpenAI's model routes
    Route("POST", "/v1/chat/completions", "model", endpoint="chat", upstream="/v1/chat/completions", weight=8,
          api="chat"),
    Route("POST", "/v1/completions", "model", endpoint="completions", upstream="/v1/completions", weight=3,
          api="completions"),
    Route("POST", "/v1/embeddings", "model", endpoint="embeddings", upstream="/v1/embeddings", weight=3,
          api="embeddings"),
    Route("POST", "/v1/responses", "model", endpoint="responses", upstream="/v1/responses", weight=6,
          api="responses"),
    # The stored responses: forwarded for their owner only, never billed (see stored_cases)
    Route("GET", "/v1/responses/{id}", "stored", upstream="/v1/responses/{id}", weight=0.8),
    Route("DELETE", "/v1/responses/{id}", "stored", upstream="/v1/responses/{id}", weight=0.2),
    Route("GET", "/v1/responses/{id}/input_items", "stored", upstream="/v1/responses/{id}/input_items", weight=0.7,
          query=("limit", "order", "after", "include")),
    Route("POST", "/v1/responses/{id}/cancel", "stored", upstream="/v1/responses/{id}/cancel", weight=0.4),
    # Anthropic's
    Route("POST", "/v1/messages", "model", envelope="anthropic", endpoint="messages", upstream="/v1/messages",
          weight=6, api="messages", key_at=_ANTHROPIC_KEYS),
    Route("POST", "/v1/messages/count_tokens", "model", envelope="anthropic", upstream="/v1/messages/count_tokens",
          weight=1.5, api="messages_count", key_at=_ANTHROPIC_KEYS),
    # Gemini's, under both API versions
    _gemini("v1beta", "generateContent", 3, "generate"),
    _gemini("v1beta", "streamGenerateContent", 2, "generate"),
    _gemini("v1beta", "countTokens", 0.8, None),
    _gemini("v1", "generateContent", 1.5, "generate"),
    _gemini("v1", "streamGenerateContent", 1, "generate"),
    _gemini("v1", "countTokens", 0.4, None),
    # Models, metering and billing
    Route("GET", "/v1/models", "read", weight=0.5),
    Route("GET", "/v1/models/{id}", "model_id", weight=0.8),
    Route("GET", "/v1/usage/summary", "read", weight=0.7, query=_READ),
    # NOTE: low weights: each of these waits for the ledger (5 s, or for good) while it is stuck
    Route("GET", "/v1/usage/events", "read", weight=0.25,
          query=_READ + ("from", "to", "format", "session", "model", "feature", "period")),
    Route("GET", "/v1/billing/statements", "read", weight=0.12, query=_READ),
    Route("POST", "/v1/usage/records", "records", endpoint="records", weight=5),
    Route("GET", "/v1/billing/cap", "read", weight=0.5, query=_READ),
    Route("PUT", "/v1/billing/cap", "cap", weight=0),  # state-changing: its own sequential phase
    Route("GET", "/v1/billing/credits", "read", weight=0.4, query=_READ),
    Route("GET", "/healthz", "health", weight=0.2),
    Route("GET", "/metrics", "metrics", weight=0.4),
    # The admin API (admin key only)
    _admin("POST", "/v1/admin/customers", 0.8),
    _admin("GET", "/v1/admin/customers", 0.3, ("limit", "after")),
    _admin("GET", "/v1/admin/customers/{id}", 0.3),
    _admin("PATCH", "/v1/admin/customers/{id}", 0.7),
    _admin("DELETE", "/v1/admin/customers/{id}", 0.15),
    _admin("POST", "/v1/admin/customers/{id}/keys", 0.6),
    _admin("GET", "/v1/admin/customers/{id}/keys", 0.3, ("limit", "after")),
    _admin("DELETE", "/v1/admin/keys/{key_id}", 0.3),
    _admin("POST", "/v1/admin/keys/{key_id}/rotate", 0.3),
    _admin("GET", "/v1/admin/usage", 0.4, ("period", "format")),
    _admin("POST", "/v1/admin/reload", 0.1),
    _admin("POST", "/v1/admin/customers/{id}/credits", 0.8),
    _admin("GET", "/v1/admin/customers/{id}/credits", 0.3),
    _admin("POST", "/v1/admin/customers/{id}/portal_link", 0.3),
    _admin("GET", "/v1/admin/reconciliation", 0.1, ("provider",)),
    _admin("GET", "/v1/admin/settlements", 0.1, ("customer",)),
    # The web faces: the customer portal and the operator console
    _face("GET", "/portal", 0.4, ("token",)),
    _face("POST", "/portal/login", 0.3),
    _face("POST", "/portal/logout", 0.08),
    _face("GET", "/portal/api/summary", 0.3),
    _face("GET", "/portal/api/daily", 0.06),
    _face("GET", "/portal/api/events", 0.12, ("limit", "before")),
    _face("GET", "/portal/api/statements", 0.06),
    _face("GET", "/portal/api/statement.csv", 0.06, ("period",)),
    _face("POST", "/portal/api/cap", 0),  # state-changing: the cap phase
    _face("GET", "/admin", 0.25),
    _face("GET", "/admin/login", 0.08),
    _face("POST", "/admin/login", 0.12),
    _face("POST", "/admin/logout", 0.05),
    _face("GET", "/admin/customers/{id}", 0.2),
    _face("GET", "/admin/customers/{id}/events.csv", 0.06, ("from", "to", "session")),
    _face("GET", "/admin/customers/{id}/statement.csv", 0.05, ("period",)),
    _face("POST", "/admin/customers/{id}/keys", 0.12),
    _face("POST", "/admin/customers/{id}/portal_link", 0.1),
    _face("POST", "/admin/keys/{key_id}/revoke", 0.1),
    _face("POST", "/admin/keys/{key_id}/rotate", 0.1),
    _face("GET", "/static/{name}", 0.1),
)

# Paths that no route serves: an error in OpenAI's envelope (see NEAR_ROUTES for the exceptions).
UNKNOWN_PATHS = (
    "/", "/v1", "/v1/", "/v1/chat/completions/", "/v1//chat/completions", "/v1/Chat/Completions",
    "/v2/chat/completions", "/v1/responses/", "/v1/responses/resp_x/input_items/extra",
    "/v1/responses/resp_x/cancel/", "/v1/conversations", "/v1/messages/batches", "/v1/messages/",
    "/v1/messages/count_tokens/x", "/v1/complete", "/v1beta/models", "/v1beta/files", "/v1beta/cachedContents",
    "/v1alpha/models/gemini-fake-ok:generateContent", "/v1/admin", "/v1/admin/", "/v1/admin/customer",
    "/v1/admin/keys", "/v1/admin/customers/acme/keys/x", "/v1/billing", "/v1/billing/credit", "/metrics/",
    "/portal/", "/portal/api", "/admin/", "/static/", "/static/../proxy/app.py",
    "/%2e%2e/%2e%2e/etc/passwd", "/v1/chat%00/completions", "/v1/%ff%fe", "/v1/usage/events/../summary",
    "/v1/chat/completion?x=" + "a" * 2000, "/" + "a" * 4000, "/v1/%ed%a0%80", "/healthz/",
)
# Unknown paths under another API's prefix: either envelope is fine there (no route says which).
NEAR_ROUTES = {"/v1/messages": "anthropic|openai", "/v1beta": "google|openai", "/v1alpha": "google|openai"}

# Models whose upstream name differs (proxy_config and FUZZ_MODELS): their body is serialized again.
MODELS_RENAMED = ("renamed", "fake-embed", "responses-renamed", "claude-renamed")
MODELS_CHAT = ("fake-ok", "renamed", "fake-no-usage", "fake-finish-usage", "fake-crlf", "fake-split")
MODELS_EMBED = ("fake-embed",)
MODELS_RESPONSES = ("responses-fake-ok", "responses-fake-incomplete", "responses-renamed")
MODELS_MESSAGES = ("claude-fake-ok", "claude-fake-cache", "claude-fake-thinking", "claude-fake-packed",
                   "claude-renamed")
MODELS_GEMINI = ("gemini-fake-ok", "gemini-fake-cached-thoughts", "gemini-fake-blocked", "gemini-renamed")
# The provider's own refusals: passed through, not billed, but counted by the fake provider.
MODELS_UPSTREAM_ERROR = ("fake-error-400", "fake-error-429")
UPSTREAM_ERROR_MODELS = {
    "chat": MODELS_UPSTREAM_ERROR, "completions": MODELS_UPSTREAM_ERROR, "embeddings": MODELS_UPSTREAM_ERROR,
    "responses": ("responses-fake-error-429",), "messages": ("claude-fake-error-400", "claude-fake-overloaded"),
    "messages_count": (), "gemini": ("gemini-fake-error-400", "gemini-fake-overloaded"),
}
# The upstream name of each renamed model (the fake provider counts calls by it).
UPSTREAM_NAMES = {"renamed": "fake-ok", "fake-embed": "fake-ok", "responses-renamed": "responses-fake-ok",
                  "claude-renamed": "claude-fake-ok", "gemini-renamed": "gemini-fake-ok"}

# The models the fuzz config adds to tests/conftest.py's (its `extra_models=`), with prices.
_PRICE = '{input: "1.00", cached_input: "0.50", output: "4.00"}'
_CLAUDE_PRICE = '{input: "3.00", cached_input: "0.30", cache_write: "3.75", cache_write_1h: "6.00", output: "15.00"}'
FUZZ_MODELS = "".join(
    [f"  {name}: {{provider: fake, cost: {_PRICE}}}\n"
     for name in ("responses-fake-ok", "responses-fake-incomplete", "responses-fake-error-429")]
    + ["  responses-renamed: {provider: fake, upstream: responses-fake-ok, cost: " + _PRICE + "}\n"]
    + [f"  {name}: {{provider: fake-anthropic, cost: {_CLAUDE_PRICE}}}\n"
       for name in MODELS_MESSAGES[:-1] + UPSTREAM_ERROR_MODELS["messages"]]
    + ["  claude-renamed: {provider: fake-anthropic, upstream: claude-fake-ok, cost: " + _CLAUDE_PRICE + "}\n"]
    + [f"  {name}: {{provider: fake-gemini, cost: {_PRICE}}}\n"
       for name in MODELS_GEMINI[:-1] + UPSTREAM_ERROR_MODELS["gemini"]]
    + ["  gemini-renamed: {provider: fake-gemini, upstream: gemini-fake-ok, cost: " + _PRICE + "}\n"])


def by_label() -> dict[str, Route]:
    return {route.label: route for route in ROUTES}
