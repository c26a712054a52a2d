"""litellm's model price database, read as a JSON file without importing litellm.

`import litellm` takes seconds and has side effects; its price map is a plain JSON file in
the package, so we locate the package and read the file. Floats are parsed as Decimal from
their text so that "1.5e-07" USD per token becomes exactly 0.15 USD per million.
"""

from __future__ import annotations

import importlib.util
import json
from decimal import ROUND_CEILING, Decimal
from functools import lru_cache
from pathlib import Path

from config.schema import ModelPrice

_PRICE_FILE = "model_prices_and_context_window_backup.json"
_MILLION = Decimal(1_000_000)
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


def lookup(model: str) -> dict | None:
    """litellm's entry for `model` (also tried without a `provider/` prefix), or None."""
    db = _database()
    entry = db.get(model)
    if entry is None and "/" in model:
        entry = db.get(model.split("/", 1)[1])
    return entry


def price_of(entry: dict) -> ModelPrice | None:
    """The per-million price of a litellm entry, or None if it has no input price."""
    per_token_in = _decimal(entry.get("input_cost_per_token"))
    if per_token_in is None:
        return None
    per_token_out = _decimal(entry.get("output_cost_per_token")) or Decimal(0)
    per_token_cached = _decimal(entry.get("cache_read_input_token_cost"))
    if per_token_cached is None:
        per_token_cached = per_token_in
    return ModelPrice(
        input=per_million(per_token_in),
        cached_input=per_million(per_token_cached),
        output=per_million(per_token_out),
        source="litellm",
    )


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
