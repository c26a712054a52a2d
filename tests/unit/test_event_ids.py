"""Event ids: unique, in the format the budget keeps as ints, and ordered by time for the ledger's index."""

from __future__ import annotations

import re
import time

from metering.limits.budget import _applied_key
from metering.store.events import new_event_id


def test_ids_are_the_prefix_and_32_hex_digits_and_the_budget_keeps_them_as_ints():
    event_id = new_event_id("req_")
    assert re.fullmatch(r"req_[0-9a-f]{32}", event_id)
    assert _applied_key(event_id) == int(event_id[4:], 16)
    assert re.fullmatch(r"rec_[0-9a-f]{32}", new_event_id("rec_"))


def test_ids_are_unique_and_a_later_millisecond_sorts_after():
    ids = [new_event_id("req_") for _ in range(50_000)]
    assert len(set(ids)) == len(ids)
    time.sleep(0.002)
    later = new_event_id("req_")
    assert later > max(ids)  # the ledger's primary-key index takes it at its end
    assert int(later[4:16], 16) >= time.time_ns() // 1_000_000 - 1_000  # the first 12 digits: the time in ms
