"""Reach Kafka once at start-up, and name the setting to fix when the brokers refuse us.

librdkafka retries a refused login (or an untrusted certificate) forever, reporting it only to
the error callback: without this the worker would wait and retry without end on a wrong
KAFKA_SASL_PASSWORD.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import KafkaError
from confluent_kafka.admin import AdminClient

from wa_worker.errors import ConfigError


def culprit(error: KafkaError, variables: Mapping[str, str]) -> str | None:
    """The setting an error from the brokers points at, or None when it is no setting's fault."""
    code, text = error.code(), error.str()
    # A connection cut during the handshake is also reported as _AUTHENTICATION / _SSL:
    # only the brokers' refusal is a setting's fault.
    if code == KafkaError._AUTHENTICATION and "Authentication failed" in text:
        if "KAFKA_SASL_PASSWORD" in variables:
            return "KAFKA_SASL_PASSWORD"
        return "KAFKA_SECURITY_PROTOCOL"  # the brokers want a login we do not give
    if code == KafkaError._SSL and "certificate verify failed" in text:
        return "KAFKA_SSL_CA_LOCATION" if "KAFKA_SSL_CA_LOCATION" in variables else "KAFKA_SSL"
    return None


def connect(
    admin_config: Mapping[str, Any],
    variables: Mapping[str, str],
    timeout_s: float,
    on_wait: Callable[[Exception], None] | None = None,
) -> Any:
    """Cluster metadata within `timeout_s`; a ConfigError naming the setting as soon as the
    brokers refuse the credentials or certificate. Brokers that cannot be reached (down, or
    restarting as the worker starts) are asked again until `timeout_s`, calling `on_wait` once
    with the first error; then librdkafka's last error, or TimeoutError when nothing answered."""
    refused: list[KafkaError] = []

    def on_error(error: KafkaError) -> None:
        if culprit(error, variables):
            refused.append(error)

    config: dict[str, Any] = {**admin_config, "error_cb": on_error}
    admin = AdminClient(config)

    def check_refused(wait_s: float) -> None:
        settle = time.monotonic() + wait_s
        while True:
            admin.poll(0.05)  # runs the error callback
            if refused:
                error = refused[0]
                user = variables.get("KAFKA_SASL_USERNAME")
                auth = error.code() == KafkaError._AUTHENTICATION
                who = f" (user {user})" if user and auth else ""
                raise ConfigError(
                    f"{culprit(error, variables)}: Kafka refused the connection{who}: {error.str()}"
                )
            if time.monotonic() >= settle:
                return

    deadline = time.monotonic() + timeout_s
    waited = False
    while time.monotonic() < deadline:
        try:
            metadata = admin.list_topics(timeout=min(1.0, max(0.1, deadline - time.monotonic())))
        except Exception as exc:
            # A refused login also ends in "all brokers down": look for the refusal first.
            check_refused(min(1.0, max(0.0, deadline - time.monotonic())))
            if time.monotonic() >= deadline:
                raise
            if on_wait is not None and not waited:
                on_wait(exc)
            waited = True
            continue
        check_refused(0)
        if metadata.brokers:
            return metadata
    raise TimeoutError(f"no broker answered within {timeout_s:g}s")
