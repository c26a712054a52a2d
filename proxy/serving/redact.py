"""Secrets out of every log line: keys are replaced by a mark before any text is written.

Two nets: the exact secrets this process knows (the admin key, provider keys, the webhook
secret), and anything shaped like a credential (an `Authorization`, `x-api-key`, `api-key` or
`x-goog-api-key` header line, a bearer token, a `key=` query parameter, `pw-…`/`sk-…` keys),
whatever aiohttp's parser or a traceback quotes.
"""

from __future__ import annotations

import json
import logging
import time
import re
from collections.abc import Iterable

MARK = "[redacted]"
_TRUSTED = frozenset({"payware.access"})  # loggers whose lines hold only fields Payware chose
_SHAPES = re.compile(
    r"(?i)"
    r"((?:proxy-)?authorization|x-api-key|api-key|x-goog-api-key)(\s*[:=]\s*)[^\r\n'\"\\]*"  # header lines
    r"|(bearer\s+)[^\s'\"\\,;]+"  # a bearer token anywhere
    r"|([?&](?:key|api_key|token)=)[^&\s'\"\\]+"  # a key in a query string
    r"|\b(?:pw|sk|pk|rk)-[A-Za-z0-9_\-]{6,}"  # key-shaped values (Payware's, OpenAI's, Anthropic's sk-ant-)
    r"|\b(?:sk|pk|rk)_(?:live|test)_[A-Za-z0-9]{8,}|\bwhsec_[A-Za-z0-9]{8,}"  # Stripe's keys and webhook secrets
    r"|\bAIza[A-Za-z0-9_\-]{20,}"  # Google API keys
)


def _mark(match: re.Match) -> str:
    if match.group(1):
        return match.group(1) + match.group(2) + MARK
    if match.group(3):
        return match.group(3) + MARK
    if match.group(4):
        return match.group(4) + MARK
    return MARK


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with every known secret and every credential-shaped value replaced by MARK."""
    for secret in secrets:
        if secret and secret in text:
            text = text.replace(secret, MARK)
    return _SHAPES.sub(_mark, text)


class RedactingFormatter(logging.Formatter):
    """A formatter whose output (message, arguments and traceback) never holds a secret."""

    def __init__(self, fmt: str | None = None, *, secrets: Iterable[str] = ()):
        super().__init__(fmt)
        self.secrets = tuple(s for s in secrets if s)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        # NOTE: access-log lines are built from fields Payware chose (ids, names, numbers, the path
        # without its query): nothing there can be a secret, and they are the bulk of the log.
        return text if record.name in _TRUSTED else redact(text, self.secrets)


class JsonFormatter(RedactingFormatter):
    """One JSON object per line (`PAYWARE_LOG_FORMAT=json`): time, level, logger, message, and the
    access log's fields; redacted like the text format."""

    converter = time.gmtime

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None)
        if fields is None:
            fields = {"message": record.getMessage()}
        if record.exc_info:
            fields = {**fields, "traceback": self.formatException(record.exc_info)}
        line = json_line(self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
                         record.levelname.lower(), record.name, fields)
        return line if record.name in _TRUSTED else redact(line, self.secrets)


def json_line(ts: str, level: str, logger: str, fields: dict) -> str:
    """One log line of the JSON format: time, level, logger, then the fields."""
    return json.dumps({"ts": ts, "level": level, "logger": logger, **fields}, default=str, ensure_ascii=False)
