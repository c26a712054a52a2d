"""Moments taken from outside (a key's or a grant's expiry) are bounded before anything is kept,
and one kept out of bounds by an older version cannot stop the directory or the grants loading.

An expiry "9999-12-31T23:59:59-14:00" is in the year 10000 in UTC, which no `datetime` holds:
kept, it failed every later load of the directory (the proxy would not start, a key revoked
kept working) and every read of the customer's grants (its calls answered 500)."""

from __future__ import annotations

import hashlib
import logging
from datetime import datetime, timezone
from decimal import Decimal

import pytest
from aiohttp.test_utils import make_mocked_request

from config.loader import parse_config
from config.schema import key_id
from metering.billing.credits import allocate, balance
from metering.store.credits import CreditStore
from metering.store.directory import INSTANTS_END, DirectoryStore, moment_of, now_us
from metering.store.events import to_us
from metering.store.ledger import Ledger
from proxy.admin_ops import instant_us, iso
from proxy.errors import InvalidApiKey, InvalidRequest
from proxy.live import Live
from tests.conftest import proxy_config

YEAR_10000_US = to_us(datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone.utc)) + 14 * 3600 * 1_000_000
UNREADABLE = [YEAR_10000_US, -2**62, 2**62]  # after 9999-12-31 UTC, before year 1, far past both


@pytest.mark.parametrize("value", [
    "9999-12-31T23:59:59-14:00",  # year 10000 once in UTC: the red team's
    "9998-12-31T23:59:59-14:00",  # 9999-01-01T13:59:59Z: at the bound after the offset
    "9999-01-01T00:00:00Z",  # the bound itself
    "9999-01-01T00:00:00+00:00",
    "9999-06-30",
    "9999-12-31T23:59:59.999999",
    "+10000-01-01",  # fromisoformat refuses it: a 400 all the same
    "10000-01-01T00:00:00Z",
    253402300800,  # 10000-01-01 as a unix time
    to_us(INSTANTS_END) // 1_000_000,  # 9999-01-01 as a unix time
    Decimal("1e400"),
    10**30,
])
def test_a_moment_at_or_past_the_bound_is_a_400_naming_the_field(value):
    with pytest.raises(InvalidRequest) as refused:
        instant_us(value, "expires_at")
    assert refused.value.param == "expires_at" and refused.value.status == 400
    assert "9999-01-01T00:00:00Z" in refused.value.message


@pytest.mark.parametrize(("value", "shown"), [
    ("9998-12-31T23:59:59.999999Z", "9998-12-31T23:59:59.999999+00:00"),
    ("9999-01-01T09:59:59+14:00", "9998-12-31T19:59:59+00:00"),  # 9999 in its own offset, 9998 in UTC
    (to_us(INSTANTS_END) // 1_000_000 - 1, "9998-12-31T23:59:59+00:00"),
    ("2100-01-01T00:00:00-14:00", "2100-01-01T14:00:00+00:00"),
])
def test_a_moment_just_inside_the_bound_is_kept_exactly(value, shown):
    assert iso(instant_us(value, "expires_at")) == shown


def test_a_past_moment_is_still_refused():
    with pytest.raises(InvalidRequest, match="must be in the future"):
        instant_us("2001-01-01T00:00:00Z", "expires_at")


def test_a_kept_moment_reads_back_exactly_and_an_unreadable_one_is_a_value_error():
    assert moment_of(to_us(INSTANTS_END) - 1) == datetime(9998, 12, 31, 23, 59, 59, 999999, tzinfo=timezone.utc)
    for us in UNREADABLE:
        with pytest.raises(ValueError):
            moment_of(us)


@pytest.fixture
def ledger(tmp_path):
    ledger = Ledger(f"sqlite:///{tmp_path}/ledger.db")
    yield ledger
    ledger.close()


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _make_key(store: DirectoryStore, customer: str, key: str, expires_us: int | None) -> str:
    kid = key_id(_digest(key))
    store.create_key(id=kid, customer=customer, digest=_digest(key), name="", prefix=key[:8], settings={},
                     expires_us=expires_us)
    return kid


def _request(key: str):
    return make_mocked_request("GET", "/v1/models", headers={"Authorization": f"Bearer {key}"})


@pytest.mark.parametrize("poison", UNREADABLE)
async def test_a_kept_key_expiry_no_date_holds_refuses_that_key_only(ledger, tmp_path, caplog, poison):
    store = DirectoryStore(ledger.engine)
    for cid in ("victimco", "goodco"):
        assert store.create_customer(id=cid, plan="payg", settings={}, meta={})
    poisoned = _make_key(store, "victimco", "pw-poisoned", poison)  # as an older version kept it
    sibling = _make_key(store, "victimco", "pw-sibling", None)
    good = _make_key(store, "goodco", "pw-good", now_us() + 3600 * 1_000_000)
    config = parse_config(proxy_config("http://127.0.0.1:9/v1", tmp_path), env={})
    live = Live(config, store=store)
    with caplog.at_level(logging.WARNING, logger="payware.directory"):
        assert await live.refresh(force=True)  # the start's load, then the poll's: neither fails
        store.create_customer(id="newco", plan="payg", settings={}, meta={})
        assert await live.refresh()
        assert "newco" in live.config.customers
    told = [r for r in caplog.records if poisoned in r.getMessage()]
    assert len(told) == 1 and "refused as expired" in told[0].getMessage()  # once, not every poll
    with pytest.raises(InvalidApiKey, match="revoked or has expired"):
        live.keyring.caller(_request("pw-poisoned"))
    assert live.keyring.caller(_request("pw-sibling")).key_id == sibling
    assert live.keyring.caller(_request("pw-good")).key_id == good
    assert live.keyring.caller(_request("pw-test-acme-key")).customer.id == "acme"  # the file's keys too
    row = store.key(poisoned)  # the admin list reads it as expired when made
    assert row["expires_us"] == row["created_us"] and iso(row["expires_us"]) is not None
    assert store.end_key(poisoned, revoke=True, at_us=now_us())  # and it can be revoked
    assert await live.refresh()


@pytest.mark.parametrize("poison", UNREADABLE)
def test_a_kept_grant_expiry_no_date_holds_counts_as_expired(ledger, caplog, poison):
    credits = CreditStore(ledger.engine)
    with caplog.at_level(logging.WARNING, logger="payware.credits"):
        good, _ = credits.grant(id="cg_good", customer="acme", amount=Decimal("5"), priority=0, expires_us=None,
                                reason="", idempotency_key="good")
        bad, new = credits.grant(id="cg_bad", customer="acme", amount=Decimal("7"), priority=0, expires_us=poison,
                                 reason="", idempotency_key="bad")  # as an older version kept it
        grants = credits.grants("acme")
        assert credits.grants("acme") == grants
    assert new and bad.expires == bad.created
    assert len([r for r in caplog.records if "cg_bad" in r.getMessage()]) == 1
    now = datetime.now(timezone.utc)
    allocation = allocate(grants, [], now)
    assert balance(grants, allocation, now) == Decimal("5")  # the good grant only
    assert allocation.expired == {"cg_bad": Decimal("7")}
    assert [g.active(now) for g in grants] == [True, False]
