"""What reaches the journal and the ledger: the fast path for plain values gives what cleaning gives."""

from __future__ import annotations

import pytest

from metering.store.bounds import JSON_BYTES, _budgeted, bounded
from tests.integration.test_ledger_postgres import event

GEMINI_USAGE = {"promptTokenCount": 9, "candidatesTokenCount": 12, "totalTokenCount": 21,
                "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 9}],
                "candidatesTokensDetails": [{"modality": "TEXT", "tokenCount": 12}]}


@pytest.mark.parametrize("raw_usage", [
    pytest.param(GEMINI_USAGE, id="gemini per-modality lists (the fast path)"),
    pytest.param({"prompt_tokens": 3, "details": {"cached": 1, "more": {"deep": True}}}, id="nested details"),
    pytest.param({"list": [1, "two", None, {"k": "v"}]}, id="a list of plain items"),
    pytest.param({"list": [["nested"]]}, id="a list in a list: cleaned"),
    pytest.param({"list": ["bad \ud800 text"]}, id="a lone surrogate in a list: cleaned"),
    pytest.param({"list": ["x" * 600]}, id="a long string in a list"),
    pytest.param({"list": list(range(40))}, id="a long list"),
    pytest.param({"list": [1.5, float("nan")]}, id="floats: cleaned"),
    pytest.param({"list": ["y" * 500] * 32, "more": ["z" * 500] * 32}, id="too big for the budget: a note"),
    pytest.param({f"k{i}": {f"j{j}": "w" * 500 for j in range(32)} for i in range(32)}, id="32 x 32 short strings"),
    pytest.param({"tokens": 10 ** 40}, id="an int beyond 64 bits"),
])
def test_a_value_is_kept_as_cleaning_would_keep_it(raw_usage):
    kept = bounded(event(0, "0.01", raw_usage=raw_usage)).raw_usage
    assert kept == _budgeted(raw_usage, JSON_BYTES["raw_usage"])  # NaN included: both make it the text "nan"
    assert "\ud800" not in str(kept)


def test_a_providers_usage_needs_no_copy():
    """The fast path: Gemini's usage (lists of per-modality dicts) is kept as it came, not rebuilt."""
    assert bounded(event(0, "0.01", raw_usage=GEMINI_USAGE)).raw_usage is GEMINI_USAGE


def test_paywares_own_meta_stays_when_a_clients_metadata_is_cut():
    """A client's metadata over the budget becomes a note; the provider's answer id Payware wrote
    beside it stays (it makes the caller the owner of a Responses response: metering.store.owned)."""
    meta = {"provider_id": "resp_1", "stored": False, "metadata": {f"k{i}": "€" * 512 for i in range(16)},
            "position_unknown": True}
    kept = bounded(event(0, "0.01", meta=meta)).meta
    assert kept["payware_truncated"] is True and "metadata" not in kept
    assert (kept["provider_id"], kept["stored"], kept["position_unknown"]) == ("resp_1", False, True)
    huge = bounded(event(0, "0.01", meta={**meta, "provider_id": "r" * 10_000})).meta
    assert "provider_id" not in huge  # not a way around the budget
