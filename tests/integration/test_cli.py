"""The `payware` command against a ledger a real proxy wrote."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request

import openai

from tests.conftest import KEYS, ROOT, python_env

PLANS = '  payg: {interval: threshold, threshold: "0.00001", price: {markup: "1.25"}}\n'


def payware(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "proxy.cli.main", *args], cwd=ROOT, env=python_env(),
                          capture_output=True, text=True, timeout=60)


def test_usage_summary_export_statements_and_prices_read_what_the_proxy_wrote(proxy_factory):
    proxy = proxy_factory(plans=PLANS)
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key=KEYS["acme"], max_retries=0)
    # $0.0000073125 a call, threshold $0.00001: calls 1-2 close a period, 3-4 another, 5 stays open
    for _ in range(5):
        client.chat.completions.create(model="fake-ok", messages=[{"role": "user", "content": "hi"}])
    config = str(proxy.config_path)
    request = urllib.request.Request(proxy.url + "/v1/billing/statements",
                                     headers={"Authorization": f"Bearer {KEYS['acme']}"})
    assert len(json.loads(urllib.request.urlopen(request).read())["data"]) == 2  # frozen by the server

    exported = payware("usage", "export", "acme", "--config", config)
    assert exported.returncode == 0 and len(exported.stdout.splitlines()) == 5
    summary = json.loads(payware("usage", "summary", "acme", "--config", config, "--json").stdout)
    assert summary["requests"] == 1 and summary["amount_due_exact"] == "0.0000073125"
    statements = [json.loads(line) for line in payware("statements", "acme", "--config", config).stdout.splitlines()]
    assert [s["event_count"] for s in statements] == [2, 2] and statements[0]["subtotal"] == "0.000014625"
    prices = json.loads(payware("prices", "fake-ok", "--config", config, "--json").stdout)
    assert prices["per_million"] == {"input": "0.15", "cached_input": "0.075", "cache_write": "0.15",
                                     "cache_write_1h": "0.15", "output": "0.6"}


def test_statements_of_a_customer_made_at_runtime(proxy_factory):
    proxy = proxy_factory()
    config = str(proxy.config_path)
    assert payware("customers", "create", "rtacme", "--plan", "payg", "--config", config).returncode == 0
    result = payware("statements", "rtacme", "--config", config)
    assert result.returncode == 0 and result.stdout == ""  # known, nothing closed yet


def test_bad_cli_input_gets_a_clear_error_and_an_exit_code(proxy_factory):
    proxy = proxy_factory()
    config = str(proxy.config_path)
    for args, message, code in ((["statements", "nobody", "--config", config], "no customer 'nobody'", 2),
                                (["prices", "no-model", "--config", config], "no model 'no-model'", 1),
                                (["keys", "create", "nobody", "--config", config], "no customer 'nobody'", 1),
                                (["check-config", "/nonexistent.yaml"], "cannot read file", 2)):
        result = payware(*args)
        assert result.returncode == code and message in result.stderr, (args, result.stderr)


def test_keys_revoke_removes_the_key_from_the_config_and_the_proxy_refuses_it_after_a_restart(proxy_factory):
    proxy = proxy_factory()
    config = str(proxy.config_path)
    listed = dict(line.split("\t")[::-1] for line in payware("keys", "list", "--config", config).stdout.splitlines())
    acme_key_id = next(kid for kid, customer in listed.items() if customer == "acme")
    result = payware("keys", "revoke", acme_key_id, "--config", config)
    assert result.returncode == 0, result.stderr
    assert acme_key_id not in payware("keys", "list", "--config", config).stdout
    assert payware("check-config", config).returncode == 0
    proxy.stop()
    proxy.start()
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key=KEYS["acme"], max_retries=0)
    try:
        client.models.list()
        raise AssertionError("a revoked key still works")
    except openai.AuthenticationError:
        pass
    assert payware("keys", "revoke", acme_key_id, "--config", config).returncode == 1  # already gone
