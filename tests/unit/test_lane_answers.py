"""The lane writes a whole answer itself (`LaneProtocol._write_whole`): byte for byte what
aiohttp's `Response.prepare` + `write_eof` write for it, the response prepare signal included."""

from __future__ import annotations

import asyncio
import sys

import pytest
from aiohttp import web

from proxy.errors import ServiceUnavailable, error_response
from proxy.serving import lane as lane_module
from proxy.serving.lane import Lane, LaneRequest, _MatchInfo, _whole

DATE = "Sun, 06 Dec 2026 00:00:00 GMT"


class _Transport(asyncio.Transport):
    def __init__(self):
        super().__init__()
        self.sent = bytearray()

    def write(self, data) -> None:
        self.sent += data

    def writelines(self, chunks) -> None:
        for chunk in chunks:
            self.sent += chunk

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def get_extra_info(self, name, default=None):
        return default


ANSWERS = {
    "json": lambda: web.json_response({"id": "chatcmpl-1", "choices": []}),
    "bytes, a content type and headers of its own": lambda: web.Response(
        body=b'{"ok": true}', headers={"Content-Type": "application/json", "X-Request-Id": "req_1",
                                       "x-ratelimit-remaining-requests": "9"}),
    "bytes, no content type": lambda: web.Response(body=b"\x00\x01raw"),
    "empty body": lambda: web.Response(body=b"", status=200),
    "text": lambda: web.Response(text="plain words", status=201),
    "an error in our envelope": lambda: error_response(ServiceUnavailable("retry", headers={"Retry-After": "1"})),
    "asks to close": lambda: _closing(web.json_response({"error": "bye"}, status=500)),
    "a large body": lambda: web.Response(body=b"x" * 100_000, content_type="application/octet-stream"),
}


def _closing(response: web.Response) -> web.Response:
    response.force_close()
    return response


async def _written(answer: web.Response, *, ours: bool, monkeypatch) -> tuple[bytes, list]:
    app = web.Application()
    prepared: list = []

    async def on_prepare(request, response):
        prepared.append((request.path, response.status, dict(response.headers)))

    app.on_response_prepare.append(on_prepare)
    app.freeze()
    lane = Lane(app, lambda: None, idle_timeout=5, max_body=1 << 20)
    protocol = lane()
    transport = _Transport()
    protocol.connection_made(transport)
    try:
        request = LaneRequest(app, "/v1/chat/completions", None, _MatchInfo(None), b"{}", protocol)
        if ours:
            assert _whole(answer)
            await protocol._write_whole(request, answer)
        else:
            await answer.prepare(request)
            await answer.write_eof()
    finally:
        protocol.close()
    return bytes(transport.sent), prepared


@pytest.mark.parametrize("name", sorted(ANSWERS))
async def test_a_whole_answer_is_written_as_aiohttp_writes_it(name, monkeypatch):
    for module in (lane_module, sys.modules[web.StreamResponse.__module__]):
        monkeypatch.setattr(module, "rfc822_formatted_time", lambda: DATE)
    theirs, their_signal = await _written(ANSWERS[name](), ours=False, monkeypatch=monkeypatch)
    ours, our_signal = await _written(ANSWERS[name](), ours=True, monkeypatch=monkeypatch)
    assert ours == theirs
    assert our_signal == their_signal and len(our_signal) == 1
    assert DATE.encode() in ours  # the stamp was the patched one, on both sides


@pytest.mark.parametrize("answer", [
    lambda: web.StreamResponse(),
    lambda: web.Response(status=204),
    lambda: web.Response(body=b"x", headers={"Content-Length": "1"}),
    lambda: web.Response(body=None),
])
def test_what_the_lane_leaves_to_aiohttp(answer):
    assert not _whole(answer())
