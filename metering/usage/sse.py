"""Incremental Server-Sent Events framing (WHATWG HTML, "event stream interpretation").

The proxy relays frames raw, so the framer keeps each frame's exact bytes: joining every
`Frame.raw` (from `feed` and `close`) gives back the input, byte for byte, whatever the
network reads looked like. Line ends may be LF, CRLF or CR, and a CR ending one read may
pair with an LF starting the next one.

A frame is every line up to and including the first empty line; a lone empty line is a
frame of its own (with no data: the spec dispatches nothing for it).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

_BOM = b"\xef\xbb\xbf"
_EOL = re.compile(rb"\r\n?|\n")
_LF = 0x0A
_CR = 0x0D
_SPACE = 0x20
_COLON = 0x3A


@dataclass(slots=True)
class Frame:
    """One SSE frame: its exact bytes and the fields the proxy reads."""

    raw: bytes  # the frame's exact bytes, its terminating blank line included
    data: str | None  # the `data` field values joined by "\n"; None if the frame had none
    event: str | None = None  # the last `event` field value, if any
    complete: bool = True  # False only for a tail returned by close() that lacks its blank line


class SSEFramer:
    """Cuts a byte stream into SSE frames, whatever the network reads look like.

    Fast path: while no CR has been seen, frame ends are found with `bytes.find` (a one-line
    frame, the usual `data: {...}`, costs one search for its LF). Any CR switches the pending
    bytes to a line splitter (a C regex, never a byte loop).
    """

    __slots__ = ("_buffer", "_cr", "_lines", "_pos", "_skip")

    def __init__(self, *, mid_stream: bool = False) -> None:
        self._buffer = b""  # bytes of the pending (incomplete) frame
        self._cr = False  # whether _buffer holds a CR (then the line splitter is needed)
        self._lines: list[bytes] = []  # complete lines of the pending frame (line splitter only)
        self._pos = 0  # where the line splitter stopped in _buffer (0: start over)
        # BOM length at the stream's start; -1 until 3 bytes decide it (0: bytes from a frame
        # boundary later in a stream, where those bytes would be data)
        self._skip = 0 if mid_stream else -1

    def feed(self, chunk: bytes) -> list[Frame]:
        """The frames completed by `chunk`, in order; the rest stays buffered."""
        if not chunk:
            return []
        old = len(self._buffer)
        buffer = self._buffer + chunk if old else chunk
        if self._skip < 0:
            if len(buffer) < 3 and _BOM.startswith(buffer):
                self._buffer = buffer  # maybe a BOM still arriving: wait for more
                return []
            self._skip = 3 if buffer.startswith(_BOM) else 0
            old = 0
        if self._cr or b"\r" in chunk:
            return self._feed_lines(buffer)
        return self._feed_lf(buffer, old)

    @property
    def between_frames(self) -> bool:
        """Whether the next read starts a frame (no part of one is pending): what `whole` needs."""
        return not (self._buffer or self._cr or self._skip > 0)

    def whole(self, chunk: bytes, limit: int) -> int:
        """How many leading bytes of `chunk`, `limit` at most, are whole frames: bytes a caller
        may pass on without framing them (and then `feed` the rest). 0 unless nothing is pending,
        no BOM starts the stream, and those bytes end all their lines with LF, or all with CRLF
        (Google's streams).

        NOTE: from a frame's start, where every line ends alike, every blank line ends a frame:
        the end of the last `\n\n` (or `\r\n\r\n`) before `limit` is a frame boundary.
        """
        if self._buffer or self._cr or self._skip > 0:
            return 0
        if self._skip < 0 and (len(chunk) < 3 or chunk.startswith(_BOM)):
            return 0  # the stream's first bytes: a BOM is not data (`feed` takes it off)
        end = chunk.rfind(b"\n\n", 0, limit)
        if end >= 0 and chunk.find(b"\r", 0, end) < 0:
            end += 2
        else:
            end = chunk.rfind(b"\r\n\r\n", 0, limit)
            if end < 0:
                return 0
            end += 4
            pairs = chunk.count(b"\r\n", 0, end)  # every CR and every LF in a CRLF pair: no other line end
            if chunk.count(b"\r", 0, end) != pairs or chunk.count(b"\n", 0, end) != pairs:
                return 0
        self._skip = 0  # the stream's start is behind
        return end

    def close(self) -> Frame | None:
        """At end of stream: the bytes left, if any, as one frame with the data of its complete lines.

        The frame is `complete=False` unless those bytes end with a blank line, which happens
        only when the stream's last byte is a CR (the framer waits to see whether an LF follows).
        """
        rest, skip = self._buffer, self._skip
        self._buffer, self._cr, self._lines, self._pos = b"", False, [], 0
        if not rest:
            return None
        if skip < 0:
            return Frame(raw=rest, data=None, complete=False)  # only a piece of a BOM
        self._skip = 0
        lines: list[bytes] = []
        complete = False
        begin = skip
        for match in _EOL.finditer(rest, skip):
            end = match.start()
            if end == begin:
                complete = True  # a blank line: only ever the very last one, see feed()
                break
            lines.append(rest[begin:end])
            begin = match.end()
        data, event = _fields(lines)
        return Frame(raw=rest, data=data, event=event, complete=complete)

    def _feed_lf(self, buffer: bytes, old: int) -> list[Frame]:
        """LF-only bytes: find each frame's end with C-level searches."""
        frames: list[Frame] = []
        append = frames.append
        size = len(buffer)
        start = 0
        body = self._skip  # the BOM, if any, is part of the first frame's raw but not a line
        while body < size:
            if body < old:
                # A frame begun in an earlier read: its first `old` bytes hold no blank line.
                found = buffer.find(b"\n\n", old - 1)
                if found < 0:
                    break
                end = found + 2
                append(_frame(buffer[start:end], buffer[body:found]))
            else:
                newline = buffer.find(b"\n", body)
                if newline < 0:
                    break
                if newline == body:
                    end = body + 1  # the frame is a lone blank line
                    append(Frame(buffer[start:end], None))
                elif newline + 1 < size and buffer[newline + 1] == _LF:
                    end = newline + 2  # the common case: a one-line frame (inlined: hot path)
                    if buffer.startswith(b"data:", body):
                        at = body + 6 if buffer[body + 5] == _SPACE else body + 5
                        append(Frame(buffer[start:end], buffer[at:newline].decode("utf-8", "replace")))
                    elif buffer[body] == _COLON:
                        append(Frame(buffer[start:end], None))  # a comment, e.g. ": ping"
                    else:
                        append(Frame(buffer[start:end], *_fields([buffer[body:newline]])))
                else:
                    found = buffer.find(b"\n\n", newline)
                    if found < 0:
                        break
                    end = found + 2
                    if (buffer.startswith(b"event:", body) and buffer.startswith(b"data:", newline + 1)
                            and buffer.find(b"\n", newline + 1, found) < 0):
                        # `event:` then `data:` (Responses, Anthropic): inlined, as the one-line frame
                        at = newline + 7 if buffer[newline + 6] == _SPACE else newline + 6
                        named = body + 7 if buffer[body + 6] == _SPACE else body + 6
                        append(Frame(buffer[start:end], buffer[at:found].decode("utf-8", "replace"),
                                     buffer[named:newline].decode("utf-8", "replace")))
                    else:
                        append(_frame(buffer[start:end], buffer[body:found]))
            start = body = end
        if frames:
            self._skip = 0
        self._buffer = buffer[start:] if start else buffer
        if self._pos:
            self._lines, self._pos = [], 0
        return frames

    def _feed_lines(self, buffer: bytes) -> list[Frame]:
        """Bytes with a CR somewhere: split lines on LF, CRLF or CR."""
        frames: list[Frame] = []
        size = len(buffer)
        lines = self._lines
        start = 0
        begin = max(self._pos, self._skip)  # where the next unread line starts
        while True:
            if not lines:
                # Fast path for CRLF streams (sse-starlette's default): a one-line frame.
                cr = buffer.find(b"\r", begin)
                if cr > begin and buffer.startswith(b"\n\r\n", cr + 1) and buffer.find(b"\n", begin, cr) < 0:
                    end = cr + 4
                    frames.append(Frame(buffer[start:end], *_fields([buffer[begin:cr]])))
                    start = begin = end
                    continue
            match = _EOL.search(buffer, begin)
            if match is None:
                break
            end, after = match.span()
            if after == size and after - end == 1 and buffer[end] == _CR:
                break  # a lone CR as the last byte: the next read may start with its LF
            if end > begin:
                lines.append(buffer[begin:end])
            else:
                frames.append(Frame(buffer[start:after], *_fields(lines)))
                start, lines = after, []
            begin = after
        if frames:
            self._skip = 0
        rest = buffer[start:] if start else buffer
        self._buffer, self._lines, self._pos = rest, lines, begin - start
        self._cr = b"\r" in rest
        return frames


def _frame(raw: bytes, text: bytes) -> Frame:
    """A frame from its raw bytes and its LF-separated lines (`text`, blank line removed)."""
    return Frame(raw, *_fields(text.split(b"\n")))


def _fields(lines: list[bytes]) -> tuple[str | None, str | None]:
    """(data, event) of a frame's non-empty lines; comments and unknown fields are ignored."""
    data: list[bytes] = []
    event: str | None = None
    for line in lines:
        if line[:1] == b":":
            continue
        name, _, value = line.partition(b":")  # no colon: the whole line is the name
        if value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            data.append(value)
        elif name == b"event":
            event = value.decode("utf-8", "replace")
    if not data:
        return None, event
    # Decoding after the split is safe: LF and CR never occur inside a UTF-8 sequence.
    return b"\n".join(data).decode("utf-8", "replace"), event


def first_of(chunk: bytes, markers: tuple[bytes, ...], start: int = 0) -> int:
    """Where the first of `markers` begins in `chunk` from `start`, or its length."""
    end = len(chunk)
    for marker in markers:
        at = chunk.find(marker, start, end)
        if at >= 0:
            end = at
    return end


def all_named(chunk: bytes, start: int, end: int) -> bool:
    """Whether every frame of `chunk[start:end]` (whole LF-ended frames, see `SSEFramer.whole`)
    opens with an `event:` line.

    NOTE: each blank line there but the last is followed by the next frame, so they all are
    when the first one is and as many blank lines as frames after it come before an `event:`.
    """
    return chunk.startswith(b"event:", start) and \
        chunk.count(b"\n\n", start, end) == chunk.count(b"\n\nevent:", start, end) + 1


def skim_named(chunk: bytes, framer: SSEFramer, stops: tuple[bytes, ...], opening: tuple[bytes, ...] | None,
               read: Callable[[Frame], object]) -> tuple[int, int]:
    """Where the skim of a stream of named events (Responses', Anthropic's) ends: `(start,
    passed)`, the bytes of `chunk` up to `passed` going to the client as they came.

    With `opening` (the watcher has not read the stream's first event yet) the chunk must start
    with one of those event lines: that frame is read here, with `read`, and ends at `start`.
    After it, the whole frames before the first of `stops` are skimmed (up to `passed`),
    provided each is named (an unnamed frame's type is in its data: its watcher reads it).
    """
    start = 0
    if opening is not None:
        if not chunk.startswith(opening):
            return 0, 0
        start = chunk.find(b"\n\n") + 2
        if start < 2 or framer.whole(chunk, start) != start:
            return 0, 0
        for frame in frames_of(chunk[:start]):
            read(frame)
    look = first_of(chunk, stops, start)
    passed = framer.whole(chunk, look) if look > start else 0
    if passed <= start or not all_named(chunk, start, passed):
        return start, start
    return start, passed


def frames_of(raw: bytes) -> list[Frame]:
    """Every frame of `raw`, a stream's bytes from a frame boundary (a tail without its blank
    line included): what a watcher passed over unread, framed when it is needed after all."""
    framer = SSEFramer(mid_stream=True)
    frames = framer.feed(raw)
    tail = framer.close()
    if tail is not None:
        frames.append(tail)
    return frames
