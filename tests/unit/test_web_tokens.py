"""The web faces' pure parts: signed tokens, CSRF tokens, hourly traffic, statement CSV, shipped assets."""

from __future__ import annotations

import csv
import io
import re
from decimal import Decimal

import pytest

from proxy.web import tokens
from proxy.web.assets import Assets, Html, esc
from proxy.web.history import statement_csv
from proxy.web.traffic import Traffic, classify

KEY = tokens.derive(b"admin-key-0123456789", tokens.PORTAL)
NOW = 1_800_000_000


def payload(**changes) -> dict:
    return {"t": "portal", "c": "acme", "k": None, "e": NOW + 600, "n": "nonce", **changes}


def test_a_token_opens_what_it_was_signed_for_until_it_expires():
    token = tokens.sign(KEY, payload())
    assert tokens.verify(KEY, token, kind="portal", now=NOW)["c"] == "acme"
    with pytest.raises(tokens.BadToken) as expired:
        tokens.verify(KEY, token, kind="portal", now=NOW + 600)
    assert expired.value.reason == "expired"


def _flip(text: str, at: int) -> str:
    return text[:at] + ("A" if text[at] != "A" else "B") + text[at + 1:]


@pytest.mark.parametrize("make", [
    lambda t: _flip(t, 3),  # the payload changed
    lambda t: _flip(t, len(t) - 5),  # the signature changed
    lambda t: t.split(".")[0],  # no signature
    lambda t: t + ".x",  # three parts
    lambda t: t[:-1],  # cut short
    lambda t: "",
    lambda t: "é" + t,  # not ASCII
    lambda t: t + "A" * tokens.MAX_TOKEN,  # too long
    lambda t: tokens.sign(tokens.derive(b"another-admin-key-000", tokens.PORTAL), payload()),  # another key
    lambda t: tokens.sign(tokens.derive(b"admin-key-0123456789", tokens.CONSOLE), payload()),  # another purpose
    lambda t: tokens.sign(KEY, payload(t="console")),  # another kind
    lambda t: tokens.sign(KEY, payload(e="soon")),  # an expiry that is not a number
    lambda t: t + "=",  # padding added to the mac (the same bytes, spelled otherwise)
], ids=["payload", "mac", "no-mac", "three-parts", "cut", "empty", "non-ascii", "too-long", "other-key",
        "other-purpose", "other-kind", "bad-expiry", "padded"])
def test_a_tampered_or_foreign_token_is_invalid(make):
    with pytest.raises(tokens.BadToken) as bad:
        tokens.verify(KEY, make(tokens.sign(KEY, payload())), kind="portal", now=NOW)
    assert bad.value.reason == "invalid"


def test_a_changed_payload_is_invalid_even_when_well_formed():
    body, mac = tokens.sign(KEY, payload()).split(".")
    other_body = tokens.sign(KEY, payload(c="globex")).split(".")[0]
    with pytest.raises(tokens.BadToken):
        tokens.verify(KEY, f"{other_body}.{mac}", kind="portal", now=NOW)


def test_csrf_tokens_belong_to_one_session():
    csrf_key = tokens.derive(b"admin-key-0123456789", tokens.CSRF)
    mine = tokens.csrf_token(csrf_key, "nonce-1")
    assert tokens.csrf_ok(csrf_key, "nonce-1", mine)
    assert not tokens.csrf_ok(csrf_key, "nonce-2", mine)
    assert not tokens.csrf_ok(csrf_key, "nonce-1", None)
    assert not tokens.csrf_ok(csrf_key, "nonce-1", "")
    assert not tokens.csrf_ok(tokens.derive(b"another-admin-key-000", tokens.CSRF), "nonce-1", mine)


@pytest.mark.parametrize("status, kind", [(200, "ok"), (303, "ok"), (400, "invalid"), (404, "invalid"),
                                          (413, "invalid"), (401, "refused"), (403, "refused"), (429, "refused"),
                                          (500, "errors"), (502, "errors"), (504, "errors")])
def test_traffic_classes(status, kind):
    assert classify(status) == kind


def test_traffic_counts_by_hour_and_forgets_old_hours():
    traffic = Traffic()
    hour = 3600 * 500_000
    traffic.record(status=200, code=None, at=hour + 10)
    traffic.record(status=429, code="spend_cap_reached", at=hour + 20)
    traffic.record(status=502, code="upstream_error", at=hour + 3600 + 5)
    rows = traffic.recent(3, now=hour + 3600 + 10)
    assert [r["requests"] for r in rows] == [0, 2, 1]
    assert rows[1]["refused"] == 1 and rows[2]["errors"] == 1 and rows[1]["ok"] == 1
    assert dict(traffic.top_codes(3, now=hour + 3600 + 10)) == {"spend_cap_reached": 1, "upstream_error": 1}
    traffic.record(status=200, code=None, at=hour + 100 * 3600)
    assert min(traffic.hours) > hour + 3600  # older than KEEP_HOURS: dropped


def test_a_statement_as_csv_has_its_lines_and_the_rounded_total():
    body = {"currency": "USD", "period": {"start": "2026-11-01T00:00:00+00:00", "end": "2026-12-01T00:00:00+00:00"},
            "lines": [{"metric": "tokens", "model": "fake-ok", "quantity": "60", "unit_price": None, "tier": None,
                       "amount": "1.11"}],
            "base_fee": "0.00", "subtotal": "1.11", "total": "1.11"}
    rows = list(csv.reader(io.StringIO(statement_csv(body))))
    assert rows[0] == ["line", "metric", "model", "tier", "quantity", "unit_price", "amount", "currency"]
    assert rows[1] == ["usage", "tokens", "fake-ok", "", "60", "", "1.11", "USD"]
    assert ["total", "", "", "", "", "", "1.11", "USD"] in rows


def test_a_statement_with_credits_as_csv_adds_up_to_its_total():
    body = {"currency": "USD", "period": {"start": "2026-11-01T00:00:00+00:00", "end": "2026-12-01T00:00:00+00:00"},
            "lines": [], "base_fee": "2.00", "subtotal": "10.50", "total": "2.00",
            "credits": [{"grant": "paid", "amount": "6.00"}, {"grant": "promo", "amount": "2.50"}],
            "credits_applied": "8.50", "credit_balance_carried": "0.50"}
    rows = list(csv.reader(io.StringIO(statement_csv(body))))
    credits = [row for row in rows if row[0] == "credit"]
    assert [(row[1], row[6]) for row in credits] == [("paid", "-6.00"), ("promo", "-2.50")]
    subtotal = next(row[6] for row in rows if row[0] == "subtotal")
    total = next(row[6] for row in rows if row[0] == "total")
    assert Decimal(subtotal) + sum(Decimal(row[6]) for row in credits) == Decimal(total)
    assert ["credit_balance_carried", "", "", "", "", "", "0.50", "USD"] in rows


def test_templates_escape_values_and_every_asset_they_name_is_shipped():
    assets = Assets.load()
    page = assets.render("message.html", title="<script>x</script>", message=Html("<b>kept</b>"))
    assert "&lt;script&gt;" in page and "<b>kept</b>" in page
    assert esc('"') == "&quot;"
    for name, template in assets.templates.items():
        for asset in re.findall(r'/static/([\w.-]+)', template.template):
            assert asset in assets.static, (name, asset)
        assert "<script>" not in template.template and "style=" not in template.template, name  # CSP: no inline
        assert "http://" not in template.template and "https://" not in template.template, name  # nothing external
    for name, (body, _) in assets.static.items():
        assert b"http://" not in body.replace(b"http://www.w3.org/2000/svg", b"") and b"https://" not in body, name


def test_derived_keys_differ_by_purpose_and_by_admin_key():
    keys = {tokens.derive(root, purpose) for root in (b"admin-key-0123456789", b"admin-key-0123456780")
            for purpose in (tokens.PORTAL, tokens.CONSOLE, tokens.CSRF)}
    assert len(keys) == 6
