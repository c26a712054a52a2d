"""Thousands of hostile requests over every route against a real proxy on PostgreSQL (issue 7).

The cases come from `tests/fuzz` (seeded: `PAYWARE_FUZZ_SEED`, `PAYWARE_FUZZ_CASES`): wrong
JSON types in every field, huge and deeply nested JSON, non-UTF-8 bodies, lone surrogates and
NULs, hostile header values, absurd `max_tokens`, content encodings on plain bodies, usage
records and caps at and past every bound, unknown paths, and malformed HTTP on a raw socket.

What must hold: no 500 and no dropped connection; every error in the route's envelope (a 400
for malformed HTTP); no secret in any answer or log line; every served call and record in the
ledger exactly once and nothing else there; the provider called exactly for the served calls
and its own refusals; and afterwards a normal call reaches the ledger within its flush interval.
Failures are grouped into one table rather than stopping at the first.

Run alone: `PAYWARE_TEST_POSTGRES_URL=postgresql://postgres@127.0.0.1:55432/payware_test
.venv/bin/python -m pytest -q tests/integration/test_hostile_fuzz.py` (about 10 s on a sound
proxy; up to ~50 s while the ledger is stuck, as reads then wait for it). Add a route to
`tests/fuzz/routes.py`; give it a family of mutators and an envelope if it is a new kind.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from tests.conftest import ADMIN_KEY, KEYS, key_hash, proxy_config
from tests.fuzz import judge as J
from tests.fuzz.cases import Case
from tests.fuzz.generators import cap_phase, generate
from tests.fuzz.raw import malformed
from tests.fuzz.wire import Answer, exchange, request_bytes

pytestmark = pytest.mark.postgres

SEED = int(os.environ.get("PAYWARE_FUZZ_SEED", "20261127"))
CASES = int(os.environ.get("PAYWARE_FUZZ_CASES", "4000"))
CONCURRENCY = 16
TIMEOUT = 10.0  # per request: beyond it the request counts as dropped
FLUSH_INTERVAL = 0.05  # storage.flush_interval of proxy_config
FLUSH_SLACK = 2.0
PROVIDER_KEY = "sk-real-provider-secret"
SECRETS = {"acme key": KEYS["acme"], "globex key": KEYS["globex"], "admin key": ADMIN_KEY,
           "provider key": PROVIDER_KEY}
# The fake provider's own refusals (tests/fakes/upstream.py), passed through and never billed.
PROVIDER_REFUSALS = (b"Invalid value for 'temperature': expected a number.",
                     b"Rate limit reached for requests. Please try again in 1s.")


@pytest.fixture
def fuzz_ledger(postgres_url: str) -> Iterator[str]:
    """A database of this test alone, dropped afterwards."""
    parts = urlsplit(postgres_url)
    name = f"payware_fuzz_{uuid.uuid4().hex[:12]}"
    maintenance = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(maintenance, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield urlunsplit(parts._replace(path="/" + name))
    with psycopg.connect(maintenance, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def fuzz_config(upstream_url: str, folder: Path, ledger: str) -> str:
    """acme: a hard cap and rate limits; globex: neither. Bodies up to 1 MiB reach the parser."""
    customers = f"""
  acme:
    plan: payg
    cap: {{amount: "50.00", action: block, mode: hard}}
    rate_limit: {{rpm: 100000, tpm: 5000000}}
    keys: ["{key_hash(KEYS['acme'])}"]
  globex: {{plan: payg, keys: ["{key_hash(KEYS['globex'])}"]}}
"""
    plans = '  payg: {interval: monthly, price: {markup: "1.25", metrics: {agent_actions: "0.002"}}}\n'
    text = proxy_config(upstream_url, folder, customers=customers, plans=plans, ledger=ledger)
    # NOTE: JSON 100,000 deep is 200 KB: past the shared config's 64 KB it would only ever meet the 413
    return text.replace("max_body_bytes: 65536", f"max_body_bytes: {1024 * 1024}")


async def send_all(port: int, cases: list[Case], concurrency: int) -> list[tuple[Case, Answer]]:
    gate = asyncio.Semaphore(concurrency)

    async def one(case: Case) -> tuple[Case, Answer]:
        async with gate:
            answer = await exchange("127.0.0.1", port, case.wire(port), timeout=5.0 if case.raw else TIMEOUT)
            return case, answer

    return await asyncio.gather(*(one(case) for case in cases))


async def call(port: int, method: str, target: str, key: str, body: bytes | None = None) -> Answer:
    headers = [(b"Authorization", b"Bearer " + key.encode()), (b"Content-Type", b"application/json")]
    return await exchange("127.0.0.1", port, request_bytes(method, target, headers, body, port=port), timeout=30.0)


async def ledger_rows(ledger: str) -> dict[str, tuple[str, str]]:
    async with await psycopg.AsyncConnection.connect(ledger) as conn:
        rows = await (await conn.execute("SELECT id, customer, endpoint FROM usage_events")).fetchall()
    return {row[0]: (row[1], row[2]) for row in rows}


async def in_ledger(ledger: str, event_id: str) -> bool:
    async with await psycopg.AsyncConnection.connect(ledger) as conn:
        row = await (await conn.execute("SELECT 1 FROM usage_events WHERE id = %s", (event_id,))).fetchone()
    return row is not None


def journal_ids(path: Path) -> list[str]:
    """The event ids in the journal, in the order they were written."""
    ids = []
    if path.exists():
        for line in path.read_bytes().splitlines():
            try:
                ids.append(json.loads(line)["id"])
            except (ValueError, KeyError, TypeError):
                continue
    return ids


async def after_run_calls(port: int, ledger: str) -> tuple[list[J.Failure], list[str]]:
    """A normal call per customer must reach the ledger within the flush interval (+ slack)."""
    failures, ids = [], []
    body = json.dumps({"model": "fake-ok", "messages": [{"role": "user", "content": "after the fuzz"}]}).encode()
    for customer in ("globex", "acme"):
        answer = await call(port, "POST", "/v1/chat/completions", KEYS[customer], body)
        rid = answer.header("X-Payware-Request-Id")
        example = f"a valid chat call of {customer} after the run"
        if answer.status != 200 or not rid:
            failures.append(J.Failure("normal call after the run not served", "POST /v1/chat/completions",
                                      J.status_text(answer), "after-run check", example, repr(answer.body[:160])))
            continue
        ids.append(rid)
        deadline = time.monotonic() + FLUSH_INTERVAL + FLUSH_SLACK
        while not await in_ledger(ledger, rid):
            if time.monotonic() > deadline:
                failures.append(J.Failure("normal call after the run not in the ledger in time",
                                          "POST /v1/chat/completions", "200", "after-run check", example,
                                          f"{rid} not in the ledger {FLUSH_INTERVAL + FLUSH_SLACK:.2f} s after "
                                          f"its answer (flush_interval {FLUSH_INTERVAL} s)"))
                break
            await asyncio.sleep(0.02)
    return failures, ids


async def api_ledger(port: int) -> tuple[dict[str, dict], list[J.Failure]]:
    """`GET /v1/usage/events` of each customer, read with the admin key."""
    events, failures = {}, []
    for customer in ("acme", "globex"):
        answer = await call(port, "GET", f"/v1/usage/events?customer={customer}", ADMIN_KEY)
        if answer.status != 200:
            failures.append(J.Failure("GET /v1/usage/events failed after the run", "GET /v1/usage/events",
                                      J.status_text(answer), "after-run check", f"customer={customer}",
                                      repr(answer.body[:160])))
            continue
        for line in answer.body.splitlines():
            event = json.loads(line)
            events[event["id"]] = event
    return events, failures


def reconcile(results: list[tuple[Case, Answer]], api_events: dict[str, dict], db: dict[str, tuple[str, str]],
              journal: list[str], stats: dict, extra_served: list[str], log: J.LogReport) -> list[J.Failure]:
    """Every served call and record billed exactly once; nothing else billed; the provider agrees."""
    failures = []
    served: dict[str, tuple[Case, Answer]] = {}
    refused: dict[str, tuple[Case, Answer]] = {}
    for case, answer in results:
        for event_id in J.served_ids(case, answer):
            served.setdefault(event_id, (case, answer))  # a replayed idempotency key: the first stands
        rid = J.request_id_of_500(answer) if answer.status == 500 else None
        if rid:
            refused[rid] = (case, answer)
    allowed = set(served) | set(extra_served)
    if set(api_events) != set(db):
        only_api, only_db = set(api_events) - set(db), set(db) - set(api_events)
        failures.append(J.Failure("GET /v1/usage/events disagrees with the ledger table", "GET /v1/usage/events",
                                  "200", "after-run check", f"{len(only_api)} only in the API, {len(only_db)} "
                                  "only in the table", repr(sorted(only_api | only_db)[:3])))
    ledger = set(api_events) | set(db)
    missing = [event_id for event_id in served if event_id not in ledger]
    position = {event_id: n for n, event_id in enumerate(journal)}
    missing.sort(key=lambda event_id: position.get(event_id, len(position)))
    classes = {served[event_id][0].klass for event_id in missing}
    stuck = len(classes) > 12  # every kind of event is missing: the ledger stopped taking events
    ledger_errors = [f"{line} (x{count})" for (message, line), count in log.exceptions.most_common()
                     if "ledger" in message]
    why = f"; the log: {'; '.join(ledger_errors)}" if ledger_errors else ""
    for event_id in missing:
        case, answer = served[event_id]
        where = "journaled, not in the ledger" if event_id in position else "in neither the journal nor the ledger"
        if stuck:
            first = served[missing[0]][0]
            failures.append(J.Failure("served (2xx) but not billed in the ledger", case.route, "2xx",
                                      f"any of {len(classes)} classes (the ledger stopped taking events)",
                                      f"earliest missing in journal order: {first.klass}: {first.example()}",
                                      where + why))
        else:
            failures.append(J.Failure("served (2xx) but not billed in the ledger", case.route, "2xx", case.klass,
                                      case.example(), where))
    for event_id in sorted(ledger - allowed):
        if event_id in refused:
            case, answer = refused[event_id]
            failures.append(J.Failure("billed but answered 500", case.route, "500", case.klass, case.example(),
                                      log.by_request.get(event_id, "")))
        else:
            customer, endpoint = db.get(event_id) or (api_events[event_id].get("customer"),
                                                      api_events[event_id].get("endpoint"))
            failures.append(J.Failure("billed without a 2xx answer", f"(ledger: {endpoint})", "-", "(unattributed)",
                                      f"event {event_id} of {customer}"))
    # The provider: called once per served model call, plus its own refusals.
    counted = stats.get("requests", {})
    expected: Counter = Counter()
    for case, answer in results:
        if case.upstream_path and answer.status is not None and case.endpoint:
            if 200 <= answer.status < 300 or any(m in answer.body for m in PROVIDER_REFUSALS):
                expected[case.upstream_path] += 1
    for path in sorted(set(counted) | set(expected)):
        if counted.get(path, 0) != expected[path]:
            failures.append(J.Failure(
                "provider called for calls not served (so never billed)", f"POST {path}",
                f"provider {counted.get(path, 0)} vs {expected[path]}", "(whole run)",
                "the fake provider's /_stats count against the 2xx answers and passed-through provider errors",
                f"{counted.get(path, 0) - expected[path]} provider calls with no 2xx answer and no event"))
    return failures


async def test_thousands_of_hostile_requests_get_no_500_no_leaked_key_and_every_served_call_billed_once(
        proxy_factory, fake_upstream, fuzz_ledger, tmp_path):
    started = time.monotonic()
    folder = tmp_path / "fuzz"
    folder.mkdir()
    proxy = proxy_factory(fuzz_config(fake_upstream.url, folder, fuzz_ledger), name="fuzz")
    fake_upstream.reset()
    keys = {"acme": KEYS["acme"], "globex": KEYS["globex"], "admin": ADMIN_KEY}
    cases = generate(SEED, CASES, keys)
    cases += malformed(SEED, keys, start=len(cases))
    sequences = cap_phase(SEED, keys, start=len(cases))
    ready = time.monotonic()

    results = await send_all(proxy.port, cases, CONCURRENCY)
    for sequence in sequences:  # each changes a cap: one at a time, with its probe and reset
        results += await send_all(proxy.port, sequence, 1)
    sent = time.monotonic()
    stats = fake_upstream.stats()

    failures, after_ids = await after_run_calls(proxy.port, fuzz_ledger)
    api_events, api_failures = await api_ledger(proxy.port)
    failures += api_failures
    db = await ledger_rows(fuzz_ledger)
    log = J.read_log(proxy.log(), SECRETS)
    for case, answer in results:
        found = J.judge(case, answer, SECRETS)
        rid = J.request_id_of_500(answer) if answer.status == 500 else None
        for failure in found:
            if failure.check == "status 500" and rid:
                failure.detail = log.by_request.get(rid, "(no traceback in the log)")
        failures += found
    failures += reconcile(results, api_events, db, journal_ids(folder / "payware.journal"), stats, after_ids, log)
    for name, lines in log.secret_hits.items():
        failures.append(J.Failure("secret in the proxy log", "(log)", "-", f"the {name}",
                                  f"{len(lines)} log lines, e.g. {lines[0]}"))
    proxy.kill()  # nothing left to check; a stuck ledger would hold a clean stop for 10 s
    finished = time.monotonic()

    statuses = Counter(J.status_text(answer) for _, answer in results)
    report = [f"fuzz seed {SEED}: {len(results)} requests ({len(cases)} concurrent, "
              f"{sum(map(len, sequences))} cap-phase), {len(set(c.klass for c, _ in results))} classes of input",
              f"statuses: {dict(statuses.most_common())}",
              f"provider calls: {stats.get('requests')}; ledger events: {len(db)}",
              f"time: set-up {ready - started:.1f} s, requests {sent - ready:.1f} s, checks {finished - sent:.1f} s"]
    if log.exceptions:
        report.append("exceptions in the proxy log (message | exception | count):")
        report += [f"  {message} | {line} | x{count}" for (message, line), count in log.exceptions.most_common(25)]
    print("\n".join(report))
    if failures:
        pytest.fail("\n".join(report) + f"\n{len(failures)} failures ({J.summary_by_check(failures)})\n"
                    + J.table(failures), pytrace=False)
