"""Where reconciliation runs and settlements are kept: two tables of the ledger database.

- `reconciliations`: each `payware reconcile` run, its whole report as JSON; the newest one is
  what `GET /v1/admin/reconciliation` serves.
- `settlements`: one row per frozen statement handed to a payment system (Stripe): the invoice
  id it became, so the statement records its invoice and a rerun never bills it twice.
  `status` is `pending` (the invoice exists, its items may not all be there yet), `invoiced`
  (complete) or `nothing_due` (a zero total: no invoice).

Blocking access (call it from a worker thread in the proxy); rows are never deleted.
"""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy import JSON, BigInteger, Column, Engine, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Field, SQLModel

from metering.store.bounds import is_clean
from metering.store.directory import now_us
from metering.store.ledger import ExactDecimal, StatementRow


class ReconciliationRow(SQLModel, table=True):
    __tablename__ = "reconciliations"

    id: str = Field(primary_key=True, max_length=64)
    provider: str = Field(index=True, max_length=128)
    created_us: int = Field(sa_column=Column(BigInteger, nullable=False, index=True))
    start_day: str = Field(max_length=10)  # YYYY-MM-DD, inclusive
    end_day: str = Field(max_length=10)  # YYYY-MM-DD, inclusive
    body: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class SettlementRow(SQLModel, table=True):
    __tablename__ = "settlements"

    customer: str = Field(primary_key=True, max_length=128)
    period: str = Field(primary_key=True, max_length=40)
    target: str = Field(max_length=32)  # "stripe"
    status: str = Field(max_length=16)  # "pending" | "invoiced" | "nothing_due"
    external_customer: str | None = Field(default=None, max_length=255)  # the Stripe customer id
    invoice_id: str | None = Field(default=None, max_length=255)
    total: Decimal = Field(default=Decimal(0), sa_column=Column(ExactDecimal(), nullable=False))  # the statement's
    currency: str = Field(default="USD", max_length=8)
    created_us: int = Field(sa_column=Column(BigInteger, nullable=False))
    updated_us: int = Field(sa_column=Column(BigInteger, nullable=False))
    detail: dict = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))  # items, rounding


class ReconciliationStore:
    """The runs of `payware reconcile`."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def save(self, body: dict) -> None:
        row = {"id": body["id"], "provider": body["provider"], "created_us": now_us(),
               "start_day": body["from"], "end_day": body["to"], "body": body}
        with self.engine.begin() as conn:
            conn.execute(ReconciliationRow.__table__.insert(), [row])

    def last(self, provider: str | None = None) -> dict | None:
        """The newest run (of `provider`, or of any), or None."""
        if provider is not None and not is_clean(provider):  # NOTE: the database refuses NUL and lone surrogates
            return None
        query = select(ReconciliationRow.body).order_by(ReconciliationRow.created_us.desc(),
                                                        ReconciliationRow.id.desc()).limit(1)
        if provider is not None:
            query = query.where(ReconciliationRow.provider == provider)
        with self.engine.connect() as conn:
            return conn.execute(query).scalar_one_or_none()


class SettlementStore:
    """Frozen statements, and what became of each in the payment system."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def statements(self, customer: str | None = None) -> list[dict]:
        """Every frozen statement (of one customer, or all), oldest first:
        {customer, period, total, body}."""
        query = select(StatementRow).order_by(StatementRow.customer, StatementRow.period)
        if customer is not None:
            query = query.where(StatementRow.customer == customer)
        with self.engine.connect() as conn:
            return [{"customer": r.customer, "period": r.period, "total": r.total, "body": r.body}
                    for r in conn.execute(query)]

    def get(self, customer: str, period: str) -> dict | None:
        query = select(SettlementRow).where(SettlementRow.customer == customer, SettlementRow.period == period)
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return None if row is None else _settlement(row)

    def all(self, customer: str | None = None) -> list[dict]:
        if customer is not None and not is_clean(customer):  # NOTE: no customer id holds a NUL or a lone surrogate
            return []
        query = select(SettlementRow).order_by(SettlementRow.customer, SettlementRow.period)
        if customer is not None:
            query = query.where(SettlementRow.customer == customer)
        with self.engine.connect() as conn:
            return [_settlement(row) for row in conn.execute(query)]

    def record(self, *, customer: str, period: str, target: str, status: str, external_customer: str | None,
               invoice_id: str | None, total: Decimal, currency: str, detail: dict) -> None:
        """Insert or move forward the statement's settlement.

        NOTE: a settlement never goes back: once `invoiced` (or `nothing_due`), a later write
        for the same statement changes nothing, so a late, slower run cannot undo a finished one.
        """
        table = SettlementRow.__table__
        now = now_us()
        row = {"customer": customer, "period": period, "target": target, "status": status,
               "external_customer": external_customer, "invoice_id": invoice_id, "total": total,
               "currency": currency, "created_us": now, "updated_us": now, "detail": detail}
        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        statement = dialect.insert(table).on_conflict_do_update(
            index_elements=["customer", "period"],
            set_={"status": status, "external_customer": external_customer, "invoice_id": invoice_id,
                  "updated_us": now, "detail": detail},
            where=table.c.status == "pending")
        with self.engine.begin() as conn:
            conn.execute(statement, [row])


def _settlement(row) -> dict:
    return {"customer": row.customer, "period": row.period, "target": row.target, "status": row.status,
            "external_customer": row.external_customer, "invoice_id": row.invoice_id, "total": row.total,
            "currency": row.currency, "created_us": row.created_us, "updated_us": row.updated_us,
            "detail": row.detail}
