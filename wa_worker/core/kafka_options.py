"""The `KAFKA_*` pass-through: which variables become librdkafka options, and checking them.

Any `KAFKA_*` variable that is not one of the worker's own settings is a librdkafka option
(`KAFKA_SASL_USERNAME` → `sasl.username`). Two kinds are not:

- variables Kubernetes injects for a Service whose name starts with `kafka` (a Service `kafka`
  gives `KAFKA_SERVICE_HOST`, `KAFKA_SERVICE_PORT`, `KAFKA_PORT`, `KAFKA_PORT_9092_TCP…`):
  they describe the Service, not the client, so they are ignored;
- options the worker's guarantees rest on (`group.id`, auto-commit, EOF): refused.

`check()` asks librdkafka itself about the options, so a typo or a bad value stops start-up
with the variable's name instead of failing inside a Kafka client at run time.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaException, Producer

from wa_worker.core.librdkafka_log import librdkafka_logger
from wa_worker.errors import ConfigError

# librdkafka options a user may not override through KAFKA_*: the worker's guarantees rest on them.
RESERVED = {"enable.auto.commit", "enable.partition.eof", "group.id"}

# Kubernetes' service links: <SERVICE>_SERVICE_HOST, <SERVICE>_SERVICE_PORT[_<PORT NAME>],
# <SERVICE>_PORT and <SERVICE>_PORT_<N>_<PROTO>[_PROTO|_PORT|_ADDR], for Services kafka, kafka-*.
_KUBERNETES = re.compile(
    r"KAFKA(_[A-Z0-9_]+?)?_(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?"
    r"|PORT|PORT_\d+_(TCP|UDP|SCTP)(_PROTO|_PORT|_ADDR)?)"
)
_PROPERTY = re.compile(r'property:? "([^"]+)"')
_SILENT = logging.getLogger("wa_worker.core.kafka_options.check")
_SILENT.addHandler(logging.NullHandler())
_SILENT.propagate = False


@dataclass(frozen=True)
class KafkaConfig:
    """The librdkafka config of every client the worker makes (consumers, the producer, admin
    clients), built once from the settings when they are loaded (`Settings.kafka`)."""

    brokers: str
    max_message_bytes: int
    flush_timeout_s: float
    variables: Mapping[str, str]  # the KAFKA_* pass-through, by variable name
    options: Mapping[str, str] = field(init=False)  # the same, as librdkafka keys

    def __post_init__(self) -> None:
        options = {option_name(name): value for name, value in self.variables.items()}
        object.__setattr__(self, "options", options)

    def consumer(self) -> dict[str, Any]:
        return {
            "fetch.message.max.bytes": str(self.max_message_bytes),
            "fetch.max.bytes": str(self.max_message_bytes * 2),
            "receive.message.max.bytes": str(self.max_message_bytes * 2 + 512),
            # Bytewax runs one consumer per partition: the 64 MiB default prefetch each is too much.
            "queued.max.messages.kbytes": "16384",
            "logger": librdkafka_logger(),
            **self.options,
        }

    def producer(self) -> dict[str, Any]:
        return {
            "bootstrap.servers": self.brokers,
            "enable.idempotence": "true",
            "acks": "all",
            "linger.ms": "5",
            "compression.type": "lz4",
            "message.timeout.ms": str(int(self.flush_timeout_s * 1000)),
            "message.max.bytes": str(self.max_message_bytes),
            "logger": librdkafka_logger(),
            **self.options,
        }

    def admin(self) -> dict[str, Any]:
        return {
            "bootstrap.servers": self.brokers,
            "logger": librdkafka_logger(),  # its lines go through the worker's log format
            **self.options,
        }


# KAFKA_* variables that hold credentials (SASL and key passwords, OAuth secrets, inline keys).
_SECRET = re.compile(r"KAFKA_\w*(PASSWORD|SECRET|KEY_PEM|JAAS_CONFIG)\w*")


def secret_values(variables: Mapping[str, str]) -> tuple[str, ...]:
    return tuple(v for k, v in variables.items() if _SECRET.fullmatch(k))


def is_kubernetes_service_variable(name: str) -> bool:
    return _KUBERNETES.fullmatch(name) is not None


def option_name(variable: str) -> str:
    return variable[len("KAFKA_") :].lower().replace("_", ".")


def pass_through(environ: Mapping[str, str], settings_names: Iterable[str]) -> dict[str, str]:
    """Map `KAFKA_*` variables (not settings, not Kubernetes') to librdkafka options, by the
    variable each came from; an empty value or a reserved option is a ConfigError."""
    known = set(settings_names)
    options: dict[str, str] = {}
    for name, value in environ.items():
        if not name.startswith("KAFKA_") or name in known:
            continue
        if is_kubernetes_service_variable(name):
            continue
        key = option_name(name)
        if key in RESERVED:
            raise ConfigError(f"{name}: {key} is managed by the worker and cannot be set")
        if not value.strip():
            # librdkafka would get '' (not its default): say so instead of failing later.
            raise ConfigError(f"{name}: empty; unset it to keep librdkafka's default for {key}")
        options[name] = value
    return options


def check(options_by_variable: Mapping[str, str]) -> None:
    """Let librdkafka validate the options (names and values) without connecting anywhere."""
    if not options_by_variable:
        return
    by_key = {option_name(name): name for name in options_by_variable}
    config: dict[str, object] = {option_name(k): v for k, v in options_by_variable.items()}
    try:
        Producer({**config, "log_level": 0, "logger": _SILENT})
    except (KafkaException, ValueError, TypeError) as exc:
        message = str(exc.args[0].str() if isinstance(exc, KafkaException) else exc)
        found = _PROPERTY.search(message)
        culprit = by_key.get(found.group(1)) if found else None
        if culprit is None and len(by_key) == 1:
            culprit = next(iter(options_by_variable))
        if culprit is not None:
            raise ConfigError(
                f"{culprit}: not accepted by librdkafka ({message}); every KAFKA_* variable "
                "that is not a worker setting is passed to librdkafka"
            ) from None
        names = ", ".join(sorted(options_by_variable))
        raise ConfigError(
            f"KAFKA_* options ({names}): librdkafka refuses them ({message})"
        ) from None
