"""The lane reads a request-target as aiohttp does, or leaves it to aiohttp (`Lane.route`).

Gemini's routes carry the model in the path and options (`alt=sse`, `key=`) in the query: a
target the lane takes must give the handler the same path, `target` and query as aiohttp's
own parser and router would. Checked against a real aiohttp server, on targets drawn from an
alphabet that includes everything decoding treats specially.
"""

from __future__ import annotations

import asyncio
import json
import random

from aiohttp import web

from proxy.serving.lane import Lane

ROUTES = ("/v1beta/models/{target}", "/v1/models/{target}")


async def _what_aiohttp_reads(request: web.Request) -> web.Response:
    return web.json_response({"path": request.path, "target": request.match_info.get("target"),
                              "query": list(request.query.items())})


def _app() -> web.Application:
    app = web.Application()
    app.router.add_get("/v1/models/{id:.+}", _what_aiohttp_reads)  # as the proxy's: OpenAI's model lookup
    for path in ROUTES:
        app.router.add_post(path, _what_aiohttp_reads)
    return app


async def _ask(port: int, target: bytes) -> dict | None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST " + target + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    answer = await reader.read()
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return json.loads(body) if head.startswith(b"HTTP/1.1 200") else None


def _targets(n: int) -> list[bytes]:
    rng = random.Random(7)
    alphabet = ["a", "Z", "0", "-", "_", ".", "~", ":", "%3A", "%2F", "%20", "%", "+", ";", "/", "..", "=", "&", "?",
                "#", "é".encode().decode("latin-1"), "models/"]
    base = [b"/v1beta/models/gemini-2.5-flash:generateContent",
            b"/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
            b"/v1/models/gemini-2.5-flash:streamGenerateContent?alt=sse&key=AIza-x_1.y~",
            b"/v1beta/models/gemini-2.5-flash:generateContent?key=a&key=b&alt=",
            b"/v1beta/models/..:x", b"/v1beta/models/..", b"/v1beta/models/.:x?alt=sse",
            b"/v1beta/models/models%2Fgemini:generateContent", b"/v1beta/models/g%3AgenerateContent",
            b"/v1beta/models/g:m?alt=s%73e", b"/v1beta/models/g:m?alt=a+b", b"/v1beta/models/g:m?a;b=c",
            b"/v1beta/models/g:m?", b"/v1beta/models/g:m?=x", b"/v1beta/models/g:m#frag", b"/v1/models/g:m/x"]
    def word() -> str:
        return "".join(rng.choice("aZ0-_.~") for _ in range(rng.randint(1, 6)))

    drawn = []
    for _ in range(n):
        prefix = rng.choice([b"/v1beta/models/", b"/v1/models/"])
        target = word() + ":" + word()
        query = "&".join(f"{word()}={word() if rng.random() < 0.8 else ''}" for _ in range(rng.randint(0, 3)))
        text = target + ("?" + query if query else "")
        if rng.random() < 0.5:  # one odd piece somewhere: the lane must read it as aiohttp does, or pass
            at = rng.randint(0, len(text))
            text = text[:at] + rng.choice(alphabet) + text[at:]
        drawn.append(prefix + text.encode("latin-1"))
    return base + drawn


async def test_a_target_the_lane_takes_reads_as_aiohttp_reads_it():
    app = _app()
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    lane = Lane(app, lambda: None, idle_timeout=5, max_body=1024)
    taken = 0
    try:
        for target in _targets(400):
            route = lane.route(target)
            if route is None:
                continue
            taken += 1
            path, _, match_info, query = route
            ours = {"path": path, "target": match_info.get("target"), "query": [list(p) for p in query.items()]}
            assert ours == await _ask(port, target), target
    finally:
        await runner.cleanup()
    assert taken >= 40  # the plain ones, at least: the comparison covered the lane's own reading


def test_what_the_lane_leaves_to_aiohttp():
    lane = Lane(_app(), lambda: None, idle_timeout=5, max_body=1024)
    for target in (b"/v1beta/models/..", b"/v1beta/models/models%2Fgemini:generateContent",
                   b"/v1beta/models/g:m?alt=s%73e", b"/v1beta/models/g:m?alt=a+b", b"/v1beta/models/g:m?",
                   b"/v1/models/g:m/x", b"/v1/models/gpt-4o", b"/v1/chat/completions?x=1", b"/v1beta/models/g:m#f"):
        assert lane.route(target) is None, target
    assert lane.route(b"/v1beta/models/g:streamGenerateContent?alt=sse")[3].get("alt") == "sse"
