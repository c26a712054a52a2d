"""Fixtures for the client SDK tests: a real proxy that prices a custom metric, and a relay
that can drop, delay or answer in the proxy's place, to drive the clients' retries."""

from __future__ import annotations

import http.client
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.conftest import ROOT, ProxyProcess, free_port, proxy_config

# The package is tested from its source, before (and without) `pip install ./clients/python`.
sys.path.insert(0, str(ROOT / "clients" / "python"))

PLANS = '  payg: {interval: monthly, price: {markup: "1.25", metrics: {agent_actions: "0.002"}}}\n'


@pytest.fixture(scope="module")
def records_proxy(tmp_path_factory, fake_upstream) -> Iterator[ProxyProcess]:
    """One proxy for a module's tests (customers acme and globex, `agent_actions` at $0.002).

    Tests share it: they tell their events apart by session, and compare a summary with the
    ledger over all of a customer's events, which agree whenever no call is in flight.
    """
    folder = tmp_path_factory.mktemp("clients-proxy")
    path = folder / "payware.yaml"
    path.write_text(proxy_config(fake_upstream.url, folder, plans=PLANS))
    proxy = ProxyProcess(config_path=path, port=free_port(), log_path=folder / "proxy.log")
    proxy.start()
    yield proxy
    proxy.stop()


@dataclass
class Canned:
    """An answer the relay gives instead of forwarding."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


DROP_AFTER_FORWARD = "drop-after-forward"  # the proxy gets the request; the client gets no answer
DROP = "drop"  # nobody answers: the connection is closed unread
HANG = "hang"  # the answer comes after the client has given up


@dataclass
class Seen:
    method: str
    path: str
    body: bytes
    at: float


class Relay:
    """An HTTP relay in front of `target`: its first requests follow `script` (drop, hang or a
    canned answer), every later one is forwarded as is. `seen` lists what arrived."""

    def __init__(self, target: str, script: list) -> None:
        self.target = urlsplit(target)
        self.script = list(script)
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        relay = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                relay._handle(self)

            do_POST = do_PUT = do_GET

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def posts(self) -> list[Seen]:
        return [s for s in self.seen if s.method == "POST"]

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        body = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        with self._lock:
            self.seen.append(Seen(handler.command, handler.path, body, time.monotonic()))
            step = self.script.pop(0) if self.script else None
        if step == DROP:
            handler.close_connection = True
            return
        if step == HANG:
            time.sleep(1.5)
            handler.close_connection = True
            return
        if isinstance(step, Canned):
            self._answer(handler, step.status, step.headers, step.body)
            return
        status, headers, answer = self._forward(handler, body)
        if step == DROP_AFTER_FORWARD:
            handler.close_connection = True
            return
        self._answer(handler, status, headers, answer)

    def _forward(self, handler: BaseHTTPRequestHandler, body: bytes) -> tuple[int, dict, bytes]:
        conn = http.client.HTTPConnection(self.target.hostname, self.target.port, timeout=10)
        try:
            headers = {k: v for k, v in handler.headers.items() if k.lower() not in ("host", "connection")}
            conn.request(handler.command, handler.path, body=body or None, headers=headers)
            resp = conn.getresponse()
            keep = {k: v for k, v in resp.getheaders()
                    if k.lower() not in ("content-length", "connection", "transfer-encoding", "date", "server")}
            return resp.status, keep, resp.read()
        finally:
            conn.close()

    @staticmethod
    def _answer(handler: BaseHTTPRequestHandler, status: int, headers: dict, body: bytes) -> None:
        handler.send_response(status)
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def relay(records_proxy) -> Iterator:
    """`relay(script)` starts a relay in front of the module's proxy."""
    relays: list[Relay] = []

    def make(script: list) -> Relay:
        relays.append(Relay(records_proxy.url, script))
        return relays[-1]

    yield make
    for r in relays:
        r.close()


def node_test_dir() -> Path:
    return ROOT / "clients" / "js" / "test"
