"""A Responses call's response is owned by its customer through the call's own usage event."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from metering.limits.counters import MemoryCounters
from metering.store.journal import Journal
from metering.store.ledger import Ledger
from metering.store.owned import Owned, owned_by
from metering.store.recorder import Recorder
from proxy.metadata import request_metadata
from tests.integration.test_ledger_postgres import event, responses_event


def test_only_a_kept_response_with_the_providers_id_is_owned():
    made = responses_event(0, "resp_1")
    assert owned_by(made) == Owned("resp_1", "response", "acme", "openai", "gpt-4o-mini", 20,
                                   int(made.ts.timestamp()) * 1_000_000)
    assert owned_by(replace(made, meta={})) is None  # no id read from the answer
    assert owned_by(responses_event(0, "resp_1", stored=False)) is None
    assert owned_by(replace(made, endpoint="chat")) is None  # a chat completion's id owns nothing
    for unfit in ("", "r" * 129, "resp_\x00", "resp_\ud800"):
        assert owned_by(responses_event(0, unfit)) is None  # the ledger could not hold it whole
    assert owned_by(responses_event(0, 42)) is None


def test_a_client_cannot_write_paywares_own_meta_names():
    headers = CIMultiDictProxy(CIMultiDict({"X-Payware-Meta-Provider_Id": "resp_of_another_customer",
                                            "X-Payware-Meta-Stored": "false", "X-Payware-Meta-Position_Unknown": "1",
                                            "X-Payware-Meta-Team": "blue"}))
    _, _, meta = request_metadata(headers, {})
    assert meta == {"team": "blue"}


@pytest.mark.parametrize("shared_ledger", [True, False], ids=["shared-ledger", "alone"])
async def test_the_recorder_answers_for_an_owned_response_until_its_batch_is_written(tmp_path, shared_ledger):
    """Soon when other proxies look the response up in the ledger; with the next batch when the
    proxy is alone (it answers for it meanwhile)."""
    ledger = Ledger(f"sqlite:///{tmp_path}/ledger.db")
    recorder = Recorder(journal=Journal(str(tmp_path / "journal.jsonl")), counters=MemoryCounters(), ledger=ledger,
                        flush_interval=30 if shared_ledger else 3, shared_ledger=shared_ledger)
    await recorder.start(lambda: ({}, event(0, "0").ts))
    try:
        recorder.keep(event(0, "0.01"))
        await asyncio.sleep(0.5)
        assert ledger.count() == 0
        recorder.keep(responses_event(1, "resp_1"))
        assert recorder.owner("resp_1").customer == "acme"  # before any write
        if not shared_ledger:
            await asyncio.sleep(0.5)
            assert recorder.owner("resp_1").customer == "acme" and ledger.count() == 0  # no batch of its own
        for _ in range(100):  # shared: its batch is due within OWNED_FLUSH (0.01 s), not 30 s
            if recorder.owner("resp_1") is None:  # forgotten here once its batch is written
                break
            await asyncio.sleep(0.05)
        assert ledger.owned("resp_1").customer == "acme" and ledger.count() == 2
    finally:
        await recorder.close()
        ledger.close()


def test_a_response_stays_owned_when_its_calls_metadata_is_cut_to_the_budget():
    from metering.store.bounds import bounded

    made = responses_event(0, "resp_1", metadata={f"k{i}": "€" * 512 for i in range(16)})
    assert owned_by(bounded(made)).id == "resp_1"
