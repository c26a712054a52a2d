"""Turn what the proxy observed about a call into a priced usage event."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone, tzinfo
from functools import lru_cache
from zoneinfo import ZoneInfo
from decimal import Decimal

from config.schema import Config, CustomerConfig, ModelConfig, PlanConfig
from metering.store.events import EPOCH, UsageEvent, utcnow
from metering.billing.periods import Period, period_of
from metering.billing.plans import rate_tokens
from metering.usage.normalized import Usage


@dataclass(slots=True)
class CallFacts:
    """Everything the proxy knows about one model call when its response ends."""

    request_id: str
    customer: CustomerConfig
    key_id: str | None
    model: ModelConfig
    endpoint: str
    stream: bool
    usage: Usage
    usage_source: dict  # per count: "provider" or "tiktoken"
    status: str = "ok"
    latency_ms: int = 0
    session: str | None = None
    feature: str | None = None
    meta: dict = field(default_factory=dict)
    period: str | None = None  # the period the call was admitted in; default: the period of its end
    plan: PlanConfig | None = None  # the plan in force when the call started (default: the current one)


@lru_cache(maxsize=64)
def _zone(name: str) -> tzinfo:
    return timezone.utc if name == "UTC" else ZoneInfo(name)


class Meter:
    """Prices calls under each customer's plan and places them in the right period."""

    def __init__(self, config: Config):
        self.config = config
        # Threshold plans: where each customer's open period started, if a threshold closed
        # the previous one inside the current month.
        self._threshold_start: dict[str, datetime] = {}

    def reconfigure(self, config: Config) -> None:
        """A new config is in force (a reload, a customer made at runtime); threshold state stays."""
        self.config = config

    def period(self, customer: CustomerConfig, ts: datetime) -> Period:
        plan = self.config.plans[customer.plan]
        month = period_of(ts, plan.interval, anchor_day=customer.anchor_day, tz=_zone(plan.timezone))
        start = self._threshold_start.get(customer.id) if plan.interval == "threshold" else None
        if start is not None and month.start <= start < month.end and start <= ts:
            return Period(start, month.end, "threshold")
        return month

    def threshold_reached(self, customer: CustomerConfig, period: str, usage_amount: Decimal,
                          now: datetime) -> bool:
        """Whether the open threshold period `period` is due to close: its usage amount (base fee
        aside) reached the threshold. The caller then closes it (`adopt`, or across proxies a
        compare-and-set in Redis first).

        NOTE: calls already admitted into the period stay in it, so a period may pass its
        threshold by what was in flight; every event still belongs to exactly one period.
        """
        plan = self.config.plans[customer.plan]
        if plan.interval != "threshold" or plan.threshold is None or usage_amount < plan.threshold:
            return False
        return self.period(customer, now).key == period  # else another event closed it already

    def adopt(self, customer: CustomerConfig, start: datetime) -> None:
        """Make `start` the start of the customer's open threshold period, if it is newer."""
        current = self._threshold_start.get(customer.id)
        if current is None or start > current:
            self._threshold_start[customer.id] = start

    def month_key(self, customer: CustomerConfig, now: datetime) -> str:
        """The calendar period a threshold period lives in (its periods' shared namespace)."""
        plan = self.config.plans[customer.plan]
        return period_of(now, plan.interval, anchor_day=customer.anchor_day, tz=_zone(plan.timezone)).key

    def periods_between(self, customer: CustomerConfig, first: str, last: str) -> list[str]:
        """The keys of every calendar period from the one `first` starts to the one `last` starts,
        `last` excluded: those with no usage too (a base fee is due for each). Not for threshold
        plans, whose periods exist only as their usage makes them."""
        plan = self.config.plans[customer.plan]
        keys, at, end = [], datetime.fromisoformat(first), datetime.fromisoformat(last)
        while at < end:
            period = period_of(at, plan.interval, anchor_day=customer.anchor_day, tz=_zone(plan.timezone))
            keys.append(period.key)
            at = period.end
        return keys

    def bounds(self, customer: CustomerConfig, key: str, next_key: str | None) -> Period:
        """The period whose key is `key`; a threshold period ends where the next one starts."""
        plan = self.config.plans[customer.plan]
        start = datetime.fromisoformat(key)
        calendar = period_of(start, plan.interval, anchor_day=customer.anchor_day, tz=_zone(plan.timezone))
        if plan.interval == "threshold" and next_key is not None:
            following = datetime.fromisoformat(next_key)
            if following < calendar.end:
                return Period(start, following, "threshold")
        return Period(start, calendar.end, plan.interval)

    def restore_thresholds(self, ledger) -> None:
        """Resume each threshold period from the newest period the ledger holds, or after it if
        it had reached its threshold (blocking)."""
        now = utcnow()
        for customer in self.config.customers.values():
            if self.config.plans[customer.plan].interval != "threshold":
                continue
            latest = ledger.latest_period(customer.id, since=self.period(customer, now).start)
            if latest is not None:
                self.adopt(customer, self._closed_at(customer, ledger, latest) or datetime.fromisoformat(latest))

    def _closed_at(self, customer: CustomerConfig, ledger, key: str) -> datetime | None:
        """When the threshold period `key` closed, if it did: its frozen statement's end, else the
        time of the event that reached the threshold (its close is known to the counters only:
        on memory counters a restart lost it, and the next calls joined the closed period)."""
        statement = ledger.statements(customer.id).get(key)
        if statement is not None:
            end = datetime.fromisoformat(statement["period"]["end"])
            return end if end < self.bounds(customer, key, None).end else None
        threshold = self.config.plans[customer.plan].threshold
        if threshold is None:
            return None
        spent = Decimal(0)
        for ts_us, amount in ledger.amounts(customer.id, key):  # in time order, as they were counted
            spent += amount
            if spent >= threshold:
                return EPOCH + timedelta(microseconds=ts_us)
        return None

    def open_periods(self, now: datetime) -> tuple[dict[str, str], datetime]:
        """Each customer's open period key, and the earliest start among them."""
        periods = {c.id: self.period(c, now) for c in self.config.customers.values()}
        since = min((p.start for p in periods.values()), default=now)
        return {cid: p.key for cid, p in periods.items()}, since

    def call_event(self, facts: CallFacts, *, position: int = 0, ts: datetime | None = None) -> UsageEvent:
        """The priced event of a call; `position`: the period's tokens before it (quota, tiers)."""
        ts = ts or utcnow()
        plan = facts.plan or self.config.plans[facts.customer.plan]
        usage = facts.usage
        priced = rate_tokens(plan, facts.model, usage, ts, position)
        return UsageEvent(
            id=facts.request_id,
            ts=ts,
            customer=facts.customer.id,
            key_id=facts.key_id,
            metric="tokens",
            quantity=Decimal(usage.input_tokens + usage.output_tokens),
            period=facts.period or self.period(facts.customer, ts).key,
            model=facts.model.name,
            upstream_model=facts.model.upstream,
            provider=facts.model.provider,
            endpoint=facts.endpoint,
            stream=facts.stream,
            input_tokens=usage.input_tokens,
            cached_input_tokens=usage.cached_input_tokens,
            output_tokens=usage.output_tokens,
            reasoning_tokens=usage.reasoning_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            cache_write_1h_tokens=usage.cache_write_1h_tokens,
            cost=priced.cost,
            amount=priced.amount,
            currency=plan.currency,
            session=facts.session,
            feature=facts.feature,
            meta=facts.meta,
            status=facts.status,
            estimated=usage.source != "provider",
            latency_ms=facts.latency_ms,
            pricing=priced.pricing,
            usage_source=facts.usage_source,
            raw_usage=usage.raw,
        )
