"""Usage extraction: from responses, and from streams as they are relayed to the client."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import proxy.formats.openai_chat
from metering.usage.sse import Frame, SSEFramer
from metering.usage.tokens import count_text
from metering.usage.fallback import final_usage, needs_output, needs_prompt
from metering.usage.normalized import Usage, anthropic_usage, usage_from_json
from proxy.formats.gemini import gemini_usage
from proxy.formats.openai_chat import StreamAccumulator

STREAMS = Path(__file__).parent / "streams"
OPENAI_USAGE = {"prompt_tokens": 19, "completion_tokens": 10, "total_tokens": 29,
                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                              "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}


def counts(usage: Usage | None) -> tuple[int, int, int, int] | None:
    if usage is None:
        return None
    return usage.input_tokens, usage.cached_input_tokens, usage.output_tokens, usage.reasoning_tokens


@pytest.mark.parametrize("obj, expected", [
    pytest.param({"object": "chat.completion", "usage": OPENAI_USAGE}, (19, 0, 10, 0), id="chat completion"),
    pytest.param({"usage": {"prompt_tokens": 2006, "completion_tokens": 300, "total_tokens": 2306,
                            "prompt_tokens_details": {"cached_tokens": 1920},
                            "completion_tokens_details": {"reasoning_tokens": 192}}},
                 (2006, 1920, 300, 192), id="cached and reasoning parts"),
    pytest.param({"object": "text_completion", "usage": {"prompt_tokens": 5, "completion_tokens": 7,
                                                         "total_tokens": 12}}, (5, 0, 7, 0), id="completions"),
    pytest.param({"object": "list", "usage": {"prompt_tokens": 8, "total_tokens": 8}}, (8, 0, 0, 0),
                 id="embeddings"),
    pytest.param({"object": "list", "usage": {"total_tokens": 8}}, (8, 0, 0, 0), id="embeddings total only"),
    pytest.param({"usage": {"prompt_tokens": None, "total_tokens": 8}}, (8, 0, 0, 0),
                 id="embeddings null prompt tokens"),
    pytest.param({"usage": {"input_tokens": 10, "output_tokens": 20, "cache_read_input_tokens": 100,
                            "cache_creation_input_tokens": 5}}, (115, 100, 20, 0),
                 id="anthropic names: cache reads and writes are input too"),
    pytest.param({"usage": {"input_tokens": 120, "output_tokens": 30, "total_tokens": 150,
                            "input_tokens_details": {"cached_tokens": 64},
                            "output_tokens_details": {"reasoning_tokens": 12}}}, (120, 64, 30, 12),
                 id="responses api names"),
    pytest.param({"usage": {"prompt_tokens": 10, "completion_tokens": 3, "prompt_cache_hit_tokens": 6,
                            "prompt_cache_miss_tokens": 4}}, (10, 6, 3, 0), id="deepseek cache hits"),
    pytest.param({"usage": {"prompt_tokens": -5, "completion_tokens": True, "total_tokens": "9"}}, (0, 0, 0, 0),
                 id="negative and bool are rejected"),
    pytest.param({"usage": {"prompt_tokens": 4.0, "completion_tokens": "3",
                            "prompt_tokens_details": {"cached_tokens": [1]},
                            "completion_tokens_details": "x"}}, (4, 0, 0, 0),
                 id="an integral float is a count, other non-int values count 0"),
    pytest.param({"usage": {"prompt_tokens": 2 ** 62, "completion_tokens": 1e30}}, (0, 0, 0, 0),
                 id="counts no call can hold count 0"),
    pytest.param({"usage": {"prompt_tokens": 10, "completion_tokens": 5,
                            "prompt_tokens_details": {"cached_tokens": 50},
                            "completion_tokens_details": {"reasoning_tokens": 9}}}, (10, 10, 5, 5),
                 id="a part never exceeds its whole"),
    pytest.param({"usage": {}}, (0, 0, 0, 0), id="empty usage"),
    pytest.param({"usage": None}, None, id="null usage"),
    pytest.param({"usage": [1, 2]}, None, id="usage not an object"),
    pytest.param({"choices": []}, None, id="no usage"),
    pytest.param([{"usage": OPENAI_USAGE}], None, id="not an object"),
    pytest.param(None, None, id="none"),
    pytest.param("usage", None, id="a string"),
])
def test_usage_from_json_reads_every_shape_without_raising(obj, expected):
    assert counts(usage_from_json(obj)) == expected


@pytest.mark.parametrize("usage, unread", [
    pytest.param(OPENAI_USAGE, (), id="chat"),
    pytest.param({"prompt_tokens": 8, "total_tokens": 8}, (), id="embeddings: no completion tokens"),
    pytest.param({"total_tokens": 8}, (), id="embeddings: only a total"),
    pytest.param({"prompt_tokens": 100.0, "completion_tokens": 50.0}, (), id="integral floats"),
    pytest.param({"prompt_tokens": 100, "completion_tokens": 50.5}, ("output",), id="a fraction"),
    pytest.param({"prompt_tokens": "100", "completion_tokens": 50}, ("input",), id="a string"),
    pytest.param({"prompt_tokens": 100, "completion_tokens": -50}, ("output",), id="a negative count"),
    pytest.param({"prompt_tokens": 100, "completion_tokens": True}, ("output",), id="a bool"),
    pytest.param({"prompt_tokens": 100, "completion_tokens": 4611686018427387904}, ("output",),
                 id="more than a call can hold"),
    pytest.param({"prompt_tokens": 1e30, "completion_tokens": 5}, ("input",), id="a huge float"),
    pytest.param({"prompt_tokens": None, "completion_tokens": None}, ("input", "output"), id="only nulls"),
    pytest.param({}, ("input", "output"), id="empty"),
    pytest.param({"prompt_tokens": 10, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": "x"}},
                 (), id="an unreadable part counts 0, the counts stand"),
    pytest.param({"input_tokens": 10, "output_tokens": 2.5}, ("output",), id="responses: a fraction"),
    pytest.param({"input_tokens": 10}, ("output",), id="responses: no output count"),
    pytest.param({"output_tokens": 7, "cache_read_input_tokens": 3}, ("input",),
                 id="anthropic: no input count"),
    pytest.param({"input_tokens": 10, "output_tokens": 7, "cache_read_input_tokens": -3}, ("input",),
                 id="anthropic: an unreadable cache read is part of the input"),
])
def test_usage_names_the_counts_the_provider_sent_but_not_as_counts(usage, unread):
    assert usage_from_json({"usage": usage}).unread == unread


@pytest.mark.parametrize("meta, unread", [
    pytest.param({"promptTokenCount": 10, "candidatesTokenCount": 5, "thoughtsTokenCount": 2}, (), id="gemini"),
    pytest.param({"promptTokenCount": 10}, (), id="gemini: nothing generated yet"),
    pytest.param({"promptTokenCount": 10, "candidatesTokenCount": 5.5}, ("output",), id="gemini: a fraction"),
    pytest.param({"promptTokenCount": 10, "thoughtsTokenCount": "2"}, ("output",), id="gemini: unreadable thoughts"),
    pytest.param({"totalTokenCount": 15}, ("input", "output"), id="gemini: no count of its own"),
    pytest.param({}, ("input", "output"), id="gemini: empty"),
])
def test_gemini_usage_names_the_counts_it_could_not_read(meta, unread):
    assert gemini_usage(meta).unread == unread


def test_anthropic_usage_without_its_input_count_is_unread():
    assert anthropic_usage({"output_tokens": 7}).unread == ("input",)
    assert anthropic_usage({"input_tokens": 3, "output_tokens": 7}).unread == ()


def test_only_the_counts_sent_but_not_as_counts_are_estimated():
    reported = usage_from_json({"usage": {"prompt_tokens": "13", "completion_tokens": 7}})
    assert needs_prompt(reported) and not needs_prompt(usage_from_json({"usage": OPENAI_USAGE}))
    assert not needs_output(reported)
    usage, source = final_usage(reported, prompt_tokens=11, output_tokens=None)
    assert (usage.input_tokens, usage.output_tokens, usage.source) == (11, 7, "estimated")
    assert source == {"input": "tiktoken", "output": "provider"}
    assert usage.raw == {"prompt_tokens": "13", "completion_tokens": 7}

    reported = usage_from_json({"usage": {"prompt_tokens": 13, "completion_tokens": -1,
                                          "completion_tokens_details": {"reasoning_tokens": 3}}})
    assert needs_output(reported) and not needs_prompt(reported)
    usage, source = final_usage(reported, prompt_tokens=None, output_tokens=count_text("Hello from fake.", "gpt-4o"))
    assert (usage.input_tokens, usage.output_tokens, usage.reasoning_tokens) == (13, 4, 0)
    assert source == {"input": "provider", "output": "tiktoken"}


def test_an_embeddings_unread_output_stays_zero():
    reported = usage_from_json({"usage": {}})
    assert not needs_output(reported, embeddings=True)
    usage, source = final_usage(reported, prompt_tokens=8, output_tokens=None, embeddings=True)
    assert (usage.input_tokens, usage.output_tokens) == (8, 0) and source["input"] == "tiktoken"


def test_usage_from_json_keeps_the_raw_usage_as_evidence():
    usage = usage_from_json({"usage": OPENAI_USAGE})
    assert usage.raw is OPENAI_USAGE
    assert usage.source == "provider"


def test_usage_equality_ignores_the_raw_evidence():
    assert Usage(input_tokens=1, raw={"a": 1}) == Usage(input_tokens=1)


# --- streams ---------------------------------------------------------------------------------

def relay(stream: bytes, *, strip_usage: bool, read_size: int | None = None,
          acc: StreamAccumulator | None = None, skim: bool = True) -> tuple[bytes, StreamAccumulator]:
    """What the client receives for `stream` read in pieces of `read_size`, and the accumulator:
    the relay's loop (proxy.calls), whole frames the accumulator need not read skimmed."""
    acc = acc or StreamAccumulator(strip_usage=strip_usage)
    framer = SSEFramer()
    size = read_size or len(stream) or 1
    out = []
    for i in range(0, len(stream), size):
        chunk = stream[i:i + size]
        passed = acc.skim(chunk, framer) if skim else 0
        out.append(chunk[:passed])
        out.extend(acc.process(frame) for frame in framer.feed(chunk[passed:]))
    tail = framer.close()
    if tail is not None:
        out.append(acc.process(tail))
    return b"".join(out), acc


def load(name: str) -> bytes:
    return (STREAMS / name).read_bytes()


def data_lines(stream: bytes) -> list[dict | str]:
    lines = [line[6:] for line in stream.split(b"\n") if line.startswith(b"data: ")]
    return [json.loads(line) if line != b"[DONE]" else "[DONE]" for line in lines]


@pytest.mark.parametrize("name, text, usage", [
    pytest.param("chat_include_usage.sse", "Hello! How can I assist you today?", (24, 0, 9, 0), id="chat"),
    pytest.param("chat_no_usage.sse", "Hello there, nice to meet you.", None, id="server ignores include_usage"),
    pytest.param("chat_usage_in_finish_chunk.sse", "Hi! Good to see you.", (24, 0, 7, 0), id="usage in finish chunk"),
    pytest.param("chat_tool_call.sse", 'get_weather{"location":"Paris, France"}', (81, 0, 16, 0), id="tool call"),
    pytest.param("completions_include_usage.sse", "\n\nRoses are red, violets are blue.", (6, 0, 9, 0),
                 id="completions"),
    pytest.param("chat_reasoning_keepalive.sse", "The user greets.Hello!", (10, 0, 7, 4),
                 id="reasoning content and keep-alive comments"),
])
@pytest.mark.parametrize("read_size", [None, 1, 7, 100], ids=["whole", "bytes", "7", "100"])
def test_recorded_streams_give_usage_text_and_done(name, text, usage, read_size):
    for strip_usage in (False, True):
        _, acc = relay(load(name), strip_usage=strip_usage, read_size=read_size)
        assert counts(acc.usage) == usage
        assert acc.output_text() == text
        assert acc.done
        assert acc.error is None


@pytest.mark.parametrize("read_size", [None, 1, 7, 100], ids=["whole", "bytes", "7", "100"])
def test_text_after_the_usage_makes_its_output_a_floor_the_relay_estimates_over(read_size):
    def chunk(obj: dict) -> bytes:
        return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"

    early = chunk({"choices": [], "usage": {"prompt_tokens": 13, "completion_tokens": 0, "total_tokens": 13}})
    words = [chunk({"choices": [{"index": 0, "delta": {"content": word}}], "usage": None})
             for word in ("Once", " upon", " a", " time")]
    _, acc = relay(early + b"".join(words), strip_usage=False, read_size=read_size)  # then cut
    assert (acc.usage.output_tokens, acc.usage.unread) == (0, ("output",)) and not acc.done
    usage, source = final_usage(acc.usage, prompt_tokens=None, output_tokens=count_text(acc.output_text(), "gpt-4o"))
    assert (usage.input_tokens, usage.output_tokens) == (13, 4)
    assert source == {"input": "provider", "output": "tiktoken"}

    _, acc = relay(b"".join(words) + early + b"data: [DONE]\n\n", strip_usage=False, read_size=read_size)
    assert acc.usage.unread == () and acc.done  # the usage came last: it stands


def test_recorded_usage_matches_tiktoken_over_the_streamed_text():
    _, acc = relay(load("chat_include_usage.sse"), strip_usage=False)
    assert count_text(acc.output_text(), "gpt-4o-mini") == acc.usage.output_tokens


@pytest.mark.parametrize("name", [p.name for p in sorted(STREAMS.glob("*.sse"))])
@pytest.mark.parametrize("line_end", [b"\n", b"\r\n", b"\r"], ids=["lf", "crlf", "cr"])
def test_without_stripping_the_client_gets_the_stream_byte_for_byte(name, line_end):
    stream = load(name).replace(b"\n", line_end)
    assert relay(stream, strip_usage=False)[0] == stream
    assert relay(stream, strip_usage=False, read_size=3)[0] == stream


@pytest.mark.parametrize("line_end", [b"\n", b"\r\n"], ids=["lf", "crlf"])
def test_stripping_drops_only_the_usage_only_chunk(line_end):
    stream = load("chat_include_usage.sse").replace(b"\n", line_end)
    frames = stream.split(line_end * 2)
    usage_frame = next(f for f in frames if b'"choices":[]' in f)
    expected = stream.replace(usage_frame + line_end * 2, b"")
    assert relay(stream, strip_usage=True)[0] == expected
    assert relay(stream, strip_usage=True, read_size=5)[0] == expected


@pytest.mark.parametrize("name", ["chat_no_usage.sse", "chat_error_midstream.sse"])
def test_stripping_leaves_streams_without_usage_untouched(name):
    stream = load(name)
    assert relay(stream, strip_usage=True)[0] == stream


def test_stripping_removes_usage_from_a_finish_chunk_and_keeps_the_chunk():
    stream = load("chat_usage_in_finish_chunk.sse")
    out, acc = relay(stream, strip_usage=True)
    sent, received = data_lines(stream), data_lines(out)
    assert len(received) == len(sent)
    finish = sent[-2]
    assert finish["choices"][0]["finish_reason"] == "stop" and finish["usage"]
    assert received[-2] == {k: v for k, v in finish.items() if k != "usage"}
    assert list(received[-2]) == [k for k in finish if k != "usage"]  # key order kept
    assert received[:-2] == sent[:-2] and received[-1] == "[DONE]"
    assert out.replace(b"\n\n", b"").count(b"\n") == 0  # still one line per frame
    assert counts(acc.usage) == (24, 0, 7, 0)


@pytest.mark.parametrize("raw, expected", [
    pytest.param(b'data: {"choices":[{"index":0}],"usage":{"prompt_tokens":1}}\r\n\r\n',
                 b'data: {"choices":[{"index":0}]}\r\n\r\n', id="crlf kept"),
    pytest.param(b'data: {"choices":[{"index":0}],"usage":{"prompt_tokens":1}}\r\r',
                 b'data: {"choices":[{"index":0}]}\r\r', id="cr kept"),
    pytest.param(b'event: chunk\nid: 42\ndata: {"choices":[{"index":0}],\ndata: "usage":{"prompt_tokens":1}}\n\n',
                 b'event: chunk\nid: 42\ndata: {"choices":[{"index":0}]}\n\n', id="other fields kept, data joined"),
    pytest.param(b'data: {"choices":[{"delta":{"content":"\xc3\xa9"}}],"usage":{"prompt_tokens":1}}\n\n',
                 b'data: {"choices":[{"delta":{"content":"\xc3\xa9"}}]}\n\n', id="non-ascii kept as utf-8"),
])
def test_stripping_rewrites_only_the_data_of_a_chunk_with_choices_and_usage(raw, expected):
    framer = SSEFramer()
    [frame] = framer.feed(raw + b":")
    assert StreamAccumulator(strip_usage=True).process(frame) == expected


@pytest.mark.parametrize("data", [
    '{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}}',
    '{"usage":{"prompt_tokens":3,"completion_tokens":4}}',
    '{"choices":null,"usage":{"prompt_tokens":3,"completion_tokens":4}}',
])
def test_usage_only_chunks_are_dropped_only_when_stripping(data):
    frame = Frame(raw=b"data: " + data.encode() + b"\n\n", data=data)
    stripping = StreamAccumulator(strip_usage=True)
    assert stripping.process(frame) == b""
    assert counts(stripping.usage) == (3, 0, 4, 0)
    assert StreamAccumulator(strip_usage=False).process(frame) == frame.raw


@pytest.mark.parametrize("data", [
    '{"choices":[{"delta":{"content":"x"}}],"usage":null}',
    '{"choices":[{"delta":{"content":"x"}}],"usage": null}',
    '{"choices":[{"delta":{"content":"x"}}],"usage" : null}',
    '{"choices":[{"delta":{"content":"say \\"usage\\": {}"}}]}',
    '{"choices":[{"delta":{"content":"the \\"usage"}}]}',
])
def test_null_usage_and_lookalike_text_are_forwarded_raw(data):
    frame = Frame(raw=b"data: " + data.encode() + b"\n\n", data=data)
    acc = StreamAccumulator(strip_usage=True)
    assert acc.process(frame) == frame.raw
    assert acc.usage is None


def test_latest_usage_wins_when_every_chunk_carries_one():
    chunks = [{"choices": [{"index": 0, "delta": {"content": c}}],
               "usage": {"prompt_tokens": 5, "completion_tokens": n}}
              for n, c in enumerate(["a", "b", "c"], start=1)]
    stream = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"
    out, acc = relay(stream, strip_usage=True)
    assert counts(acc.usage) == (5, 0, 3, 0)
    assert b"usage" not in out
    assert acc.output_text() == "abc"


@pytest.mark.parametrize("stream, error", [
    pytest.param(load("chat_error_midstream.sse"),
                 {"message": "The server had an error while processing your request. Sorry about that!",
                  "type": "server_error", "param": None, "code": None}, id="openai error object"),
    pytest.param(b'data: {"choices":[{"delta":{"content":"Once"}}]}\n\ndata: {"error":"overloaded"}\n\n',
                 {"message": "overloaded"}, id="error as a string"),
    pytest.param(b'data: {"choices":[{"delta":{"content":"Once"}}]}\n\nevent: error\ndata: {"message":"boom"}\n\n',
                 {"message": "boom"}, id="error event"),
    pytest.param(b'data: {"choices":[{"delta":{"content":"Once"}}]}\n\nevent: error\ndata: upstream died\n\n',
                 {"message": "upstream died"}, id="error event with text"),
])
def test_an_error_mid_stream_is_kept_and_forwarded(stream, error):
    out, acc = relay(stream, strip_usage=True)
    assert out == stream
    assert acc.error == error
    assert not acc.done
    assert acc.usage is None
    assert acc.output_text().startswith("Once")


def test_error_null_is_not_an_error():
    data = '{"choices":[{"delta":{"content":"x"}}],"error":null}'
    acc = StreamAccumulator(strip_usage=False)
    acc.process(Frame(raw=b"data: " + data.encode() + b"\n\n", data=data))
    assert acc.error is None
    assert acc.output_text() == "x"


@pytest.mark.parametrize("data", [
    "", "hello", "{", '{"usage":', '{"usage":{"prompt_tokens":1}', '{"error":', "[1,2]", '"usage"', "null", "42",
    '{"choices":"x"}', '{"choices":[1,null,{"delta":[]},{"delta":{"content":5,"tool_calls":[3,{"function":7}]}}]}',
    '{"choices":[{"delta":{"tool_calls":"x","function_call":{"name":1}}}]}', "[" * 100_000,
])
def test_non_json_or_odd_data_is_forwarded_and_never_raises(data):
    frame = Frame(raw=b"data: " + data.encode() + b"\n\n", data=data)
    for strip_usage in (True, False):
        acc = StreamAccumulator(strip_usage=strip_usage)
        assert acc.process(frame) == frame.raw
        assert acc.output_text() == ""
        assert acc.usage is None and acc.error is None


@pytest.mark.parametrize("cut", [0, 1, 300, 1000, 2000, -200, -16])
def test_a_truncated_stream_is_relayed_whole_and_yields_the_text_seen(cut):
    full = load("chat_include_usage.sse")
    stream = full[:cut]
    out, acc = relay(stream, strip_usage=False, read_size=64)
    assert out == stream
    assert not acc.done
    assert "Hello! How can I assist you today?".startswith(acc.output_text())
    assert acc.usage is None or cut == -16  # -16 keeps the usage chunk, drops only [DONE]


def test_a_truncated_tail_with_a_complete_data_line_is_read():
    stream = load("chat_include_usage.sse")[:-14] + b"data: [DONE]\n"  # [DONE] lacks its blank line
    _, acc = relay(stream, strip_usage=True)
    assert acc.done
    assert counts(acc.usage) == (24, 0, 9, 0)


def test_stripping_a_truncated_tail_keeps_its_unfinished_line():
    raw = b'data: {"choices":[{"index":0}],"usage":{"prompt_tokens":1}}\nda'
    framer = SSEFramer()
    assert framer.feed(raw) == []
    tail = framer.close()
    assert StreamAccumulator(strip_usage=True).process(tail) == b'data: {"choices":[{"index":0}]}\nda'


def test_comment_and_data_less_frames_are_forwarded_and_not_counted():
    acc = StreamAccumulator(strip_usage=True)
    for raw in (b": ping\n\n", b"\n", b"event: ping\n\n", b"id: 3\n\n"):
        assert acc.process(Frame(raw=raw, data=None)) == raw
    assert acc.output_text() == "" and acc.usage is None and not acc.done


# Streams a skim must stop inside of: usage set with odd spacing, a usage of the wrong type, an
# error event, [DONE] before the end, a comment and a multi-line data frame
ODD_CHAT = {
    "spaced usage": b'data: {"choices":[{"delta":{"content":"a"}}],"usage":null}\n\n'
                    b'data: {"choices":[],"usage" : {"prompt_tokens":3,"completion_tokens":1}}\n\ndata: [DONE]\n\n',
    "usage not a dict": b'data: {"choices":[{"delta":{"content":"a"}}]}\n\ndata: {"choices":[],"usage":"x"}\n\n'
                        b'data: {"choices":[{"delta":{"content":"b"}}]}\n\n',
    "error event": b'data: {"choices":[{"delta":{"content":"a"}}]}\n\nevent: error\ndata: overloaded\n\n',
    "done early": b'data: {"choices":[{"delta":{"content":"a"}}]}\n\ndata: [DONE]\n\n'
                  b'data: {"choices":[{"delta":{"content":"late"}}]}\n\n',
    "comment and multi-line": b': ping\n\ndata: {"choices":[{"delta":\ndata: {"content":"a"}}]}\n\n\n'
                              b'data: {"choices":[{"delta":{"content":"b"}}],"usage":{"prompt_tokens":2,"completion_tokens":2}}\n\n',
}


@pytest.mark.parametrize("name", [p.name for p in sorted(STREAMS.glob("chat_*.sse"))] + sorted(ODD_CHAT))
@pytest.mark.parametrize("line_end", [b"\n", b"\r\n"], ids=["lf", "crlf"])
@pytest.mark.parametrize("read_size", [None, 1, 5, 64, 333], ids=["whole", "bytes", "5", "64", "333"])
@pytest.mark.parametrize("strip_usage", [False, True], ids=["kept", "stripped"])
def test_skimming_changes_nothing_the_client_or_the_meter_sees(name, line_end, read_size, strip_usage):
    stream = (ODD_CHAT[name] if name in ODD_CHAT else load(name)).replace(b"\n", line_end)
    skimmed, acc = relay(stream, strip_usage=strip_usage, read_size=read_size)
    framed, reference = relay(stream, strip_usage=strip_usage, read_size=read_size, skim=False)
    assert skimmed == framed
    assert (acc.usage, acc.error, acc.done, acc.terminal) == \
        (reference.usage, reference.error, reference.done, reference.terminal)
    assert acc.output_text() == reference.output_text()


def test_skim_passes_every_whole_frame_before_the_first_it_must_read():
    stream = load("chat_include_usage.sse")
    must_read = min(stream.index(b'"usage":{'), stream.index(b"[DONE]"))
    acc, framer = StreamAccumulator(strip_usage=True), SSEFramer()
    assert acc.skim(b"\xef\xbb\xbf" + stream, framer) == 0  # a BOM starting the stream is framed (taken off)
    assert acc.skim(stream.replace(b"\n", b"\r"), framer) == 0  # CR line ends: framed (they pair across reads)
    crlf = stream.replace(b"\n", b"\r\n")  # CRLF ones are cut as LF ones are
    must_read_crlf = min(crlf.index(b'"usage":{'), crlf.index(b"[DONE]"))
    assert StreamAccumulator(strip_usage=True).skim(crlf, SSEFramer()) == crlf.rindex(b"\r\n\r\n", 0,
                                                                                      must_read_crlf) + 4
    passed = acc.skim(stream, framer)
    assert passed == stream.rindex(b"\n\n", 0, must_read) + 2
    rest = framer.feed(stream[passed:])
    assert [frame.raw for frame in rest] == stream[passed:].replace(b"\n\n", b"\n\n|").split(b"|")[:-1]


@pytest.mark.parametrize("skim", [True, False], ids=["skimmed", "framed"])
def test_text_chunks_are_parsed_only_when_output_text_is_asked(monkeypatch, skim):
    calls = []
    loads = proxy.formats.openai_chat.load_json_or_none

    def counting_loads(text):
        calls.append(text)
        return loads(text)

    monkeypatch.setattr(proxy.formats.openai_chat, "load_json_or_none", counting_loads)
    _, acc = relay(load("chat_include_usage.sse"), strip_usage=True, read_size=200, skim=skim)
    assert len(calls) == 1  # the usage chunk only
    assert acc.output_text() == "Hello! How can I assist you today?"
    parsed = len(calls)
    assert acc.output_text() == "Hello! How can I assist you today?"
    assert len(calls) == parsed  # asking twice parses nothing again


def test_output_text_can_be_asked_mid_stream():
    frames = SSEFramer().feed(load("chat_include_usage.sse"))
    acc = StreamAccumulator(strip_usage=False)
    for frame in frames[:3]:
        acc.process(frame)
    assert acc.output_text() == "Hello!"
    for frame in frames[3:]:
        acc.process(frame)
    assert acc.output_text() == "Hello! How can I assist you today?"


@pytest.mark.parametrize("chunk, text", [
    pytest.param({"choices": [{"delta": {"content": "a", "reasoning_content": "b", "reasoning": "c",
                                         "refusal": "d"}}]},
                 "abcd", id="every delta text field"),
    pytest.param({"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": "{}"}},
                                                         {"index": 1, "function": {"arguments": "[1]"}}]}}]},
                 "f{}[1]", id="parallel tool calls"),
    pytest.param({"choices": [{"delta": {"function_call": {"name": "g", "arguments": "{\"x\""}}}]},
                 "g{\"x\"", id="legacy function call"),
    pytest.param({"choices": [{"index": 0, "text": "x"}, {"index": 1, "text": "y"}]}, "xy", id="completions n=2"),
    pytest.param({"choices": [{"delta": {"content": None, "refusal": None}}]}, "", id="nulls"),
])
def test_output_text_collects_every_generated_text(chunk, text):
    data = json.dumps(chunk)
    acc = StreamAccumulator(strip_usage=False)
    acc.process(Frame(raw=b"data: " + data.encode() + b"\n\n", data=data))
    assert acc.output_text() == text


def test_generated_text_of_a_non_streamed_response_covers_content_tool_calls_and_completions():
    from proxy.formats.openai_chat import generated_text

    chat = {"choices": [{"message": {"role": "assistant", "content": "Hi", "refusal": None,
                                     "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]}}]}
    assert generated_text(chat) == "Hif{}"
    assert generated_text({"choices": [{"text": "done", "index": 0}]}) == "done"
    assert generated_text({"error": "x"}) == "" and generated_text(None) == ""
