"""Every setting of the worker, read once from the environment and `.env`.

Names and defaults follow the original worker's README (the contract): `KAFKA_BROKERS`,
`REDIS_URL`, `MAX_RETRIES`, `RETRY_DELAY_MS`, the three topics and `HEALTH_PORT`. Any other
`KAFKA_*` variable is passed to librdkafka (`KAFKA_SECURITY_PROTOCOL=SASL_SSL` becomes
`security.protocol`), so SASL/SSL clusters need no code change.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from enum import StrEnum
from itertools import combinations
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from dotenv import dotenv_values
from pydantic import (
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from wa_worker.core import kafka_options
from wa_worker.errors import ConfigError


class StartOffset(StrEnum):
    EARLIEST = "earliest"
    LATEST = "latest"


class StaleEvents(StrEnum):
    DELIVER = "deliver"  # the handler is called, told by the event's `stale: true`
    SKIP = "skip"  # a processed record saying so, no handler call


class StatusSuperseded(StrEnum):
    DELIVER = "deliver"  # the handler is called, told by the event's `superseded: true`
    SKIP = "skip"  # a processed record saying so, no handler call


class LogFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


class RedisMode(StrEnum):
    AUTO = "auto"  # sentinel when REDIS_SENTINELS is set, else asks the node (cluster_enabled)
    STANDALONE = "standalone"
    CLUSTER = "cluster"
    SENTINEL = "sentinel"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", frozen=True
    )
    _kafka: kafka_options.KafkaConfig = PrivateAttr()

    # Kafka
    kafka_brokers: str = "127.0.0.1:9092"
    kafka_inbound_topic: str = Field("whatsapp.webhook.inbound", min_length=1)
    kafka_processed_topic: str = Field("whatsapp.webhook.processed", min_length=1)
    kafka_dlq_topic: str = Field("whatsapp.webhook.dlq", min_length=1)
    kafka_group_id: str = Field("wa-worker", min_length=1)
    kafka_start_offset: StartOffset = StartOffset.EARLIEST
    kafka_batch_size: int = Field(1000, ge=1, le=100_000)
    # Meta sends payloads up to 3 MB; the envelope adds headers around it.
    kafka_max_message_bytes: int = Field(5_242_880, ge=1_048_576)
    # How long a batch may wait for Kafka's acknowledgement (a broker outage stalls the
    # worker this long, then it stops loudly); also the producer's message.timeout.ms.
    kafka_flush_timeout_s: float = Field(300.0, gt=0)
    # How long start-up waits for a broker to answer (a cluster restarting with the worker);
    # refused credentials or certificates stop it at once.
    kafka_startup_wait_s: float = Field(60.0, gt=0)

    # Redis (dedupe claims and done markers)
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_key_prefix: str = Field("wa:", min_length=1)
    dedupe_ttl_days: float = Field(7.0, gt=0)
    claim_lease_ms: int = Field(30_000, ge=1000)
    redis_timeout_ms: int = Field(2000, ge=10)
    # Topology and TLS (README "Redis topologies"); REDIS_URL keeps user, password, db, TLS.
    redis_mode: RedisMode = RedisMode.AUTO
    redis_sentinels: str | None = None
    redis_sentinel_master: str = Field("mymaster", min_length=1)
    redis_sentinel_password: SecretStr | None = None
    redis_tls_ca_file: str | None = None
    redis_tls_cert_file: str | None = None
    redis_tls_key_file: str | None = None

    # Retry
    max_retries: int = Field(3, ge=0, le=100)
    retry_delay_ms: int = Field(1000, ge=0)
    retry_max_delay_ms: int = Field(300_000, ge=0)
    retry_jitter: float = Field(0.2, ge=0, le=1)
    # Seconds after the event's own time past which it is not retried (deadline_exceeded).
    # Unset: inbound customer messages get the 24-hour window, other events no deadline.
    retry_deadline_s: float | None = Field(None, gt=0)
    # Events older than this when first read are `stale` (unset: never).
    max_event_age_s: float | None = Field(None, gt=0)
    stale_events: StaleEvents = StaleEvents.DELIVER

    # Handler
    handler_url: str | None = None
    handler_callable: str | None = None
    handler_timeout_ms: int = Field(10_000, ge=1)
    handler_concurrency: int = Field(64, ge=1, le=10_000)
    # Characters of a handler's error body kept (masked, one line) in reasons and logs; 0 = none.
    handler_error_excerpt_chars: int = Field(200, ge=0, le=1000)
    # Events read and not yet finished, per process; input waits at this many (bounds memory).
    max_events_in_progress: int = Field(20_000, ge=100)
    handler_ordered: bool = True
    # How long a conversation's events wait to be put in Meta's timestamp order (0: off).
    reorder_window_ms: int = Field(300, ge=0, le=60_000)
    # A status older than one already seen for its message (core/status_order.py).
    status_superseded: StatusSuperseded = StatusSuperseded.DELIVER
    handler_health_url: str | None = None
    breaker_enabled: bool = True
    breaker_window: int = Field(20, ge=1, le=10_000)
    breaker_failure_ratio: float = Field(0.9, gt=0, le=1)
    breaker_min_calls: int = Field(10, ge=1)
    breaker_probe_interval_ms: int = Field(5000, ge=10)

    # Webhook signature
    wa_app_secret: SecretStr | None = None
    # Several apps, or a rotation (as the ingress): a body signed by any of them is genuine.
    wa_app_secrets: SecretStr | None = None

    # Operations
    health_port: int = Field(4900, ge=0, le=65535)
    recovery_dir: str = ".state/recovery"
    snapshot_interval_s: int = Field(5, ge=1)
    recovery_backup_interval_s: int = Field(0, ge=0)
    # Fixed when the directory is created: the most Bytewax workers this flow will ever run.
    recovery_partitions: int = Field(8, ge=1, le=1024)
    log_level: str = "INFO"
    log_format: LogFormat = LogFormat.TEXT
    # false only for debugging: logs then show phone numbers and secrets.
    log_redact: bool = True
    log_summary_interval_s: float = Field(60.0, gt=0)
    drain_timeout_s: float = Field(30.0, ge=0)
    offsets_report_interval_s: float = Field(5.0, gt=0)

    @field_validator("retry_deadline_s", "max_event_age_s", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("kafka_brokers")
    @classmethod
    def _brokers_are_host_ports(cls, value: str) -> str:
        brokers = [b.strip() for b in value.split(",") if b.strip()]
        if not brokers:
            raise ValueError("must list at least one host:port")
        for broker in brokers:
            host, sep, port = broker.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"{broker!r} is not host:port")
        return ",".join(brokers)

    @field_validator("redis_url")
    @classmethod
    def _redis_url_scheme(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @field_validator("redis_sentinels")
    @classmethod
    def _sentinels_are_host_ports(cls, value: str | None) -> str | None:
        return cls._brokers_are_host_ports(value) if value and value.strip() else None

    @field_validator("redis_tls_ca_file", "redis_tls_cert_file", "redis_tls_key_file")
    @classmethod
    def _tls_file_exists(cls, value: str | None) -> str | None:
        if value and not os.path.isfile(value):
            raise ValueError(f"no such file {value!r}")
        return value or None

    @field_validator("handler_url", "handler_health_url")
    @classmethod
    def _handler_url_http(cls, value: str | None) -> str | None:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        if value and not urlsplit(value).hostname:
            raise ValueError("has no host (e.g. http://handler:8080/events)")
        return value or None

    @field_validator("handler_callable")
    @classmethod
    def _callable_spec(cls, value: str | None) -> str | None:
        if value and (value.count(":") != 1 or not all(value.split(":"))):
            raise ValueError("must be 'module:function'")
        return value or None

    @field_validator("wa_app_secrets")
    @classmethod
    def _secret_list(cls, value: SecretStr | None) -> SecretStr | None:
        return checked_secret_list(value)

    @field_validator("recovery_dir")
    @classmethod
    def _recovery_dir_given(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty (recovery files would land in the current folder)")
        return value

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        if value.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
        return value.upper()

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.handler_url and self.handler_callable:
            raise ValueError("HANDLER_URL and HANDLER_CALLABLE are exclusive: set one")
        topics = {
            "KAFKA_INBOUND_TOPIC": self.kafka_inbound_topic,
            "KAFKA_PROCESSED_TOPIC": self.kafka_processed_topic,
            "KAFKA_DLQ_TOPIC": self.kafka_dlq_topic,
        }
        for first, second in combinations(topics, 2):
            if topics[first] == topics[second]:
                # the worker would read its own output (and `topics create` cannot create both)
                raise ValueError(f"{second} must differ from {first} (both {topics[first]!r})")
        if self.retry_delay_ms > self.retry_max_delay_ms:
            raise ValueError(
                f"RETRY_DELAY_MS ({self.retry_delay_ms}) must not exceed "
                f"RETRY_MAX_DELAY_MS ({self.retry_max_delay_ms})"
            )
        if self.breaker_min_calls > self.breaker_window:
            # the window could never hold enough calls: the breaker would never open
            raise ValueError(
                f"BREAKER_MIN_CALLS ({self.breaker_min_calls}) must not exceed "
                f"BREAKER_WINDOW ({self.breaker_window})"
            )
        self._redis_consistent()
        if self.max_events_in_progress < self.handler_concurrency:
            raise ValueError(
                f"MAX_EVENTS_IN_PROGRESS ({self.max_events_in_progress}) is below "
                f"HANDLER_CONCURRENCY ({self.handler_concurrency}): calls could never all be used"
            )
        return self

    def _redis_consistent(self) -> None:
        if self.redis_mode is RedisMode.SENTINEL and not self.redis_sentinels:
            raise ValueError("REDIS_MODE=sentinel needs REDIS_SENTINELS (host:port,...)")
        if self.redis_sentinels and self.redis_mode not in (RedisMode.AUTO, RedisMode.SENTINEL):
            raise ValueError(f"REDIS_SENTINELS is set but REDIS_MODE is {self.redis_mode.value}")
        if bool(self.redis_tls_cert_file) != bool(self.redis_tls_key_file):
            raise ValueError("REDIS_TLS_CERT_FILE and REDIS_TLS_KEY_FILE go together: set both")
        tls_files = self.redis_tls_ca_file or self.redis_tls_cert_file
        if tls_files and not self.redis_url.startswith("rediss://"):
            # the files would be ignored and the connection would go out in clear text
            raise ValueError("REDIS_TLS_* files are set but REDIS_URL is not rediss://")

    @model_validator(mode="after")
    def _build_kafka_config(self) -> Settings:
        # Once, at load: `.env` and the environment are read here, not again for each client.
        # A ConfigError (a bad KAFKA_* variable) passes through pydantic as it is.
        known = {name.upper() for name in type(self).model_fields}
        env_file = {k: v for k, v in dotenv_values(".env").items() if v is not None}
        self._kafka = kafka_options.KafkaConfig(
            brokers=self.kafka_brokers,
            max_message_bytes=self.kafka_max_message_bytes,
            flush_timeout_s=self.kafka_flush_timeout_s,
            variables=kafka_options.pass_through({**env_file, **os.environ}, known),
        )
        return self

    def app_secrets(self) -> tuple[bytes, ...]:
        """WA_APP_SECRET and each of WA_APP_SECRETS, once each."""
        return app_secret_list(self.wa_app_secret, self.wa_app_secrets)

    def secrets(self) -> tuple[str, ...]:
        """Values logs and tools must never print (the app secrets, Redis and Kafka passwords)."""
        given = (self.wa_app_secret, self.redis_sentinel_password)
        values = [s.get_secret_value() for s in given if s]
        values += [s.decode() for s in self.app_secrets()]
        if password := urlsplit(self.redis_url).password:
            values.append(unquote(password))
        values += kafka_options.secret_values(self._kafka.variables)
        return tuple(v for v in values if v)

    @property
    def broker_list(self) -> list[str]:
        return self.kafka_brokers.split(",")

    @property
    def kafka(self) -> kafka_options.KafkaConfig:
        """Every Kafka client's config, built once when these settings were loaded."""
        return self._kafka

    def librdkafka_variables(self) -> dict[str, str]:
        """Extra `KAFKA_*` environment variables by name (see wa_worker/core/kafka_options.py)."""
        return dict(self._kafka.variables)

    def librdkafka_options(self) -> dict[str, str]:
        """Extra `KAFKA_*` environment variables, as librdkafka keys (SASL, SSL, tuning)."""
        return dict(self._kafka.options)

    def consumer_config(self) -> dict[str, Any]:
        return self._kafka.consumer()

    def producer_config(self) -> dict[str, Any]:
        return self._kafka.producer()

    def admin_config(self) -> dict[str, Any]:
        return self._kafka.admin()


def checked_secret_list(value: SecretStr | None) -> SecretStr | None:
    """WA_APP_SECRETS (worker and ingress): a comma list without empty entries."""
    if value is not None and not all(s.strip() for s in value.get_secret_value().split(",")):
        raise ValueError("has an empty entry (a comma list of app secrets)")
    return value


def app_secret_list(one: SecretStr | None, listed: SecretStr | None) -> tuple[bytes, ...]:
    """WA_APP_SECRET and each of WA_APP_SECRETS, once each: any of them may sign a webhook."""
    more = listed.get_secret_value().split(",") if listed else []
    first = [one.get_secret_value()] if one else []
    return tuple(dict.fromkeys(s.strip().encode() for s in [*first, *more] if s.strip()))


def _describe(error: Mapping[str, Any]) -> str:
    loc = [str(part) for part in error.get("loc", ()) if part != "__root__"]
    name = loc[0].upper() if loc else "settings"
    message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    got = error.get("input")
    shown = "" if not loc or isinstance(got, dict) else f" (got {_shown(name, got)!r})"
    return f"{name}: {message}{shown}" if loc else message


_SECRET_NAME = re.compile(r"SECRET|PASSWORD|TOKEN|(^|_)KEY$")


def _shown(name: str, value: Any) -> Any:
    """A rejected value as the error line may show it: never a secret, nor a URL's password."""
    if _SECRET_NAME.search(name):
        return "<hidden>"
    if isinstance(value, str) and "@" in value and "://" in value:
        parts = urlsplit(value)
        if parts.password:
            host = parts.netloc.rpartition("@")[2]
            user = f"{parts.username}:" if parts.username else ":"
            return urlunsplit(parts._replace(netloc=f"{user}***@{host}"))
    return value


def load_settings(**overrides: Any) -> Settings:
    """Read and validate every setting; raise ConfigError naming the first bad one."""
    try:
        settings = Settings(**overrides)
        kafka_options.check(settings.librdkafka_variables())
    except ValidationError as exc:
        raise ConfigError("; ".join(_describe(e) for e in exc.errors())) from None
    return settings


def load_settings_or_exit() -> Settings:
    """At start-up: one clear line naming the bad setting, exit code 2, no traceback."""
    try:
        return load_settings()
    except ConfigError as exc:
        print(f"wa-worker: invalid setting {exc}", file=sys.stderr)
        raise SystemExit(2) from None
