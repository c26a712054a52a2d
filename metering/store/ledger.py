"""The ledger: every usage event, one row each, in SQLite or Postgres (SQLModel).

Writes are idempotent by event id (`INSERT … ON CONFLICT DO NOTHING`), so the journal can be
replayed any number of times. Money is stored exactly: NUMERIC on Postgres, decimal text on
SQLite (whose NUMERIC would round through a float).
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from operator import attrgetter
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import (JSON, BigInteger, Column, Numeric, String, Text, TypeDecorator, and_, create_engine, func, or_,
                        text)
from sqlalchemy import event as sa_event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlmodel import Field, SQLModel, select

from metering.store import directory as _directory  # noqa: F401 - its tables are part of the schema
from metering.store import credits as _credits  # noqa: F401 - likewise
from metering.store import instances as _instances  # noqa: F401 - likewise
from metering.store.bounds import clean_text, is_clean
from metering.store.events import EPOCH, UsageEvent, decimal_str, to_us
from metering.store.owned import Owned, owned_by

log = logging.getLogger("payware.ledger")


class ExactDecimal(TypeDecorator):
    """Decimal in, Decimal out, with no float on the way on any backend."""

    impl = String
    cache_ok = True

    def load_dialect_impl(self, dialect):
        if dialect.name == "postgresql":
            return dialect.type_descriptor(Numeric(38, 18, asdecimal=True))
        return dialect.type_descriptor(String(64))

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        return Decimal(value) if dialect.name == "postgresql" else decimal_str(Decimal(value))

    def process_result_value(self, value, dialect):
        return None if value is None else Decimal(value)


def _money() -> Any:
    return Field(default=Decimal(0), sa_column=Column(ExactDecimal(), nullable=False))


class EventRow(SQLModel, table=True):
    """One row of the ledger: the fields of DESIGN.md's usage event."""

    __tablename__ = "usage_events"

    id: str = Field(primary_key=True, max_length=128)
    ts_us: int = Field(sa_column=Column(BigInteger, nullable=False, index=True))  # microseconds since epoch, UTC
    customer: str = Field(index=True, max_length=128)
    key_id: str | None = Field(default=None, max_length=64)
    metric: str = Field(max_length=128)
    quantity: Decimal = _money()
    period: str = Field(index=True, max_length=40)
    model: str | None = Field(default=None, max_length=128)
    upstream_model: str | None = Field(default=None, max_length=128)
    provider: str | None = Field(default=None, max_length=128)
    endpoint: str | None = Field(default=None, max_length=32)
    stream: bool = False
    input_tokens: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    cached_input_tokens: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    output_tokens: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    reasoning_tokens: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    cache_write_tokens: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))
    cache_write_1h_tokens: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, server_default="0"))
    cost: Decimal = _money()
    amount: Decimal = _money()
    currency: str = Field(default="USD", max_length=8)
    session: str | None = Field(default=None, index=True, max_length=256)
    feature: str | None = Field(default=None, max_length=256)
    meta: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    status: str = Field(default="ok", max_length=16)
    estimated: bool = False
    latency_ms: int = 0
    pricing: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    usage_source: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    raw_usage: dict | None = Field(default=None, sa_column=Column(JSON, nullable=True))


class CustomerCapRow(SQLModel, table=True):
    """A customer's own spend cap, lower than the admin's; absent: the admin's cap applies."""

    __tablename__ = "customer_caps"

    customer: str = Field(primary_key=True, max_length=128)
    amount: Decimal = _money()
    updated_us: int = Field(sa_column=Column(BigInteger, nullable=False))


class StatementRow(SQLModel, table=True):
    """A closed period's statement, frozen when it closed (later config changes leave it be)."""

    __tablename__ = "statements"

    customer: str = Field(primary_key=True, max_length=128)
    period: str = Field(primary_key=True, max_length=40)
    closed_us: int = Field(sa_column=Column(BigInteger, nullable=False))
    total: Decimal = _money()
    body: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class DeadLetterRow(SQLModel, table=True):
    """An event the ledger refused as it was, kept aside with the reason, never retried in a loop.

    `event` is its journal line in ASCII JSON (escapes for every other character), which any
    text column holds. A copy stripped of its metadata is billed in `usage_events` when the
    database takes it (`billed`), so a kept-aside event still counts on the statement.
    """

    __tablename__ = "dead_letters"

    id: str = Field(primary_key=True, max_length=128)
    customer: str = Field(index=True, max_length=128)
    ts_us: int = Field(sa_column=Column(BigInteger, nullable=False))
    reason: str = Field(sa_column=Column(Text, nullable=False))
    billed: bool = False
    event: str = Field(sa_column=Column(Text, nullable=False))


class OwnedRow(SQLModel, table=True):
    """A provider-side object a customer created through Payware (a Response, a Conversation):
    who may read or continue it, and the tokens the provider bills again when it is continued."""

    __tablename__ = "owned_objects"

    id: str = Field(primary_key=True, max_length=128)
    kind: str = Field(max_length=32)  # "response" | "conversation"
    customer: str = Field(index=True, max_length=128)
    provider: str = Field(max_length=128)
    model: str = Field(max_length=128)
    context_tokens: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))  # billed again as input
    created_us: int = Field(sa_column=Column(BigInteger, nullable=False))


_COLUMNS = [c.name for c in EventRow.__table__.columns]
_INSERT_COLUMNS = {"usage_events": _COLUMNS, "owned_objects": Owned._fields}
# Events per INSERT of a batch write at most (see `Ledger.append`): 64 x 30 columns = 1,920
# parameters, within SQLite's limit (32,766 since 3.32, 999 before: 32 then) and PostgreSQL's.
APPEND_ROWS = 64 if sqlite3.sqlite_version_info >= (3, 32) else 32


def to_row(event: UsageEvent) -> dict:
    """The ledger row of an event, as a plain dict for a bulk insert."""
    row = {name: getattr(event, name) for name in _COLUMNS if name != "ts_us"}
    row["ts_us"] = to_us(event.ts)
    return row


_JSON_COLUMNS = {"meta", "pricing", "usage_source", "raw_usage"}
_MONEY_COLUMNS = {"quantity", "cost", "amount"}
# `_driver_row`'s plan: the event's fields in column order (its `ts` where the row has `ts_us`)
_FIELDS_IN_ORDER = attrgetter(*("ts" if name == "ts_us" else name for name in _COLUMNS))
_TS = _COLUMNS.index("ts_us")
_JSON_AT = tuple(i for i, name in enumerate(_COLUMNS) if name in _JSON_COLUMNS)
_MONEY_AT = tuple(i for i, name in enumerate(_COLUMNS) if name in _MONEY_COLUMNS)


def _driver_row(event: UsageEvent, postgres: bool) -> tuple:
    """An event as the DB driver takes it, in `_COLUMNS` order (what the column types would bind)."""
    values = list(_FIELDS_IN_ORDER(event))  # one C call for the ~30 plain fields (the writer's hot loop)
    values[_TS] = to_us(values[_TS])
    for i in _JSON_AT:
        if values[i] is not None:
            values[i] = _json_dumps(values[i])
    if not postgres:
        for i in _MONEY_AT:
            values[i] = decimal_str(values[i])
    return tuple(values)


def from_row(row: Any) -> UsageEvent:
    data = {name: getattr(row, name) for name in _COLUMNS if name != "ts_us"}
    data["ts"] = EPOCH + timedelta(microseconds=row.ts_us)
    return UsageEvent(**data)


def _owned_rows(events: Iterable[UsageEvent]) -> list[Owned]:
    """The objects `events` made their customers own, one per id (the first event's)."""
    rows: dict[str, Owned] = {}
    for event in events:
        owned = owned_by(event)
        if owned is not None:
            rows.setdefault(owned.id, owned)
    return list(rows.values())


def normalize_url(url: str) -> str:
    """`postgresql://` means psycopg 3 here (the driver we depend on), not psycopg2."""
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return url


class Ledger:
    """Synchronous ledger access; the proxy calls it from a worker thread."""

    def __init__(self, url: str):
        self.url = normalize_url(url)
        self._insert_sqls: dict[tuple[str, int], str] = {}
        # NOTE: a server's connections can drop (pre-ping them); a SQLite file's cannot, and a
        # ping is one more statement for every ledger batch and directory poll
        self.engine: Engine = create_engine(self.url, pool_pre_ping=not self.url.startswith("sqlite"),
                                            json_serializer=_json_dumps)
        if self.engine.dialect.name == "sqlite":
            sa_event.listen(self.engine, "connect", _sqlite_pragmas)
        migrate(self.engine)

    def append(self, events: list[UsageEvent]) -> None:
        """The flusher's batch write: `insert` without SQLAlchemy's per-row work (values prepared
        here for the DB driver); idempotent the same way, no count returned.

        Up to `APPEND_ROWS` events per INSERT statement, not one statement per event: sqlite3
        releases the GIL around every statement it steps, and a serving thread that keeps the
        GIL busy then takes it back for up to the switch interval (5 ms) each time. Row by row,
        a saturated proxy's writer kept up with ~1,400 of its ~1,900 calls a second and its
        backlog grew without end (measured: 53,000 events, 26 s behind after 300,000 calls).
        Statements of power-of-two sizes only (a batch's rest: 32 + 16 + ...): each size is a
        prepared statement the driver caches, ~200 KiB for 100 rows, and one per possible rest
        took 20 MiB. The objects the events made their customers own (`metering.store.owned`)
        go in the same transaction, the same way.
        """
        if not events:
            return
        postgres = self.engine.dialect.name == "postgresql"
        with self.engine.begin() as conn:
            self._insert_rows(conn, "usage_events", [_driver_row(event, postgres) for event in events])
            self._insert_rows(conn, "owned_objects", _owned_rows(events))  # with its event: one transaction

    def write(self, events: list[UsageEvent]) -> list[UsageEvent]:
        """Append `events`; a row the database refuses never holds back the others.

        A failed batch is split in halves until the refused rows are alone; each is kept aside
        (`dead_letters`) and a copy without its metadata is billed. Returns the events kept
        aside. Raises only when the database itself is unreachable: the caller retries the
        whole batch later (every write here is idempotent by event id).
        """
        try:
            self.append(events)
            return []
        except Exception as exc:
            if not self.reachable():
                raise
            if len(events) == 1:
                return [self._keep_aside(events[0], exc)]
        middle = len(events) // 2
        return self.write(events[:middle]) + self.write(events[middle:])

    def reachable(self) -> bool:
        """Whether the database answers at all (an outage, as opposed to a refused row)."""
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return True
        except Exception:
            return False

    def _keep_aside(self, event: UsageEvent, error: Exception) -> UsageEvent:
        reason = clean_text(f"{type(error).__name__}: {error}", 2000)
        log.error("ledger refused event %s of %s (%s); kept aside in dead_letters", event.id, event.customer,
                  reason.splitlines()[0][:300])
        stripped = replace(event, meta={"payware_kept_aside": True}, raw_usage=None, session=None, feature=None)
        try:
            self.append([stripped])
            billed = True
        except Exception:
            if not self.reachable():
                raise
            billed = False
            log.error("event %s could not be billed in the ledger even without its metadata", event.id)
        row = {"id": event.id[:128], "customer": clean_text(event.customer, 128), "ts_us": to_us(event.ts),
               "reason": reason, "billed": billed, "event": _ascii_line(event)}
        table = DeadLetterRow.__table__
        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        with self.engine.begin() as conn:
            conn.execute(dialect.insert(table).on_conflict_do_nothing(index_elements=["id"]), [row])
        return event

    def dead_letters(self, customer: str | None = None) -> list[dict]:
        """The events kept aside (of one customer, or all), oldest first."""
        query = select(DeadLetterRow).order_by(DeadLetterRow.ts_us)
        if customer is not None:
            query = query.where(DeadLetterRow.customer == customer)
        with self.engine.connect() as conn:
            return [{"id": r.id, "customer": r.customer, "ts_us": r.ts_us, "reason": r.reason, "billed": r.billed,
                     "event": r.event} for r in conn.execute(query)]

    def dead_letter_counts(self) -> dict[str, int]:
        """How many events of each customer were kept aside."""
        query = select(DeadLetterRow.customer, func.count()).group_by(DeadLetterRow.customer)
        with self.engine.connect() as conn:
            return {customer: count for customer, count in conn.execute(query)}

    def _insert_rows(self, conn, table: str, rows: list[tuple]) -> None:
        """INSERT `rows` (driver values in the table's column order), skipping ids already there."""
        start = 0
        while start < len(rows):
            size = min(APPEND_ROWS, 1 << ((len(rows) - start).bit_length() - 1))
            chunk = rows[start:start + size]
            conn.exec_driver_sql(self._insert_sql(table, size), tuple(value for row in chunk for value in row))
            start += size

    def _insert_sql(self, table: str, rows: int) -> str:
        """The INSERT of `rows` rows into `table` (kept: at most 7 sizes a table)."""
        sql = self._insert_sqls.get((table, rows))
        if sql is None:
            mark = "%s" if self.engine.dialect.name == "postgresql" else "?"
            columns = _INSERT_COLUMNS[table]
            row = "(" + ", ".join(mark for _ in columns) + ")"
            names = ", ".join(f'"{name}"' for name in columns)
            # NOTE: DO NOTHING for owned objects too: an id is never handed to another customer
            sql = f"INSERT INTO {table} ({names}) VALUES {', '.join([row] * rows)} ON CONFLICT (id) DO NOTHING"
            self._insert_sqls[(table, rows)] = sql
        return sql

    def insert(self, events: Iterable[UsageEvent]) -> int:
        """Write events, skipping ids already there; returns how many rows were new."""
        events = list(events)
        rows = [to_row(e) for e in events]
        if not rows:
            return 0
        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        table = EventRow.__table__
        statement = dialect.insert(table).on_conflict_do_nothing(index_elements=["id"]).returning(table.c.id)
        with self.engine.begin() as conn:
            # RETURNING names the rows really inserted (a driver's rowcount is unreliable for batches)
            new = {row[0] for row in conn.execute(statement, rows).all()}
            # NOTE: only a new event's object: one its owner has deleted since is not handed back
            self._insert_rows(conn, "owned_objects", _owned_rows(event for event in events if event.id in new))
        return len(new)

    def events(self, *, customer: str | None = None, start: datetime | None = None, end: datetime | None = None,
               session: str | None = None, period: str | None = None, model: str | None = None,
               feature: str | None = None, after: tuple[int, str] | None = None, limit: int | None = None,
               batch: int = 1000) -> Iterator[UsageEvent]:
        """Events in time order (then id), filtered; `start` inclusive, `end` exclusive; with
        `after` (an event's `(ts_us, id)`) those past it, `limit` of them at most: a page."""
        query = select(EventRow).order_by(EventRow.ts_us, EventRow.id)
        if after is not None:
            ts_us, event_id = after
            query = query.where(or_(EventRow.ts_us > ts_us, and_(EventRow.ts_us == ts_us, EventRow.id > event_id)))
        if customer is not None:
            query = query.where(EventRow.customer == customer)
        if start is not None:
            query = query.where(EventRow.ts_us >= to_us(start))
        if end is not None:
            query = query.where(EventRow.ts_us < to_us(end))
        filters = ((EventRow.session, session), (EventRow.period, period), (EventRow.model, model),
                   (EventRow.feature, feature))
        if any(value is not None and not is_clean(value) for _, value in filters):
            return  # NOTE: no stored text holds a NUL or a lone surrogate (bounds.clean_text): nothing matches
        for column, value in filters:
            if value is not None:
                query = query.where(column == value)
        if limit is not None:
            query = query.limit(limit)
        with self.engine.connect() as conn:
            result = conn.execution_options(yield_per=batch).execute(query)
            for row in result:
                yield from_row(row)

    def latest_period(self, customer: str, *, since: datetime) -> str | None:
        """The newest period key among a customer's events since `since` (keys sort as time)."""
        query = select(func.max(EventRow.period)).where(EventRow.customer == customer,
                                                         EventRow.ts_us >= to_us(since))
        with self.engine.connect() as conn:
            return conn.execute(query).scalar_one_or_none()

    def amounts(self, customer: str, period: str) -> Iterator[tuple[int, Decimal]]:
        """(ts_us, amount) of the period's events in time order: two columns, not whole rows."""
        query = (select(EventRow.ts_us, EventRow.amount)
                 .where(EventRow.customer == customer, EventRow.period == period)
                 .order_by(EventRow.ts_us, EventRow.id))
        with self.engine.connect() as conn:
            yield from conn.execute(query)

    def periods(self, customer: str) -> list[str]:
        """Every period key the customer has events in, oldest first."""
        query = select(EventRow.period).where(EventRow.customer == customer).distinct()
        with self.engine.connect() as conn:
            return sorted(row[0] for row in conn.execute(query))

    def statements(self, customer: str) -> dict[str, dict]:
        """The frozen statements of a customer, by period key."""
        query = select(StatementRow).where(StatementRow.customer == customer)
        with self.engine.connect() as conn:
            return {row.period: row.body for row in conn.execute(query)}

    def save_statement(self, customer: str, period: str, total: Decimal, body: dict) -> bool:
        """Freeze a statement; False if one was already there (the first one stands)."""
        table = StatementRow.__table__
        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        statement = dialect.insert(table).on_conflict_do_nothing(index_elements=["customer", "period"])
        row = {"customer": customer, "period": period, "closed_us": to_us(datetime.now(timezone.utc)),
               "total": total, "body": body}
        with self.engine.begin() as conn:
            return conn.execute(statement.returning(table.c.period), [row]).first() is not None

    def events_by_id(self, event_ids: Iterable[str]) -> dict[str, UsageEvent]:
        """The events of `event_ids` the ledger holds, by id (a query per 500: old SQLites bind at most 999)."""
        ids, found = list(dict.fromkeys(event_ids)), {}
        with self.engine.connect() as conn:
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                for row in conn.execute(select(EventRow).where(EventRow.id.in_(chunk))):
                    event = from_row(row)
                    found[event.id] = event
        return found

    def customer_caps(self) -> dict[str, Decimal]:
        with self.engine.connect() as conn:
            return {row.customer: row.amount for row in conn.execute(select(CustomerCapRow))}

    def set_customer_cap(self, customer: str, amount: Decimal | None) -> None:
        """Set (or with None, remove) a customer's own cap."""
        table = CustomerCapRow.__table__
        with self.engine.begin() as conn:
            conn.execute(table.delete().where(table.c.customer == customer))
            if amount is not None:
                now = to_us(datetime.now(timezone.utc))
                conn.execute(table.insert().values(customer=customer, amount=amount, updated_us=now))

    def owned(self, id: str) -> Owned | None:
        """The owner record of a provider object, or None."""
        if not is_clean(id):  # NOTE: no stored id holds a NUL or a lone surrogate; the database refuses them
            return None
        with self.engine.connect() as conn:
            row = conn.execute(select(*(OwnedRow.__table__.c[name] for name in Owned._fields))
                               .where(OwnedRow.id == id)).first()
        return None if row is None else Owned(*row)

    def disown(self, id: str) -> None:
        table = OwnedRow.__table__
        with self.engine.begin() as conn:
            conn.execute(table.delete().where(table.c.id == id))

    def count(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(EventRow)).scalar_one()

    def close(self) -> None:
        self.engine.dispose()


_MIGRATIONS = Path(__file__).parent / "migrations"


def head_revision() -> str:
    """The newest migration's revision: each file in versions/ is named after its revision
    (`0009_credit_grants.py` is "0009"), and they count up (a test holds Alembic to it)."""
    return max(path.name[:4] for path in (_MIGRATIONS / "versions").glob("[0-9][0-9][0-9][0-9]_*.py"))


def _at_head(engine: Engine) -> bool:
    """Whether the schema is at the newest migration already (read without Alembic)."""
    try:
        with engine.connect() as conn:
            versions = [row[0] for row in conn.exec_driver_sql("SELECT version_num FROM alembic_version")]
    except DBAPIError:  # no schema yet
        return False
    return versions == [head_revision()]


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest migration (Alembic); a no-op when it is there.

    NOTE: a schema at the newest migration (every start but a database's first and an
    upgrade's) is checked without importing Alembic: ~8 MiB of RSS and ~0.1 s of start-up.
    """
    if _at_head(engine):
        return
    from alembic import command
    from alembic.config import Config as AlembicConfig

    config = AlembicConfig()
    config.set_main_option("script_location", str(_MIGRATIONS))
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            # NOTE: proxies starting at once on an empty database would race to create the same
            # tables; a transaction-scoped advisory lock makes them take turns (the later ones
            # then find the schema there and do nothing).
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7061797761726501)")
        elif engine.dialect.name == "sqlite":
            # The same for SQLite (workers of one `serve --workers N` on a new file): taking the
            # write lock first makes the others wait at their BEGIN, then find the schema there.
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        config.attributes["connection"] = conn
        command.upgrade(config, "head")


def _ascii_line(event: UsageEvent) -> str:
    """The event as ASCII JSON: every other character escaped, so any text column holds it."""
    try:
        return json.dumps(json.loads(event.to_json()), ensure_ascii=True, separators=(",", ":"))
    except (ValueError, UnicodeEncodeError):
        return json.dumps({"id": event.id, "unreadable": True})


_ORJSON_AS_STDLIB = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_SUBCLASS


def _json_dumps(value: Any) -> str:
    """Compact JSON text for a JSON column: orjson's (the flusher writes three per event), with
    what the standard library would do for anything orjson refuses (a lone surrogate, a key that
    is not a string, an int beyond 64 bits); `str()` of whatever is not JSON in both."""
    try:
        return orjson.dumps(value, default=str, option=_ORJSON_AS_STDLIB).decode()
    except TypeError:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    # WAL lets readers (summary, export) run while the writer commits a batch.
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


# NOTE: last, as it builds on this module's types: its tables are part of the schema too.
from metering.store import money_runs as _money_runs  # noqa: E402,F401
