"""tiktoken fallback counting: offline, cached, and the cookbook's formula for chat."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tiktoken

from metering.usage.tokens import (IMAGE_PART, PER_MESSAGE, PER_NAME, REPLY_PRIMING, count_prompt, count_text,
                             encoding_for, litellm_tokenizers_dir)

ROOT = Path(__file__).resolve().parents[2]

# The example of OpenAI's cookbook "How to count tokens with tiktoken" (num_tokens_from_messages).
COOKBOOK_MESSAGES = [
    {"role": "system", "content": "You are a helpful, pattern-following assistant that translates corporate "
                                  "jargon into plain English."},
    {"role": "system", "name": "example_user", "content": "New synergies will help drive top-line growth."},
    {"role": "system", "name": "example_assistant", "content": "Things working well together will increase revenue."},
    {"role": "system", "name": "example_user", "content": "Let's circle back when we have more bandwidth to touch "
                                                          "base on opportunities for increased leverage."},
    {"role": "system", "name": "example_assistant", "content": "Let's talk later when we're less busy about how to "
                                                               "do better."},
    {"role": "user", "content": "This late pivot means we don't have time to boil the ocean for the client "
                                "deliverable."},
]


def tiktoken_len(text: str, encoding: str) -> int:
    encoding_for("gpt-4o")  # points tiktoken at litellm's files first; tiktoken alone would download
    return len(tiktoken.get_encoding(encoding).encode(text, disallowed_special=()))


def test_tiktoken_files_are_read_from_litellm_without_importing_it_or_the_network():
    # A fresh interpreter: no cache dir set, sockets forbidden, then every bundled encoding loads.
    script = """
import os, socket, sys
os.environ.pop("TIKTOKEN_CACHE_DIR", None)
def no_network(*args, **kwargs):
    raise AssertionError("network access")
socket.socket.connect = no_network
socket.create_connection = no_network
socket.getaddrinfo = no_network
from metering.usage.tokens import count_text, encoding_for, litellm_tokenizers_dir
names = [encoding_for(m).name for m in ("gpt-4o", "gpt-4", "text-davinci-003", "davinci", "gpt-oss-20b")]
assert count_text("hello world", "gpt-4o") == 2
assert os.environ["TIKTOKEN_CACHE_DIR"] == litellm_tokenizers_dir(), os.environ["TIKTOKEN_CACHE_DIR"]
assert "litellm" not in sys.modules
print(",".join(names))
"""
    env = {k: v for k, v in os.environ.items() if k not in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR")}
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "o200k_base,cl100k_base,p50k_base,p50k_base,o200k_harmony"


@pytest.mark.parametrize("encoding", ["o200k_base", "cl100k_base", "p50k_base"])
def test_litellm_bundles_the_encodings_counting_uses(encoding):
    folder = litellm_tokenizers_dir()
    assert folder is not None and folder.endswith(os.path.join("litellm", "litellm_core_utils", "tokenizers"))
    url = f"https://openaipublic.blob.core.windows.net/encodings/{encoding}.tiktoken"
    assert (Path(folder) / hashlib.sha1(url.encode()).hexdigest()).is_file()  # tiktoken's cache key


@pytest.mark.parametrize("model, encoding", [
    ("gpt-4o", "o200k_base"),
    ("gpt-4o-mini-2024-07-18", "o200k_base"),
    ("gpt-4.1-nano", "o200k_base"),
    ("o3-mini", "o200k_base"),
    ("gpt-5", "o200k_base"),
    ("ft:gpt-4o-mini:acme::abc123", "o200k_base"),
    ("gpt-4", "cl100k_base"),
    ("gpt-4-turbo-2024-04-09", "cl100k_base"),
    ("gpt-3.5-turbo", "cl100k_base"),
    ("gpt-35-turbo", "cl100k_base"),
    ("text-embedding-3-small", "cl100k_base"),
    ("text-embedding-ada-002", "cl100k_base"),
    ("openai/gpt-4", "cl100k_base"),
    ("azure/gpt-4o", "o200k_base"),
    ("gpt-4.5-preview-next", "o200k_base"),
    ("gpt-4o-future-model", "o200k_base"),
    ("text-davinci-003", "p50k_base"),
    ("davinci", "p50k_base"),  # r50k_base is not bundled: its nearest bundled relative
    ("gpt-oss-120b", "o200k_harmony"),
    ("llama-3.1-8b-instant", "o200k_base"),
    ("meta-llama/Llama-3.1-8B-Instruct", "o200k_base"),
    ("", "o200k_base"),
])
def test_encoding_for_picks_tiktokens_choice_else_a_family_default(model, encoding):
    assert encoding_for(model).name == encoding


def test_encodings_are_loaded_once():
    assert encoding_for("gpt-4o") is encoding_for("gpt-4o-mini") is encoding_for("unknown-model")


def test_an_encoding_drops_its_python_copy_of_the_ranks_and_still_encodes_and_decodes():
    encoding = encoding_for("gpt-4o")
    assert encoding._mergeable_ranks == {}  # ~27 MiB of RSS for o200k_base, kept only for pickling
    assert encoding.n_vocab > 200_000
    assert encoding.decode(encoding.encode_ordinary("Hello, world! 日本語")) == "Hello, world! 日本語"


@pytest.mark.parametrize("text", [
    "", "hello world", "Hello! How can I assist you today?", "  spaces\n\n\ttabs  ", "日本語のテキスト 🎉",
    "def f(x):\n    return x ** 2\n" * 20, "<|endoftext|> and <|im_start|> are just text here",
    "\ud800 lone surrogate",
])
@pytest.mark.parametrize("model, encoding", [("gpt-4o", "o200k_base"), ("gpt-4", "cl100k_base")])
def test_count_text_matches_tiktoken(text, model, encoding):
    assert count_text(text, model) == tiktoken_len(text, encoding)


@pytest.mark.parametrize("model, encoding, published", [
    ("gpt-3.5-turbo", "cl100k_base", 129),
    ("gpt-4-0613", "cl100k_base", 129),
    ("gpt-4", "cl100k_base", 129),
    ("gpt-4o", "o200k_base", 124),
    ("gpt-4o-mini", "o200k_base", 124),
])
def test_chat_prompt_follows_the_cookbook(model, encoding, published):
    by_hand = REPLY_PRIMING
    for message in COOKBOOK_MESSAGES:
        by_hand += PER_MESSAGE + sum(tiktoken_len(value, encoding) for value in message.values())
        by_hand += PER_NAME if "name" in message else 0
    assert count_prompt("chat", {"model": model, "messages": COOKBOOK_MESSAGES}, model) == by_hand == published


def chat(*messages: dict, **extra) -> dict:
    return {"model": "gpt-4o", "messages": list(messages), **extra}


def o200k(text: str) -> int:
    return tiktoken_len(text, "o200k_base")


USER = {"role": "user", "content": "What is in this picture?"}
ONE_MESSAGE = REPLY_PRIMING + PER_MESSAGE + o200k("user")
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                            "parameters": {"type": "object",
                                                           "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}]


@pytest.mark.parametrize("body, expected", [
    pytest.param(chat(USER), ONE_MESSAGE + o200k("What is in this picture?"), id="string content"),
    pytest.param(chat({"role": "user", "content": [{"type": "text", "text": "What is in this picture?"},
                                                    {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}),
                 ONE_MESSAGE + o200k("What is in this picture?") + IMAGE_PART, id="text and image parts"),
    pytest.param(chat({"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"},
                                                   {"type": "input_audio", "input_audio": {"data": "AAAA"}}]}),
                 ONE_MESSAGE + o200k("a") + o200k("b"), id="several text parts, audio counts 0"),
    pytest.param(chat({"role": "assistant", "content": [{"type": "refusal", "refusal": "No."}]}),
                 REPLY_PRIMING + PER_MESSAGE + o200k("assistant") + o200k("No."), id="refusal part"),
    pytest.param(chat({"role": "user", "name": "bob", "content": "hi"}),
                 ONE_MESSAGE + o200k("bob") + PER_NAME + o200k("hi"), id="name adds one"),
    pytest.param(chat({"role": "assistant", "content": None,
                       "tool_calls": [{"id": "call_1", "type": "function",
                                       "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
                      {"role": "tool", "tool_call_id": "call_1", "content": "22C"}),
                 REPLY_PRIMING + 2 * PER_MESSAGE + o200k("assistant") + o200k("get_weather")
                 + o200k("{\"city\":\"Paris\"}") + o200k("tool") + o200k("call_1") + o200k("22C"),
                 id="tool calls and tool results"),
    pytest.param(chat(USER, tools=TOOLS),
                 ONE_MESSAGE + o200k("What is in this picture?") + o200k(json.dumps(TOOLS, separators=(",", ":"))),
                 id="tools as compact json"),
    pytest.param(chat(USER, functions=[TOOLS[0]["function"]]),
                 ONE_MESSAGE + o200k("What is in this picture?")
                 + o200k(json.dumps([TOOLS[0]["function"]], separators=(",", ":"))), id="legacy functions"),
    pytest.param(chat(), REPLY_PRIMING, id="no messages"),
    pytest.param({"messages": "hello"}, 0, id="messages not a list"),
    pytest.param(chat("hello", 5, None, USER), ONE_MESSAGE + o200k("What is in this picture?"),
                 id="non-object messages skipped"),
    pytest.param(chat({"role": "user", "content": [None, 3, "bare string", {"type": "text", "text": 7}]}),
                 ONE_MESSAGE + o200k("bare string"), id="odd parts skipped"),
    pytest.param(chat({"role": 1, "content": {"a": "b"}, "tool_calls": 5, "function_call": 3}),
                 REPLY_PRIMING + PER_MESSAGE, id="odd values skipped"),
])
def test_chat_prompt_counts_what_can_be_counted(body, expected):
    assert count_prompt("chat", body, "gpt-4o") == expected


@pytest.mark.parametrize("prompt, expected", [
    pytest.param("Say this is a test", o200k("Say this is a test"), id="string"),
    pytest.param(["Say this", "is a test"], o200k("Say this") + o200k("is a test"), id="strings"),
    pytest.param([1212, 318, 257, 1332], 4, id="token array"),
    pytest.param([[1212, 318], [257, 1332, 13]], 5, id="token arrays"),
    pytest.param(["ab", 7, [1, 2], [3, "x", True]], o200k("ab") + 1 + 2 + 1, id="mixed shapes"),
    pytest.param([True, None, {"a": 1}, [[1, 2]], 1.5], 0, id="nothing countable"),
    pytest.param({"text": "x"}, 0, id="object"),
    pytest.param(None, 0, id="missing"),
    pytest.param("", 0, id="empty string"),
    pytest.param([], 0, id="empty list"),
])
@pytest.mark.parametrize("endpoint, field", [("completions", "prompt"), ("embeddings", "input")])
def test_completions_and_embeddings_count_every_input_shape(endpoint, field, prompt, expected):
    assert count_prompt(endpoint, {"model": "gpt-4o", field: prompt}, "gpt-4o") == expected


def test_completions_count_the_suffix_too():
    body = {"prompt": "def add(a, b):", "suffix": "\n\nprint(add(1, 2))"}
    assert count_prompt("completions", body, "gpt-4o") == o200k("def add(a, b):") + o200k("\n\nprint(add(1, 2))")


@pytest.mark.parametrize("endpoint, body", [
    ("chat", None), ("chat", []), ("completions", "prompt"), ("embeddings", 3), ("images", {"prompt": "x"}),
])
def test_bad_bodies_and_unknown_endpoints_count_zero(endpoint, body):
    assert count_prompt(endpoint, body, "gpt-4o") == 0


def test_a_text_seen_lately_is_counted_from_memory_with_the_same_result(monkeypatch):
    from metering.usage import tokens

    counts = tokens._Counts()
    monkeypatch.setattr(tokens, "_COUNTS", counts)
    prompt = "You are a concise assistant. " * 40
    first = count_text(prompt, "gpt-4o")
    assert first == len(tiktoken.get_encoding("o200k_base").encode_ordinary(prompt))
    assert counts[("o200k_base", prompt)] == first
    # the same text again (another request's string object), and for another encoding
    assert count_text("".join(list(prompt)), "gpt-4o") == first
    assert count_text(prompt, "gpt-4") == len(tiktoken.get_encoding("cl100k_base").encode_ordinary(prompt))
    assert len(counts) == 2


def test_the_counts_kept_are_bounded_in_texts_and_characters(monkeypatch):
    from metering.usage import tokens

    counts = tokens._Counts()
    monkeypatch.setattr(tokens, "_COUNTS", counts)
    monkeypatch.setattr(tokens._Counts, "MAX_TEXTS", 10)
    monkeypatch.setattr(tokens._Counts, "MAX_CHARS", 1000)
    monkeypatch.setattr(tokens._Counts, "MAX_TEXT", 50)
    for i in range(30):
        assert count_text(f"text number {i}", "gpt-4o") > 0
    assert len(counts) == 10 and ("o200k_base", "text number 29") in counts  # the oldest went first
    count_text("x" * 60, "gpt-4o")  # longer than MAX_TEXT: counted, not kept
    assert ("o200k_base", "x" * 60) not in counts
    monkeypatch.setattr(tokens._Counts, "MAX_CHARS", 100)
    for i in range(3):
        count_text(str(i) * 45, "gpt-4o")
    assert sum(len(text) for _, text in counts) <= 100 and ("o200k_base", "2" * 45) in counts
