"""The recorder says so when the ledger falls behind (its backlog is memory, and reads wait on it)."""

from __future__ import annotations

import logging
from datetime import timedelta

from metering.limits.counters import MemoryCounters
from metering.store.events import utcnow
from metering.store.journal import Journal
from metering.store.ledger import Ledger
from metering.store.recorder import Recorder
from tests.integration.test_ledger_postgres import event


def test_a_ledger_minutes_behind_is_warned_about_once_a_minute(tmp_path, caplog):
    recorder = Recorder(journal=Journal(str(tmp_path / "journal.jsonl")), counters=MemoryCounters(),
                        ledger=Ledger(f"sqlite:///{tmp_path}/ledger.db"))
    try:
        recorder.keep(event(0, "0.01", ts=utcnow() - timedelta(seconds=2)))
        with caplog.at_level(logging.WARNING, logger="payware.recorder"):
            recorder.warn_if_behind()
            assert not caplog.records  # 2 s: a flush or two, nothing to say
            recorder.keep(event(1, "0.01", ts=utcnow()))
            recorder._queue[0] = event(0, "0.01", ts=utcnow() - timedelta(seconds=90))
            recorder.warn_if_behind()
            recorder.warn_if_behind()  # again at once: not repeated
        assert [r.getMessage() for r in caplog.records] == [
            "the ledger is 90 s behind: 2 events wait for it (held in memory; payware_journal_backlog_events)"]
    finally:
        recorder.journal.close()
        recorder.ledger.close()
