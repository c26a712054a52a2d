"""What an operator sees: start-up failures as one line and an exit code, one access-log line per request."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from tests.conftest import KEYS, ROOT, free_port, modules_at_start_up, proxy_config, python_env


def serve(config_path, port: int, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "proxy.cli", "serve", "--config", str(config_path), "--port",
                           str(port)], cwd=ROOT, env=python_env() | (env or {}), capture_output=True, text=True,
                          timeout=60)


def access_lines(proxy, path: str, count: int, timeout: float = 10.0) -> list[str]:
    """The proxy's log lines naming `path`, once there are `count` of them (or the timeout):
    access lines go out at the end of the event-loop turn that sent the answer, so a client
    can hold its answer a moment before the line is in the log."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [line for line in proxy.log().splitlines() if path in line]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.02)


def assert_one_clear_line(result: subprocess.CompletedProcess, code: int, *phrases: str) -> None:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    assert "Unclosed" not in result.stderr  # what was opened before the failure is closed again
    assert "serving on" not in result.stdout
    failure = [line for line in result.stderr.splitlines() if line.startswith("payware: cannot start")]
    assert len(failure) == 1, result.stderr
    for phrase in phrases:
        assert phrase in failure[0], failure[0]


def test_a_port_in_use_is_one_line_and_exit_1(tmp_path, fake_upstream):
    path = tmp_path / "payware.yaml"
    path.write_text(proxy_config(fake_upstream.url, tmp_path))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = serve(path, taken.getsockname()[1])
    assert_one_clear_line(result, 1, "is in use")
    # The port is bound first: nothing else started (no journal, no ledger), nothing to undo.
    assert not (tmp_path / "payware.journal").exists() and not (tmp_path / "ledger.db").exists()


def test_a_journal_in_use_is_one_line_and_exit_1(proxy, tmp_path):
    other = tmp_path / "other.yaml"
    other.write_text(proxy.config_path.read_text())  # the same journal (and ledger) as the running proxy
    result = serve(other, free_port())
    assert_one_clear_line(result, 1, "journal", "in use")


def test_an_unreachable_database_is_one_line_and_exit_1(tmp_path, fake_upstream):
    path = tmp_path / "payware.yaml"
    path.write_text(proxy_config(fake_upstream.url, tmp_path, ledger="postgresql://postgres@127.0.0.1:1/nowhere"))
    result = serve(path, free_port())
    assert_one_clear_line(result, 1, "ledger database")


def test_a_bad_config_is_every_problem_and_exit_2(tmp_path):
    path = tmp_path / "payware.yaml"
    path.write_text("providers: {p: {kind: nope}}\nmodels: {m: {provider: q}}\n")
    result = subprocess.run([sys.executable, "-m", "proxy.cli", "serve", "--config", str(path)], cwd=ROOT,
                            env=python_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "providers.p.kind" in result.stderr and "models.m.provider" in result.stderr


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_one_access_line_per_request_with_who_what_and_cost(proxy_factory, fmt):
    proxy = proxy_factory()
    proxy.stop()
    proxy.extra_env = {"PAYWARE_LOG_FORMAT": fmt}
    proxy.start()
    body = json.dumps({"model": "fake-ok", "messages": [{"role": "user", "content": "hi"}]}).encode()
    for key in (KEYS["acme"], "pw-not-a-key"):
        request = urllib.request.Request(proxy.url + "/v1/chat/completions", data=body, method="POST",
                                         headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request) as resp:
                request_id = resp.headers["X-Payware-Request-Id"]
        except urllib.error.HTTPError as exc:
            assert exc.code == 401
    lines = access_lines(proxy, "/v1/chat/completions", 2)
    assert len(lines) == 2
    served, refused = lines
    if fmt == "json":
        served, refused = json.loads(served), json.loads(refused)
        assert (served["request_id"], served["status"], served["customer"], served["model"], served["input_tokens"],
                served["output_tokens"], served["amount"]) == (request_id, 200, "acme", "fake-ok", 13, 7,
                                                                "0.0000073125")
        assert served["latency_ms"] >= served["upstream_ms"] >= 0
        assert (refused["status"], refused["error"]) == (401, "invalid_api_key")
        assert (served["level"], served["logger"]) == ("info", "payware.access")
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", served["ts"]), served["ts"]
    else:
        # the log's own format, as every other line of it has
        assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO payware\.access req_[0-9a-f]{32} POST ", served)
        assert request_id in served and " 200 " in served and "customer=acme" in served
        assert "amount=0.0000073125" in served and "upstream_ms=" in served
        assert " 401 " in refused and "error=invalid_api_key" in refused
    assert KEYS["acme"] not in proxy.log() and "pw-not-a-key" not in proxy.log()


@pytest.mark.parametrize("on_redis", [False, True], ids=["memory-counters", "redis-counters"])
def test_redis_py_is_imported_only_by_a_proxy_on_redis_counters(tmp_path, fake_upstream, request, on_redis):
    """The embedded default never loads redis-py (~7 MiB, ~50 ms of start-up): what an outage
    of the counter store raises is told apart without it (`metering.limits.outages`)."""
    storage = f"  counters: {request.getfixturevalue('redis_url')}" if on_redis else ""
    path = tmp_path / "payware.yaml"
    path.write_text(proxy_config(fake_upstream.url, tmp_path, storage=storage))
    loaded = modules_at_start_up(path, "redis")
    assert (loaded > 0) is on_redis, f"{loaded} redis-py modules in a proxy on {'Redis' if on_redis else 'in-process'} counters"
