"""The admin configuration as typed, immutable values.

The loader (`config.loader`) builds these from YAML after validating every field;
nothing else constructs them from untrusted input. Money is `Decimal`, never float.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

INTERVALS = ("daily", "weekly", "monthly", "threshold")
CAP_ACTIONS = ("block", "throttle", "notify")
CAP_MODES = ("hard", "soft")
TOKEN_TYPES = ("input", "cached_input", "cache_write", "cache_write_1h", "output")
PROVIDER_KINDS = ("openai", "anthropic", "gemini", "litellm", "echo")
# Where a provider of each kind answers when the config gives no base_url.
DEFAULT_BASE_URLS = {"openai": "https://api.openai.com/v1", "anthropic": "https://api.anthropic.com",
                     "gemini": "https://generativelanguage.googleapis.com"}
# The largest cap the counters hold exactly: 2**53 - 1 nano-USD (Lua numbers are doubles).
MAX_CAP = Decimal("9007199.254740991")
MAX_OUTPUT_TOKENS = 100_000_000  # a request's max_tokens above this is refused: no model writes that much


class Secret(str):
    """A string that never shows itself in a repr, a log line or a traceback."""

    def __repr__(self) -> str:
        return "Secret('***')"


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    admin_key: Secret | None = None  # None: the admin API is disabled
    max_body_bytes: int = 8 * 1024 * 1024
    connect_timeout: float = 10.0
    read_timeout: float = 600.0  # between two reads from the provider, streams included
    statement_grace: float = 900.0  # seconds after a period's end before its statement is frozen
    body_timeout: float = 30.0  # seconds to receive a request's whole body (slow clients are cut: 408)
    idle_timeout: float = 75.0  # seconds a connection may sit without a complete request's headers
    metrics_listen: tuple[str, int] | None = None  # (host, port) serving only /metrics, without auth


@dataclass(frozen=True, slots=True)
class StorageConfig:
    ledger: str = "sqlite:///payware.db"
    counters: str = "memory"
    journal: str = "./payware.journal"
    flush_interval: float = 0.2  # seconds between two batched ledger writes
    flush_batch: int = 500
    on_counter_failure: str = "fail_closed"  # Redis unreachable: "fail_closed" (503) | "fail_open" (local counters)
    hold_ttl: float = 60.0  # seconds a reservation outlives its proxy (renewed every second while its call runs)


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    name: str
    kind: str  # openai | anthropic | gemini | litellm | echo
    base_url: str | None  # None for `echo` (started in-process) and for litellm's own defaults
    api_key: Secret | None
    admin_key: Secret | None = None  # the provider's admin key, for its usage report (`payware reconcile`)


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """A provider's cost in USD per 1M tokens, valid from `effective_from` on.

    Token classes (DESIGN.md): `input` for input neither read from nor written to the cache,
    `cached_input` for cache reads, `cache_write` for cache writes (Anthropic's 5-minute
    ones; default: the input price), `cache_write_1h` for 1-hour cache writes (default: the
    cache-write price), `output` (reasoning included). `above` holds the prices that apply
    to the whole call when its prompt is longer than a threshold (Gemini 2.5 Pro's "above
    200k tokens"): pairs of (threshold in input tokens, ModelPrice), ascending.
    """

    input: Decimal
    cached_input: Decimal
    output: Decimal
    effective_from: datetime | None = None  # None: since forever
    source: str = "config"  # "config" | "litellm"
    cache_write: Decimal | None = None
    cache_write_1h: Decimal | None = None
    above: tuple[tuple[int, "ModelPrice"], ...] = ()

    def __post_init__(self) -> None:
        if self.cache_write is None:
            object.__setattr__(self, "cache_write", self.input)
        if self.cache_write_1h is None:
            object.__setattr__(self, "cache_write_1h", self.cache_write)

    def for_prompt(self, input_tokens: int) -> ModelPrice:
        """The prices of a call whose prompt has `input_tokens` tokens (every class included)."""
        chosen = self
        for threshold, price in self.above:
            if input_tokens > threshold:
                chosen = price
        return chosen

    def per_class(self) -> dict[str, Decimal]:
        """USD per 1M tokens of each class."""
        return {"input": self.input, "cached_input": self.cached_input, "cache_write": self.cache_write,
                "cache_write_1h": self.cache_write_1h, "output": self.output}


@dataclass(frozen=True, slots=True)
class ModelConfig:
    name: str  # what clients ask for
    provider: str
    upstream: str  # what is sent to the provider
    mode: str  # "chat" | "completion" | "embedding"
    prices: tuple[ModelPrice, ...]  # sorted by effective_from, oldest first
    max_output_tokens: int | None = None

    def price_at(self, ts: datetime) -> ModelPrice:
        """The price in force at `ts` (the newest one that had started by then)."""
        current = self.prices[0]
        for price in self.prices[1:]:
            if price.effective_from is not None and price.effective_from <= ts:
                current = price
        return current


@dataclass(frozen=True, slots=True)
class TierStep:
    up_to: int | None  # None: no upper bound (the last step)
    per_million: Decimal  # price per 1M units within (graduated) or for all units reaching (volume)
    flat_fee: Decimal = Decimal(0)


@dataclass(frozen=True, slots=True)
class Tiers:
    metric: str
    mode: str  # "graduated" | "volume"
    steps: tuple[TierStep, ...]


@dataclass(frozen=True, slots=True)
class CreditsConfig:
    """How a plan uses prepaid credits (`metering.billing.credits`)."""

    mode: str  # "credit_only": the balance is a hard cap | "credit_then_invoice": overage is invoiced
    top_up_below: Decimal | None = None  # a balance crossing below this asks for a top-up (webhook)
    top_up_to: Decimal | None = None  # ... to this balance


@dataclass(frozen=True, slots=True)
class PlanConfig:
    name: str
    interval: str = "monthly"
    currency: str = "USD"
    timezone: str = "UTC"  # periods start at local midnight in this IANA zone
    base_fee: Decimal = Decimal(0)
    included: dict[str, int] = field(default_factory=dict)  # metric -> free units per period
    markup: Decimal | None = None  # price = provider cost x markup
    per_million: dict[str, Decimal] = field(default_factory=dict)  # token type -> price per 1M
    model_prices: dict[str, dict[str, Decimal]] = field(default_factory=dict)  # model -> type -> per 1M
    metric_prices: dict[str, Decimal] = field(default_factory=dict)  # custom metric -> unit price
    request_fee: Decimal = Decimal(0)
    tiers: Tiers | None = None
    threshold: Decimal | None = None  # interval "threshold": the period closes at this amount
    self_report: bool = False  # customers' own keys may record custom usage (priced by the plan only)
    credits: CreditsConfig | None = None  # prepaid credits: drawn by usage, before or instead of invoicing


@dataclass(frozen=True, slots=True)
class CapConfig:
    amount: Decimal
    action: str = "block"
    mode: str = "hard"
    clamp: bool = False  # lower max_tokens to what the budget can pay for instead of refusing
    throttle_rpm: int = 6  # action "throttle": requests per minute served once the cap is reached


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    rpm: int | None = None
    tpm: int | None = None


@dataclass(frozen=True, slots=True)
class KeyPolicy:
    """What one key of a customer may do beyond its customer's own limits (runtime keys)."""

    name: str = ""
    expires_at: datetime | None = None  # refused from then on (a rotation's grace ends here)
    rate_limit: RateLimitConfig | None = None  # the key's own RPM/TPM (else the customer's apply to it)
    models: tuple[str, ...] | None = None  # narrower than the customer's, never wider


@dataclass(frozen=True, slots=True)
class CustomerConfig:
    id: str
    plan: str
    cap: CapConfig | None = None
    rate_limit: RateLimitConfig | None = None
    keys: tuple[str, ...] = ()  # "sha256:<hex>" of each key
    models: tuple[str, ...] | None = None  # None: every configured model
    anchor_day: int = 1  # day of month a monthly period starts on
    key_caps: dict[str, Decimal] = field(default_factory=dict)  # key id -> cap per period
    key_policies: dict[str, KeyPolicy] = field(default_factory=dict)  # key id -> its own limits
    active: bool = True  # a deactivated customer's keys stop working; its events and statements stay
    metadata: dict = field(default_factory=dict)
    source: str = "config"  # "config" (the file) | "api" (made at runtime, kept in the ledger database)
    stripe_customer: str | None = None  # the Stripe customer its statements are invoiced to (`payware settle`)


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    url: str
    secret: Secret | None = None
    thresholds: tuple[int, ...] = (50, 80, 100)  # percent of the cap
    max_attempts: int = 6


@dataclass(frozen=True, slots=True)
class StripeConfig:
    """Where and how `payware settle` invoices statements (metering.billing.settle)."""

    api_key: Secret | None = None  # None: $STRIPE_API_KEY
    api_base: str = "https://api.stripe.com"
    collection_method: str = "charge_automatically"  # | "send_invoice"
    days_until_due: int | None = None  # send_invoice only (default 30)
    finalize: bool = False  # finalize each invoice at once (else Stripe's auto-advance finalizes the draft)


@dataclass(frozen=True, slots=True)
class SettlementConfig:
    to: str = "stripe"
    after_close: bool = False  # settle each statement soon after it closes (the proxy's closing job)
    stripe: StripeConfig = field(default_factory=StripeConfig)


@dataclass(frozen=True, slots=True)
class Config:
    source: str  # the file it was read from, for messages
    server: ServerConfig
    storage: StorageConfig
    providers: dict[str, ProviderConfig]
    models: dict[str, ModelConfig]
    plans: dict[str, PlanConfig]
    customers: dict[str, CustomerConfig]
    webhooks: WebhookConfig | None = None
    settlement: SettlementConfig | None = None

    def key_index(self) -> dict[str, tuple[str, str]]:
        """Map the hex SHA-256 of each customer key to (customer id, key id)."""
        index: dict[str, tuple[str, str]] = {}
        for customer in self.customers.values():
            for entry in customer.keys:
                digest = entry.removeprefix("sha256:")
                index[digest] = (customer.id, key_id(digest))
        return index


def key_id(digest: str) -> str:
    """A key's public id: a short prefix of its hash, safe to log and show."""
    return "key_" + digest[:12]
