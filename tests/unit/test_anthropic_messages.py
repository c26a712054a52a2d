"""Anthropic Messages wire format: usage, text and errors read from recorded and fake streams."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from multidict import CIMultiDict

from config.schema import ModelConfig, ModelPrice, ProviderConfig
from metering.usage.fallback import final_usage, needs_output
from metering.usage.normalized import Usage
from metering.usage.sse import SSEFramer
from metering.usage.tokens import count_text
from proxy.errors import (BodyTooLarge, Forbidden, InvalidApiKey, InvalidRequest, ModelNotFound, RateLimited,
                          ServiceUnavailable, SpendCapReached, UpstreamError, UpstreamTimeout)
from proxy.formats.base import Outgoing
from proxy.formats.anthropic_messages import (IMAGE_TOKENS, MESSAGES, TEXT_MARGIN, TOOLS_SYSTEM_PROMPT,
                                              MessagesWatcher, count_messages_prompt)
from tests.fakes import anthropic_wire as claude

STREAMS = Path(__file__).parent / "streams"


def counts(usage: Usage | None) -> tuple | None:
    """(input, cached, write 5m, write 1h, output, reasoning), as the streams README tabulates them."""
    if usage is None:
        return None
    return (usage.input_tokens, usage.cached_input_tokens, usage.cache_write_tokens - usage.cache_write_1h_tokens,
            usage.cache_write_1h_tokens, usage.output_tokens, usage.reasoning_tokens)


def billed(watcher: MessagesWatcher) -> Usage | None:
    """The usage the relay bills for `watcher`'s stream: a cut stream's output counted from its
    text, as the relay counts it (`Call.record`)."""
    usage = watcher.usage
    if usage is None:
        return None
    output = count_text(watcher.output_text(), "claude") if needs_output(usage) else None
    return final_usage(usage, prompt_tokens=None, output_tokens=output)[0]


def relay(pieces: list[bytes], *, skim: bool = True) -> tuple[bytes, MessagesWatcher]:
    """What the client receives when the proxy reads `pieces` one network read each (whole
    frames the watcher need not read skimmed, as the relay does)."""
    watcher = MESSAGES.watcher(Outgoing("", b""))
    framer = SSEFramer()
    out = []
    for piece in pieces:
        passed = watcher.skim(piece, framer) if skim else 0
        out.append(piece[:passed])
        out.extend(watcher.process(frame) for frame in framer.feed(piece[passed:]))
    tail = framer.close()
    if tail is not None:
        out.append(watcher.process(tail))
    return b"".join(out), watcher


def in_reads(data: bytes, size: int | None) -> list[bytes]:
    size = size or len(data)
    return [data[i:i + size] for i in range(0, len(data), size)]


# --- recorded streams -------------------------------------------------------------------------

THINKING = "The user asks what 27 * 453 is. 27 * 453 = 9060 + 3171 = 12231."
RECORDED = [
    pytest.param("anthropic_text.sse", (16, 0, 0, 0, 38, 0), "provider",
                 'Olá! That is the usual way to say "hi" in Portuguese; between friends, "Oi!" is more casual.',
                 True, id="text"),
    pytest.param("anthropic_cache.sse", (93004, 90000, 2000, 1000, 27, 0), "provider",
                 "Hey Jai! How's it going? What can I help you with today?", True, id="cache reads and writes"),
    pytest.param("anthropic_thinking.sse", (423, 0, 0, 0, 130, 98), "provider",
                 THINKING + "27 × 453 = 12,231.", True, id="thinking"),
    # no message_delta: message_start's output_tokens (1) is not a total; the text is estimated
    pytest.param("anthropic_error_midstream.sse", (25, 0, 0, 0, count_text("Once upon a time", "claude"), 0),
                 "estimated", "Once upon a time", False, id="error mid-stream"),
]


@pytest.mark.parametrize("name, usage, source, text, done", RECORDED)
@pytest.mark.parametrize("line_end", [b"\n", b"\r\n", b"\r"], ids=["lf", "crlf", "cr"])
@pytest.mark.parametrize("read_size", [None, 1, 7, 100], ids=["whole", "bytes", "7", "100"])
def test_recorded_streams_give_the_provider_usage_text_and_end(name, usage, source, text, done, line_end,
                                                               read_size):
    stream = (STREAMS / name).read_bytes().replace(b"\n", line_end)
    received, watcher = relay(in_reads(stream, read_size))
    assert received == stream  # byte for byte: nothing to strip on this wire
    assert counts(billed(watcher)) == usage and billed(watcher).source == source
    assert watcher.output_text() == text
    assert watcher.done is done and watcher.terminal is done
    assert (watcher.error is not None) is (not done)


# Streams a skim must stop inside of, or must not skim at all
ODD = {
    "unnamed": lambda data: data.replace(b"event: content_block_delta\n", b"", 2),
    "error event": lambda data: data.replace(b"event: content_block_stop", b'event: error\ndata: {"type":"error",'
                                             b'"error":{"type":"overloaded_error","message":"Overloaded"}}\n\n'
                                             b"event: content_block_stop", 1),
    "pings": lambda data: data.replace(b"event: content_block_delta", b": ping\n\nevent: content_block_delta"),
    "no start": lambda data: data[data.index(b"\n\n") + 2:],
}


@pytest.mark.parametrize("name", [param.values[0] for param in RECORDED])
@pytest.mark.parametrize("odd", [None, *ODD])
@pytest.mark.parametrize("read_size", [None, 1, 9, 100, 1000], ids=["whole", "bytes", "9", "100", "1000"])
def test_skimming_changes_nothing_the_client_or_the_meter_sees(name, odd, read_size):
    stream = (STREAMS / name).read_bytes()
    if odd is not None:
        stream = ODD[odd](stream)
    received, watcher = relay(in_reads(stream, read_size))
    framed, reference = relay(in_reads(stream, read_size), skim=False)
    assert received == framed == stream
    assert (watcher.usage, watcher.error, watcher.done, watcher.terminal, watcher.answer_id, watcher.output_text()) == \
        (reference.usage, reference.error, reference.done, reference.terminal, reference.answer_id,
         reference.output_text())


def test_skim_reads_message_start_and_passes_content_up_to_message_delta():
    stream = (STREAMS / "anthropic_text.sse").read_bytes()
    watcher = MESSAGES.watcher(Outgoing("", b""))
    assert watcher.skim(stream.replace(b"\n", b"\r\n"), SSEFramer()) == 0  # CR line ends: framed
    assert watcher.skim(stream, SSEFramer()) == stream.index(b"event: message_delta")
    assert watcher.answer_id is not None and watcher.usage is not None  # message_start was read


def test_a_recorded_error_mid_stream_keeps_the_provider_error_object():
    _, watcher = relay([(STREAMS / "anthropic_error_midstream.sse").read_bytes()])
    assert watcher.error == {"details": None, "type": "overloaded_error", "message": "Overloaded"}


def test_the_cache_stream_keeps_the_merged_raw_usage_as_evidence():
    _, watcher = relay([(STREAMS / "anthropic_cache.sse").read_bytes()])
    split = {"ephemeral_5m_input_tokens": 2000, "ephemeral_1h_input_tokens": 1000}
    assert watcher.usage.raw == {"input_tokens": 4, "cache_creation_input_tokens": 3000,
                                 "cache_read_input_tokens": 90000, "cache_creation": split,
                                 "output_tokens": 27, "service_tier": "standard"}
    assert watcher.answer_id == "msg_01Syufym9DZKGgeEtT3BDEAF"


# --- the fake provider's streams --------------------------------------------------------------

def fake_usage(scenario: str) -> tuple:
    """The counts the fake reports for `scenario` (its constants), in Payware's classes."""
    if scenario == "claude-fake-cache":
        written = claude.CACHE_WRITE_5M_TOKENS + claude.CACHE_WRITE_1H_TOKENS
        return (claude.CACHE_INPUT_TOKENS + claude.CACHE_READ_TOKENS + written, claude.CACHE_READ_TOKENS,
                claude.CACHE_WRITE_5M_TOKENS, claude.CACHE_WRITE_1H_TOKENS, claude.OUTPUT_TOKENS, 0)
    if scenario == "claude-fake-thinking":
        return (claude.THINKING_INPUT_TOKENS, 0, 0, 0, claude.THINKING_OUTPUT_TOKENS, claude.THINKING_TOKENS)
    if scenario == "claude-fake-slow":
        return (claude.INPUT_TOKENS, 0, 0, 0, claude.SLOW_OUTPUT_TOKENS, 0)
    if scenario in ("claude-fake-cut", "claude-fake-error-midstream"):  # estimated: the two deltas seen
        return (claude.INPUT_TOKENS, 0, 0, 0, count_text("".join(claude.WORDS[:2]), "claude"), 0)
    return (claude.INPUT_TOKENS, 0, 0, 0, claude.OUTPUT_TOKENS, 0)


def fake_text(scenario: str) -> str:
    if scenario == "claude-fake-thinking":
        return "".join(claude.THINKING) + claude.REPLY
    if scenario == "claude-fake-slow":
        return "".join(claude.SLOW_WORDS)
    if scenario in ("claude-fake-cut", "claude-fake-error-midstream"):
        return "".join(claude.WORDS[:2])
    return claude.REPLY


STREAMED = [s for s in claude.SCENARIOS if s not in ("claude-fake-overloaded", "claude-fake-error-400")]
COMPLETE = ("claude-fake-ok", "claude-fake-cache", "claude-fake-thinking", "claude-fake-slow", "claude-fake-packed")


def check_fake(scenario: str, received: bytes, watcher: MessagesWatcher) -> None:
    assert received == b"".join(claude.stream_bytes(scenario, scenario))
    assert counts(billed(watcher)) == fake_usage(scenario)
    assert billed(watcher).source == ("provider" if scenario in COMPLETE else "estimated")
    assert watcher.output_text() == fake_text(scenario)
    assert watcher.done is watcher.terminal is (scenario in COMPLETE)
    assert (watcher.error is not None) is (scenario == "claude-fake-error-midstream")
    assert watcher.answer_id == claude.MESSAGE_ID


@pytest.mark.parametrize("scenario", STREAMED)
def test_the_fake_streams_as_sent_give_the_fake_constants(scenario):
    check_fake(scenario, *relay(claude.stream_bytes(scenario, scenario)))


@pytest.mark.parametrize("scenario", [s for s in STREAMED if s != "claude-fake-slow"])
def test_the_fake_streams_split_at_every_byte_give_the_same(scenario):
    data = b"".join(claude.stream_bytes(scenario, scenario))
    for at in range(len(data) + 1):
        check_fake(scenario, *relay([data[:at], data[at:]]))


def test_the_slow_stream_read_a_byte_at_a_time_gives_the_same():
    data = b"".join(claude.stream_bytes("claude-fake-slow", "claude-fake-slow"))
    check_fake("claude-fake-slow", *relay(in_reads(data, 1)))


def test_packed_events_in_one_read_each_are_all_seen():
    writes = claude.stream_bytes("claude-fake-packed", "claude-fake-packed")
    assert all(w.count(b"event: ") == claude.PACKED_EVENTS_PER_WRITE for w in writes[:-1])
    check_fake("claude-fake-packed", *relay(writes))


# --- cumulative usage, terminal frame ---------------------------------------------------------

def event(name: str, data: dict) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + json.dumps(data).encode() + b"\n\n"


def start(usage: dict) -> bytes:
    return event("message_start", {"type": "message_start", "message": {"id": "msg_1", "usage": usage}})


def delta(usage: dict) -> bytes:
    return event("message_delta", {"type": "message_delta", "delta": {"stop_reason": None}, "usage": usage})


def text(piece: str) -> bytes:
    return event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                         "delta": {"type": "text_delta", "text": piece}})


STOP = event("message_stop", {"type": "message_stop"})


def test_message_delta_usage_is_cumulative_the_last_value_of_each_field_wins():
    _, watcher = relay([start({"input_tokens": 10, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 50,
                               "cache_creation": {"ephemeral_5m_input_tokens": 20, "ephemeral_1h_input_tokens": 30},
                               "output_tokens": 1}),
                        text("a"), delta({"input_tokens": 10, "output_tokens": 5}),
                        text("b"), delta({"output_tokens": 12, "cache_read_input_tokens": 100}), STOP])
    # never summed: input 10 + reads 100 + writes 50, output 12 (not 1 + 5 + 12)
    assert counts(watcher.usage) == (160, 100, 20, 30, 12, 0)
    assert watcher.usage.source == "provider"


def test_null_fields_in_message_delta_do_not_erase_message_start_values():
    _, watcher = relay([start({"input_tokens": 7, "cache_read_input_tokens": 3, "output_tokens": 1}),
                        delta({"input_tokens": None, "cache_read_input_tokens": None, "output_tokens": 9}), STOP])
    assert counts(watcher.usage) == (10, 3, 0, 0, 9, 0)


def test_nested_usage_objects_merge_field_by_field():
    _, watcher = relay([start({"input_tokens": 1, "cache_creation_input_tokens": 40, "output_tokens": 1,
                               "cache_creation": {"ephemeral_5m_input_tokens": 10, "ephemeral_1h_input_tokens": 30}}),
                        delta({"output_tokens": 4, "cache_creation": {"ephemeral_5m_input_tokens": 10}}), STOP])
    assert counts(watcher.usage) == (41, 0, 10, 30, 4, 0)


def test_the_watcher_is_terminal_on_message_stop_only():
    watcher = MessagesWatcher()
    framer = SSEFramer()
    seen = []
    stream = [start({"input_tokens": 3, "output_tokens": 1}), text("hi"), delta({"output_tokens": 2}), STOP]
    for piece in stream:
        for frame in framer.feed(piece):
            watcher.process(frame)
            seen.append(watcher.terminal)
    assert seen == [False, False, False, True]
    assert counts(watcher.usage) == (3, 0, 0, 0, 2, 0)  # known before the terminal frame is forwarded


def test_a_stream_without_event_lines_is_read_from_the_data_types():
    stream = b"".join(b"data: " + piece.split(b"data: ", 1)[1]
                      for piece in [start({"input_tokens": 3, "output_tokens": 1}), delta({"output_tokens": 2}), STOP])
    _, watcher = relay([stream])
    assert counts(watcher.usage) == (3, 0, 0, 0, 2, 0) and watcher.done


def test_a_stream_cut_before_any_usage_has_none_and_the_relay_estimates():
    _, watcher = relay([b"event: ping\ndata: {\"type\": \"ping\"}\n\n"])
    assert watcher.usage is None and watcher.output_text() == "" and not watcher.done


def test_an_error_before_any_text_leaves_nothing_to_bill_but_a_client_leaving_is_billed():
    failed = event("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    _, watcher = relay([start({"input_tokens": 25, "output_tokens": 1}), failed])
    assert watcher.error["type"] == "overloaded_error" and watcher.usage is None
    _, watcher = relay([start({"input_tokens": 25, "output_tokens": 1})])  # abandoned: the prompt was read
    assert counts(watcher.usage) == (25, 0, 0, 0, 1, 0) and watcher.usage.source == "estimated"


def test_output_text_reads_tool_input_json_and_tool_names():
    stream = [start({"input_tokens": 3, "output_tokens": 1}),
              event("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {
                  "type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}}),
              event("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {
                  "type": "input_json_delta", "partial_json": "{\"city\": "}}),
              event("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {
                  "type": "input_json_delta", "partial_json": "\"Paris\"}"}})]
    _, watcher = relay(stream)
    assert watcher.output_text() == 'get_weather{}{"city": "Paris"}'


def test_an_estimated_stream_usage_is_marked_as_such_in_the_event_sources():
    _, watcher = relay([start({"input_tokens": 25, "output_tokens": 1}), text("Once upon a time")])
    assert watcher.usage.unread == ("output",) and watcher.usage.output_tokens == 1  # message_start's: a floor
    usage, source = final_usage(watcher.usage, prompt_tokens=999,
                                output_tokens=count_text("Once upon a time", "claude"))
    assert (usage.input_tokens, usage.output_tokens) == (25, 4) and usage.source == "estimated"
    assert source == {"input": "provider", "output": "tiktoken"}


# --- whole messages ---------------------------------------------------------------------------

@pytest.mark.parametrize("scenario", ["claude-fake-ok", "claude-fake-cache", "claude-fake-thinking"])
def test_a_whole_message_gives_its_usage_and_text(scenario):
    message = json.loads(json.dumps(claude.message(scenario, scenario)))
    assert counts(MESSAGES.usage(message)) == fake_usage(scenario)
    assert MESSAGES.text(message) == fake_text(scenario)
    assert MESSAGES.answer_id(message) == claude.MESSAGE_ID


@pytest.mark.parametrize("parsed", [None, [], "x", {}, {"usage": None}, {"usage": [1]}])
def test_a_message_without_a_usage_object_has_no_usage(parsed):
    assert MESSAGES.usage(parsed) is None
    assert MESSAGES.text(parsed) == ""


# --- requests ---------------------------------------------------------------------------------

REQUEST = SimpleNamespace(headers=CIMultiDict())
BODY = {"model": "claude", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize("body, param", [
    ({"model": "m", "messages": []}, "max_tokens"),
    ({"model": "m", "messages": [], "max_tokens": None}, "max_tokens"),
    ({"model": "m", "messages": [], "max_tokens": "100"}, "max_tokens"),
    ({"model": "m", "messages": [], "max_tokens": 1.5}, "max_tokens"),
    ({"model": "m", "messages": [], "max_tokens": True}, "max_tokens"),
    ({"model": "m", "messages": [], "max_tokens": 0}, "max_tokens"),
    ({"model": "m", "messages": [], "max_tokens": 10**12}, "max_tokens"),
    ({"model": "m", "max_tokens": 10}, "messages"),
    ({"model": "m", "max_tokens": 10, "messages": "hi"}, "messages"),
], ids=["missing", "null", "string", "float", "bool", "zero", "too large", "no messages", "messages not a list"])
def test_a_request_without_a_valid_max_tokens_is_refused_in_anthropic_s_shape(body, param):
    with pytest.raises(InvalidRequest) as refused:
        MESSAGES.validate(body)
    assert refused.value.param == param
    envelope = MESSAGES.error_body(refused.value)
    assert envelope["type"] == "error" and envelope["error"]["type"] == "invalid_request_error"
    assert envelope["error"]["message"].startswith(param)


def test_model_and_stream_come_from_the_body():
    assert MESSAGES.model_name(BODY, REQUEST) == "claude"
    assert MESSAGES.stream({**BODY, "stream": True}, REQUEST) is True
    assert MESSAGES.stream(BODY, REQUEST) is False and MESSAGES.stream({"stream": None}, REQUEST) is False
    with pytest.raises(InvalidRequest):
        MESSAGES.stream({"stream": "yes"}, REQUEST)
    with pytest.raises(InvalidRequest):
        MESSAGES.model_name({"model": 3}, REQUEST)
    assert MESSAGES.max_output(BODY) == 100 and MESSAGES.max_output_field(BODY) == "max_tokens"


def test_a_clamped_call_lowers_max_tokens_and_a_thinking_budget_above_it():
    body = {**BODY, "max_tokens": 8000, "thinking": {"type": "enabled", "budget_tokens": 4000}}
    assert MESSAGES.with_max_output(body, 2000)["thinking"]["budget_tokens"] == 1999
    assert MESSAGES.with_max_output(body, 6000) == {**body, "max_tokens": 6000}
    assert body["max_tokens"] == 8000  # the client's body is not changed in place


def model_config(upstream: str = "claude") -> ModelConfig:
    price = ModelPrice(input=1, cached_input=1, output=1)
    return ModelConfig(name="claude", provider="p", upstream=upstream, mode="chat", prices=(price,))


@pytest.mark.parametrize("base_url, path", [("https://api.anthropic.com", "/v1/messages"),
                                            ("https://gateway.example/anthropic/v1", "/messages")])
def test_the_client_bytes_go_upstream_with_its_version_and_beta_headers(base_url, path):
    raw = b'{"model":"claude",  "max_tokens":100,"messages":[]}'
    request = SimpleNamespace(headers=CIMultiDict({"anthropic-version": "2024-01-01",
                                                   "anthropic-beta": "context-1m-2025-08-07",
                                                   "x-api-key": "pw-customer-key", "other": "x"}))
    outgoing = MESSAGES.outgoing(raw, json.loads(raw), model_config(), ProviderConfig("p", "anthropic", base_url, None),
                                 False, request)
    assert (outgoing.path, outgoing.body, outgoing.strip_usage) == (path, raw, False)
    assert outgoing.headers == {"anthropic-version": "2024-01-01", "anthropic-beta": "context-1m-2025-08-07"}


def test_a_renamed_model_is_sent_under_its_upstream_name_with_the_default_version():
    body = {"model": "claude", "max_tokens": 100, "messages": []}
    outgoing = MESSAGES.outgoing(json.dumps(body).encode(), body, model_config("claude-sonnet-4-5"),
                                 ProviderConfig("p", "anthropic", "https://api.anthropic.com", None), True, REQUEST)
    assert json.loads(outgoing.body) == {**body, "model": "claude-sonnet-4-5"}
    assert outgoing.headers == {"anthropic-version": "2023-06-01"}


# --- the prompt estimate ----------------------------------------------------------------------

def test_the_prompt_estimate_leans_above_tiktoken():
    text = "The quick brown fox jumps over the lazy dog. " * 20
    plain = count_text(text, "claude")
    estimate = count_messages_prompt({"messages": [{"role": "user", "content": text}]}, "claude")
    assert estimate >= plain * TEXT_MARGIN[0] / TEXT_MARGIN[1] > plain


def test_the_system_prompt_counts_as_a_string_or_as_blocks():
    as_string = count_messages_prompt({"system": "Be brief. " * 50, "messages": []}, "claude")
    as_blocks = count_messages_prompt({"system": [{"type": "text", "text": "Be brief. " * 50,
                                                   "cache_control": {"type": "ephemeral"}}], "messages": []}, "claude")
    assert as_string > 50 and as_blocks >= as_string


def test_images_tools_and_tool_results_are_counted():
    user = {"role": "user", "content": "hi"}
    base = count_messages_prompt({"messages": [user]}, "claude")
    image = {"role": "user", "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                                      "data": "A" * 100}}]}
    assert count_messages_prompt({"messages": [user, image]}, "claude") >= base + IMAGE_TOKENS
    tool = {"name": "get_weather", "description": "Weather of a city " * 10,
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}
    with_tools = count_messages_prompt({"messages": [user], "tools": [tool]}, "claude")
    assert with_tools > base + TOOLS_SYSTEM_PROMPT + 30
    use = {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "get_weather",
                                              "input": {"city": "Paris " * 40}}]}
    result = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t",
                                           "content": [{"type": "text", "text": "Sunny " * 40}]}]}
    assert count_messages_prompt({"messages": [user, use, result]}, "claude") > base + 80


@pytest.mark.parametrize("body", [{}, {"messages": None}, {"messages": [None, 3, {"content": 5}]},
                                  {"system": 4, "messages": [{"content": [None, 1, {"type": 5}]}]},
                                  {"tools": "x", "messages": []}, "not a dict"])
def test_the_prompt_estimate_never_raises(body):
    assert count_messages_prompt(body, "claude") >= 0


# --- errors -----------------------------------------------------------------------------------

@pytest.mark.parametrize("error, status, kind", [
    (InvalidRequest("bad"), 400, "invalid_request_error"),
    (InvalidApiKey("who"), 401, "authentication_error"),
    (Forbidden("no"), 403, "permission_error"),
    (ModelNotFound("none"), 404, "not_found_error"),
    (BodyTooLarge("big"), 413, "request_too_large"),
    (RateLimited("slow down"), 429, "rate_limit_error"),
    (UpstreamError("down"), 502, "api_error"),
    (ServiceUnavailable("later"), 503, "overloaded_error"),
    (UpstreamTimeout("late"), 504, "timeout_error"),
])
def test_errors_are_in_anthropic_s_envelope_with_its_type_for_the_status(error, status, kind):
    assert error.status == status
    envelope = MESSAGES.error_body(error)
    assert envelope["type"] == "error"
    assert envelope["error"]["type"] == kind and envelope["error"]["message"] == error.message


def test_a_spend_cap_refusal_is_a_rate_limit_error_that_keeps_payware_s_code():
    envelope = MESSAGES.error_body(SpendCapReached("You have reached your spend cap of $1."))
    assert envelope == {"type": "error", "error": {"type": "rate_limit_error", "code": "spend_cap_reached",
                                                   "message": "You have reached your spend cap of $1."}}


@pytest.mark.parametrize("status, kind", [(500, "api_error"), (502, "api_error"), (529, "overloaded_error"),
                                          (404, "not_found_error"), (418, "invalid_request_error")])
def test_a_provider_error_that_is_not_json_is_wrapped_in_the_envelope(status, kind):
    envelope = MESSAGES.upstream_error(status, "<html>bad gateway</html>", "fake-anthropic")
    assert envelope["type"] == "error" and envelope["error"]["type"] == kind
    assert "<html>bad gateway</html>" in envelope["error"]["message"]
