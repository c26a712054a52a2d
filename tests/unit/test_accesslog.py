"""The access lines `payware serve` writes without the logging module: format, batching, failures."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re

from proxy.serving import accesslog

LINE = accesslog._Line(request_id="req_" + "ab" * 16, method="POST", path="/v1/chat/completions", status=200,
                       notes={"customer": "acme", "model": None, "amount": "0.01"}, error=None, latency_ms=1.5)


class CountingStream(io.StringIO):
    def __init__(self):
        super().__init__()
        self.writes = 0

    def write(self, text):
        self.writes += 1
        return super().write(text)


def test_the_lines_of_one_loop_turn_go_out_in_one_write():
    stream = CountingStream()
    lines = accesslog._Direct(stream, json_format=False, on=True)

    async def turn():
        for n in range(3):
            lines.add(LINE._replace(status=200 + n))
        assert stream.writes == 0  # not yet: at the end of this turn
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    asyncio.run(turn())
    assert stream.writes == 1
    written = stream.getvalue().splitlines()
    assert len(written) == 3
    for n, line in enumerate(written):
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO payware\.access "
                            rf"req_(ab){{16}} POST /v1/chat/completions {200 + n} customer=acme amount=0\.01 "
                            r"latency_ms=1\.5", line), line


def test_json_lines_hold_time_level_logger_and_every_field():
    stream = io.StringIO()
    lines = accesslog._Direct(stream, json_format=True, on=True)

    async def turn():
        lines.add(LINE)

    asyncio.run(turn())
    lines.flush()
    entry = json.loads(stream.getvalue())
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry.pop("ts"))
    assert entry == {"level": "info", "logger": "payware.access", "request_id": "req_" + "ab" * 16,
                     "method": "POST", "path": "/v1/chat/completions", "status": 200, "customer": "acme",
                     "model": None, "amount": "0.01", "error": None, "latency_ms": 1.5}


def test_a_line_names_its_error_after_the_notes_and_before_the_latency():
    line = LINE._replace(status=429, notes={"customer": "acme", "key_id": None}, error="rate_limit_exceeded")
    assert line.text() == ("req_" + "ab" * 16 + " POST /v1/chat/completions 429 customer=acme "
                           "error=rate_limit_exceeded latency_ms=1.5")
    assert LINE._replace(notes=None).text().endswith(" 200 latency_ms=1.5")


def test_a_broken_stream_fails_no_request():
    class Broken(io.StringIO):
        def write(self, text):
            raise BrokenPipeError

    lines = accesslog._Direct(Broken(), json_format=False, on=True)

    async def turn():
        lines.add(LINE)
        await asyncio.sleep(0)

    asyncio.run(turn())  # the flush ran and swallowed the error
    assert lines.pending == []


def test_the_access_logger_level_decides_when_serve_sets_them_up(monkeypatch):
    access = logging.getLogger("payware.access")
    monkeypatch.setattr(accesslog, "_lines", accesslog._lines)  # restored after the test
    level = access.level
    try:
        access.setLevel(logging.WARNING)  # PAYWARE_ACCESS_LOG=0
        accesslog.write_directly(io.StringIO(), json_format=False)
        assert not accesslog._lines.enabled()
        access.setLevel(logging.INFO)
        accesslog.write_directly(io.StringIO(), json_format=False)
        assert accesslog._lines.enabled()
    finally:
        access.setLevel(level)
