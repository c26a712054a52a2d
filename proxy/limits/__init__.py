"""Admission before the provider: the gate (caps, rate limits, credits), its stores and the ledger behind them."""
