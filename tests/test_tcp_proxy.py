"""The harness's TCP proxy against real sockets: an echo server on loopback, and real Redis."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest
import redis

from harness.tcp_proxy import TcpProxy
from tests.conftest import Stack


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65_536):
            self.request.sendall(data)


class _EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@pytest.fixture
def echo_port() -> Iterator[int]:
    server = _EchoServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture
def proxy(echo_port: int) -> Iterator[TcpProxy]:
    with TcpProxy("127.0.0.1", echo_port) as proxy:
        yield proxy


def _connect(proxy: TcpProxy, timeout_s: float = 2.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout_s)


def _round_trip(sock: socket.socket, payload: bytes) -> tuple[bytes, float]:
    started = time.monotonic()
    sock.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = sock.recv(65_536)
        if not chunk:
            break
        got += chunk
    return got, time.monotonic() - started


def test_forwards_both_ways_in_order(proxy: TcpProxy) -> None:
    payload = bytes(range(256)) * 4000  # 1 MB: many chunks, order must hold
    with _connect(proxy) as sock:
        got, _ = _round_trip(sock, payload)
    assert got == payload
    assert proxy.stats.accepted == 1
    # The proxy counts a chunk after writing it: the client may read it a moment earlier.
    deadline = time.monotonic() + 2
    while proxy.stats.bytes_down < len(payload) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proxy.stats.bytes_up == proxy.stats.bytes_down == len(payload)


def test_delay_adds_to_each_round_trip_and_heal_removes_it(proxy: TcpProxy) -> None:
    with _connect(proxy) as sock:
        _, plain = _round_trip(sock, b"ping")
        proxy.delay(300)
        delayed = [_round_trip(sock, b"ping")[1] for _ in range(3)]
        proxy.heal()
        _, healed = _round_trip(sock, b"ping")
    assert plain < 0.1
    assert all(0.29 <= d < 0.6 for d in delayed), delayed
    assert healed < 0.1


def test_delay_keeps_bandwidth(proxy: TcpProxy) -> None:
    """Chunks sent back to back each wait the delay once, not one after another."""
    proxy.delay(200)
    with _connect(proxy) as sock:
        started = time.monotonic()
        for _ in range(20):
            sock.sendall(b"x" * 100)
            time.sleep(0.01)
        got = b""
        while len(got) < 2000:
            got += sock.recv(65_536)
        elapsed = time.monotonic() - started
    assert got == b"x" * 2000
    assert 0.39 <= elapsed < 0.9  # 20 × 10 ms of sending + one 200 ms delay, not 20 of them


def test_blackhole_holds_traffic_and_delivers_it_on_heal(proxy: TcpProxy) -> None:
    with _connect(proxy) as sock:
        _round_trip(sock, b"before")
        proxy.partition("blackhole")
        sock.settimeout(0.5)
        sock.sendall(b"held")
        with pytest.raises(TimeoutError):
            sock.recv(10)  # the connection stays open; nothing comes back
        with _connect(proxy, timeout_s=0.5) as newcomer:  # a connect succeeds, as in a blackhole
            newcomer.sendall(b"new")
            with pytest.raises(TimeoutError):
                newcomer.recv(10)
            proxy.heal()
            newcomer.settimeout(2)
            assert newcomer.recv(10) == b"new"
        sock.settimeout(2)
        assert sock.recv(10) == b"held"  # what was sent in the partition arrives after it


def test_reset_refuses_and_resets_until_heal(proxy: TcpProxy) -> None:
    port = proxy.port
    with _connect(proxy) as sock:
        _round_trip(sock, b"before")
        proxy.partition("reset")
        with pytest.raises(ConnectionResetError):
            sock.sendall(b"x")
            sock.recv(10)
    with pytest.raises(ConnectionRefusedError):
        _connect(proxy)
    assert proxy.stats.reset == 1
    proxy.heal()
    assert proxy.port == port  # listening again where clients expect it
    with _connect(proxy) as sock:
        assert _round_trip(sock, b"after")[0] == b"after"


def test_unknown_partition_kind_is_refused(proxy: TcpProxy) -> None:
    with pytest.raises(ValueError, match="unknown partition kind"):
        proxy.partition("drop")  # type: ignore[arg-type]


def test_real_redis_through_the_proxy(stack: Stack) -> None:
    """What the worker's client sees: a timeout in a blackhole, a connection error on reset."""
    target = redis.Redis.from_url(stack.redis_url)
    host = target.connection_pool.connection_kwargs["host"]
    port = int(target.connection_pool.connection_kwargs["port"])
    with TcpProxy(host, port) as proxy:
        client = redis.Redis.from_url(proxy.url(), socket_timeout=0.5, socket_connect_timeout=0.5)
        assert client.ping()
        proxy.delay(200)
        started = time.monotonic()
        client.ping()
        assert time.monotonic() - started >= 0.19
        proxy.heal()
        proxy.partition("blackhole")
        with pytest.raises(redis.TimeoutError):
            client.ping()
        proxy.heal()
        assert client.ping()  # redis-py reconnects: the held connection was given up
        proxy.partition("reset")
        with pytest.raises(redis.ConnectionError):
            client.ping()
        proxy.heal()
        assert client.ping()
        client.close()
    target.close()
