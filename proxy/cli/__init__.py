"""The `payware` command: serve, config checks, customers and keys, usage, prices, money (reconcile, settle)."""

from proxy.cli.main import main

__all__ = ["main"]
