"""The directory poll's SQLite shortcut: `maybe_changed` is False only when nothing was committed."""

from __future__ import annotations

import sqlite3

from metering.store.directory import DirectoryStore
from metering.store.ledger import Ledger


def test_a_commit_by_any_connection_is_seen_and_quiet_is_quiet(tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path}/ledger.db")
    store, other = DirectoryStore(ledger.engine), DirectoryStore(ledger.engine)
    try:
        assert store.maybe_changed() is True  # the first look knows nothing
        assert store.maybe_changed() is False
        version = store.version()
        assert other.create_customer(id="initech", plan="payg", settings={}, meta={})  # this process, the pool
        assert store.maybe_changed() is True and store.version() == version + 1
        assert store.maybe_changed() is False
        with sqlite3.connect(tmp_path / "ledger.db") as conn:  # another process's commit, as the CLI's
            conn.execute("UPDATE directory_state SET version = version + 1 WHERE id = 1")
        assert store.maybe_changed() is True and store.version() == version + 2
        assert store.maybe_changed() is False
    finally:
        store.close()
        ledger.close()


def test_an_in_memory_ledger_is_always_asked(tmp_path):
    ledger = Ledger("sqlite://")
    try:
        store = DirectoryStore(ledger.engine)
        assert [store.maybe_changed() for _ in range(3)] == [True] * 3
    finally:
        ledger.close()
