"""The portal's inputs that used to be 500s: a CSRF token that is not ASCII, a cursor past 64 bits."""

from __future__ import annotations

import pytest

from proxy.web import history, tokens

KEY = tokens.derive(b"admin-key-0123456789", tokens.CSRF)


@pytest.mark.parametrize("given", [
    "\udcff",  # a header byte that is not UTF-8, as aiohttp decodes it (surrogateescape)
    "é" * 43,
    "\x00",
    "",
    None,
    "x" * 5000,
], ids=["not-utf8", "non-ascii", "nul", "empty", "missing", "long"])
def test_a_csrf_token_that_cannot_be_ours_is_refused_not_raised(given):
    assert tokens.csrf_ok(KEY, "nonce", given) is False


def test_the_sessions_own_csrf_token_is_accepted():
    assert tokens.csrf_ok(KEY, "nonce", tokens.csrf_token(KEY, "nonce"))
    assert not tokens.csrf_ok(KEY, "other", tokens.csrf_token(KEY, "nonce"))


@pytest.mark.parametrize("text", [
    "99999999999999999999:x",  # past SQLite's 64-bit integers
    f"{2**63}:x",
    "9" * 5000 + ":x",
    "-1:x",
    "١٢:x",  # digits, but not ASCII ones
    "12",
    "12:",
    ":x",
    "12:" + "x" * 129,
    "12:req_\udcff",
    "12:req\n",
])
def test_a_cursor_latest_never_gave_is_a_value_error(text):
    with pytest.raises(ValueError):
        history._cursor(text)


def test_the_cursors_latest_gives_are_read_back():
    assert history._cursor(f"{2**63 - 1}:req_0123abcd") == (2**63 - 1, "req_0123abcd")
    assert history._cursor("0:rec_ff") == (0, "rec_ff")
