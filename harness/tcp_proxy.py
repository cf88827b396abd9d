"""A TCP proxy on loopback the harness controls: the network between the worker and Redis.

    with TcpProxy("127.0.0.1", redis_port) as proxy:   # the worker's REDIS_URL: proxy.url()
        proxy.delay(200)            # every request waits 200 ms more for its reply
        proxy.partition("blackhole")  # nothing flows; connections stay open, connects succeed
        proxy.partition("reset")    # open connections reset (RST), new connects refused
        proxy.heal()                # back to a plain pipe

Pure stdlib: an asyncio loop on a thread of its own, so the controls can be called from the
harness's own (synchronous) code. The delay is added to the client-to-target direction only:
a request/reply round trip is exactly `ms` longer, and the bytes keep their order and the
link its bandwidth (each chunk is held until its own due time, not behind the one before).

A blackhole holds what is sent either way and delivers it on heal, as TCP's retransmissions
would once a partition ends (a command a client gave up on may still run: that is the case
worth testing). A reset is what a restarted host or a firewall's REJECT gives: RST on every
open connection and ECONNREFUSED on connect, until heal listens again on the same port.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

PartitionKind = Literal["blackhole", "reset"]
T = TypeVar("T")
_EOF = b""  # a chunk meaning "the sender closed its side"
_CHUNK = 65_536


@dataclass
class ProxyStats:
    accepted: int = 0
    reset: int = 0  # connections closed with RST by a reset partition
    bytes_up: int = 0  # client to target, delivered
    bytes_down: int = 0  # target to client, delivered


@dataclass(eq=False)  # hashed by identity: links live in a set
class _Link:
    """One client connection and its connection to the target."""

    client: asyncio.StreamWriter
    target: asyncio.StreamWriter | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class TcpProxy:
    def __init__(self, target_host: str, target_port: int, listen_port: int = 0) -> None:
        self.target = (target_host, target_port)
        self.stats = ProxyStats()
        self._delay_s = 0.0
        self._mode: PartitionKind | None = None
        self._links: set[_Link] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="tcp-proxy", daemon=True
        )
        self._thread.start()
        self._flowing = self._call(self._make_event())
        self._server: asyncio.Server | None = None
        self.port = listen_port
        self._call(self._listen())

    # Controls, called from any thread.

    def url(self, scheme: str = "redis", path: str = "/0") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def delay(self, ms: float) -> None:
        """Add `ms` to every round trip from now on (0: none)."""
        self._delay_s = ms / 1000

    def partition(self, kind: PartitionKind = "blackhole") -> None:
        if kind not in ("blackhole", "reset"):
            raise ValueError(f"unknown partition kind {kind!r}")
        self._mode = kind
        self._call(self._partition(kind))

    def heal(self) -> None:
        """End a partition and any delay; what a blackhole held is delivered now."""
        self._delay_s = 0.0
        self._mode = None
        self._call(self._heal())

    def close(self) -> None:
        if not self._loop.is_running():
            return
        self._call(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # The loop's side.

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _make_event(self) -> asyncio.Event:
        event = asyncio.Event()
        event.set()
        return event

    async def _listen(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # Heal after a reset listens again on the same port: clients keep their address.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        self.port = sock.getsockname()[1]
        self._server = await asyncio.start_server(self._accept, sock=sock, backlog=512)

    async def _partition(self, kind: PartitionKind) -> None:
        self._flowing.clear()
        if kind == "reset":
            await self._stop_listening()
            for link in list(self._links):
                self._reset(link)

    async def _heal(self) -> None:
        if self._server is None:
            await self._listen()
        self._flowing.set()

    async def _close(self) -> None:
        await self._stop_listening()
        for link in list(self._links):
            self._reset(link)
        # Wait for every task to end, so stopping the loop leaves none pending.
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    async def _stop_listening(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._mode == "reset":  # accepted in the instant before the listener closed
            _abort(writer)
            return
        self.stats.accepted += 1
        link = _Link(writer)
        self._links.add(link)
        # A blackhole holds the connect too: the target is reached only once traffic flows.
        await self._flowing.wait()
        if link not in self._links:  # reset while it waited
            return
        try:
            target_reader, link.target = await asyncio.open_connection(*self.target)
        except OSError:
            self._reset(link)
            return
        link.tasks = [
            asyncio.create_task(self._pump(reader, link.target, up=True, link=link)),
            asyncio.create_task(self._pump(target_reader, writer, up=False, link=link)),
        ]

    async def _pump(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        up: bool,
        link: _Link,
    ) -> None:
        """Read as fast as the peer sends; deliver each chunk at its due time, in order."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        deliver = asyncio.create_task(self._deliver(queue, sink, up, link))
        try:
            while True:
                try:
                    chunk = await source.read(_CHUNK)
                except OSError:
                    chunk = _EOF
                due = time.monotonic() + (self._delay_s if up else 0.0)
                queue.put_nowait((due, chunk))
                if chunk == _EOF:
                    break
            await deliver
        finally:
            deliver.cancel()

    async def _deliver(
        self,
        queue: asyncio.Queue[tuple[float, bytes]],
        sink: asyncio.StreamWriter,
        up: bool,
        link: _Link,
    ) -> None:
        while True:
            due, chunk = await queue.get()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            await self._flowing.wait()  # a blackhole holds the bytes here until heal
            if chunk == _EOF:
                with contextlib.suppress(OSError):
                    sink.write_eof()  # a half-close passes through; the other side may reply
                if not up:
                    self._forget(link)
                return
            try:
                sink.write(chunk)
                await sink.drain()
            except OSError:
                self._reset(link)
                return
            if up:
                self.stats.bytes_up += len(chunk)
            else:
                self.stats.bytes_down += len(chunk)

    def _forget(self, link: _Link) -> None:
        self._links.discard(link)
        for writer in (link.client, link.target):
            if writer is not None:
                writer.close()

    def _reset(self, link: _Link) -> None:
        if link in self._links:
            self.stats.reset += 1
        self._links.discard(link)
        for task in link.tasks:
            task.cancel()
        for writer in (link.client, link.target):
            if writer is not None:
                _abort(writer)


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close with RST rather than FIN: the peer sees `connection reset`, as from a REJECT."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
