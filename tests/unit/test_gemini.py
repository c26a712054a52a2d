"""Gemini's wire format: usage from recorded streams and the fake's exact bytes, the end of an
answer, the worst case of a request, the outgoing path, and errors in Google's envelope."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
from aiohttp.test_utils import make_mocked_request

from config.schema import ModelConfig, ModelPrice, ProviderConfig
from metering.usage.sse import SSEFramer
from metering.usage.tokens import count_text
from proxy import errors
from proxy.formats.base import Outgoing
from proxy.formats.gemini import GENERATE, INLINE_PART, GeminiStream, count_prompt, split_target
from tests.fakes import gemini_wire as fake

STREAMS = Path(__file__).parent / "streams"
MODEL = "gemini-2.5-pro"

# file -> (input, cached, output, reasoning), the answer text, whether the answer ended
# (from tests/unit/streams/README.md: input = prompt + tool-use prompt, output = candidates + thoughts)
RECORDED = {
    "gemini_text.sse": ((12, 0, 18, 0), "The sum of 2 and 3 is 5 and the product is 6.\n", True),
    "gemini_thinking.sse": ((5, 0, 230, 186), "Here you go!\n\n1.  **English:** Hi\n2.  **Spanish:** Hola\n"
                            "3.  **French:** Bonjour\n4.  **German:** Hallo\n5.  **Italian:** Ciao", True),
    "gemini_cached_tool_use.sse": ((37944, 34745, 426, 310), "The report's totals match the search results.", True),
    "gemini_blocked.sse": ((8, 0, 0, 0), "", True),
    "gemini_truncated.sse": ((7, 0, 19, 0),
                             "Once upon a time, a kitten named Clemmy found a very large, very red apple", False),
}

# each fake scenario's stream -> the usage it must bill, from the fake's constants
FAKE = {
    "gemini-fake-ok": (fake.PROMPT_TOKENS, 0, fake.CANDIDATES_TOKENS, 0),
    "gemini-fake-cached-thoughts": (fake.CACHED_PROMPT_TOKENS + fake.TOOL_USE_PROMPT_TOKENS, fake.CACHED_TOKENS,
                                    fake.CACHED_CANDIDATES_TOKENS + fake.THOUGHTS_TOKENS, fake.THOUGHTS_TOKENS),
    "gemini-fake-blocked": (fake.BLOCKED_PROMPT_TOKENS, 0, 0, 0),
    "gemini-fake-cut": (fake.PROMPT_TOKENS, 0, sum(fake.CHUNK_TOKENS[:2]), 0),
    "gemini-fake-slow": (fake.PROMPT_TOKENS, 0, fake.SLOW_CANDIDATES_TOKENS, 0),
}


def counts(usage) -> tuple[int, int, int, int] | None:
    if usage is None:
        return None
    return usage.input_tokens, usage.cached_input_tokens, usage.output_tokens, usage.reasoning_tokens


def watch(reads: list[bytes]) -> tuple[GeminiStream, bytes, list[int]]:
    """Relay `reads` as the proxy does: the watcher, the bytes forwarded, the frames that were terminal."""
    framer, watcher = SSEFramer(), GENERATE.watcher(Outgoing("", b""))
    out, terminal, n = b"", [], 0
    for read in reads:
        for frame in framer.feed(read):
            out += watcher.process(frame)
            if watcher.terminal:
                terminal.append(n)
            n += 1
    tail = framer.close()  # a stream whose last byte is a CR: its last frame comes out here
    if tail is not None:
        out += watcher.process(tail)
        if watcher.terminal:
            terminal.append(n)
    return watcher, out, terminal


def request(path: str):
    target = path.split("?")[0].rsplit("/models/", 1)[1]
    return make_mocked_request("POST", path, match_info={"target": target})


def model(upstream: str = "gemini-2.5-pro") -> ModelConfig:
    price = ModelPrice(input=Decimal("1.25"), cached_input=Decimal("0.31"), output=Decimal("10"))
    return ModelConfig(name="mine", provider="google", upstream=upstream, mode="chat", prices=(price,))


def provider(kind: str = "gemini", base_url: str | None = "https://generativelanguage.googleapis.com"):
    return ProviderConfig(name="google", kind=kind, base_url=base_url, api_key=None)


# --- streams ------------------------------------------------------------------------------------

@pytest.mark.parametrize("end", [b"\r\n", b"\n", b"\r"], ids=["crlf (gemini's wire)", "lf", "cr"])
@pytest.mark.parametrize("name", sorted(RECORDED))
def test_a_recorded_stream_bills_its_last_usage_and_is_relayed_unchanged(name, end):
    expected, text, ended = RECORDED[name]
    body = (STREAMS / name).read_bytes().replace(b"\n", end)
    watcher, out, terminal = watch([body])
    assert counts(watcher.usage) == expected
    assert watcher.output_text() == text
    assert watcher.done is ended and watcher.error is None
    frames = body.count(end * 2) if end != b"\r" else body.count(b"\r\r")
    assert terminal == ([frames - 1] if ended else [])  # the last frame, and only it, ends the answer
    assert out == body


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_a_recorded_stream_keeps_the_provider_raw_usage_as_evidence(name):
    body = (STREAMS / name).read_bytes().replace(b"\n", b"\r\n")
    watcher, _, _ = watch([body])
    last = json.loads(body.rstrip().rsplit(b"\r\n\r\n", 1)[-1][6:])
    assert watcher.usage.raw == last["usageMetadata"]


def split_points(scenario: str) -> range | list[int]:
    """Every byte boundary; for the 200-chunk slow stream (65 KB), every one of its last two
    events (where the answer ends) and every 401st before them, which keeps the test quick."""
    data = b"".join(fake.stream_bytes(scenario, scenario))
    if scenario != "gemini-fake-slow":
        return range(len(data) + 1)
    tail = len(b"".join(fake.stream_events(scenario, scenario)[-2:]))
    return list(range(0, len(data) - tail, 401)) + list(range(len(data) - tail, len(data) + 1))


@pytest.mark.parametrize("scenario", sorted(FAKE))
def test_the_fake_stream_split_at_every_byte_bills_exactly_its_constants(scenario):
    data = b"".join(fake.stream_bytes(scenario, scenario))
    ends = scenario != "gemini-fake-cut"
    frames = len(fake.stream_events(scenario, scenario))
    for at in split_points(scenario):
        watcher, out, terminal = watch([data[:at], data[at:]])
        assert counts(watcher.usage) == FAKE[scenario], at
        assert out == data and watcher.done is ends
        assert terminal == ([frames - 1] if ends else [])


def test_the_fake_stream_in_its_network_writes_and_byte_by_byte_is_the_same():
    pieces = fake.stream_bytes("gemini-fake-cached-thoughts", "m")
    data = b"".join(pieces)
    by_write, by_byte = watch(pieces)[0], watch([data[i:i + 1] for i in range(len(data))])[0]
    assert counts(by_write.usage) == counts(by_byte.usage) == FAKE["gemini-fake-cached-thoughts"]
    assert by_write.output_text() == by_byte.output_text() == "Hello from fake Gemini, cached."


def test_the_last_usage_wins_never_a_sum():
    body = (STREAMS / "gemini_text.sse").read_bytes().replace(b"\n", b"\r\n")
    framer, watcher = SSEFramer(), GENERATE.watcher(Outgoing("", b""))
    seen = []
    for frame in framer.feed(body):
        watcher.process(frame)
        seen.append(watcher.usage.output_tokens)
    assert seen == [1, 18, 18]  # cumulative counts: 18 twice, never 37


def test_a_later_smaller_usage_still_wins():
    """Whatever the provider says last is its word (the running counts only grow in practice)."""
    chunks = [{"usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": 5}},
              {"candidates": [{"content": {"parts": [{"text": "x"}]}, "finishReason": "STOP"}],
               "usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": 3}}]
    watcher, _, terminal = watch([b"".join(b"data: " + json.dumps(c).encode() + b"\r\n\r\n" for c in chunks)])
    assert counts(watcher.usage) == (9, 0, 3, 0) and terminal == [1]


def test_a_blocked_prompt_ends_the_answer_and_bills_the_prompt_alone():
    body = (STREAMS / "gemini_blocked.sse").read_bytes().replace(b"\n", b"\r\n")
    watcher, _, terminal = watch([body])
    assert terminal == [0] and watcher.done and watcher.output_text() == ""
    assert counts(watcher.usage) == (8, 0, 0, 0)
    assert GENERATE.usage(fake.response_body("gemini-fake-blocked", "m")).input_tokens == fake.BLOCKED_PROMPT_TOKENS


def sse(*chunks: dict) -> list[bytes]:
    return [b"data: " + json.dumps(c).encode() + b"\r\n\r\n" for c in chunks]


def candidate(index: int, text: str, finish: str | None = None) -> dict:
    out = {"content": {"parts": [{"text": text}], "role": "model"}, "index": index}
    if finish:
        out["finishReason"] = finish
    return out


def test_with_several_candidates_the_answer_ends_when_every_one_has_finished():
    watcher, _, terminal = watch(sse(
        {"candidates": [candidate(0, "a"), candidate(1, "b")]},
        {"candidates": [candidate(0, "c", "STOP")]},
        {"candidates": [candidate(1, "d", "MAX_TOKENS")], "usageMetadata": {"promptTokenCount": 3,
                                                                          "candidatesTokenCount": 4}}))
    assert terminal == [2] and watcher.done and watcher.output_text() == "abcd"


def test_output_text_leaves_out_thought_summaries_and_counts_function_calls():
    call = {"name": "get_weather", "args": {"city": "Paris"}}
    watcher, _, _ = watch(sse({"candidates": [{"content": {"parts": [
        {"text": "thinking about it", "thought": True}, {"text": "Calling. "}, {"functionCall": call}]},
        "finishReason": "STOP"}]}))
    assert watcher.output_text() == 'Calling. {"name":"get_weather","args":{"city":"Paris"}}'


def test_a_mid_stream_error_is_kept_and_does_not_end_the_answer():
    error = {"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}}
    watcher, _, terminal = watch(sse({"candidates": [candidate(0, "Once")],
                                      "usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 1}}, error))
    assert watcher.error == error["error"] and not watcher.done and terminal == []
    assert counts(watcher.usage) == (4, 0, 1, 0) and watcher.output_text() == "Once"


@pytest.mark.parametrize("chunk", [
    b"data: [1, 2]\r\n\r\n", b"data: not json\r\n\r\n", b": keep-alive\r\n\r\n",
    b'data: {"candidates": "x", "usageMetadata": [1]}\r\n\r\n',
    b'data: {"candidates": [{"index": [0], "finishReason": "STOP", "content": {"parts": "x"}}]}\r\n\r\n',
    b'data: {"usageMetadata": {"promptTokenCount": -4, "candidatesTokenCount": "9", "thoughtsTokenCount": 2.5}}'
    b"\r\n\r\n",
], ids=["array", "not json", "comment", "wrong types", "hostile candidate", "bad counts"])
def test_hostile_chunks_never_raise_and_are_forwarded_as_they_came(chunk):
    watcher, out, _ = watch([chunk])
    assert out == chunk
    assert watcher.usage is None or counts(watcher.usage) == (0, 0, 0, 0)


def relay(pieces: list[bytes], *, skim: bool = True, answers: int = 1):
    """What the client receives when the proxy reads `pieces` one network read each, frames the
    watcher need not read skimmed (as the relay does): the bytes, the watcher, and where the
    answer ended with the usage billed there (the relay records at that frame)."""
    framer, watcher = SSEFramer(), GENERATE.watcher(Outgoing("", b"", answers=answers))
    out, ends = b"", []
    for piece in pieces:
        passed = watcher.skim(piece, framer) if skim and framer.between_frames else 0
        out += piece[:passed]
        for frame in framer.feed(piece[passed:]):
            out += watcher.process(frame)
            if watcher.terminal:
                ends.append((len(out), counts(watcher.usage)))
    tail = framer.close()
    if tail is not None:
        out += watcher.process(tail)
        if watcher.terminal:
            ends.append((len(out), counts(watcher.usage)))
    return out, watcher, ends


def in_reads(data: bytes, size: int | None) -> list[bytes]:
    size = size or len(data)
    return [data[i:i + size] for i in range(0, len(data), size)]


def several(*, finish_second: bool = True) -> bytes:
    """Two candidates side by side, the second one still going after the first has finished."""
    usage = {"promptTokenCount": 3, "candidatesTokenCount": 4}
    return b"".join(sse({"candidates": [candidate(0, "a"), candidate(1, "b")], "usageMetadata": usage},
                        {"candidates": [candidate(0, "c", "STOP")], "usageMetadata": usage},
                        {"candidates": [candidate(1, "d")], "usageMetadata": {**usage, "candidatesTokenCount": 6}},
                        {"candidates": [candidate(1, "e", "STOP" if finish_second else None)],
                         "usageMetadata": {**usage, "candidatesTokenCount": 7}})).replace(b"\r\n", b"\n")


# Streams (LF-ended here) a skim must stop inside of, or must not skim at all
ODD = {
    "pings": lambda data: data.replace(b"\n\ndata:", b"\n\n: keep-alive\n\ndata:"),
    "no usage at the end": lambda data: data.replace(b'"usageMetadata"', b'"usageMetadatum"', 1)
    if data.count(b'"usageMetadata"') == 1 else data.rsplit(b'"usageMetadata"', 1)[0] + b'"x"' +
    data.rsplit(b'"usageMetadata"', 1)[1],
    "error mid-stream": lambda data: data.replace(
        b"\n\ndata:", b'\n\ndata: {"error": {"code": 503, "message": "overloaded"}}\n\ndata:', 1),
    "a text that names the keys": lambda data: data.replace(
        b'"text": "', b'"text": "\\"finishReason\\": \\"STOP\\", \\"index\\": 1, ', 1),
}


def first_alone() -> bytes:
    """The first candidate alone for a while, then a second that finishes while the first never does."""
    return b"".join(sse({"candidates": [candidate(0, "a")]}, {"candidates": [candidate(0, "b")]},
                        {"candidates": [candidate(1, "x", "STOP")],
                         "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 3}})).replace(b"\r\n", b"\n")


@pytest.mark.parametrize("name", [*sorted(RECORDED), "several", "several unfinished", "first alone"])
@pytest.mark.parametrize("odd", [None, *ODD])
@pytest.mark.parametrize("end", [b"\r\n", b"\n", b"\r"], ids=["crlf", "lf", "cr"])
@pytest.mark.parametrize("read_size", [None, 1, 9, 100, 1000], ids=["whole", "bytes", "9", "100", "1000"])
def test_skimming_changes_nothing_the_client_or_the_meter_sees(name, odd, end, read_size):
    if name.startswith("several"):
        stream = several(finish_second=name == "several")
    elif name == "first alone":
        stream = first_alone()
    else:
        stream = (STREAMS / name).read_bytes()
    if odd is not None:
        stream = ODD[odd](stream)
    stream = stream.replace(b"\n", end)
    for answers in (1, 2):
        received, watcher, ends = relay(in_reads(stream, read_size), answers=answers)
        framed, reference, reference_ends = relay(in_reads(stream, read_size), skim=False)
        assert received == framed == stream
        assert ends == reference_ends
        assert (counts(watcher.usage), watcher.usage and watcher.usage.raw, watcher.error, watcher.done,
                watcher.terminal, watcher.answer_id, watcher.output_text()) == \
            (counts(reference.usage), reference.usage and reference.usage.raw, reference.error, reference.done,
             reference.terminal, reference.answer_id, reference.output_text())


def test_a_gemini_stream_is_skimmed_up_to_the_chunk_that_ends_it():
    stream = (STREAMS / "gemini_text.sse").read_bytes().replace(b"\n", b"\r\n")
    last = stream.rindex(b"data:", 0, stream.index(b'"finishReason"'))
    watcher = GENERATE.watcher(Outgoing("", b""))
    assert watcher.skim(stream, SSEFramer()) == last > 0
    assert counts(watcher.usage) == (12, 0, 18, 0) and watcher.answer_id is not None  # read from the skimmed
    assert GENERATE.watcher(Outgoing("", b"", answers=2)).skim(stream, SSEFramer()) == 0  # candidates side by side


# --- whole answers --------------------------------------------------------------------------------

@pytest.mark.parametrize("scenario", ["gemini-fake-ok", "gemini-fake-cached-thoughts", "gemini-fake-blocked"])
def test_a_whole_answer_and_a_json_array_stream_bill_the_same_usage(scenario):
    whole = json.loads(fake.pretty(fake.response_body(scenario, scenario)))
    array = json.loads(fake.pretty(fake.chunks(scenario, scenario)))
    assert counts(GENERATE.usage(whole)) == counts(GENERATE.usage(array)) == FAKE[scenario]
    assert GENERATE.text(whole) == GENERATE.text(array)
    assert GENERATE.answer_id(whole) == GENERATE.answer_id(array) == fake.RESPONSE_ID


@pytest.mark.parametrize("parsed", [None, [], {}, {"usageMetadata": "x"}, [{"candidates": []}], "text"])
def test_an_answer_without_usage_metadata_reports_none(parsed):
    assert GENERATE.usage(parsed) is None


# --- requests -------------------------------------------------------------------------------------

@pytest.mark.parametrize("target, expected", [
    ("gemini-2.5-pro:generateContent", ("gemini-2.5-pro", "generateContent")),
    ("models/gemini-2.5-pro:streamGenerateContent", ("gemini-2.5-pro", "streamGenerateContent")),
    ("gemini-2.5-pro", ("", "gemini-2.5-pro")),
    ("gemini:2:countTokens", ("gemini:2", "countTokens")),
])
def test_the_model_and_method_come_from_the_path(target, expected):
    assert split_target(target) == expected


@pytest.mark.parametrize("path, stream", [
    ("/v1beta/models/m:streamGenerateContent?alt=sse", True),
    ("/v1/models/m:streamGenerateContent?alt=sse&key=pw-x", True),
    ("/v1beta/models/m:streamGenerateContent", False),  # a JSON array: relayed whole
    ("/v1beta/models/m:generateContent?alt=sse", False),
    ("/v1beta/models/m:generateContent", False),
])
def test_the_stream_flag_comes_from_the_method_and_alt_sse(path, stream):
    assert GENERATE.stream({"stream": not stream}, request(path)) is stream
    assert GENERATE.model_name({"model": "other"}, request(path)) == "m"


@pytest.mark.parametrize("path, prov, upstream, expected", [
    ("/v1beta/models/mine:generateContent", provider(), "gemini-2.5-pro",
     "/v1beta/models/gemini-2.5-pro:generateContent"),
    ("/v1/models/mine:streamGenerateContent?alt=sse&key=pw-secret", provider(), "gemini-2.5-pro",
     "/v1/models/gemini-2.5-pro:streamGenerateContent?alt=sse"),
    ("/v1beta/models/mine:streamGenerateContent", provider(), "gemini-2.5-pro",
     "/v1beta/models/gemini-2.5-pro:streamGenerateContent"),
    ("/v1/models/mine:generateContent", provider(base_url="https://proxy.example/v1beta/"), "gemini-2.5-pro",
     "/models/gemini-2.5-pro:generateContent"),
    ("/v1beta/models/mine:generateContent", provider("echo", None), "echo", "/models/echo:generateContent"),
    ("/v1beta/models/mine:generateContent", provider(), "tunedModels/my-tune",
     "/v1beta/tunedModels/my-tune:generateContent"),
])
def test_the_call_goes_to_the_same_method_and_version_with_the_client_bytes(path, prov, upstream, expected):
    raw = b'{"contents": [{"parts": [{"text": "hi"}]}]}'
    req = request(path)
    outgoing = GENERATE.outgoing(raw, json.loads(raw), model(upstream), prov, GENERATE.stream({}, req), req)
    assert outgoing.path == expected and "key=" not in outgoing.path
    assert outgoing.body == raw and not outgoing.strip_usage and outgoing.headers == {}


def test_a_clamped_body_is_serialized_again():
    req = request("/v1beta/models/mine:generateContent")
    body = GENERATE.with_max_output({"contents": [], "generationConfig": {"temperature": 0.5}}, 100)
    outgoing = GENERATE.outgoing(b"", body, model(), provider(), False, req)
    assert json.loads(outgoing.body) == {"contents": [], "generationConfig": {"temperature": 0.5,
                                                                              "maxOutputTokens": 100}}


@pytest.mark.parametrize("config, worst, answers", [
    (None, None, 1), ({}, None, 1), ({"maxOutputTokens": 256}, 256, 1),
    ({"maxOutputTokens": 256, "candidateCount": 3}, 768, 3), ({"candidateCount": 3}, None, 3),
])
def test_the_worst_case_output_is_max_output_tokens_for_each_candidate(config, worst, answers):
    body = {"contents": []} if config is None else {"contents": [], "generationConfig": config}
    GENERATE.validate(body)
    # without maxOutputTokens admission reserves the model's maximum for each of the answers
    assert (GENERATE.max_output(body), GENERATE.answers(body)) == (worst, answers)


@pytest.mark.parametrize("config, field", [
    ({"maxOutputTokens": 64}, "generationConfig.maxOutputTokens"),
    ({"maxOutputTokens": 64, "candidateCount": 2},
     "generationConfig.maxOutputTokens x generationConfig.candidateCount"),
])
def test_a_cap_refusal_can_name_the_output_limit_it_reserved_for(config, field):
    assert GENERATE.max_output_field({"generationConfig": config}) == field


def test_a_clamp_shares_the_tokens_among_the_candidates():
    body = GENERATE.with_max_output({"generationConfig": {"candidateCount": 4, "maxOutputTokens": 999}}, 103)
    assert body["generationConfig"] == {"candidateCount": 4, "maxOutputTokens": 25}
    assert GENERATE.max_output(body) == 100 <= 103


@pytest.mark.parametrize("config, param", [
    ("fast", "generationConfig"), ([], "generationConfig"),
    ({"maxOutputTokens": 0}, "generationConfig.maxOutputTokens"),
    ({"maxOutputTokens": "64"}, "generationConfig.maxOutputTokens"),
    ({"maxOutputTokens": 64.0}, "generationConfig.maxOutputTokens"),
    ({"maxOutputTokens": True}, "generationConfig.maxOutputTokens"),
    ({"maxOutputTokens": 100_000_001}, "generationConfig.maxOutputTokens"),
    ({"candidateCount": 0}, "generationConfig.candidateCount"),
    ({"candidateCount": 101}, "generationConfig.candidateCount"),
])
def test_a_bad_generation_config_is_refused_before_the_provider(config, param):
    with pytest.raises(errors.InvalidRequest) as caught:
        GENERATE.validate({"contents": [], "generationConfig": config})
    assert caught.value.param == param and caught.value.status == 400


def test_the_prompt_counts_text_system_instruction_tools_and_inline_data():
    tools = [{"functionDeclarations": [{"name": "get_weather", "parameters": {"type": "OBJECT"}}]}]
    body = {
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "contents": [
            {"role": "user", "parts": [{"text": "What is in this picture?"},
                                       {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}}]},
            {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}]},
            {"role": "user", "parts": [{"fileData": {"fileUri": "gs://b/f.pdf"}}, {"thoughtSignature": "abc"}]},
        ],
        "tools": tools,
    }
    expected = (count_text("Be brief.", MODEL) + count_text("What is in this picture?", MODEL) + 2 * INLINE_PART
                + count_text('{"name":"get_weather","args":{"city":"Paris"}}', MODEL)
                + count_text(json.dumps(tools, separators=(",", ":")), MODEL))
    assert count_prompt(body, MODEL) == GENERATE.prompt_tokens(body, MODEL) == expected


@pytest.mark.parametrize("body", [{}, {"contents": "hi"}, {"contents": [1, None, {"parts": "x"}]},
                                  {"systemInstruction": 3, "contents": {"parts": [{"text": 4}]}}])
def test_a_prompt_of_any_shape_counts_without_raising(body):
    assert count_prompt(body, MODEL) >= 0


# --- errors ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("error, status, rpc", [
    (errors.InvalidRequest("bad"), 400, "INVALID_ARGUMENT"),
    (errors.InvalidApiKey("no key"), 401, "UNAUTHENTICATED"),
    (errors.Forbidden("no"), 403, "PERMISSION_DENIED"),
    (errors.ModelNotFound("no model"), 404, "NOT_FOUND"),
    (errors.BodyTooLarge("big"), 413, "INVALID_ARGUMENT"),
    (errors.RateLimited("slow down", headers={"Retry-After": "2"}), 429, "RESOURCE_EXHAUSTED"),
    (errors.SpendCapReached("You have reached your spend cap of $5."), 429, "RESOURCE_EXHAUSTED"),
    (errors.ApiError("boom"), 400, "INVALID_ARGUMENT"),
    (errors.UpstreamError("unreachable"), 502, "UNAVAILABLE"),
    (errors.ServiceUnavailable("counters down"), 503, "UNAVAILABLE"),
    (errors.UpstreamTimeout("slow provider"), 504, "DEADLINE_EXCEEDED"),
])
def test_payware_errors_come_in_googles_envelope_with_payware_code(error, status, rpc):
    body = GENERATE.error_body(error)["error"]
    assert (body["code"], body["status"], body["message"]) == (status, rpc, error.message)
    info = body["details"][0]
    assert info["@type"] == "type.googleapis.com/google.rpc.ErrorInfo" and info["domain"] == "payware"
    assert info["reason"] == (error.code or error.type).upper()
    assert all(isinstance(value, str) for value in info["metadata"].values())  # a map<string, string>


def test_the_spend_cap_refusal_is_told_apart_from_a_rate_limit():
    cap = GENERATE.error_body(errors.SpendCapReached("You have reached your spend cap of $5."))["error"]
    rate = GENERATE.error_body(errors.RateLimited("slow down", headers={"Retry-After": "2"}))["error"]
    assert cap["status"] == rate["status"] == "RESOURCE_EXHAUSTED"
    assert cap["details"][0]["reason"] == "SPEND_CAP_REACHED" and "spend cap" in cap["message"]
    assert cap["details"][0]["metadata"] == {"type": "insufficient_quota", "code": "spend_cap_reached"}
    assert rate["details"][0]["reason"] == "RATE_LIMIT_EXCEEDED"
    assert rate["details"][1] == {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "2s"}
    assert len(cap["details"]) == 1  # a cap does not lift by waiting


def test_a_provider_error_that_is_not_json_is_wrapped_in_googles_envelope():
    body = GENERATE.upstream_error(502, "upstream exploded", "google")["error"]
    assert body["code"] == 502 and body["status"] == "UNAVAILABLE"
    assert body["message"] == "provider 'google' answered 502: upstream exploded"
    assert body["details"][0]["reason"] == "UPSTREAM_ERROR"
