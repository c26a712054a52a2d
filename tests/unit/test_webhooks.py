"""Outgoing webhooks against a real receiver on 127.0.0.1: signing, retries, dedupe, thresholds."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from decimal import Decimal

import aiohttp
import pytest
from aiohttp import web

from config.schema import Secret, WebhookConfig
from metering.webhooks import DedupeStore, MemoryDedupe, Notifier, sign, verify
from tests.conftest import free_port

SECRET = "whsec-receivers-copy-0123456789"


@dataclass
class Delivery:
    headers: dict[str, str]
    body: bytes
    arrived: float  # time.monotonic() at the receiver
    status: int
    answered: bool = False

    @property
    def event(self) -> dict:
        return json.loads(self.body)


@dataclass
class Receiver:
    """The merchant's endpoint: answers with `statuses` in turn (then 200) and records each attempt."""

    url: str = ""
    statuses: list[int] = field(default_factory=list)
    hang: asyncio.Event | None = None  # set: the handler waits for it before answering
    attempts: list[Delivery] = field(default_factory=list)
    _arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def handle(self, request: web.Request) -> web.Response:
        status = self.statuses.pop(0) if self.statuses else 200
        attempt = Delivery(dict(request.headers), await request.read(), time.monotonic(), status)
        self.attempts.append(attempt)
        async with self._arrived:
            self._arrived.notify_all()
        if self.hang is not None:
            await self.hang.wait()
        attempt.answered = True
        return web.Response(status=status)

    @property
    def delivered(self) -> list[dict]:
        """Events of the attempts the receiver accepted (answered with a 2xx), in arrival order."""
        return [a.event for a in self.attempts if a.answered and 200 <= a.status < 300]

    async def wait_for(self, attempts: int, timeout: float = 5.0) -> None:
        async with self._arrived:
            await asyncio.wait_for(self._arrived.wait_for(lambda: len(self.attempts) >= attempts), timeout)


async def start_receiver(aiohttp_server) -> Receiver:
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/hooks", receiver.handle)
    server = await aiohttp_server(app)
    receiver.url = str(server.make_url("/hooks"))
    return receiver


@pytest.fixture
async def receiver(aiohttp_server) -> Receiver:
    return await start_receiver(aiohttp_server)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def webhook_config(url: str, *, secret: str | None = SECRET, thresholds: tuple[int, ...] = (50, 80, 100),
                   max_attempts: int = 6) -> WebhookConfig:
    return WebhookConfig(url=url, secret=Secret(secret) if secret else None, thresholds=thresholds,
                         max_attempts=max_attempts)


@pytest.fixture
async def make_notifier(session: aiohttp.ClientSession, receiver: Receiver) -> AsyncIterator[Callable[..., Notifier]]:
    """Notifiers posting to `receiver` (or `url`), with a tiny backoff; closed after the test."""
    made: list[Notifier] = []

    def make(*, url: str | None = None, secret: str | None = SECRET, thresholds: tuple[int, ...] = (50, 80, 100),
             max_attempts: int = 6, dedupe: DedupeStore | None = None, **kwargs) -> Notifier:
        kwargs.setdefault("base_delay", 0.01)
        config = webhook_config(url or receiver.url, secret=secret, thresholds=thresholds, max_attempts=max_attempts)
        notifier = Notifier(session=session, config=config, dedupe=dedupe or MemoryDedupe(), **kwargs)
        made.append(notifier)
        return notifier

    yield make
    for notifier in made:
        await notifier.close(timeout=0)


async def settle(notifier: Notifier) -> None:
    """Let every scheduled delivery finish (its retries included)."""
    await notifier.close(timeout=10)


# --- signatures ---------------------------------------------------------------------------------------

BODY = b'{"id":"evt_1","type":"cap.threshold"}'
NOW = 1_750_000_000


@pytest.mark.parametrize(("secret", "body", "age", "ok"), [
    (SECRET, BODY, 0, True),
    (SECRET, BODY, 299, True),
    ("wrong-secret", BODY, 0, False),
    (SECRET, BODY.replace(b"threshold", b"reached"), 0, False),
    (SECRET, BODY, 301, False),  # a replay outside the tolerance
    (SECRET, BODY, -301, False),  # a timestamp from the future
])
def test_signature_verifies_only_with_the_same_secret_body_and_a_fresh_timestamp(secret, body, age, ok):
    header = f"t={NOW - age},v1={sign(SECRET, NOW - age, BODY)}"
    assert verify(secret, header, body, now=NOW) is ok


@pytest.mark.parametrize("header", ["", "t=abc,v1=00", f"v1={sign(SECRET, NOW, BODY)}", f"t={NOW}", "garbage",
                                    f"t=\u00b2,v1={sign(SECRET, NOW, BODY)}", f"t={NOW},v1=\u00e9\u00e9"])
def test_malformed_signature_header_does_not_verify(header):
    assert verify(SECRET, header, BODY, now=NOW) is False


def test_any_of_several_v1_signatures_verifies_during_secret_rotation():
    header = f"t={NOW},v1={sign('old-secret', NOW, BODY)},v1={sign(SECRET, NOW, BODY)}"
    assert verify(SECRET, header, BODY, now=NOW)


# --- delivery -----------------------------------------------------------------------------------------

async def test_delivery_is_signed_json_the_receiver_verifies_with_its_copy_of_the_secret(make_notifier, receiver):
    notifier = make_notifier()
    assert await notifier.send(event_type="test.ping", dedupe_key="{acme}:ping", data={"n": 1})
    await settle(notifier)
    [attempt] = receiver.attempts
    assert attempt.headers["Content-Type"] == "application/json"
    assert verify(SECRET, attempt.headers["Payware-Signature"], attempt.body)
    assert not verify("not-the-secret", attempt.headers["Payware-Signature"], attempt.body)
    event = attempt.event
    assert event["id"].startswith("evt_") and len(event["id"]) == 4 + 32
    assert attempt.headers["Payware-Event-Id"] == event["id"]
    assert event["type"] == "test.ping" and event["data"] == {"n": 1}
    assert isinstance(event["created"], int) and abs(event["created"] - time.time()) < 60


async def test_without_a_secret_no_signature_header_is_sent(make_notifier, receiver):
    notifier = make_notifier(secret=None)
    await notifier.send(event_type="test.ping", dedupe_key="k", data={})
    await settle(notifier)
    [attempt] = receiver.attempts
    assert "Payware-Signature" not in attempt.headers


async def test_server_errors_are_retried_with_the_same_event_id_until_delivered_once(make_notifier, receiver):
    receiver.statuses = [500, 500, 200]
    ticks = iter(range(NOW, NOW + 100))
    notifier = make_notifier(clock=lambda: next(ticks))
    await notifier.send(event_type="test.ping", dedupe_key="k", data={})
    await settle(notifier)
    assert len(receiver.attempts) == 3
    assert len({a.headers["Payware-Event-Id"] for a in receiver.attempts}) == 1
    assert len({a.body for a in receiver.attempts}) == 1
    assert len(receiver.delivered) == 1
    # Re-signed on each attempt with a fresh timestamp, each one valid.
    stamps = [a.headers["Payware-Signature"].split(",")[0] for a in receiver.attempts]
    assert len(set(stamps)) == 3
    for a in receiver.attempts:
        ts = int(a.headers["Payware-Signature"].split(",")[0].removeprefix("t="))
        assert verify(SECRET, a.headers["Payware-Signature"], a.body, now=ts)


async def test_too_many_requests_is_retried(make_notifier, receiver):
    receiver.statuses = [429, 503, 204]
    notifier = make_notifier()
    await notifier.send(event_type="test.ping", dedupe_key="k", data={})
    await settle(notifier)
    assert len(receiver.attempts) == 3 and len(receiver.delivered) == 1


@pytest.mark.parametrize("status", [400, 401, 404, 410, 302])
async def test_client_errors_and_redirects_give_up_after_one_attempt(make_notifier, receiver, status):
    receiver.statuses = [status, 200]
    notifier = make_notifier()
    await notifier.send(event_type="test.ping", dedupe_key="k", data={})
    await settle(notifier)
    assert len(receiver.attempts) == 1 and receiver.delivered == []


async def test_delivery_gives_up_after_max_attempts(make_notifier, receiver):
    receiver.statuses = [503] * 10
    notifier = make_notifier(max_attempts=4)
    await notifier.send(event_type="test.ping", dedupe_key="k", data={})
    await settle(notifier)
    assert len(receiver.attempts) == 4 and receiver.delivered == []


async def test_backoff_doubles_between_attempts(make_notifier, receiver):
    receiver.statuses = [500, 500, 500, 200]
    notifier = make_notifier(base_delay=0.05)
    await notifier.send(event_type="test.ping", dedupe_key="k", data={})
    await settle(notifier)
    gaps = [b.arrived - a.arrived for a, b in zip(receiver.attempts, receiver.attempts[1:])]
    assert [g >= d for g, d in zip(gaps, (0.05, 0.1, 0.2))] == [True, True, True]


async def test_backoff_is_capped_at_max_delay(make_notifier, receiver):
    receiver.statuses = [500, 500, 200]
    notifier = make_notifier(base_delay=30.0, max_delay=0.05)
    started = time.monotonic()
    await notifier.send(event_type="test.ping", dedupe_key="k", data={})
    await settle(notifier)
    assert len(receiver.delivered) == 1 and time.monotonic() - started < 5


async def test_a_timed_out_attempt_is_retried(make_notifier, receiver):
    receiver.hang = asyncio.Event()  # the first attempt hangs past the per-attempt timeout
    notifier = make_notifier(attempt_timeout=0.2)
    await notifier.send(event_type="test.ping", dedupe_key="k", data={})
    await receiver.wait_for(1)
    await asyncio.sleep(0.3)
    receiver.hang.set()  # the second attempt is answered at once
    await settle(notifier)
    assert len(receiver.attempts) == 2
    assert receiver.attempts[0].headers["Payware-Event-Id"] == receiver.attempts[1].headers["Payware-Event-Id"]


async def test_connection_errors_are_retried_then_given_up_and_logged_without_the_secret(make_notifier, caplog):
    notifier = make_notifier(url=f"http://127.0.0.1:{free_port()}/hooks", max_attempts=3)  # nothing listens
    with caplog.at_level(logging.WARNING, logger="payware.webhooks"):
        assert await notifier.send(event_type="test.ping", dedupe_key="k", data={})
        await settle(notifier)
    assert [r.levelname for r in caplog.records] == ["WARNING", "WARNING", "ERROR"]
    assert "failed after 3 attempts" in caplog.records[-1].getMessage()
    assert SECRET not in caplog.text


async def test_send_returns_before_the_receiver_answers(make_notifier, receiver):
    receiver.hang = asyncio.Event()
    notifier = make_notifier()
    assert await asyncio.wait_for(notifier.send(event_type="test.ping", dedupe_key="k", data={}), 1)
    await receiver.wait_for(1)
    assert receiver.delivered == []  # still being answered: send did not wait for it
    receiver.hang.set()
    await settle(notifier)
    assert len(receiver.delivered) == 1


async def test_close_waits_for_deliveries_in_flight_within_its_timeout_then_cancels_them(make_notifier, receiver):
    receiver.hang = asyncio.Event()  # never set: the receiver never answers
    notifier = make_notifier(attempt_timeout=60)
    await notifier.send(event_type="test.ping", dedupe_key="k", data={})
    await receiver.wait_for(1)
    started = time.monotonic()
    await notifier.close(timeout=0.2)
    assert 0.15 < time.monotonic() - started < 2
    assert not await notifier.send(event_type="test.ping", dedupe_key="other", data={})  # closed: refuses
    receiver.hang.set()


async def test_without_webhook_config_nothing_is_sent(session, receiver):
    notifier = Notifier(session=session, config=None, dedupe=MemoryDedupe())
    assert not await notifier.send(event_type="test.ping", dedupe_key="k", data={})
    assert await notifier.threshold_crossed(customer="acme", period="2025-06", spent=Decimal(100),
                                            limit=Decimal(100)) == []
    await notifier.close()
    assert receiver.attempts == []


# --- dedupe -------------------------------------------------------------------------------------------

async def test_the_same_dedupe_key_is_sent_once(make_notifier, receiver):
    notifier = make_notifier()
    results = [await notifier.send(event_type="test.ping", dedupe_key="k", data={}) for _ in range(3)]
    await settle(notifier)
    assert results == [True, False, False] and len(receiver.attempts) == 1


async def test_memory_dedupe_answers_true_once_per_key_until_the_ttl_passes():
    now = [0.0]
    dedupe = MemoryDedupe(clock=lambda: now[0])
    assert [await dedupe.first("a", 10), await dedupe.first("a", 10), await dedupe.first("b", 10)] == [True, False, True]
    now[0] = 10.5
    assert await dedupe.first("a", 10)


async def test_memory_dedupe_forgets_expired_keys():
    now = [0.0]
    dedupe = MemoryDedupe(clock=lambda: now[0])
    for i in range(3000):
        await dedupe.first(f"k{i}", 1)
        now[0] += 0.01
    assert len(dedupe._until) < 1500  # only about the last second's keys are kept


class BrokenDedupe:
    def __init__(self) -> None:
        self.broken = True

    async def first(self, key: str, ttl: float) -> bool:
        if self.broken:
            raise ConnectionError("redis is down")
        return True


async def test_a_failing_dedupe_store_sends_nothing_and_a_later_call_sends_it(make_notifier, receiver):
    dedupe = BrokenDedupe()
    notifier = make_notifier(dedupe=dedupe)
    assert not await notifier.send(event_type="test.ping", dedupe_key="k", data={})
    dedupe.broken = False
    assert await notifier.send(event_type="test.ping", dedupe_key="k", data={})
    await settle(notifier)
    assert len(receiver.attempts) == 1


async def test_a_payload_json_cannot_encode_raises_in_the_caller_and_claims_nothing(make_notifier, receiver):
    notifier = make_notifier()
    with pytest.raises(TypeError):
        await notifier.send(event_type="test.ping", dedupe_key="k", data={"amount": Decimal("1.00")})
    assert await notifier.send(event_type="test.ping", dedupe_key="k", data={"amount": "1.00"})
    await settle(notifier)
    assert len(receiver.attempts) == 1


# --- thresholds ---------------------------------------------------------------------------------------

async def cross(notifier: Notifier, spent: str, *, customer: str = "acme", period: str = "2025-06",
                limit: str = "50.00") -> list[int]:
    return await notifier.threshold_crossed(customer=customer, period=period, spent=Decimal(spent),
                                            limit=Decimal(limit))


async def test_crossing_50_then_80_then_100_sends_three_events_in_order(make_notifier, receiver):
    notifier = make_notifier()
    assert await cross(notifier, "24.99") == []
    sent = []
    for spent in ("25.00", "39.99", "40.00", "49.99", "50.00", "61.20"):
        sent.append(await cross(notifier, spent))
        await asyncio.sleep(0.05)  # let the delivery land before the next request
    await settle(notifier)
    assert sent == [[50], [], [80], [], [100], []]
    events = receiver.delivered
    assert [e["type"] for e in events] == ["cap.threshold", "cap.threshold", "cap.reached"]
    assert [e["data"]["threshold"] for e in events] == [50, 80, 100]
    assert events[0]["data"] == {"customer": "acme", "period": "2025-06", "threshold": 50,
                                 "cap": {"amount": "50.00", "spent": "25.00", "remaining": "25.00"}}
    assert events[2]["data"]["cap"] == {"amount": "50.00", "spent": "50.00", "remaining": "0.00"}


async def test_a_jump_past_several_thresholds_sends_each_of_them(make_notifier, receiver):
    notifier = make_notifier()
    assert await cross(notifier, "75.5") == [50, 80, 100]
    await settle(notifier)
    assert sorted(e["data"]["threshold"] for e in receiver.delivered) == [50, 80, 100]
    assert {e["data"]["cap"]["remaining"] for e in receiver.delivered} == {"0.00"}


async def test_repeated_and_concurrent_crossings_send_each_threshold_once(make_notifier, receiver):
    notifier = make_notifier()
    results = await asyncio.gather(*(cross(notifier, "45.00") for _ in range(50)))
    results += [await cross(notifier, "45.00") for _ in range(5)]
    results += await asyncio.gather(*(cross(notifier, "50.00") for _ in range(50)))
    await settle(notifier)
    assert sorted(t for r in results for t in r) == [50, 80, 100]
    assert sorted(e["data"]["threshold"] for e in receiver.delivered) == [50, 80, 100]
    assert len(receiver.attempts) == 3


async def test_each_customer_and_period_has_its_own_thresholds(make_notifier, receiver):
    notifier = make_notifier()
    assert await cross(notifier, "30") == [50]
    assert await cross(notifier, "30", customer="globex") == [50]
    assert await cross(notifier, "30", period="2025-07") == [50]
    await settle(notifier)
    assert len(receiver.delivered) == 3


async def test_money_in_the_payload_is_exact_decimal_strings(make_notifier, receiver):
    notifier = make_notifier(thresholds=(100,))
    await cross(notifier, "1E+2", limit="0.1")  # no exponent, no float artefacts
    await settle(notifier)
    [event] = receiver.delivered
    assert event["data"]["cap"] == {"amount": "0.1", "spent": "100", "remaining": "0.0"}


async def test_configured_thresholds_above_100_are_reached_events(make_notifier, receiver):
    notifier = make_notifier(thresholds=(90, 150))
    assert await cross(notifier, "60") == [90]
    assert await cross(notifier, "75") == [150]
    await settle(notifier)
    assert [e["type"] for e in receiver.delivered] == ["cap.threshold", "cap.reached"]

