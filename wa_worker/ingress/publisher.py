"""The inbound topic's producer, awaited from the event loop.

One thread polls librdkafka for delivery reports and hands each poll's reports to the loop in
one `call_soon_threadsafe` (one wake-up per batch, not per record), where they settle their
requests' futures. No thread per request, and `produce` itself never blocks: a full local queue
is an immediate "unavailable".
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

log = logging.getLogger("wa_worker.ingress.kafka")

# A record's headers, as confluent-kafka takes them.
RecordHeaders = list[tuple[str, str | bytes | None]]


class Unavailable(Exception):
    """Kafka did not acknowledge the record: the request is answered 503 (Meta retries)."""

    def __init__(self, outcome: str, detail: str) -> None:
        super().__init__(detail)
        self.outcome = outcome


class Publisher:
    def __init__(self, config: dict[str, Any], topic: str, ack_timeout_s: float) -> None:
        self.topic = topic
        self._ack_timeout_s = ack_timeout_s
        self.fatal: str | None = None
        self._producer = Producer({**config, "error_cb": self._on_error})
        self._stop = threading.Event()
        self._reports: list[tuple[asyncio.Future[None], KafkaError | None]] = []
        self._reports_lock = threading.Lock()  # flush() at close reports on another thread
        self._loop: asyncio.AbstractEventLoop | None = None
        self._poller = threading.Thread(target=self._poll, name="ingress-kafka-poll", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.1)  # waits without the GIL; runs the delivery callbacks
            self._hand_over()

    def _hand_over(self) -> None:
        with self._reports_lock:
            reports, self._reports = self._reports, []
        if reports and self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(_settle_all, reports)

    def _on_error(self, error: KafkaError) -> None:
        if error.fatal():
            # An idempotent producer that hit a fatal error accepts nothing more: /livez fails
            # and the orchestrator restarts the process.
            self.fatal = error.str()
            log.error("kafka producer failed for good", extra={"error": error.str()})

    async def publish(self, key: bytes, value: bytes, headers: RecordHeaders | None = None) -> None:
        """Return once the record is acknowledged (acks=all); raise Unavailable otherwise.
        `headers`: the request's trace context, when tracing is on."""
        if self.fatal is not None:
            raise Unavailable("kafka_unavailable", self.fatal)
        self._loop = loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def delivered(error: KafkaError | None, _message: Message) -> None:
            with self._reports_lock:  # on the poll thread, inside poll()
                self._reports.append((done, error))

        try:
            self._producer.produce(
                self.topic, value, key, on_delivery=delivered, headers=list(headers or ())
            )
        except BufferError:
            raise Unavailable("kafka_backlog", "the producer's local queue is full") from None
        except KafkaException as exc:
            raise Unavailable("kafka_refused", exc.args[0].str()) from None
        try:
            # librdkafka times the record out itself (message.timeout.ms); this is a backstop.
            await asyncio.wait_for(done, self._ack_timeout_s + 1.0)
        except TimeoutError:
            raise Unavailable("kafka_timeout", "no delivery report in time") from None

    def ready(self, timeout_s: float) -> str | None:
        """None when a broker answers and the topic exists; else why not. Blocking."""
        if self.fatal is not None:
            return f"producer failed: {self.fatal}"
        try:
            topics = self._producer.list_topics(self.topic, timeout=timeout_s).topics
        except KafkaException as exc:
            return f"kafka unreachable: {exc.args[0].str()}"
        found = topics.get(self.topic)
        if found is None or found.error is not None:
            return f"topic {self.topic} not found"
        return None

    def close(self, timeout_s: float) -> int:
        """Deliver what is queued (within the time), stop polling; the records left."""
        deadline = time.monotonic() + timeout_s
        left = self._producer.flush(max(0.0, deadline - time.monotonic()))
        self._stop.set()
        self._poller.join(timeout_s)
        self._hand_over()
        return int(left)


def _settle_all(reports: list[tuple[asyncio.Future[None], KafkaError | None]]) -> None:
    for done, error in reports:
        if done.done():  # the request already gave up (timeout)
            continue
        if error is None:
            done.set_result(None)
        else:
            timed_out = error.code() == KafkaError._MSG_TIMED_OUT
            done.set_exception(
                Unavailable("kafka_timeout" if timed_out else "kafka_error", error.str())
            )
