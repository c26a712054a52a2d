"""Admission on in-process stores runs in one step (`Gate.inline`): the same answers, refusals
and store state as the awaited path every store takes, over random calls of every cap action."""

from __future__ import annotations

import random
from dataclasses import fields, replace
from decimal import Decimal
from pathlib import Path

from config.loader import parse_config
from config.schema import CapConfig, RateLimitConfig
from metering.limits.budget import MemoryBudget
from metering.limits.ratelimit import MemoryRateLimiter
from metering.store.events import utcnow
from metering.usage.tokens import encoding_for
from proxy.errors import ApiError
from proxy.formats.openai_chat import CHAT
from proxy.limits.admission import Admitted, Gate
from tests.conftest import KEYS, key_hash, proxy_config

PERIOD = "2026-12-01T00:00:00+00:00"


def _customers(tmp_path: Path) -> tuple[list, object, object]:
    line = f'  acme: {{plan: payg, keys: ["{key_hash(KEYS["acme"])}"]}}\n'
    config = parse_config(proxy_config("http://127.0.0.1:9/v1", tmp_path, customers=line), env={})
    base = config.customers["acme"]
    # a call's worst case is ~$0.00001-0.00015 (fake-ok, markup 1.25): a few fit under each cap
    customers = [
        replace(base, id="block", cap=CapConfig(Decimal("0.0004")), rate_limit=RateLimitConfig(rpm=6, tpm=1500)),
        replace(base, id="clamp", cap=CapConfig(Decimal("0.0003"), clamp=True), key_caps={"k1": Decimal("0.0001")}),
        replace(base, id="uncapped", rate_limit=RateLimitConfig(rpm=8, tpm=1500)),
        replace(base, id="notify", cap=CapConfig(Decimal("0.0002"), action="notify")),
        replace(base, id="throttle", cap=CapConfig(Decimal("0.0002"), action="throttle", throttle_rpm=3)),
        replace(base, id="soft", cap=CapConfig(Decimal("0.0001"), mode="soft"), rate_limit=RateLimitConfig(tpm=900)),
    ]
    return customers, config.plans["payg"], config.models["fake-ok"]


def _gate(clock) -> Gate:
    async def no_events(customer, period, since=None):
        return []

    return Gate(budget=MemoryBudget(clock=clock), limiter=MemoryRateLimiter(clock=clock), source=no_events)


def _admitted(admitted: Admitted) -> tuple:
    return tuple(getattr(admitted, f.name) for f in fields(admitted))


async def _outcome(call) -> tuple[tuple, Admitted | None]:
    try:
        admitted = await call
    except ApiError as exc:
        return (type(exc).__name__, str(exc), dict(exc.headers or {})), None
    return ("admitted", _admitted(admitted)), admitted


async def test_inline_admission_answers_and_counts_as_the_awaited_path(tmp_path: Path):
    customers, plan, model = _customers(tmp_path)
    encoding_for(model.upstream)  # NOTE: loaded now, not by a thread mid-run (a bound then, a count after)
    now = [1000.0]
    inline, awaited = _gate(lambda: now[0]), _gate(lambda: now[0])
    awaited.inline = False
    assert inline.inline
    for gate in (inline, awaited):
        gate.customers = {c.id: c for c in customers}
    rnd = random.Random(11)
    in_flight: list[tuple[Admitted, Admitted, object, str]] = []
    kinds: dict[str, int] = {}
    for i in range(3000):
        now[0] += rnd.choice((0.0, 0.01, 0.2, 1.0, 4.0))
        customer = rnd.choice(customers)
        key_id = rnd.choice((None, "k1"))
        body = {"model": "fake-ok", "messages": [{"role": "user", "content": "hi " * rnd.randint(1, 40)}],
                "max_tokens": rnd.randint(1, 160)}
        answers = []
        for gate in (inline, awaited):
            answers.append(await _outcome(gate.admit(
                request_id=f"req_{i}", customer=customer, key_id=key_id, plan=plan, model=model, fmt=CHAT,
                body=body, period=PERIOD, now=utcnow(), size=300)))
        assert answers[0][0] == answers[1][0], (i, customer.id)
        kind = answers[0][0][0]
        kinds[kind] = kinds.get(kind, 0) + 1
        if kind == "admitted":
            in_flight.append((answers[0][1], answers[1][1], customer, f"req_{i}"))
        while in_flight and rnd.random() < 0.6:  # calls end out of order, some without generating
            a, b, of, request_id = in_flight.pop(rnd.randrange(len(in_flight)))
            if rnd.random() < 0.15:
                await inline.release(a)
                await awaited.release(b)
            else:
                amount, tokens = Decimal(rnd.randint(0, 160_000)) / 10**9, rnd.randint(0, 400)
                await inline.settle(a, amount, request_id, of, tokens=tokens)
                await awaited.settle(b, amount, request_id, of, tokens=tokens)
        assert _state(inline) == _state(awaited), i
    # every path was taken: grants, each kind of refusal
    assert kinds.get("admitted", 0) > 500 and kinds.get("SpendCapReached", 0) > 50
    assert kinds.get("RateLimited", 0) > 50


def _state(gate: Gate) -> tuple:
    """What the stores hold: spent, held, each hold, the applied ids; the rate buckets; the holds
    this proxy renews."""
    periods = {key: (p.spent, p.held, {h: (x.units, x.scopes) for h, x in p.holds.items()}, p.applied)
               for key, p in gate.budget.store._periods.items()}
    return periods, gate.shared[1]._buckets, set(gate.budget.live)
