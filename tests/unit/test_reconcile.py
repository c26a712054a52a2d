"""Reconciliation's pure core: the providers' documented report shapes read into rows, compared with
the ledger's events per day and model, reported exactly (tokens by class, Decimal cost)."""

from __future__ import annotations

import json
from datetime import date, datetime, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from config.loader import parse_config
from metering.billing.reconcile import config_prices, reconcile, resolve_models, to_csv, to_table
from metering.billing.token_parts import Tokens
from metering.billing.usage_reports import ReportError, load_file, read_anthropic, read_openai
from metering.store.events import UsageEvent

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "reconcile"
CONFIG = parse_config("""
providers:
  openai: {kind: openai, api_key: sk-test}
  anthropic: {kind: anthropic, api_key: sk-ant-test}
models:
  mini: {provider: openai, upstream: gpt-4o-mini, cost: {input: "0.15", cached_input: "0.075", output: "0.60"}}
  sonnet: {provider: anthropic, upstream: claude-sonnet-4-0,
           cost: {input: "3.00", cached_input: "0.30", cache_write: "3.75", cache_write_1h: "6.00", output: "15.00"}}
plans:
  payg: {price: {markup: "1.25"}}
customers:
  acme: {plan: payg}
""", env={})
_ids = iter(range(10**6))


def event(day: int, *, provider: str = "openai", model: str = "gpt-4o-mini", input: int = 0, cached: int = 0,
          write: int = 0, write_1h: int = 0, output: int = 0, estimated: bool = False, endpoint: str = "chat",
          metric: str = "tokens", hour: int = 12) -> UsageEvent:
    return UsageEvent(id=f"req_{next(_ids)}", ts=datetime(2026, 11, day, hour, tzinfo=timezone.utc) if day else
                      datetime(2026, 10, 31, 23, 59, tzinfo=timezone.utc), customer="acme", key_id=None,
                      metric=metric, quantity=Decimal(input + output), period="2026-11-01T00:00:00+00:00",
                      model="mini", upstream_model=model, provider=provider, endpoint=endpoint,
                      input_tokens=input, cached_input_tokens=cached, cache_write_tokens=write,
                      cache_write_1h_tokens=write_1h, output_tokens=output, estimated=estimated,
                      status="partial" if estimated else "ok")


def tokens(input=0, cached_input=0, cache_write=0, cache_write_1h=0, output=0) -> dict:
    return {"input": input, "cached_input": cached_input, "cache_write": cache_write, "cache_write_1h": cache_write_1h,
            "output": output, "total": input + output}


ZERO = {"tokens": tokens(), "cost": "0.00"}

# OpenAI, the hand-built case: day 1 matched; day 2 the provider billed a request Payware never saw
# (800 input, 250 output); day 3 a stream Payware could only estimate (cut before the provider's usage).
OPENAI_EVENTS = [
    event(1, input=600, cached=200, output=100), event(1, input=500, cached=200, output=100),
    event(1, input=400, cached=100, output=100),
    event(2, input=1200, output=150),
    event(3, input=1000, output=90, estimated=True),
    # none of these is compared: an embedding (another report), another provider, a custom metric, out of range
    event(1, input=50, endpoint="embeddings"), event(1, provider="anthropic", model="claude-sonnet-4-0", input=7),
    event(2, metric="agent_actions", model=None, provider=None), event(0, input=5, output=5),
]
OPENAI_ROWS = [
    {"day": "2026-11-01", "status": "matched",
     # 1000 x 0.15 + 500 x 0.075 + 300 x 0.60 = 367.5 per million
     "provider": {"tokens": tokens(1500, 500, output=300), "cost": "0.0003675", "requests": 3},
     "payware": {"tokens": tokens(1500, 500, output=300), "cost": "0.0003675", "requests": 3},
     "matched": {"tokens": tokens(1500, 500, output=300), "cost": "0.0003675"},
     "provider_only": ZERO, "payware_only": ZERO, "estimated": {**ZERO, "requests": 0}},
    {"day": "2026-11-02", "status": "provider_only",
     "provider": {"tokens": tokens(2000, output=400), "cost": "0.00054", "requests": 2},
     "payware": {"tokens": tokens(1200, output=150), "cost": "0.00027", "requests": 1},
     "matched": {"tokens": tokens(1200, output=150), "cost": "0.00027"},
     "provider_only": {"tokens": tokens(800, output=250), "cost": "0.00027"},  # 800 x 0.15 + 250 x 0.60
     "payware_only": ZERO, "estimated": {**ZERO, "requests": 0}},
    {"day": "2026-11-03", "status": "provider_only",
     "provider": {"tokens": tokens(1000, output=120), "cost": "0.000222", "requests": 1},
     "payware": {**ZERO, "requests": 0},
     "matched": ZERO,
     "provider_only": {"tokens": tokens(1000, output=120), "cost": "0.000222"},
     "payware_only": ZERO,
     "estimated": {"tokens": tokens(1000, output=90), "cost": "0.000204", "requests": 1}},  # Payware's guess
]
OPENAI_TOTALS = {"provider": {"tokens": tokens(4500, 500, output=820), "cost": "0.0011295"},
                 "payware": {"tokens": tokens(2700, 500, output=450), "cost": "0.0006375"},
                 "matched": {"tokens": tokens(2700, 500, output=450), "cost": "0.0006375"},
                 "provider_only": {"tokens": tokens(1800, output=370), "cost": "0.000492"},
                 "payware_only": ZERO,
                 "estimated": {"tokens": tokens(1000, output=90), "cost": "0.000204"}}

# Anthropic: day 1 (the reference's example numbers) matched through the alias claude-sonnet-4-0;
# day 2 a connection cut before the answer, which the provider still billed (400 input, 100 output).
ANTHROPIC_EVENTS = [
    event(1, provider="anthropic", model="claude-sonnet-4-0", input=3200, cached=200, write=1500, write_1h=1000,
          output=500),
    event(2, provider="anthropic", model="claude-sonnet-4-0", input=2000, output=500),
]
ANTHROPIC_ROWS = [
    {"day": "2026-11-01", "status": "matched",
     # 1500 x 3 + 200 x 0.30 + 500 x 3.75 + 1000 x 6 + 500 x 15 = 19935 per million
     "provider": {"tokens": tokens(3200, 200, 1500, 1000, 500), "cost": "0.019935", "requests": None},
     "payware": {"tokens": tokens(3200, 200, 1500, 1000, 500), "cost": "0.019935", "requests": 1},
     "matched": {"tokens": tokens(3200, 200, 1500, 1000, 500), "cost": "0.019935"},
     "provider_only": ZERO, "payware_only": ZERO, "estimated": {**ZERO, "requests": 0}},
    {"day": "2026-11-02", "status": "provider_only",
     "provider": {"tokens": tokens(2400, output=600), "cost": "0.0162", "requests": None},
     "payware": {"tokens": tokens(2000, output=500), "cost": "0.0135", "requests": 1},
     "matched": {"tokens": tokens(2000, output=500), "cost": "0.0135"},
     "provider_only": {"tokens": tokens(400, output=100), "cost": "0.0027"},
     "payware_only": ZERO, "estimated": {**ZERO, "requests": 0}},
]


def run(kind: str, events: list[UsageEvent], *, api_key_ids: tuple[str, ...] = (), days: tuple[int, int] = (1, 3),
        report: list | None = None) -> dict:
    name = "openai_usage_completions.json" if kind == "openai" else "anthropic_usage_report_messages.json"
    rows = report if report is not None else (read_openai if kind == "openai" else read_anthropic)(load_file(FIXTURES / name))
    return reconcile(provider=kind, kind=kind, start=date(2026, 11, days[0]), end=date(2026, 11, days[1]),
                     report=rows, events=events, price_of=config_prices(CONFIG, kind), source="file",
                     api_key_ids=api_key_ids)


def shown(report: dict) -> list[dict]:
    keys = ("day", "status", "provider", "payware", "matched", "provider_only", "payware_only", "estimated")
    return [{key: row[key] for key in keys} for row in report["rows"]]


@pytest.mark.parametrize("kind, events, key_ids, days, rows", [
    ("openai", OPENAI_EVENTS, ("key_payware",), (1, 3), OPENAI_ROWS),
    ("anthropic", ANTHROPIC_EVENTS, (), (1, 2), ANTHROPIC_ROWS),
], ids=["openai", "anthropic"])
def test_hand_built_case_is_reported_exactly(kind, events, key_ids, days, rows):
    report = run(kind, events, api_key_ids=key_ids, days=days)
    assert shown(report) == rows
    assert report["status"] == "differences" and report["notes"] == []
    models = {row["model"] for row in report["rows"]}
    assert models == ({"gpt-4o-mini"} if kind == "openai" else {"claude-sonnet-4-0"})  # snapshots resolved
    assert report["rows"][0]["provider_models"] == (["gpt-4o-mini-2024-07-18"] if kind == "openai"
                                                    else ["claude-sonnet-4-20250514"])


def test_openai_totals_add_the_rows_exactly():
    report = run("openai", OPENAI_EVENTS, api_key_ids=("key_payware",))
    assert report["totals"] == OPENAI_TOTALS
    assert json.loads(json.dumps(report)) == report  # plain JSON: money as strings


def test_another_apps_key_on_the_same_organization_shows_as_provider_only_unless_narrowed():
    report = run("openai", OPENAI_EVENTS)  # no --api-key-id: the other app's 999 + 99 tokens count
    day1 = report["rows"][0]
    assert day1["status"] == "provider_only"
    assert day1["provider_only"] == {"tokens": tokens(999, output=99), "cost": "0.00020925"}
    assert day1["provider"]["requests"] == 4


def test_anthropic_extras_are_kept_and_requests_are_not_invented():
    report = run("anthropic", ANTHROPIC_EVENTS, days=(1, 2))
    assert report["rows"][0]["provider_extra"] == {"web_search_requests": 10}
    assert report["rows"][0]["provider"]["requests"] is None  # Anthropic's report does not count requests


def test_payware_only_and_mismatch_in_disjoint_parts():
    # Payware billed 100 uncached input the provider says were cache reads: both sides see 100 input
    # tokens, but not at the same price, so each side has a part the other lacks.
    report = reconcile(provider="openai", kind="openai", start=date(2026, 11, 1), end=date(2026, 11, 1),
                       report=[], events=[event(1, input=100, output=10)], price_of=config_prices(CONFIG, "openai"),
                       source="file")
    assert report["rows"][0]["status"] == "payware_only"
    assert report["rows"][0]["provider"]["requests"] == 0
    from metering.billing.usage_reports import ProviderUsage

    theirs = [ProviderUsage(day=date(2026, 11, 1), model="gpt-4o-mini", api_key_id=None,
                            tokens=Tokens.from_classes(input=100, cached_input=100, output=10), requests=1)]
    report = reconcile(provider="openai", kind="openai", start=date(2026, 11, 1), end=date(2026, 11, 1),
                       report=theirs, events=[event(1, input=100, output=10)],
                       price_of=config_prices(CONFIG, "openai"), source="file")
    row = report["rows"][0]
    assert row["status"] == "mismatch"
    assert row["provider_only"] == {"tokens": tokens(100, 100), "cost": "0.0000075"}  # 100 x 0.075
    assert row["payware_only"] == {"tokens": tokens(100), "cost": "0.000015"}  # 100 x 0.15
    assert row["matched"]["tokens"] == tokens(output=10)


def test_a_model_without_price_has_null_cost_and_a_note():
    from metering.billing.usage_reports import ProviderUsage

    theirs = [ProviderUsage(day=date(2026, 11, 1), model="no-such-model-anywhere", api_key_id=None,
                            tokens=Tokens(uncached=10), requests=1)]
    report = reconcile(provider="openai", kind="openai", start=date(2026, 11, 1), end=date(2026, 11, 1),
                       report=theirs, events=[], price_of=config_prices(CONFIG, "openai"), source="file")
    assert report["rows"][0]["provider_only"]["cost"] is None and report["totals"]["provider_only"]["cost"] == "0.00"
    assert "no provider price for no-such-model-anywhere" in report["notes"][0]


@pytest.mark.parametrize("provider_names, payware_names, expected", [
    (["gpt-4o-mini-2024-07-18"], ["gpt-4o-mini"], {"gpt-4o-mini-2024-07-18": "gpt-4o-mini"}),
    (["gpt-4o-mini"], ["gpt-4o-mini"], {"gpt-4o-mini": "gpt-4o-mini"}),
    (["claude-sonnet-4-20250514"], ["claude-sonnet-4-0"], {"claude-sonnet-4-20250514": "claude-sonnet-4-0"}),
    (["claude-3-5-haiku-20241022"], ["claude-3-5-haiku-latest"],
     {"claude-3-5-haiku-20241022": "claude-3-5-haiku-latest"}),
    # two Payware names could be it: no guess, the provider's name stays
    (["gpt-4o-2024-08-06"], ["gpt-4o", "gpt-4o-latest"], {"gpt-4o-2024-08-06": "gpt-4o-2024-08-06"}),
    (["gpt-4o"], ["gpt-4o-mini"], {"gpt-4o": "gpt-4o"}),
])
def test_snapshot_and_alias_names_resolve_to_the_payware_model(provider_names, payware_names, expected):
    assert resolve_models(provider_names, payware_names) == expected


def _page(results: list, **bucket) -> dict:
    return {"object": "page", "data": [{"object": "bucket", "start_time": 1793491200, "end_time": 1793577600,
                                        "results": results, **bucket}], "has_more": False, "next_page": None}


GOOD = {"object": "organization.usage.completions.result", "input_tokens": 10, "output_tokens": 1,
        "num_model_requests": 1, "model": "gpt-4o-mini", "api_key_id": None}


@pytest.mark.parametrize("reader, pages, message", [
    (read_openai, [{"object": "page"}], "data: must be a list (is this a usage report?)"),
    (read_openai, [_page([{**GOOD, "output_tokens": -1}])], "data[0].results[0].output_tokens: -1 is not a count"),
    (read_openai, [_page([{**GOOD, "input_tokens": "10"}])], "data[0].results[0].input_tokens: '10' is not a count"),
    (read_openai, [_page([{k: v for k, v in GOOD.items() if k != "num_model_requests"}])],
     "data[0].results[0].num_model_requests: is required"),
    (read_openai, [_page([{**GOOD, "model": None}])], "the report must be grouped by model"),
    (read_openai, [_page([{**GOOD, "object": "organization.usage.embeddings.result"}])],
     "is not a completions usage result"),
    (read_openai, [_page([{**GOOD, "input_cached_tokens": 11}])], "exceed the input (10)"),
    (read_openai, [_page([GOOD], start_time="yesterday")], "data[0].start_time: 'yesterday' is not a count"),
    (read_openai, [_page([GOOD]), _page(["x"])], "[1].data[0].results[0]: must be an object"),
    (read_anthropic, [{"data": [{"starting_at": "soon", "results": []}]}], "data[0].starting_at: 'soon' is not an RFC 3339"),
    (read_anthropic, [{"data": [{"results": []}]}], "data[0].starting_at: is required"),
    (read_anthropic, [{"data": [{"starting_at": "2026-11-01T00:00:00Z",
                                 "results": [{"uncached_input_tokens": 1, "output_tokens": 1, "model": "m",
                                              "cache_creation": {"ephemeral_5m_input_tokens": 1.5}}]}]}],
     "data[0].results[0].cache_creation.ephemeral_5m_input_tokens: 1.5 is not a count"),
])
def test_malformed_reports_are_clear_errors(reader, pages, message):
    with pytest.raises(ReportError) as caught:
        reader(pages)
    assert message in str(caught.value)


@pytest.mark.parametrize("content, message", [
    ("{not json", "not JSON"), ("[]", "must be a usage report page"), ("[1, 2]", "must be a usage report page"),
    (b"\xff\xfe", "not UTF-8"),
])
def test_malformed_files_are_clear_errors(tmp_path, content, message):
    path = tmp_path / "report.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ReportError, match=message):
        load_file(path)
    with pytest.raises(ReportError, match="cannot read file"):
        load_file(tmp_path / "missing.json")


def test_csv_and_table_show_every_row_and_the_totals():
    report = run("openai", OPENAI_EVENTS, api_key_ids=("key_payware",))
    lines = to_csv(report).splitlines()
    header = lines[0].split(",")
    assert len(lines) == 4 and header[:3] == ["day", "model", "status"]
    day2 = dict(zip(header, lines[2].split(",")))
    assert day2["provider_only_input"] == "800" and day2["provider_only_cost"] == "0.00027"
    assert day2["provider_requests"] == "2" and day2["payware_requests"] == "1"
    table = to_table(report)
    assert "2026-11-02  gpt-4o-mini  provider_only" in table
    assert "1,050 ($0.00027)" in table  # provider-only of day 2: 800 + 250 tokens
    assert table.splitlines()[-1].startswith("total")


def test_a_range_that_ends_before_it_starts_is_refused():
    with pytest.raises(ValueError, match="ends"):
        run("openai", [], days=(3, 1))


def test_narrowing_to_a_key_needs_a_report_grouped_by_key():
    rows = read_openai([_page([GOOD])])
    with pytest.raises(ValueError, match="not grouped by api_key_id"):
        run("openai", [], api_key_ids=("key_payware",), report=rows)
