"""A local HTTP handler the tests control: it records every call and answers as planned."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: Any = None
    delay_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None  # sent as it is (an HTML error page), instead of `body` as JSON
    content_type: str = "application/json"


@dataclass(frozen=True)
class Call:
    event_key: str
    conversation_key: str
    attempt: int  # 1 for the first call of this event key
    at: float  # time.monotonic()
    status: int
    idempotency_key: str | None
    traceparent: str | None = None  # the W3C trace context the worker sent, if any


Plan = Callable[[dict[str, Any], int], Reply]


def always_ok(event: dict[str, Any], attempt: int) -> Reply:
    return Reply(200, {"ok": True, "event_key": event["event_key"]})


class _Server(ThreadingHTTPServer):
    # The default backlog of 5 resets connections when a worker opens 64 at once.
    request_queue_size = 1024


class HandlerServer:
    def __init__(self, plan: Plan = always_ok) -> None:
        self.plan = plan
        self.calls: list[Call] = []
        self._lock = threading.Lock()
        self._attempts: dict[str, int] = {}
        server = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # else delayed ACKs add 40 ms to every reply

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                event = json.loads(self.rfile.read(length))
                reply = server._record(
                    event, self.headers.get("Idempotency-Key"), self.headers.get("traceparent")
                )
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                body = reply.raw if reply.raw is not None else json.dumps(reply.body).encode()
                self.send_response(reply.status)
                for k, v in reply.headers.items():
                    self.send_header(k, v)
                self.send_header("content-type", reply.content_type)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _record(
        self, event: dict[str, Any], idempotency_key: str | None, traceparent: str | None = None
    ) -> Reply:
        key = event["event_key"]
        with self._lock:
            attempt = self._attempts[key] = self._attempts.get(key, 0) + 1
        reply = self.plan(event, attempt)
        with self._lock:
            self.calls.append(
                Call(
                    key,
                    event["conversation_key"],
                    attempt,
                    time.monotonic(),
                    reply.status,
                    idempotency_key,
                    traceparent,
                )
            )
        return reply

    @property
    def url(self) -> str:
        port = self._server.server_address[1]
        return f"http://127.0.0.1:{port}/handle"

    def calls_for(self, event_key: str) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.event_key == event_key]

    def __enter__(self) -> HandlerServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
