"""A period without usage still closes with a statement when its plan has a base fee."""

from __future__ import annotations

import textwrap
from datetime import datetime, timezone
from decimal import Decimal
from types import SimpleNamespace

from aiohttp import web

from config.loader import parse_config
from metering.billing.meter import Meter
from metering.store.events import UsageEvent
from metering.store.ledger import Ledger
from proxy.appkeys import GATE, LIVE, METER, RECORDER
from proxy.routes.statements import close_periods

CONFIG = """
server: {statement_grace: 0}
providers:
  openai: {kind: openai, base_url: "https://api.openai.com/v1", api_key: "sk-test"}
models:
  gpt-4o-mini: {provider: openai, cost: {input: "0.15", output: "0.60"}}
plans:
  basic: {interval: monthly, base_fee: "20.00", price: {markup: "1.25"}}
  payg: {interval: monthly, price: {markup: "1.25"}}
customers:
  acme: {plan: basic}
  globex: {plan: payg}
"""


def event(customer: str, month: int) -> UsageEvent:
    ts = datetime(2026, month, 15, tzinfo=timezone.utc)
    return UsageEvent(id=f"req_{customer}_{month}", ts=ts, customer=customer, key_id=None, metric="tokens",
                      quantity=Decimal(20), period=datetime(2026, month, 1, tzinfo=timezone.utc).isoformat(),
                      model="gpt-4o-mini", input_tokens=13, output_tokens=7, amount=Decimal("0.01"))


async def flush() -> None:
    return None


async def test_every_closed_period_of_a_plan_with_a_base_fee_has_its_statement(tmp_path):
    config = parse_config(textwrap.dedent(CONFIG), source="test.yaml", env={})
    ledger = Ledger(f"sqlite:///{tmp_path}/ledger.db")
    ledger.append([event("acme", 1), event("acme", 3), event("globex", 1), event("globex", 3)])
    app = web.Application()
    app[LIVE] = SimpleNamespace(config=config)
    app[METER] = Meter(config)
    app[RECORDER] = SimpleNamespace(ledger=ledger, flush=flush)
    app[GATE] = SimpleNamespace(notifier=None, credits=None)
    try:
        await close_periods(app)
        acme, globex = ledger.statements("acme"), ledger.statements("globex")
    finally:
        ledger.close()
    february = datetime(2026, 2, 1, tzinfo=timezone.utc).isoformat()
    assert acme[february]["subtotal"] == "20.00" and acme[february]["event_count"] == 0  # no usage: the fee
    months = sorted(datetime.fromisoformat(key).month for key in acme)
    assert months[:3] == [1, 2, 3] and months == list(range(1, len(months) + 1))  # none skipped
    assert acme[datetime(2026, 3, 1, tzinfo=timezone.utc).isoformat()]["subtotal"] == "20.01"
    assert sorted(datetime.fromisoformat(key).month for key in globex) == [1, 3]  # nothing due without usage
