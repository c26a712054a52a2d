"""Judging the answers of a fuzz run, reconciling billing, and the failure table.

Failures are collected, never raised one by one: the table groups them by (check, route,
status, class of input) with a count, one example input, and the proxy log's exception line.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from tests.fuzz.cases import Case
from tests.fuzz.wire import Answer


@dataclass
class Failure:
    check: str  # what was violated: "status 500", "dropped", "envelope", "secret", ...
    route: str
    status: str
    klass: str
    example: str
    detail: str = ""  # the envelope's problem, the log's exception line, ...


def openai_envelope(answer: Answer) -> str | None:
    """None if the body is OpenAI's error envelope, else what is wrong with it."""
    ctype = (answer.header("Content-Type") or "").split(";")[0].strip()
    if ctype != "application/json":
        return f"Content-Type {ctype or 'missing'!r}, body {answer.body[:80]!r}"
    try:
        body = json.loads(answer.body)
    except ValueError:
        return f"not JSON: {answer.body[:80]!r}"
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict) or set(error) != {"message", "type", "param", "code"}:
        return f"not {{error: {{message, type, param, code}}}}: {answer.body[:80]!r}"
    if not isinstance(error["message"], str) or not isinstance(error["type"], str):
        return "message and type must be strings"
    if not all(error[k] is None or isinstance(error[k], str) for k in ("param", "code")):
        return "param and code must be strings or null"
    return None


def _json_error(answer: Answer) -> tuple[object, str | None]:
    """The answer's JSON body, or what keeps it from being one."""
    ctype = (answer.header("Content-Type") or "").split(";")[0].strip()
    if ctype != "application/json":
        return None, f"Content-Type {ctype or 'missing'!r}, body {answer.body[:80]!r}"
    try:
        return json.loads(answer.body), None
    except ValueError:
        return None, f"not JSON: {answer.body[:80]!r}"


def anthropic_envelope(answer: Answer) -> str | None:
    """None if the body is Anthropic's `{"type": "error", "error": {"type", "message"[, "code"]}}`."""
    body, problem = _json_error(answer)
    if problem:
        return problem
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(body, dict) or body.get("type") != "error" or not isinstance(error, dict):
        return f'not {{type: "error", error: {{...}}}}: {answer.body[:80]!r}'
    if not {"type", "message"} <= set(error) or not set(error) <= {"type", "message", "code", "details"}:
        return f"not {{type, message[, code]}} inside error: {answer.body[:80]!r}"
    if not isinstance(error["type"], str) or not isinstance(error["message"], str):
        return "error.type and error.message must be strings"
    if error.get("code") is not None and not isinstance(error["code"], str):
        return "error.code must be a string"
    return None


def google_envelope(answer: Answer) -> str | None:
    """None if the body is Google's `{"error": {"code", "message", "status"[, "details"]}}`, its code the status."""
    body, problem = _json_error(answer)
    if problem:
        return problem
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict) or not {"code", "message", "status"} <= set(error) \
            or not set(error) <= {"code", "message", "status", "details"}:
        return f"not {{error: {{code, message, status[, details]}}}}: {answer.body[:80]!r}"
    if type(error["code"]) is not int or not isinstance(error["message"], str) or not isinstance(error["status"], str):
        return "code must be an integer, message and status strings"
    if error["code"] != answer.status:
        return f"error.code {error['code']} is not the HTTP status {answer.status}"
    if "details" in error and not isinstance(error["details"], list):
        return "details must be a list"
    return None


def page_or_openai(answer: Answer) -> str | None:
    """The web faces: a small HTML page (for people) or OpenAI's envelope (for scripts)."""
    ctype = (answer.header("Content-Type") or "").split(";")[0].strip()
    if ctype == "text/html":
        return None if answer.body.strip() else "an empty HTML page"
    problem = openai_envelope(answer)
    return None if problem is None else f"neither an HTML page nor OpenAI's envelope: {problem}"


# The error envelope of each API; a route names its own (routes.Route.envelope); "a|b": either.
ENVELOPES: dict[str, Callable[[Answer], str | None]] = {
    "openai": openai_envelope, "anthropic": anthropic_envelope, "google": google_envelope, "page": page_or_openai}


def malformed_request(answer: Answer) -> bool:
    """aiohttp's parser refused the request before any route was known (README, "Malformed HTTP"):
    Payware's 400 is then OpenAI's envelope with code `malformed_request`, whatever the path."""
    if answer.status != 400 or openai_envelope(answer) is not None:
        return False
    return json.loads(answer.body)["error"]["code"] == "malformed_request"


def envelope_problem(name: str, answer: Answer) -> str | None:
    """None if the answer is in (one of) the envelope(s) `name` names."""
    problems = [ENVELOPES[part](answer) for part in name.split("|")]
    return None if any(p is None for p in problems) else problems[0]


# Endpoints whose 2xx answers are billed under the request's own id (X-Payware-Request-Id).
MODEL_ENDPOINTS = ("chat", "completions", "embeddings", "responses", "messages", "generate")


def status_text(answer: Answer) -> str:
    if answer.status is None:
        return f"no answer ({answer.error or 'closed'})"
    if not answer.complete:
        return f"{answer.status} truncated ({answer.error or 'closed'})"
    return str(answer.status)


def judge(case: Case, answer: Answer, secrets: dict[str, str]) -> list[Failure]:
    """The per-answer checks."""
    failures = []

    def fail(check: str, detail: str = "") -> None:
        failures.append(Failure(check, case.route, status_text(answer), case.klass, case.example(), detail))

    for name, secret in secrets.items():
        if secret.encode() in answer.raw:
            fail("secret in the answer", f"the answer contains the {name}")
    if case.raw:
        if answer.status not in case.expect:
            fail("malformed HTTP not answered 400", f"expected {'/'.join(map(str, case.expect))}; "
                                                    f"got {answer.raw[:100]!r}")
        return failures
    if answer.error == "timeout":
        fail("no answer in time", f"{len(answer.raw)} bytes received before the client gave up")
        return failures
    if answer.status is None or not answer.complete:
        fail("connection dropped or answer truncated", f"{len(answer.raw)} bytes received")
        return failures
    if answer.status == 500 and not from_provider(case, answer):
        fail("status 500")
    if case.expect and answer.status not in case.expect:
        fail("status not as expected", f"expected {'/'.join(map(str, case.expect))}: {answer.body[:160]!r}")
    if answer.status >= 400 and not malformed_request(answer):
        problem = envelope_problem(case.envelope, answer)
        if problem:
            fail("error not in the envelope", problem)
    elif case.endpoint in MODEL_ENDPOINTS and 200 <= answer.status < 300:
        if not answer.header("X-Payware-Request-Id"):
            fail("served without X-Payware-Request-Id")
    elif case.route == "GET /metrics" and answer.status == 200 and case.method == "GET":
        ctype = answer.header("Content-Type") or ""
        if not ctype.startswith("text/plain") or b"# TYPE " not in answer.body:
            fail("/metrics 200 is not Prometheus text", f"Content-Type {ctype!r}, body {answer.body[:60]!r}")
    if case.upstream_path and case.family == "stored" and from_provider(case, answer) and case.who != case.owner:
        fail("another customer's response reached the provider", f"owner {case.owner}, caller {case.who}")
    return failures


def from_provider(case: Case, answer: Answer) -> bool:
    """Whether the fake provider made this answer (so the proxy called it).

    Model calls: a 2xx, or one of the provider's own refusals (recognized by its text).
    Stored responses are relayed whole, whatever the provider said: anything but Payware's
    own error (its compact envelope, `{"error": {"message": ...`, with a code of its own and
    not `upstream_error`, which wraps a provider's error that was not JSON) came from it.
    """
    if answer.status is None or not case.upstream_path:
        return False
    if case.family == "stored":
        if not answer.body.startswith(b'{"error": {"message": '):
            return True
        try:
            return json.loads(answer.body)["error"]["code"] == "upstream_error"
        except (ValueError, KeyError, TypeError):
            return False
    return 200 <= answer.status < 300 or any(marker in answer.body for marker in PROVIDER_REFUSALS)


# The fake provider's own refusals (tests/fakes/*), passed through and never billed.
PROVIDER_REFUSALS = (
    b"Invalid value for 'temperature': expected a number.",  # fake-error-400
    b"Rate limit reached for requests. Please try again in 1s.",  # fake-error-429, responses-fake-error-429
    b"req_011CFakeAnthropicRequest01",  # claude-fake-error-400, claude-fake-overloaded (their request_id)
    b"Unknown name \\\"temperatur\\\"",  # gemini-fake-error-400
    b"The model is overloaded. Please try again later.",  # gemini-fake-overloaded
    b"Previous response with id",  # the fake's Responses: a previous_response_id it does not hold
)


def request_id_of_500(answer: Answer) -> str | None:
    match = re.search(rb"request id (req_[0-9a-f]+)", answer.body)
    return match.group(1).decode() if match else None


def served_ids(case: Case, answer: Answer) -> list[str]:
    """The event ids a 2xx answer promises are billed (model calls and usage records)."""
    if answer.status is None or not 200 <= answer.status < 300 or case.raw:
        return []
    if case.endpoint in MODEL_ENDPOINTS:
        rid = answer.header("X-Payware-Request-Id")
        return [rid] if rid else []
    if case.endpoint == "records":
        try:
            body = json.loads(answer.body)
        except ValueError:
            return []
        items = body.get("data", []) if isinstance(body, dict) and body.get("object") == "list" else [body]
        return [item["id"] for item in items if isinstance(item, dict) and isinstance(item.get("id"), str)]
    return []


# --------------------------------------------------------------------------- the proxy's log

# Log messages whose traceback is expected ("<logger> <message>" prefixes). None is: a traceback
# is either a 500 (counted as such too) or an error the client never sees but an operator's
# alerting does, such as aiohttp's "Unhandled exception" for a body its parser refused.
LOGGED_ON_PURPOSE: tuple[str, ...] = ()

_LOG_START = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
_UNHANDLED = re.compile(r"unhandled error in request (req_[0-9a-f]+)")


@dataclass
class LogReport:
    by_request: dict[str, str]  # request id -> the exception line of its traceback
    exceptions: Counter  # (logged message, exception line) -> count
    secret_hits: dict[str, list[str]]  # secret name -> log lines holding it (redacted)


def read_log(text: str, secrets: dict[str, str]) -> LogReport:
    lines = text.splitlines()
    by_request: dict[str, str] = {}
    exceptions: Counter = Counter()
    hits: dict[str, list[str]] = defaultdict(list)
    for line in lines:
        for name, secret in secrets.items():
            if secret in line:
                hits[name].append(redact(line, secrets)[:300])
    i = 0
    while i < len(lines):
        line = lines[i]
        if _LOG_START.match(line) and i + 1 < len(lines) and lines[i + 1].startswith("Traceback"):
            j = i + 2
            while j < len(lines) and not _LOG_START.match(lines[j]):
                j += 1
            block = [x for x in lines[i + 1:j] if x.strip()]
            last = _exception_line(block)
            message = re.sub(r"req_[0-9a-f]+", "req_…", re.sub(r"^\S+ \S+ \w+ ", "", line))
            message = re.sub(r"\d+ events", "N events", message)
            exceptions[(message[:90], redact(last, secrets)[:200])] += 1
            found = _UNHANDLED.search(line)
            if found:
                by_request[found.group(1)] = redact(last, secrets)[:200]
            i = j
        else:
            i += 1
    return LogReport(by_request, exceptions, dict(hits))


def _exception_line(block: list[str]) -> str:
    """The exception of a traceback, with its innermost frame in our own code.

    The exception line is the first unindented line after the last `File` frame (a
    SQLAlchemy error spans several lines: its first names the driver's error).
    """
    frames = [i for i, line in enumerate(block) if line.lstrip().startswith('File "')]
    if not frames:
        return block[-1].strip() if block else ""
    exception = next((line.strip() for line in block[frames[-1] + 1:] if not line.startswith(" ")), block[-1].strip())
    ours = [block[i] for i in frames if not any(p in block[i] for p in ("site-packages", "/lib/python"))]
    if ours:
        found = re.search(r'File "([^"]+)", line (\d+), in (\S+)', ours[-1])
        if found:
            path = "/".join(found.group(1).split("/")[-2:])
            exception += f" [at {path}:{found.group(2)} {found.group(3)}]"
    return exception


def redact(text: str, secrets: dict[str, str]) -> str:
    for name, secret in secrets.items():
        text = text.replace(secret, f"<{name}>")
    return text


# --------------------------------------------------------------------------- the table

# The order of the table: what breaks the contract for everyone first.
SEVERITY = ("status 500", "served (2xx) but not billed in the ledger", "billed but answered 500",
            "billed without a 2xx answer", "provider called for calls not served (so never billed)",
            "another customer's response reached the provider", "a Payware key reached the provider",
            "status not as expected",
            "normal call after the run not in the ledger in time", "normal call after the run not served",
            "connection dropped or answer truncated", "no answer in time", "secret in the answer",
            "secret in the proxy log", "error not in the envelope", "/metrics 200 is not Prometheus text",
            "malformed HTTP not answered 400")


def table(failures: Iterable[Failure], *, limit: int = 150) -> str:
    groups: dict[tuple, list[Failure]] = defaultdict(list)
    for failure in failures:
        groups[(failure.check, failure.route, failure.status, failure.klass)].append(failure)

    def order(item):
        (check, *rest), items = item
        rank = SEVERITY.index(check) if check in SEVERITY else len(SEVERITY)
        return rank, check, -len(items), rest

    rows = sorted(groups.items(), key=order)
    out = [f"{len(rows)} failure groups (check | route | status | class of input | count):"]
    for number, ((check, route, status, klass), items) in enumerate(rows[:limit], 1):
        out.append(f"{number:3}. {check} | {route} | {status} | {klass} | x{len(items)}")
        out.append(f"       e.g. {items[0].example[:260]}")
        details = Counter(f.detail for f in items if f.detail)
        for detail, count in details.most_common(2):
            out.append(f"       -> {detail[:300]}" + (f" (x{count})" if count != len(items) else ""))
    if len(rows) > limit:
        out.append(f"... and {len(rows) - limit} more groups")
    return "\n".join(out)


def summary_by_check(failures: list[Failure]) -> str:
    counts = Counter(f.check for f in failures)
    return ", ".join(f"{check}: {count}" for check, count in counts.most_common())
