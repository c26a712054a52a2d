"""The model calls' lane (proxy/serving/lane.py) on the wire, through `payware serve`.

Requests the lane reads itself: pipelined, a body after its head, keep-alive and its timeout.
Requests it hands to aiohttp with the connection: another route first, a chunked body, a
body over the limit, and HTTP that must be refused, in our envelope, as aiohttp refuses it.
"""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import time

import pytest

from tests.conftest import KEYS
from tests.integration.test_proxy_wire import events

BODY = json.dumps({"model": "fake-ok", "messages": [{"role": "user", "content": "hi"}]}).encode()
STREAM = json.dumps({"model": "fake-ok", "stream": True, "messages": [{"role": "user", "content": "hi"}]}).encode()


def head(body: bytes = BODY, *, path: str = "/v1/chat/completions", extra: str = "", length: bool = True) -> bytes:
    size = f"Content-Length: {len(body)}\r\n" if length else ""
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEYS['acme']}\r\n"
            f"Content-Type: application/json\r\n{size}{extra}\r\n").encode()


def connect(proxy) -> tuple[socket.socket, object]:
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    return sock, sock.makefile("rb")


def read_response(reader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 answer: status, headers (lower-case names), body (Content-Length or chunked)."""
    status_line = reader.readline()
    if not status_line:
        raise ConnectionError("closed before an answer")
    status = int(status_line.split()[1])
    headers = {}
    while (line := reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        return status, headers, reader.read(int(headers["content-length"]))
    body = b""
    while (size := int(reader.readline().split(b";")[0], 16)) > 0:
        body += reader.read(size)
        reader.readline()
    reader.readline()
    return status, headers, body


def closed(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except socket.timeout:
        return False


def test_pipelined_requests_are_answered_in_order_and_each_billed_once(proxy):
    sock, reader = connect(proxy)
    sock.sendall((head() + BODY) * 2 + head(STREAM) + STREAM)  # three requests in one write
    answers = [read_response(reader) for _ in range(3)]
    assert [status for status, _, _ in answers] == [200, 200, 200]
    assert json.loads(answers[0][2])["object"] == "chat.completion"
    assert answers[2][1]["content-type"].startswith("text/event-stream") and answers[2][2].endswith(b"data: [DONE]\n\n")
    ids = {headers["x-payware-request-id"] for _, headers, _ in answers}
    assert len(ids) == 3 and {event["id"] for event in events(proxy)} == ids
    sock.close()


def test_a_body_sent_after_its_head_is_read_with_it_and_the_connection_is_kept(proxy):
    sock, reader = connect(proxy)
    for _ in range(2):
        sock.sendall(head())
        time.sleep(0.2)  # the head alone reaches the proxy first
        sock.sendall(BODY[:10])
        time.sleep(0.1)
        sock.sendall(BODY[10:])
        status, _, body = read_response(reader)
        assert status == 200 and json.loads(body)["usage"]["completion_tokens"] == 7
    assert len(events(proxy)) == 2
    sock.close()


def test_a_connection_that_starts_elsewhere_is_aiohttps_and_still_serves_model_calls(proxy):
    sock, reader = connect(proxy)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert read_response(reader)[0] == 200
    sock.sendall(head() + BODY)
    status, headers, _ = read_response(reader)
    assert status == 200 and [e["id"] for e in events(proxy)] == [headers["x-payware-request-id"]]
    sock.close()


def test_gemini_calls_with_their_query_are_served_pipelined_and_billed(proxy_factory):
    """The model in the path, `alt=sse` and the Payware key in the query; the last request, its
    colon percent-encoded, is aiohttp's (the lane hands the connection over at its start)."""
    proxy = proxy_factory(extra_models='  gemini-fake-ok: {provider: fake-gemini, cost: {input: "1", output: "2"}}\n')
    body = json.dumps({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}).encode()

    def gemini(target: str) -> bytes:
        return (f"POST /v1beta/models/{target} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode() + body

    sock, reader = connect(proxy)
    key = KEYS["acme"]
    sock.sendall(gemini(f"gemini-fake-ok:generateContent?key={key}")
                 + gemini(f"gemini-fake-ok:streamGenerateContent?alt=sse&key={key}")
                 + gemini(f"gemini-fake-ok%3AgenerateContent?key={key}"))
    answers = [read_response(reader) for _ in range(3)]
    assert [status for status, _, _ in answers] == [200, 200, 200]
    assert answers[1][1]["content-type"].startswith("text/event-stream") and answers[1][2].startswith(b"data: ")
    assert json.loads(answers[0][2])["usageMetadata"] == json.loads(answers[2][2])["usageMetadata"]
    ids = {headers["x-payware-request-id"] for _, headers, _ in answers}
    billed = {event["id"]: event for event in events(proxy)}
    assert set(billed) == ids and {event["model"] for event in billed.values()} == {"gemini-fake-ok"}
    assert [billed[headers["x-payware-request-id"]]["stream"] for _, headers, _ in answers] == [False, True, False]
    sock.close()


def test_a_chunked_body_is_read_by_aiohttp_and_billed(proxy):
    sock, reader = connect(proxy)
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(BODY), BODY)
    sock.sendall(head(length=False, extra="Transfer-Encoding: chunked\r\n") + chunked)
    status, _, body = read_response(reader)
    assert status == 200 and json.loads(body)["object"] == "chat.completion"
    assert len(events(proxy)) == 1
    sock.close()


@pytest.mark.parametrize("request_bytes", [
    head(extra=f"Content-Length: {len(BODY)}\r\n") + BODY,  # two lengths
    head(extra="Transfer-Encoding: chunked\r\n") + BODY,  # a length and chunked
    head().replace(b"Content-Type:", b"Content-Type :") + BODY,  # a space before the colon
    head().replace(b"Host: x\r\n", b"Host: x\r\n  folded\r\n") + BODY,  # obs-fold
    head().replace(b"Host: x", b"Host: x\x00y") + BODY,  # NUL in a value
    head().replace(f"Content-Length: {len(BODY)}".encode(), b"Content-Length: -1") + BODY,
], ids=["two-lengths", "length-and-chunked", "space-before-colon", "obs-fold", "nul", "negative-length"])
def test_http_the_lane_does_not_read_is_refused_by_aiohttp_in_our_envelope_and_bills_nothing(proxy, request_bytes):
    sock, reader = connect(proxy)
    sock.sendall(request_bytes)
    status, headers, body = read_response(reader)
    assert status == 400 and headers["content-type"].startswith("application/json")
    assert json.loads(body)["error"]["code"] == "malformed_request"
    assert events(proxy) == []
    sock.close()


def test_a_body_over_the_limit_gets_413_and_a_non_ascii_header_still_works(proxy):
    sock, reader = connect(proxy)
    big = b" " * 70_000 + BODY  # the tests' proxy takes 65,536 bytes at most
    sock.sendall(head(big) + big)
    status, _, body = read_response(reader)
    assert status == 413 and "error" in json.loads(body)
    sock.close()
    sock, reader = connect(proxy)
    sock.sendall(head(extra="X-Payware-Feature: café\r\n") + BODY)  # not ASCII: aiohttp reads it
    assert read_response(reader)[0] == 200
    sock.close()


def test_an_answer_sent_before_the_body_arrived_drops_the_body_and_serves_the_next_request(proxy):
    """As aiohttp lingers: the rest of the body is read and dropped, never read as a request,
    and the connection is not closed under a client still sending (a reset could destroy the
    answer before the client read it)."""
    sock, reader = connect(proxy)
    sock.sendall(head().replace(KEYS["acme"].encode(), b"pw-not-a-key-0123456789"))  # no body yet
    status, _, body = read_response(reader)
    assert status == 401 and json.loads(body)["error"]["code"] == "invalid_api_key"
    sock.sendall(BODY[:10])
    time.sleep(0.1)
    sock.sendall(BODY[10:] + head() + BODY)  # the rest of it, then the next request in the same write
    status, _, body = read_response(reader)
    assert status == 200 and json.loads(body)["object"] == "chat.completion"
    sock.sendall(head().replace(KEYS["acme"].encode(), b"pw-not-a-key-0123456789") + BODY[:10])
    assert read_response(reader)[0] == 401
    sock.sendall(BODY[10:])  # the body ends exactly: the next request comes in a read of its own
    time.sleep(0.1)
    sock.sendall(head() + BODY)
    assert read_response(reader)[0] == 200
    sock.close()


def test_a_body_that_never_comes_after_an_early_answer_is_not_waited_for(proxy_factory):
    proxy = proxy_factory(server=", idle_timeout: 30")
    sock, reader = connect(proxy)
    sock.sendall(head().replace(KEYS["acme"].encode(), b"pw-not-a-key-0123456789") + BODY[:10])
    assert read_response(reader)[0] == 401
    started = time.monotonic()
    assert closed(sock, 10) and time.monotonic() - started < 10  # LINGER (1 s), not the idle timeout
    sock.close()


def test_a_slow_body_gets_408_and_an_idle_connection_is_closed(proxy_factory):
    proxy = proxy_factory(server=", body_timeout: 1, idle_timeout: 1")
    sock, reader = connect(proxy)
    sock.sendall(head() + BODY[:5])
    started = time.monotonic()
    status, _, body = read_response(reader)
    assert status == 408 and time.monotonic() - started < 5
    assert closed(sock, 5)
    sock.close()
    sock, reader = connect(proxy)
    sock.sendall(head() + BODY)
    assert read_response(reader)[0] == 200
    assert not closed(sock, 0.3) and closed(sock, 5)  # kept alive, then closed when idle
    sock.close()
    sock, _ = connect(proxy)
    sock.sendall(b"POST /v1/chat/comp")  # a head that never completes
    assert closed(sock, 5)
    sock.close()


def test_a_stream_in_flight_at_sigint_is_finished_and_billed_before_the_proxy_exits(proxy):
    sock, reader = connect(proxy)
    slow = json.dumps({"model": "fake-slow", "stream": True, "messages": [{"role": "user", "content": "hi"}]}).encode()
    sock.sendall(head(slow) + slow)  # ~4 s of events (200, 20 ms apart)
    assert reader.readline().startswith(b"HTTP/1.1 200")
    proxy.proc.send_signal(signal.SIGINT)
    rest = reader.read()  # to the end: the proxy finishes the answer, then closes
    assert rest.endswith(b"0\r\n\r\n") and b"data: [DONE]" in rest
    assert proxy.proc.wait(30) == 0
    with sqlite3.connect(proxy.config_path.parent / "ledger.db") as db:
        assert db.execute("SELECT model, status FROM usage_events").fetchall() == [("fake-slow", "ok")]
    sock.close()


def test_a_body_in_many_reads_arrives_whole_and_pipelined_bytes_wait_their_turn(proxy):
    sock, reader = connect(proxy)
    filler = "x" * 40_000  # ~40 KB of prompt, sent in 1 KB pieces after the head
    body = json.dumps({"model": "fake-ok", "messages": [{"role": "user", "content": filler}]}).encode()
    sock.sendall(head(body))
    for i in range(0, len(body), 1024):
        sock.sendall(body[i:i + 1024])
        time.sleep(0.002)
    sock.sendall(head() + BODY)  # the next request, while the first may still be served
    answers = [read_response(reader) for _ in range(2)]
    assert [status for status, _, _ in answers] == [200, 200]  # a byte lost or doubled: not JSON, a 400
    assert len(events(proxy)) == 2
    sock.close()


def bare_lf(body: bytes = BODY) -> bytes:
    """A model call whose head's lines end with a bare LF (not CRLF)."""
    return head(body).replace(b"\r\n", b"\n") + body


def answered_by_aiohttp(reader, started: float) -> None:
    """aiohttp's answer, at once: a refusal in our envelope (or, should it read the head, a call)."""
    status, headers, body = read_response(reader)
    assert time.monotonic() - started < 5  # not the idle timeout (30 s here)
    if status >= 400:
        assert status < 500 and headers["content-type"].startswith("application/json")
        assert "error" in json.loads(body)
    else:
        assert status == 200


@pytest.mark.parametrize("pieces", [
    [bare_lf()],
    [bare_lf()[:40], bare_lf()[40:]],  # the first line ends in the first read
    [bare_lf().split(b"\n\n")[0] + b"\n", b"\n" + BODY],  # the LFs ending the head in two reads
], ids=["one-read", "split-in-a-line", "split-between-the-lfs"])
def test_a_head_ended_by_bare_lfs_is_aiohttps_and_answered_at_once_not_at_the_idle_timeout(proxy_factory, pieces):
    proxy = proxy_factory(server=", idle_timeout: 30")
    sock, reader = connect(proxy)
    started = time.monotonic()
    for piece in pieces:
        sock.sendall(piece)
        time.sleep(0.1)
    answered_by_aiohttp(reader, started)
    sock.close()


def test_a_bare_lf_head_pipelined_after_a_lane_request_is_handed_over_after_its_answer(proxy_factory):
    proxy = proxy_factory(server=", idle_timeout: 30")
    sock, reader = connect(proxy)
    started = time.monotonic()
    sock.sendall(head() + BODY + bare_lf())
    status, _, body = read_response(reader)
    assert status == 200 and json.loads(body)["object"] == "chat.completion"
    answered_by_aiohttp(reader, started)
    sock.close()


def test_a_crlf_split_between_reads_is_still_the_lanes(proxy):
    """The CR of a line end at the end of one read, its LF at the start of the next: no bare LF."""
    sock, reader = connect(proxy)
    request = head() + BODY
    cut = request.index(b"\r\n") + 1
    for piece in (request[:cut], request[cut:]):
        sock.sendall(piece)
        time.sleep(0.1)
    status, headers, _ = read_response(reader)
    assert status == 200 and [e["id"] for e in events(proxy)] == [headers["x-payware-request-id"]]
    sock.close()
