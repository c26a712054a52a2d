"""The proxies sharing a ledger: each one's counters, so a setup that would drift is refused.

With `counters: memory` a proxy counts only its own calls: a second proxy on the same ledger
would let each customer spend its cap once per proxy, silently. Each proxy therefore writes a
heartbeat row (its journal names it: one journal per proxy) every few seconds; at start a
proxy refuses to serve if another live proxy shares the ledger and either of them keeps its
counters in memory. A proxy restarted on its own journal takes its own row back.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from sqlalchemy import BigInteger, Column, Engine, select
from sqlmodel import Field, SQLModel

from metering.store.directory import now_us

HEARTBEAT = 5.0  # seconds between two heartbeats
STALE = 15.0  # a proxy not seen for this long is gone (killed, or its host is)


class InstanceRow(SQLModel, table=True):
    __tablename__ = "instances"

    id: str = Field(primary_key=True, max_length=255)  # host + journal path
    counters: str = Field(max_length=32)  # "memory" | "redis"
    pid: int = 0
    seen_us: int = Field(sa_column=Column(BigInteger, nullable=False))


@dataclass(frozen=True, slots=True)
class Conflict:
    other: str
    counters: str


def instance_id(journal: str) -> str:
    return f"{socket.gethostname()}:{os.path.abspath(journal)}"[:255]


class Instances:
    """This proxy's row, and the check against the others (blocking: call from a thread)."""

    def __init__(self, engine: Engine, *, journal: str, counters: str):
        self.engine = engine
        self.id = instance_id(journal)
        self.counters = "memory" if counters == "memory" else "redis"

    def conflict(self) -> Conflict | None:
        """Another live proxy on this ledger that makes the counters drift, if any."""
        fresh = now_us() - int(STALE * 1_000_000)
        with self.engine.connect() as conn:
            rows = conn.execute(select(InstanceRow).where(InstanceRow.seen_us >= fresh, InstanceRow.id != self.id))
            for row in rows:
                if self.counters == "memory" or row.counters == "memory":
                    return Conflict(row.id, row.counters)
        return None

    def beat(self) -> None:
        table = InstanceRow.__table__
        with self.engine.begin() as conn:
            values = {"counters": self.counters, "pid": os.getpid(), "seen_us": now_us()}
            if not conn.execute(table.update().where(table.c.id == self.id).values(**values)).rowcount:
                conn.execute(table.insert().values(id=self.id, **values))

    def leave(self) -> None:
        table = InstanceRow.__table__
        with self.engine.begin() as conn:
            conn.execute(table.delete().where(table.c.id == self.id))
