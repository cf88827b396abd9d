"""Settings: the seed's names and defaults, pass-through, and one clear line for a bad value."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from devtools.worker import ROOT
from wa_worker.errors import ConfigError
from wa_worker.settings import load_settings


def start_up(
    env: dict[str, str], argv: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Start the worker as a user would (`bytewax.run dataflow` by default), with only `env`."""
    return subprocess.run(
        [sys.executable, *(argv or ["-m", "bytewax.run", "dataflow"])],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", **env},
    )


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
    (tmp_path / ".env").write_text(
        "MAX_RETRIES=7\nKAFKA_SASL_USERNAME=from-dotenv\nKAFKA_SASL_PASSWORD=pw\n"
    )
    monkeypatch.setenv("RETRY_DELAY_MS", "250")
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")  # librdkafka checks the set
    s = load_settings()
    assert (s.max_retries, s.retry_delay_ms) == (7, 250)
    options = s.librdkafka_options()
    assert options == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "from-dotenv",
        "sasl.password": "pw",
    }
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
        ("HANDLER_URL", "http://", "HANDLER_URL: has no host"),
        ("HANDLER_HEALTH_URL", "https:///healthz", "HANDLER_HEALTH_URL: has no host"),
        ("RECOVERY_DIR", "", "RECOVERY_DIR: must not be empty"),
        ("RECOVERY_DIR", "  ", "RECOVERY_DIR: must not be empty"),
        ("KAFKA_SECURITY_PROTOCOL", "", "KAFKA_SECURITY_PROTOCOL: empty"),
        ("KAFKA_SECURITY_PROTOCOL", "SASL_SSLL", "KAFKA_SECURITY_PROTOCOL: not accepted"),
        ("KAFKA_FETCH_MAX_BYTEZ", "1000", "KAFKA_FETCH_MAX_BYTEZ: not accepted by librdkafka"),
        ("KAFKA_LINGER_MS", "soon", "KAFKA_LINGER_MS: not accepted by librdkafka"),
        ("KAFKA_DLQ_TOPIC", "whatsapp.webhook.inbound", "KAFKA_DLQ_TOPIC must differ"),
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
        (
            {"RETRY_DELAY_MS": "5000", "RETRY_MAX_DELAY_MS": "1000"},
            "RETRY_DELAY_MS .5000. must not exceed RETRY_MAX_DELAY_MS .1000.",
        ),
        (
            {"KAFKA_INBOUND_TOPIC": "same", "KAFKA_PROCESSED_TOPIC": "same"},
            "KAFKA_PROCESSED_TOPIC must differ from KAFKA_INBOUND_TOPIC",
        ),
        (
            {"KAFKA_PROCESSED_TOPIC": "out", "KAFKA_DLQ_TOPIC": "out"},
            "KAFKA_DLQ_TOPIC must differ from KAFKA_PROCESSED_TOPIC",
        ),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "PLAIN"},
            r"KAFKA_\* options \(KAFKA_SASL_MECHANISM, KAFKA_SECURITY_PROTOCOL\): librdkafka",
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


def test_kubernetes_service_variables_are_not_librdkafka_options(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What Kubernetes injects for Services named kafka and kafka-ui; the real option stays."""
    injected = {
        "KAFKA_SERVICE_HOST": "10.0.0.7",
        "KAFKA_SERVICE_PORT": "9092",
        "KAFKA_SERVICE_PORT_BROKER": "9092",
        "KAFKA_PORT": "tcp://10.0.0.7:9092",
        "KAFKA_PORT_9092_TCP": "tcp://10.0.0.7:9092",
        "KAFKA_PORT_9092_TCP_PROTO": "tcp",
        "KAFKA_PORT_9092_TCP_PORT": "9092",
        "KAFKA_PORT_9092_TCP_ADDR": "10.0.0.7",
        "KAFKA_UI_SERVICE_HOST": "10.0.0.8",
        "KAFKA_UI_PORT_8080_TCP_ADDR": "10.0.0.8",
        "KAFKA_SASL_KERBEROS_SERVICE_NAME": "kafka",
    }
    for name, value in injected.items():
        monkeypatch.setenv(name, value)
    assert load_settings().librdkafka_options() == {"sasl.kerberos.service.name": "kafka"}


@pytest.mark.parametrize(
    ("env", "line"),
    [
        ({"MAX_RETRIES": "-1"}, "wa-worker: invalid setting MAX_RETRIES:"),
        ({"HANDLER_URL": "http://"}, "wa-worker: invalid setting HANDLER_URL: has no host"),
        ({"RECOVERY_DIR": ""}, "wa-worker: invalid setting RECOVERY_DIR: must not be empty"),
        ({"KAFKA_SECURITY_PROTOCOL": ""}, "wa-worker: invalid setting KAFKA_SECURITY_PROTOCOL"),
        ({"KAFKA_SERVICE_NAME": "x"}, "wa-worker: invalid setting KAFKA_SERVICE_NAME: not acc"),
        (
            {"RETRY_DELAY_MS": "9000", "RETRY_MAX_DELAY_MS": "100"},
            "wa-worker: invalid setting RETRY_DELAY_MS (9000) must not exceed",
        ),
        (
            {"KAFKA_DLQ_TOPIC": "whatsapp.webhook.inbound"},
            "wa-worker: invalid setting KAFKA_DLQ_TOPIC must differ from KAFKA_INBOUND_TOPIC",
        ),
    ],
)
def test_each_bad_setting_stops_start_up_with_one_line_naming_it(
    env: dict[str, str], line: str
) -> None:
    result = start_up(
        # an unreachable broker: without the check the worker would stop later, not run
        {"KAFKA_BROKERS": "127.0.0.1:1", "HEALTH_PORT": "0", **env},
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()], result.stderr
    assert result.stderr.startswith(line), result.stderr


def test_a_handler_callable_that_cannot_be_loaded_stops_start_up_with_one_line(
    worker_env: dict[str, str],
) -> None:
    result = start_up({**worker_env, "HANDLER_CALLABLE": "no_such_mod:handle"})
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == [
        "wa-worker: invalid setting HANDLER_CALLABLE: cannot load 'no_such_mod:handle': "
        "No module named 'no_such_mod'"
    ], result.stderr


@pytest.mark.parametrize(
    "argv", [["-m", "bytewax.run", "dataflow"], ["-m", "wa_worker.cli", "run"]]
)
def test_start_up_stops_with_one_line(argv: list[str]) -> None:
    result = start_up({"MAX_RETRIES": "-1"}, argv)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("wa-worker: invalid setting MAX_RETRIES:")
    assert "Traceback" not in result.stderr


def test_unreachable_kafka_is_waited_for_then_stops_start_up_clearly() -> None:
    started = time.monotonic()
    result = start_up({"KAFKA_BROKERS": "127.0.0.1:1", "KAFKA_STARTUP_WAIT_S": "3"})
    assert result.returncode == 2
    waiting, stopped = result.stderr.strip().splitlines()
    assert waiting.startswith(
        "wa-worker: waiting up to 3s (KAFKA_STARTUP_WAIT_S) for Kafka at 127.0.0.1:1"
    )
    assert stopped.startswith("wa-worker: KAFKA_BROKERS: cannot reach Kafka at 127.0.0.1:1")
    assert time.monotonic() - started >= 3
    assert "Traceback" not in result.stderr


def test_with_log_format_json_an_unreachable_broker_is_reported_in_json_lines() -> None:
    result = start_up(
        {"KAFKA_BROKERS": "127.0.0.1:1", "LOG_FORMAT": "json", "KAFKA_STARTUP_WAIT_S": "3"}
    )
    assert result.returncode == 2
    waiting, stopped = [json.loads(line) for line in result.stderr.strip().splitlines()]
    assert waiting["level"] == "WARNING"
    assert stopped["level"] == "CRITICAL"
    assert stopped["msg"].startswith("wa-worker: KAFKA_BROKERS: cannot reach Kafka at 127.0.0.1:1")


def test_several_app_secrets_are_read_checked_and_masked() -> None:
    settings = load_settings(wa_app_secret="one", wa_app_secrets="two, three,one")
    assert settings.app_secrets() == (b"one", b"two", b"three")
    assert {"one", "two", "three"} <= set(settings.secrets())
    with pytest.raises(ConfigError, match="WA_APP_SECRETS: has an empty entry"):
        load_settings(wa_app_secrets="two,,three")


def test_a_rejected_secret_or_url_password_is_never_echoed() -> None:
    with pytest.raises(ConfigError) as secrets:
        load_settings(wa_app_secrets="two,,three")
    assert "three" not in str(secrets.value) and "<hidden>" in str(secrets.value)
    with pytest.raises(ConfigError) as url:
        load_settings(redis_url="http://user:hunter2@127.0.0.1:6379/0")
    assert "hunter2" not in str(url.value) and "REDIS_URL" in str(url.value)
