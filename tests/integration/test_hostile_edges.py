"""Hostile requests at the edges, through `payware serve`: a client cannot forge access-log lines,
an `Expect` Payware does not meet is refused in the envelope, and the portal answers inputs it
cannot use with a 4xx in its envelope, never a 500."""

from __future__ import annotations

import json
import re
import socket
import time

from tests.conftest import KEYS
from tests.integration.test_lane import BODY, connect, head, read_response

FORGED = (b"/x%0a1999-01-01%2005:00:00,000%20INFO%20payware.access%20req_fake%20POST"
          b"%20/v1/chat/completions%20200%20customer=alice")


def access_lines(proxy, marker: str, count: int) -> list[str]:
    """The log's access lines that hold `marker`, once `count` of them are there."""
    deadline = time.monotonic() + 5
    while True:
        lines = [line for line in proxy.log().splitlines() if " payware.access " in line and marker in line]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def test_a_client_cannot_write_an_access_line_of_its_own(proxy):
    sock, reader = connect(proxy)
    for path in (FORGED, FORGED.replace(b"%0a", b"%0d%0a") + b"%e2%80%a8%c2%85%1b"):
        sock.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(reader)[0] == 404
    # a model name with line breaks in a lane call's JSON body (refused: no such model)
    body = json.dumps({"model": "fake-ok\n1999-01-01 05:00:00,000 INFO payware.access req_fake", "messages": []})
    sock.sendall(head(body.encode()) + body.encode())
    assert read_response(reader)[0] == 404
    sock.close()
    lines = access_lines(proxy, "/x\\", 2)
    spelled = "/x{}1999-01-01\\x2005:00:00,000\\x20INFO\\x20payware.access\\x20req_fake\\x20POST" \
              "\\x20/v1/chat/completions\\x20200\\x20customer=alice{}"
    # each line: date, time, level, logger, request id, method, path, status, error, latency
    assert [line.split(" ")[5:9] for line in lines] == [
        ["GET", spelled.format("\\n", ""), "404", "error=not_found"],
        ["GET", spelled.format("\\r\\n", "\\u2028\\x85\\x1b"), "404", "error=not_found"],
    ]
    assert all(len(line.split(" ")) == 10 for line in lines)
    assert access_lines(proxy, "/v1/chat/completions 404", 1)
    log = proxy.log()
    assert "req_fake" not in log.replace("\\x20req_fake", "")  # nowhere but escaped inside the paths
    assert not any(line.startswith("1999-01-01") for line in log.splitlines())


def test_an_expectation_payware_does_not_meet_is_refused_in_the_envelope(proxy):
    sock, reader = connect(proxy)
    sock.sendall(head(extra="Expect: foo\r\n") + BODY)
    status, headers, body = read_response(reader)
    assert status == 417 and headers["content-type"].startswith("application/json")
    assert json.loads(body)["error"]["code"] == "expectation_failed"
    sock.close()
    lines = access_lines(proxy, "/v1/chat/completions 417", 1)
    assert len(lines) == 1 and "error=expectation_failed" in lines[0]


def test_expect_100_continue_still_gets_its_interim_answer_then_the_call(proxy):
    sock, reader = connect(proxy)
    sock.sendall(head(extra="Expect: 100-continue\r\n"))
    assert reader.readline() == b"HTTP/1.1 100 Continue\r\n" and reader.readline() == b"\r\n"
    sock.sendall(BODY)
    status, _, body = read_response(reader)
    assert status == 200 and json.loads(body)["object"] == "chat.completion"
    sock.close()


def sign_in(proxy) -> bytes:
    """A portal session cookie (`pw_portal=…`) for acme, signed in with its key."""
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    form = f"key={KEYS['acme']}".encode()
    host = proxy.url.removeprefix("http://").encode()
    sock.sendall(b"POST /portal/login HTTP/1.1\r\nHost: " + host + b"\r\nOrigin: " + proxy.url.encode()
                 + b"\r\nContent-Type: application/x-www-form-urlencoded\r\nConnection: close\r\n"
                 + b"Content-Length: %d\r\n\r\n" % len(form) + form)
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    sock.close()
    assert answer.startswith(b"HTTP/1.1 303")
    return re.search(rb"(?im)^set-cookie: (pw_portal=[^;\r\n]+)", answer).group(1)


def portal_call(proxy, request_line: bytes, cookie: bytes, extra: bytes = b"", body: bytes = b"") -> tuple:
    sock, reader = connect(proxy)
    host = proxy.url.removeprefix("http://").encode()
    sock.sendall(request_line + b"\r\nHost: " + host + b"\r\nOrigin: " + proxy.url.encode()
                 + b"\r\nCookie: " + cookie
                 + b"\r\nAccept: application/json\r\n" + extra + b"Content-Length: %d\r\n\r\n" % len(body) + body)
    answer = read_response(reader)
    sock.close()
    return answer


def test_a_csrf_token_header_of_bytes_that_are_not_utf8_is_a_403_like_a_missing_one(proxy):
    cookie = sign_in(proxy)
    form = (b"Content-Type: application/x-www-form-urlencoded\r\n", b"amount=1")
    missing = portal_call(proxy, b"POST /portal/api/cap HTTP/1.1", cookie, form[0], form[1])
    for token in (b"\xff", b"\xc3\xa9t\xc3\xa9", b"\xe2\x80\xa8"):
        status, headers, body = portal_call(proxy, b"POST /portal/api/cap HTTP/1.1", cookie,
                                            form[0] + b"X-CSRF-Token: " + token + b"\r\n", form[1])
        assert (status, headers["content-type"].split(";")[0], json.loads(body)) == (
            403, "application/json", json.loads(missing[2]))
    assert missing[0] == 403 and json.loads(missing[2])["error"]["code"] == "forbidden"


def test_a_cursor_past_64_bits_is_a_400_like_any_cursor_the_list_did_not_give(proxy):
    cookie = sign_in(proxy)
    answers = [portal_call(proxy, b"GET /portal/api/events?before=" + cursor + b" HTTP/1.1", cookie)
               for cursor in (b"99999999999999999999:x", b"9223372036854775808:x", b"nonsense")]
    assert [status for status, _, _ in answers] == [400, 400, 400]
    for _, headers, body in answers:
        error = json.loads(body)["error"]
        assert headers["content-type"].startswith("application/json")
        assert (error["param"], error["type"]) == ("before", "invalid_request_error")
    assert portal_call(proxy, b"GET /portal/api/events?before=9223372036854775807:x HTTP/1.1", cookie)[0] == 200
