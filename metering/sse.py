"""Incremental Server-Sent Events framing (WHATWG HTML, "event stream interpretation").

The proxy relays frames raw, so the framer keeps each frame's exact bytes: joining every
`Frame.raw` gives back the input, byte for byte. Line ends may be LF, CRLF or CR, and a
CR at the end of one network read may pair with an LF at the start of the next.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Frame:
    raw: bytes  # the frame's exact bytes, its terminating blank line included
    data: str | None  # the `data` field values joined by "\n"; None if the frame had none
    event: str | None = None
    complete: bool = True  # False only for the trailing bytes returned by close()


class SSEFramer:
    """Cuts a byte stream into SSE frames, whatever the network reads look like."""

    def __init__(self) -> None:
        self._buffer = b""
        self._first = True

    def feed(self, chunk: bytes) -> list[Frame]:
        """The frames completed by `chunk`, in order; the rest stays buffered."""
        buffer = self._buffer + chunk if self._buffer else chunk
        frames: list[Frame] = []
        if b"\r" not in buffer:
            # Fast path: LF-only streams, whole events per read (what most providers send).
            start = 0
            while True:
                end = buffer.find(b"\n\n", start)
                if end < 0:
                    break
                raw = buffer[start:end + 2]
                frames.append(_parse(raw, raw[:-2].split(b"\n"), self._take_bom()))
                start = end + 2
            self._buffer = buffer[start:]
            return frames
        start = 0
        lines: list[bytes] = []
        pos = 0
        size = len(buffer)
        while pos < size:
            lf = buffer.find(b"\n", pos)
            cr = buffer.find(b"\r", pos)
            if lf < 0 and cr < 0:
                break
            if cr < 0 or (0 <= lf < cr):
                line, pos = buffer[pos:lf], lf + 1
            elif cr + 1 < size:
                line, pos = buffer[pos:cr], cr + (2 if buffer[cr + 1] == 0x0A else 1)
            else:
                break  # a CR as the last byte: wait for the next read to know if an LF follows
            if line:
                lines.append(line)
            else:
                raw = buffer[start:pos]
                frames.append(_parse(raw, lines, self._take_bom()))
                start, lines = pos, []
        self._buffer = buffer[start:]
        return frames

    def close(self) -> Frame | None:
        """At end of stream: any bytes left, as one incomplete frame (its data parsed if any)."""
        rest, self._buffer = self._buffer, b""
        if not rest:
            return None
        lines = rest.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        frame = _parse(rest, [line for line in lines if line], self._take_bom())
        frame.complete = False
        return frame

    def _take_bom(self) -> bool:
        first, self._first = self._first, False
        return first


def _parse(raw: bytes, lines: list[bytes], first: bool) -> Frame:
    data: list[str] = []
    event = None
    for index, line in enumerate(lines):
        if not line or line[0] == 0x3A:  # ":" starts a comment
            continue
        text = line.decode("utf-8", "replace")
        if first and index == 0 and text.startswith("\ufeff"):
            text = text[1:]
        name, colon, value = text.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
    return Frame(raw=raw, data="\n".join(data) if data else None, event=event)
