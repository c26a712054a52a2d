"""The Responses wire format: its stream watcher on recorded streams, its body reading, its prompt count."""

from __future__ import annotations

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
}


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
