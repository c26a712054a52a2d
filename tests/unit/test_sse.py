"""SSE framing: frames are found whatever the reads look like, and their raw bytes add up to the input."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from metering.usage.sse import Frame, SSEFramer

STREAMS = Path(__file__).parent / "streams"
RECORDED = sorted(STREAMS.glob("*.sse"))
LINE_ENDS = {"lf": b"\n", "crlf": b"\r\n", "cr": b"\r"}


def frames_of(chunks: list[bytes]) -> list[Frame]:
    framer = SSEFramer()
    frames = [frame for chunk in chunks for frame in framer.feed(chunk)]
    tail = framer.close()
    return frames + ([tail] if tail is not None else [])


def with_line_ends(stream: bytes, end: bytes) -> bytes:
    return stream.replace(b"\n", end)


@pytest.fixture(params=[(path, name) for path in RECORDED for name in LINE_ENDS],
                ids=lambda p: f"{p[0].stem}-{p[1]}")
def recorded(request) -> bytes:
    path, name = request.param
    return with_line_ends(path.read_bytes(), LINE_ENDS[name])


def test_recorded_streams_are_found():
    assert len(RECORDED) >= 6


def test_frames_are_the_same_fed_byte_by_byte(recorded):
    whole = frames_of([recorded])
    assert frames_of([recorded[i:i + 1] for i in range(len(recorded))]) == whole
    assert b"".join(frame.raw for frame in whole) == recorded


def test_frames_are_the_same_at_every_split_point(recorded):
    whole = frames_of([recorded])
    for cut in range(len(recorded) + 1):
        split = frames_of([recorded[:cut], recorded[cut:]])
        assert split == whole, f"split at byte {cut}"


def test_frames_are_the_same_in_three_uneven_reads(recorded):
    whole = frames_of([recorded])
    for first in range(0, len(recorded), 97):
        for second in range(first, len(recorded), 89):
            assert frames_of([recorded[:first], recorded[first:second], recorded[second:]]) == whole


@pytest.mark.parametrize("end", [b"\n", b"\r\n"], ids=["lf", "crlf"])
@pytest.mark.parametrize("path", RECORDED, ids=lambda p: p.stem)
def test_each_frame_comes_out_of_the_read_that_completes_it(path, end):
    stream = with_line_ends(path.read_bytes(), end)
    framer = SSEFramer()
    for frame in frames_of([stream]):
        if frame.complete:
            assert framer.feed(frame.raw) == [frame]


def test_a_frame_ending_in_a_lone_cr_waits_for_the_next_byte():
    framer = SSEFramer()
    assert framer.feed(b"data: x\r\r") == []  # the last CR may still be followed by an LF
    assert framer.feed(b":") == [Frame(b"data: x\r\r", "x")]


def test_recorded_stream_frames_are_complete_and_end_with_done(recorded):
    frames = frames_of([recorded])
    if b"[DONE]" in recorded:
        assert all(frame.complete for frame in frames)
        assert frames[-1].data == "[DONE]"


def test_several_events_in_one_read_come_out_in_order():
    frames = SSEFramer().feed(b"data: 1\n\ndata: 2\n\n: ping\n\ndata: 3\n\ndata: 4")
    assert [(f.raw, f.data) for f in frames] == [
        (b"data: 1\n\n", "1"), (b"data: 2\n\n", "2"), (b": ping\n\n", None), (b"data: 3\n\n", "3")]


@pytest.mark.parametrize("stream, expected", [
    pytest.param(b"data: x\n\n", [("x", None)], id="lf"),
    pytest.param(b"data: x\r\n\r\n", [("x", None)], id="crlf"),
    pytest.param(b"data: x\r\r", [("x", None)], id="cr"),
    pytest.param(b"data: x\r\n\ndata: y\r\r\n", [("x", None), ("y", None)], id="mixed line ends"),
    pytest.param(b"data:x\n\n", [("x", None)], id="no space after colon"),
    pytest.param(b"data:  x \n\n", [(" x ", None)], id="only one leading space stripped"),
    pytest.param(b"data: a\ndata: b\ndata:\n\n", [("a\nb\n", None)], id="multi-line data"),
    pytest.param(b"data\n\n", [("", None)], id="field without colon has an empty value"),
    pytest.param(b"data: {\"a\":1}\n: comment inside\ndata: tail\n\n", [('{"a":1}\ntail', None)],
                 id="comment between data lines"),
    pytest.param(b": ping\n\n", [(None, None)], id="comment-only frame has no data"),
    pytest.param(b"event: error\ndata: {}\n\n", [("{}", "error")], id="event field"),
    pytest.param(b"event:e\ndata:x\n\nevent:\ndata:\n\n", [("x", "e"), ("", "")], id="event then data, no spaces"),
    pytest.param(b"event: e\ndata: x\ndata: y\n\n", [("x\ny", "e")], id="event then two data lines"),
    pytest.param(b"event: a\nevent: b\n\n", [(None, "b")], id="two events, no data"),
    pytest.param(b"event: e\ndatum: x\n\n", [(None, "e")], id="event then another field"),
    pytest.param(b"id: 7\nretry: 10\nfoo: bar\ndata: x\n\n", [("x", None)], id="other fields ignored"),
    pytest.param(b"Data: x\n\n", [(None, None)], id="field names are case sensitive"),
    pytest.param(b"\n\ndata: x\n\n", [(None, None), (None, None), ("x", None)], id="lone blank lines"),
    pytest.param("data: héllo ✓\n\n".encode(), [("héllo ✓", None)], id="utf-8"),
    pytest.param(b"data: \xff\xfe\n\n", [("\ufffd\ufffd", None)], id="invalid utf-8 is replaced"),
    pytest.param(b"\xef\xbb\xbfdata: x\n\n", [("x", None)], id="bom at stream start ignored"),
    pytest.param(b"\xef\xbb\xbf\n", [(None, None)], id="bom then blank line"),
    pytest.param(b"data: x\n\n\xef\xbb\xbfdata: y\n\n", [("x", None), (None, None)],
                 id="bom later is part of the field name"),
])
def test_fields_are_parsed_as_the_spec_says(stream, expected):
    for chunks in ([stream], [stream[i:i + 1] for i in range(len(stream))]):
        frames = frames_of(chunks)
        assert [(f.data, f.event) for f in frames] == expected
        assert b"".join(f.raw for f in frames) == stream


def test_cr_at_end_of_read_and_lf_at_start_of_next_are_one_line_end():
    framer = SSEFramer()
    assert framer.feed(b"data: x\r\n\r") == []  # the last CR may be half of a CRLF
    frames = framer.feed(b"\ndata: y\r\n\r\n")
    assert [(f.raw, f.data) for f in frames] == [(b"data: x\r\n\r\n", "x"), (b"data: y\r\n\r\n", "y")]
    assert framer.close() is None


def test_cr_at_end_of_read_followed_by_other_bytes_ends_the_frame():
    framer = SSEFramer()
    assert framer.feed(b"data: x\r\r") == []
    assert [(f.raw, f.data) for f in framer.feed(b"data: y\r\r")] == [(b"data: x\r\r", "x")]


def test_empty_read_yields_nothing():
    framer = SSEFramer()
    assert framer.feed(b"") == []
    assert framer.close() is None


@pytest.mark.parametrize("stream, tail", [
    pytest.param(b"data: 1\n\ndata: {\"par", Frame(b"data: {\"par", None, complete=False),
                 id="cut inside a line: no data"),
    pytest.param(b"data: 1\n\ndata: [DONE]\n", Frame(b"data: [DONE]\n", "[DONE]", complete=False),
                 id="last event without its blank line keeps its data"),
    pytest.param(b"data: 1\n\nevent: x\ndata: a\r\ndata: b", Frame(b"event: x\ndata: a\r\ndata: b", "a", "x",
                                                                   complete=False),
                 id="only complete lines count"),
    pytest.param(b"data: 1\n\ndata: 2\r", Frame(b"data: 2\r", "2", complete=False),
                 id="a final CR ends the line"),
    pytest.param(b"data: 1\n\ndata: 2\r\r", Frame(b"data: 2\r\r", "2", complete=True),
                 id="a final CR ends the frame"),
    pytest.param(b"\xef\xbb", Frame(b"\xef\xbb", None, complete=False), id="half a bom"),
])
def test_close_returns_the_tail_of_a_truncated_stream(stream, tail):
    for chunks in ([stream], [stream[i:i + 1] for i in range(len(stream))]):
        framer = SSEFramer()
        frames = [frame for chunk in chunks for frame in framer.feed(chunk)]
        assert framer.close() == tail
        assert b"".join(f.raw for f in frames) + tail.raw == stream
        assert framer.close() is None


def test_a_large_event_in_many_small_reads_is_one_frame():
    data = b"x" * 200_000
    stream = b"data: " + data + b"\n\n"
    framer = SSEFramer()
    frames = [f for i in range(0, len(stream), 1000) for f in framer.feed(stream[i:i + 1000])]
    assert [(f.raw, f.data) for f in frames] == [(stream, data.decode())]


def reference_frames(stream: bytes) -> list[tuple[bytes, str | None, str | None]]:
    """A slow, byte-by-byte reading of the spec, to check the framer against."""
    pos = 3 if stream.startswith(b"\xef\xbb\xbf") else 0  # a BOM is not part of the first line
    frames, start, lines = [], 0, []
    while True:
        end = pos
        while end < len(stream) and stream[end] not in b"\r\n":
            end += 1
        if end == len(stream):
            break  # no line end: an unfinished line, ignored
        after = end + 2 if stream[end:end + 2] == b"\r\n" else end + 1
        line, pos = stream[pos:end], after
        if line:
            lines.append(line)
        else:
            frames.append((stream[start:after], *fields(lines)))
            start, lines = after, []
    if start < len(stream):
        frames.append((stream[start:], *fields(lines)))
    return frames


def fields(lines: list[bytes]) -> tuple[str | None, str | None]:
    data, event = [], None
    for line in lines:
        name, _, value = line.decode("utf-8", "replace").partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
    return ("\n".join(data) if data else None), event


PIECES = [b"\r", b"\n", b"\r\n", b"data:", b"data: ", b"x", b"{}", b":", b" ping", b"event: e", b"id: 1",
          "é".encode(), b"\xef\xbb\xbf"]


@pytest.mark.parametrize("seed", range(40))
def test_random_streams_match_a_byte_by_byte_reading_of_the_spec(seed):
    rng = random.Random(seed)
    for _ in range(25):
        stream = b"".join(rng.choice(PIECES) for _ in range(rng.randint(0, 40)))
        expected = reference_frames(stream)
        cuts = sorted(rng.sample(range(len(stream) + 1), min(len(stream) + 1, rng.randint(0, 6))))
        chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)])]
        got = frames_of(chunks)
        assert [(f.raw, f.data, f.event) for f in got] == expected, (stream, chunks)
        assert all(f.complete for f in got[:-1])


def test_whole_frames_end_where_the_framer_ends_a_frame_or_nowhere(recorded):
    """Wherever `whole` cuts a read, it is between two frames of a plain reading, and feeding
    the rest gives the frames after it; it cuts LF and CRLF streams, never a CR-only one."""
    reference = [frame.raw for frame in frames_of([recorded])]
    cut_any = False
    for limit in range(0, len(recorded) + 1, 7):
        framer = SSEFramer()
        passed = framer.whole(recorded, limit)
        assert passed <= limit
        cut_any |= passed > 0
        rest = framer.feed(recorded[passed:])
        tail = framer.close()
        assert [frame.raw for frame in frames_of([recorded[:passed]]) + rest + ([tail] if tail else [])] == reference
    assert cut_any is (recorded.count(b"\r") == recorded.count(b"\r\n") and len(reference) > 1)


@pytest.mark.parametrize("chunk", [b"data: a\r\n\r\ndata: b\n\n", b"data: a\n\ndata: b\r\n\r\n",
                                   b"data: a\r\r\n\r\n", b"data: a\n\r\n\r\n"])
def test_whole_refuses_bytes_whose_line_ends_are_mixed_before_its_cut(chunk):
    framer = SSEFramer()
    passed = framer.whole(chunk, len(chunk))
    reference = [frame.raw for frame in frames_of([chunk])]
    assert passed in {sum(map(len, reference[:i])) for i in range(len(reference) + 1)}
    assert passed < len(chunk)
