"""Owned objects announced in the real Redis: found by every proxy at once, only by their
customer, withdrawn once the ledger has them; the ledger written at once when Redis is away."""

from __future__ import annotations

import asyncio

from metering.limits.counters import MemoryCounters
from metering.store.journal import Journal
from metering.store.ledger import Ledger
from metering.store.owned import owned_by
from metering.store.owned_redis import TTL, AnnouncedOwners
from metering.store.recorder import Recorder
from tests.conftest import free_port
from tests.integration.conftest import connect
from tests.integration.test_ledger_postgres import event, responses_event


def _recorder(tmp_path, owners, flush_interval=30.0) -> tuple[Recorder, Ledger]:
    ledger = Ledger(f"sqlite:///{tmp_path}/ledger.db")
    return Recorder(journal=Journal(str(tmp_path / "journal.jsonl")), counters=MemoryCounters(), ledger=ledger,
                    flush_interval=flush_interval, shared_ledger=True, owners=owners), ledger


async def test_an_owned_response_is_announced_before_its_call_ends_and_withdrawn_with_its_batch(
        tmp_path, client, prefix):
    owners = AnnouncedOwners(client, prefix=prefix)
    other_proxy = AnnouncedOwners(client, prefix=prefix)
    recorder, ledger = _recorder(tmp_path, owners)
    await recorder.start(lambda: ({}, event(0, "0").ts))
    try:
        made = responses_event(1, "resp_1")
        await recorder.record(made)  # what a call does before its answer's last byte
        assert await other_proxy.lookup("acme", "resp_1") == owned_by(made)
        assert await other_proxy.lookup("globex", "resp_1") is None  # another customer never finds it
        assert await other_proxy.lookup("acme", "resp_2") is None
        key = owners.key("acme", "resp_1")
        assert 0 < await client.ttl(key) <= TTL
        await asyncio.sleep(0.3)
        assert ledger.count() == 0  # no batch of its own: the flush interval is 30 s
        await recorder.flush()
        assert ledger.owned("resp_1") == owned_by(made)
        for _ in range(100):  # withdrawn once the ledger holds it
            if not await client.exists(key):
                break
            await asyncio.sleep(0.02)
        assert not await client.exists(key)
        assert await other_proxy.lookup("acme", "resp_1") is None  # the ledger answers for it now
    finally:
        await recorder.close()
        ledger.close()


async def test_a_redis_that_lost_its_scripts_still_gets_the_announcement(tmp_path, client, prefix):
    owners = AnnouncedOwners(client, prefix=prefix)
    recorder, ledger = _recorder(tmp_path, owners)
    await recorder.start(lambda: ({}, event(0, "0").ts))
    try:
        await recorder.record(responses_event(1, "resp_1"))
        await client.script_flush()  # as a restarted Redis: NOSCRIPT for the next call
        await recorder.record(responses_event(2, "resp_2"))
        assert (await owners.lookup("acme", "resp_2")).id == "resp_2"
        assert ledger.count() == 0  # announced, so no batch was forced out
    finally:
        await recorder.close()
        ledger.close()


async def test_a_value_that_is_not_an_announcement_is_not_an_owner(client, prefix):
    owners = AnnouncedOwners(client, prefix=prefix)
    for junk in ("not json", "[1, 2]", '{"id": "resp_1"}', '["resp_1", "response", "globex", "p", "m", 1, 2]'):
        await client.set(owners.key("acme", "resp_1"), junk)
        assert await owners.lookup("acme", "resp_1") is None
    for never_owned in ("resp_\x00", "resp_\ud800", "r" * 129):  # what owned_by refuses is not asked for
        assert await owners.lookup("acme", never_owned) is None


async def test_without_redis_the_batch_of_an_owned_response_goes_out_at_once(tmp_path):
    away = connect(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)
    recorder, ledger = _recorder(tmp_path, AnnouncedOwners(away))
    await recorder.start(lambda: ({}, event(0, "0").ts))
    try:
        await recorder.record(responses_event(1, "resp_1"))  # the announcement fails; the call does not
        for _ in range(100):  # within OWNED_FLUSH, not the 30 s interval
            if ledger.count():
                break
            await asyncio.sleep(0.05)
        assert ledger.owned("resp_1").customer == "acme"
    finally:
        await recorder.close()
        ledger.close()
        await away.aclose()
