"""`dump_json`, which writes again a body Payware changed: what orjson writes, and only where it
would write what the standard library writes (it is the faster of the two on every stream)."""

from __future__ import annotations

import json
import math
import random
from decimal import Decimal

import pytest

from proxy.errors import InvalidRequest
from proxy.jsonbody import MAX_CONTAINERS, MAX_DECIMALS, dump_json, load_json, parse_json


def _stdlib(value: object) -> bytes:
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
    except UnicodeEncodeError:
        return json.dumps(value, ensure_ascii=True, separators=(",", ":")).encode()


def test_a_body_reads_back_as_the_same_value_in_the_same_order():
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "héllo \u2028 \"q\" \\ \x00\x1f\x7f 😀"}],
            "temperature": 0.2, "top_p": 1e-07, "n": 1, "stop": None, "stream": True, "logit_bias": {"50256": -100},
            "big": 2**63 - 1, "neg": -2**63, "tiny": 5e-324, "huge": 1.7976931348623157e308}
    dumped = dump_json(body)
    assert json.loads(dumped) == body and list(json.loads(dumped)) == list(body)
    assert b'", "' not in dumped and b'": ' not in dumped  # compact, as before


def test_what_orjson_cannot_write_as_the_standard_library_does_is_written_by_the_standard_library():
    for body in ({"n": float("nan"), "stop": None}, {"x": [1, {"y": float("inf")}], "z": None},
                 {"big": 2**64}, {"text": "lone \ud800 surrogate"}, {"nested": [[[-math.inf]]], "a": None}):
        assert dump_json(body) == _stdlib(body)


def test_random_bodies_read_back_equal_to_what_the_standard_library_writes():
    rng = random.Random(7)
    leaves = [None, True, False, 0, -1, 2**53, 0.1, -2.5e-8, 1e16, "", "a\nb", "é", "\u0007", "😀", float("nan")]

    def value(depth: int) -> object:
        roll = rng.random()
        if depth > 3 or roll < 0.5:
            return rng.choice(leaves)
        if roll < 0.75:
            return [value(depth + 1) for _ in range(rng.randint(0, 4))]
        return {f"k{i}": value(depth + 1) for i in range(rng.randint(0, 4))}

    for _ in range(2000):
        body = {"model": "m", "v": value(0)}
        dumped = dump_json(body)
        if b"NaN" in dumped:
            assert dumped == _stdlib(body)  # NaN stays NaN, as the client sent it
        else:
            assert load_json(dumped) == load_json(_stdlib(body))


@pytest.mark.parametrize("raw", [
    b'{"x":[' + b"[]," * MAX_CONTAINERS + b"[]]}",
    b'{"x":[' + b'{"a":1},' * MAX_CONTAINERS + b"{}]}",
    b"[" * (MAX_CONTAINERS + 1),  # not even JSON: refused before any parse
])
def test_a_body_of_more_arrays_and_objects_than_any_api_needs_is_refused_before_it_is_parsed(raw):
    with pytest.raises(InvalidRequest, match="more than 100,000 arrays and objects"):
        parse_json(raw)


def test_brackets_inside_strings_are_text_not_structure():
    text = "[{" * MAX_CONTAINERS + '\\"]}'
    raw = json.dumps({"messages": [{"role": "user", "content": text}], "n": [[1], [2]]}).encode()
    assert parse_json(raw)["messages"][0]["content"] == text


def test_decimal_numbers_are_bounded_where_they_are_parsed_as_decimals():
    raw = b'{"meta":{"samples":[' + b"1.5," * MAX_DECIMALS + b"2.5]}}"
    assert len(parse_json(raw)["meta"]["samples"]) == MAX_DECIMALS + 1  # as floats: cheap, accepted
    with pytest.raises(InvalidRequest, match="more than 100,000 decimal numbers"):
        parse_json(raw, parse_float=Decimal)
    text = json.dumps({"quantity": "2.5", "meta": {"note": "1.5e" * MAX_DECIMALS}}).encode()
    assert parse_json(text, parse_float=Decimal)["quantity"] == "2.5"  # dots in strings are text
