"""The customer portal and the operator console, as a person sees them: headless Chromium
(Debian's `chromium`) against a real proxy process, and raw HTTP for what a browser must not do.

Screenshots (portal and console, phone 390 px and desktop 1280 px) are written to
$PAYWARE_SCREENSHOTS, else to pytest's temporary folder; the run prints where.
"""

from __future__ import annotations

import base64
import json
import os
import re
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest

from metering.billing.periods import period_of
from metering.store.events import UsageEvent
from metering.store.ledger import Ledger
from proxy.web import tokens
from tests.conftest import ADMIN_KEY, KEYS, key_hash
from tests.e2e.browser import Chromium, Tab, find_chromium

# Prices that make every call visible in cents: 9 input + 4 cached + 7 output tokens and a fee.
PLANS = ('  payg: {interval: monthly, price: {per_million: {input: "10000", cached_input: "5000", output: "30000"}, '
         'per_request: "0.05"}}\n')
CALL_AMOUNT = Decimal("0.37")  # 9 x 0.01 + 4 x 0.005 + 7 x 0.03 + 0.05
CUSTOMERS = f"""
  acme: {{plan: payg, keys: ["{key_hash(KEYS['acme'])}"], cap: {{amount: "20.00", action: block}}}}
  globex: {{plan: payg, keys: ["{key_hash(KEYS['globex'])}"]}}
"""
CHAT = {"model": "fake-ok", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}


# -- fixtures ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def chromium(tmp_path_factory):
    binary = find_chromium()
    if binary is None:
        if os.environ.get("PAYWARE_REQUIRE_SERVICES"):
            pytest.fail("chromium is not installed (bash .ci/run installs Debian's package)")
        pytest.skip("no chromium here: bash .ci/run installs it")
    browser = Chromium(binary, tmp_path_factory.mktemp("chromium-profile"))
    yield browser
    browser.close()


@pytest.fixture(scope="module")
def shots(request, tmp_path_factory):
    folder = Path(os.environ.get("PAYWARE_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    yield folder
    names = sorted(p.name for p in folder.glob("*.png"))
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if names and capture is not None:
        with capture.global_and_fixture_disabled():  # shown even when pytest captures output
            print(f"\nportal/console screenshots ({', '.join(names)}) in {folder}")


@pytest.fixture
def proxy(proxy_factory, tmp_path):
    """A proxy whose ledger already holds last month's calls of acme (so a statement is closed)."""
    folder = tmp_path / "proxy"
    folder.mkdir(exist_ok=True)
    last_month = datetime.now(timezone.utc).replace(day=1, hour=12, minute=0, second=0, microsecond=0) - timedelta(days=3)
    ledger = Ledger(f"sqlite:///{folder}/ledger.db")
    ledger.insert([UsageEvent(id=f"req_past_{i}", ts=last_month + timedelta(hours=i), customer="acme", key_id=None,
                              metric="tokens", quantity=Decimal(20), period=period_of(last_month, "monthly").key,
                              model="fake-ok", endpoint="chat", input_tokens=13, cached_input_tokens=4,
                              output_tokens=7, reasoning_tokens=2, amount=CALL_AMOUNT, session="past")
                   for i in range(3)])
    ledger.close()
    return proxy_factory(customers=CUSTOMERS, plans=PLANS, name="proxy")


async def call(session, proxy, method, path, body=None, key=ADMIN_KEY, headers=None):
    head = {"Authorization": f"Bearer {key}", "Content-Type": "application/json", **(headers or {})}
    async with session.request(method, proxy.url + path, data=None if body is None else json.dumps(body),
                               headers=head) as resp:
        text = await resp.text()
        try:
            return resp.status, json.loads(text)
        except ValueError:
            return resp.status, text


async def chat(session, proxy, key=KEYS["acme"], *, sess="sess-a", feature="code-review") -> int:
    status, _ = await call(session, proxy, "POST", "/v1/chat/completions", CHAT, key=key,
                           headers={"X-Payware-Session": sess, "X-Payware-Feature": feature})
    return status


async def link(session, proxy, customer="acme", expires_in=600) -> str:
    status, body = await call(session, proxy, "POST", f"/v1/admin/customers/{customer}/portal_link",
                              {"expires_in": expires_in})
    assert status == 201, body
    return body["url"]


async def summary(session, proxy, key=KEYS["acme"]) -> dict:
    return (await call(session, proxy, "GET", "/v1/usage/summary", key=key))[1]


def dollars(amount: str) -> str:
    return f"${Decimal(amount):,.2f}"


async def portal_ready(tab: Tab) -> None:
    await tab.wait_for("document.querySelector('#live') && document.querySelector('#live').className === 'live on'")


# -- the portal ----------------------------------------------------------------------------------

async def test_the_portal_shows_the_summary_and_follows_a_new_call_without_a_reload(proxy, chromium, shots):
    async with aiohttp.ClientSession() as session:
        for _ in range(3):
            assert await chat(session, proxy) == 200
        assert await chat(session, proxy, KEYS["globex"], sess="globex-secret", feature="globex-feature") == 200
        url = await link(session, proxy)
        async with await Tab.open(chromium) as tab:
            await tab.goto(url)
            await portal_ready(tab)
            assert urlsplit(await tab.js("location.href")).path == "/portal"
            assert "token" not in await tab.js("location.href")  # the token left the address bar
            expected = await summary(session, proxy)
            assert await tab.text("#amount-due") == dollars(expected["amount_due"]) == "$1.11"
            for name in ("input", "cached_input", "output", "reasoning", "total"):
                assert await tab.text(f"#tok-{name}") == f"{expected['tokens'][name]:,}", name
            assert await tab.text("#requests") == "3"
            await tab.wait_for("document.querySelectorAll('#events tbody tr').length === 6")  # last month's 3 too
            rows = await tab.js("[...document.querySelectorAll('#events tbody tr')].map(r => r.innerText)")
            assert ["sess-a" in r and "code-review" in r for r in rows] == [True] * 3 + [False] * 3
            assert all("past" in r for r in rows[3:])
            await tab.wait_for("document.querySelectorAll('#statements tbody a').length === 1")
            assert "$1.11" in await tab.text("#statements tbody")  # last month's three calls
            statement = await tab.js("fetch(document.querySelector('#statements tbody a').href)"
                                     ".then(r => r.text())")
            assert statement.splitlines()[0].startswith("line,metric,model") and "total" in statement
            assert await tab.js("document.querySelectorAll('#chart rect.bar').length") >= 28
            assert "$20.00" in await tab.text("#cap-text") and "refused" in await tab.text("#cap-action")

            await tab.js("window.stillTheSamePage = true")
            assert await chat(session, proxy, sess="sess-b", feature="search") == 200
            ended = time.monotonic()
            await tab.wait_for("document.querySelector('#requests').textContent === '4'", timeout=2.5, every=0.02)
            seen = time.monotonic() - ended
            assert seen < 2.0, f"the call showed {seen:.2f} s after it ended"
            assert await tab.js("window.stillTheSamePage === true")  # no reload
            expected = await summary(session, proxy)
            assert await tab.text("#amount-due") == dollars(expected["amount_due"]) == "$1.48"
            assert await tab.text("#tok-total") == f"{expected['tokens']['total']:,}"
            await tab.wait_for("document.querySelector('#events tbody').textContent.includes('sess-b')")

            requested = {u for u in tab.requested if not u.startswith("data:")}
            assert requested and all(u.startswith(proxy.url + "/") for u in requested), requested  # nothing external
            await tab.screenshot(shots / "portal-phone-390.png", width=390, mobile=True)
            await tab.screenshot(shots / "portal-desktop-1280.png", width=1280, mobile=False)


async def test_the_own_cap_set_in_the_portal_form_takes_effect(proxy, chromium):
    async with aiohttp.ClientSession() as session:
        for _ in range(2):
            assert await chat(session, proxy) == 200
        async with await Tab.open(chromium) as tab:
            await tab.goto(await link(session, proxy))
            await portal_ready(tab)

            async def submit(amount: str | None) -> str:
                await tab.js("document.querySelector('#cap-message').textContent = ''")
                if amount is None:
                    await tab.js("document.querySelector('#cap-remove').click()")
                else:
                    await tab.js(f"document.querySelector('#cap-amount').value = {json.dumps(amount)};"
                                 "document.querySelector('#cap-save').click()")
                return await tab.wait_for("document.querySelector('#cap-message').textContent")

            assert "above the limit" in await submit("25.00")  # the operator's cap is 20.00
            assert (await call(session, proxy, "GET", "/v1/billing/cap", key=KEYS["acme"]))[1]["customer_cap"] is None
            assert await submit("0.74") == "Your cap is now $0.74."  # exactly what two calls spent
            status, cap = await call(session, proxy, "GET", "/v1/billing/cap", key=KEYS["acme"])
            assert Decimal(cap["customer_cap"]) == Decimal("0.74") and Decimal(cap["amount"]) == Decimal("0.74")
            await tab.wait_for("document.querySelector('#cap-text').textContent.includes('of $0.74')")
            assert await tab.js("document.querySelector('#cap-progress').value") == 100
            status, refused = await call(session, proxy, "POST", "/v1/chat/completions", CHAT, key=KEYS["acme"])
            assert status == 429 and refused["error"]["code"] == "spend_cap_reached"
            assert await submit(None) == "Your cap is removed."
            assert (await call(session, proxy, "GET", "/v1/billing/cap", key=KEYS["acme"]))[1]["customer_cap"] is None
            assert await chat(session, proxy) == 200  # the operator's 20.00 applies again


def changed(url: str, *, resign: bool, **fields) -> str:
    """The link's token with payload fields changed: signed anew with the real key (`resign`),
    or carrying the old signature over the new payload (a tampered link)."""
    token = parse_qs(urlsplit(url).query)["token"][0]
    body, mac = token.split(".")
    payload = {**json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))), **fields}
    if resign:
        return tokens.sign(tokens.derive(ADMIN_KEY.encode(), tokens.PORTAL), payload)
    text = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(text).rstrip(b"=").decode() + "." + mac


async def test_an_expired_or_tampered_link_is_refused(proxy, chromium):
    async with aiohttp.ClientSession() as session:
        url = await link(session, proxy)
        cases = {
            "expired": (changed(url, resign=True, e=int(time.time()) - 1), "has expired"),
            "another customer": (changed(url, resign=False, c="globex"), "not valid"),
            "longer life": (changed(url, resign=False, e=int(time.time()) + 86400 * 365), "not valid"),
            "cut short": (parse_qs(urlsplit(url).query)["token"][0][:-3], "not valid"),
            "another admin key": (tokens.sign(tokens.derive(b"some-other-admin-key-0123", tokens.PORTAL),
                                              {"t": "portal", "c": "acme", "k": None, "e": int(time.time()) + 600,
                                               "n": "x"}), "not valid"),
        }
        for name, (token, words) in cases.items():
            async with session.get(f"{proxy.url}/portal", params={"token": token}, allow_redirects=False) as resp:
                assert resp.status == 403, name
                assert "pw_portal" not in resp.cookies, name
                assert words in await resp.text(), name
            async with session.get(f"{proxy.url}/portal/api/summary", headers={"Accept": "application/json",
                                                                              "Cookie": f"pw_portal={token}"}) as resp:
                assert resp.status == 401, name
        async with await Tab.open(chromium) as tab:
            await tab.goto(f"{proxy.url}/portal?token={cases['expired'][0]}")
            assert await tab.text("#message-title") == "Link refused"
            assert "expired" in await tab.text("#message")
            await tab.goto(f"{proxy.url}/portal")  # and no session was opened
            assert await tab.js("!!document.querySelector('form[action=\"/portal/login\"]')")


async def test_one_customers_link_never_shows_another_customers_data(proxy, chromium):
    async with aiohttp.ClientSession() as session:
        assert await chat(session, proxy, sess="acme-session", feature="acme-feature") == 200
        for _ in range(2):
            assert await chat(session, proxy, KEYS["globex"], sess="globex-secret", feature="globex-feature") == 200
        async with await Tab.open(chromium) as tab:
            await tab.goto(await link(session, proxy, "acme"))
            await portal_ready(tab)
            await tab.wait_for("document.querySelector('#events tbody').textContent.includes('acme-session')")
            page = await tab.js("document.body.innerText")
            assert "globex" not in page and "acme" in page
            assert await tab.text("#requests") == "1"
            # asking for another customer changes nothing: the customer is the session's
            for path in ("/portal/api/summary?customer=globex", "/portal/api/events?customer=globex",
                         "/portal/api/daily?customer=globex", "/portal/api/statements?customer=globex"):
                body = await tab.js(f"fetch({json.dumps(path)}, {{headers: {{Accept: 'application/json'}}}})"
                                    ".then(r => r.text())")
                assert "globex" not in body.replace("customer=globex", ""), path
            assert json.loads(await tab.js("fetch('/portal/api/summary').then(r => r.text())"))["customer"] == "acme"
            # globex's link in the same browser shows globex, and only globex
            await tab.goto(await link(session, proxy, "globex"))
            await portal_ready(tab)
            await tab.wait_for("document.querySelector('#requests').textContent === '2'")
            await tab.wait_for("document.querySelector('#events tbody').textContent.includes('globex-secret')")
            assert "acme" not in await tab.js("document.body.innerText")


async def test_a_customer_key_signs_in_to_its_own_portal_and_no_key_goes_in_a_url(proxy, chromium):
    async with aiohttp.ClientSession() as session:
        assert await chat(session, proxy) == 200
        async with session.get(f"{proxy.url}/portal", params={"key": KEYS["acme"]}) as resp:
            assert "pw_portal" not in resp.cookies and 'action="/portal/login"' in await resp.text()
    async with await Tab.open(chromium) as tab:
        await tab.goto(f"{proxy.url}/portal")
        await tab.navigation(f"document.querySelector('#key').value = {json.dumps(ADMIN_KEY)};"
                             "document.querySelector('form').submit()")
        assert "operator's key" in await tab.text("#login-error")
        await tab.navigation("document.querySelector('#key').value = 'pw-not-a-key';"
                             "document.querySelector('form').submit()")
        assert "not valid" in await tab.text("#login-error")
        await tab.navigation(f"document.querySelector('#key').value = {json.dumps(KEYS['acme'])};"
                             "document.querySelector('form').submit()")
        await portal_ready(tab)
        assert (await tab.text("#customer-id")).startswith("acme")
        assert await tab.text("#requests") == "1"
        assert all("pw-test" not in u for u in tab.requested)
        cookies = (await tab.send("Network.getCookies", urls=[proxy.url + "/portal"]))["cookies"]
        cookie, = [c for c in cookies if c["name"] == "pw_portal"]
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/portal"
        assert KEYS["acme"] not in cookie["value"]


# -- the console ---------------------------------------------------------------------------------

async def test_the_console_creates_a_key_shown_once_and_revokes_it(proxy, chromium, shots):
    async with aiohttp.ClientSession() as session:
        for _ in range(2):
            assert await chat(session, proxy) == 200
        assert await chat(session, proxy, KEYS["acme"], sess="x") == 200
        assert await chat(session, proxy, KEYS["globex"]) == 200
        assert (await call(session, proxy, "POST", "/v1/chat/completions", CHAT, key="pw-wrong"))[0] == 401
        async with await Tab.open(chromium) as tab:
            await tab.goto(f"{proxy.url}/admin")
            assert urlsplit(await tab.js("location.href")).path == "/admin/login"  # no session: the sign-in form
            await tab.navigation(f"document.querySelector('#key').value = {json.dumps(ADMIN_KEY)};"
                                 "document.querySelector('form').submit()")
            assert urlsplit(await tab.js("location.href")).path == "/admin"
            table = await tab.text("table.customers")
            assert "acme" in table and "globex" in table and "$20.00" in table and "$1.11" in table
            assert "fake-ok" in await tab.js("document.body.innerText")  # top models
            assert await tab.text("#hour-refused") == "1"  # the wrong key, counted this hour
            await tab.screenshot(shots / "console-phone-390.png", width=390, mobile=True)
            await tab.screenshot(shots / "console-desktop-1280.png", width=1280, mobile=False)

            await tab.navigation("location.href = '/admin/customers/acme'")
            await tab.navigation("document.querySelector('#create-key input[name=name]').value = 'from-console';"
                                 "document.querySelector('#create-key button').click()")
            key = await tab.text("#secret-value")
            assert key.startswith("pw-")
            await tab.screenshot(shots / "console-key-shown-1280.png", width=1280, mobile=False)
            assert await chat(session, proxy, key) == 200  # the new key works at once
            await tab.navigation("location.href = '/admin/customers/acme'")
            listing = await tab.js("document.body.innerHTML")
            assert key not in listing and "from-console" in listing  # shown once: never again
            await tab.screenshot(shots / "console-customer-1280.png", width=1280, mobile=False)
            # revoke it (the page asks first; the test's browser says yes)
            await tab.navigation("[...document.querySelectorAll('#keys tr')].find(r => r.textContent"
                                 ".includes('from-console')).querySelector('form[action$=revoke] button').click()")
            assert "revoked" in await tab.text(".notice")
            assert await chat(session, proxy, key) == 401
            assert all(u.startswith(proxy.url + "/") for u in tab.requested if not u.startswith("data:"))


async def console_login(session, proxy) -> tuple[str, str]:
    """Sign in over raw HTTP: the session cookie and a CSRF token from a page."""
    async with session.post(f"{proxy.url}/admin/login", data={"key": ADMIN_KEY}, allow_redirects=False,
                            headers={"Origin": proxy.url}) as resp:
        assert resp.status == 303
        cookie = resp.cookies["pw_console"].value
    async with session.get(f"{proxy.url}/admin/customers/acme", headers={"Cookie": f"pw_console={cookie}"},
                           allow_redirects=False) as resp:
        assert resp.status == 200
        csrf = re.search(r'name="csrf" value="([^"]+)"', await resp.text()).group(1)
    return cookie, csrf


async def test_the_console_refuses_requests_without_the_session(proxy):
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        for path in ("/admin", "/admin/customers/acme", "/admin/customers/acme/events.csv"):
            async with session.get(proxy.url + path, allow_redirects=False) as resp:
                assert resp.status == 303 and resp.headers["Location"] == "/admin/login", path
        cookie, csrf = await console_login(session, proxy)
        forged_cookie = cookie[:-2] + ("AA" if not cookie.endswith("AA") else "BB")
        for jar in (None, forged_cookie, "garbage"):
            headers = {"Origin": proxy.url, **({"Cookie": f"pw_console={jar}"} if jar else {})}
            for path in ("/admin/customers/acme/keys", "/admin/keys/key_0123/revoke", "/admin/logout"):
                async with session.post(proxy.url + path, data={"csrf": csrf}, headers=headers,
                                        allow_redirects=False) as resp:
                    assert resp.status == 401, (jar, path)
            async with session.get(proxy.url + "/admin", headers=headers, allow_redirects=False) as resp:
                assert resp.status == 303
        async with session.post(f"{proxy.url}/admin/login", data={"key": KEYS["acme"]},
                                headers={"Origin": proxy.url}, allow_redirects=False) as resp:
            assert resp.status == 401 and "pw_console" not in resp.cookies  # a customer key is not the admin's


# How a post from another site (or a forged one) differs from the page's own: (headers, CSRF token).
CROSS_SITE = {
    "no origin": ({}, "own"),
    "foreign origin": ({"Origin": "https://evil.example"}, "own"),
    "null origin": ({"Origin": "null"}, "own"),
    "foreign referer": ({"Referer": "https://evil.example/page"}, "own"),
    "same host, other port": ({"Origin": "http://127.0.0.1:1"}, "own"),
    "no csrf": ({"Origin": "{self}"}, None),
    "wrong csrf": ({"Origin": "{self}"}, "A" * 43),
    "another session's csrf": ({"Origin": "{self}"}, "other"),
}


async def test_console_and_portal_forms_refuse_cross_site_posts(proxy):
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        cookie, csrf = await console_login(session, proxy)
        _, other_csrf = await console_login(session, proxy)
        async with session.get(await link(session, proxy), allow_redirects=False) as resp:
            portal_cookie = resp.cookies["pw_portal"].value
        async with session.get(f"{proxy.url}/portal", headers={"Cookie": f"pw_portal={portal_cookie}"}) as resp:
            portal_csrf = re.search(r'name="csrf-token" content="([^"]+)"', await resp.text()).group(1)
        keys_before = (await call(session, proxy, "GET", "/v1/admin/customers/acme/keys"))[1]["data"]
        for case, (headers, token) in CROSS_SITE.items():
            headers = {k: v.replace("{self}", proxy.url) for k, v in headers.items()}
            console_token = {"own": csrf, "other": other_csrf}.get(token, token)
            portal_token = {"own": portal_csrf, "other": csrf}.get(token, token)
            async with session.post(f"{proxy.url}/admin/customers/acme/keys",
                                    data={"name": "csrf-victim", **({"csrf": console_token} if console_token else {})},
                                    headers={**headers, "Cookie": f"pw_console={cookie}"}, allow_redirects=False) as resp:
                assert resp.status == 403, case
                assert "pw-" not in await resp.text(), case
            async with session.post(f"{proxy.url}/portal/api/cap", data={"amount": "0.01"},
                                    headers={**headers, "Cookie": f"pw_portal={portal_cookie}",
                                             "Accept": "application/json",
                                             **({"X-CSRF-Token": portal_token} if portal_token else {})}) as resp:
                assert resp.status == 403, case
            async with session.post(f"{proxy.url}/admin/login", data={"key": ADMIN_KEY},
                                    headers=headers, allow_redirects=False) as resp:
                assert (resp.status == 303) is (headers.get("Origin") == proxy.url), case  # no CSRF before a session
        assert (await call(session, proxy, "GET", "/v1/admin/customers/acme/keys"))[1]["data"] == keys_before
        assert (await call(session, proxy, "GET", "/v1/billing/cap", key=KEYS["acme"]))[1]["customer_cap"] is None
        # the same posts from this host with the session's token go through
        async with session.post(f"{proxy.url}/admin/customers/acme/keys", data={"name": "fine", "csrf": csrf},
                                headers={"Origin": proxy.url, "Cookie": f"pw_console={cookie}"}) as resp:
            assert resp.status == 200 and re.search(r"pw-[\w-]{20,}", await resp.text())
            assert resp.headers["Cache-Control"] == "no-store"
        async with session.post(f"{proxy.url}/portal/api/cap", data={"amount": "0.01"},
                                headers={"Origin": proxy.url, "Cookie": f"pw_portal={portal_cookie}",
                                         "Accept": "application/json", "X-CSRF-Token": portal_csrf}) as resp:
            assert resp.status == 200 and (await resp.json())["customer_cap"] == "0.01"


async def test_session_cookies_are_httponly_strict_and_secure_behind_https(proxy):
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        for forwarded, secure in ((None, False), ("https", True)):
            headers = {"Origin": ("https://" if secure else "http://") + urlsplit(proxy.url).netloc}
            if forwarded:
                headers["X-Forwarded-Proto"] = forwarded
            async with session.post(f"{proxy.url}/admin/login", data={"key": ADMIN_KEY}, headers=headers,
                                    allow_redirects=False) as resp:
                assert resp.status == 303
                morsel = resp.cookies["pw_console"]
                assert morsel["httponly"] and morsel["samesite"] == "Strict" and morsel["path"] == "/admin"
                assert bool(morsel["secure"]) is secure
                assert 0 < int(morsel["max-age"]) <= 8 * 3600
                assert ADMIN_KEY not in morsel.value
                assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]


async def test_the_console_exports_a_customers_evidence_as_the_api_gives_it(proxy):
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        assert await chat(session, proxy, sess="s1") == 200
        assert await chat(session, proxy, sess="s2") == 200
        cookie, _ = await console_login(session, proxy)
        async with session.get(f"{proxy.url}/admin/customers/acme/events.csv", params={"session": "s2"},
                               headers={"Cookie": f"pw_console={cookie}"}) as resp:
            assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/csv")
            assert "attachment" in resp.headers["Content-Disposition"]
            assert (resp.headers["Cache-Control"], resp.headers["X-Content-Type-Options"]) == ("no-store", "nosniff")
            exported = await resp.text()
        status, api = await call(session, proxy, "GET", "/v1/usage/events?customer=acme&format=csv&session=s2")
        assert status == 200 and exported == api and len(exported.strip().splitlines()) == 2
        async with session.get(f"{proxy.url}/admin/customers/acme", headers={"Cookie": f"pw_console={cookie}"}) as resp:
            period = re.search(r'statement\.csv\?period=([^"]+)"', await resp.text()).group(1)
        async with session.get(f"{proxy.url}/admin/customers/acme/statement.csv?period={period}",
                               headers={"Cookie": f"pw_console={cookie}"}) as resp:
            lines = (await resp.text()).splitlines()
            assert lines[0].startswith("line,") and any(line.startswith("total,") and "1.11" in line for line in lines)


async def test_a_portal_link_needs_the_admin_key_and_a_live_customer(proxy):
    async with aiohttp.ClientSession() as session:
        status, body = await call(session, proxy, "POST", "/v1/admin/customers/acme/portal_link", {},
                                  key=KEYS["acme"])
        assert status == 403
        status, body = await call(session, proxy, "POST", "/v1/admin/customers/nobody/portal_link", {})
        assert status == 404
        for bad in (0, 59, 31 * 86400, "600", 1.5):
            status, body = await call(session, proxy, "POST", "/v1/admin/customers/acme/portal_link",
                                      {"expires_in": bad})
            assert status == 400 and body["error"]["param"] == "expires_in", bad
        status, body = await call(session, proxy, "POST", "/v1/admin/customers/acme/portal_link", {"expires_in": 120})
        assert status == 201 and body["customer"] == "acme" and body["url"].startswith(proxy.url + "/portal?token=")
        expires = datetime.fromisoformat(body["expires_at"])
        assert timedelta(seconds=100) < expires - datetime.now(timezone.utc) <= timedelta(seconds=120)
