"""`payware customers|keys|usage|prices` in both modes: through a running proxy's admin API (`--url`)
and directly on the ledger database of `--config` (SQLite, and the real PostgreSQL).

Most commands run in this process (`proxy.cli.main`, the same code the `payware` script runs), so
a test can afford dozens of them; the ones about what a shell sees (tracebacks, exit codes of
failures before any output) run as real processes.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal

import psycopg
import pytest

from metering.store.directory import DirectoryStore
from metering.store.events import UsageEvent
from metering.store.ledger import Ledger
from proxy.cli.main import main
from tests.conftest import ADMIN_KEY, KEYS, ROOT, free_port, key_hash, proxy_config, python_env

BOUND = 1.5  # seconds: the README states 1 s for a change to reach every proxy; generous here
SETTLE = 10.0  # seconds for two views to agree (the proxy's flush and poll, on a loaded machine)
CHAT = {"model": "fake-ok", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self):
        return json.loads(self.out)


@dataclass
class Cli:
    """`payware …` in one mode: `url` (the proxy's admin API) or `direct` (the ledger of its config)."""

    proxy: object
    mode: str

    def __call__(self, *args: str) -> Result:
        where = ["--url", self.proxy.url] if self.mode == "url" else ["--config", str(self.proxy.config_path)]
        return run_cli(*args, *where)


def run_cli(*argv: str) -> Result:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exc:  # argparse's own refusals
            code = exc.code
    return Result(code, out.getvalue(), err.getvalue())


def payware(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "proxy.cli.main", *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env=(python_env() | (env or {})))


def request(proxy, path: str, key: str, body: dict | None = None) -> tuple[int, dict | str]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(proxy.url + path, data=data, headers={"Authorization": f"Bearer {key}",
                                                                        "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def chat(proxy, key: str) -> int:
    return request(proxy, "/v1/chat/completions", key, CHAT)[0]


def within(check, bound: float = BOUND) -> float:
    """Seconds until `check()` holds (polled every 20 ms); fails past `bound`."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < bound, "not in force within the bound"
        time.sleep(0.02)
    return time.monotonic() - started


def directory_version(proxy) -> int:
    ledger = Ledger(ledger_url(proxy))
    try:
        return DirectoryStore(ledger.engine).version()
    finally:
        ledger.close()


def ledger_url(proxy) -> str:
    return re.search(r"^  ledger: (\S+)$", proxy.config_path.read_text(), flags=re.M).group(1)


@pytest.fixture(autouse=True)
def admin_key_in_env(monkeypatch):
    monkeypatch.setenv("PAYWARE_ADMIN_KEY", ADMIN_KEY)
    monkeypatch.delenv("PAYWARE_CONFIG", raising=False)


@pytest.fixture
def pg_database(postgres_url):
    """A PostgreSQL database of this test alone, dropped afterwards."""
    name = "pw_cli_" + uuid.uuid4().hex[:10]
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield postgres_url.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.parametrize("mode", ["url", "direct"])
@pytest.mark.parametrize("ledger", ["sqlite", "postgres"])
def test_customers_and_keys_from_creation_to_deactivation(proxy_factory, request, ledger, mode):
    proxy = proxy_factory(ledger=request.getfixturevalue("pg_database") if ledger == "postgres" else None)
    cli = Cli(proxy, mode)

    made = cli("customers", "create", "initech", "--plan", "payg", "--cap", "5.00", "--cap-action", "block",
               "--rpm", "100", "--models", "fake-ok,renamed", "--metadata", '{"crm": "42"}', "--anchor-day", "3")
    assert made.code == 0, made.err
    assert re.search(r"^customer:\s+initech$", made.out, re.M) and re.search(r"^cap:\s+5.00 USD, block, hard$",
                                                                            made.out, re.M)
    shown = cli("customers", "show", "initech", "--json").json()
    assert shown["source"] == "api" and shown["cap"]["amount"] == "5.00" and shown["anchor_day"] == 3
    assert shown["rate_limit"] == {"rpm": 100, "tpm": None} and shown["models"] == ["fake-ok", "renamed"]
    assert shown["metadata"] == {"crm": "42"} and shown["usage"]["remaining"] == "5.00"
    listed = cli("customers", "list")
    assert [line.split()[0] for line in listed.out.splitlines()] == ["CUSTOMER", "acme", "globex", "initech"]
    assert [c["id"] for c in cli("customers", "list", "--json").json()["data"]] == ["acme", "globex", "initech"]

    updated = cli("customers", "update", "initech", "--cap-action", "notify", "--tpm", "5000", "--json").json()
    assert updated["cap"]["amount"] == "5.00" and updated["cap"]["action"] == "notify"  # the amount stays
    assert updated["rate_limit"] == {"rpm": 100, "tpm": 5000}

    created = cli("keys", "create", "initech", "--name", "prod", "-q")
    key = created.out.strip()
    assert created.code == 0 and re.fullmatch(r"pw-[\w-]{43}", key) and "shown once" in created.err
    took = within(lambda: chat(proxy, key) == 200)  # direct mode: the proxy's directory poll
    keys = cli("keys", "list", "initech")
    assert key not in keys.out and re.search(r"^key_\w{12}\s+prod\s+pw-\S+…\s+api\s", keys.out, re.M), keys.out
    kid, = (k["id"] for k in cli("keys", "list", "initech", "--json").json()["data"])

    rotated = cli("keys", "rotate", kid, "--grace", "3", "--json")
    fresh = rotated.json()
    assert rotated.code == 0 and fresh["replaces"] == kid and fresh["name"] == "prod" and fresh["key"] != key
    within(lambda: chat(proxy, fresh["key"]) == 200)
    assert chat(proxy, key) == 200  # within its grace
    time.sleep(max(0.0, datetime.fromisoformat(fresh["old_key_expires_at"]).timestamp() - time.time()) + 0.05)
    assert chat(proxy, key) == 401  # past it

    assert cli("keys", "revoke", fresh["id"]).code == 0
    within(lambda: chat(proxy, fresh["key"]) == 401)
    assert cli("keys", "revoke", fresh["id"]).code == 1  # revoked already

    # the key was served until each proxy applied the revocation: as many calls as that took
    live = Cli(proxy, "url")("usage", "summary", "initech", "--json")
    within(lambda: Cli(proxy, "direct")("usage", "summary", "initech", "--json").json() == live.json(), SETTLE)
    assert live.json()["requests"] >= 3 and live.json()["by_model"][0]["model"] == "fake-ok"
    assert cli("usage", "summary", "initech", "--json").json()["cap"]["action"] == "notify"
    gone = cli("customers", "deactivate", "initech")
    assert gone.code == 0 and "deactivated" in gone.out
    assert cli("customers", "show", "initech", "--json").json()["active"] is False
    print(f"{ledger}/{mode}: a key made by the CLI served after {took * 1000:.0f} ms")


def test_both_modes_print_the_same(proxy_factory):
    proxy = proxy_factory()
    url, direct = Cli(proxy, "url"), Cli(proxy, "direct")
    assert direct("customers", "create", "hooli", "--plan", "payg", "--cap", "2", "--tpm", "1000").code == 0
    assert chat(proxy, KEYS["acme"]) == 200
    for args in (["customers", "show", "hooli"], ["customers", "list"], ["usage", "summary", "acme"],
                 ["usage", "all"], ["usage", "all", "--csv"], ["keys", "list", "acme"], ["keys", "list"]):
        within(lambda: url(*args).out == direct(*args).out, SETTLE)  # the ledger has every event once flushed
        if "--csv" not in args:
            assert url(*args, "--json").json() == direct(*args, "--json").json(), args


def test_usage_summary_has_every_field_of_the_http_summary(proxy_factory):
    proxy = proxy_factory()
    for _ in range(2):
        assert chat(proxy, KEYS["acme"]) == 200
    status, http = request(proxy, "/v1/usage/summary?customer=acme", ADMIN_KEY)
    for mode in ("url", "direct"):
        within(lambda: Cli(proxy, mode)("usage", "summary", "acme", "--json").json() == http, SETTLE)
        text = Cli(proxy, mode)("usage", "summary", "acme").out
        for label, value in (("customer", "acme"), ("plan", "payg"), ("requests", "2"),
                             ("tokens", "input 26 (cached 8, cache writes 0, 1h 0), output 14 (reasoning 4), "
                                        "total 40"),
                             ("base fee", "0.00 USD"), ("amount due", "0.00 USD"),
                             ("amount due exact", f"{http['amount_due_exact']} USD"), ("cap", "none"),
                             ("kept aside", "0 events")):
            assert re.search(rf"^{label}:\s+{re.escape(value)}", text, re.M), (label, text)
        assert re.search(r"^period:\s+\S+ to \S+ \(monthly\)$", text, re.M)
        assert re.search(r"^\s+fake-ok\s+2\s+26\s+8\s+0\s+0\s+14\s+4\s+40\s+40\s+0\.000014625$", text, re.M), text


BAD_INPUT = [  # (arguments, the field named), refused alike by both modes
    (["customers", "create", "bad id", "--plan", "payg"], "id"),
    (["customers", "create", "c" * 129, "--plan", "payg"], "id"),
    (["customers", "create", "c1", "--plan", "no-such-plan"], "plan"),
    (["customers", "create", "c1", "--plan", "payg", "--cap", "-1"], "cap.amount"),
    (["customers", "create", "c1", "--plan", "payg", "--cap", "1e30"], "cap.amount"),
    (["customers", "create", "c1", "--plan", "payg", "--cap", "5", "--cap-action", "explode"], "cap.action"),
    (["customers", "create", "c1", "--plan", "payg", "--cap-mode", "soft"], "cap.amount"),
    (["customers", "create", "c1", "--plan", "payg", "--rpm", "0"], "rate_limit.rpm"),
    (["customers", "create", "c1", "--plan", "payg", "--tpm", "lots"], "rate_limit.tpm"),
    (["customers", "create", "c1", "--plan", "payg", "--models", "fake-ok,nope"], "models"),
    (["customers", "create", "c1", "--plan", "payg", "--metadata", '{"k": "' + "v" * 5000 + '"}'], "metadata"),
    (["customers", "create", "c1", "--plan", "payg", "--metadata", "[1, 2]"], "metadata"),
    (["customers", "create", "c1", "--plan", "payg", "--metadata", "{oops"], "metadata"),
    (["customers", "create", "c1", "--plan", "payg", "--anchor-day", "32"], "anchor_day"),
    (["customers", "update", "runtime1", "--rpm", "-5"], "rate_limit.rpm"),
    (["customers", "update", "runtime1", "--plan", "nope"], "plan"),
    (["keys", "create", "runtime1", "--name", "n" * 129], "name"),
    (["keys", "create", "runtime1", "--expires-at", "2001-01-01"], "expires_at"),
    (["keys", "create", "runtime1", "--expires-at", "next tuesday"], "expires_at"),
    (["keys", "create", "runtime1", "--cap", "abc"], "cap"),
    (["keys", "create", "runtime1", "--models", "nope"], "models"),
    (["keys", "create", "runtime1", "--rpm", "0"], "rate_limit.rpm"),
    (["keys", "rotate", "{runtime_key}", "--grace", "-5"], "grace_seconds"),
    (["keys", "rotate", "{runtime_key}", "--grace", "9999999999"], "grace_seconds"),
    (["usage", "all", "--period", "2026-13"], "period"),
    (["usage", "all", "--period", "9999-12"], "period"),  # no month after it: refused, not a traceback
]


def test_bad_input_is_refused_by_both_modes_naming_the_field_and_changes_nothing(proxy_factory):
    proxy = proxy_factory()
    url, direct = Cli(proxy, "url"), Cli(proxy, "direct")
    assert direct("customers", "create", "runtime1", "--plan", "payg").code == 0
    runtime_key = json.loads(direct("keys", "create", "runtime1", "--json").out)["id"]
    within(lambda: url("keys", "list", "runtime1").code == 0, SETTLE)
    version = directory_version(proxy)
    before = direct("customers", "list", "--json").json(), direct("keys", "list", "--json").json()
    for args, field in BAD_INPUT:
        args = [a.replace("{runtime_key}", runtime_key) for a in args]
        answers = [url(*args), direct(*args)]
        for answer in answers:
            assert answer.code == 2 and f"(field: {field})" in answer.err, (args, answer.err)
            assert answer.err.count("\n") == 1 and answer.out == "", (args, answer)
        assert answers[0].err == answers[1].err, args  # the same words in both modes
    assert directory_version(proxy) == version  # nothing was written
    assert (direct("customers", "list", "--json").json(), direct("keys", "list", "--json").json()) == before


def test_what_is_not_there_is_said_on_stderr_with_exit_1(proxy_factory):
    proxy = proxy_factory()
    for mode in ("url", "direct"):
        cli = Cli(proxy, mode)
        for args, message in ((["customers", "show", "nobody"], "no customer 'nobody'"),
                              (["customers", "update", "nobody", "--plan", "payg"], "no customer 'nobody'"),
                              (["customers", "deactivate", "nobody"], "no customer 'nobody'"),
                              (["customers", "deactivate", "acme"], "declared in the config file"),
                              (["keys", "create", "nobody"], "no customer 'nobody'"),
                              (["keys", "list", "nobody"], "no customer 'nobody'"),
                              (["keys", "revoke", "key_000000000000"], "no key 'key_000000000000'"),
                              (["keys", "rotate", "key_000000000000"], "no key 'key_000000000000'"),
                              (["usage", "summary", "nobody"], "no customer 'nobody'")):
            answer = cli(*args)
            assert answer.code == 1 and message in answer.err, (mode, args, answer)
            assert answer.err.startswith("payware: ") and answer.err.count("\n") == 1 and answer.out == ""
    assert run_cli("prices", "no-such-model-anywhere").code == 1


def test_failures_a_shell_sees_are_one_line_and_an_exit_code(proxy_factory, tmp_path):
    proxy = proxy_factory()
    closed = f"http://127.0.0.1:{free_port()}"
    unreachable_pg = tmp_path / "pg.yaml"
    unreachable_pg.write_text(proxy.config_path.read_text().replace(
        ledger_url(proxy), f"postgresql://nobody@127.0.0.1:{free_port()}/none"))
    for argv, env, code, message in (
            (["customers", "list", "--url", closed], {"PAYWARE_ADMIN_KEY": ADMIN_KEY}, 1, "cannot reach the proxy"),
            (["customers", "list", "--url", proxy.url], {"PAYWARE_ADMIN_KEY": ""}, 2, "needs the admin key"),
            (["customers", "list", "--url", proxy.url, "--admin-key", "not-the-admin-key"], {}, 1, "--admin-key"),
            (["keys", "list", "--url", proxy.url, "--admin-key", KEYS["acme"]], {}, 1, "--admin-key"),
            (["customers", "list", "--config", str(unreachable_pg)], {}, 1, "cannot open the ledger"),
            (["customers", "create", "x", "--config", str(proxy.config_path)], {}, 2, "--plan"),
            (["usage", "summary", "--config", str(proxy.config_path)], {}, 2, "--all"),
            (["customers", "show", "acme", "--config", "/nonexistent.yaml"], {}, 2, "cannot read file")):
        result = payware(*argv, env=env)
        assert result.returncode == code and message in result.stderr, (argv, result.stderr)
        assert "Traceback" not in result.stderr and result.stdout == "", (argv, result)


def test_keys_of_a_customer_of_the_file_print_the_hash_to_add_unless_kept_at_runtime(proxy_factory):
    proxy = proxy_factory()
    cli = Cli(proxy, "direct")
    made = cli("keys", "create", "acme")
    key = re.search(r"^key:\s+(pw-\S+)$", made.out, re.M).group(1)
    assert made.code == 0 and f'add "{key_hash(key)}" to customers.acme.keys in {proxy.config_path}' in made.out
    assert chat(proxy, key) == 401  # in force only once the file has it
    assert cli("keys", "create", "acme", "--name", "x").code == 2  # the file's keys have no name: --runtime
    runtime = cli("keys", "create", "acme", "--runtime", "--name", "ci", "-q").out.strip()
    within(lambda: chat(proxy, runtime) == 200)
    assert {k["name"] for k in cli("keys", "list", "acme", "--json").json()["data"]} == {"", "ci"}


def test_usage_all_over_many_customers_counts_on_stderr_and_writes_csv(proxy_factory):
    proxy = proxy_factory()
    ledger = Ledger(ledger_url(proxy))
    store = DirectoryStore(ledger.engine)
    for i in range(230):  # straight into the directory: the CLI reads it as the proxy does
        store.create_customer(id=f"bulk{i:03d}", plan="payg", settings={"cap": {"amount": "1.00"}}, meta={})
    ledger.close()
    assert chat(proxy, KEYS["acme"]) == 200
    request(proxy, "/v1/usage/events?customer=acme", ADMIN_KEY)  # waits until the ledger holds the call
    direct = Cli(proxy, "direct")
    table = direct("usage", "all")
    assert table.code == 0 and [line for line in table.err.splitlines()] == [
        "payware: 100 customers…", "payware: 200 customers…", "payware: 232 customers, done"]
    rows = table.out.splitlines()
    assert rows[0].split() == ["CUSTOMER", "PLAN", "ACTIVE", "REQUESTS", "TOKENS", "AMOUNT", "DUE", "CAP", "REMAINING"]
    assert rows[1].split()[:5] == ["acme", "payg", "yes", "1", "20"] and len(rows) == 1 + 232 + 1
    assert rows[-1] == "232 customers, 1 requests, 20 tokens, 0.00 USD due"
    csv = direct("usage", "summary", "--all", "--csv").out.splitlines()
    assert csv[0].startswith("customer,plan,active,period_start,") and len(csv) == 233
    assert csv[3].endswith(",USD,1.00,1.00")
    within(lambda: Cli(proxy, "url")("usage", "all", "--csv").out == "\n".join(csv) + "\n", SETTLE)  # the API's
    data = direct("usage", "all", "--json").json()["data"]
    assert len(data) == 232 and data[0]["customer"] == "acme" and data[0]["amount_due_exact"] == "0.0000073125"


def test_usage_export_of_many_events_counts_them_on_stderr(proxy_factory):
    proxy = proxy_factory()
    assert chat(proxy, KEYS["acme"]) == 200
    ledger = Ledger(ledger_url(proxy))
    within(lambda: ledger.count() == 1, SETTLE)
    first = next(ledger.events(customer="acme"))
    ledger.insert([replace(first, id=f"req_bulk_{i}", meta={}) for i in range(2499)])
    ledger.close()
    exported = run_cli("usage", "export", "acme", "--config", str(proxy.config_path))
    assert exported.code == 0 and len(exported.out.splitlines()) == 2500
    assert exported.err.splitlines() == ["payware: 1000 events…", "payware: 2000 events…",
                                         "payware: 2500 events, done"]
    assert {UsageEvent.from_json(line).customer for line in exported.out.splitlines()} == {"acme"}
    nothing = run_cli("usage", "export", "globex", "--config", str(proxy.config_path))
    assert nothing.code == 0 and nothing.out == "" and nothing.err == "payware: no events of 'globex'\n"
    assert run_cli("usage", "export", "nobody", "--config", str(proxy.config_path)).code == 1


def test_prices_of_a_model_only_litellm_knows_and_of_configured_ones(tmp_path, fake_upstream):
    config = tmp_path / "payware.yaml"
    config.write_text(proxy_config(fake_upstream.url, tmp_path, extra_models="  gpt-4o-mini: {provider: fake}\n"))
    litellm_only = run_cli("prices", "gemini-2.5-pro", "--json", "--config", str(config)).json()
    assert litellm_only["configured"] is False and litellm_only["source"] == "litellm"
    assert set(litellm_only["per_million"]) == {"input", "cached_input", "cache_write", "cache_write_1h", "output"}
    above, = litellm_only["above"]
    assert above["input_tokens_over"] == 200000
    assert Decimal(above["per_million"]["input"]) > Decimal(litellm_only["per_million"]["input"])
    text = run_cli("prices", "gemini-2.5-pro", "--config", str(config)).out
    assert "not configured; litellm's price data has it" in text and "prompt over 200000 tokens" in text
    configured = run_cli("prices", "renamed", "--json", "--config", str(config)).json()
    assert configured["configured"] and configured["upstream"] == "fake-ok" and configured["source"] == "config"
    assert configured["per_million"]["output"] == "0.6" and configured["litellm"] is None
    from_litellm = run_cli("prices", "gpt-4o-mini", "--json", "--config", str(config)).json()
    assert from_litellm["configured"] and from_litellm["source"] == "litellm"
    assert from_litellm["per_million"] == from_litellm["litellm"]["per_million"]
    listing = run_cli("prices", "--config", str(config)).out.splitlines()
    assert listing[0].split()[:3] == ["MODEL", "PROVIDER", "UPSTREAM"]
    assert any(re.match(r"gpt-4o-mini\s+fake\s+gpt-4o-mini\s+0\.15\s+0\.075\s", line) for line in listing)
    unknown = payware("prices", "no-such-model-anywhere", "--config", str(config))
    assert unknown.returncode == 1 and "no model 'no-such-model-anywhere'" in unknown.stderr
    assert "in litellm's price data" in unknown.stderr and "Traceback" not in unknown.stderr
