"""The local append-only journal: an event is safe once `append` returns.

One JSON line per event, written with a single `write(2)` on an O_APPEND descriptor, so a
`kill -9` after `append` returns cannot lose the event (the kernel holds it) and cannot tear
a line. The ledger is written in batches later; on start the journal is replayed into the
ledger (idempotent by event id) and then emptied. Power loss is covered by `fsync`, which
the ledger writer calls before each batch it commits (see `sync`).

The journal belongs to one process: an exclusive lock refuses a second proxy on the same file.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterator

from metering.store.events import UsageEvent

log = logging.getLogger("payware.journal")


class JournalLocked(RuntimeError):
    """Another process holds this journal."""


class Journal:
    def __init__(self, path: str):
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise JournalLocked(f"journal {path} is in use by another process "
                                "(each proxy instance needs its own storage.journal)") from None

    def append(self, event: UsageEvent) -> None:
        """Write one event; when this returns the event survives the death of this process."""
        line = event.to_json_bytes() + b"\n"  # NOTE: never raises: what orjson refuses is escaped instead
        written = os.write(self._fd, line)
        if written != len(line):  # only on a full disk; never leave half a line behind
            raise OSError(f"journal {self.path}: short write ({written} of {len(line)} bytes)")

    def replay(self) -> Iterator[UsageEvent]:
        """Every event in the journal, skipping a torn last line left by a power loss."""
        with open(self.path, "rb") as fh:
            for number, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    yield UsageEvent.from_json(line)
                except (ValueError, KeyError, TypeError) as exc:
                    log.warning("journal %s line %d unreadable, skipped: %s", self.path, number, exc)

    def size(self) -> int:
        return os.fstat(self._fd).st_size

    def sync(self) -> None:
        os.fsync(self._fd)

    def truncate(self) -> None:
        """Empty the journal. Call only when the ledger holds every event in it."""
        os.ftruncate(self._fd, 0)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
