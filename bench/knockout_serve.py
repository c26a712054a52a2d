"""`payware serve` with one part of the request path switched off, for bench/knockout.py.

    python bench/knockout_serve.py PART serve --config ... --port ...

The patch is applied here, in the Payware process under test, before its CLI runs: the product's
code has no switch for it. Parts that the product can switch off itself use its own switches
(PAYWARE_ACCESS_LOG, PAYWARE_METRICS), set by knockout.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _metering() -> None:
    """No pricing, event, journal line, counters or settlement: the reservation is given back."""
    from proxy.calls import Call

    async def record(self, reported, status, output_text=lambda: ""):
        await self.release()

    Call.record = record


def _journal() -> None:
    """The event is priced, counted and queued for the ledger, but not serialized to the journal."""
    from metering.store.journal import Journal

    Journal.append = lambda self, event: None


def _ledger() -> None:
    """The ledger writer thread takes its batches and writes nothing."""
    from metering.store.recorder import Recorder

    Recorder._write = lambda self, batch: None


def _prompt() -> None:
    """Admission takes the body's bytes as the prompt's tokens instead of counting them."""
    from proxy.limits.admission import Gate

    async def bound_prompt(self, fmt, body, model, size):
        return size, True

    Gate._bound_prompt = bound_prompt


PATCHES = {"metering": _metering, "journal": _journal, "ledger": _ledger, "prompt": _prompt}


def main() -> int:
    part, argv = sys.argv[1], sys.argv[2:]
    if part in PATCHES:
        PATCHES[part]()
    from proxy.cli.main import main as cli

    return cli(argv)


if __name__ == "__main__":
    sys.exit(main())
