"""`payware serve` on a moved clock, for tests of what happens at a period's end.

    PAYWARE_TEST_NOW=2026-03-01T23:59:54+00:00 python -m tests.fakes.clock_serve serve --config ...

Payware's time is `metering.store.events.utcnow`: moved here, before any other module binds it,
to start at PAYWARE_TEST_NOW and run on at the real pace. The product has no such switch.
"""

from __future__ import annotations

import os
import sys
from datetime import datetime, timezone

import metering.store.events as events

_real = events.utcnow
_offset = datetime.fromisoformat(os.environ["PAYWARE_TEST_NOW"]) - datetime.now(timezone.utc)
events.utcnow = lambda: _real() + _offset

from proxy.cli.main import main  # noqa: E402  (after the clock moved: every module binds the moved one)

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
