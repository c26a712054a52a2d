"""Thousands of hostile requests over every route against a real proxy on PostgreSQL, once on
in-process counters and once on Redis counters (issue 7).

The cases come from `tests/fuzz` (seeded: `PAYWARE_FUZZ_SEED`, `PAYWARE_FUZZ_CASES`), over every
API Payware speaks (OpenAI's chat, completions, embeddings and Responses with its stored
responses; Anthropic's Messages and count_tokens; Gemini's generateContent, stream and
countTokens under /v1beta and /v1), the metering, billing and admin APIs, /metrics and the web
faces (/portal, /admin): wrong JSON types in every field, huge and deeply nested JSON,
non-UTF-8 bodies, lone surrogates and NULs, hostile header values, absurd output limits,
content encodings on plain bodies, hostile keys in every position a key may travel (Bearer,
x-api-key, x-goog-api-key, ?key=), another customer's stored responses, usage records and caps
at and past every bound, unknown paths, and malformed HTTP on a raw socket.

What must hold: no 500 and no dropped connection; every error in the route's envelope (OpenAI's,
Anthropic's, Google's; a page or OpenAI's for the web faces; a 400 for malformed HTTP); no
secret in any answer or log line (runtime keys included: only the answer that made one shows
it) and no Payware key at the provider; every served call and record in the ledger exactly
once and nothing else there (count_tokens and the stored responses' routes are never billed);
the provider called exactly for the served calls, the provider's own refusals and the stored
responses of their owner; no traceback in the proxy's log; and afterwards a normal call
reaches the ledger within its flush interval. Failures are grouped into one table rather
than stopping at the first.

Run alone: `PAYWARE_TEST_POSTGRES_URL=postgresql://postgres@127.0.0.1:55432/payware_test
.venv/bin/python -m pytest -q tests/integration/test_hostile_fuzz.py` (about 20 s on a sound
proxy). Add a route to `tests/fuzz/routes.py`; give it a family of mutators and an envelope if
it is a new kind.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import re
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from config.schema import key_id
from tests.conftest import ADMIN_KEY, KEYS, key_hash, proxy_config
from tests.fuzz import judge as J
from tests.fuzz.cases import Case, Context, Session
from tests.fuzz.generators import cap_phase, generate
from tests.fuzz.phases import NEW_KEY, NEW_KEY_ID, key_phase, key_probe
from tests.fuzz.raw import malformed
from tests.fuzz.routes import FUZZ_MODELS
from tests.fuzz.wire import Answer, exchange, request_bytes

pytestmark = pytest.mark.postgres

SEED = int(os.environ.get("PAYWARE_FUZZ_SEED", "20261127"))
CASES = int(os.environ.get("PAYWARE_FUZZ_CASES", "6000"))
CONCURRENCY = 16
TIMEOUT = 10.0  # per request: beyond it the request counts as dropped
FLUSH_INTERVAL = 0.05  # storage.flush_interval of proxy_config
FLUSH_SLACK = 2.0
PROVIDER_KEY = "sk-real-provider-secret"
SECRETS = {"acme key": KEYS["acme"], "globex key": KEYS["globex"], "admin key": ADMIN_KEY,
           "provider key": PROVIDER_KEY}
RUNTIME_KEY = re.compile(rb"pw-[A-Za-z0-9_-]{43}")  # a key the admin API or the console made
STORED_RESPONSES = 4  # per customer, before the run: the first is the key probes', the last the one deleted


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


def fuzz_config(upstream_url: str, folder: Path, ledger: str, counters: str | None = None) -> str:
    """acme: a hard cap and rate limits; globex: neither. Bodies up to 1 MiB reach the parser.
    `counters`: a Redis URL (the budget, rate limits, totals and announced responses there)."""
    customers = f"""
  acme:
    plan: payg
    cap: {{amount: "50.00", action: block, mode: hard}}
    rate_limit: {{rpm: 100000, tpm: 5000000}}
    keys: ["{key_hash(KEYS['acme'])}"]
  globex: {{plan: payg, keys: ["{key_hash(KEYS['globex'])}"]}}
"""
    plans = '  payg: {interval: monthly, price: {markup: "1.25", metrics: {agent_actions: "0.002"}}}\n'
    text = proxy_config(upstream_url, folder, customers=customers, plans=plans, ledger=ledger,
                        extra_models=FUZZ_MODELS, storage=f"  counters: {counters}" if counters else "")
    # NOTE: JSON 100,000 deep is 200 KB: past the shared config's 64 KB it would only ever meet the 413
    return text.replace("max_body_bytes: 65536", f"max_body_bytes: {1024 * 1024}")


async def send_all(port: int, cases: list[Case], concurrency: int) -> list[tuple[Case, Answer]]:
    gate = asyncio.Semaphore(concurrency)

    async def one(case: Case) -> tuple[Case, Answer]:
        async with gate:
            answer = await exchange("127.0.0.1", port, case.wire(port), timeout=5.0 if case.raw else TIMEOUT)
            return case, answer

    return await asyncio.gather(*(one(case) for case in cases))


async def call(port: int, method: str, target: str, key: str | None, body: bytes | None = None, *,
               headers: list[tuple[bytes, bytes]] = ()) -> Answer:
    lines = [(b"Authorization", b"Bearer " + key.encode())] if key else []
    if not any(name == b"Content-Type" for name, _ in headers):
        lines.append((b"Content-Type", b"application/json"))
    lines += headers
    return await exchange("127.0.0.1", port, request_bytes(method, target, lines, body, port=port), timeout=30.0)


class SetupFailed(Exception):
    """The proxy did not do what the run needs before it starts (a finding of its own)."""


async def open_context(port: int) -> tuple[Context, list[str]]:
    """Stored responses of each customer, and a session of each web face; the served calls' ids."""
    keys = {"acme": KEYS["acme"], "globex": KEYS["globex"], "admin": ADMIN_KEY}
    ctx = Context(keys=keys, key_ids={c: key_id(hashlib.sha256(KEYS[c].encode()).hexdigest()) for c in KEYS})
    served = []
    for customer in ("acme", "globex"):
        ctx.responses[customer] = []
        for i in range(STORED_RESPONSES):
            body = json.dumps({"model": "responses-fake-ok", "input": f"stored {i}"}).encode()
            answer = await call(port, "POST", "/v1/responses", KEYS[customer], body)
            if answer.status != 200:
                raise SetupFailed(f"POST /v1/responses for {customer}: {J.status_text(answer)} {answer.body[:200]!r}")
            ctx.responses[customer].append(json.loads(answer.body)["id"])
            served.append(answer.header("X-Payware-Request-Id"))
    origin = [(b"Origin", b"http://127.0.0.1:%d" % port)]
    for customer in ("acme", "globex"):
        cookie = await _sign_in(port, "/portal/login", KEYS[customer], origin)
        page = await call(port, "GET", "/portal", None, headers=[(b"Cookie", cookie)])
        found = re.search(rb'name="csrf-token" content="([^"]+)"', page.body)
        if not found:
            raise SetupFailed(f"GET /portal with {customer}'s session: {J.status_text(page)} {page.body[:200]!r}")
        ctx.portal[customer] = Session(cookie, found.group(1).decode())
    cookie = await _sign_in(port, "/admin/login", ADMIN_KEY, origin)
    page = await call(port, "GET", "/admin", None, headers=[(b"Cookie", cookie)])
    found = re.search(rb'name="csrf" value="([^"]+)"', page.body)
    if not found:
        raise SetupFailed(f"GET /admin with a console session: {J.status_text(page)} {page.body[:200]!r}")
    ctx.console = Session(cookie, found.group(1).decode())
    return ctx, served


async def _sign_in(port: int, path: str, key: str, origin: list) -> bytes:
    """A face's session cookie (`name=token`) for `key`."""
    form = b"key=" + key.encode()
    answer = await call(port, "POST", path, None, form,
                        headers=[(b"Content-Type", b"application/x-www-form-urlencoded"), *origin])
    cookie = answer.header("Set-Cookie")
    if answer.status != 303 or not cookie:
        raise SetupFailed(f"POST {path}: {J.status_text(answer)} {answer.body[:200]!r}")
    return cookie.split(";")[0].encode()


async def run_key_phase(port: int, sequences: list[list[Case]]) -> list[tuple[Case, Answer]]:
    """Each sequence in order; its later cases get the key (and id) its first answer made."""
    results = []
    for first, *rest in sequences:
        answer = (await send_all(port, [first], 1))[0][1]
        results.append((first, answer))
        try:
            made = json.loads(answer.body)
            kid, key = made["id"].encode(), made["key"].encode()
        except (ValueError, KeyError, TypeError, AttributeError):
            kid, key = b"key_none", b"pw-none"
        filled = [dataclasses.replace(case, target=case.target.replace(NEW_KEY_ID, kid.decode()),
                                      headers=[(n, v.replace(NEW_KEY.encode(), key)) for n, v in case.headers])
                  for case in rest]
        results += await send_all(port, filled, 1)
    return results


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
              journal: list[str], stats: dict, extra_served: list[str], log: J.LogReport,
              setup_calls: Counter) -> list[J.Failure]:
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
    # The provider: called once per served call, plus its own refusals and the stored responses it answered.
    counted = {path: count for path, count in stats.get("requests", {}).items() if not path.startswith("/_")}
    expected: Counter = Counter(setup_calls)
    for case, answer in results:
        if J.from_provider(case, answer):
            expected[case.upstream_path] += 1
    for path in sorted(set(counted) | set(expected)):
        if counted.get(path, 0) != expected[path]:
            failures.append(J.Failure(
                "provider called for calls not served (so never billed)", path,
                f"provider {counted.get(path, 0)} vs {expected[path]}", "(whole run)",
                "the fake provider's /_stats count against the answers that came from it (2xx, its own refusals)",
                f"{counted.get(path, 0) - expected[path]} provider calls with no answer from the provider"))
    return failures


def leaks(results: list[tuple[Case, Answer]], stats: dict) -> tuple[list[J.Failure], dict]:
    """Runtime keys shown by any answer but the one that made them; Payware keys at the provider.
    Returns the failures and every secret to look for in the log (runtime keys included)."""
    failures = []
    made: dict[bytes, int] = {}
    for case, answer in results:
        if answer.status is not None and 200 <= answer.status < 300:
            for key in RUNTIME_KEY.findall(answer.body):
                made.setdefault(key, case.n)
    for case, answer in results:
        for key, maker in made.items():
            if case.n != maker and key in answer.raw:
                failures.append(J.Failure("secret in the answer", case.route, J.status_text(answer), case.klass,
                                          case.example(), f"a key made at runtime by case #{maker}"))
    secrets = dict(SECRETS)
    secrets.update({f"runtime key #{n}": key.decode() for key, n in made.items()})
    payware = {name: value for name, value in secrets.items() if name != "provider key"}
    for request in stats.get("last", []):
        seen = json.dumps(request)
        for name, value in payware.items():
            if value in seen:
                failures.append(J.Failure("a Payware key reached the provider", request.get("path", "?"), "-",
                                          "(the provider's latest requests)", f"{name} in what the provider got",
                                          J.redact(seen, secrets)[:300]))
    return failures, secrets


@pytest.fixture(params=["memory", "redis"])
def fuzz_counters(request) -> str | None:
    """In-process counters, or a Redis database of this test alone (emptied first)."""
    if request.param == "memory":
        return None
    import redis

    url = request.getfixturevalue("redis_url").rsplit("/", 1)[0] + "/7"
    redis.Redis.from_url(url).flushdb()
    return url


async def test_thousands_of_hostile_requests_get_no_500_no_leaked_key_and_every_served_call_billed_once(
        proxy_factory, fake_upstream, fuzz_ledger, fuzz_counters, tmp_path):
    started = time.monotonic()
    folder = tmp_path / "fuzz"
    folder.mkdir()
    proxy = proxy_factory(fuzz_config(fake_upstream.url, folder, fuzz_ledger, fuzz_counters), name="fuzz")
    fake_upstream.reset()
    try:
        ctx, setup_served = await open_context(proxy.port)
    except SetupFailed as exc:
        failed = str(exc)
    else:
        failed = None
    if failed:
        pytest.fail(f"before the run: {failed}\n{proxy.log()[-3000:]}", pytrace=False)
    cases = generate(SEED, CASES, ctx)
    cases += malformed(SEED, ctx.keys, start=len(cases))
    sequences = cap_phase(SEED, ctx, start=len(cases))
    lifecycles = key_phase(SEED, ctx, start=len(cases) + sum(map(len, sequences)))
    probes = key_probe(ctx, start=len(cases) + sum(map(len, sequences)) + sum(map(len, lifecycles)))
    ready = time.monotonic()

    results = await send_all(proxy.port, cases, CONCURRENCY)
    for sequence in sequences:  # each changes a cap: one at a time, with its probe and reset
        results += await send_all(proxy.port, sequence, 1)
    results += await run_key_phase(proxy.port, lifecycles)
    results += await send_all(proxy.port, probes, 1)  # last: the provider's record shows their requests
    sent = time.monotonic()
    stats = fake_upstream.stats()

    failures, after_ids = await after_run_calls(proxy.port, fuzz_ledger)
    api_events, api_failures = await api_ledger(proxy.port)
    failures += api_failures
    db = await ledger_rows(fuzz_ledger)
    log_text = proxy.log()
    found_leaks, secrets = leaks(results, stats)
    failures += found_leaks
    log = J.read_log(log_text, secrets)
    for case, answer in results:
        found = J.judge(case, answer, SECRETS)
        rid = J.request_id_of_500(answer) if answer.status == 500 else None
        for failure in found:
            if failure.check == "status 500" and rid:
                failure.detail = log.by_request.get(rid, "(no traceback in the log)")
        failures += found
    failures += reconcile(results, api_events, db, journal_ids(folder / "payware.journal"), stats,
                          after_ids + setup_served, log, Counter({"/v1/responses": len(setup_served)}))
    for name, lines in log.secret_hits.items():
        failures.append(J.Failure("secret in the proxy log", "(log)", "-", f"the {name}",
                                  f"{len(lines)} log lines, e.g. {lines[0]}"))
    for (message, line), count in log.exceptions.items():
        if not any(message.startswith(m) for m in J.LOGGED_ON_PURPOSE):
            failures.append(J.Failure("traceback in the proxy log", "(log)", "-", message[:60],
                                      f"{count} tracebacks: {message}", line))
    proxy.kill()  # nothing left to check; a stuck ledger would hold a clean stop for 10 s
    finished = time.monotonic()

    statuses = Counter(J.status_text(answer) for _, answer in results)
    routes = Counter(case.route for case, _ in results)
    by_family: dict[str, Counter] = {}
    for case, answer in results:
        by_family.setdefault(case.family, Counter())[J.status_text(answer)] += 1
    report = [f"fuzz seed {SEED}: {len(results)} requests ({len(cases)} concurrent, {sum(map(len, sequences))} "
              f"cap-phase, {sum(map(len, lifecycles))} key-phase, {len(probes)} key probes) over {len(routes)} "
              f"routes, {len(set(c.klass for c, _ in results))} classes of input",
              f"statuses: {dict(statuses.most_common())}",
              *[f"  {family}: {dict(counts.most_common())}" for family, counts in sorted(by_family.items())],
              f"provider calls: {stats.get('requests')}; ledger events: {len(db)}",
              f"time: set-up {ready - started:.1f} s, requests {sent - ready:.1f} s, checks {finished - sent:.1f} s"]
    if log.exceptions:
        report.append("exceptions in the proxy log (message | exception | count):")
        report += [f"  {message} | {line} | x{count}" for (message, line), count in log.exceptions.most_common(25)]
    print("\n".join(report))
    if failures:
        pytest.fail("\n".join(report) + f"\n{len(failures)} failures ({J.summary_by_check(failures)})\n"
                    + J.table(failures), pytrace=False)
