"""`wa-worker ingress`: serve until SIGTERM/SIGINT, then drain.

Draining: /readyz answers 503 at once (the load balancer stops sending), the listener closes,
requests in flight finish (each gets its 200 after Kafka's acknowledgement, or a 503), the
producer delivers what it holds, and the process exits 0, all within DRAIN_TIMEOUT_S.
"""

from __future__ import annotations

import asyncio
import logging
import signal

import uvloop
from aiohttp import web

from wa_worker.ingress.app import Ingress
from wa_worker.ingress.config import Config, load_config_or_exit
from wa_worker.ingress.publisher import Publisher
from wa_worker.process import logs
from wa_worker.process.startup import configure_tracing_or_exit

log = logging.getLogger("wa_worker.ingress")

# Between requests on a kept-alive connection; above the usual load balancer's 60 s idle time.
KEEPALIVE_S = 75.0


def producer_config(config: Config) -> dict[str, object]:
    ack_ms = config.ingress.ingress_ack_timeout_ms
    return {
        **config.worker.producer_config(),  # acks=all, idempotence, sizes
        # A record not acknowledged in time is failed by librdkafka itself: the 503 its request
        # got is then the truth (no late copy; Meta's retry brings it, under the same id).
        "message.timeout.ms": str(ack_ms),
        "linger.ms": "2",  # each request waits for its batch: short, yet a batch under load
        # Ask for metadata soon after a broker comes back, so the 503s stop quickly.
        "reconnect.backoff.max.ms": "1000",
        **config.worker.librdkafka_options(),  # KAFKA_LINGER_MS and the like still win
    }


async def serve(config: Config) -> None:
    settings = config.ingress
    publisher = Publisher(
        producer_config(config),
        config.worker.kafka_inbound_topic,
        settings.ingress_ack_timeout_ms / 1000,
    )
    ingress = Ingress(settings, publisher, config.worker.kafka_max_message_bytes)
    runner = web.AppRunner(
        ingress.routes(),
        handle_signals=False,
        access_log=None,
        keepalive_timeout=KEEPALIVE_S,
        shutdown_timeout=config.worker.drain_timeout_s,
    )
    await runner.setup()
    site = web.TCPSite(runner, settings.ingress_host, settings.ingress_port, backlog=1024)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    port = runner.addresses[0][1] if runner.addresses else settings.ingress_port
    log.info(
        "ingress listening",
        extra={"port": port, "path": settings.ingress_path, "topic": publisher.topic},
    )
    await stop.wait()
    ingress.draining = True
    log.info("ingress draining", extra={"in_flight": ingress.in_flight})
    await site.stop()  # no new connections
    drained = await ingress.quiet(config.worker.drain_timeout_s)
    await runner.cleanup()  # closes the connections, cancelling what is still running
    left = await asyncio.to_thread(publisher.close, config.worker.drain_timeout_s)
    log.info("ingress stopped", extra={"drained": drained, "undelivered": left})


def main() -> None:
    config = load_config_or_exit()
    logs.configure(
        config.worker.log_level,
        config.worker.log_format.value == "json",
        config.worker.log_redact,
        (*config.worker.secrets(), *config.ingress.secrets()),
    )
    configure_tracing_or_exit("wa-worker-ingress")
    if not config.ingress.app_secrets():
        log.warning("INGRESS_ALLOW_UNSIGNED=true: POSTs are accepted without a signature check")
    if config.ingress.wa_verify_token is None:
        log.warning("WA_VERIFY_TOKEN is not set: Meta's verify handshake will be refused")
    uvloop.run(serve(config))
