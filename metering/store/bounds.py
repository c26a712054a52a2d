"""What a value may be when it reaches the journal and the ledger: one rule, applied in one place.

Every event passes `bounded` before it is journaled (`Recorder.record`, and the replay):

- **Text** is valid UTF-8 without NUL. Python lets a lone surrogate into a `str` (a JSON
  escape such as "\\ud800", or a header byte that is not UTF-8, which aiohttp keeps as a
  surrogate escape); neither UTF-8 nor PostgreSQL can hold it, nor a NUL. Both become
  U+FFFD, the Unicode replacement character.
- **Text is clipped to its column**, never refused: metadata is evidence, and the call it
  describes is billed all the same. The limits are the ledger's column widths.
- **JSON values** (meta, the raw usage) are cleaned the same way, keys included, at most
  `MAX_DEPTH` deep; one larger than its byte budget is replaced by a note saying so.
- **Counts** fit the ledger's BIGINT: a count outside [0, 2**53) is clamped and the event's
  meta says so (`payware_clamped`).

Callers that can answer a client (the records API) validate the same bounds first and answer
400 naming the field; this module is the guard behind them, so no path can skip it.
"""

from __future__ import annotations

import json
import re
REPLACEMENT = "\ufffd"
_SURROGATE = re.compile("[\ud800-\udfff]")
# The ledger's column widths (metering.store.ledger.EventRow); a test keeps them in step.
TEXT_COLUMNS = {"id": 128, "customer": 128, "key_id": 64, "metric": 128, "model": 128, "upstream_model": 128,
                "provider": 128, "endpoint": 32, "currency": 8, "session": 256, "feature": 256, "status": 16,
                "period": 40}
# `pricing` and `usage_source` are written by the rating code from the config, not from input.
JSON_BYTES = {"meta": 16_384, "raw_usage": 16_384}
# Meta entries Payware writes itself (the provider's answer id, `stored: false`, a flag): a client's
# metadata too large for the budget is replaced by a note, and these are kept beside it.
PAYWARE_META = frozenset({"provider_id", "stored", "position_unknown", "admitted_in_period"})
INT_COLUMNS = ("input_tokens", "cached_input_tokens", "cache_write_tokens", "cache_write_1h_tokens",
               "output_tokens", "reasoning_tokens", "latency_ms")
MAX_COUNT = 2**53  # tokens of one call: far beyond any context window, exact in a double
MAX_DEPTH = 16
_TEXT_LIMITS = tuple(TEXT_COLUMNS.items())


def clean_text(value: str, limit: int | None = None) -> str:
    """`value` as valid UTF-8 without NUL (bad code points become U+FFFD), at most `limit` chars."""
    if "\x00" in value:
        value = value.replace("\x00", REPLACEMENT)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = _SURROGATE.sub(REPLACEMENT, value)  # only lone surrogates fail to encode
    if limit is not None and len(value) > limit:
        value = value[:limit]
    return value


def is_clean(value: str) -> bool:
    """Whether `clean_text` would leave `value` as it is (for validators that refuse instead)."""
    if "\x00" in value:
        return False
    if value.isascii():  # O(1) in CPython; the usual case, no encoding needed
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def is_clean_json(value: object, max_depth: int = MAX_DEPTH, depth: int = 0) -> bool:
    """Whether every string of `value` (keys too) is clean, at most `max_depth` levels deep (for
    validators that refuse instead of `clean_json`)."""
    if isinstance(value, str):
        return is_clean(value)
    if isinstance(value, dict):
        return depth < max_depth and all(is_clean_json(key) and is_clean_json(item, max_depth, depth + 1)
                                         for key, item in value.items())
    if isinstance(value, list):
        return depth < max_depth and all(is_clean_json(item, max_depth, depth + 1) for item in value)
    return True


def clean_json(value: object, depth: int = 0) -> object:
    """A JSON-safe copy of `value`: clean strings (keys too), plain types, at most MAX_DEPTH deep."""
    if isinstance(value, str):
        return clean_text(value)
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else str(value)
    if depth >= MAX_DEPTH:
        return "…"
    if isinstance(value, dict):
        return {clean_text(str(key)): clean_json(item, depth + 1) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json(item, depth + 1) for item in value]
    return clean_text(str(value))  # Decimal, datetime, anything else: its text


def _budgeted(value: object, budget: int) -> object:
    """`value` cleaned, or a note in its place when its JSON is larger than `budget` bytes."""
    if value is None:
        return None
    cleaned = clean_json(value)
    size = len(json.dumps(cleaned, ensure_ascii=False, separators=(",", ":")).encode())
    if size <= budget:
        return cleaned
    return {"payware_truncated": True, "bytes": size}


def bounded(event):
    """Make `event` (a UsageEvent) fit the journal and the ledger, in place; returns it. Never raises.

    Money is left as it is: the rating code keeps it exact and in range (the ledger keeps an
    event it cannot hold aside, see `Ledger.write`).
    """
    for name, limit in _TEXT_LIMITS:
        value = getattr(event, name)
        if value is None or (type(value) is str and len(value) <= limit and value.isascii()
                             and "\x00" not in value):
            continue  # the usual case, decided without encoding anything
        if not isinstance(value, str):
            value = str(value)
        if len(value) > limit or not is_clean(value):
            setattr(event, name, clean_text(value, limit))
    for name, budget in JSON_BYTES.items():
        value = getattr(event, name)
        if value is None:
            continue
        # Fast path: the usual small dict of plain strings and numbers needs no copy.
        if _plain_room(value, budget) < 0:
            cleaned = _budgeted(value, budget)
            if name != "raw_usage" and not isinstance(cleaned, dict):
                cleaned = {"value": cleaned}
            if name == "meta" and "payware_truncated" in cleaned and isinstance(value, dict):
                cleaned.update(_payware_entries(value))
            setattr(event, name, cleaned)
    clamped = [name for name in INT_COLUMNS
               if not (type(count := getattr(event, name, 0)) is int and 0 <= count < MAX_COUNT)]
    for name in clamped:  # only a hostile or broken provider reports such counts
        count = getattr(event, name)
        setattr(event, name, min(max(count, 0), MAX_COUNT - 1) if type(count) is int else 0)
    if clamped:
        event.meta = {**event.meta, "payware_clamped": clamped}
    return event


def _payware_entries(meta: dict) -> dict:
    """The PAYWARE_META entries of `meta` that are short, clean text or plain flags."""
    return {name: meta[name] for name in PAYWARE_META
            if name in meta and (type(meta[name]) is bool or (type(meta[name]) is str and len(meta[name]) <= 256
                                                              and is_clean(meta[name])))}


def _plain_room(value: object, room: int, depth: int = 0) -> int:
    """`room` less a bound on `value`'s JSON bytes when `value` is plain and small, else -1.

    Plain and small: a dict of at most 32 short, clean strings, numbers within 64 bits, such
    dicts and lists of at most 32 of them, at most 3 levels deep (what most events carry:
    metadata, a provider's usage with its details objects, Gemini's per-modality lists).
    The bound counts 6 bytes a character (a JSON escape's worst), so a value that fits it
    fits the budget `_budgeted` would measure."""
    if not isinstance(value, dict) or len(value) > 32 or depth > 2:
        return -1
    room -= 2
    for key, item in value.items():
        if type(key) is not str or len(key) > 128 or not is_clean(key):
            return -1
        room -= 6 * len(key) + 4  # quotes, colon, comma
        if type(item) is list:
            if len(item) > 32:
                return -1
            room -= 2
            for element in item:
                room = _plain_item_room(element, room, depth)
                if room < 0:
                    return -1
        else:
            room = _plain_item_room(item, room, depth)
            if room < 0:
                return -1
    return room


def _plain_item_room(item: object, room: int, depth: int) -> int:
    """`_plain_room` for one value (a list in a list is not plain: lists nest without depth)."""
    kind = type(item)
    if item is None or kind is bool:
        return room - 6
    if kind is str:
        return room - (6 * len(item) + 3) if len(item) <= 512 and is_clean(item) else -1
    if isinstance(item, dict):
        return _plain_room(item, room, depth + 1)
    if isinstance(item, int):
        return room - 21 if -(1 << 63) <= item < (1 << 64) else -1
    return -1
