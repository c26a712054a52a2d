"""The configuration in force, which changes while the proxy serves.

Two sources make it: the config file (providers, models, prices, plans, and the customers it
declares) and the runtime directory in the ledger database (customers and keys made through
the admin API or the CLI). `Live` holds their merge, as one immutable `Config`, and the
`KeyRing` built from it, and swaps both at once when either source changes:

- the file, on SIGHUP or `POST /v1/admin/reload`: validated whole first; an invalid file
  changes nothing and every problem is reported with its field path;
- the directory, when its version moves: polled every `POLL` seconds, and at once on a
  Redis pub/sub message when Redis is configured (so every proxy sharing the database
  applies a change within about a second), or on a PostgreSQL notification (a PostgreSQL
  ledger tells every change in its transaction: then the poll is only a backstop, every
  `BACKSTOP` seconds, while the listening connection is up).

A request reads `live.config` once, at its start, and keeps that object: calls in flight
finish on the config they started with; later events price at the new prices.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from decimal import Decimal

from config.loader import ConfigError, read_customer
from config.schema import Config, CustomerConfig, KeyPolicy, RateLimitConfig
from metering.store.directory import DirectoryStore, Snapshot, moment_of
from proxy.auth import KeyRing

log = logging.getLogger("payware.live")

POLL = 0.5  # seconds between two reads of the directory's version
BACKSTOP = 10.0  # the same while the database tells of every change (PostgreSQL LISTEN)
CHANNEL = "payware:directory"  # Redis pub/sub: "something changed, read the version"


class Live:
    """The merged config and its key ring, swapped atomically (see the module docstring)."""

    def __init__(self, file_config: Config, store: DirectoryStore):
        self.file_config = file_config
        self.store = store
        self.version = -1
        self.config: Config = file_config
        self.keyring = KeyRing(file_config)
        self.on_change: list = []  # callables(config) run after each swap (the meter, the admission gate)

    def load(self, snapshot: Snapshot, file_config: Config | None = None) -> None:
        """Merge `snapshot` with the file's config (the given one, else the current) and swap them
        in; ConfigError, and nothing changed, if they do not fit together."""
        base = file_config or self.file_config
        merged = merge(base, snapshot)
        self.file_config, self.config, self.version = base, merged, snapshot.version
        used = self.keyring.used
        self.keyring = KeyRing(merged)
        self.keyring.used = used  # last-used times not yet written out
        for hook in self.on_change:
            hook(merged)

    async def refresh(self, *, force: bool = False) -> bool:
        """Reload the directory if its version moved; True if something was swapped in."""
        loop = asyncio.get_running_loop()
        # NOTE: data_version first, then the version: a commit between them is seen by the next poll
        if not force and (not self.store.maybe_changed()
                          or await loop.run_in_executor(None, self.store.version) == self.version):
            return False
        snapshot = await loop.run_in_executor(None, self.store.load)
        if snapshot.version < self.version:
            # NOTE: two reads raced and this one, older, ended last (the poll's, under an admin
            # write's forced read): swapping it in would undo the newer one for a poll's time
            # (a customer just created unknown, a key just revoked working again).
            return False
        try:
            self.load(snapshot)
        except ConfigError as exc:
            log.error("the runtime directory does not fit the config; keeping the previous one:\n%s", exc)
            return False
        return True

    def runtime_ids(self) -> set[str]:
        return {c.id for c in self.config.customers.values() if c.source == "api"}


def merge(config: Config, snapshot: Snapshot) -> Config:
    """The file's config with the directory's customers and keys added; ConfigError naming every
    customer that is in both, or that the file's plans and models no longer fit."""
    problems: list[str] = []
    customers = dict(config.customers)
    keys_by_customer: dict[str, list[dict]] = {}
    for key in snapshot.keys:
        keys_by_customer.setdefault(key["customer"], []).append(key)
    runtime = {row["id"] for row in snapshot.customers}
    for row in snapshot.customers:
        cid = row["id"]
        if cid in customers:
            problems.append(f"customers.{cid}: is declared in the config file and was also created at runtime "
                            "(through the admin API or the CLI); keep one")
            continue
        try:
            customers[cid] = runtime_customer(row, keys_by_customer.get(cid, []), config)
        except ConfigError as exc:
            problems += [f"runtime customer {cid}: {p}" for p in exc.problems]
    for cid, keys in keys_by_customer.items():  # keys made at runtime for the file's customers
        if cid not in runtime and cid in customers:
            customers[cid] = with_keys(customers[cid], keys)
    if problems:
        raise ConfigError(config.source, problems)
    return replace(config, customers=customers)


def with_keys(customer: CustomerConfig, keys: list[dict]) -> CustomerConfig:
    """`customer` with these runtime keys added (revoked ones left out)."""
    live_keys = [k for k in keys if k["revoked_us"] is None]
    caps = {k["id"]: Decimal(k["settings"]["cap"]) for k in live_keys if k["settings"].get("cap") is not None}
    return replace(customer, keys=customer.keys + tuple(f"sha256:{k['digest']}" for k in live_keys),
                   key_caps={**customer.key_caps, **caps},
                   key_policies={**customer.key_policies, **{k["id"]: policy_of(k) for k in live_keys}})


def policy_of(key: dict) -> KeyPolicy:
    rate = key["settings"].get("rate_limit")
    return KeyPolicy(
        name=key["name"],
        # NOTE: exact, and never failing on a row the store read: `DirectoryStore._key` reads an
        # expiry no datetime holds as already past, so one such key cannot stop every load
        expires_at=None if key["expires_us"] is None else moment_of(key["expires_us"]),
        rate_limit=RateLimitConfig(**rate) if rate else None,
        models=tuple(key["settings"]["models"]) if key["settings"].get("models") else None)


def runtime_customer(row: dict, keys: list[dict], config: Config) -> CustomerConfig:
    """A customer of the directory, validated by the config file's rules, with its live keys."""
    settings = dict(row["settings"])
    live_keys = [k for k in keys if k["revoked_us"] is None]
    data = {"plan": row["plan"], **settings, "keys": [f"sha256:{k['digest']}" for k in live_keys],
            "key_caps": {k["id"]: k["settings"]["cap"] for k in live_keys if k["settings"].get("cap") is not None}}
    customer = read_customer(row["id"], data, config, path=f"customers.{row['id']}")
    policies = {key["id"]: policy_of(key) for key in live_keys}
    return replace(customer, key_policies=policies, active=row["active"], metadata=row["metadata"], source="api")


async def follow(live: Live, redis=None) -> None:
    """Keep `live` current: poll the directory's version, and wake at once on a pub/sub message
    or a database notification."""
    wake = asyncio.Event()
    told = _Told()
    listeners = []
    if redis is not None:
        listeners.append(asyncio.create_task(_listen(redis, wake)))
    if live.store is not None and live.store.notifies:
        listeners.append(asyncio.create_task(_listen_database(live.store, wake, told)))
    try:
        while True:
            try:
                async with asyncio.timeout(BACKSTOP if told.up else POLL):
                    await wake.wait()
            except asyncio.TimeoutError:
                pass
            wake.clear()
            try:
                if await live.refresh():
                    log.info("runtime customers and keys reloaded (directory version %d)", live.version)
            except Exception as exc:  # the database may be briefly unreachable: keep what is in force
                log.warning("could not read the runtime directory: %s", type(exc).__name__)
    finally:
        for listener in listeners:
            listener.cancel()


class _Told:
    up = False  # a database listener is connected: every change will be told


async def _listen_database(store: DirectoryStore, wake: asyncio.Event, told: _Told) -> None:
    """Set `wake` on every notification of a change; reconnect after an outage (meanwhile the
    poll runs every POLL seconds)."""
    warned = False
    loop = asyncio.get_running_loop()
    while True:
        try:
            conn = await store.listener()
            lost = loop.create_future()
            pgconn = conn.pgconn

            def readable() -> None:
                # NOTE: libpq read directly when the socket has data: psycopg's own `notifies()`
                # wakes every 0.1 s while idle, more than the poll it replaces
                try:
                    pgconn.consume_input()
                    while pgconn.notifies() is not None:
                        wake.set()
                except Exception as exc:  # the connection broke
                    if not lost.done():
                        lost.set_exception(exc)

            loop.add_reader(pgconn.socket, readable)
            try:
                told.up, warned = True, False
                wake.set()  # a change may have come while nobody listened
                await lost
            finally:
                told.up = False
                loop.remove_reader(pgconn.socket)
                await conn.close()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not warned:
                warned = True
                log.warning("not listening for directory changes (%s): polling every %s s until it can",
                            type(exc).__name__, POLL)
        await asyncio.sleep(1.0)


async def _listen(redis, wake: asyncio.Event) -> None:
    """Set `wake` on every directory message; reconnect after a Redis outage."""
    while True:
        try:
            async with redis.pubsub() as pubsub:
                await pubsub.subscribe(CHANNEL)
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        wake.set()
        except asyncio.CancelledError:
            raise
        except Exception:
            await asyncio.sleep(1.0)


async def announce(redis) -> None:
    """Tell every proxy listening that the directory changed (best effort: they also poll)."""
    if redis is None:
        return
    try:
        await redis.publish(CHANNEL, "changed")
    except Exception as exc:
        log.warning("could not announce a directory change: %s (other proxies see it within %s s)",
                    type(exc).__name__, POLL)
