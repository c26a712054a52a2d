"""`server.metrics_listen`: HOST:PORT of the listener that serves only /metrics, validated."""

from __future__ import annotations

import pytest

from config.loader import ConfigError, parse_config

BASE = """
server: {{port: 8080{server}}}
providers:
  openai: {{kind: openai, base_url: "https://api.openai.com/v1", api_key: "sk-test"}}
models:
  gpt-4o-mini: {{provider: openai, cost: {{input: "0.15", output: "0.60"}}}}
plans:
  payg: {{price: {{markup: "1.25"}}}}
customers: {{}}
"""


def parse(server: str, env: dict | None = None):
    return parse_config(BASE.format(server=server), source="test.yaml", env=env or {})


def test_metrics_listen_is_off_by_default():
    assert parse("").server.metrics_listen is None


@pytest.mark.parametrize("value, expected", [
    ("127.0.0.1:9464", ("127.0.0.1", 9464)),
    ("0.0.0.0:9464", ("0.0.0.0", 9464)),
    ("metrics.internal:9100", ("metrics.internal", 9100)),
    ("[::1]:9464", ("::1", 9464)),
    ("127.0.0.2:8080", ("127.0.0.2", 8080)),  # the proxy's port on another address
])
def test_metrics_listen_takes_host_and_port(value, expected):
    assert parse(f', metrics_listen: "{value}"').server.metrics_listen == expected


def test_metrics_listen_comes_from_the_environment():
    config = parse(", metrics_listen: ${PAYWARE_METRICS_LISTEN:-127.0.0.1:9464}", {"PAYWARE_METRICS_LISTEN": "0.0.0.0:9100"})
    assert config.server.metrics_listen == ("0.0.0.0", 9100)


@pytest.mark.parametrize("value, message", [
    ('"9464"', "'9464' must be HOST:PORT, e.g. 127.0.0.1:9464"),
    ("9464", "must be a string, got an integer"),
    ('"127.0.0.1"', "must be HOST:PORT"),
    ('"127.0.0.1:"', "must be HOST:PORT"),
    ('"http://127.0.0.1:9464"', "must be HOST:PORT"),
    ('"::1:9464"', "must be HOST:PORT"),
    ('"127.0.0.1:70000"', "70000 is not a TCP port"),
    ('"127.0.0.1:0"', "0 is not a TCP port"),
    ('"127.0.0.1:8080"', "is the proxy's own address"),
    ('"0.0.0.0:8080"', "is the proxy's own address"),
])
def test_a_bad_metrics_listen_is_a_config_error_naming_the_field(value, message):
    with pytest.raises(ConfigError) as info:
        parse(f", metrics_listen: {value}")
    problem, = info.value.problems
    assert problem.startswith("server.metrics_listen: ") and message in problem
