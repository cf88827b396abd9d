"""The ingress's pure rules and settings: handshake, signature verdicts, the envelope (read back
by the worker's own parser), and start-up validation."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from devtools.ingress import sign
from devtools.webhooks import messages_value, payload, text_message
from devtools.worker import ROOT
from wa_worker.errors import ConfigError
from wa_worker.ingress.config import IngressSettings, load_config
from wa_worker.ingress.envelope import (
    build_envelope,
    envelope_id,
    handshake,
    kept_headers,
    signature_problem,
)
from wa_worker.models.records import DeadLetter, WebhookEvent
from wa_worker.operators.parse import parse_record

SECRET = b"pure-test-secret"
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def test_handshake_needs_subscribe_the_token_and_a_challenge() -> None:
    good = {"hub.mode": "subscribe", "hub.verify_token": "tok-123", "hub.challenge": "42"}
    assert handshake(good, b"tok-123") == "42"
    assert handshake({**good, "hub.verify_token": "tok-124"}, b"tok-123") is None
    assert handshake({**good, "hub.mode": "unsubscribe"}, b"tok-123") is None
    assert handshake({k: v for k, v in good.items() if k != "hub.challenge"}, b"tok-123") is None
    assert handshake(good, None) is None  # no token configured: nobody can subscribe
    assert handshake({**good, "hub.verify_token": "tök"}, "tök".encode()) == "42"


def test_signature_verdicts_over_several_secrets() -> None:
    body = b'{"object": "whatsapp_business_account"}'
    secrets = (b"old-secret", SECRET)
    assert signature_problem(body, sign(body, SECRET), secrets) is None
    assert signature_problem(body, sign(body, b"old-secret"), secrets) is None
    assert signature_problem(body, None, secrets) == "missing_signature"
    assert signature_problem(body, "", secrets) == "missing_signature"
    assert signature_problem(body, "sha1=abc", secrets) == "malformed_signature"
    assert signature_problem(body, "sha256=", secrets) == "malformed_signature"
    assert signature_problem(body, sign(body, b"other"), secrets) == "bad_signature"
    assert signature_problem(body + b" ", sign(body, SECRET), secrets) == "bad_signature"
    assert signature_problem(body, "sha256=é" + "0" * 63, secrets) == "bad_signature"
    assert signature_problem(body, None, ()) is None  # INGRESS_ALLOW_UNSIGNED


def test_envelope_id_is_a_digest_of_the_bytes() -> None:
    assert envelope_id(b"a") == envelope_id(b"a") != envelope_id(b"b")
    assert len(envelope_id(b"a")) == 32


def test_kept_headers_leave_out_cookies_and_proxy_auth() -> None:
    headers = {
        "X-Hub-Signature-256": "sha256=00",
        "User-Agent": "facebookexternalua",
        "Content-Type": "application/json",
        "Cookie": "session=1",
        "Authorization": "Bearer x",
        "Proxy-Authorization": "Basic y",
        "X-Forwarded-For": "10.0.0.1",
    }
    assert set(kept_headers(headers, NOW)) == {
        "X-Hub-Signature-256",
        "User-Agent",
        "Content-Type",
        "X-Wa-Ingress-Received-At",
    }


def test_the_worker_parses_and_verifies_the_ingress_envelope() -> None:
    raw = json.dumps(
        payload(messages_value(messages=[text_message("wamid.p1", "31612345678", "ünï")])),
        indent=2,
        ensure_ascii=False,
    ).encode()
    headers = {"X-Hub-Signature-256": sign(raw, SECRET), "Content-Type": "application/json"}
    value = build_envelope(raw.decode(), envelope_id(raw), headers, NOW)
    (event,) = parse_record(value, None, SECRET)
    assert isinstance(event, WebhookEvent), event
    assert event.event_key == "wamid.p1" and event.webhook_id == envelope_id(raw)
    assert event.received_at == NOW
    forged = build_envelope(raw.decode(), envelope_id(raw), {}, NOW)
    (letter,) = parse_record(forged, None, SECRET)
    assert isinstance(letter, DeadLetter) and "X-Hub-Signature-256" in letter.reason


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path) -> pytest.MonkeyPatch:
    monkeypatch.chdir(tmp_path)  # no .env of the checkout
    for name in ("WA_APP_SECRET", "WA_APP_SECRETS", "WA_VERIFY_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name in IngressSettings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    return monkeypatch


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({}, "WA_APP_SECRET: not set"),
        ({"WA_APP_SECRET": "s", "INGRESS_PATH": "webhook"}, "INGRESS_PATH"),
        ({"WA_APP_SECRET": "s", "INGRESS_PATH": "/metrics"}, "INGRESS_PATH"),
        ({"WA_APP_SECRET": "s", "INGRESS_PORT": "70000"}, "INGRESS_PORT"),
        ({"WA_APP_SECRET": "s", "INGRESS_ACK_TIMEOUT_MS": "0"}, "INGRESS_ACK_TIMEOUT_MS"),
        ({"WA_APP_SECRETS": "a,,b"}, "WA_APP_SECRETS"),
        ({"WA_APP_SECRET": "s", "INGRESS_ALLOW_UNSIGNED": "maybe"}, "INGRESS_ALLOW_UNSIGNED"),
        ({"WA_APP_SECRET": "s", "INGRESS_MAX_BODY_BYTES": "5242880"}, "INGRESS_MAX_BODY_BYTES"),
    ],
)
def test_a_bad_setting_is_named(
    clean_env: pytest.MonkeyPatch, env: dict[str, str], named: str
) -> None:
    for name, value in env.items():
        clean_env.setenv(name, value)
    with pytest.raises(ConfigError, match=named):
        load_config()


def test_secrets_are_merged_and_unsigned_needs_saying_so(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("WA_APP_SECRET", "one")
    clean_env.setenv("WA_APP_SECRETS", "two, one ,three")
    assert load_config().ingress.app_secrets() == (b"one", b"two", b"three")
    clean_env.delenv("WA_APP_SECRET")
    clean_env.delenv("WA_APP_SECRETS")
    clean_env.setenv("INGRESS_ALLOW_UNSIGNED", "true")
    assert load_config().ingress.app_secrets() == ()


def test_every_ingress_setting_is_documented() -> None:
    readme = (ROOT / "README.md").read_text()
    example = (ROOT / ".env.example").read_text()
    for name in (n.upper() for n in IngressSettings.model_fields):
        assert f"`{name}`" in readme or f"`{name} " in readme or f" `{name}`" in readme, name
        assert f"{name}=" in example, name
