"""`wa-worker ingress` end to end: a real ingress process, real HTTP, the real broker.

Meta's contract: the verify handshake; a 200 only for bytes Kafka acknowledged; 401 for a
signature that is missing, malformed or wrong, with nothing published; 413 for a body above
the limit, found while reading it; 503 while Kafka is away; a drain on SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from devtools import devstack
from devtools.handler_server import HandlerServer
from devtools.ingress import IngressProcess, sign
from devtools.kafka import Record, read_topic
from devtools.webhooks import messages_value, payload, text_message
from devtools.worker import ROOT, WorkerProcess
from tests.conftest import Stack, Topics

SECRET = b"ingress-test-app-secret"
TOKEN = "ingress-test-verify-token-8f3a"


@dataclass
class OwnKafka:
    """A broker of this module's own (the shared one is never stopped), started in the
    background while the other tests run: a JVM start is most of the outage test's time."""

    service: devstack.Service
    starting: threading.Thread
    port: int = 0
    error: BaseException | None = None

    def ready(self) -> int:
        self.starting.join(180)
        if self.error is not None or not self.port:
            raise RuntimeError(f"the test's own Kafka did not start: {self.error}")
        return self.port


@pytest.fixture(scope="module", autouse=True)
def own_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnKafka]:
    service, _ = devstack.services(tmp_path_factory.mktemp("own-kafka"))
    own = OwnKafka(service, threading.Thread(target=lambda: None))

    def start() -> None:
        try:
            own.port = devstack.start_kafka(0, service=service)
        except Exception as exc:  # noqa: BLE001  (reported by ready(), in the test)
            own.error = exc

    own.starting = threading.Thread(target=start, name="own-kafka", daemon=True)
    own.starting.start()
    yield own
    own.starting.join(180)
    service.stop()


@pytest.fixture
def ingress_env(stack: Stack, topics: Topics) -> dict[str, str]:
    return {
        "KAFKA_BROKERS": stack.brokers,
        **topics.env(),
        "WA_APP_SECRET": SECRET.decode(),
        "WA_VERIFY_TOKEN": TOKEN,
        "INGRESS_ACK_TIMEOUT_MS": "2000",
        "DRAIN_TIMEOUT_S": "20",
    }


@pytest.fixture
def start_ingress(
    tmp_path: Path, ingress_env: dict[str, str]
) -> Iterator[Callable[..., IngressProcess]]:
    started: list[IngressProcess] = []

    def start(**env: str) -> IngressProcess:
        ingress = IngressProcess({**ingress_env, **env}, tmp_path / f"ingress-{len(started)}.log")
        started.append(ingress.start())
        return ingress

    yield start
    for ingress in started:
        ingress.stop()


def webhook_body(wamid: str, text: str = "hello") -> bytes:
    # Spaced, key order and non-ASCII as a sender might have them: the raw bytes must survive.
    body = payload(messages_value(messages=[text_message(wamid, "31612345678", text)]))
    return json.dumps(body, indent=1, ensure_ascii=False).encode()


def post(url: str, body: bytes, signature: str | None, timeout: float = 10) -> httpx.Response:
    headers = {"Content-Type": "application/json", "User-Agent": "facebookexternalua"}
    if signature is not None:
        headers["X-Hub-Signature-256"] = signature
    return httpx.post(url + "/webhook", content=body, headers=headers, timeout=timeout)


def envelopes(records: list[Record]) -> dict[str, dict[str, Any]]:
    return {json.loads(r.value)["id"]: json.loads(r.value) for r in records}


def test_verify_handshake_echoes_the_challenge_only_for_the_right_token(
    start_ingress: Callable[..., IngressProcess],
) -> None:
    ingress = start_ingress()
    query = {"hub.mode": "subscribe", "hub.challenge": "1158201444", "hub.verify_token": TOKEN}
    right = httpx.get(ingress.url + "/webhook", params=query)
    assert (right.status_code, right.text) == (200, "1158201444")
    assert right.headers["content-type"].startswith("text/plain")
    wrong = httpx.get(ingress.url + "/webhook", params={**query, "hub.verify_token": "guess"})
    assert wrong.status_code == 403 and "1158201444" not in wrong.text
    assert httpx.get(ingress.url + "/webhook").status_code == 403
    assert httpx.put(ingress.url + "/webhook").status_code == 405
    assert httpx.get(ingress.url + "/elsewhere").status_code == 404


def test_signed_post_is_published_raw_and_the_worker_verifies_and_processes_it(
    stack: Stack,
    topics: Topics,
    start_ingress: Callable[..., IngressProcess],
    start_worker: Callable[..., WorkerProcess],
) -> None:
    ingress = start_ingress()
    body = webhook_body("wamid.ingress.1", "olá, ünïcode")
    response = post(ingress.url, body, sign(body, SECRET))
    assert (response.status_code, response.text) == (200, "OK")
    # Meta's retry of the same delivery: the same id, so the worker's dedupe sees one webhook.
    assert post(ingress.url, body, sign(body, SECRET)).status_code == 200

    (record, again) = read_topic(stack.brokers, topics.inbound, until=lambda rs: len(rs) >= 2)
    sent = json.loads(record.value)
    assert sent["body"].encode() == body  # the raw bytes, not re-serialised JSON
    assert record.key == sent["id"].encode() == again.key
    assert sent["headers"]["X-Hub-Signature-256"] == sign(body, SECRET)
    assert set(sent["headers"]) == {
        "X-Hub-Signature-256",
        "User-Agent",
        "Content-Type",
        "X-Wa-Ingress-Received-At",
    }
    assert sent["timestamp"]

    with HandlerServer() as handler:
        worker = start_worker(HANDLER_URL=handler.url, WA_APP_SECRET=SECRET.decode())
        processed = read_topic(stack.brokers, topics.processed, until=lambda rs: len(rs) >= 1)
        assert worker.running(), worker.log()
    assert [r.header("wa-event-key") for r in processed] == ["wamid.ingress.1"]
    assert [c.event_key for c in handler.calls] == ["wamid.ingress.1"]
    assert read_topic(stack.brokers, topics.dlq, timeout_s=5) == []


def test_missing_malformed_or_forged_signature_is_401_and_nothing_is_published(
    stack: Stack, topics: Topics, start_ingress: Callable[..., IngressProcess]
) -> None:
    ingress = start_ingress()
    body = webhook_body("wamid.forged")
    refused = {
        "missing": post(ingress.url, body, None),
        "empty": post(ingress.url, body, ""),
        "malformed": post(ingress.url, body, "md5=abc"),
        "no_digest": post(ingress.url, body, "sha256="),
        "other_secret": post(ingress.url, body, sign(body, b"not-the-secret")),
        "other_body": post(ingress.url, body, sign(body + b" ", SECRET)),
    }
    assert {name: r.status_code for name, r in refused.items()} == dict.fromkeys(refused, 401)
    marker = webhook_body("wamid.after")
    assert post(ingress.url, marker, sign(marker, SECRET)).status_code == 200
    published = read_topic(stack.brokers, topics.inbound)
    assert [json.loads(r.value)["body"].encode() for r in published] == [marker]
    metrics = httpx.get(ingress.url + "/metrics").text
    for outcome, count in [
        ("missing_signature", 2),
        ("malformed_signature", 2),
        ("bad_signature", 2),
        ("accepted", 1),
    ]:
        assert f'wa_ingress_requests_total{{outcome="{outcome}"}} {count}.0' in metrics
    assert "wa_ingress_body_bytes_count 7.0" in metrics
    assert "wa_ingress_publish_seconds_count 1.0" in metrics
    assert httpx.get(ingress.url + "/readyz").status_code == 200
    log = ingress.log()
    assert "outcome=missing_signature" in log and "outcome=malformed_signature" in log
    assert "outcome=bad_signature" in log
    assert SECRET.decode() not in log and "31612345678" not in log


def test_several_secrets_each_verify(start_ingress: Callable[..., IngressProcess]) -> None:
    ingress = start_ingress(WA_APP_SECRETS="app-two-secret,app-three-secret")
    body = webhook_body("wamid.rotation")
    for secret in (SECRET, b"app-two-secret", b"app-three-secret"):
        assert post(ingress.url, body, sign(body, secret)).status_code == 200
    assert post(ingress.url, body, sign(body, b"app-four")).status_code == 401


def _raw_request(port: int, head: str) -> socket.socket:
    conn = socket.create_connection(("127.0.0.1", port), timeout=10)
    conn.sendall(head.encode())
    return conn


def _status_of(conn: socket.socket) -> int:
    reply = b""
    while b"\r\n" not in reply:
        chunk = conn.recv(4096)
        if not chunk:
            break
        reply += chunk
    return int(reply.split(b" ", 2)[1])


def test_three_megabytes_accepted_and_above_the_limit_413_while_reading(
    stack: Stack, topics: Topics, start_ingress: Callable[..., IngressProcess]
) -> None:
    ingress = start_ingress()
    limit = 4 * 1024 * 1024
    big = webhook_body("wamid.big", "x" * (3 * 1000 * 1000))
    assert post(ingress.url, big, sign(big, SECRET), timeout=30).status_code == 200
    (record,) = read_topic(stack.brokers, topics.inbound, until=lambda rs: len(rs) >= 1)
    assert json.loads(record.value)["body"].encode() == big

    head = "POST /webhook HTTP/1.1\r\nHost: x\r\nX-Hub-Signature-256: sha256=00\r\n"
    # A declared length above the limit: refused before a byte of the body is sent.
    conn = _raw_request(ingress.port, head + f"Content-Length: {limit + 1}\r\n\r\n")
    assert _status_of(conn) == 413
    conn.close()
    # Chunked, no length: refused once the limit is passed, with most of the body still unsent.
    conn = _raw_request(ingress.port, head + "Transfer-Encoding: chunked\r\n\r\n")
    piece = b"x" * 65536
    for _ in range(limit // len(piece) + 1):
        conn.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
    assert _status_of(conn) == 413  # while 60 MB more could follow
    conn.close()
    assert "outcome=too_large" in ingress.log()
    assert len(read_topic(stack.brokers, topics.inbound)) == 1


def test_sigterm_drains_requests_in_flight(
    stack: Stack, topics: Topics, start_ingress: Callable[..., IngressProcess]
) -> None:
    ingress = start_ingress()
    bodies = [webhook_body(f"wamid.drain.{i}") for i in range(8)]
    conns = []
    for body in bodies:
        # Headers and half the body: each request is in flight when SIGTERM arrives.
        head = (
            f"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"X-Hub-Signature-256: {sign(body, SECRET)}\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        conn = _raw_request(ingress.port, head)
        conn.sendall(body[: len(body) // 2])
        conns.append(conn)
    time.sleep(0.5)
    ingress.send()
    time.sleep(0.5)
    with pytest.raises(OSError):  # no new connection once draining
        socket.create_connection(("127.0.0.1", ingress.port), timeout=2).close()
    statuses: list[int] = [0] * len(bodies)

    def finish(i: int) -> None:
        conns[i].sendall(bodies[i][len(bodies[i]) // 2 :])
        statuses[i] = _status_of(conns[i])

    threads = [threading.Thread(target=finish, args=(i,)) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert ingress.wait(30) == 0, ingress.log()
    # Each got 200 after its record was acknowledged, or a 5xx; here Kafka is up: all 200.
    assert statuses == [200] * len(bodies), ingress.log()
    published = read_topic(stack.brokers, topics.inbound, until=lambda rs: len(rs) >= len(bodies))
    assert sorted(json.loads(r.value)["body"].encode() for r in published) == sorted(bodies)


def test_no_app_secret_refuses_to_start(tmp_path: Path, ingress_env: dict[str, str]) -> None:
    env = {**ingress_env, "WA_APP_SECRET": ""}
    ingress = IngressProcess(env, tmp_path / "ingress.log")
    with pytest.raises(RuntimeError, match="WA_APP_SECRET: not set"):
        ingress.start()
    assert ingress.wait() == 2
    unsigned = IngressProcess({**env, "INGRESS_ALLOW_UNSIGNED": "true"}, tmp_path / "u.log")
    unsigned.start()
    try:
        assert post(unsigned.url, b'{"object": "x"}', None).status_code == 200
        assert "INGRESS_ALLOW_UNSIGNED=true" in unsigned.log()
    finally:
        unsigned.stop()


def test_readyz_fails_while_the_inbound_topic_is_missing(
    start_ingress: Callable[..., IngressProcess],
) -> None:
    ingress = start_ingress(KAFKA_INBOUND_TOPIC="no-such-topic-for-the-ingress")
    ready = httpx.get(ingress.url + "/readyz", timeout=10)
    assert ready.status_code == 503 and "not found" in ready.text
    assert httpx.get(ingress.url + "/livez").status_code == 200


def test_the_image_entrypoint_runs_the_ingress_and_its_healthcheck_passes(
    tmp_path: Path, ingress_env: dict[str, str]
) -> None:
    port = devstack.free_port()
    venv_bin = str(Path(sys.executable).parent)  # as /opt/venv/bin is on the image's PATH
    env = {
        **os.environ,
        **ingress_env,
        "PATH": f"{venv_bin}:{os.environ.get('PATH', '')}",
        "INGRESS_PORT": str(port),
        "HEALTH_PORT": str(port),  # docker-compose.yml's ingress service does the same
    }
    log = (tmp_path / "entrypoint.log").open("wb")
    proc = subprocess.Popen(
        ["sh", str(ROOT / "docker" / "entrypoint.sh"), "ingress"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        healthcheck = [sys.executable, str(ROOT / "docker" / "healthcheck.py"), "/livez"]
        deadline = time.monotonic() + 30
        while subprocess.run(healthcheck, env=env, capture_output=True).returncode != 0:
            assert proc.poll() is None and time.monotonic() < deadline, (
                tmp_path / "entrypoint.log"
            ).read_text()
            time.sleep(0.2)
        # exec'd: the process started is the ingress itself, and it drains on SIGTERM.
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert "ingress stopped" in (tmp_path / "entrypoint.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()


# Last: its broker starts in the background while the tests above run.
def test_kafka_stopped_is_503_then_200_once_back_and_nothing_is_lost(
    own_kafka: OwnKafka, topics: Topics, start_ingress: Callable[..., IngressProcess]
) -> None:
    port = own_kafka.ready()
    kafka = own_kafka.service
    brokers = f"127.0.0.1:{port}"
    try:
        devstack.create_topics(brokers, [topics.inbound], partitions=1)
        ingress = start_ingress(KAFKA_BROKERS=brokers, INGRESS_ACK_TIMEOUT_MS="1500")
        first = webhook_body("wamid.before")
        assert post(ingress.url, first, sign(first, SECRET)).status_code == 200

        kafka.stop(timeout_s=3)  # SIGKILL if its controlled shutdown takes longer
        during = [webhook_body(f"wamid.during.{i}") for i in range(3)]
        started = time.monotonic()
        statuses = [post(ingress.url, b, sign(b, SECRET)).status_code for b in during]
        assert statuses == [503] * 3, statuses
        assert time.monotonic() - started < 3 * 4  # each within the ack timeout, not hanging
        assert httpx.get(ingress.url + "/readyz").status_code == 503

        devstack.start_kafka(port, service=kafka)
        # Meta retries a 503: each delivery until it gets its 200.
        for body in during:
            deadline = time.monotonic() + 60
            while post(ingress.url, body, sign(body, SECRET)).status_code != 200:
                assert time.monotonic() < deadline, ingress.log()
                time.sleep(0.5)
        published = envelopes(read_topic(brokers, topics.inbound, until=lambda rs: len(rs) >= 4))
        assert {e["body"].encode() for e in published.values()} == {first, *during}
        assert "outcome=kafka_timeout" in ingress.log()
    finally:
        kafka.stop()
