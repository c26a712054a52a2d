"""Credit grants, kept in the ledger database: each one once, by its idempotency key.

A grant is never changed or deleted (an expired grant is simply past its `expires_us`): what
usage drew from each is computed from the events (`metering.billing.credits`). A new grant
bumps the runtime directory's version, so every proxy sharing the database reloads the
customer's credits within a second.

An expiry from outside is bounded before it is written (`proxy.admin_ops.instant_us`); one read
back that no `datetime` holds (written by an older version) makes its grant expired when made
(see `CreditStore._grant`).
"""

from __future__ import annotations

import logging
from datetime import datetime
from decimal import Decimal

from sqlalchemy import BigInteger, Column, Engine, String, UniqueConstraint, select
from sqlmodel import Field, SQLModel

from metering.billing.credits import Grant
from metering.store.directory import _bump, moment_of, now_us, readable

log = logging.getLogger("payware.credits")


class CreditGrantRow(SQLModel, table=True):
    __tablename__ = "credit_grants"
    __table_args__ = (UniqueConstraint("customer", "idempotency_key", name="uq_credit_grants_key"),)

    id: str = Field(primary_key=True, max_length=64)
    customer: str = Field(index=True, max_length=128)
    amount: str = Field(sa_column=Column(String(64), nullable=False))  # exact decimal text
    priority: int = 0
    expires_us: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    reason: str = Field(default="", max_length=256)
    idempotency_key: str = Field(max_length=255)
    created_us: int = Field(sa_column=Column(BigInteger, nullable=False))


def _at(us: int | None) -> datetime | None:
    return None if us is None else moment_of(us)


def grant_of(row) -> Grant:
    """The grant of a row; an expiry that no `datetime` holds reads as its creation (expired)."""
    expires_us = row.expires_us if row.expires_us is None or readable(row.expires_us) else row.created_us
    return Grant(id=row.id, amount=Decimal(row.amount), created=_at(row.created_us), expires=_at(expires_us),
                 priority=row.priority, reason=row.reason)


class CreditStore:
    """Blocking access to the grants (call it from a worker thread)."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._unreadable: set[str] = set()  # grants whose expiry could not be read, told once each

    def _grant(self, row) -> Grant:
        """`grant_of(row)`, telling once of a grant whose expiry could not be read.

        NOTE: such an expiry (year 10000 in UTC, written before `instant_us` bounded it) read as
        it is failed every read of the customer's grants: its every call and its credit list
        answered 500. Read as expired when made, the grant gives nothing (the safe side: its
        amount shows as expired unused) and the customer is served on its other grants.
        """
        if row.expires_us is not None and not readable(row.expires_us) and row.id not in self._unreadable:
            self._unreadable.add(row.id)
            log.warning("credit grant %s of %s has an expiry no date can hold (%r): it counts as expired",
                        row.id, row.customer, row.expires_us)
        return grant_of(row)

    def grant(self, *, id: str, customer: str, amount: Decimal, priority: int, expires_us: int | None,
              reason: str, idempotency_key: str) -> tuple[Grant, bool]:
        """Record a grant; (the grant, True) if new, (the earlier one, False) for a replayed key."""
        table = CreditGrantRow.__table__
        with self.engine.begin() as conn:
            earlier = conn.execute(select(CreditGrantRow).where(
                CreditGrantRow.customer == customer, CreditGrantRow.idempotency_key == idempotency_key)).first()
            if earlier is not None:
                return self._grant(earlier), False
            conn.execute(table.insert().values(id=id, customer=customer, amount=str(amount), priority=priority,
                                               expires_us=expires_us, reason=reason,
                                               idempotency_key=idempotency_key, created_us=now_us()))
            _bump(conn)
            row = conn.execute(select(CreditGrantRow).where(CreditGrantRow.id == id)).first()
        return self._grant(row), True

    def grants(self, customer: str) -> list[Grant]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(CreditGrantRow).where(CreditGrantRow.customer == customer)
                                .order_by(CreditGrantRow.created_us, CreditGrantRow.id))
            return [self._grant(row) for row in rows]

    def customers(self) -> set[str]:
        with self.engine.connect() as conn:
            return {row[0] for row in conn.execute(select(CreditGrantRow.customer).distinct())}



