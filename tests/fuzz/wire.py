"""A raw HTTP/1.1 client: exact bytes out (malformed ones included), the whole answer back.

Every exchange uses its own connection with `Connection: close`, so the answer is read to EOF
and a dropped or truncated answer is told apart from a complete one.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

Headers = list[tuple[bytes, bytes]]


@dataclass
class Answer:
    """What came back: `status` None means no status line at all (the connection dropped)."""

    status: int | None = None
    reason: str = ""
    headers: Headers = field(default_factory=list)
    body: bytes = b""
    raw: bytes = b""
    complete: bool = False  # the body ended where its framing said (length, last chunk, or EOF)
    error: str | None = None  # a client-side error: timeout, reset, ...

    def header(self, name: str) -> str | None:
        wanted = name.lower().encode()
        for key, value in self.headers:
            if key.lower() == wanted:
                return value.decode("latin-1")
        return None


def request_bytes(method: str, target: str, headers: Headers, body: bytes | None, *,
                  port: int, content_length: bool = True) -> bytes:
    """A well-formed request; header values go out as the exact bytes given."""
    lines = [f"{method} {target} HTTP/1.1".encode(), b"Host: 127.0.0.1:%d" % port, b"Connection: close"]
    lines += [name + b": " + value for name, value in headers]
    if content_length and (body or method in ("POST", "PUT", "PATCH")):
        lines.append(b"Content-Length: %d" % len(body or b""))
    return b"\r\n".join(lines) + b"\r\n\r\n" + (body or b"")


async def exchange(host: str, port: int, data: bytes, *, timeout: float) -> Answer:
    """Send `data`, read until the server closes, parse what came back."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, asyncio.TimeoutError) as exc:
        return Answer(error=f"connect: {type(exc).__name__}")

    async def send() -> None:
        try:
            writer.write(data)
            await writer.drain()
        except (ConnectionError, OSError):
            pass  # the server may answer (413, 400) and close before reading it all

    sender = asyncio.create_task(send())
    chunks: list[bytes] = []
    error = None
    try:
        async with asyncio.timeout(timeout):
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                chunks.append(chunk)
    except TimeoutError:
        error = "timeout"
    except (ConnectionError, OSError) as exc:
        error = type(exc).__name__
    finally:
        sender.cancel()
        writer.close()
        try:
            await writer.wait_closed()
        except (ConnectionError, OSError):
            pass
    answer = parse(b"".join(chunks))
    answer.error = error
    return answer


def parse(raw: bytes) -> Answer:
    head, sep, rest = raw.partition(b"\r\n\r\n")
    if not sep:
        return Answer(raw=raw)
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return Answer(raw=raw)
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers.append((name.strip(), value.strip()))
    answer = Answer(status=int(parts[1]), reason=parts[2].decode("latin-1") if len(parts) > 2 else "",
                    headers=headers, raw=raw)
    encoding = (answer.header("Transfer-Encoding") or "").lower()
    length = answer.header("Content-Length")
    if "chunked" in encoding:
        answer.body, answer.complete = _dechunk(rest)
    elif length is not None and length.isdigit():
        answer.body = rest[:int(length)]
        answer.complete = len(rest) >= int(length)
    else:
        answer.body, answer.complete = rest, True
    return answer


def _dechunk(data: bytes) -> tuple[bytes, bool]:
    out = bytearray()
    pos = 0
    while True:
        end = data.find(b"\r\n", pos)
        if end < 0:
            return bytes(out), False
        size_text = data[pos:end].split(b";")[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            return bytes(out), False
        if size == 0:
            return bytes(out), data.find(b"\r\n", end + 2) >= 0
        start = end + 2
        if len(data) < start + size + 2:
            out += data[start:start + size]
            return bytes(out), False
        out += data[start:start + size]
        pos = start + size + 2
