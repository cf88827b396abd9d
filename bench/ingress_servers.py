"""HTTP servers compared for the ingress, each doing the ingress's request work without Kafka:
read the body, check its X-Hub-Signature-256, build the envelope, answer 200.

    python -m bench.ingress_servers NAME PORT     # NAME: one of SERVERS

`ceiling` is the ingress itself (wa_worker/ingress/app.py, on uvloop as `wa-worker ingress`
runs it) with a publisher that acknowledges at once: the HTTP ceiling of the real code. The
others run the same pure steps (wa_worker/ingress/envelope.py) in a handler as small as each
server allows: `aiohttp-bare` (one aiohttp route), `uvicorn+httptools` and `granian` (a
minimal ASGI app).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from wa_worker.ingress.envelope import build_envelope, envelope_id, signature_problem

SECRET = b"bench-secret"
SECRETS = (SECRET,)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class InstantPublisher:
    """Stands in for Kafka: every record acknowledged at once (the ceiling)."""

    topic = "none"
    fatal: str | None = None

    async def publish(self, key: bytes, value: bytes) -> None:
        return None


def bare_work(body: bytes, headers: dict[str, str]) -> int:
    """The ingress's pure steps on one request: the status it would answer."""
    if signature_problem(body, headers.get("X-Hub-Signature-256"), SECRETS) is not None:
        return 401
    build_envelope(body.decode(), envelope_id(body), headers, datetime.now(UTC))
    return 200


async def asgi_app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    chunks = []
    more = True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    body = b"".join(chunks)
    headers = {k.decode().title(): v.decode() for k, v in scope["headers"]}
    status = bare_work(body, headers)
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": b"OK"})


def run_aiohttp(port: int, uvloop: bool) -> None:
    from aiohttp import web
    from pydantic import SecretStr

    from wa_worker.ingress.app import Ingress
    from wa_worker.ingress.config import IngressSettings

    settings = IngressSettings(wa_app_secret=SecretStr(SECRET.decode()))
    ingress = Ingress(settings, InstantPublisher(), 5_242_880)  # type: ignore[arg-type]
    if uvloop:
        import uvloop as loops

        asyncio.set_event_loop_policy(loops.EventLoopPolicy())
    web.run_app(ingress.routes(), host="127.0.0.1", port=port, access_log=None, print=None)


def run_aiohttp_bare(port: int) -> None:
    """aiohttp with a handler as small as the ASGI app's: the server's own cost."""
    from aiohttp import web

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        return web.Response(status=bare_work(body, dict(request.headers)), text="OK")

    app = web.Application()
    app.router.add_post("/webhook", handle)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def run_uvicorn(port: int) -> None:
    import uvicorn

    uvicorn.run(
        asgi_app, host="127.0.0.1", port=port, log_level="warning", access_log=False,
        loop="uvloop", http="httptools",
    )  # fmt: skip


def run_granian(port: int) -> None:
    from granian import Granian
    from granian.constants import Interfaces

    Granian(
        "bench.ingress_servers:asgi_app", address="127.0.0.1", port=port,
        interface=Interfaces.ASGI, workers=1, log_enabled=False,
    ).serve()  # fmt: skip


SERVERS: dict[str, Callable[[int], None]] = {
    "aiohttp-bare": run_aiohttp_bare,
    # The ingress's app on its loop (uvloop): the ceiling; on asyncio's loop, for the loop's share.
    "ceiling": lambda port: run_aiohttp(port, uvloop=True),
    "ceiling-asyncio": lambda port: run_aiohttp(port, uvloop=False),
    "uvicorn+httptools": run_uvicorn,
    "granian": run_granian,
}

if __name__ == "__main__":
    SERVERS[sys.argv[1]](int(sys.argv[2]))
