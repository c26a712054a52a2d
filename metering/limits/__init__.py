"""Limits: spend budgets, rate limits and real-time counters (in memory or Redis)."""
