"""The ledger on a real PostgreSQL server, and the same behaviour on SQLite."""

from __future__ import annotations

import json
from pathlib import Path
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from sqlalchemy import create_engine

from metering.store.events import UsageEvent, to_us
from metering.store.ledger import DeadLetterRow, EventRow, Ledger, OwnedRow


@pytest.fixture(params=["sqlite", "postgres"])
def ledger(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/ledger.db"
    else:
        url = request.getfixturevalue("postgres_url")
    ledger = Ledger(url)
    with ledger.engine.begin() as conn:
        conn.execute(EventRow.__table__.delete())
        conn.execute(OwnedRow.__table__.delete())
    yield ledger
    ledger.close()


def event(i: int, amount: str, **fields) -> UsageEvent:
    base = datetime(2026, 11, 1, tzinfo=timezone.utc)
    defaults = dict(id=f"req_{uuid.uuid4().hex}", ts=base + timedelta(minutes=i), customer="acme", key_id="key_1",
                    metric="tokens", quantity=Decimal(20), period="2026-11-01T00:00:00+00:00", model="gpt-4o-mini",
                    input_tokens=13, cached_input_tokens=4, output_tokens=7, reasoning_tokens=2,
                    cost=Decimal(amount), amount=Decimal(amount), session=f"s{i % 2}",
                    meta={"user": "u", "metadata": {"k": "v"}}, pricing={"markup": "1.25"},
                    raw_usage={"prompt_tokens": 13})
    return UsageEvent(**(defaults | fields))


def responses_event(i: int, response_id: str, customer: str = "acme", **meta) -> UsageEvent:
    return event(i, "0.01", customer=customer, endpoint="responses", provider="openai",
                 meta={"provider_id": response_id, **meta})


def test_a_batch_writes_the_responses_its_events_made_their_customers_own(ledger):
    ledger.append([event(0, "0.01"), responses_event(1, "resp_a"), responses_event(2, "resp_b", stored=False),
                   responses_event(3, "resp_a", customer="globex"), responses_event(4, "resp_c", customer="globex")])
    assert ledger.count() == 5
    owned = ledger.owned("resp_a")
    assert (owned.customer, owned.kind, owned.provider, owned.model, owned.context_tokens) == (
        "acme", "response", "openai", "gpt-4o-mini", 20)
    assert ledger.owned("resp_b") is None  # store: false: the provider keeps nothing to continue
    assert ledger.owned("resp_c").customer == "globex"
    ledger.append([responses_event(5, "resp_c")])  # a later event naming another's id takes nothing
    assert ledger.owned("resp_c").customer == "globex"
    assert ledger.owned("resp_\x00") is None


def test_a_replayed_journal_does_not_give_back_a_response_its_owner_deleted(ledger):
    kept, deleted = responses_event(0, "resp_kept"), responses_event(1, "resp_deleted")
    ledger.append([kept, deleted])
    ledger.disown("resp_deleted")
    assert ledger.insert([kept, deleted]) == 0  # the journal still held both: both were in the ledger
    assert ledger.owned("resp_deleted") is None and ledger.owned("resp_kept").customer == "acme"
    lost = responses_event(2, "resp_lost")  # journaled, then a crash before its batch
    assert ledger.insert([kept, lost]) == 1
    assert ledger.owned("resp_lost").customer == "acme"


def test_money_round_trips_exactly_to_18_places(ledger):
    amounts = ["0.0000073125", "0.000000000000000001", "123456789.123456789012345678", "4.28"]
    events = [event(i, a) for i, a in enumerate(amounts)]
    ledger.insert(events)
    back = {e.id: e for e in ledger.events(customer="acme")}
    for original in events:
        assert back[original.id].amount == original.amount
        assert back[original.id].cost == original.cost
        assert back[original.id].meta == original.meta and back[original.id].ts == original.ts


def test_a_replayed_event_is_written_once(ledger):
    events = [event(i, "0.01") for i in range(10)]
    assert ledger.insert(events) == 10
    assert ledger.insert(events + [event(11, "0.02")]) == 1
    assert ledger.count() == 11


def test_events_filter_by_time_session_and_model(ledger):
    ledger.insert([event(i, "0.01") for i in range(10)])
    start = datetime(2026, 11, 1, 0, 3, tzinfo=timezone.utc)
    end = datetime(2026, 11, 1, 0, 7, tzinfo=timezone.utc)
    assert len(list(ledger.events(customer="acme", start=start, end=end))) == 4
    assert len(list(ledger.events(customer="acme", session="s1"))) == 5
    assert list(ledger.events(customer="acme", model="other")) == []
    assert list(ledger.events(customer="globex")) == []


def test_the_sum_of_exported_amounts_is_exact(ledger):
    ledger.insert([event(i, "0.0000073125") for i in range(1000)])
    total = sum(e.amount for e in ledger.events(customer="acme"))
    assert total == Decimal("0.0073125")


def test_customer_caps_are_kept(ledger):
    ledger.set_customer_cap("acme", Decimal("2.50"))
    assert ledger.customer_caps()["acme"] == Decimal("2.50")
    ledger.set_customer_cap("acme", None)
    assert "acme" not in ledger.customer_caps()


def test_migrations_build_exactly_the_schema_the_models_describe(ledger):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from alembic.config import Config as AlembicConfig
    from alembic.script import ScriptDirectory

    from metering.store.ledger import SQLModel, head_revision, migrate

    migrate(ledger.engine)  # a second run is a no-op
    with ledger.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
        assert diff == []
        assert MigrationContext.configure(conn).get_current_revision() == head_revision()
    # The start-up check reads the head from the files' names: Alembic must agree with it.
    config = AlembicConfig()
    config.set_main_option("script_location", str(Path(migrate.__code__.co_filename).parent / "migrations"))
    assert ScriptDirectory.from_config(config).get_heads() == [head_revision()]


def test_a_current_schema_starts_without_alembic_and_an_older_one_is_still_migrated(tmp_path):
    import subprocess
    import sys

    from alembic import command
    from alembic.config import Config as AlembicConfig

    from metering.store.ledger import _MIGRATIONS, head_revision

    url = f"sqlite:///{tmp_path}/ledger.db"
    Ledger(url).close()  # a new database: migrated by Alembic
    probe = ("import sys; from metering.store.ledger import Ledger; Ledger(sys.argv[1]).close(); "
             "print('alembic' in sys.modules)")
    root = Path(__file__).resolve().parents[2]
    started = subprocess.run([sys.executable, "-c", probe, url], cwd=root, capture_output=True, text=True, timeout=60)
    assert started.stdout.strip() == "False", started.stderr  # at head: checked without importing Alembic
    config = AlembicConfig()
    config.set_main_option("script_location", str(_MIGRATIONS))
    with create_engine(url).begin() as conn:  # as a database the previous version left
        config.attributes["connection"] = conn
        command.downgrade(config, "-1")
    started = subprocess.run([sys.executable, "-c", probe, url], cwd=root, capture_output=True, text=True, timeout=60)
    assert started.stdout.strip() == "True", started.stderr
    with create_engine(url).connect() as conn:
        assert [r[0] for r in conn.exec_driver_sql("SELECT version_num FROM alembic_version")] == [head_revision()]


def test_the_flushers_batch_write_stores_what_insert_stores(ledger):
    # 250 events: INSERTs of 64 events, then of 32, 16, 8 and 2
    events = [event(i, "0.0000073125", meta={"user": f"u{i}", "n": [1, 2]}) for i in range(250)]
    ledger.append(events[:110])
    ledger.append(events)  # a replayed batch: the first 110 are skipped
    ledger.append([events[5], events[5], events[249]])  # the same event twice in one statement
    back = {e.id: e for e in ledger.events(customer="acme")}
    assert len(back) == 250 and ledger.count() == 250
    for original in events:
        assert back[original.id] == original  # every field, as `insert` stores it


def test_a_batch_write_is_a_few_inserts_of_power_of_two_sizes(ledger):
    """Not one per event: the DB driver releases the GIL around each statement, and under load the
    serving thread holds the writer up to 5 ms every time (its backlog grew without end). Not
    of any size either: each size is a cached prepared statement (one per size took 20 MiB)."""
    from sqlalchemy import event as sa_event

    from metering.store.ledger import _COLUMNS

    rows = []
    sa_event.listen(ledger.engine, "before_cursor_execute", lambda conn, cursor, sql, params, context, many:
                    sql.startswith("INSERT INTO usage_events") and rows.append(len(params) // len(_COLUMNS)))
    ledger.append([event(i, "0.01") for i in range(250)])
    assert rows == [64, 64, 64, 32, 16, 8, 2]


@pytest.fixture
def pg_ledger(postgres_url):
    ledger = Ledger(postgres_url)
    with ledger.engine.begin() as conn:
        conn.execute(EventRow.__table__.delete())
        conn.execute(DeadLetterRow.__table__.delete())
    yield ledger
    ledger.close()


@pytest.mark.parametrize("poison", [
    {"session": "s" * 300},  # past VARCHAR(256): what a long X-Payware-Session header used to be
    {"feature": "a\x00b"},  # PostgreSQL text holds no NUL
    {"cost": Decimal("1e25")},  # past NUMERIC(38, 18)
])
def test_a_row_postgres_refuses_is_kept_aside_and_never_holds_back_the_batch(pg_ledger, poison):
    """Finding 1: the recorder retried a batch holding such a row forever; no later event
    reached the ledger. Now the row is kept aside and the others are written."""
    events = [event(i, "0.01") for i in range(9)]
    bad = event(99, "0.01", **poison)
    kept = pg_ledger.write(events[:4] + [bad] + events[4:])
    assert [e.id for e in kept] == [bad.id]
    stored = {e.id: e for e in pg_ledger.events(customer="acme")}
    assert set(e.id for e in events) <= set(stored)
    dead, = pg_ledger.dead_letters("acme")
    assert dead["id"] == bad.id and dead["reason"]
    assert json.loads(dead["event"])["id"] == bad.id  # the evidence, whole, in ASCII JSON
    if "cost" in poison:  # no copy can hold that cost: evidence only
        assert not dead["billed"] and bad.id not in stored
    else:  # billed without its metadata
        assert dead["billed"] and stored[bad.id].meta == {"payware_kept_aside": True}
        assert stored[bad.id].amount == bad.amount
    assert pg_ledger.dead_letter_counts() == {"acme": 1}
    assert pg_ledger.write([bad]) == [bad]  # idempotent: kept aside once
    assert len(pg_ledger.dead_letters()) == 1


def test_an_outage_is_not_mistaken_for_a_bad_row(tmp_path):
    """A write to a database that does not answer raises (the batch is retried); nothing is kept aside."""
    ledger = Ledger(f"sqlite:///{tmp_path}/l.db")
    ledger.engine.dispose()
    ledger.engine = create_engine("postgresql+psycopg://postgres@127.0.0.1:1/nowhere")  # nothing listens
    with pytest.raises(Exception):
        ledger.write([event(1, "0.01")])


def test_pages_of_events_join_to_the_whole_in_order_even_where_times_tie(ledger):
    tied = [event(i // 3, "0.01") for i in range(10)]  # three events a minute: pages cut inside a tie
    ledger.append(tied)
    whole = [e.id for e in ledger.events(customer="acme")]
    assert sorted(whole) == sorted(e.id for e in tied)
    paged, after = [], None
    while True:
        page = list(ledger.events(customer="acme", after=after, limit=4))
        paged += [e.id for e in page]
        if len(page) < 4:
            break
        after = (to_us(page[-1].ts), page[-1].id)
    assert paged == whole
