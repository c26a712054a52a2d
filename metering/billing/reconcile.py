"""Reconciliation: what the provider says it served, against what Payware recorded (pure).

For one provider and a range of UTC days, both sides are summed per (day, model) in disjoint
token parts (`metering.billing.token_parts`), and split part by part:

- **matched**: what both counted (the smaller of the two counts of each part);
- **provider_only**: what the provider counted beyond Payware: usage the proxy never billed
  (calls that timed out or were cut while the provider went on, background work, other users
  of the same provider key);
- **payware_only**: what Payware billed beyond the provider's count.

Payware's side is its *provider-reported* events (`estimated` false) of that provider, model
calls only (`metric` "tokens"; embeddings for OpenAI, whose completions report does not count
them). Events whose counts Payware estimated (a stream cut before the provider's usage, a
provider that reported none) are **not** compared: they are Payware's guesses, reported apart
in each row (`estimated`), beside the provider's count that covers them.

A day is the UTC date of the event's end (the provider buckets by UTC day too; a call that
spans midnight may land on either side). Models are matched by name, a dated snapshot
(`gpt-4o-mini-2024-07-18`, `claude-sonnet-4-20250514`) or an alias (`-latest`, `-0`)
counting as the Payware model it resolves to when exactly one matches.

Costs are exact Decimal USD at the model's **provider** price in force that day (the config's
`cost`, else litellm's price database; per-call prompt-size thresholds cannot apply to daily
sums, so the base price is used). A model with no price has `cost: null` and is named in
`notes`. JSON carries money as strings.
"""

from __future__ import annotations

import csv
import io
import re
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, time, timezone
from decimal import Decimal

from config.schema import Config, ModelPrice
from metering.billing.token_parts import CLASSES, Tokens
from metering.billing.usage_reports import ProviderUsage
from metering.store.events import UsageEvent, money_str, utcnow

BLOCKS = ("provider", "payware", "matched", "provider_only", "payware_only", "estimated")
# Endpoints a provider's report does not count, by provider kind (they have reports of their own).
NOT_IN_REPORT = {"openai": {"embeddings"}, "anthropic": set()}
COUNTS_REQUESTS = {"openai"}  # reports that count requests (num_model_requests); Anthropic's does not
_SUFFIX = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{8}|latest|0)$")

PriceOf = Callable[[str, date], tuple[ModelPrice | None, str | None]]  # (model, day) -> (price, source)


@dataclass
class _Cell:
    tokens: Tokens = field(default_factory=Tokens)
    requests: int | None = 0
    names: set[str] = field(default_factory=set)
    extra: dict[str, int] = field(default_factory=dict)

    def add(self, tokens: Tokens, requests: int | None, name: str, extra: dict | None = None) -> None:
        self.tokens += tokens
        self.requests = None if requests is None or self.requests is None else self.requests + requests
        self.names.add(name)
        for key, value in (extra or {}).items():
            self.extra[key] = self.extra.get(key, 0) + value


def canonical(model: str) -> str:
    """A model name without its snapshot date or alias suffix."""
    return _SUFFIX.sub("", model)


def resolve_models(provider_names: Iterable[str], payware_names: Iterable[str]) -> dict[str, str]:
    """Each provider model name -> the Payware upstream name it is (itself when none or many match)."""
    payware = set(payware_names)
    by_canonical: dict[str, set[str]] = {}
    for name in payware:
        by_canonical.setdefault(canonical(name), set()).add(name)
    resolved = {}
    for name in provider_names:
        candidates = by_canonical.get(canonical(name), set())
        resolved[name] = name if name in payware or len(candidates) != 1 else next(iter(candidates))
    return resolved


def config_prices(config: Config, provider: str) -> PriceOf:
    """The provider's price of a model on a day: the config's model of that provider whose
    upstream name it is (or resolves to), else litellm's price database."""
    from config import pricedb

    models = [m for m in config.models.values() if m.provider == provider]

    def price_of(name: str, day: date) -> tuple[ModelPrice | None, str | None]:
        at = datetime.combine(day, time(), timezone.utc)
        for match in (lambda m: m.upstream == name, lambda m: canonical(m.upstream) == canonical(name)):
            found = [m for m in models if match(m)]
            if found:
                price = found[0].price_at(at)
                return price, price.source
        entry = pricedb.lookup(name)
        price = pricedb.price_of(entry) if entry else None
        return (price, "litellm") if price is not None else (None, None)

    return price_of


def reconcile(*, provider: str, kind: str, start: date, end: date, report: list[ProviderUsage],
              events: Iterable[UsageEvent], price_of: PriceOf, source: str,
              api_key_ids: tuple[str, ...] = (), now: datetime | None = None) -> dict:
    """The reconciliation of `provider` for days `start`..`end` (inclusive), as JSON-ready data.

    `report`: the provider's rows; `events`: the ledger's events of the range (others are
    skipped here: other providers, custom metrics, endpoints the report does not count).
    """
    if end < start:
        raise ValueError(f"the range ends ({end}) before it starts ({start})")
    if api_key_ids:
        unkeyed = [row for row in report if row.api_key_id is None]
        if unkeyed:
            raise ValueError("the report is not grouped by api_key_id, so it cannot be narrowed to "
                             f"{', '.join(api_key_ids)} (export it with group_by api_key_id)")
        report = [row for row in report if row.api_key_id in api_key_ids]
    sides: dict[str, dict[tuple[date, str], _Cell]] = {"provider": {}, "payware": {}, "estimated": {}}
    skip = NOT_IN_REPORT.get(kind, set())
    for event in events:
        day = event.ts.astimezone(timezone.utc).date()
        if (event.provider != provider or event.metric != "tokens" or event.endpoint in skip
                or not start <= day <= end):
            continue
        name = event.upstream_model or event.model or "(unknown)"
        side = sides["estimated" if event.estimated else "payware"]
        side.setdefault((day, name), _Cell()).add(Tokens.of_event(event), 1, name)
    payware_names = {name for side in ("payware", "estimated") for _, name in sides[side]}
    resolved = resolve_models({row.model for row in report}, payware_names)
    for row in report:
        if start <= row.day <= end:
            key = (row.day, resolved[row.model])
            sides["provider"].setdefault(key, _Cell()).add(row.tokens, row.requests, row.model, row.extra)
    rows, unpriced = [], set()
    totals = {block: [Tokens(), Decimal(0)] for block in BLOCKS}
    for key in sorted(set().union(*(side.keys() for side in sides.values()))):
        day, model = key
        theirs, ours, guessed = (sides[s].get(key, _Cell()) for s in ("provider", "payware", "estimated"))
        price, price_source = price_of(model, day)
        if price is None:
            unpriced.add(model)
        parts = {"provider": theirs.tokens, "payware": ours.tokens, "matched": theirs.tokens.common(ours.tokens),
                 "provider_only": theirs.tokens.excess(ours.tokens), "payware_only": ours.tokens.excess(theirs.tokens),
                 "estimated": guessed.tokens}
        blocks = {}
        for block, tokens in parts.items():
            cost = None if price is None else tokens.cost(price)
            totals[block][0] += tokens
            if cost is not None:
                totals[block][1] += cost
            blocks[block] = {"tokens": tokens.classes(), "cost": None if cost is None else money_str(cost)}
        blocks["provider"]["requests"] = theirs.requests if kind in COUNTS_REQUESTS else None
        blocks["payware"]["requests"] = ours.requests
        blocks["estimated"]["requests"] = guessed.requests
        rows.append({"day": day.isoformat(), "model": model, "status": _status(parts),
                     "provider_models": sorted(theirs.names), "price_source": price_source,
                     **blocks, "provider_extra": theirs.extra})
    notes = []
    if unpriced:
        notes.append(f"no provider price for {', '.join(sorted(unpriced))}: cost is null there and left out of the totals")
    differences = any(row["status"] not in ("matched",) for row in rows)
    return {
        "object": "reconciliation",
        "id": "rec_" + secrets.token_hex(12),
        "created_at": (now or utcnow()).isoformat(),
        "provider": provider, "kind": kind, "source": source,
        "from": start.isoformat(), "to": end.isoformat(),
        "api_key_ids": list(api_key_ids) or None,
        "currency": "USD",
        "classes": list(CLASSES),
        "status": "differences" if differences else "matched",
        "rows": rows,
        "totals": {block: {"tokens": tokens.classes(), "cost": money_str(cost)}
                   for block, (tokens, cost) in totals.items()},
        "notes": notes,
    }


def _status(parts: dict[str, Tokens]) -> str:
    """matched | provider_only | payware_only | mismatch (both sides have tokens the other lacks)
    | estimated_only (neither side has provider-reported tokens, only Payware's estimates)."""
    extra_theirs, extra_ours = parts["provider_only"].total, parts["payware_only"].total
    if extra_theirs and extra_ours:
        return "mismatch"
    if extra_theirs:
        return "provider_only"
    if extra_ours:
        return "payware_only"
    if not parts["provider"].total and parts["estimated"].total:
        return "estimated_only"
    return "matched"


# -- output -----------------------------------------------------------------------------------

def to_csv(report: dict) -> str:
    """One line per (day, model): each block's tokens by class and cost."""
    columns = ["day", "model", "status", "provider_requests", "payware_requests", "estimated_requests"]
    columns += [f"{block}_{name}" for block in BLOCKS for name in (*CLASSES, "total", "cost")]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in report["rows"]:
        line = [row["day"], row["model"], row["status"], _blank(row["provider"]["requests"]),
                row["payware"]["requests"], row["estimated"]["requests"]]
        for block in BLOCKS:
            line += [row[block]["tokens"][name] for name in (*CLASSES, "total")] + [_blank(row[block]["cost"])]
        writer.writerow(line)
    return buffer.getvalue()


def to_table(report: dict) -> str:
    """A table for people: one line per (day, model), totals, then the notes."""
    head = ("day", "model", "status", "provider", "payware", "matched", "provider-only", "payware-only",
            "estimated")
    lines = [head]
    for row in report["rows"]:
        lines.append((row["day"], row["model"], row["status"],
                      *(_cell(row[block]) for block in BLOCKS)))
    totals = report["totals"]
    lines.append(("total", "", report["status"], *(_cell(totals[block]) for block in BLOCKS)))
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    text = ["  ".join(str(value).ljust(width) if i < 3 else str(value).rjust(width)
                      for i, (value, width) in enumerate(zip(line, widths))).rstrip() for line in lines]
    text.insert(1, "  ".join("-" * width for width in widths))
    text.insert(-1, text[1])
    title = (f"{report['provider']} ({report['kind']}) {report['from']} to {report['to']}, "
             f"from {report['source']}: tokens (input + output) and cost in USD at the provider's price")
    return "\n".join([title, ""] + text + [f"note: {note}" for note in report["notes"]]) + "\n"


def _cell(block: dict) -> str:
    tokens = block["tokens"]["total"]
    if not tokens:
        return "-"
    cost = block["cost"]
    return f"{tokens:,} (${cost})" if cost is not None else f"{tokens:,} (no price)"


def _blank(value) -> object:
    return "" if value is None else value


__all__ = ["canonical", "config_prices", "reconcile", "resolve_models", "to_csv", "to_table"]
