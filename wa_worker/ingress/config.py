"""The ingress's own settings (`INGRESS_*`, `WA_VERIFY_TOKEN`, `WA_APP_SECRET(S)`).

Kafka's settings (`KAFKA_BROKERS`, `KAFKA_INBOUND_TOPIC`, the `KAFKA_*` pass-through) and the log
settings are the worker's (wa_worker/settings.py), so one `.env` configures both processes.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Annotated

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from wa_worker.errors import ConfigError
from wa_worker.settings import (
    Settings,
    _describe,
    app_secret_list,
    checked_secret_list,
    load_settings,
)

# What the envelope around a body may add, at worst, besides the body's own JSON escaping.
ENVELOPE_OVERHEAD_BYTES = 64 * 1024


class IngressSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", frozen=True
    )

    ingress_host: Annotated[str, Field(min_length=1)] = "0.0.0.0"
    ingress_port: Annotated[int, Field(ge=0, le=65535)] = 8080
    ingress_path: str = "/webhook"
    # Meta sends up to 3 MB; above this a POST is answered 413 while it is being read.
    ingress_max_body_bytes: Annotated[int, Field(ge=1024)] = 4 * 1024 * 1024
    # 200 only after Kafka acknowledged the record within this; 503 otherwise (Meta retries).
    ingress_ack_timeout_ms: Annotated[int, Field(ge=50, le=120_000)] = 5000
    # A request's body must arrive within this (slow clients hold no connection for long).
    ingress_read_timeout_ms: Annotated[int, Field(ge=100, le=300_000)] = 10_000
    # Only for local testing: accept POSTs without a signature when no app secret is set.
    ingress_allow_unsigned: bool = False
    wa_verify_token: SecretStr | None = None
    wa_app_secret: SecretStr | None = None
    # Several apps, or a rotation: every secret listed is tried.
    wa_app_secrets: SecretStr | None = None

    @field_validator("ingress_path")
    @classmethod
    def _path(cls, value: str) -> str:
        reserved = {"/livez", "/readyz", "/metrics"}
        if not value.startswith("/") or value in reserved:
            raise ValueError("must start with / and not be /livez, /readyz or /metrics")
        return value

    @field_validator("wa_app_secrets")
    @classmethod
    def _secret_list(cls, value: SecretStr | None) -> SecretStr | None:
        return checked_secret_list(value)

    @model_validator(mode="after")
    def _signed_or_told_not_to(self) -> IngressSettings:
        if not self.app_secrets() and not self.ingress_allow_unsigned:
            raise ValueError(
                "WA_APP_SECRET: not set; the ingress verifies every POST with it "
                "(WA_APP_SECRETS for several; INGRESS_ALLOW_UNSIGNED=true only for local tests)"
            )
        return self

    def app_secrets(self) -> tuple[bytes, ...]:
        return app_secret_list(self.wa_app_secret, self.wa_app_secrets)

    def secrets(self) -> tuple[str, ...]:
        """Values logs must never print."""
        token = [self.wa_verify_token.get_secret_value()] if self.wa_verify_token else []
        return (*(s.decode() for s in self.app_secrets()), *token)


@dataclass(frozen=True)
class Config:
    ingress: IngressSettings
    worker: Settings  # Kafka and logs


def load_config() -> Config:
    """Both halves, validated; ConfigError names the first bad setting."""
    try:
        ingress = IngressSettings()
    except ValidationError as exc:
        raise ConfigError("; ".join(_describe(e) for e in exc.errors())) from None
    worker = load_settings()
    if ingress.ingress_max_body_bytes + ENVELOPE_OVERHEAD_BYTES > worker.kafka_max_message_bytes:
        raise ConfigError(
            f"INGRESS_MAX_BODY_BYTES: {ingress.ingress_max_body_bytes} leaves no room for the "
            f"envelope in KAFKA_MAX_MESSAGE_BYTES ({worker.kafka_max_message_bytes})"
        )
    return Config(ingress, worker)


def load_config_or_exit() -> Config:
    try:
        return load_config()
    except ConfigError as exc:
        print(f"wa-worker ingress: invalid setting {exc}", file=sys.stderr)
        raise SystemExit(2) from None
