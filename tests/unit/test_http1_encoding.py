"""The provider client (proxy/providers/http1.py) and a provider that ignores our
`Accept-Encoding: identity`, or frames its answer with Content-Lengths that disagree: each answer
written as raw bytes by a scripted server on a real socket, in the pieces a network may deliver."""

from __future__ import annotations

import gzip
import json
import zlib

import pytest

from config.schema import ProviderConfig
from proxy.providers.http1 import AnswerCut, ConnectFailed
from proxy.providers.upstream import error_passthrough, forward, relayed_headers
from tests.fakes.scripted import Scripted, client

ANSWER = json.dumps({"id": "chatcmpl-1", "choices": [{"message": {"content": "Hello " * 50}}],
                     "usage": {"prompt_tokens": 13, "completion_tokens": 7}}).encode()
EVENTS = [b'data: {"n":%d,"text":"%s"}\n\n' % (i, b"word " * i) for i in range(12)] + [b"data: [DONE]\n\n"]


def split(wire: bytes, step: int) -> list[bytes]:
    return [wire[i:i + step] for i in range(0, len(wire), step)]


def chunked(parts: list[bytes]) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in parts if part) + b"0\r\n\r\n"


def flushed(events: list[bytes], wbits: int = 31) -> list[bytes]:
    """`events` compressed as a streaming server does: one flush an event, then the end."""
    packer = zlib.compressobj(wbits=wbits)
    parts = [packer.compress(event) + packer.flush(zlib.Z_SYNC_FLUSH) for event in events]
    parts[-1] += packer.flush()
    return parts


def deflated(data: bytes, wbits: int) -> bytes:
    packer = zlib.compressobj(wbits=wbits)
    return packer.compress(data) + packer.flush()


async def answer_of(pieces: list[bytes | None], **kw):
    """The answer to one request (its server closed after), and the client it came from."""
    async with Scripted([pieces]) as url:
        http = client(**kw)
        return await http.post(url + "/v1/chat/completions", body=b"{}", headers={}), http


async def received_before_the_cut(pieces: list[bytes | None], **kw) -> bytes:
    """The body's bytes handed over before `AnswerCut`, which must come."""
    async with Scripted([pieces]) as url:
        http = client(**kw)
        answer = await http.post(url, body=b"{}", headers={})
        received = b""
        with pytest.raises(AnswerCut):
            async for data in answer.content.iter_any():
                received += data
        answer.release()
        await http.close()
    return received


CODINGS = {  # a Content-Encoding, and how a provider encodes a whole body in it
    "gzip": ("gzip", gzip.compress),
    "x-gzip": ("X-GZIP", gzip.compress),
    "deflate": ("deflate", lambda data: deflated(data, zlib.MAX_WBITS)),  # zlib-wrapped, as RFC 9110 says
    "raw-deflate": ("deflate", lambda data: deflated(data, -zlib.MAX_WBITS)),  # as some servers send it
}


@pytest.mark.parametrize("case", sorted(CODINGS))
async def test_a_gzip_or_deflate_body_is_read_decoded_and_its_encoding_headers_dropped(case):
    coding, encode = CODINGS[case]
    body = encode(ANSWER)
    head = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: %s\r\n"
            b"Content-Length: %d\r\n\r\n" % (coding.encode(), len(body)))
    async with Scripted([[head + body[:5], body[5:]], [head + body]]) as url:
        http = client()
        for _ in range(2):
            answer = await http.post(url + "/v1/chat/completions", body=b"{}", headers={})
            assert await answer.read() == ANSWER
            assert "Content-Encoding" not in answer.headers and "Content-Length" not in answer.headers
            assert answer.content_length is None  # the encoded length is not the body's
            assert relayed_headers(answer) == {"Content-Type": "application/json"}
            answer.release()
        assert len(http._idle[next(iter(http._idle))]) == 1  # kept alive between the two
        await http.close()


@pytest.mark.parametrize("step", [1, 2, 7, 41, 10_000])
@pytest.mark.parametrize("framing", ["chunked", "until-close"])
async def test_a_gzip_stream_is_decoded_as_it_arrives_in_pieces_that_start_where_events_do(framing, step):
    parts = flushed(EVENTS)
    starts = {sum(map(len, EVENTS[:i])) for i in range(len(EVENTS) + 1)}
    if framing == "chunked":
        head = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"
        wire, end = chunked(parts), []
    else:
        head = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nConnection: close\r\n\r\n"
        wire, end = b"".join(parts), [None]
    answer, http = await answer_of([head] + split(wire, step) + end)
    handed, at = [], 0
    async for data in answer.content.iter_any():
        handed.append(data)
        at += len(data)
        if framing == "chunked":  # a chunk is handed over whole, so its flush decodes to whole events
            assert at in starts
    assert b"".join(handed) == b"".join(EVENTS)
    if step < len(wire):
        assert len(handed) > 1  # handed over as it came, not at the end
    answer.release()
    await http.close()


async def test_gzip_members_one_after_another_are_one_body():
    body = gzip.compress(b'{"a":') + gzip.compress(b"1}")
    head = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(body)
    answer, http = await answer_of([head + body])
    assert await answer.read() == b'{"a":1}'
    answer.release()
    await http.close()


@pytest.mark.parametrize("coding", ["br", "zstd", "gzip, br", "compress"])
async def test_a_coding_we_cannot_decode_is_relayed_as_it_came_with_its_header(coding):
    body = b"\x8b\x00\x80opaque bytes\xff"
    head = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: %s\r\n"
            b"Content-Length: %d\r\n\r\n" % (coding.encode(), len(body)))
    answer, http = await answer_of([head + body])
    assert await answer.read() == body
    assert answer.content_length == len(body)
    assert relayed_headers(answer) == {"Content-Type": "application/json", "Content-Encoding": coding}
    answer.release()
    await http.close()


async def test_a_stack_of_codings_in_several_lines_is_relayed_in_one():
    head = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Encoding: br\r\nContent-Length: 3\r\n\r\n"
    answer, http = await answer_of([head + b"abc"])
    assert await answer.read() == b"abc"
    assert relayed_headers(answer) == {"Content-Encoding": "gzip, br"}
    answer.release()
    await http.close()


async def test_an_identity_coding_is_no_coding():
    head = b"HTTP/1.1 200 OK\r\nContent-Encoding: identity\r\nContent-Length: 2\r\n\r\n"
    answer, http = await answer_of([head + b"{}"])
    assert await answer.read() == b"{}" and relayed_headers(answer) == {}
    answer.release()
    await http.close()


OPENAI = ProviderConfig(name="openai", kind="openai", base_url=None, api_key=None)


class Envelope:
    """The part of a wire format `error_passthrough` and `forward` use."""

    @staticmethod
    def upstream_error(status: int, text: str, provider: str) -> dict:
        return {"error": {"message": text, "code": status}}


async def test_a_gzip_error_answer_is_relayed_decoded():
    error = b'{"error": {"message": "Rate limit reached", "type": "rate_limit_error"}}'
    body = gzip.compress(error)
    head = (b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
            b"Retry-After: 3\r\nContent-Length: %d\r\n\r\n" % len(body))
    answer, http = await answer_of([head + body])
    response = await error_passthrough(answer, OPENAI, Envelope)
    assert (response.status, response.body) == (429, error)
    assert "Content-Encoding" not in response.headers and response.headers["Retry-After"] == "3"
    await http.close()


async def test_an_error_answer_in_a_coding_we_cannot_decode_is_wrapped_without_it():
    head = (b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\nContent-Encoding: br\r\n"
            b"Content-Length: 4\r\n\r\n\x8b\x01\x80\x03")
    answer, http = await answer_of([head])
    response = await error_passthrough(answer, OPENAI, Envelope)
    assert response.status == 500 and "Content-Encoding" not in response.headers
    assert json.loads(response.body) == {"error": {"message": "Internal Server Error", "code": 500}}
    await http.close()


async def test_a_forwarded_answer_is_relayed_decoded_or_as_it_came_with_its_coding():
    decoded = gzip.compress(ANSWER)
    heads = [b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: %s\r\nContent-Length: %d\r\n\r\n"
             % (coding, len(body)) for coding, body in ((b"gzip", decoded), (b"br", b"\x8b\x00"))]
    async with Scripted([[heads[0] + decoded], [heads[1] + b"\x8b\x00"]]) as url:
        http = client()
        response = await forward(http, "GET", url + "/v1/responses/r", headers={}, provider=OPENAI, fmt=Envelope)
        assert response.body == ANSWER and "Content-Encoding" not in response.headers
        response = await forward(http, "GET", url + "/v1/responses/r", headers={}, provider=OPENAI, fmt=Envelope)
        assert response.body == b"\x8b\x00" and response.headers["Content-Encoding"] == "br"
        await http.close()


def corrupt(body: bytes) -> bytes:
    return body[:20] + bytes(b ^ 0x55 for b in body[20:40]) + body[40:]


@pytest.mark.parametrize("framing", ["length", "chunked", "until-close"])
@pytest.mark.parametrize("fault", ["corrupt", "cut short", "not gzip"])
async def test_a_gzip_body_corrupt_or_cut_short_fails_like_an_answer_broken_off(fault, framing):
    body = gzip.compress(ANSWER)
    body = {"corrupt": corrupt(body), "cut short": body[:-12], "not gzip": ANSWER}[fault]
    wire = {"length": body, "chunked": chunked([body[:30], body[30:]]), "until-close": body}[framing]
    frame = {"length": b"Content-Length: %d\r\n" % len(body), "chunked": b"Transfer-Encoding: chunked\r\n",
             "until-close": b"Connection: close\r\n"}[framing]
    head = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\n" + frame + b"\r\n"
    answer, http = await answer_of([head, wire, None])
    with pytest.raises(AnswerCut):
        await answer.read()
    answer.release()
    assert not http._idle  # never reused
    await http.close()


async def test_a_corrupt_gzip_stream_hands_over_what_decoded_before_it_fails():
    parts = flushed(EVENTS)
    parts[3] = b"\xff" * len(parts[3])
    head = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"
    wire = chunked(parts)
    assert await received_before_the_cut([head] + split(wire, 50)) == b"".join(EVENTS[:3])


LIMIT = 1024 * 1024


@pytest.mark.parametrize("framing", ["length", "chunked"])
async def test_a_body_that_decodes_past_the_limit_fails_without_taking_more_memory(framing):
    bomb = deflated(b"\0" * (64 * LIMIT), 31)  # 64 MiB of zeros in ~64 KiB
    if framing == "length":
        head = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(bomb)
        wire = bomb
    else:
        head = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"
        wire = chunked(split(bomb, 4096))
    answer, http = await answer_of([head] + split(wire, 16384), max_decoded=LIMIT)
    decoded = []
    with pytest.raises(AnswerCut, match="decodes to more than"):
        async for data in answer.content.iter_any():
            decoded.append(data)
            assert answer._buffered <= LIMIT
    assert sum(map(len, decoded)) <= LIMIT
    answer.release()
    await http.close()


async def test_a_body_that_decodes_to_exactly_the_limit_is_read_whole():
    body = gzip.compress(b"x" * LIMIT)
    head = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(body)
    answer, http = await answer_of([head + body], max_decoded=LIMIT)
    assert await answer.read() == b"x" * LIMIT
    answer.release()
    await http.close()


@pytest.mark.parametrize("lengths", [[b"10", b"222"], [b"10, 222"], [b"222", b"222, 10"], [b"10, "]])
async def test_content_lengths_that_disagree_are_no_answer(lengths):
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
    head += b"".join(b"Content-Length: %s\r\n" % length for length in lengths) + b"\r\n"
    async with Scripted([[head + ANSWER[:222]]]) as url:
        http = client()
        with pytest.raises(ConnectFailed, match="Content-Length"):
            await http.post(url, body=b"{}", headers={})
        assert not http._idle
        await http.close()


@pytest.mark.parametrize("lengths", [[b"10", b"10"], [b"10, 10"], [b"10,10", b"010"]])
async def test_one_content_length_repeated_is_that_length(lengths):
    head = b"HTTP/1.1 200 OK\r\n" + b"".join(b"Content-Length: %s\r\n" % length for length in lengths) + b"\r\n"
    answer, http = await answer_of([head + b'{"a":"bc"}'])
    assert answer.content_length == 10 and await answer.read() == b'{"a":"bc"}'
    answer.release()
    await http.close()
