"""A provider on a real socket that answers with scripted raw bytes, in the pieces a network
may deliver them in: for the provider client's tests and the relay's."""

from __future__ import annotations

import asyncio

from proxy.providers.http1 import Client


class Scripted:
    """A TCP server that reads each request whole and answers with the next script: a list of
    byte strings written with a pause between them (`None` in the list: close the connection)."""

    def __init__(self, scripts: list[list[bytes | None]]) -> None:
        self.scripts = list(scripts)
        self.requests: list[bytes] = []
        self.connections = 0
        self.closed_by_client = asyncio.Event()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc) -> None:
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while self.scripts:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                self.requests.append(head + await reader.readexactly(length))
                for piece in self.scripts.pop(0):
                    if piece is None:
                        writer.close()
                        return
                    writer.write(piece)
                    await writer.drain()
                    await asyncio.sleep(0.01)
            if not await reader.read(1):
                self.closed_by_client.set()
        except (asyncio.IncompleteReadError, ConnectionError):
            self.closed_by_client.set()
        finally:
            writer.close()


def client(**kw) -> Client:
    """The provider client with the tests' timeouts (5 s unless given)."""
    return Client(connect_timeout=kw.pop("connect_timeout", 5), read_timeout=kw.pop("read_timeout", 5), **kw)
