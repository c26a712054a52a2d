"""What a counter store raises when it cannot answer: an outage, not a refusal.

redis-py's errors belong here once redis-py is loaded. Only a Redis store loads it, and nothing
else raises them, so a proxy on in-process counters (the embedded default) never imports it
(~7 MiB of memory and ~50 ms of start-up). Use them as `except store_down():` — Python evaluates
an `except` clause only while an exception is being matched, so the check costs no call
that does not fail.
"""

from __future__ import annotations

import sys

_OS_ERRORS: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError, OSError)


def store_down() -> tuple[type[BaseException], ...]:
    """The store could not be reached or did not answer in time (admission's outage policy)."""
    redis = sys.modules.get("redis.exceptions")
    return _OS_ERRORS if redis is None else (redis.ConnectionError, redis.TimeoutError, *_OS_ERRORS)


def counters_down() -> tuple[type[BaseException], ...]:
    """Any error of the counters' store, a refused script included: the event is in the ledger,
    and the counters are resynced from it."""
    redis = sys.modules.get("redis.exceptions")
    return _OS_ERRORS if redis is None else (redis.RedisError, *_OS_ERRORS)
