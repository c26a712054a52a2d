"""The provider client (proxy/providers/http1.py) against a scripted HTTP server on a real socket:
each answer is written as raw bytes, in the pieces a network may deliver them in."""

from __future__ import annotations

import asyncio

import pytest

from proxy.providers.http1 import AnswerCut, ConnectFailed, UnsafeHeader
from tests.fakes.scripted import Scripted, client


async def body_of(answer) -> bytes:
    received = b""
    async for data in answer.content.iter_any():
        received += data
    return received


async def test_a_content_length_answer_in_pieces_and_the_connection_reused():
    json_answer = b'{"ok":true}'
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n"
    server = Scripted([[head[:20], head[20:] + json_answer[:3], json_answer[3:]], [head + json_answer]])
    async with server as url:
        http = client()
        for _ in range(2):
            answer = await http.post(url + "/v1/chat/completions", body=b'{"a":1}', headers={"Authorization": "Bearer k"})
            assert (answer.status, answer.reason) == (200, "OK")
            assert answer.headers["content-type"] == "application/json"
            assert await answer.read() == json_answer
            answer.release()
        await http.close()
    assert server.connections == 1  # kept alive between the two
    first = server.requests[0]
    assert first.startswith(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"\r\nAuthorization: Bearer k\r\n" in first and b"\r\nContent-Length: 7\r\n" in first
    assert first.endswith(b'\r\n\r\n{"a":1}')


async def test_an_answer_read_whole_or_streamed_is_freed_without_the_garbage_collector():
    """No reference cycle: an answer goes when its last reference does (it was a cycle through
    `content`, left for the collector: one per proxied call)."""
    import gc
    import weakref

    head = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"
    async with Scripted([[head + b"{}"], [head + b"{}"]]) as url:
        http = client()
        gc.disable()
        try:
            for read in (lambda answer: answer.read(), body_of):
                answer = await http.post(url + "/v1/x", body=b"{}", headers={})
                assert await read(answer) == b"{}"
                answer.release()
                gone = weakref.ref(answer)
                del answer
                assert gone() is None
        finally:
            gc.enable()
        await http.close()


# How each chunk is framed on the wire: with an extension, plainly (the inlined common case), or
# a mix of those, an upper-case size and bare LF line ends after the size or after the data
FRAMINGS = {
    "extensions": lambda i, e: b"%x;ext=1\r\n%s\r\n" % (len(e), e),
    "plain": lambda i, e: b"%x\r\n%s\r\n" % (len(e), e),
    "mixed": lambda i, e: [b"%x\r\n%s\r\n", b"%X;a=b\r\n%s\r\n", b"%x\n%s\r\n", b"%x\r\n%s\n"][i % 4] % (len(e), e),
}


@pytest.mark.parametrize("framing", sorted(FRAMINGS))
async def test_a_chunked_stream_split_anywhere_is_decoded_exactly(framing):
    events = [b"data: {\"n\":%d}\r\n\r\n" % i for i in range(5)] + [b"\r\n" * 9, b"data: [DONE]\n\n"]
    wire = b"".join(FRAMINGS[framing](i, e) for i, e in enumerate(events)) + b"0\r\nX-Trailer: 1\r\n\r\n"
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    starts = {sum(map(len, events[:i])) for i in range(len(events) + 1)}
    for step in (1, 7, 41, len(wire)):
        pieces = [head] + [wire[i:i + step] for i in range(0, len(wire), step)]
        async with Scripted([pieces]) as url:
            http = client()
            answer = await http.post(url + "/s", body=b"{}", headers={})
            handed, at = [], 0
            async for data in answer.content.iter_any():
                handed.append(data)
                at += len(data)
                assert at in starts  # a chunk cut by a read is handed over whole: pieces end where events do
            assert b"".join(handed) == b"".join(events)
            answer.release()
            assert http._idle  # a whole chunked body: the connection is reusable
            await http.close()


async def test_a_chunk_larger_than_64_kib_is_handed_over_as_it_arrives_and_a_cut_one_before_the_error():
    big = b"x" * (64 * 1024 + 1)
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    wire = b"%x\r\n%s\r\n" % (len(big), big) + b"5\r\nhello\r\n"
    async with Scripted([[head, wire[:30000], wire[30000:], b"0\r\n\r\n"]]) as url:
        http = client()
        answer = await http.post(url, body=b"{}", headers={})
        handed = [data async for data in answer.content.iter_any()]
        assert b"".join(handed) == big + b"hello" and len(handed) >= 2  # not held whole
        answer.release()
        await http.close()
    assert await received_before_the_cut([head, b"a\r\ndata: ", None]) == b"data: "  # a small chunk, cut short


async def test_interim_answers_are_skipped_and_a_body_without_length_ends_with_the_connection():
    pieces = [b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nabc", b"def",
              None]
    async with Scripted([pieces]) as url:
        http = client()
        answer = await http.post(url, body=b"", headers={})
        assert answer.status == 200
        assert await answer.read() == b"abcdef"
        answer.release()
        assert not http._idle  # ended by a close: never reused
        await http.close()


async def received_before_the_cut(pieces: list[bytes | None]) -> bytes:
    """The body's bytes handed over before `AnswerCut`, which must come."""
    async with Scripted([pieces]) as url:
        http = client()
        answer = await http.post(url, body=b"{}", headers={})
        received = b""
        with pytest.raises(AnswerCut):
            async for data in answer.content.iter_any():
                received += data
        answer.release()
        await http.close()
    return received


async def test_a_body_cut_short_raises_answer_cut_after_what_arrived():
    pieces = [b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial", None]
    assert await received_before_the_cut(pieces) == b"partial"


@pytest.mark.parametrize("pieces", [[None], [b"SSH-2.0-OpenSSH\r\n\r\n"], [b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n"]],
                         ids=["closed", "not-http", "bad-header"])
async def test_no_valid_answer_is_connect_failed(pieces):
    async with Scripted([pieces]) as url:
        http = client()
        with pytest.raises(ConnectFailed):
            await http.post(url, body=b"{}", headers={})
        await http.close()


async def test_nothing_listening_is_connect_failed():
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    http = client()
    with pytest.raises(ConnectFailed):
        await http.post(f"http://127.0.0.1:{port}/v1", body=b"{}", headers={})
    await http.close()


async def test_silence_longer_than_the_read_timeout_is_a_timeout_and_hangs_up():
    server = Scripted([[b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"]])
    async with server as url:
        http = client(read_timeout=0.3)
        answer = await http.post(url, body=b"{}", headers={})
        with pytest.raises(TimeoutError):
            await body_of(answer)
        answer.release()
        await asyncio.wait_for(server.closed_by_client.wait(), 5)  # the provider sees the hang-up
        await http.close()


async def test_close_hangs_up_at_once_mid_stream():
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    server = Scripted([[head] + [b"5\r\nhello\r\n"] * 50])
    async with server as url:
        http = client()
        answer = await http.post(url, body=b"{}", headers={})
        async for data in answer.content.iter_any():
            assert data.startswith(b"hello")
            break
        answer.close()
        answer.release()
        await asyncio.wait_for(server.closed_by_client.wait(), 5)
        assert not http._idle
        await http.close()


async def test_a_header_value_with_a_line_break_is_refused_before_anything_is_sent():
    server = Scripted([[b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"]])
    async with server as url:
        http = client()
        with pytest.raises(UnsafeHeader):
            await http.post(url, body=b"{}", headers={"anthropic-beta": "x\r\nX-Injected: 1"})
        await http.close()
    assert server.requests == []


async def test_query_parameters_and_unsafe_path_characters_are_encoded():
    server = Scripted([[b"HTTP/1.1 204 No Content\r\n\r\n"]])
    async with server as url:
        http = client()
        answer = await http.request("GET", url + "/v1/responses/a b", headers={},
                                    params=[("include", "x y"), ("include", "z")])
        assert answer.status == 204 and await answer.read() == b""
        answer.release()
        await http.close()
    assert server.requests[0].startswith(b"GET /v1/responses/a%20b?include=x+y&include=z HTTP/1.1\r\n")
    assert b"Content-Length" not in server.requests[0]


async def test_a_slow_reader_pauses_the_provider_instead_of_buffering_everything():
    chunk = b"x" * 65536
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    server = Scripted([[head] + [b"%x\r\n%s\r\n" % (len(chunk), chunk)] * 64 + [b"0\r\n\r\n"]])
    async with server as url:
        http = client()
        answer = await http.post(url, body=b"{}", headers={})
        await asyncio.sleep(0.5)  # the provider keeps writing; nobody reads
        assert answer._paused and answer._buffered < 2 * 1024 * 1024
        assert len(await body_of(answer)) == 64 * len(chunk)
        answer.release()
        await http.close()
