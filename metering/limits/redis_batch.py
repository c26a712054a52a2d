"""Scripts sent to Redis together: EVALSHAs issued at once (within two turns of the event loop)
share a round trip.

Why: a capped, rate-limited call runs several scripts (the rate limit and the reservation before
it goes upstream; the counters, the settlement and the token adjustment after it). A round trip
each is a write, a wake-up and a read apiece, 100 µs and more of this process's CPU. Issued together
(`asyncio.gather`) they go out as one pipeline; under load the scripts of concurrent calls
share one too.

Each script still runs alone on the server, as before; nothing was ever atomic *across* two
scripts, and nothing is across a batch. A script's error (NOSCRIPT after a Redis restart, a
refused argument) is that script's answer only; a connection error is every script's answer,
as each would have met it on its own.

On a plain TCP Redis the batches go over one connection of their own (`_Pipe`): the commands
packed here, written in one `write()`, the replies parsed by hiredis and handed out in order
(Redis answers a connection's commands in the order they came). redis-py's pipeline took
~100 µs of CPU per round trip (a pooled connection taken and given back, its command packer,
its reply machinery); this takes a fraction of it. TLS and Unix sockets keep redis-py's path.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

_Pending = tuple[asyncio.Future, tuple[Any, ...]]


class BatchingRedis(aioredis.Redis):
    """A `redis.asyncio.Redis` whose `evalsha` (so every registered script's call) is batched."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._waiting: list[_Pending] = []
        self._sending: set[asyncio.Task] = set()  # NOTE: the loop keeps only weak references to tasks
        self.round_trips = 0  # batches sent: what the bench and the tests count
        pool = self.connection_pool
        # the lean path: plain TCP only (TLS, Unix sockets and the like keep redis-py's)
        self._pipe_options = pool.connection_kwargs if pool.connection_class is Connection else None
        self._pipe: _Pipe | None = None
        self._connecting: asyncio.Future | None = None

    def register_script(self, script: str) -> _Script:  # type: ignore[override]
        return _Script(self, script)

    async def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Any:  # type: ignore[override]
        return await self.issue(sha, numkeys, *keys_and_args)

    def issue(self, sha: str, numkeys: int, *keys_and_args: Any, command: str = "EVALSHA") -> asyncio.Future:
        """`evalsha` without a coroutine: the script goes out with this turn's batch; await the
        answer. How one coroutine sends several scripts in one round trip without a task each.
        (`command="EVAL"` with the script's text for `sha`: the script itself.)"""
        loop = asyncio.get_running_loop()
        answer = loop.create_future()
        self._waiting.append((answer, (command, sha, numkeys, *keys_and_args)))
        if len(self._waiting) == 1:
            loop.call_soon(loop.call_soon, self._send)  # NOTE: two turns, see `_send`
        return answer

    def _send(self) -> None:
        """Send what was issued during the last two turns of the loop: the tasks ready in the
        first, and the tasks those started (a gather within a gather) in the second."""
        batch, self._waiting = self._waiting, []
        pipe = self._pipe
        if pipe is not None and not pipe.lost:  # connected: no task needed to send
            self.round_trips += 1
            pipe.send(batch)
            return
        task = asyncio.get_running_loop().create_task(self._run(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _run(self, batch: list[_Pending]) -> None:
        self.round_trips += 1
        if self._pipe_options is not None:
            try:
                pipe = await self._connected_pipe()
            except BaseException as exc:
                _fail(batch, exc)
                if not isinstance(exc, Exception):
                    raise
                return
            pipe.send(batch)
            return
        try:
            if len(batch) == 1:
                replies = [await _reply(self.execute_command(*batch[0][1]))]
            else:
                async with self.pipeline(transaction=False) as pipe:
                    for _, command in batch:
                        pipe.execute_command(*command)
                    replies = await pipe.execute(raise_on_error=False)
        except BaseException as exc:  # the connection failed (or we are shutting down): everyone's answer
            _fail(batch, exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (answer, _), reply in zip(batch, replies):
            if answer.done():  # its caller was cancelled meanwhile
                continue
            if isinstance(reply, Exception):
                answer.set_exception(reply)
            else:
                answer.set_result(reply)

    async def _connected_pipe(self) -> _Pipe:
        pipe = self._pipe
        if pipe is not None and not pipe.lost:
            return pipe
        if self._connecting is None:  # one connection attempt, whoever else needs it waits for it
            self._connecting = asyncio.get_running_loop().create_future()
            try:
                self._pipe = await _Pipe.open(self._pipe_options, self.get_encoder())
                self._connecting.set_result(None)
            except BaseException as exc:
                self._connecting.set_exception(exc if isinstance(exc, Exception) else RedisConnectionError("cancelled"))
                self._connecting.exception()  # retrieved: no "never retrieved" warning if nobody waited
                raise
            finally:
                self._connecting = None
            return self._pipe
        await asyncio.shield(self._connecting)
        return await self._connected_pipe()

    async def aclose(self, *args, **kwargs) -> None:
        if self._pipe is not None:
            self._pipe.close()
        await super().aclose(*args, **kwargs)


class _Script:
    """A Lua script called by its SHA1, loaded again after NOSCRIPT: redis-py's `AsyncScript`,
    less what it does on every call (two imports, `isinstance` against protocol classes), ~5 µs
    a script; a call on a pipeline (`client=`) is still its."""

    __slots__ = ("client", "script", "sha", "_on_pipeline")

    def __init__(self, client: BatchingRedis, script: str) -> None:
        self.client = client
        self.script = script
        self.sha = hashlib.sha1(script.encode()).hexdigest()
        self._on_pipeline = AsyncScript(client, script)

    async def __call__(self, keys=None, args=None, client=None) -> Any:
        if client is not None:
            return await self._on_pipeline(keys=keys, args=args, client=client)
        keys = tuple(keys) if keys else ()
        args = tuple(args) if args else ()
        try:
            return await self.client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:  # a restarted or flushed Redis: the script itself, which Redis then keeps
            # NOTE: issued at once, not after a SCRIPT LOAD's round trip: the NOSCRIPTs of scripts
            # issued together come back in their order, and so go their retries (a batch's quota
            # positions are claimed in the order of its records)
            return await self.client.issue(self.script, len(keys), *keys, *args, command="EVAL")

    def soon(self, keys=(), args=()) -> asyncio.Future:
        """The script issued now (`BatchingRedis.issue`), its answer awaited later. NOSCRIPT is
        that answer: the caller calls the script again (`__call__` loads it)."""
        return self.client.issue(self.sha, len(keys), *keys, *args)


def _fail(batch: list[_Pending], exc: BaseException) -> None:
    for answer, _ in batch:
        if not answer.done():
            answer.set_exception(exc if isinstance(exc, Exception) else RedisConnectionError("cancelled"))


class _Pipe(asyncio.Protocol):
    """One connection to Redis: batches written whole, replies handed out in the order sent."""

    def __init__(self, timeout: float | None, encoder) -> None:
        self.timeout = timeout
        self.encoder = encoder  # redis-py's, for the rare argument that is not bytes, str or int
        self.transport: asyncio.Transport | None = None
        # replies as the client's own: str when it decodes responses, else bytes
        self.reader = (hiredis.Reader(encoding=encoder.encoding, errors=encoder.encoding_errors)
                       if encoder.decode_responses else hiredis.Reader())
        self.waiting: deque[asyncio.Future] = deque()  # one per command sent, in order
        self.sent = self.received = 0  # commands written, replies read (a cancelled caller's too)
        self.lost = False

    @classmethod
    async def open(cls, options: dict, encoder) -> _Pipe:
        loop = asyncio.get_running_loop()
        timeout = options.get("socket_timeout")
        try:
            async with asyncio.timeout(options.get("socket_connect_timeout") or timeout):
                _, pipe = await loop.create_connection(lambda: cls(timeout, encoder), options.get("host", "localhost"),
                                                       options.get("port", 6379))
        except asyncio.TimeoutError:
            raise RedisTimeoutError("Timeout connecting to server") from None
        except OSError as exc:
            raise RedisConnectionError(f"Error connecting to Redis: {exc.strerror or exc}") from None
        hello = []
        if options.get("password"):
            user = options.get("username")
            hello.append(("AUTH", user, options["password"]) if user else ("AUTH", options["password"]))
        if options.get("db"):
            hello.append(("SELECT", options["db"]))
        try:
            for command in hello:
                answer = loop.create_future()
                pipe.send([(answer, command)])
                await answer
        except BaseException:
            pipe.close()
            raise
        return pipe

    def send(self, batch: list[_Pending]) -> None:
        if self.lost:
            _fail(batch, RedisConnectionError("Connection closed by server."))
            return
        packed = []
        for answer, command in batch:
            try:
                packed.append(_pack(command, self.encoder))
            except Exception as exc:  # an argument Redis cannot take: that command's answer only
                answer.set_exception(exc)
                continue
            self.waiting.append(answer)
        if not packed:
            return
        self.transport.write(b"".join(packed))
        self.sent += len(packed)
        if self.timeout:
            asyncio.get_running_loop().call_later(self.timeout, self._check, self.sent)

    def _check(self, through: int) -> None:
        # this batch's replies have not all come after socket_timeout: the connection is stuck;
        # nothing behind it can be trusted to line up, so everything waiting fails and it is closed
        if self.received < through and not self.lost:
            self._abandon(RedisTimeoutError("Timeout reading from Redis"))

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        reader.feed(data)
        waiting = self.waiting
        try:
            while True:
                reply = reader.gets()
                if reply is False:
                    return
                answer = waiting.popleft()
                self.received += 1
                if answer.done():  # its caller was cancelled meanwhile
                    continue
                if isinstance(reply, hiredis.ReplyError):
                    message = str(reply)
                    answer.set_exception(NoScriptError(message) if message.startswith("NOSCRIPT")
                                         else ResponseError(message))
                else:
                    answer.set_result(reply)
        except (hiredis.ProtocolError, IndexError):  # not Redis, or more replies than commands
            self._abandon(RedisConnectionError("Protocol error from Redis"))

    def connection_lost(self, exc) -> None:
        self._abandon(RedisConnectionError("Connection closed by server."))

    def _abandon(self, error: Exception) -> None:
        self.lost = True
        while self.waiting:
            answer = self.waiting.popleft()
            if not answer.done():
                answer.set_exception(error)
        if self.transport is not None:
            self.transport.close()

    def connection_made(self, transport) -> None:
        self.transport = transport

    def close(self) -> None:
        self._abandon(RedisConnectionError("closed"))


def _pack(command: tuple, encoder) -> bytes:
    """One command as RESP (an array of bulk strings), as redis-py's encoder would write it:
    hiredis's packer (the same bytes for str, bytes, int and float); redis-py's rules for the
    rest (its error for what Redis cannot take)."""
    try:
        return hiredis.pack_command(command)
    except TypeError:
        pass
    parts = [b"*%d\r\n" % len(command)]
    for arg in command:
        kind = type(arg)
        if kind is bytes:
            data = arg
        elif kind is str:
            data = arg.encode()
        elif kind is int:
            data = b"%d" % arg
        else:  # float, memoryview…: redis-py's rules (and its error for what Redis cannot take)
            data = encoder.encode(arg)
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


async def _reply(awaitable) -> Any:
    """One command's reply, or its error as a value (as the pipeline gives them)."""
    try:
        return await awaitable
    except aioredis.ResponseError as exc:
        return exc


__all__ = ["BatchingRedis"]
