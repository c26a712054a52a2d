"""The Responses wire format: its stream watcher on recorded streams, its body reading, its prompt count."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from metering.usage.sse import SSEFramer, frames_of
from proxy.errors import InvalidRequest
from proxy.formats.openai_responses import RESPONSES, ResponsesStream, count_input
from tests.fakes import responses_wire as fake

STREAMS = Path(__file__).parent / "streams"

# file: (terminal, done, text, input, cached, output, reasoning, has error) from streams/README.md
RECORDED = {
    "responses_text.sse": (True, "Hi there! How can I help today?", (11, 0, 10, 0), False),
    "responses_reasoning_cached.sse": (True, "Current weather in New York City, USA: Sunny.", (2048, 1920, 45, 32),
                                       False),
    "responses_incomplete.sse": (True, "Dusty asphalt wakes", (20, 0, 16, 12), False),
    "responses_failed.sse": (True, "Once upon a time", None, True),
    "responses_truncated.sse": (False, "Oi! Tudo", None, False),
}


def watch(data: bytes, size: int | None = None, *, skim: bool = True) -> tuple[ResponsesStream, bytes, int]:
    """Run `data` through a framer and a watcher in reads of `size` bytes, as the relay does
    (whole frames the watcher need not read skimmed); (watcher, bytes out, index of the frame
    that was terminal)."""
    framer, watcher = SSEFramer(), ResponsesStream()
    out, frames, terminal_at = bytearray(), 0, -1
    pieces = [data] if size is None else [data[i:i + size] for i in range(0, len(data), size)]
    for piece in pieces:
        passed = watcher.skim(piece, framer) if skim else 0
        out += piece[:passed]
        frames += len(frames_of(piece[:passed]))
        for frame in framer.feed(piece[passed:]):
            out += watcher.process(frame)
            frames += 1
            if watcher.terminal and terminal_at < 0:
                terminal_at = frames
    tail = framer.close()
    if tail is not None:
        out += watcher.process(tail)
    return watcher, bytes(out), terminal_at


def outcome(watcher: ResponsesStream) -> tuple:
    return (watcher.usage, watcher.error, watcher.done, watcher.terminal, watcher.answer_id, watcher.status,
            watcher.output_text())


@pytest.mark.parametrize("name", sorted(RECORDED))
@pytest.mark.parametrize("size", [None, 1, 7, 64])
def test_recorded_streams_give_their_usage_text_and_end_whatever_the_reads(name, size):
    terminal, text, usage, error = RECORDED[name]
    data = (STREAMS / name).read_bytes()
    watcher, out, _ = watch(data, size)
    assert out == data  # nothing stripped: the client gets the provider's bytes
    assert watcher.terminal is terminal and watcher.done is terminal
    assert watcher.output_text() == text
    assert (watcher.error is not None) is error
    if usage is None:
        assert watcher.usage is None
    else:
        got = watcher.usage
        assert (got.input_tokens, got.cached_input_tokens, got.output_tokens, got.reasoning_tokens) == usage


def test_the_terminal_frame_is_the_last_one_and_the_answer_id_comes_from_the_first():
    data = b"".join(fake.stream_bytes("responses-fake-ok", "m", rid="resp_x1"))
    watcher, _, terminal_at = watch(data)
    assert terminal_at == data.count(b"\n\n")  # the terminal event is the stream's last frame
    assert watcher.answer_id == "resp_x1" and watcher.status == "completed"


def test_crlf_line_ends_and_pings_change_nothing():
    data = b"".join(fake.stream_bytes("responses-fake-ok", "m"))
    crlf = data.replace(b"\n", b"\r\n").replace(b"event: response.in_progress", b": ping\r\n\r\nevent: response.in_progress")
    watcher, out, _ = watch(crlf, 5)
    assert out == crlf and watcher.usage.output_tokens == fake.OUTPUT_TOKENS


ODD_STREAMS = {
    # frames without an event name (the type is in the data): read one by one, never skimmed past
    "unnamed": lambda data: data.replace(b"event: response.output_text.delta\n", b"", 3)
    .replace(b"event: response.completed\n", b""),
    # a second response.created (its id wins, as when every frame is read)
    "created twice": lambda data: data.replace(b"event: response.output_text.done", b"event: response.created\n"
                                               b'data: {"type":"response.created","response":{"id":"resp_2"}}\n\n'
                                               b"event: response.output_text.done", 1),
    "pings": lambda data: data.replace(b"event: response.output_text.delta", b": ping\n\nevent: response.output_text.delta"),
    "crlf": lambda data: data.replace(b"\n", b"\r\n"),
    "error event": lambda data: data.replace(b"event: response.completed", b"event: error\n"
                                             b'data: {"type":"error","message":"overloaded"}\n\nevent: response.completed'),
    # JSON as Python's json.dumps writes it, with and without the names (the type is then in the data)
    "spaced": lambda data: reshape(data, json.dumps),
    "spaced unnamed": lambda data: reshape(data, json.dumps, named=False),
    "indented unnamed": lambda data: reshape(data, lambda obj: json.dumps(obj, indent=1), named=False),
    # names that are not the type: every frame `message`, an empty name, a second name on the terminal event
    "named message": lambda data: re.sub(rb"(?m)^event:[^\n]*", b"event: message", data),
    "empty names": lambda data: re.sub(rb"(?m)^event:[^\n]*", b"event:", data),
    "renamed terminal": lambda data: re.sub(rb"(event: response\.(?:completed|incomplete|failed)\n)",
                                            rb"\1event: message\n", data),
    "two spaces": lambda data: data.replace(b"event: response.", b"event:  response."),
}


def reshape(data: bytes, dump, *, named: bool = True) -> bytes:
    """`data`'s frames with each JSON written again by `dump` (one `data:` line per line of its
    text), their `event:` lines kept or dropped."""
    out = bytearray()
    for frame in frames_of(data):
        if frame.data is None:
            out += frame.raw
            continue
        if named and frame.event is not None:
            out += b"event: " + frame.event.encode() + b"\n"
        for line in dump(json.loads(frame.data)).split("\n"):
            out += b"data: " + line.encode() + b"\n"
        out += b"\n"
    return bytes(out)


@pytest.mark.parametrize("name", [*sorted(RECORDED), "fake"])
@pytest.mark.parametrize("odd", [None, *ODD_STREAMS])
@pytest.mark.parametrize("size", [None, 1, 9, 100, 1000])
def test_skimming_changes_nothing_the_client_or_the_meter_sees(name, odd, size):
    data = (STREAMS / name).read_bytes() if name != "fake" else b"".join(fake.stream_bytes("responses-fake-ok", "m"))
    if odd is not None:
        data = ODD_STREAMS[odd](data)
    skimmed, out, terminal_at = watch(data, size)
    framed, reference, reference_at = watch(data, size, skim=False)
    assert out == reference == data
    assert outcome(skimmed) == outcome(framed) and terminal_at == reference_at


def test_skim_reads_the_first_frame_and_passes_the_deltas_up_to_the_terminal_event():
    data = b"".join(fake.stream_bytes("responses-fake-ok", "m", rid="resp_x1"))
    watcher = ResponsesStream()
    assert watcher.skim(data.replace(b"\n", b"\r\n"), SSEFramer()) == 0  # CR line ends: framed
    assert watcher.skim(data[data.index(b"\n\n") + 2:], SSEFramer()) == 0  # no id yet: the next frame is read
    assert watcher.answer_id is None
    assert watcher.skim(data, SSEFramer()) == data.index(b"event: response.completed")
    assert watcher.answer_id == "resp_x1"


@pytest.mark.parametrize("body, param", [
    ({"model": "m", "input": "x", "background": True}, "background"),
    ({"model": "m", "input": "x", "max_output_tokens": 0}, "max_output_tokens"),
    ({"model": "m", "input": "x", "max_output_tokens": "9"}, "max_output_tokens"),
    ({"model": "m", "input": "x", "previous_response_id": 7}, "previous_response_id"),
    ({"model": "m", "input": "x", "conversation": {"name": "c"}}, "conversation"),
    ({"model": "m", "input": "x", "previous_response_id": "resp_1", "conversation": "conv_1"}, "conversation"),
])
def test_requests_that_cannot_be_metered_are_refused_before_the_provider(body, param):
    with pytest.raises(InvalidRequest) as caught:
        RESPONSES.validate(body)
    assert caught.value.param == param


def test_the_prompt_count_covers_instructions_items_and_tools():
    base = count_input({"input": "hello"}, "gpt-4o")
    assert count_input({"input": "hello", "instructions": "Be brief."}, "gpt-4o") > base
    items = [{"role": "user", "content": [{"type": "input_text", "text": "hello"},
                                          {"type": "input_image", "image_url": "data:x"}]}]
    assert count_input({"input": items}, "gpt-4o") >= base + 85  # an image counts as one low-detail image
    tools = [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}]
    assert count_input({"input": "hello", "tools": tools}, "gpt-4o") > base


def test_a_whole_response_gives_its_usage_text_and_id():
    body = fake.response_object("responses-fake-ok", "m", rid="resp_9")
    usage = RESPONSES.usage(body)
    assert (usage.input_tokens, usage.cached_input_tokens, usage.output_tokens, usage.reasoning_tokens) == (
        fake.INPUT_TOKENS, fake.CACHED_TOKENS, fake.OUTPUT_TOKENS, fake.REASONING_TOKENS)
    assert RESPONSES.text(body) == fake.REPLY and RESPONSES.answer_id(body) == "resp_9"


def _escaped_type(obj: dict) -> str:
    """Compact JSON whose top-level `type` member is spelt with escapes (key and value), all else ASCII-escaped."""
    return json.dumps(obj, separators=(",", ":")).replace('"type":"response.', '"typ\\u0065":"respons\\u0065.', 1)


# The same stream's JSON, written each way a JSON writer may (the framing adds or drops the names)
WRITTEN = {
    "compact": lambda obj: json.dumps(obj, separators=(",", ":"), ensure_ascii=False),
    "spaced (json.dumps)": json.dumps,
    "spaces around the colons": lambda obj: json.dumps(obj, separators=(" , ", " : ")),
    "newlines inside": lambda obj: json.dumps(obj, indent=2),
    "newline before the colon": lambda obj: json.dumps(obj, separators=(",\n", "\n:\n")),
    "type last": lambda obj: json.dumps(dict(reversed(list(obj.items())))),
    "escaped type": _escaped_type,
}


def billed(watcher: ResponsesStream) -> tuple:
    """What the meter takes from a stream: its usage, text, end, answer id and status."""
    usage = watcher.usage
    return ((usage.input_tokens, usage.cached_input_tokens, usage.output_tokens, usage.reasoning_tokens)
            if usage is not None else None, watcher.output_text(), watcher.terminal, watcher.done,
            watcher.answer_id, watcher.status, watcher.error is not None)


@pytest.mark.parametrize("scenario", ["responses-fake-ok", "responses-fake-incomplete", "responses-fake-failed",
                                      "responses-fake-cut"])
@pytest.mark.parametrize("written", sorted(WRITTEN))
@pytest.mark.parametrize("named", [True, False], ids=["named", "unnamed"])
@pytest.mark.parametrize("size", [None, 1, 13, 200])
@pytest.mark.parametrize("skim", [True, False], ids=["skimmed", "framed"])
def test_a_stream_is_billed_the_same_whatever_its_json_whitespace_key_order_escapes_and_names(
        scenario, written, named, size, skim):
    compact = b"".join(fake.stream_bytes(scenario, "m", rid="resp_w1"))
    reference, _, reference_at = watch(compact, skim=False)
    data = reshape(compact, WRITTEN[written], named=named)
    watcher, out, terminal_at = watch(data, size, skim=skim)
    assert out == data
    assert billed(watcher) == billed(reference) and terminal_at == reference_at
    if scenario != "responses-fake-cut":
        assert watcher.usage is not None and watcher.done and watcher.answer_id == "resp_w1"


# api.openai.com's events as an OpenAI-compatible server wrote them with json.dumps and no names
# (the defect: no usage event was written for it)
UNNAMED_SPACED = (
    b'data: {"type": "response.created", "response": {"id": "resp_1", "status": "in_progress", "usage": null}}\n\n'
    b'data: {"type": "response.output_text.delta", "delta": "The quick brown fox. "}\n\n'
    b'data: {"type": "response.output_text.delta", "delta": "The lazy dog."}\n\n'
    b'data: {"type": "response.completed", "response": {"id": "resp_1", "status": "completed", '
    b'"usage": {"input_tokens": 100, "output_tokens": 50}}}\n\n')


@pytest.mark.parametrize("size", [None, 1, 10])
def test_an_unnamed_stream_in_spaced_json_gives_its_usage_text_and_end(size):
    watcher, out, terminal_at = watch(UNNAMED_SPACED, size)
    assert out == UNNAMED_SPACED
    assert (watcher.usage.input_tokens, watcher.usage.output_tokens) == (100, 50)
    assert watcher.output_text() == "The quick brown fox. The lazy dog."
    assert watcher.done and watcher.terminal and terminal_at == 4
    assert (watcher.answer_id, watcher.status, watcher.error) == ("resp_1", "completed", None)


# Model output that quotes a terminal event (escaped in its JSON string), and an event whose nested
# `type` is a terminal one: neither is the event's own top-level `type`
DECOY = {"type": "response.completed", "response": {"id": "resp_fake", "status": "completed",
                                                    "usage": {"input_tokens": 1, "output_tokens": 1}}}
DECOYS = [
    {"type": "response.output_text.delta", "delta": json.dumps(DECOY)},
    {"type": "response.output_text.delta", "delta": json.dumps(DECOY, separators=(",", ":"))},
    {"type": "response.output_text.delta", "delta": "event: response.completed\ndata: " + json.dumps(DECOY) + "\n\n"},
    {"type": "response.output_item.added", "item": DECOY},
    {"item": DECOY, "type": "response.output_item.done"},
]


@pytest.mark.parametrize("written", ["compact", "spaced (json.dumps)", "newlines inside"])
@pytest.mark.parametrize("named", [True, False], ids=["named", "unnamed"])
@pytest.mark.parametrize("ends", [True, False], ids=["then the terminal event", "then cut"])
def test_text_that_quotes_a_terminal_event_is_not_the_event(written, named, ends):
    events = [{"type": "response.created", "response": {"id": "resp_real", "status": "in_progress", "usage": None}},
              *DECOYS]
    if ends:
        events.append({"type": "response.completed", "response": {
            "id": "resp_real", "status": "completed", "usage": {"input_tokens": 30, "output_tokens": 40}}})
    compact = b"".join(b"event: " + event["type"].encode() + b"\ndata: " + json.dumps(event).encode() + b"\n\n"
                       for event in events)
    data = reshape(compact, WRITTEN[written], named=named)
    for skim in (True, False):
        for size in (None, 1, 50):
            watcher, out, terminal_at = watch(data, size, skim=skim)
            assert out == data and watcher.answer_id == "resp_real"
            assert watcher.output_text() == "".join(event["delta"] for event in DECOYS if "delta" in event)
            if ends:
                assert (watcher.usage.input_tokens, watcher.usage.output_tokens) == (30, 40)
                assert watcher.done and terminal_at == len(events)
            else:
                assert watcher.usage is None and not watcher.done and terminal_at == -1


@pytest.mark.parametrize("name", ["event: response.completed", "event:response.incomplete", "event: response.failed",
                                  "event: response.created", "event: error", "event: message", "event:",
                                  "event:  response.output_text.delta", "event: response.output_text.delta\nevent: x",
                                  ": ping\nevent: response.output_text.delta", "id: 7\nevent: response.in_progress"])
@pytest.mark.parametrize("spaced", [True, False])
def test_the_skim_stops_at_a_frame_it_would_not_tell_by_its_name(name, spaced):
    data = b"".join(fake.stream_bytes("responses-fake-ok", "m"))
    if spaced:
        data = reshape(data, json.dumps)
    at = data.index(b"event: response.output_text.delta")
    odd = data[:at] + name.encode() + data[at + len(b"event: response.output_text.delta"):]
    watcher = ResponsesStream()
    assert watcher.skim(odd, SSEFramer()) == at  # the frames before it are skimmed, it is framed
    assert watcher.skim(odd[at:], SSEFramer(mid_stream=True)) == 0  # a read that starts with it is framed whole


def test_the_skim_still_passes_spaced_named_frames_up_to_the_terminal_event():
    data = reshape(b"".join(fake.stream_bytes("responses-fake-ok", "m", rid="resp_x1")), json.dumps)
    watcher = ResponsesStream()
    assert watcher.skim(data, SSEFramer()) == data.index(b"event: response.completed")
    assert watcher.answer_id == "resp_x1"


def test_skimming_changes_nothing_on_streams_whose_names_and_json_are_shuffled():
    rng = random.Random(20261207)
    names = [None, "message", "", "response.in_progress", "error", "response.completed", "response.output_text.delta"]
    writers = list(WRITTEN.values())
    base = frames_of(b"".join(fake.stream_bytes("responses-fake-ok", "m")))
    for _ in range(300):
        out = bytearray()
        for frame in base:
            name = frame.event if rng.random() < 0.7 else rng.choice(names)
            if name is not None:
                out += b"event: " + name.encode() + b"\n" if name else b"event:\n"
            for line in rng.choice(writers)(json.loads(frame.data)).split("\n"):
                out += b"data: " + line.encode() + b"\n"
            out += b"\n"
        data = bytes(out)
        size = rng.choice([None, 1, 5, 64, 300, 2000])
        skimmed, sent, skimmed_at = watch(data, size)
        framed, reference, framed_at = watch(data, size, skim=False)
        assert sent == reference == data
        assert outcome(skimmed) == outcome(framed) and skimmed_at == framed_at
