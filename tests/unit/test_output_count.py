"""An estimate's output count: off the event loop when the text is long (a provider's 10 MB
answer without usage took the loop 5.6 s to count), on it when short."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import proxy.limits.admission as admission
from metering.usage.tokens import count_text, encoding_for
from proxy.limits.admission import BIG_PROMPT, Gate

MODEL = SimpleNamespace(upstream="gpt-4o")


async def counted_in(monkeypatch, text: str) -> tuple[int, threading.Thread]:
    threads = []

    def spy(value: str, model: str) -> int:
        threads.append(threading.current_thread())
        return count_text(value, model)

    monkeypatch.setattr(admission, "count_text", spy)
    tokens = await Gate.count_output(None, text, MODEL)  # the Gate's own state is not read
    thread, = threads
    return tokens, thread


async def test_a_long_output_is_counted_in_a_worker_thread(monkeypatch):
    encoding_for("gpt-4o")
    text = "word " * (BIG_PROMPT // 5 + 1)
    tokens, thread = await counted_in(monkeypatch, text)
    assert tokens == count_text(text, "gpt-4o") and thread is not threading.main_thread()


async def test_a_short_output_is_counted_on_the_event_loop(monkeypatch):
    encoding_for("gpt-4o")
    tokens, thread = await counted_in(monkeypatch, "Hello from fake.")
    assert tokens == 4 and thread is threading.main_thread()
