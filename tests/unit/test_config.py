"""The admin config: validation with field paths, env expansion, exact prices."""

from __future__ import annotations

import textwrap
from decimal import Decimal

import pytest

from config.loader import ConfigError, load_config, parse_config
from proxy.cli.main import main as cli

BASE = """
server: {admin_key: "admin-key-0123456789"}
providers:
  openai: {kind: openai, base_url: "https://api.openai.com/v1", api_key: "sk-test"}
models:
  gpt-4o-mini: {provider: openai, cost: {input: "0.15", cached_input: "0.075", output: "0.60"}}
plans:
  payg: {price: {markup: "1.25"}}
customers:
  acme: {plan: payg, keys: ["sha256:%s"]}
""" % ("a" * 64)


def parse(text: str, env: dict | None = None):
    return parse_config(textwrap.dedent(text), source="test.yaml", env=env or {})


def problems(text: str, env: dict | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(text, env)
    return info.value.problems


def test_shipped_default_config_loads_without_any_environment():
    config = load_config(None)
    assert config.providers["local"].kind == "echo"
    assert config.models["echo-4o-mini"].prices[0].input == Decimal("0.15")
    assert config.server.admin_key is None


def test_a_valid_config_gives_exact_decimal_prices():
    config = parse(BASE)
    price = config.models["gpt-4o-mini"].prices[0]
    assert (price.input, price.cached_input, price.output) == (Decimal("0.15"), Decimal("0.075"), Decimal("0.60"))
    assert config.plans["payg"].markup == Decimal("1.25")


def test_unquoted_yaml_floats_stay_exact_decimals():
    config = parse(BASE.replace('input: "0.15"', "input: 0.1"))
    assert config.models["gpt-4o-mini"].prices[0].input == Decimal("0.1")


@pytest.mark.parametrize("old, new, expected", [
    ('input: "0.15"', 'input: "0,15"', "models.gpt-4o-mini.cost.input: '0,15' is not a decimal"),
    ('input: "0.15"', 'input: "-1"', "models.gpt-4o-mini.cost.input: -1 must not be negative"),
    ("provider: openai,", "provider: nowhere,", "models.gpt-4o-mini.provider: 'nowhere' is not a configured provider"),
    ("plan: payg", "plan: gold", "customers.acme.plan: 'gold' is not a configured plan"),
    ('"sha256:' + "a" * 64 + '"', '"plain-key"', "customers.acme.keys[0]: must be 'sha256:'"),
    ("kind: openai", "kind: closedai", "providers.openai.kind: 'closedai' is not one of"),
    ('base_url: "https://api.openai.com/v1"', 'base_url: "api.openai.com"', "providers.openai.base_url"),
    ('markup: "1.25"', 'markup: "lots"', "plans.payg.price.markup: 'lots' is not a decimal"),
    ("payg: {price", "payg: {interval: yearly, price", "plans.payg.interval: 'yearly' is not one of"),
    ("acme: {plan: payg,", "acme: {plan: payg, cap: {amount: 5, action: explode},",
     "customers.acme.cap.action: 'explode' is not one of"),
    ("acme: {plan: payg,", "acme: {plan: payg, rate_limit: {rpm: 0},", "customers.acme.rate_limit.rpm: 0 must be at least 1"),
    ("server: {", "server: {colour: blue, ", "server.colour: unknown field"),
])
def test_each_invalid_field_is_reported_with_its_path(old, new, expected):
    assert old in BASE
    found = problems(BASE.replace(old, new, 1))
    assert any(expected in p for p in found), found


def test_every_problem_is_reported_at_once():
    text = BASE.replace('input: "0.15"', 'input: "x"').replace("plan: payg", "plan: gold")
    assert len(problems(text)) == 2


def test_a_model_with_no_price_anywhere_is_an_error_never_free():
    text = BASE.replace("gpt-4o-mini: {provider: openai, cost: {input: \"0.15\", cached_input: \"0.075\", output: \"0.60\"}}",
                        "my-private-model: {provider: openai}")
    assert any("no price for 'my-private-model'" in p for p in problems(text))


def test_a_model_without_cost_takes_litellm_price_database():
    text = BASE.replace(', cost: {input: "0.15", cached_input: "0.075", output: "0.60"}', "")
    price = parse(text).models["gpt-4o-mini"].prices[0]
    assert price.source == "litellm"
    assert (price.input, price.cached_input, price.output) == (Decimal("0.15"), Decimal("0.075"), Decimal("0.6"))


def test_environment_variables_are_expanded_with_defaults():
    text = BASE.replace('api_key: "sk-test"', "api_key: ${OPENAI_API_KEY}").replace(
        '"https://api.openai.com/v1"', "${BASE:-https://example.test/v1}")
    config = parse(text, env={"OPENAI_API_KEY": "sk-from-env"})
    assert config.providers["openai"].api_key == "sk-from-env"
    assert config.providers["openai"].base_url == "https://example.test/v1"


def test_a_missing_environment_variable_is_an_error_naming_it():
    text = BASE.replace('api_key: "sk-test"', "api_key: ${OPENAI_API_KEY}")
    assert any("providers.openai.api_key: environment variable OPENAI_API_KEY is not set" in p
               for p in problems(text))


def test_secrets_do_not_show_in_reprs():
    config = parse(BASE)
    assert "sk-test" not in repr(config.providers["openai"])
    assert "admin-key" not in repr(config.server)


def test_the_same_key_under_two_customers_is_refused():
    text = BASE + "  other: {plan: payg, keys: [\"sha256:%s\"]}\n" % ("a" * 64)
    assert any("also listed under 'acme'" in p for p in problems(text))


def test_prices_with_effective_dates_apply_from_their_date():
    text = BASE.replace('cost: {input: "0.15", cached_input: "0.075", output: "0.60"}',
                        'cost: [{input: "0.15", output: "0.60"}, {input: "0.10", output: "0.40", effective_from: 2026-06-01}]')
    model = parse(text).models["gpt-4o-mini"]
    from datetime import datetime, timezone
    assert model.price_at(datetime(2026, 5, 31, tzinfo=timezone.utc)).input == Decimal("0.15")
    assert model.price_at(datetime(2026, 6, 1, tzinfo=timezone.utc)).input == Decimal("0.10")


def test_a_name_or_key_hash_with_a_last_newline_is_refused():
    # a regex's `$` matches before a last newline: names are matched whole
    assert any("customers" in p for p in problems(BASE.replace("  acme: {plan", '  "acme\\n": {plan')))
    assert any("keys[0]" in p for p in problems(BASE.replace('"]}', '\\n"]}')))


def test_invalid_yaml_names_the_line():
    found = problems("server: {host: [\n")
    assert "line" in found[0] and "not valid YAML" in found[0]


def test_check_config_command_reports_errors_and_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(BASE.replace('input: "0.15"', 'input: "0,15"'))
    assert cli(["check-config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "models.gpt-4o-mini.cost.input" in err


def test_check_config_command_accepts_a_good_file(tmp_path, capsys):
    good = tmp_path / "good.yaml"
    good.write_text(BASE)
    assert cli(["check-config", str(good)]) == 0
    assert "ok" in capsys.readouterr().out


def test_keys_create_prints_a_key_whose_hash_is_the_config_entry(capsys):
    import hashlib

    assert cli(["keys", "create", "demo"]) == 0
    out = capsys.readouterr().out
    key = out.split("key:")[1].split()[0]
    digest = hashlib.sha256(key.encode()).hexdigest()
    assert f"sha256:{digest}" in out


@pytest.mark.parametrize("old, new, expected", [
    ('input: "0.15"', 'input: "0.1234567891"', "models.gpt-4o-mini.cost.input: 0.1234567891 has more than 9 decimal places"),
    ('markup: "1.25"', 'markup: "1.2345"', "plans.payg.price.markup: 1.2345 has more than 3 decimal places"),
])
def test_prices_are_bounded_so_every_amount_is_exact_in_18_places(old, new, expected):
    assert any(expected in p for p in problems(BASE.replace(old, new, 1)))


def test_a_rate_limit_above_the_supported_bound_is_a_config_error():
    text = BASE.replace("acme: {plan: payg,", "acme: {plan: payg, rate_limit: {tpm: 10000000000},")
    assert any("customers.acme.rate_limit.tpm: 10000000000 is above" in p for p in problems(text))


def test_a_customer_with_rate_limits_keeps_its_own_id():
    text = BASE.replace("acme: {plan: payg,", "acme: {plan: payg, rate_limit: {rpm: 5, tpm: 100},")
    config = parse(text)
    assert set(config.customers) == {"acme"} and config.customers["acme"].rate_limit.tpm == 100


def test_a_price_above_a_prompt_size_may_name_its_threshold_unquoted():
    text = BASE.replace('output: "0.60"}', 'output: "0.60", above: {200000: {input: "0.30", output: "1.20"}}}')
    (threshold, above), = parse(text).models["gpt-4o-mini"].prices[0].above
    assert threshold == 200_000 and (above.input, above.output) == (Decimal("0.30"), Decimal("1.20"))


def test_a_litellm_tier_above_a_prompt_size_keeps_the_cache_prices_it_does_not_give():
    from config import pricedb

    entry = {name: Decimal(value) for name, value in (  # as the price map is read: its numbers as Decimals
        ("input_cost_per_token", "1.25e-06"), ("output_cost_per_token", "2.5e-06"),
        ("cache_read_input_token_cost", "2e-07"), ("input_cost_per_token_above_200k_tokens", "2.5e-06"),
        ("output_cost_per_token_above_200k_tokens", "5e-06"))}
    (threshold, above), = pricedb.price_of(entry).above
    assert threshold == 200_000 and above.input == Decimal("2.5")
    assert above.cached_input == Decimal("0.2")  # as litellm prices it: the base read, not the tier's input
    assert above.cache_write == Decimal("2.5")  # no write price anywhere: the tier's input
    entry["cache_read_input_token_cost_above_200k_tokens"] = Decimal("4e-07")
    assert pricedb.price_of(entry).above[0][1].cached_input == Decimal("0.4")


def test_every_litellm_price_fits_the_ledgers_precision():
    """Finding 9: litellm's float prices (e.g. bigmodel/glm-5.3) at markup 1.25 gave amounts with
    more than 18 places, and every call of such a model failed after the provider answered."""
    from config import pricedb

    prices = [pricedb.price_of(entry) for entry in pricedb._database().values()]
    prices = [p for p in prices if p is not None]
    assert len(prices) > 1000
    for price in prices:
        for value in (price.input, price.cached_input, price.output):
            assert value.as_tuple().exponent >= -9
    glm = pricedb.price_of(pricedb.lookup("bigmodel/glm-5.3"))
    assert glm.input == Decimal("1.142857143")  # 1.1428571428571428e-06 per token, rounded up
