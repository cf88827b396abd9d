"""Settings: the seed's names and defaults, pass-through, and one clear line for a bad value."""

from __future__ import annotations

import subprocess
import sys

import pytest

from devtools.worker import ROOT
from wa_worker.errors import ConfigError
from wa_worker.settings import load_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env
    for name in list(__import__("os").environ):
        if name.startswith(("KAFKA_", "REDIS_", "HANDLER_", "MAX_RETRIES", "RETRY_", "WA_")):
            monkeypatch.delenv(name)


def test_defaults_follow_the_seed() -> None:
    s = load_settings()
    assert s.max_retries == 3 and s.retry_delay_ms == 1000 and s.health_port == 4900
    assert s.kafka_inbound_topic == "whatsapp.webhook.inbound"
    assert s.kafka_processed_topic == "whatsapp.webhook.processed"
    assert s.kafka_dlq_topic == "whatsapp.webhook.dlq"


def test_environment_and_dotenv_are_read(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    (tmp_path / ".env").write_text("MAX_RETRIES=7\nKAFKA_SASL_USERNAME=from-dotenv\n")
    monkeypatch.setenv("RETRY_DELAY_MS", "250")
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    s = load_settings()
    assert (s.max_retries, s.retry_delay_ms) == (7, 250)
    options = s.librdkafka_options()
    assert options == {"security.protocol": "SASL_SSL", "sasl.username": "from-dotenv"}
    assert s.producer_config()["security.protocol"] == "SASL_SSL"
    assert s.consumer_config()["sasl.username"] == "from-dotenv"


@pytest.mark.parametrize(
    ("name", "value", "mentions"),
    [
        ("MAX_RETRIES", "-1", "MAX_RETRIES"),
        ("MAX_RETRIES", "three", "MAX_RETRIES"),
        ("REDIS_URL", "nonsense", "REDIS_URL"),
        ("KAFKA_BROKERS", "localhost", "KAFKA_BROKERS"),
        ("HEALTH_PORT", "70000", "HEALTH_PORT"),
        ("HANDLER_URL", "ftp://x", "HANDLER_URL"),
        ("HANDLER_CALLABLE", "no_colon", "HANDLER_CALLABLE"),
        ("KAFKA_START_OFFSET", "middle", "KAFKA_START_OFFSET"),
        ("RETRY_JITTER", "2", "RETRY_JITTER"),
        ("KAFKA_ENABLE_AUTO_COMMIT", "true", "KAFKA_ENABLE_AUTO_COMMIT"),
    ],
)
def test_a_bad_value_names_the_setting(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, mentions: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=mentions):
        load_settings()


def test_handler_url_and_callable_are_exclusive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HANDLER_URL", "http://127.0.0.1:1/x")
    monkeypatch.setenv("HANDLER_CALLABLE", "mod:fn")
    with pytest.raises(ConfigError, match="HANDLER_URL and HANDLER_CALLABLE"):
        load_settings()


@pytest.mark.parametrize(
    ("env", "mentions"),
    [
        ({"BREAKER_MIN_CALLS": "30", "BREAKER_WINDOW": "20"}, "BREAKER_MIN_CALLS .30. must not"),
        (
            {"MAX_EVENTS_IN_PROGRESS": "100", "HANDLER_CONCURRENCY": "128"},
            "MAX_EVENTS_IN_PROGRESS .100. is below HANDLER_CONCURRENCY",
        ),
    ],
)
def test_settings_that_contradict_each_other_are_refused(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], mentions: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=mentions):
        load_settings()


@pytest.mark.parametrize(
    "argv", [["-m", "bytewax.run", "dataflow"], ["-m", "wa_worker.cli", "run"]]
)
def test_start_up_stops_with_one_line(argv: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "MAX_RETRIES": "-1"},
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("wa-worker: invalid setting MAX_RETRIES:")
    assert "Traceback" not in result.stderr


def test_unreachable_kafka_stops_start_up_clearly() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bytewax.run", "dataflow"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "KAFKA_BROKERS": "127.0.0.1:1"},
    )
    assert result.returncode == 2
    assert "wa-worker: KAFKA_BROKERS: cannot reach Kafka" in result.stderr
    assert "Traceback" not in result.stderr
