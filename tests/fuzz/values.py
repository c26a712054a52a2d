"""Pools of hostile values, each with a short label for the failure table."""

from __future__ import annotations

import json
from typing import Any

NAN, INF = float("nan"), float("inf")


def nested(depth: int, kind: str = "list", leaf: Any = 1) -> Any:
    """A value `depth` containers deep, built without recursion."""
    value = leaf
    for _ in range(depth):
        value = [value] if kind == "list" else {"a": value}
    return value


def nested_text(depth: int, kind: str = "list") -> str:
    """The JSON text of `nested(depth)`: json.dumps itself would recurse too deep."""
    if kind == "list":
        return "[" * depth + "1" + "]" * depth
    return '{"a":' * depth + "1" + "}" * depth


# Values of every JSON type, and the odd ones Python's json reads (NaN, Infinity, huge ints).
TYPES: tuple[tuple[str, Any], ...] = (
    ("null", None), ("true", True), ("false", False), ("0", 0), ("-1", -1), ("1.5", 1.5),
    ('""', ""), ('"x"', "x"), ("[]", []), ("{}", {}), ("[1]", [1]), ('{"a":1}', {"a": 1}),
    ("2**63", 2**63), ("-2**63", -(2**63)), ("1e308", 1e308), ("NaN", NAN), ("Infinity", INF),
    ("-Infinity", -INF), ("lone-surrogate", "\ud800"), ("NUL", "\x00"), ("10**400", 10**400),
    ("nested-50", nested(50)), ('[{"a":null}]', [{"a": None}]), ("long-str", "x" * 5000),
)

# max_tokens / max_completion_tokens: sizes, signs, floats, strings.
MAX_TOKENS: tuple[tuple[str, Any], ...] = (
    ("1e30", 1e30), ("2**63", 2**63), ("2**63-1", 2**63 - 1), ("2**64", 2**64), ("2**53+1", 2**53 + 1),
    ("10**20", 10**20), ("10**15", 10**15), ("10**12", 10**12), ("10**9", 10**9), ("10**7", 10**7),
    ("-1", -1), ("0", 0), ("1.5", 1.5), ("1e9 (float)", 1e9), ("-2**63", -(2**63)), ('"100"', "100"),
    ('"1e30"', "1e30"), ("true", True), ("null", None), ("NaN", NAN), ("Infinity", INF),
    ("10**400", 10**400), ("16", 16),
)

# A quantity, a unit price or a cap amount: numbers and the strings that may pass for them.
AMOUNTS: tuple[tuple[str, Any], ...] = (
    ('"1e20"', "1e20"), ("1e20", 1e20), ('"1e30"', "1e30"), ('"-1"', "-1"), ("-1", -1), ('"NaN"', "NaN"),
    ('"sNaN"', "sNaN"), ('"Infinity"', "Infinity"), ('"-0"', "-0"), ("0", 0), ('"0"', "0"),
    ('"9007199.254740993"', "9007199.254740993"), ('"9007199.254740992"', "9007199.254740992"),
    ('"9007199.254740991"', "9007199.254740991"), ('"9007199254.740993"', "9007199254.740993"),
    ('"1000000000000"', "1000000000000"), ('"1000000000000.000000001"', "1000000000000.000000001"),
    ('"1e-10"', "1e-10"), ('"0.000000001"', "0.000000001"), ("2**63", 2**63), ("10**30", 10**30),
    ('"\\u0665" (Arabic five)', "\u0665"), ('" 5"', " 5"), ('"1_000"', "1_000"), ('"0x10"', "0x10"),
    ('""', ""), ("true", True), ("[]", []), ("{}", {}), ("1.5", 1.5), ('"1E+3"', "1E+3"),
    ("NaN", NAN), ("10**400", 10**400), ('"5.00"', "5.00"),
)

# Header values: what an `X-Payware-*` or `Authorization` header may carry on the wire.
HEADER_VALUES: tuple[tuple[str, bytes], ...] = (
    ("len-256", b"s" * 256), ("len-257", b"s" * 257), ("len-300", b"s" * 300), ("len-513", b"s" * 513),
    ("len-5000", b"s" * 5000), ("non-utf8 \\xff\\xfe", b"a\xff\xfeb"), ("latin-1 \\xe9", b"caf\xe9"),
    ("utf8-encoded surrogate \\xed\\xa0\\x80", b"x\xed\xa0\x80y"), ("utf-8 emoji", "\U0001f4b8-ok".encode()),
    ("tab inside", b"a\tb"), ("empty", b""),
    ("json-ish", b'{"a":[1,2]}'), ("percent %00", b"a%00b"),
)


# Labels grouped into the classes of the failure table, per pool (a label not here is its own class).
TYPE_CLASSES = {
    "null": "null/bool", "true": "null/bool", "false": "null/bool", "0": "small-number", "-1": "small-number",
    "1.5": "small-number", '""': "short-string", '"x"': "short-string", "[]": "container", "{}": "container",
    "[1]": "container", '{"a":1}': "container", '[{"a":null}]': "container", "nested-50": "container",
    "2**63": "huge-int", "-2**63": "huge-int", "10**400": "huge-int", "1e308": "nan/inf/1e308",
    "NaN": "nan/inf/1e308", "Infinity": "nan/inf/1e308", "-Infinity": "nan/inf/1e308", "long-str": "long-string",
}
MAX_TOKENS_CLASSES = {
    "1e30": "float", "1.5": "float", "1e9 (float)": "float", "2**63": "int >= 1e9", "2**63-1": "int >= 1e9",
    "2**64": "int >= 1e9", "2**53+1": "int >= 1e9", "10**20": "int >= 1e9", "10**15": "int >= 1e9",
    "10**12": "int >= 1e9", "10**9": "int >= 1e9", "10**400": "int >= 1e9", '"100"': "string", '"1e30"': "string",
    "-1": "negative", "-2**63": "negative", "true": "null/bool", "null": "null/bool", "NaN": "nan/inf",
    "Infinity": "nan/inf",
}
AMOUNT_CLASSES = {
    '"1e20"': "$ >= 2**53 nano", '"1e30"': "$ >= 2**53 nano", '"9007199.254740993"': "$ >= 2**53 nano",
    '"9007199254.740993"': "$ >= 2**53 nano", '"1000000000000"': "$ >= 2**53 nano",
    '"1000000000000.000000001"': "$ >= 2**53 nano", "10**30": "$ >= 2**53 nano", "2**63": "$ >= 2**53 nano",
    "10**400": "$ >= 2**53 nano", '"9007199.254740992"': "$ just under 2**53 nano",
    '"9007199.254740991"': "$ just under 2**53 nano", '"-1"': "negative", "-1": "negative", '"-0"': "negative",
    '"NaN"': "nan/inf string", '"sNaN"': "nan/inf string", '"Infinity"': "nan/inf string", "NaN": "float",
    "1e20": "float", "1.5": "float", '"1e-10"': "more than 9 places", '" 5"': "odd format",
    '"1_000"': "odd format", '"0x10"': "odd format", '"1E+3"': "odd format", '"\\u0665" (Arabic five)': "odd format",
    '""': "odd format", "true": "wrong type", "[]": "wrong type", "{}": "wrong type", "0": "zero", '"0"': "zero",
    '"0.000000001"': "tiny", '"5.00"': "plain",
}
HEADER_CLASSES = {
    "len-257": "len > 256", "len-300": "len > 256", "len-513": "len > 256", "len-5000": "len > 256",
    "non-utf8 \\xff\\xfe": "non-utf8", "latin-1 \\xe9": "non-utf8",
    "utf8-encoded surrogate \\xed\\xa0\\x80": "non-utf8",
    "utf-8 emoji": "odd but valid", "tab inside": "odd but valid", "empty": "odd but valid",
    "json-ish": "odd but valid", "percent %00": "odd but valid",
}


def dumps(value: Any) -> bytes:
    """JSON as a hostile client writes it: lone surrogates and NUL escaped, NaN allowed."""
    return json.dumps(value, ensure_ascii=True, allow_nan=True, separators=(",", ":")).encode()


def short(value: Any, limit: int = 60) -> str:
    """A readable, bounded repr of a value for the failure table."""
    text = ascii(value)
    return text if len(text) <= limit else text[:limit] + f"...({len(text)} chars)"


def percent(text: str) -> str:
    """`text` percent-encoded as UTF-8 for a URL; a lone surrogate as its 3 bytes (`%ED%A0%80`)."""
    return "".join(c if c.isascii() and (c.isalnum() or c in "-._~") else
                   "".join(f"%{b:02X}" for b in c.encode("utf-8", "surrogatepass")) for c in text)


def get(obj: Any, path: tuple, default: Any = None) -> Any:
    """The value at `path` in `obj`, or `default`."""
    for step in path:
        try:
            obj = obj[step]
        except (KeyError, IndexError, TypeError):
            return default
    return obj
