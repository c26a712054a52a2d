"""Customers and keys made at runtime (the admin API, the CLI), kept in the ledger database.

Keys are stored only as the hex SHA-256 of the key, with a short prefix of the key itself for
people to recognize it ("pw-3fa9…"). Customer settings (cap, rate limit, models, metadata)
are JSON: the config loader validates them, here they are only kept. Nothing is ever deleted:
a deactivated customer and a revoked key stay, with their events, statements and evidence.

Moments are kept as whole microseconds since the epoch. One taken from outside (a key's
expiry) must be before `INSTANTS_END` (`admin_ops.instant_us` checks it before anything is
written); one read back that no `datetime` can hold (written by an older version) makes its key
expired, so that no single row can stop the directory from loading (see `DirectoryStore._key`).

Every change bumps one version number in the same transaction, so a proxy learns that
something changed by reading one integer (`version`), and then reloads everything (`load`).
On PostgreSQL the same transaction also notifies `CHANNEL` (delivered when it commits), so a
proxy listening there (`listener`) need not poll.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote

from sqlalchemy import JSON, BigInteger, Column, Engine, select, text
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, SQLModel

from metering.store.bounds import is_clean
from metering.store.events import EPOCH, to_us

log = logging.getLogger("payware.directory")

CHANNEL = "payware_directory"  # PostgreSQL LISTEN/NOTIFY: "the directory's version moved"


class CustomerRow(SQLModel, table=True):
    __tablename__ = "customers"

    id: str = Field(primary_key=True, max_length=128)
    plan: str = Field(max_length=128)
    settings: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))  # cap, rate_limit, models, anchor_day
    meta: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    active: bool = True
    created_us: int = Field(sa_column=Column(BigInteger, nullable=False))
    updated_us: int = Field(sa_column=Column(BigInteger, nullable=False))


class KeyRow(SQLModel, table=True):
    __tablename__ = "api_keys"

    id: str = Field(primary_key=True, max_length=64)  # "key_" + 12 hex digits of the hash: safe to show
    customer: str = Field(index=True, max_length=128)
    digest: str = Field(unique=True, max_length=64)  # hex SHA-256 of the key
    name: str = Field(default="", max_length=128)
    prefix: str = Field(default="", max_length=16)
    settings: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))  # cap, rate_limit, models
    created_us: int = Field(sa_column=Column(BigInteger, nullable=False))
    expires_us: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    revoked_us: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    last_used_us: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))


class DirectoryStateRow(SQLModel, table=True):
    __tablename__ = "directory_state"

    id: int = Field(primary_key=True)
    version: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Every runtime customer and key, and the version they were read at."""

    version: int
    customers: list[dict]
    keys: list[dict]


# The first moment refused from outside (an expiry), exclusive: a year short of the last one a
# `datetime` holds, so that any moment kept can be read back, and shown or stepped a day or a
# billing period either way, without leaving Python's years 1 to 9999.
INSTANTS_END = datetime(9999, 1, 1, tzinfo=timezone.utc)
INSTANTS_END_TEXT = "9999-01-01T00:00:00Z"


def now_us() -> int:
    return to_us(datetime.now(timezone.utc))


def moment_of(us: int) -> datetime:
    """The UTC moment `us` microseconds after the epoch, exactly (no float on the way);
    ValueError if no `datetime` holds it (outside the years 1 to 9999, or not a number)."""
    try:
        return EPOCH + timedelta(microseconds=us)
    except (OverflowError, TypeError, ValueError):
        raise ValueError(f"{us!r} microseconds since the epoch is not a moment of the years 1 to 9999") from None


def readable(us: object) -> bool:
    """Whether `moment_of(us)` holds (a kept moment can be read back)."""
    try:
        moment_of(us)  # type: ignore[arg-type]
    except ValueError:
        return False
    return True


class DirectoryStore:
    """Blocking access to the runtime directory (call it from a worker thread)."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._watch: sqlite3.Connection | None = None  # see `maybe_changed`
        self._data_version: int | None = None
        self._unreadable: set[str] = set()  # keys whose expiry could not be read, told once each

    def maybe_changed(self) -> bool:
        """False only when nothing was committed to a SQLite ledger since the last call: then
        the directory's version cannot have moved. Cheap enough for the event loop (no thread,
        no pool): an idle proxy's polls cost ~0.8 ms of CPU each through `version`.

        SQLite's `PRAGMA data_version` changes when another connection commits (any process's;
        this one only reads). Other databases: always True (ask `version`).
        """
        if self.engine.dialect.name != "sqlite":
            return True
        try:
            if self._watch is None:
                path = self.engine.url.database
                if not path or path == ":memory:" or path.startswith("file:"):
                    return True
                # NOTE: read-only and autocommit: never creates the file, never holds a read open
                self._watch = sqlite3.connect(f"file:{quote(path)}?mode=ro", uri=True, isolation_level=None,
                                              check_same_thread=False)
            seen = self._watch.execute("PRAGMA data_version").fetchone()[0]
        except sqlite3.Error:
            self.close()
            return True
        changed, self._data_version = seen != self._data_version, seen
        return changed

    @property
    def notifies(self) -> bool:
        """Whether every change is told on `CHANNEL` (PostgreSQL): see `listener`."""
        return self.engine.dialect.name == "postgresql"

    async def listener(self):
        """A connection of its own (psycopg, autocommit) that LISTENs on `CHANNEL`: each committed
        change is a notification on it (`pgconn.consume_input()`, then `pgconn.notifies()`, when
        its socket is readable: see `proxy.live`); close it when done."""
        import psycopg

        url = self.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
        try:
            await conn.execute(f"LISTEN {CHANNEL}")
        except BaseException:
            await conn.close()
            raise
        return conn

    def close(self) -> None:
        if self._watch is not None:
            self._watch.close()
            self._watch, self._data_version = None, None

    def version(self) -> int:
        """The directory's version. NOTE: read by every poll that may see a change (up to twice a
        second): the driver's own SQL (SQLAlchemy's select took ~2 ms of CPU each time)."""
        with self.engine.connect() as conn:
            return conn.exec_driver_sql("SELECT version FROM directory_state WHERE id = 1").scalar() or 0

    def load(self) -> Snapshot:
        with self.engine.connect() as conn:
            version = conn.execute(select(DirectoryStateRow.version).where(DirectoryStateRow.id == 1)).scalar() or 0
            customers = [_customer(row) for row in conn.execute(select(CustomerRow).order_by(CustomerRow.id))]
            keys = [self._key(row) for row in conn.execute(select(KeyRow).order_by(KeyRow.created_us, KeyRow.id))]
        return Snapshot(version, customers, keys)

    def customer(self, customer_id: str) -> dict | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(CustomerRow).where(CustomerRow.id == customer_id)).first()
        return None if row is None else _customer(row)

    def create_customer(self, *, id: str, plan: str, settings: dict, meta: dict) -> bool:
        """False if the id is taken (by an active or a deactivated customer)."""
        now = now_us()
        try:
            with self.engine.begin() as conn:
                if conn.execute(select(CustomerRow.id).where(CustomerRow.id == id)).first() is not None:
                    return False
                conn.execute(CustomerRow.__table__.insert().values(id=id, plan=plan, settings=settings, meta=meta,
                                                                   active=True, created_us=now, updated_us=now))
                _bump(conn)
        except IntegrityError:  # NOTE: created meanwhile by a concurrent call: taken all the same
            return False
        return True

    def update_customer(self, customer_id: str, **values: Any) -> bool:
        """Set `plan`, `settings`, `meta` or `active`; False if no such customer."""
        table = CustomerRow.__table__
        with self.engine.begin() as conn:
            done = conn.execute(table.update().where(table.c.id == customer_id)
                                .values(**values, updated_us=now_us())).rowcount
            if done:
                _bump(conn)
        return bool(done)

    def create_key(self, *, id: str, customer: str, digest: str, name: str, prefix: str, settings: dict,
                   expires_us: int | None) -> None:
        with self.engine.begin() as conn:
            conn.execute(KeyRow.__table__.insert().values(
                id=id, customer=customer, digest=digest, name=name, prefix=prefix, settings=settings,
                created_us=now_us(), expires_us=expires_us))
            _bump(conn)

    def key(self, key_id: str) -> dict | None:
        if not is_clean(key_id):  # NOTE: no key id holds a NUL or a lone surrogate; the database refuses them
            return None
        with self.engine.connect() as conn:
            row = conn.execute(select(KeyRow).where(KeyRow.id == key_id)).first()
        return None if row is None else self._key(row)

    def keys_of(self, customer: str) -> list[dict]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(KeyRow).where(KeyRow.customer == customer)
                                .order_by(KeyRow.created_us, KeyRow.id))
            return [self._key(row) for row in rows]

    def end_key(self, key_id: str, *, revoke: bool, at_us: int) -> bool:
        """Revoke a key now, or let it expire at `at_us` (a rotation's grace); False if unknown."""
        table = KeyRow.__table__
        values = {"revoked_us": at_us} if revoke else {"expires_us": at_us}
        with self.engine.begin() as conn:
            query = table.update().where(table.c.id == key_id, table.c.revoked_us.is_(None)).values(**values)
            done = conn.execute(query).rowcount
            if done:
                _bump(conn)
        return bool(done)

    def touch_keys(self, used: dict[str, int]) -> None:
        """Record when keys were last used (batched by the caller; no version bump: nothing to reload)."""
        table = KeyRow.__table__
        with self.engine.begin() as conn:
            for key_id, at in used.items():
                conn.execute(table.update().where(table.c.id == key_id).values(last_used_us=at))

    def _key(self, row) -> dict:
        """A key row as a dict; an expiry that no `datetime` holds reads as the key's creation.

        NOTE: such an expiry (year 10000 in UTC, written before `admin_ops.instant_us` bounded
        it) read as it is failed every load of the directory: the proxy would not start, and no
        later change applied (a key revoked kept working). Read as expired, the one key is
        refused, as the safe side, and every other is served; the admin may revoke or rotate it.
        """
        key = _key(row)
        if key["expires_us"] is not None and not readable(key["expires_us"]):
            key["expires_us"] = key["created_us"] if readable(key["created_us"]) else 0
            if key["revoked_us"] is None and key["id"] not in self._unreadable:
                self._unreadable.add(key["id"])
                log.warning("key %s of %s has an expiry no date can hold (%r): it is refused as expired",
                            key["id"], key["customer"], row.expires_us)
        return key


def _bump(conn) -> None:
    """One more change: in the change's own transaction, so readers see both or neither.

    NOTE: one statement: as an update and then an insert when no row was there, the first two
    changes made at once both inserted (a unique violation: a 500 for one of them).
    """
    conn.execute(text("INSERT INTO directory_state (id, version) VALUES (1, 1) "
                      "ON CONFLICT (id) DO UPDATE SET version = directory_state.version + 1"))
    if conn.dialect.name == "postgresql":
        conn.execute(text(f"NOTIFY {CHANNEL}"))  # NOTE: sent at commit, never for a change rolled back


def _customer(row) -> dict:
    return {"id": row.id, "plan": row.plan, "settings": dict(row.settings or {}), "metadata": dict(row.meta or {}),
            "active": bool(row.active), "created_us": row.created_us, "updated_us": row.updated_us}


def _key(row) -> dict:
    return {"id": row.id, "customer": row.customer, "digest": row.digest, "name": row.name, "prefix": row.prefix,
            "settings": dict(row.settings or {}), "created_us": row.created_us, "expires_us": row.expires_us,
            "revoked_us": row.revoked_us, "last_used_us": row.last_used_us}
