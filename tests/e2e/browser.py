"""Headless Chromium (Debian's `chromium`) driven over the Chrome DevTools Protocol.

No extra dependency: aiohttp's websocket client speaks CDP's JSON messages. Each `Tab` lives
in a browser context of its own (its own cookies), records every URL the page requested (so
a test can show that nothing left the host), accepts `confirm()` dialogs, and takes
screenshots at a given width.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import shutil
import subprocess
import time
from pathlib import Path

import aiohttp

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
         "--hide-scrollbars", "--mute-audio", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0"]


def find_chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Chromium:
    """One Chromium process with a fresh profile; `ws_url` is its browser-level DevTools socket."""

    def __init__(self, binary: str, profile: Path):
        self.profile = profile
        self.proc = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and len(port_file.read_text().split()) >= 2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError("chromium did not open its DevTools port")
            time.sleep(0.05)
        port, path = port_file.read_text().split()[:2]
        self.ws_url = f"ws://127.0.0.1:{port}{path}"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class Tab:
    """A page in its own browser context (`async with Tab.open(chromium) as tab`)."""

    def __init__(self, session: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse):
        self._http, self._ws = session, ws
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future] = {}
        self._events: dict[str, list[asyncio.Future]] = {}
        self.requested: list[str] = []  # every URL the page asked for
        self.session_id: str | None = None
        self.context_id: str | None = None
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, chromium: Chromium) -> Tab:
        session = aiohttp.ClientSession()
        ws = await session.ws_connect(chromium.ws_url, max_msg_size=64 * 1024 * 1024)
        tab = cls(session, ws)
        tab.context_id = (await tab.send("Target.createBrowserContext", top=True))["browserContextId"]
        target = await tab.send("Target.createTarget", top=True, url="about:blank", browserContextId=tab.context_id)
        attached = await tab.send("Target.attachToTarget", top=True, targetId=target["targetId"], flatten=True)
        tab.session_id = attached["sessionId"]
        for domain in ("Page", "Runtime", "Network"):
            await tab.send(f"{domain}.enable")
        return tab

    async def __aenter__(self) -> Tab:
        return self

    async def __aexit__(self, *exc) -> None:
        try:
            await self.send("Target.disposeBrowserContext", top=True, browserContextId=self.context_id)
        except Exception:
            pass
        self._reader.cancel()
        await self._ws.close()
        await self._http.close()

    async def send(self, method: str, *, top: bool = False, **params) -> dict:
        """A CDP command (to the page's session unless `top`), its result; RuntimeError on an error."""
        ident = next(self._ids)
        message = {"id": ident, "method": method, "params": params}
        if not top and self.session_id:
            message["sessionId"] = self.session_id
        future = asyncio.get_running_loop().create_future()
        self._waiting[ident] = future
        await self._ws.send_str(json.dumps(message))
        return await asyncio.wait_for(future, 30)

    async def _read(self) -> None:
        async for msg in self._ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            if "id" in data:
                future = self._waiting.pop(data["id"], None)
                if future is not None and not future.done():
                    if "error" in data:
                        future.set_exception(RuntimeError(f"{data['error']}"))
                    else:
                        future.set_result(data.get("result", {}))
                continue
            method, params = data.get("method"), data.get("params", {})
            if method == "Network.requestWillBeSent":
                self.requested.append(params["request"]["url"])
            elif method == "Page.javascriptDialogOpening":
                asyncio.ensure_future(self.send("Page.handleJavaScriptDialog", accept=True))
            for future in self._events.pop(method, []):
                if not future.done():
                    future.set_result(params)

    def _next(self, event: str) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        self._events.setdefault(event, []).append(future)
        return future

    async def goto(self, url: str) -> None:
        """Navigate and wait for the load event (after any client-side redirect, the last page's)."""
        loaded = self._next("Page.loadEventFired")
        await self.send("Page.navigate", url=url)
        await asyncio.wait_for(loaded, 30)

    async def navigation(self, action: str) -> None:
        """Run `action` (JS that navigates: a form's submit, a click) and wait for the new page."""
        loaded = self._next("Page.loadEventFired")
        await self.js(action)
        await asyncio.wait_for(loaded, 30)

    async def js(self, expression: str):
        """The value of a JS expression (promises awaited)."""
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"JS failed: {result['exceptionDetails'].get('exception', result['exceptionDetails'])}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, *, timeout: float = 10.0, every: float = 0.05):
        """Poll a JS expression until it is truthy; its value. TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = await self.js(expression)
            except RuntimeError:  # the page is being replaced (a redirect): ask the next one
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"{expression!r} stayed falsy for {timeout}s")
            await asyncio.sleep(every)

    async def text(self, selector: str) -> str:
        return await self.js(f"(document.querySelector({json.dumps(selector)}) || {{}}).textContent || ''")

    async def screenshot(self, path: Path, *, width: int, mobile: bool) -> None:
        """The whole page at `width` CSS pixels (a phone's viewport when `mobile`), as PNG."""
        await self.send("Emulation.setDeviceMetricsOverride", width=width, height=844 if mobile else 900,
                        deviceScaleFactor=1 if not mobile else 2, mobile=mobile)
        await asyncio.sleep(0.3)  # a reflow, and the chart redrawn at the new width
        height = await self.js("Math.ceil(document.documentElement.scrollHeight)")
        await self.send("Emulation.setDeviceMetricsOverride", width=width, height=min(int(height), 6000),
                        deviceScaleFactor=1 if not mobile else 2, mobile=mobile)
        await asyncio.sleep(0.2)
        shot = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        await self.send("Emulation.clearDeviceMetricsOverride")
