"""One request, one access line: what a client chose is escaped in the text format, and the JSON
format holds no raw control character (proxy/serving/accesslog.py)."""

from __future__ import annotations

import asyncio
import io
import json

import pytest

from proxy.serving import accesslog

LINE = accesslog._Line(request_id="req_" + "ab" * 16, method="GET", path="/v1/models", status=404,
                       notes={"customer": "acme"}, error="not_found", latency_ms=1.5)
FORGED = "/x\n2026-12-06 05:00:00,000 INFO payware.access req_fake POST /v1/chat/completions 200 customer=alice"


def written(line: accesslog._Line, *, json_format: bool) -> str:
    stream = io.StringIO()
    lines = accesslog._Direct(stream, json_format=json_format, on=True)

    async def turn():
        lines.add(line)

    asyncio.run(turn())
    lines.flush()
    return stream.getvalue()


@pytest.mark.parametrize("path, shown", [
    ("/v1/models", "/v1/models"),
    ("/café/ü", "/café/ü"),  # printable: as it is
    (FORGED, "/x\\n2026-12-06\\x2005:00:00,000\\x20INFO\\x20payware.access\\x20req_fake\\x20POST"
             "\\x20/v1/chat/completions\\x20200\\x20customer=alice"),
    ("/a\r\nb\tc", "/a\\r\\nb\\tc"),
    ("/a\\nb", "/a\\\\nb"),  # a backslash of the client's own cannot pass for an escape
    ("/\x00\x1b[31m\x7f", "/\\x00\\x1b[31m\\x7f"),
    ("/\x85\u2028\u2029\u202e", "/\\x85\\u2028\\u2029\\u202e"),  # NEL, line and paragraph separators, bidi
    ("/\udcff\U000e0001", "/\\udcff\\U000e0001"),  # a lone surrogate, a tag character
], ids=["plain", "unicode", "forged-line", "crlf-tab", "backslash", "c0-del", "c1-separators", "surrogate"])
def test_the_path_is_escaped_so_the_line_stays_one_line_with_its_fields(path, shown):
    text = LINE._replace(path=path).text()
    assert text == f"req_{'ab' * 16} GET {shown} 404 customer=acme error=not_found latency_ms=1.5"
    assert len(text.splitlines()) == 1 and text.isprintable()


def test_every_field_of_the_line_is_escaped_not_only_the_path():
    line = LINE._replace(method="G\nET", notes={"customer": "acme\n", "model": "fake\r\nINJECT", "input_tokens": 3,
                                                 "key_id": None},
                         error="bad\x00code")
    assert line.text() == (f"req_{'ab' * 16} G\\nET /v1/models 404 customer=acme\\n model=fake\\r\\nINJECT "
                           "input_tokens=3 error=bad\\x00code latency_ms=1.5")


def test_a_forged_path_writes_exactly_one_line_in_the_text_format():
    out = written(LINE._replace(path=FORGED + "\r\x85\u2028"), json_format=False)
    assert out.count("\n") == 1 and len(out.splitlines()) == 1
    assert " INFO payware.access req_" + "ab" * 16 + " GET /x\\n2026-12-06\\x20" in out


@pytest.mark.parametrize("path", [FORGED, "/a\x7fb", "/\x85\u2028\u2029", "/\x1b[2J", "/\U000e0001\udcff"])
def test_a_json_line_holds_no_raw_control_and_reads_back_as_the_path(path):
    out = written(LINE._replace(path=path, notes={"model": path}), json_format=True)
    assert out.endswith("\n") and out[:-1].isprintable() and len(out.splitlines()) == 1
    entry = json.loads(out)
    assert entry["path"] == path and entry["model"] == path


def test_a_plain_json_line_is_written_as_before():
    out = written(LINE._replace(path="/café"), json_format=True)
    assert '"path": "/café"' in out  # readable: nothing escaped that needs no escape
