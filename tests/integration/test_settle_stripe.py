"""`payware settle --to stripe` against a local fake of Stripe's endpoints (a server process speaking
Stripe's form-encoded wire, honouring Idempotency-Key), through the official stripe SDK: each
frozen statement becomes one invoice, once, totalling the statement to the cent."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

import pytest

from metering.store.directory import DirectoryStore
from metering.store.ledger import Ledger
from metering.store.money_runs import SettlementStore
from proxy.cli.main import main
from tests.conftest import ROOT, python_env
from tests.unit.test_settle import statement

STRIPE_KEY = "sk_test_payware_fake_0123456789"
PERIODS = ("2026-10-01T00:00:00+00:00", "2026-11-01T00:00:00+00:00")


@pytest.fixture(scope="module")
def stripe_server() -> Iterator[str]:
    proc = subprocess.Popen([sys.executable, "-m", "tests.fakes.stripe_api", "--port", "0", "--api-key", STRIPE_KEY,
                             "--customers", "cus_acme,cus_globex,cus_hooli"],
                            cwd=ROOT, env=python_env(), stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    assert line.startswith("LISTENING "), line
    yield line.split()[1]
    proc.terminate()
    proc.wait(10)


def control(url: str, path: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, method="GET" if path == "/_stats" else "POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request) as response:
        return json.loads(response.read())


@pytest.fixture(params=["sqlite", "postgres"])
def ledger_url(request, tmp_path) -> Iterator[str]:
    """A fresh ledger: a SQLite file, or a database of its own on the test PostgreSQL server."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/ledger.db"
        return
    import psycopg

    server = request.getfixturevalue("postgres_url")
    name = f"payware_settle_{tmp_path.name[-24:].lower().replace('-', '_')}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    yield server.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def config_text(folder: Path, stripe_url: str, *, key: str = STRIPE_KEY, extra: str = "",
                ledger: str | None = None) -> str:
    return f"""
storage: {{ledger: "{ledger or f'sqlite:///{folder}/ledger.db'}", journal: "{folder}/payware.journal"}}
providers: {{openai: {{kind: openai, api_key: sk-test}}}}
models: {{mini: {{provider: openai, upstream: gpt-4o-mini, cost: {{input: "0.15", output: "0.60"}}}}}}
plans:
  payg: {{price: {{markup: "1.25"}}}}
  pro: {{base_fee: "20.00", price: {{markup: "1.25"}}}}
customers:
  acme: {{plan: payg, stripe_customer: cus_acme}}
  initech: {{plan: payg}}
  hooli: {{plan: payg, stripe_customer: cus_hooli}}
settlement:
  stripe: {{api_key: "{key}", api_base: "{stripe_url}"{extra}}}
"""


# (customer, period, plan, lines): totals 3.01 (+1 cent of rounding), 3.01 (-1 cent), 20.30, 5.00, 0.00
STATEMENTS = [
    ("acme", PERIODS[0], "payg", [("tokens.input", "1", "1.004", "1.004"), ("tokens.output", "1", "2.004", "2.004")]),
    ("acme", PERIODS[1], "payg", [("tokens.input", "1", "1.005", "1.005"), ("tokens.output", "1", "2.005", "2.005")]),
    ("globex", PERIODS[1], "pro", [("tokens.input", "1000", "0.0003", "0.3")]),
    ("initech", PERIODS[1], "payg", [("tokens.input", "1", "5.00", "5.00")]),
    ("hooli", PERIODS[1], "payg", []),
]


@pytest.fixture
def setup(tmp_path, stripe_server) -> Path:
    """Frozen statements of five customers; globex made through the admin API (its Stripe id in metadata)."""
    return _setup(tmp_path, stripe_server, f"sqlite:///{tmp_path}/ledger.db")


def _setup(tmp_path: Path, stripe_server: str, ledger_url: str) -> Path:
    control(stripe_server, "/_reset")
    path = tmp_path / "payware.yaml"
    path.write_text(config_text(tmp_path, stripe_server, ledger=ledger_url))
    ledger = Ledger(ledger_url)
    DirectoryStore(ledger.engine).create_customer(id="globex", plan="pro", settings={},
                                                  meta={"stripe_customer": "cus_globex"})
    for customer, period, plan, lines in STATEMENTS:
        body = {**statement(plan, lines), "customer": customer}
        ledger.save_statement(customer, period, Decimal(body["total"]), body)
    ledger.close()
    return path


def settle(capsys, config: Path, *args: str) -> tuple[int, list[dict], str]:
    code = main(["settle", "--to", "stripe", "--json", "--config", str(config), *args])
    out, err = capsys.readouterr()
    return code, [json.loads(line) for line in out.splitlines()], err


def by_statement(outcomes: list[dict]) -> dict[tuple[str, str], dict]:
    return {(o["customer"], o["period"]): o for o in outcomes}


def test_settling_twice_creates_each_invoice_once_and_each_totals_its_statement_to_the_cent(
        capsys, stripe_server, tmp_path, ledger_url):
    setup = _setup(tmp_path, stripe_server, ledger_url)
    code, first, err = settle(capsys, setup)
    assert code == 1, err  # initech has no Stripe customer: reported, skipped, and the exit says so
    statuses = {key: o["status"] for key, o in by_statement(first).items()}
    assert statuses == {("acme", PERIODS[0]): "invoiced", ("acme", PERIODS[1]): "invoiced",
                        ("globex", PERIODS[1]): "invoiced", ("initech", PERIODS[1]): "skipped",
                        ("hooli", PERIODS[1]): "nothing_due"}
    assert "no Stripe customer for 'initech'" in by_statement(first)[("initech", PERIODS[1])]["reason"]
    assert "2 invoiced" not in err and "3 invoiced" in err and "1 skipped" in err

    stats = control(stripe_server, "/_stats")
    assert stats["invoices_created"] == 3 and stats["items_created"] == 3 + 3 + 2  # rounding items included
    invoices = {(i["metadata"]["payware_customer"], i["metadata"]["payware_period"]): i for i in stats["invoices"]}
    ledger = Ledger(ledger_url)
    for (customer, period), invoice in invoices.items():
        total = Decimal(ledger.statements(customer)[period]["total"])
        assert invoice["total"] == int(total * 100) == sum(item["amount"] for item in invoice["items"])
        assert by_statement(first)[(customer, period)]["invoice_id"] == invoice["id"]
        assert invoice["customer"] == f"cus_{customer}" and invoice["status"] == "draft"
    assert [item["amount"] for item in invoices[("acme", PERIODS[0])]["items"]] == [100, 200, 1]
    assert [item["amount"] for item in invoices[("acme", PERIODS[1])]["items"]] == [101, 201, -1]
    assert [item["amount"] for item in invoices[("globex", PERIODS[1])]["items"]] == [30, 2000]

    # the statement records its invoice
    recorded = {(s["customer"], s["period"]): s for s in SettlementStore(ledger.engine).all()}
    assert recorded[("acme", PERIODS[1])]["invoice_id"] == invoices[("acme", PERIODS[1])]["id"]
    assert recorded[("acme", PERIODS[1])]["status"] == "invoiced"
    assert recorded[("hooli", PERIODS[1])]["status"] == "nothing_due" and ("initech", PERIODS[1]) not in recorded
    ledger.close()

    code, second, _ = settle(capsys, setup)
    assert code == 1
    assert {key: o["status"] for key, o in by_statement(second).items()} == {
        **statuses, ("acme", PERIODS[0]): "already", ("acme", PERIODS[1]): "already",
        ("globex", PERIODS[1]): "already", ("hooli", PERIODS[1]): "already"}
    again = control(stripe_server, "/_stats")
    assert again["invoices_created"] == 3 and again["items_created"] == 8  # nothing billed twice

    code, only, _ = settle(capsys, setup, "--customer", "acme")
    assert code == 0 and {o["status"] for o in only} == {"already"}


def test_a_run_cut_midway_resumes_without_a_second_invoice_or_item(capsys, setup, stripe_server):
    # the second invoice item fails at Stripe (past the SDK's retries): that statement stays pending
    control(stripe_server, "/_fail", {"path": "/v1/invoiceitems", "after": 1, "times": 3})  # the SDK tries 3 times
    code, first, _ = settle(capsys, setup, "--customer", "acme")
    outcome = by_statement(first)[("acme", PERIODS[0])]
    assert code == 1 and outcome["status"] == "failed" and outcome["reason"].startswith("Stripe:")
    # Stripe forgets idempotency keys after 24 hours: the rerun must find what exists by itself
    control(stripe_server, "/_expire_keys")
    code, second, _ = settle(capsys, setup, "--customer", "acme")
    assert code == 0 and {key: o["status"] for key, o in by_statement(second).items()} == {
        ("acme", PERIODS[0]): "invoiced", ("acme", PERIODS[1]): "already"}
    stats = control(stripe_server, "/_stats")
    assert stats["invoices_created"] == 2 and stats["items_created"] == 6
    for invoice in stats["invoices"]:
        assert sorted(int(i["metadata"]["payware_line"]) for i in invoice["items"]) == [0, 1, 2]


def test_an_invoice_made_before_a_crash_is_found_by_its_metadata_not_made_again(capsys, setup, stripe_server,
                                                                                 tmp_path):
    code, _, _ = settle(capsys, setup, "--customer", "acme")
    assert code == 0
    ledger = Ledger(f"sqlite:///{tmp_path}/ledger.db")
    with ledger.engine.begin() as conn:  # as if the run died before it could record anything
        conn.exec_driver_sql("DELETE FROM settlements")
    ledger.close()
    control(stripe_server, "/_expire_keys")
    code, again, _ = settle(capsys, setup, "--customer", "acme")
    assert code == 0 and [o["status"] for o in again] == ["invoiced", "invoiced"]
    stats = control(stripe_server, "/_stats")
    assert stats["invoices_created"] == 2 and stats["items_created"] == 6
    assert {o["invoice_id"] for o in again} == {i["id"] for i in stats["invoices"]}


def test_dry_run_shows_the_invoices_and_calls_nothing(capsys, setup, stripe_server, tmp_path):
    code = main(["settle", "--to", "stripe", "--dry-run", "--config", str(setup)])
    out, err = capsys.readouterr()
    assert code == 1  # initech would be skipped
    assert "acme  2026-10-01T00:00:00+00:00  would_invoice  USD 3.01  cus_acme  3 items, rounding +1 minor units" in out
    assert "       -1  Rounding" in out and "(dry run)" in err
    assert control(stripe_server, "/_stats")["requests"] == {}
    assert SettlementStore(Ledger(f"sqlite:///{tmp_path}/ledger.db").engine).all() == []


def test_finalize_and_send_invoice_are_passed_to_stripe(capsys, tmp_path, stripe_server, setup):
    setup.write_text(config_text(tmp_path, stripe_server, extra=", collection_method: send_invoice, "
                                                                  "days_until_due: 14, finalize: true"))
    code, outcomes, _ = settle(capsys, setup, "--customer", "globex")
    assert code == 0 and outcomes[0]["status"] == "invoiced"
    invoice = control(stripe_server, "/_stats")["invoices"][0]
    assert (invoice["status"], invoice["collection_method"], invoice["days_until_due"]) == ("open", "send_invoice", 14)


@pytest.mark.parametrize("args, config_change, code, message", [
    ([], {"key": ""}, 2, "no Stripe key: set settlement.stripe.api_key"),
    (["--customer", "nobody"], {}, 2, "no customer 'nobody'"),
    ([], {"key": "sk_test_wrong_0000000000"}, 1, "Stripe refused the key"),
])
def test_bad_input_and_a_refused_key_are_one_clear_line(capsys, tmp_path, stripe_server, setup, monkeypatch,
                                                        args, config_change, code, message):
    monkeypatch.delenv("STRIPE_API_KEY", raising=False)
    text = config_text(tmp_path, stripe_server, **config_change)
    setup.write_text(text.replace('api_key: "", ', "") if config_change.get("key") == "" else text)
    result, _, err = settle(capsys, setup, *args)
    assert result == code and message in err, err
    assert "sk_test_wrong_0000000000" not in err


def test_the_after_close_job_settles_as_the_command_does(setup, stripe_server, tmp_path):
    from aiohttp import web

    from config.loader import load_config
    from proxy.appkeys import LIVE, RECORDER
    from proxy.live import Live, merge
    from proxy.settle_job import settle_once

    ledger = Ledger(f"sqlite:///{tmp_path}/ledger.db")
    app = web.Application()
    config = load_config(setup)
    app[LIVE] = Live(config, store=None)
    app[LIVE].config = merge(config, DirectoryStore(ledger.engine).load())  # as the proxy merges runtime customers
    app[RECORDER] = SimpleNamespace(ledger=ledger)
    outcomes = settle_once(app)
    assert sorted(o.status for o in outcomes) == ["invoiced", "invoiced", "invoiced", "nothing_due", "skipped"]
    assert [o.status for o in settle_once(app)].count("already") == 4
    assert control(stripe_server, "/_stats")["invoices_created"] == 3
    ledger.close()
