"""litellm's model price database, read as a JSON file without importing litellm.

`import litellm` takes seconds and has side effects; its price map is a plain JSON file in
the package, so we locate the package and read the file. Floats are parsed as Decimal from
their text so that "1.5e-07" USD per token becomes exactly 0.15 USD per million.
"""

from __future__ import annotations

import importlib.util
import json
import re
from decimal import ROUND_CEILING, Decimal
from functools import lru_cache
from pathlib import Path

from config.schema import ModelPrice

_PRICE_FILE = "model_prices_and_context_window_backup.json"
_MILLION = Decimal(1_000_000)
_ABOVE = re.compile(r"(?:input|output)_cost_per_token_above_(\d+)k_tokens")
PRICE_PLACES = 9  # as config prices (config.loader.PRICE_PLACES)
_PLACE = Decimal(1).scaleb(-PRICE_PLACES)


def litellm_dir() -> Path | None:
    """The litellm package folder, found without importing it."""
    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


@lru_cache(maxsize=1)
def _database() -> dict:
    folder = litellm_dir()
    if folder is None or not (folder / _PRICE_FILE).is_file():
        return {}
    with open(folder / _PRICE_FILE, encoding="utf-8") as fh:
        data = json.load(fh, parse_float=Decimal)
    return {k: v for k, v in data.items() if isinstance(v, dict)}


def release() -> None:
    """Drop the parsed map (~5 MiB of RSS): read again, in ~25 ms, when next needed."""
    _database.cache_clear()


def lookup(model: str) -> dict | None:
    """litellm's entry for `model` (also tried without a `provider/` prefix), or None."""
    db = _database()
    entry = db.get(model)
    if entry is None and "/" in model:
        entry = db.get(model.split("/", 1)[1])
    return entry


def price_of(entry: dict) -> ModelPrice | None:
    """The per-million price of a litellm entry (every token class, and the prices above a
    prompt-size threshold), or None if it has no input price."""
    base = _classes(entry, "")
    if base is None:
        return None
    above = []
    for threshold in sorted(_thresholds(entry)):
        prices = _classes(entry, f"_above_{threshold // 1000}k_tokens", fallback=base)
        if prices is not None:
            above.append((threshold, ModelPrice(**prices, source="litellm")))
    return ModelPrice(**base, source="litellm", above=tuple(above))


def _classes(entry: dict, suffix: str, fallback: dict | None = None) -> dict | None:
    """The per-million prices of one set of litellm keys (`suffix`: "" or "_above_200k_tokens")."""
    def per_token(name: str) -> Decimal | None:
        return _decimal(entry.get(name + suffix))

    token_in = per_token("input_cost_per_token")
    if token_in is None:
        if fallback is None:
            return None
        token_in = fallback["input"] / _MILLION
    prices = {"input": per_million(token_in)}
    out = per_token("output_cost_per_token")
    cached = per_token("cache_read_input_token_cost")
    write = per_token("cache_creation_input_token_cost")
    write_1h = _decimal(entry.get("cache_creation_input_token_cost_above_1hr" + suffix))
    prices["output"] = per_million(out) if out is not None else (fallback or {}).get("output", Decimal(0))
    if suffix:
        # NOTE: a tier above a prompt size without its own cache prices keeps those the entry
        # gives below it, as litellm prices it (its input price there overcharged cache reads
        # ~12x on some entries); a class the entry does not price at all costs the tier's input
        cached = cached if cached is not None else _decimal(entry.get("cache_read_input_token_cost"))
        write = write if write is not None else _decimal(entry.get("cache_creation_input_token_cost"))
        if write_1h is None:
            write_1h = _decimal(entry.get("cache_creation_input_token_cost_above_1hr"))
    prices["cached_input"] = per_million(cached) if cached is not None else prices["input"]
    prices["cache_write"] = per_million(write) if write is not None else prices["input"]
    prices["cache_write_1h"] = per_million(write_1h) if write_1h is not None else prices["cache_write"]
    return prices


def _thresholds(entry: dict) -> set[int]:
    """Prompt sizes (tokens) above which the entry has other prices: `..._above_200k_tokens`."""
    found = set()
    for name in entry:
        match = _ABOVE.fullmatch(name)
        if match:
            found.add(int(match.group(1)) * 1000)
    return found


def per_million(per_token: Decimal) -> Decimal:
    """A per-token price as USD per 1M tokens, rounded UP to PRICE_PLACES (9) decimal places.

    litellm's prices are floats written with up to 17 significant digits (e.g. 2.0571428571428573e-07);
    read as their shortest decimal text, times a million, some have more places than config
    prices may (9), and every amount priced with them would have more than the 18 places the
    ledger and the counters hold. Rounding up (at most a billionth of a dollar per million
    tokens) keeps the price within the config's bound and never below the provider's.
    """
    return (per_token * _MILLION).quantize(_PLACE, rounding=ROUND_CEILING).normalize()


def _decimal(value: object) -> Decimal | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, Decimal)):
        return Decimal(value)
    return None
