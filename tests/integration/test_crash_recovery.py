"""`kill -9` right after responses finished loses no event and bills none twice."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import urllib.request

import aiohttp
import pytest

from tests.conftest import KEYS

AUTH = {"Authorization": f"Bearer {KEYS['acme']}"}


async def call(session: aiohttp.ClientSession, proxy, i: int) -> str:
    body = {"model": "fake-ok", "stream": i % 2 == 0, "messages": [{"role": "user", "content": f"n{i}"}]}
    async with session.post(proxy.url + "/v1/chat/completions", json=body, headers=AUTH) as resp:
        assert resp.status == 200
        await resp.read()  # the whole response, last byte included
        return resp.headers["X-Payware-Request-Id"]


def get(proxy, path: str):
    request = urllib.request.Request(proxy.url + path, headers=AUTH)
    with urllib.request.urlopen(request) as resp:
        return resp.read()


def ledger_ids(proxy) -> list[str]:
    database = proxy.config_path.parent / "ledger.db"
    return [row[0] for row in sqlite3.connect(database).execute("SELECT id FROM usage_events")]


async def test_kill_9_after_responses_then_restart_keeps_every_event_exactly_once(proxy_factory):
    proxy = proxy_factory(storage="  flush_interval: 30")  # the ledger batch never ran before the kill
    async with aiohttp.ClientSession() as session:
        ids = await asyncio.gather(*(call(session, proxy, i) for i in range(40)))
    proxy.kill()  # SIGKILL: no shutdown code runs
    assert len(ledger_ids(proxy)) < 40  # the events were only in the journal

    proxy.start()
    summary = json.loads(get(proxy, "/v1/usage/summary"))
    assert summary["requests"] == 40 and summary["tokens"]["total"] == 40 * 20
    exported = [json.loads(line)["id"] for line in get(proxy, "/v1/usage/events").splitlines()]
    assert sorted(exported) == sorted(ids)
    assert sorted(ledger_ids(proxy)) == sorted(ids)

    proxy.kill()  # a second crash and restart replays nothing twice
    proxy.start()
    assert json.loads(get(proxy, "/v1/usage/summary"))["requests"] == 40
    assert sorted(ledger_ids(proxy)) == sorted(ids)


async def test_a_clean_restart_keeps_the_counters_from_the_ledger(proxy):
    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(call(session, proxy, i) for i in range(5)))
    proxy.stop()
    proxy.start()
    assert json.loads(get(proxy, "/v1/usage/summary"))["requests"] == 5
    assert len(ledger_ids(proxy)) == 5


def test_kill_9_right_after_a_responses_call_keeps_the_response_its_callers(proxy_factory):
    """The owner of a response travels with its call's event: a crash before the ledger batch
    loses neither, and a response deleted before the crash does not come back with the replay."""
    import openai

    proxy = proxy_factory(storage="  flush_interval: 30")
    sdk = openai.OpenAI(base_url=proxy.url + "/v1", api_key=KEYS["acme"], max_retries=0)
    kept = sdk.responses.create(model="fake-ok", input="hi")
    deleted = sdk.responses.create(model="fake-ok", input="bye")
    sdk.responses.delete(deleted.id)
    proxy.kill()

    proxy.start()
    assert sdk.responses.retrieve(kept.id).id == kept.id
    assert sdk.responses.create(model="fake-ok", input="more", previous_response_id=kept.id).output_text
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(deleted.id)
    assert len(get(proxy, "/v1/usage/events").splitlines()) == 3  # each call billed once
