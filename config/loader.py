"""Read, expand and validate the admin config file.

Every problem is collected with its field path (`models.gpt-4o.cost.input: '0,15' is not a
decimal`) and reported together, so an admin fixes a file in one pass. Nothing here
imports `proxy` or `metering`.
"""

from __future__ import annotations

import os
import re
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from importlib import resources
from pathlib import Path
from typing import Any, Callable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from config import pricedb
from config.schema import (
    CAP_ACTIONS,
    CAP_MODES,
    DEFAULT_BASE_URLS,
    MAX_CAP,
    INTERVALS,
    PROVIDER_KINDS,
    TOKEN_TYPES,
    CapConfig,
    CreditsConfig,
    Config,
    CustomerConfig,
    ModelConfig,
    ModelPrice,
    PlanConfig,
    ProviderConfig,
    RateLimitConfig,
    Secret,
    ServerConfig,
    SettlementConfig,
    StripeConfig,
    StorageConfig,
    Tiers,
    TierStep,
    WebhookConfig,
    key_id,
)

# Prices per million with at most 9 places and markups with at most 3 keep every amount
# (tokens x price / 1e6 x markup) exact in 18 decimal places: the ledger's NUMERIC(38, 18).
PRICE_PLACES = pricedb.PRICE_PLACES  # 9
MAX_RATE = 10**9  # per minute: the rate limiters' exact-integer bound
MARKUP_PLACES = 3

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_PLACEHOLDER = re.compile(r"__payware_env_(\d+)__")
_KEY_HASH = re.compile(r"sha256:[0-9a-f]{64}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@-]{0,127}")
_STRIPE_CUSTOMER = re.compile(r"cus_[A-Za-z0-9]{1,250}")


class ConfigError(Exception):
    """The config file is invalid; `problems` holds one "path: what is wrong" per line."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: invalid config\n" + "\n".join(f"  {p}" for p in problems))


def default_config_path() -> Path:
    """The config shipped inside the package (echo model, one demo customer)."""
    return Path(str(resources.files("config").joinpath("default.yaml")))


def load_config(path: str | os.PathLike | None = None, *, env: dict[str, str] | None = None) -> Config:
    """Load and validate a config file; raise ConfigError naming every problem."""
    source = str(path) if path is not None else str(default_config_path())
    try:
        text = Path(source).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(source, [f"cannot read file: {exc.strerror or exc}"]) from None
    try:
        return parse_config(text, source=source, env=os.environ if env is None else env)
    finally:
        pricedb.release()  # the config holds its models' prices; a server keeps no copy of litellm's map


def parse_config(text: str, *, source: str = "<string>", env: dict[str, str] | os._Environ) -> Config:
    """Validate YAML text; `env` supplies `${VAR}` values."""
    # `${VAR}` is not valid inside a YAML flow mapping (`{api_key: ${KEY}}`), so each
    # reference is swapped for a plain placeholder before parsing and expanded after, by path.
    refs: list[re.Match] = []

    def hold(match: re.Match) -> str:
        refs.append(match)
        return f"__payware_env_{len(refs) - 1}__"

    try:
        data = yaml.load(_ENV_REF.sub(hold, text), Loader=_DecimalLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(source, [f"{where}not valid YAML: {getattr(exc, 'problem', exc)}"]) from None
    reader = _Reader(env, refs)
    config = reader.config(data, source)
    if reader.problems:
        raise ConfigError(source, reader.problems)
    return config


class _DecimalLoader(yaml.SafeLoader):
    """YAML floats become exact Decimals built from their source text (0.15 stays 0.15)."""


_DecimalLoader.add_constructor(
    "tag:yaml.org,2002:float",
    lambda loader, node: Decimal(loader.construct_scalar(node).replace("_", "")),
)

_MISSING = object()
_COST_FIELDS = ("input", "cached_input", "cache_write", "cache_write_1h", "output")


class _Reader:
    """Walks the parsed YAML, converting values and collecting problems by path."""

    def __init__(self, env, refs: list[re.Match]):
        self.env = env
        self.refs = refs
        self.problems: list[str] = []

    def fail(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    # -- scalars -----------------------------------------------------------------

    def expand(self, value: Any, path: str) -> Any:
        if not isinstance(value, str) or "__payware_env_" not in value:
            return value

        def substitute(placeholder: re.Match) -> str:
            match = self.refs[int(placeholder.group(1))]
            name, default = match.group(1), match.group(2)
            if name in self.env:
                return self.env[name]
            if default is not None:
                return default
            self.fail(path, f"environment variable {name} is not set (write ${{{name}:-default}} to allow that)")
            return ""

        return _PLACEHOLDER.sub(substitute, value)

    def mapping(self, value: Any, path: str, allowed: tuple[str, ...] | None = None) -> dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(path, f"must be a mapping, got {_kind(value)}")
            return {}
        for key in value:
            if not isinstance(key, str):
                self.fail(path, f"key {key!r} must be a string")
            elif allowed is not None and key not in allowed:
                self.fail(f"{path}.{key}", f"unknown field (expected one of: {', '.join(allowed)})")
        return {k: v for k, v in value.items() if isinstance(k, str)}

    def string(self, data: dict, key: str, path: str, default: Any = _MISSING) -> Any:
        value = self.expand(data.get(key, _MISSING), f"{path}.{key}")
        if value is _MISSING or value is None:
            if default is _MISSING:
                self.fail(f"{path}.{key}", "is required")
                return ""
            return default
        if not isinstance(value, str):
            self.fail(f"{path}.{key}", f"must be a string, got {_kind(value)}")
            return "" if default is _MISSING else default
        return value

    def choice(self, data: dict, key: str, path: str, options: tuple[str, ...], default: str) -> str:
        value = self.string(data, key, path, default)
        if value not in options:
            self.fail(f"{path}.{key}", f"{value!r} is not one of: {', '.join(options)}")
            return default
        return value

    def integer(self, data: dict, key: str, path: str, default: Any = _MISSING, minimum: int = 0) -> Any:
        value = self.expand(data.get(key, _MISSING), f"{path}.{key}")
        if value is _MISSING or value is None:
            if default is _MISSING:
                self.fail(f"{path}.{key}", "is required")
            return None if default is _MISSING else default
        if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(f"{path}.{key}", f"{value!r} is not an integer")
            return None if default is _MISSING else default
        if value < minimum:
            self.fail(f"{path}.{key}", f"{value} must be at least {minimum}")
            return None if default is _MISSING else default
        return value

    def decimal(self, data: dict, key: str, path: str, default: Any = _MISSING) -> Any:
        value = self.expand(data.get(key, _MISSING), f"{path}.{key}")
        if value is _MISSING or value is None:
            if default is _MISSING:
                self.fail(f"{path}.{key}", "is required")
            return None if default is _MISSING else default
        return self.to_decimal(value, f"{path}.{key}")

    def precise(self, value: Decimal | None, path: str, places: int) -> Decimal | None:
        """Bound the decimal places, so every amount stays exact in 18 places (ledger, counters)."""
        if value is not None and value.as_tuple().exponent < -places:
            self.fail(path, f"{value} has more than {places} decimal places")
            return None
        return value

    def cap_amount(self, value: Decimal | None, path: str) -> Decimal | None:
        """A spend cap: at most MAX_CAP (the counters' exact range), at most 9 decimal places."""
        if value is not None and value > MAX_CAP:
            self.fail(path, f"{value} is above the largest cap the counters hold exactly, {MAX_CAP}")
            return None
        return self.precise(value, path, PRICE_PLACES)

    def to_decimal(self, value: Any, path: str) -> Decimal | None:
        if isinstance(value, bool):
            self.fail(path, f"{value!r} is not a decimal")
            return None
        try:
            number = Decimal(value) if isinstance(value, (int, str, Decimal)) else None
        except InvalidOperation:
            number = None
        if number is None or not number.is_finite():
            self.fail(path, f"{value!r} is not a decimal")
            return None
        if number < 0:
            self.fail(path, f"{value} must not be negative")
            return None
        return number

    def positive(self, data: dict, key: str, path: str, default: float) -> float:
        """A number of seconds above zero."""
        value = self.number(data, key, path, default)
        if value <= 0:
            self.fail(f"{path}.{key}", f"{value} must be above 0")
            return default
        return value

    def number(self, data: dict, key: str, path: str, default: float) -> float:
        value = self.decimal(data, key, path, Decimal(str(default)))
        return float(value) if value is not None else default

    def timestamp(self, data: dict, key: str, path: str) -> datetime | None:
        value = self.expand(data.get(key), f"{path}.{key}")
        if value is None:
            return None
        if isinstance(value, datetime):
            parsed = value
        else:
            try:
                parsed = datetime.fromisoformat(str(value))
            except ValueError:
                self.fail(f"{path}.{key}", f"{value!r} is not an ISO-8601 date or time")
                return None
        if not isinstance(parsed, datetime):  # a YAML date
            parsed = datetime(parsed.year, parsed.month, parsed.day)
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)

    # -- sections ----------------------------------------------------------------

    def config(self, data: Any, source: str) -> Config:
        root = self.mapping(
            data, "(top level)",
            ("server", "storage", "providers", "models", "plans", "customers", "webhooks", "settlement"),
        )
        server = self.server(self.mapping(root.get("server"), "server"), "server")
        storage = self.storage(self.mapping(root.get("storage"), "storage"), "storage")
        providers = self.named(root, "providers", self.provider)
        if not providers:
            self.fail("providers", "at least one provider is required")
        models = self.named(root, "models", lambda d, p, n: self.model(d, p, n, providers))
        plans = self.named(root, "plans", self.plan)
        customers = self.named(root, "customers", lambda d, p, n: self.customer(d, p, n, plans, models))
        self.check_unique_keys(customers)
        webhooks = None
        if root.get("webhooks") is not None:
            hooks = self.mapping(root["webhooks"], "webhooks", ("url", "secret", "thresholds", "max_attempts"))
            secret = self.string(hooks, "secret", "webhooks", None)
            thresholds = hooks.get("thresholds", [50, 80, 100])
            if not isinstance(thresholds, list) or not all(
                    isinstance(t, int) and not isinstance(t, bool) and 0 < t <= 1000 for t in thresholds):
                self.fail("webhooks.thresholds", "must be a list of percentages (integers from 1 to 1000)")
                thresholds = [50, 80, 100]
            webhooks = WebhookConfig(url=self.string(hooks, "url", "webhooks"), secret=Secret(secret) if secret else None,
                                     thresholds=tuple(sorted(set(thresholds))),
                                     max_attempts=self.integer(hooks, "max_attempts", "webhooks", 6, minimum=1))
        settlement = None
        if root.get("settlement") is not None:
            settlement = self.settlement(self.mapping(root["settlement"], "settlement"), "settlement")
        return Config(source=source, server=server, storage=storage, providers=providers, models=models,
                      plans=plans, customers=customers, webhooks=webhooks, settlement=settlement)

    def settlement(self, data: dict, path: str) -> SettlementConfig:
        """`settlement: {to: stripe, after_close, stripe: {api_key, api_base, collection_method,
        days_until_due, finalize}}` (metering.billing.settle)."""
        self.mapping(data, path, ("to", "after_close", "stripe"))
        after_close = data.get("after_close", False)
        if not isinstance(after_close, bool):
            self.fail(f"{path}.after_close", "must be true or false")
            after_close = False
        at = f"{path}.stripe"
        raw = self.mapping(data.get("stripe"), at, ("api_key", "api_base", "collection_method", "days_until_due",
                                                     "finalize"))
        api_key = self.string(raw, "api_key", at, None)
        if "api_key" in raw and not api_key:
            self.fail(f"{at}.api_key", "is empty (leave it out to use $STRIPE_API_KEY)")
        api_base = self.string(raw, "api_base", at, "https://api.stripe.com")
        if not api_base.startswith(("http://", "https://")):
            self.fail(f"{at}.api_base", f"{api_base!r} must start with http:// or https://")
        method = self.choice(raw, "collection_method", at, ("charge_automatically", "send_invoice"),
                             "charge_automatically")
        due = self.integer(raw, "days_until_due", at, None, minimum=1)
        if due is not None and method != "send_invoice":
            self.fail(f"{at}.days_until_due", "applies only with collection_method: send_invoice")
        finalize = raw.get("finalize", False)
        if not isinstance(finalize, bool):
            self.fail(f"{at}.finalize", "must be true or false")
            finalize = False
        stripe = StripeConfig(api_key=Secret(api_key) if api_key else None, api_base=api_base.rstrip("/"),
                              collection_method=method, days_until_due=due, finalize=finalize)
        return SettlementConfig(to=self.choice(data, "to", path, ("stripe",), "stripe"),
                                after_close=after_close, stripe=stripe)

    def named(self, root: dict, section: str, build: Callable[[dict, str, str], Any]) -> dict:
        entries = self.mapping(root.get(section), section)
        built = {}
        for name, body in entries.items():
            path = f"{section}.{name}"
            if not _NAME.fullmatch(name):
                self.fail(path, "names may hold letters, digits and . _ : / @ - only")
                continue
            item = build(self.mapping(body, path), path, name)
            if item is not None:
                built[name] = item
        return built

    def server(self, data: dict, path: str) -> ServerConfig:
        self.mapping(data, path, ("host", "port", "admin_key", "max_body_bytes", "connect_timeout", "read_timeout",
                                  "statement_grace", "body_timeout", "idle_timeout", "metrics_listen"))
        admin_key = self.string(data, "admin_key", path, None)
        if admin_key is not None and admin_key and len(admin_key) < 16:
            self.fail(f"{path}.admin_key", "must be at least 16 characters")
        port = self.integer(data, "port", path, 8080)
        if port > 65535:
            self.fail(f"{path}.port", f"{port} is not a TCP port")
        host = self.string(data, "host", path, "127.0.0.1")
        return ServerConfig(
            host=host,
            port=port,
            admin_key=Secret(admin_key) if admin_key else None,
            max_body_bytes=self.integer(data, "max_body_bytes", path, 8 * 1024 * 1024, minimum=1024),
            connect_timeout=self.number(data, "connect_timeout", path, 10.0),
            read_timeout=self.number(data, "read_timeout", path, 600.0),
            statement_grace=self.number(data, "statement_grace", path, 900.0),
            body_timeout=self.positive(data, "body_timeout", path, 30.0),
            idle_timeout=self.positive(data, "idle_timeout", path, 75.0),
            metrics_listen=self.listen(data, "metrics_listen", path, host, port),
        )

    def listen(self, data: dict, key: str, path: str, host: str, port: int) -> tuple[str, int] | None:
        """`HOST:PORT` (`[ADDR]:PORT` for IPv6) of a listener of its own, or None when not set."""
        value = self.string(data, key, path, None)
        if value is None:
            return None
        match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^\s:\[\]]+):(\d{1,5})", value)
        if match is None:
            self.fail(f"{path}.{key}", f"{value!r} must be HOST:PORT, e.g. 127.0.0.1:9464")
            return None
        own_host, own_port = match.group(1) or match.group(3), int(match.group(2) or match.group(4))
        if not 0 < own_port <= 65535:
            self.fail(f"{path}.{key}", f"{own_port} is not a TCP port")
            return None
        anywhere = ("0.0.0.0", "::")
        if own_port == port and (own_host == host or own_host in anywhere or host in anywhere):
            self.fail(f"{path}.{key}", f"{value} is the proxy's own address (server.host and server.port): "
                                       "give /metrics a port of its own")
            return None
        return own_host, own_port

    def storage(self, data: dict, path: str) -> StorageConfig:
        self.mapping(data, path, ("ledger", "counters", "journal", "flush_interval", "flush_batch",
                                  "on_counter_failure", "hold_ttl"))
        ledger = self.string(data, "ledger", path, "sqlite:///payware.db")
        if not ledger.startswith(("sqlite:///", "postgresql://", "postgresql+psycopg://")):
            self.fail(f"{path}.ledger", f"{ledger!r} must be sqlite:///FILE or postgresql://…")
        counters = self.string(data, "counters", path, "memory")
        if counters != "memory" and not counters.startswith(("redis://", "rediss://", "unix://")):
            self.fail(f"{path}.counters", f"{counters!r} must be 'memory' or a redis:// URL")
        return StorageConfig(
            ledger=ledger,
            counters=counters,
            journal=self.string(data, "journal", path, "./payware.journal"),
            flush_interval=self.number(data, "flush_interval", path, 0.2),
            flush_batch=self.integer(data, "flush_batch", path, 500, minimum=1),
            on_counter_failure=self.choice(data, "on_counter_failure", path, ("fail_closed", "fail_open"),
                                           "fail_closed"),
            hold_ttl=self.positive(data, "hold_ttl", path, 60.0),
        )

    def provider(self, data: dict, path: str, name: str) -> ProviderConfig:
        self.mapping(data, path, ("kind", "base_url", "api_key", "admin_key"))
        kind = self.choice(data, "kind", path, PROVIDER_KINDS, "openai")
        if kind == "echo":
            return ProviderConfig(name=name, kind=kind, base_url=None, api_key=None)
        default_url = DEFAULT_BASE_URLS.get(kind)  # litellm: each of its providers' own default
        base_url = self.string(data, "base_url", path, default_url)
        if base_url and not base_url.startswith(("http://", "https://")):
            self.fail(f"{path}.base_url", f"{base_url!r} must start with http:// or https://")
        api_key = self.string(data, "api_key", path, None if kind == "litellm" else _MISSING)
        if "api_key" in data and not api_key:
            self.fail(f"{path}.api_key", "is empty")
        admin_key = self.string(data, "admin_key", path, None)  # for the usage report (`payware reconcile`)
        return ProviderConfig(name=name, kind=kind, base_url=base_url.rstrip("/") if base_url else None,
                              api_key=Secret(api_key) if api_key else None,
                              admin_key=Secret(admin_key) if admin_key else None)

    def model(self, data: dict, path: str, name: str, providers: dict) -> ModelConfig | None:
        self.mapping(data, path, ("provider", "upstream", "mode", "cost", "max_output_tokens"))
        provider = self.string(data, "provider", path)
        if provider and provider not in providers:
            self.fail(f"{path}.provider", f"{provider!r} is not a configured provider")
        upstream = self.string(data, "upstream", path, name)
        known = pricedb.lookup(upstream)
        mode = self.choice(data, "mode", path, ("chat", "completion", "embedding"),
                           (known or {}).get("mode") if (known or {}).get("mode") in ("chat", "completion", "embedding") else "chat")
        prices = self.prices(data.get("cost"), f"{path}.cost", upstream, known)
        max_output = self.integer(data, "max_output_tokens", path, None, minimum=1)
        if max_output is None and known and isinstance(known.get("max_output_tokens"), int):
            max_output = known["max_output_tokens"]
        if not prices:
            return None
        return ModelConfig(name=name, provider=provider, upstream=upstream, mode=mode,
                           prices=tuple(prices), max_output_tokens=max_output)

    def prices(self, value: Any, path: str, upstream: str, known: dict | None) -> list[ModelPrice]:
        if value is None:
            price = pricedb.price_of(known) if known else None
            if price is None:
                self.fail(path, f"no price for {upstream!r} in the config or in litellm's price database "
                                "(a model is never billed at $0 by accident: give `cost`)")
                return []
            return [price]
        entries = value if isinstance(value, list) else [value]
        prices = []
        for i, entry in enumerate(entries):
            where = f"{path}[{i}]" if isinstance(value, list) else path
            item = self.mapping(entry, where, _COST_FIELDS + ("effective_from", "above"))
            classes = self.cost_classes(item, where)
            if classes is None:
                continue
            above, tiers = [], item.get("above")
            if isinstance(tiers, dict):  # `{200000: …}`: YAML reads an unquoted threshold as an int
                tiers = {str(k) if type(k) is int else k: v for k, v in tiers.items()}
            for threshold, body in self.mapping(tiers, f"{where}.above").items():
                at = f"{where}.above.{threshold}"
                if not threshold.isdigit() or int(threshold) < 1:
                    self.fail(at, "the threshold must be a number of input tokens, e.g. 200000")
                    continue
                higher = self.cost_classes(self.mapping(body, at, _COST_FIELDS), at, fallback=classes)
                if higher is not None:
                    above.append((int(threshold), ModelPrice(**higher)))
            prices.append(ModelPrice(**classes, effective_from=self.timestamp(item, "effective_from", where),
                                     above=tuple(sorted(above, key=lambda pair: pair[0]))))
        dated = [p for p in prices if p.effective_from is None]
        if len(dated) > 1:
            self.fail(path, "only one price may lack effective_from")
        prices.sort(key=lambda p: (p.effective_from is not None, p.effective_from or datetime.min))
        return prices

    def cost_classes(self, item: dict, where: str, fallback: dict | None = None) -> dict | None:
        """USD per 1M tokens by class; a class not given takes the input price (cache reads and
        writes) or `fallback`'s (prices above a prompt-size threshold)."""
        def price(key: str, default):
            return self.precise(self.decimal(item, key, where, default), f"{where}.{key}", PRICE_PLACES)

        input_price = price("input", fallback["input"] if fallback else _MISSING)
        output_price = price("output", fallback["output"] if fallback else Decimal(0))
        if input_price is None or output_price is None:
            return None
        cached = price("cached_input", fallback["cached_input"] if fallback else input_price)
        write = price("cache_write", fallback["cache_write"] if fallback else input_price)
        write_1h = price("cache_write_1h", fallback["cache_write_1h"] if fallback else write)
        if cached is None or write is None or write_1h is None:
            return None
        return {"input": input_price, "cached_input": cached, "output": output_price, "cache_write": write,
                "cache_write_1h": write_1h}

    def plan(self, data: dict, path: str, name: str) -> PlanConfig | None:
        self.mapping(data, path, ("interval", "currency", "base_fee", "included", "price", "tiers", "threshold",
                                  "timezone", "self_report", "credits"))
        self_report = data.get("self_report", False)
        if not isinstance(self_report, bool):
            self.fail(f"{path}.self_report", "must be true or false")
            self_report = False
        interval = self.choice(data, "interval", path, INTERVALS, "monthly")
        zone = self.string(data, "timezone", path, "UTC")
        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            self.fail(f"{path}.timezone", f"{zone!r} is not an IANA time zone (e.g. UTC, Europe/Paris)")
            zone = "UTC"
        price = self.mapping(data.get("price"), f"{path}.price",
                             ("markup", "per_million", "models", "metrics", "per_request"))
        markup = self.precise(self.decimal(price, "markup", f"{path}.price", None), f"{path}.price.markup",
                              MARKUP_PLACES)
        per_million = self.token_prices(price.get("per_million"), f"{path}.price.per_million")
        model_prices = {
            model: self.token_prices(body, f"{path}.price.models.{model}")
            for model, body in self.mapping(price.get("models"), f"{path}.price.models").items()
        }
        metric_prices = {
            metric: self.precise(self.to_decimal(self.expand(v, f"{path}.price.metrics.{metric}"),
                                                 f"{path}.price.metrics.{metric}"),
                                 f"{path}.price.metrics.{metric}", PRICE_PLACES)
            for metric, v in self.mapping(price.get("metrics"), f"{path}.price.metrics").items()
        }
        included = {}
        for metric, amount in self.mapping(data.get("included"), f"{path}.included").items():
            included[metric] = self.integer({metric: amount}, metric, f"{path}.included")
        tiers = self.tiers(data.get("tiers"), f"{path}.tiers")
        if markup is None and not per_million and not model_prices and tiers is None:
            self.fail(f"{path}.price", "give price.markup, price.per_million, price.models or tiers")
        threshold = self.decimal(data, "threshold", path, None)
        if interval == "threshold" and not threshold:
            self.fail(f"{path}.threshold", "is required (and above 0) when interval is 'threshold'")
        return PlanConfig(
            name=name, interval=interval, currency=self.string(data, "currency", path, "USD"), timezone=zone,
            base_fee=self.precise(self.decimal(data, "base_fee", path, Decimal(0)), f"{path}.base_fee",
                                  PRICE_PLACES) or Decimal(0),
            included={k: v for k, v in included.items() if v is not None},
            markup=markup, per_million=per_million, model_prices=model_prices,
            metric_prices={k: v for k, v in metric_prices.items() if v is not None},
            request_fee=self.precise(self.decimal(price, "per_request", f"{path}.price", Decimal(0)),
                                     f"{path}.price.per_request", PRICE_PLACES) or Decimal(0),
            tiers=tiers, threshold=threshold, self_report=self_report,
            credits=self.credits(data.get("credits"), f"{path}.credits"),
        )

    def credits(self, value: Any, path: str) -> CreditsConfig | None:
        if value is None:
            return None
        data = self.mapping(value, path, ("mode", "top_up"))
        mode = self.choice(data, "mode", path, ("credit_only", "credit_then_invoice"), "credit_then_invoice")
        below = to = None
        if data.get("top_up") is not None:
            top_up = self.mapping(data["top_up"], f"{path}.top_up", ("below", "to"))
            below = self.cap_amount(self.decimal(top_up, "below", f"{path}.top_up"), f"{path}.top_up.below")
            to = self.cap_amount(self.decimal(top_up, "to", f"{path}.top_up"), f"{path}.top_up.to")
            if below is not None and to is not None and to <= below:
                self.fail(f"{path}.top_up.to", f"{to} must be above top_up.below ({below})")
        return CreditsConfig(mode=mode, top_up_below=below, top_up_to=to)

    def token_prices(self, value: Any, path: str) -> dict[str, Decimal]:
        prices = {}
        for kind, amount in self.mapping(value, path, TOKEN_TYPES).items():
            number = self.to_decimal(self.expand(amount, f"{path}.{kind}"), f"{path}.{kind}")
            number = self.precise(number, f"{path}.{kind}", PRICE_PLACES)
            if number is not None:
                prices[kind] = number
        return prices

    def tiers(self, value: Any, path: str) -> Tiers | None:
        if value is None:
            return None
        data = self.mapping(value, path, ("metric", "mode", "steps"))
        raw_steps = data.get("steps")
        if not isinstance(raw_steps, list) or not raw_steps:
            self.fail(f"{path}.steps", "must be a non-empty list")
            return None
        steps, previous = [], 0
        for i, raw in enumerate(raw_steps):
            where = f"{path}.steps[{i}]"
            step = self.mapping(raw, where, ("up_to", "per_million", "flat_fee"))
            up_to = self.integer(step, "up_to", where, None, minimum=1)
            last = i == len(raw_steps) - 1
            if up_to is None and not last:
                self.fail(f"{where}.up_to", "only the last step may be unbounded")
            if up_to is not None and up_to <= previous:
                self.fail(f"{where}.up_to", f"{up_to} must be above the previous step's {previous}")
            if last and up_to is not None:
                self.fail(f"{where}.up_to", "the last step must be unbounded (up_to: null)")
            per_million = self.precise(self.decimal(step, "per_million", where), f"{where}.per_million", PRICE_PLACES)
            flat_fee = self.precise(self.decimal(step, "flat_fee", where, Decimal(0)), f"{where}.flat_fee", PRICE_PLACES)
            steps.append(TierStep(up_to=up_to, per_million=per_million or Decimal(0), flat_fee=flat_fee or Decimal(0)))
            previous = up_to or previous
        return Tiers(metric=self.string(data, "metric", path, "tokens"),
                     mode=self.choice(data, "mode", path, ("graduated", "volume"), "graduated"),
                     steps=tuple(steps))

    def customer(self, data: dict, path: str, name: str, plans: dict, models: dict) -> CustomerConfig:
        self.mapping(data, path, ("plan", "cap", "rate_limit", "keys", "models", "anchor_day", "key_caps",
                                  "stripe_customer"))
        plan = self.string(data, "plan", path)
        # NOTE: "" too (it named no plan, and every read of the customer failed later); a missing or
        # non-string plan has failed above already
        if plan not in plans and (plan or isinstance(data.get("plan"), str)):
            self.fail(f"{path}.plan", f"{plan!r} is not a configured plan")
        cap = None
        if data.get("cap") is not None:
            raw = self.mapping(data["cap"], f"{path}.cap", ("amount", "action", "mode", "clamp", "throttle_rpm"))
            amount = self.cap_amount(self.decimal(raw, "amount", f"{path}.cap"), f"{path}.cap.amount")
            clamp = raw.get("clamp", False)
            if not isinstance(clamp, bool):
                self.fail(f"{path}.cap.clamp", "must be true or false")
                clamp = False
            cap = CapConfig(amount=amount or Decimal(0),
                            action=self.choice(raw, "action", f"{path}.cap", CAP_ACTIONS, "block"),
                            mode=self.choice(raw, "mode", f"{path}.cap", CAP_MODES, "hard"),
                            clamp=clamp,
                            throttle_rpm=min(self.integer(raw, "throttle_rpm", f"{path}.cap", 6, minimum=1), MAX_RATE))
        rate = self.rate_limit(data.get("rate_limit"), f"{path}.rate_limit")
        keys = []
        raw_keys = data.get("keys", [])
        if not isinstance(raw_keys, list):
            self.fail(f"{path}.keys", "must be a list of sha256:<hex> key hashes")
            raw_keys = []
        for i, key in enumerate(raw_keys):
            key = self.expand(key, f"{path}.keys[{i}]")
            if not isinstance(key, str) or not _KEY_HASH.fullmatch(key):
                self.fail(f"{path}.keys[{i}]", "must be 'sha256:' and 64 lowercase hex digits "
                                               "(the hash of the key; `payware keys create` prints it)")
            else:
                keys.append(key)
        allowed = self.model_list(data.get("models"), f"{path}.models", models)
        anchor = self.integer(data, "anchor_day", path, 1, minimum=1)
        if anchor > 31:
            self.fail(f"{path}.anchor_day", f"{anchor} is not a day of the month")
        key_caps = {}
        known_ids = {key_id(k.removeprefix("sha256:")) for k in keys}
        for kid, amount in self.mapping(data.get("key_caps"), f"{path}.key_caps").items():
            if kid not in known_ids:
                self.fail(f"{path}.key_caps.{kid}", "is not the id of one of this customer's keys "
                                                   "(`payware keys list` shows them)")
            value = self.to_decimal(self.expand(amount, f"{path}.key_caps.{kid}"), f"{path}.key_caps.{kid}")
            value = self.cap_amount(value, f"{path}.key_caps.{kid}")
            if value is not None:
                key_caps[kid] = value
        stripe_customer = self.string(data, "stripe_customer", path, None)
        if stripe_customer is not None and not _STRIPE_CUSTOMER.fullmatch(stripe_customer):
            self.fail(f"{path}.stripe_customer", f"{stripe_customer!r} is not a Stripe customer id (cus_…)")
            stripe_customer = None
        return CustomerConfig(id=name, plan=plan, cap=cap, rate_limit=rate, keys=tuple(keys),
                              models=allowed, anchor_day=anchor, key_caps=key_caps, stripe_customer=stripe_customer)

    def rate_limit(self, value: Any, path: str) -> RateLimitConfig | None:
        if value is None:
            return None
        raw = self.mapping(value, path, ("rpm", "tpm"))
        rpm = self.integer(raw, "rpm", path, None, minimum=1)
        tpm = self.integer(raw, "tpm", path, None, minimum=1)
        for field_name, number in (("rpm", rpm), ("tpm", tpm)):
            if number is not None and number > MAX_RATE:
                self.fail(f"{path}.{field_name}", f"{number} is above the largest supported rate, {MAX_RATE}")
        return RateLimitConfig(rpm=rpm if rpm is None or rpm <= MAX_RATE else None,
                               tpm=tpm if tpm is None or tpm <= MAX_RATE else None)

    def model_list(self, value: Any, path: str, models: dict) -> tuple[str, ...] | None:
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(m, str) for m in value):
            self.fail(path, "must be a list of model names")
            return None
        for name in value:
            if name not in models:
                self.fail(path, f"{name!r} is not a configured model")
        return tuple(value)

    def check_unique_keys(self, customers: dict[str, CustomerConfig]) -> None:
        owner: dict[str, str] = {}
        for customer in customers.values():
            for key in customer.keys:
                if key in owner and owner[key] != customer.id:
                    self.fail(f"customers.{customer.id}.keys", f"a key is also listed under {owner[key]!r}")
                owner[key] = customer.id


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
            type(None): "nothing"}.get(type(value), type(value).__name__)


def read_customer(name: str, data: Any, config: Config, *, path: str = "customer") -> CustomerConfig:
    """Validate a customer given at runtime (admin API, CLI) exactly as the config file's
    `customers.<name>` is validated; ConfigError names every problem with its field path."""
    reader = _Reader({}, [])
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        reader.fail(f"{path}.id", "must be 1 to 128 letters, digits and . _ : / @ - (starting with a letter or digit)")
    customer = reader.customer(reader.mapping(data, path), path, name, config.plans, config.models)
    if reader.problems:
        raise ConfigError("request", reader.problems)
    return customer


def read_key_settings(data: Any, config: Config, *, path: str = "key") -> dict:
    """Validate a key's own limits given at runtime (`cap`, `rate_limit`, `models`): the typed
    values, under the same rules as the config file's; ConfigError names every problem."""
    reader = _Reader({}, [])
    raw = reader.mapping(data, path, ("cap", "rate_limit", "models"))
    cap = None
    if raw.get("cap") is not None:
        cap = reader.cap_amount(reader.to_decimal(raw["cap"], f"{path}.cap"), f"{path}.cap")
    settings = {"cap": cap, "rate_limit": reader.rate_limit(raw.get("rate_limit"), f"{path}.rate_limit"),
                "models": reader.model_list(raw.get("models"), f"{path}.models", config.models)}
    if reader.problems:
        raise ConfigError("request", reader.problems)
    return settings
