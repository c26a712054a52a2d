"""`payware reconcile` end to end: the provider's usage API (a local fake serving the documented
shapes, page by page) or an exported file, against a real ledger; the run saved and served by
`GET /v1/admin/reconciliation`; bad input is one clear line and exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from metering.store.ledger import Ledger
from proxy.cli.main import main
from tests.conftest import ADMIN_KEY, KEYS, ROOT, key_hash, python_env
from tests.integration.test_settle_stripe import ledger_url  # noqa: F401 - a fixture: SQLite and PostgreSQL
from tests.unit.test_reconcile import (ANTHROPIC_EVENTS, ANTHROPIC_ROWS, FIXTURES, OPENAI_EVENTS, OPENAI_ROWS,
                                       shown)

PROVIDER_ADMIN_KEY = "sk-admin-reconcile-0123456789"
OPENAI_FILE = FIXTURES / "openai_usage_completions.json"
ANTHROPIC_FILE = FIXTURES / "anthropic_usage_report_messages.json"


@pytest.fixture(scope="module")
def reports() -> Iterator[str]:
    """The fake usage report endpoints, as a server process."""
    proc = subprocess.Popen([sys.executable, "-m", "tests.fakes.usage_reports", "--port", "0", "--admin-key",
                             PROVIDER_ADMIN_KEY, "--openai", str(OPENAI_FILE), "--anthropic", str(ANTHROPIC_FILE)],
                            cwd=ROOT, env=python_env(), stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    assert line.startswith("LISTENING "), line
    yield line.split()[1]
    proc.terminate()
    proc.wait(10)


def config_text(folder: Path, reports_url: str, *, admin_key: str = PROVIDER_ADMIN_KEY) -> str:
    return f"""
server: {{host: 127.0.0.1, admin_key: "{ADMIN_KEY}"}}
storage: {{ledger: "sqlite:///{folder}/ledger.db", journal: "{folder}/payware.journal", flush_interval: 0.05}}
providers:
  openai: {{kind: openai, base_url: "{reports_url}/v1", api_key: sk-proxy-key, admin_key: "{admin_key}"}}
  anthropic: {{kind: anthropic, base_url: "{reports_url}", api_key: sk-ant-proxy-key, admin_key: "{admin_key}"}}
  keyless: {{kind: openai, base_url: "{reports_url}/v1", api_key: sk-proxy-key}}
  gemini: {{kind: gemini, api_key: AIza-not-used-0123456789012345}}
models:
  mini: {{provider: openai, upstream: gpt-4o-mini, cost: {{input: "0.15", cached_input: "0.075", output: "0.60"}}}}
  sonnet: {{provider: anthropic, upstream: claude-sonnet-4-0,
           cost: {{input: "3.00", cached_input: "0.30", cache_write: "3.75", cache_write_1h: "6.00", output: "15.00"}}}}
plans:
  payg: {{price: {{markup: "1.25"}}}}
customers:
  acme: {{plan: payg, keys: ["{key_hash(KEYS['acme'])}"]}}
"""


@pytest.fixture
def setup(tmp_path, reports) -> Path:
    """A config whose ledger holds the hand-built events of both providers."""
    path = tmp_path / "payware.yaml"
    path.write_text(config_text(tmp_path, reports))
    ledger = Ledger(f"sqlite:///{tmp_path}/ledger.db")
    # the OpenAI case's stray Anthropic event would be Payware-only in the Anthropic case: left out here
    ledger.insert([e for e in OPENAI_EVENTS if e.provider != "anthropic"] + ANTHROPIC_EVENTS)
    ledger.close()
    return path


def payware(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def fake_queries(url: str) -> list[dict]:
    with urllib.request.urlopen(url + "/_stats") as response:
        return json.loads(response.read())["queries"]


@pytest.mark.parametrize("provider, to, key_ids, rows", [
    ("openai", "2026-11-03", ["--api-key-id", "key_payware"], OPENAI_ROWS),
    ("anthropic", "2026-11-02", [], ANTHROPIC_ROWS),
])
def test_reconcile_reads_every_page_of_the_providers_api_and_reports_the_hand_built_case(
        capsys, setup, reports, provider, to, key_ids, rows):
    before = len(fake_queries(reports))
    code, out, err = payware(capsys, "reconcile", provider, "--from", "2026-11-01", "--to", to, *key_ids, "--json",
                             "--config", str(setup))
    assert code == 0, err
    report = json.loads(out)
    assert shown(report) == rows and report["source"] == "api"
    queries = fake_queries(reports)[before:]
    assert len(queries) == 2  # two pages, the second asked for by the first's next_page
    first, second = (dict(q["query"]) for q in queries)
    assert "page" not in first and second["page"] == json.loads((OPENAI_FILE if provider == "openai" else ANTHROPIC_FILE)
                                                                 .read_text())[0]["next_page"]
    grouping = [value for name, value in queries[0]["query"] if name.startswith("group_by")]
    assert grouping == ["model", "api_key_id"] and first["bucket_width"] == "1d"
    if provider == "openai":
        assert first["start_time"] == "1793491200" and first["end_time"] == "1793750400"  # days 1-3, end exclusive
        assert first["api_key_ids"] == "key_payware"
    else:
        assert first["starting_at"] == "2026-11-01T00:00:00Z" and first["ending_at"] == "2026-11-03T00:00:00Z"
    assert PROVIDER_ADMIN_KEY not in out + err


def test_an_exported_file_gives_the_same_report_as_csv_and_as_a_table(capsys, setup):
    code, out, _ = payware(capsys, "reconcile", "openai", "--from", "2026-11-01", "--to", "2026-11-03",
                           "--file", str(OPENAI_FILE), "--api-key-id", "key_payware", "--json", "--config", str(setup))
    assert code == 0 and shown(json.loads(out)) == OPENAI_ROWS
    code, out, _ = payware(capsys, "reconcile", "openai", "--from", "2026-11-01", "--to", "2026-11-03",
                           "--file", str(OPENAI_FILE), "--api-key-id", "key_payware", "--csv", "--no-save",
                           "--config", str(setup))
    assert code == 0 and len(out.splitlines()) == 4 and out.startswith("day,model,status,")
    code, out, _ = payware(capsys, "reconcile", "openai", "--from", "2026-11-01", "--to", "2026-11-03",
                           "--file", str(OPENAI_FILE), "--api-key-id", "key_payware", "--config", str(setup))
    assert code == 0
    assert "2026-11-03  gpt-4o-mini  provider_only" in out and "1,090 ($0.000204)" in out  # the estimate, apart


def test_the_last_run_and_the_settlements_are_served_to_the_admin_only(capsys, setup, proxy_factory):
    code, out, _ = payware(capsys, "reconcile", "openai", "--from", "2026-11-01", "--to", "2026-11-03",
                           "--file", str(OPENAI_FILE), "--api-key-id", "key_payware", "--json", "--config", str(setup))
    assert code == 0
    saved = json.loads(out)
    from decimal import Decimal

    from metering.store.money_runs import SettlementStore

    ledger = Ledger(f"sqlite:///{setup.parent}/ledger.db")
    SettlementStore(ledger.engine).record(customer="acme", period="2026-11-01T00:00:00+00:00", target="stripe",
                                          status="invoiced", external_customer="cus_acme", invoice_id="in_1",
                                          total=Decimal("3.01"), currency="USD", detail={})
    ledger.close()
    proxy = proxy_factory(setup.read_text())

    def get(path: str, key: str) -> tuple[int, dict]:
        request = urllib.request.Request(proxy.url + path, headers={"Authorization": f"Bearer {key}"})
        try:
            with urllib.request.urlopen(request) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    assert get("/v1/admin/reconciliation", ADMIN_KEY) == (200, saved)
    assert get("/v1/admin/reconciliation?provider=openai", ADMIN_KEY) == (200, saved)
    status, body = get("/v1/admin/reconciliation?provider=anthropic", ADMIN_KEY)
    assert status == 404 and body["error"]["code"] == "reconciliation_not_found"
    status, body = get("/v1/admin/reconciliation", KEYS["acme"])
    assert status == 403
    status, body = get("/v1/admin/settlements", ADMIN_KEY)
    assert status == 200 and body["object"] == "list"
    assert [(s["customer"], s["invoice_id"], s["status"], s["total"]) for s in body["data"]] == [
        ("acme", "in_1", "invoiced", "3.01")]
    assert get("/v1/admin/settlements?customer=globex", ADMIN_KEY)[1]["data"] == []
    assert get("/v1/admin/settlements", KEYS["acme"])[0] == 403


@pytest.mark.parametrize("args, message", [
    (["nobody", "--from", "2026-11-01", "--to", "2026-11-03"], "no provider 'nobody'"),
    (["gemini", "--from", "2026-11-01", "--to", "2026-11-03"], "is of kind gemini"),
    (["openai", "--from", "2026-11-31", "--to", "2026-12-01"], "--from '2026-11-31' is not a date"),
    (["openai", "--from", "2026-11-03", "--to", "2026-11-01"], "--to 2026-11-01 is before --from 2026-11-03"),
    (["openai", "--from", "2025-01-01", "--to", "2026-11-01"], "reconcile a year at most"),
    (["keyless", "--from", "2026-11-01", "--to", "2026-11-03"], "providers.keyless.admin_key is not set"),
    (["openai", "--from", "2026-11-01", "--to", "2026-11-03", "--file", "MALFORMED"], "not JSON"),
    (["openai", "--from", "2026-11-01", "--to", "2026-11-03", "--file", "ANTHROPIC"],
     "this is Anthropic's usage report, not OpenAI's"),
    (["openai", "--from", "2026-11-01", "--to", "2026-11-03", "--file", "/nonexistent.json"], "cannot read file"),
])
def test_bad_input_is_one_clear_line_and_exit_2(capsys, setup, tmp_path, args, message):
    malformed = tmp_path / "malformed.json"
    malformed.write_text('{"data": [')
    args = [{"MALFORMED": str(malformed), "ANTHROPIC": str(ANTHROPIC_FILE)}.get(a, a) for a in args]
    code, out, err = payware(capsys, "reconcile", *args, "--config", str(setup))
    assert code == 2 and message in err and out == "", err
    assert len(err.strip().splitlines()) == 1


def test_a_refused_admin_key_is_exit_1_with_the_providers_message_and_never_the_key(tmp_path, reports):
    path = tmp_path / "payware.yaml"
    path.write_text(config_text(tmp_path, reports, admin_key="sk-admin-wrong-key-000000"))
    result = subprocess.run([sys.executable, "-m", "proxy.cli.main", "reconcile", "anthropic", "--from", "2026-11-01",
                             "--to", "2026-11-02", "--config", str(path)], cwd=ROOT, env=python_env(),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "answered 401: invalid x-api-key" in result.stderr and "admin key" in result.stderr
    assert "sk-admin-wrong-key-000000" not in result.stdout + result.stderr


def test_a_run_is_kept_in_the_ledger_database_and_read_back_whole(capsys, tmp_path, reports, ledger_url):
    path = tmp_path / "payware.yaml"
    path.write_text(config_text(tmp_path, reports).replace(f"sqlite:///{tmp_path}/ledger.db", ledger_url))
    ledger = Ledger(ledger_url)
    ledger.insert([e for e in OPENAI_EVENTS if e.provider != "anthropic"])
    code, out, _ = payware(capsys, "reconcile", "openai", "--from", "2026-11-01", "--to", "2026-11-03",
                           "--api-key-id", "key_payware", "--json", "--config", str(path))
    assert code == 0
    from metering.store.money_runs import ReconciliationStore

    saved = ReconciliationStore(ledger.engine).last("openai")
    assert saved == json.loads(out) and shown(saved) == OPENAI_ROWS
    assert ReconciliationStore(ledger.engine).last("anthropic") is None
    ledger.close()
