"""Ledger schema migrations (Alembic), applied by `Ledger` on start."""
