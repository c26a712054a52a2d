"""The runtime directory's refresh never swaps in a read older than the one in force.

An admin write forces a read of the directory while the twice-a-second poll may be reading it
too; when the poll's older read ends last it must not undo the newer one (a customer just
created unknown for a poll's time, a key just revoked working again)."""

from __future__ import annotations

from pathlib import Path

from config.loader import parse_config
from metering.store.directory import Snapshot
from proxy.live import Live
from tests.conftest import proxy_config

ROW = {"plan": "payg", "settings": {}, "metadata": {}, "active": True, "created_us": 1, "updated_us": 1}


class _Store:
    """A directory whose reads return the snapshots given, in order (the last one read repeatedly)."""

    def __init__(self, *snapshots: Snapshot):
        self.snapshots = list(snapshots)

    notifies = False

    def maybe_changed(self) -> bool:
        return True

    def version(self) -> int:
        return self.snapshots[0].version

    def load(self) -> Snapshot:
        return self.snapshots.pop(0) if len(self.snapshots) > 1 else self.snapshots[0]


async def test_an_older_read_ending_last_keeps_the_newer_directory(tmp_path: Path):
    config = parse_config(proxy_config("http://127.0.0.1:9/v1", tmp_path), env={})
    before = Snapshot(4, [], [])
    after = Snapshot(5, [{"id": "newco", **ROW}], [])
    live = Live(config, store=_Store(after, before))
    assert await live.refresh(force=True)  # the admin write's read: version 5, newco in it
    assert "newco" in live.config.customers
    assert not await live.refresh(force=True)  # the poll's read, begun before the write, ends now
    assert live.version == 5 and "newco" in live.config.customers
    live.store = _Store(Snapshot(6, [], []))
    assert await live.refresh()  # a newer one is taken as before: newco deleted since
    assert live.version == 6 and "newco" not in live.config.customers
