"""Start-up of a dataflow process: checks, logging, signals, health server, offset reporter."""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

import redis
from redis.exceptions import SlotNotCoveredError

from wa_worker.core import kafka_connect, tracing
from wa_worker.core.dedupe import check_dedupe_works, dedupe_keys
from wa_worker.core.handlers import load_callable
from wa_worker.core.masking import mask_secrets
from wa_worker.core.offsets import OffsetReporter
from wa_worker.core.redis_client import redis_client
from wa_worker.core.services import Services
from wa_worker.errors import ConfigError
from wa_worker.process import health, logs
from wa_worker.settings import LogFormat, RedisMode, Settings

log = logging.getLogger(__name__)


def require_kafka_topics(settings: Settings) -> None:
    """Bytewax's Kafka source waits forever for an unreachable broker: wait a bounded time
    (KAFKA_STARTUP_WAIT_S: brokers restarting as the worker starts), then stop saying why."""
    topics = [
        settings.kafka_inbound_topic,
        settings.kafka_processed_topic,
        settings.kafka_dlq_topic,
    ]
    try:
        # log_level 0: the clear line below replaces librdkafka's connection noise.
        metadata = kafka_connect.connect(
            {**settings.admin_config(), "log_level": 0},
            settings.librdkafka_variables(),
            settings.kafka_startup_wait_s,
            on_wait=lambda exc: _say(
                "WARNING",
                f"waiting up to {settings.kafka_startup_wait_s:g}s (KAFKA_STARTUP_WAIT_S) for "
                f"Kafka at {settings.kafka_brokers} ({exc})",
                settings,
            ),
        )
    except ConfigError as exc:  # the brokers refused the login or the certificate
        _exit(str(exc), settings)
    except Exception as exc:  # noqa: BLE001  (any failure means: cannot start)
        _exit(f"KAFKA_BROKERS: cannot reach Kafka at {settings.kafka_brokers} ({exc})", settings)
    missing = [t for t in topics if t not in metadata.topics]
    if missing:
        _exit(
            f"Kafka at {settings.kafka_brokers} has no topic {', '.join(missing)} "
            "(create it, e.g. `scripts/devstack up`, or set the KAFKA_*_TOPIC settings)",
            settings,
        )


def require_working_redis(settings: Settings) -> None:
    """One real claim round trip before the flow starts, in every REDIS_MODE. A Redis that
    answers but refuses the dedupe's scripts (an ACL, a read-only replica, a cluster's slots)
    or the credentials stops start-up with its reason; one that does not answer only makes
    events wait, as during any Redis outage."""
    where = f"Redis at {mask_secrets(settings.redis_url)}"
    client = None
    try:
        client = redis_client(settings)
        check_dedupe_works(client, dedupe_keys(settings))
    except SlotNotCoveredError as exc:  # a cluster without a primary for some slots
        log.warning("Redis cluster not usable at start-up (events wait for it): %s", exc)
    except (redis.ResponseError, redis.RedisClusterException) as exc:
        # RedisClusterException: the cluster client refuses the call itself (CROSSSLOT)
        _exit(
            f"REDIS_URL: {where} answers but refuses the worker's dedupe script ({exc})", settings
        )
    except redis.AuthenticationError as exc:
        _exit(f"REDIS_URL: {where} refuses the user or password in it ({exc})", settings)
    except redis.RedisError as exc:
        if "CERTIFICATE_VERIFY_FAILED" in str(exc):  # the CA does not vouch for the server
            _exit(f"REDIS_TLS_CA_FILE: {where}: {mask_secrets(str(exc))}", settings)
        guessed = settings.redis_mode is RedisMode.AUTO and not settings.redis_sentinels
        log.warning(
            "Redis not reachable at start-up (events wait for it): %s%s",
            mask_secrets(str(exc)),
            "; REDIS_MODE=auto could not ask it, so it is used as standalone" if guessed else "",
        )
    finally:
        if client is not None:
            client.close()


def _cluster_args(argv: list[str] | None) -> argparse.Namespace:
    """`-i` and `-a` parsed as `bytewax.run` parses them (abbreviations, `-a<x>`, `--x=y`)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("-i", "--process-id", type=int)
    parser.add_argument("-a", "--addresses")
    known, _ = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    return known


def bytewax_process_id(argv: list[str] | None = None) -> int:
    """This process's index in a Bytewax cluster, found the way `bytewax.run` finds it."""
    known = _cluster_args(argv)
    if known.process_id is not None:
        return int(known.process_id)
    env = os.environ
    if "BYTEWAX_PROCESS_ID" in env:
        return int(env["BYTEWAX_PROCESS_ID"])
    if "BYTEWAX_POD_NAME" in env and "BYTEWAX_STATEFULSET_NAME" in env:
        return int(env["BYTEWAX_POD_NAME"].removeprefix(env["BYTEWAX_STATEFULSET_NAME"] + "-"))
    return 0


def bytewax_process_count(argv: list[str] | None = None) -> int:
    """How many processes this process's Bytewax cluster has (its addresses); 1 alone."""
    addresses = _cluster_args(argv).addresses or os.environ.get("BYTEWAX_ADDRESSES")
    if addresses is None and (hostfile := os.environ.get("BYTEWAX_HOSTFILE_PATH")):
        try:
            addresses = ";".join(Path(hostfile).read_text().split())
        except OSError:
            return 1  # bytewax.run reports the file itself
    return max(1, len([a for a in (addresses or "").split(";") if a.strip()]))


def in_bytewax_cluster(argv: list[str] | None = None) -> bool:
    """Is this process one of several (addresses given the ways `bytewax.run` takes them)?"""
    addressed = _cluster_args(argv).addresses is not None
    return addressed or any(
        name in os.environ for name in ("BYTEWAX_ADDRESSES", "BYTEWAX_HOSTFILE_PATH")
    )


def health_port(settings: Settings, process_id: int) -> int:
    """Process N of a cluster serves on HEALTH_PORT + N, so processes on one host never clash.

    A Kubernetes pod (BYTEWAX_POD_NAME set) has a host of its own: every pod serves on
    HEALTH_PORT, so one probe and one metrics port fit all pods of the StatefulSet.
    """
    if not settings.health_port or "BYTEWAX_POD_NAME" in os.environ:
        return settings.health_port
    return settings.health_port + process_id


# The hot path allocates many short-lived, acyclic objects (records, events, results) that
# reference counting frees; with CPython's default gen-0 threshold of 700 the cyclic collector
# ran every few hundred events and took ~14 % of the dataflow thread (py-spy --native). The
# count is tracked objects allocated less those freed, so it grows with the events held in
# state: at 50,000 a backlog of held events (MAX_EVENTS_IN_PROGRESS) was traversed again and
# again, still ~14 % of the thread, for ~1,300 unreachable objects found per 40,000-webhook
# run; at 200,000 the mixed shape took 19 % less CPU per event (bench, one run each).
GC_THRESHOLDS = (200_000, 20, 20)


def tune_gc() -> None:
    """Move everything loaded at start-up out of the collector's view and collect rarely."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def require_handler(settings: Settings) -> None:
    """Load HANDLER_CALLABLE now: loaded inside Bytewax, a typo becomes a Rust panic."""
    if settings.handler_callable:
        try:
            load_callable(settings.handler_callable)
        except ConfigError as exc:
            _exit(f"invalid setting {exc}", settings)


def start_process(settings: Settings, services: Services) -> None:
    require_handler(settings)
    logs.configure_from(settings)
    services.drain.install_signal_handlers(settings.drain_timeout_s)
    services.drain.count_unfinished_with(services.unfinished_calls)
    process_id = bytewax_process_id()
    if port := health_port(settings, process_id):
        try:
            health.serve(
                health.HealthApp(health.Probes(settings), services.drain, services.paused_reason),
                port,
            )
        except OSError as exc:
            _exit(
                f"HEALTH_PORT: cannot listen on :{port} for process {process_id} ({exc})", settings
            )
        log.info("health and metrics on :%d (/health /livez /readyz /metrics)", port)
    OffsetReporter(
        services.positions,
        settings.consumer_config() | {"bootstrap.servers": settings.kafka_brokers},
        settings.kafka_group_id,
        settings.offsets_report_interval_s,
    ).start()
    logs.start_summary(settings.log_summary_interval_s, health.worker_metrics)
    tune_gc()


def _exit(message: str, settings: Settings) -> None:
    """One line and exit code 2; a JSON line when LOG_FORMAT=json, like every other line."""
    _say("CRITICAL", message, settings)
    raise SystemExit(2)


def _say(level: str, message: str, settings: Settings) -> None:
    """A line before logging is configured, in the format LOG_FORMAT asks for."""
    line = f"wa-worker: {message}"
    if settings.log_format is LogFormat.JSON:
        when = datetime.now(UTC).isoformat(timespec="milliseconds")
        line = json.dumps({"ts": when, "level": level, "logger": __name__, "msg": line})
    print(line, file=sys.stderr, flush=True)


def configure_tracing_or_exit(service_name: str) -> None:
    """Traces on when the OTEL_* variables say so (README "Traces"); a bad one is one line
    naming it and exit code 2, like every other setting."""
    try:
        on = tracing.configure_from_env(service_name)
    except ConfigError as exc:
        print(f"wa-worker: invalid setting {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if on:
        log.info("traces on: exporter %s", os.environ.get("OTEL_TRACES_EXPORTER"))
