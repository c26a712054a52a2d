"""The console's reconciliation page, `/admin/reconciliation`, over raw HTTP against a real proxy:
behind the session, an empty state before the first run, then the last run saved in the proxy's
ledger shown with the numbers `GET /v1/admin/reconciliation` gives, and its line on the overview."""

from __future__ import annotations

import re
from datetime import date
from html.parser import HTMLParser

import aiohttp

from metering.billing.reconcile import config_prices, reconcile
from metering.billing.token_parts import Tokens
from metering.billing.usage_reports import ProviderUsage
from metering.store.ledger import Ledger
from metering.store.money_runs import ReconciliationStore
from tests.conftest import ADMIN_KEY
from tests.unit.test_reconcile import ANTHROPIC_EVENTS, CONFIG, OPENAI_EVENTS, run

PAGE = "/admin/reconciliation"
HOSTILE_MODEL = "<script>alert(1)</script>"
HOSTILE_PROVIDER = 'evil"><img src=x onerror=alert(2)>'


class _Rows(HTMLParser):
    """The text of each cell of each body row of the page's tables."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self._body = self._cell = False

    def handle_starttag(self, tag, attrs):
        if tag == "tbody":
            self._body = True
        elif tag == "tr" and self._body:
            self.rows.append([])
        elif tag == "td" and self._body:
            self._cell = True
            self.rows[-1].append("")

    def handle_endtag(self, tag):
        if tag == "tbody":
            self._body = False
        elif tag == "td":
            self._cell = False

    def handle_data(self, data):
        if self._cell:
            self.rows[-1][-1] += data


def table_rows(page: str) -> list[list[str]]:
    parser = _Rows()
    parser.feed(page)
    return [[" ".join(cell.split()) for cell in row] for row in parser.rows]


def save(proxy, body: dict) -> None:
    """Keep a run in the running proxy's own ledger, as `payware reconcile` does."""
    ledger = Ledger(f"sqlite:///{proxy.config_path.parent}/ledger.db")
    try:
        ReconciliationStore(ledger.engine).save(body)
    finally:
        ledger.close()


async def sign_in(session: aiohttp.ClientSession, proxy) -> dict:
    async with session.post(f"{proxy.url}/admin/login", data={"key": ADMIN_KEY}, allow_redirects=False,
                            headers={"Origin": proxy.url}) as resp:
        assert resp.status == 303
        return {"Cookie": f"pw_console={resp.cookies['pw_console'].value}"}


async def get_page(session, proxy, path: str, headers: dict) -> str:
    async with session.get(proxy.url + path, headers=headers, allow_redirects=False) as resp:
        assert resp.status == 200, path
        assert resp.headers["Content-Type"].startswith("text/html")
        return await resp.text()


async def last_run_json(session, proxy, provider: str | None = None) -> dict:
    async with session.get(f"{proxy.url}/v1/admin/reconciliation", params={"provider": provider} if provider else {},
                           headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as resp:
        assert resp.status == 200
        return await resp.json()


def scripts(page: str) -> list[str]:
    return re.findall(r"<script[^>]*>", page, flags=re.IGNORECASE)


async def test_the_reconciliation_page_needs_a_console_session(proxy):
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        for headers in ({}, {"Cookie": "pw_console=garbage"}, {"Authorization": f"Bearer {ADMIN_KEY}"}):
            async with session.get(proxy.url + PAGE, headers=headers, allow_redirects=False) as resp:
                assert resp.status == 303 and resp.headers["Location"] == "/admin/login", headers
                assert "reconcil" not in (await resp.text()).lower()


async def test_before_the_first_run_the_page_says_how_to_make_one(proxy):
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        headers = await sign_in(session, proxy)
        page = await get_page(session, proxy, PAGE, headers)
        assert 'id="no-reconciliation"' in page and "No reconciliation has run yet" in page
        assert "payware reconcile PROVIDER --from YYYY-MM-DD --to YYYY-MM-DD" in page
        overview = await get_page(session, proxy, "/admin", headers)
        assert 'href="/admin/reconciliation"' in overview  # the navigation
        assert "last-reconciliation" not in overview
        page = await get_page(session, proxy, PAGE + "?provider=" + HOSTILE_PROVIDER, headers)
        assert "payware reconcile evil&quot;&gt;&lt;img src=x onerror=alert(2)&gt;" in page
        assert "<img" not in page and scripts(page) == ['<script src="/static/console.js">']


async def test_the_last_run_is_shown_as_the_api_serves_it_and_linked_from_the_overview(proxy):
    save(proxy, run("openai", OPENAI_EVENTS, api_key_ids=("key_payware",)))
    save(proxy, run("anthropic", ANTHROPIC_EVENTS, days=(1, 2)))
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        headers = await sign_in(session, proxy)
        for provider, query in (("anthropic", ""), ("openai", "?provider=openai"), ("anthropic", "?provider=anthropic")):
            body = await last_run_json(session, proxy, query.partition("=")[2] or None)
            assert body["provider"] == provider
            page = await get_page(session, proxy, PAGE + query, headers)
            assert f"{body['provider']} · kind {body['kind']} · from {body['source']}" in page
            assert f"Days {body['from']} → {body['to']}" in page and body["id"] in page
            assert f"{body['created_at'][:19].replace('T', ' ')} UTC" in page
            for block in ("matched", "provider_only", "payware_only", "estimated"):
                tile = re.search(rf'id="total-{block.replace("_", "-")}">(.*?)</div>', page).group(1)
                assert f'<span class="value">${body["totals"][block]["cost"]}</span>' in tile, block
                assert f'{body["totals"][block]["tokens"]["total"]:,} tokens' in tile, block
            assert table_rows(page) == [
                [row["day"], row["model"], row["status"], f'{row["provider"]["tokens"]["total"]:,}',
                 f'{row["payware"]["tokens"]["total"]:,}', "$" + row["provider_only"]["cost"],
                 "$" + row["payware_only"]["cost"], f'{row["estimated"]["tokens"]["total"]:,}']
                for row in body["rows"]]
            assert 'id="notes"' not in page  # every model had a price
        openai = await last_run_json(session, proxy, "openai")
        assert openai["totals"]["provider_only"]["cost"] == "0.000492"  # the hand-built case's
        assert [row[5] for row in table_rows(await get_page(session, proxy, PAGE + "?provider=openai", headers))] == [
            "$0.00", "$0.00027", "$0.000222"]
        overview = await get_page(session, proxy, "/admin", headers)
        line = re.search(r'<p class="last-run" id="last-reconciliation">(.*?)</p>', overview).group(1)
        assert '<a href="/admin/reconciliation?provider=anthropic">' in line
        assert "Last reconciliation (anthropic, 2026-11-01 → 2026-11-02)</a>: provider-only" in line
        assert f'<b class="num">${(await last_run_json(session, proxy))["totals"]["provider_only"]["cost"]}</b>' in line


async def test_a_run_with_html_in_its_names_is_shown_escaped(proxy):
    hostile = ProviderUsage(day=date(2026, 11, 2), model=HOSTILE_MODEL, api_key_id=None,
                            tokens=Tokens.from_classes(input=700, output=70), requests=2)
    save(proxy, reconcile(provider=HOSTILE_PROVIDER, kind="openai", start=date(2026, 11, 1), end=date(2026, 11, 3),
                          report=[hostile], events=[], price_of=config_prices(CONFIG, "openai"), source="file"))
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        headers = await sign_in(session, proxy)
        body = await last_run_json(session, proxy)
        assert body["rows"][0]["model"] == HOSTILE_MODEL and body["notes"]  # no price for it: a note names it
        page = await get_page(session, proxy, PAGE, headers)
        overview = await get_page(session, proxy, "/admin", headers)
        for text in (page, overview):
            assert scripts(text) == ['<script src="/static/console.js">'] and "<img" not in text
            assert "alert(1)</script>" not in text and 'evil">' not in text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
        assert table_rows(page) == [["2026-11-02", HOSTILE_MODEL, "provider_only", "770", "0", "no price", "no price",
                                     "0"]]
        assert 'id="notes"' in page and "no provider price for &lt;script&gt;" in page
        assert 'href="/admin/reconciliation?provider=evil%22%3E%3Cimg%20src%3Dx%20onerror%3Dalert%282%29%3E"' in overview
