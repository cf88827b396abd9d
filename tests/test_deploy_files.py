"""Deployment files, checked without Docker or a cluster: they parse, validate against their
schemas, reference files that exist, and agree with each other and with the worker's settings."""

from __future__ import annotations

import copy
import fnmatch
import json
import re
import shlex
import subprocess
import sys
import tarfile
import tomllib
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import typer
import yaml

from devtools.worker import ROOT
from wa_worker.cli import app as cli
from wa_worker.settings import Settings

K8S_VERSION = "1.30.0"
K8S_DIR = ROOT / "deploy" / "k8s"
COMPOSE = ROOT / "docker-compose.yml"
TOPICS = ("whatsapp.webhook.inbound", "whatsapp.webhook.processed", "whatsapp.webhook.dlq")
YAML_FILES = [
    COMPOSE,
    *sorted((ROOT / "docker").glob("*.yml")),
    *sorted(ROOT.glob("deploy/**/*.yaml")),
]


def _unknown_settings(names: Iterable[str]) -> set[str]:
    """Names that are neither the worker's settings, librdkafka pass-through (KAFKA_*), Bytewax's
    variables nor the entrypoint's."""
    known = {name.upper() for name in Settings.model_fields} | {"RECOVERY_PER_PROCESS"}
    return {
        name for name in names if name not in known and not name.startswith(("KAFKA_", "BYTEWAX_"))
    }


def _load_all(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _compose() -> dict[str, Any]:
    compose: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return compose


def _k8s_docs() -> dict[str, dict[str, Any]]:
    """kind/name → manifest."""
    docs = [doc for path in sorted(K8S_DIR.glob("*.yaml")) for doc in _load_all(path)]
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in docs}


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_yaml_file_parses(path: Path) -> None:
    assert _load_all(path), f"{path} is empty"


# --- docker-compose.yml ---------------------------------------------------------------------


def test_compose_file_validates_against_the_compose_spec() -> None:
    # The compose-spec JSON schema, as vendored by check-jsonschema (a dev dependency).
    source = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema = json.loads(source.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(_compose())]
    assert errors == []


def test_compose_services_reference_what_exists() -> None:
    services = _compose()["services"]
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).is_file(), f"{name} mounts missing {source}"
            else:
                assert source in _compose()["volumes"], f"{name} uses undeclared volume {source}"
    build = services["worker"]["build"]
    assert (ROOT / build["context"] / build["dockerfile"]).is_file()
    assert services["worker"]["depends_on"]["kafka-init"]["condition"] == (
        "service_completed_successfully"
    )


def test_compose_creates_the_three_topics_and_wires_the_worker_to_them() -> None:
    services = _compose()["services"]
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert "controller" in services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]  # KRaft
    env = services["worker"]["environment"]
    assert (
        env["KAFKA_INBOUND_TOPIC"],
        env["KAFKA_PROCESSED_TOPIC"],
        env["KAFKA_DLQ_TOPIC"],
    ) == TOPICS
    assert env["KAFKA_BROKERS"] == "kafka:9092"
    assert env["REDIS_URL"].startswith("redis://redis:")
    assert _unknown_settings(env) == set()
    grace = int(services["worker"]["stop_grace_period"].removesuffix("s"))
    assert grace > float(env["DRAIN_TIMEOUT_S"])


def test_compose_creates_the_topics_with_the_worker_cli_and_settings() -> None:
    # One way to create topics (retention, max.message.bytes and names from the settings), not a
    # second hand-written one in kafka-topics.sh.
    services = _compose()["services"]
    init, worker = services["kafka-init"], services["worker"]
    assert (init["image"], init["build"]) == (worker["image"], worker["build"])
    assert init["environment"] == worker["environment"]
    assert init["env_file"] == worker["env_file"]
    assert "entrypoint" not in init  # the image's entrypoint execs the command as given
    assert init["depends_on"] == {"kafka": {"condition": "service_healthy"}}
    assert init["restart"] == "no"
    program, *args = init["command"]
    assert program == "wa-worker"
    assert args[:2] == ["topics", "create"]
    # The arguments parse as the CLI's own (after Compose's ${VAR:-default} interpolation).
    interpolated = [re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", arg) for arg in args[2:]]
    assert interpolated == ["--partitions", "3"]
    group = typer.main.get_command(cli.app)
    assert isinstance(group, typer.core.TyperGroup)
    topics = group.commands["topics"]
    assert isinstance(topics, typer.core.TyperGroup)
    context = topics.commands["create"].make_context("create", interpolated)
    assert context.params["partitions"] == 3


def _visible_command(words: list[str]) -> bool:
    """Whether `wa-worker WORDS…` names a command --help lists (no hidden alias)."""
    command = typer.main.get_command(cli.app)
    for word in words:
        if not isinstance(command, typer.core.TyperGroup):
            return True  # the rest are the command's arguments
        found = command.commands.get(word)
        if found is None or found.hidden:
            return False
        command = found
    return not isinstance(command, typer.core.TyperGroup)


def test_deploy_docs_name_listed_cli_commands() -> None:
    sources = [ROOT / "docker" / "entrypoint.sh", *sorted((ROOT / "deploy").glob("**/*.md"))]
    quoted = [q for path in sources for q in re.findall(r"`([^`]*)`", path.read_text())]
    quoted.append(" ".join(_compose()["services"]["kafka-init"]["command"]))
    # `wa-worker WORD…`, not `wa-worker bytewax/bytewax` (a Helm release and chart).
    pattern = re.compile(r"\bwa-worker((?: [a-z][a-z-]*)+)(?![\w/.:-])")
    commands = [m for q in quoted for m in pattern.findall(q)]
    assert "dlq list" in {c.strip() for c in commands}
    assert [c for c in commands if not _visible_command(c.split())] == []
    assert not _visible_command(["dlq", "inspect"])  # the check sees hidden aliases


def test_compose_healthcheck_and_prometheus_target_the_worker_health_port() -> None:
    services = _compose()["services"]
    worker = services["worker"]
    port = worker["environment"]["HEALTH_PORT"]
    assert worker["healthcheck"]["test"] == ["CMD", "python", "/app/healthcheck.py", "/livez"]
    assert any(p.endswith(f":{port}") for p in worker["ports"])
    prometheus = yaml.safe_load((ROOT / "docker" / "prometheus.yml").read_text())
    (job,) = prometheus["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == [f"worker:{port}"]


# --- Dockerfile ------------------------------------------------------------------------------


def _dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments), continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def _dockerignored(path: str) -> bool:
    patterns = [
        p.strip()
        for p in (ROOT / ".dockerignore").read_text().splitlines()
        if p.strip() and not p.startswith("#")
    ]
    return any(fnmatch.fnmatch(path, p) or path.startswith(p.rstrip("/") + "/") for p in patterns)


def test_dockerfile_copies_files_that_exist_and_are_not_ignored() -> None:
    copies = [args.split() for op, args in _dockerfile() if op == "COPY"]
    sources = [s for words in copies if not words[0].startswith("--from") for s in words[:-1]]
    assert "dataflow.py" in sources and "docker/entrypoint.sh" in sources
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: no such file"
        assert not _dockerignored(source), f"COPY {source}: excluded by .dockerignore"


def test_dockerfile_is_multi_stage_non_root_with_healthcheck_volume_and_exec_entrypoint() -> None:
    instructions = _dockerfile()
    # Every stage on the one BASE_IMAGE (official slim by default, scripts/image-test's local one).
    assert ("ARG", "BASE_IMAGE=python:3.11-slim") in instructions
    stages = [args for op, args in instructions if op == "FROM"]
    assert len(stages) >= 2 and all(s.startswith("${BASE_IMAGE}") for s in stages)
    # Debian's interpreter is only `python3`; `python` is the venv's, on PATH in the runtime stage.
    runs = [args for op, args in instructions if op == "RUN"]
    assert not [r for r in runs if re.match(r"python\b", r)], runs
    (user,) = [args for op, args in instructions if op == "USER"]
    assert user.split(":")[0] not in {"0", "root"}
    (volume,) = [json.loads(args) for op, args in instructions if op == "VOLUME"]
    assert "/var/lib/wa-worker" in volume  # the entrypoint's default RECOVERY_DIR is below it
    (healthcheck,) = [args for op, args in instructions if op == "HEALTHCHECK"]
    assert '"/app/healthcheck.py", "/livez"' in healthcheck
    (entrypoint,) = [json.loads(args) for op, args in instructions if op == "ENTRYPOINT"]
    assert entrypoint == ["/app/entrypoint.sh"]  # exec form: no shell between it and signals
    script = (ROOT / "docker" / "entrypoint.sh").read_text()
    assert 'exec "$PYTHON" -m wa_worker.cli run "$@"' in script
    assert "/var/lib/wa-worker/recovery" in script


# --- Kubernetes manifests --------------------------------------------------------------------


@pytest.mark.parametrize("key", sorted(_k8s_docs()))
def test_manifest_validates_against_the_kubernetes_schema(key: str) -> None:
    kubernetes_validate.validate(_k8s_docs()[key], K8S_VERSION, strict=True)


def test_the_validator_rejects_a_broken_manifest() -> None:
    broken = copy.deepcopy(_k8s_docs()["StatefulSet/wa-worker"])
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["pth"] = "/x"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_statefulset_agrees_with_its_services_settings_and_drain() -> None:
    docs = _k8s_docs()
    sts = docs["StatefulSet/wa-worker"]
    settings = docs["ConfigMap/wa-worker-settings"]["data"]
    headless = docs["Service/wa-worker-cluster"]["spec"]
    pod = sts["spec"]["template"]["spec"]
    worker = pod["containers"][0]
    assert sts["spec"]["serviceName"] == settings["BYTEWAX_CLUSTER_SERVICE"] == "wa-worker-cluster"
    assert headless["clusterIP"] == "None" and headless["publishNotReadyAddresses"] is True
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    # Every process must be signalled together to drain: no rolling update, pods deleted together
    # with the command deploy/README.md gives, which must select the StatefulSet's pods.
    assert sts["spec"]["updateStrategy"] == {"type": "OnDelete"}
    labels = ",".join(f"{k}={v}" for k, v in sts["spec"]["selector"]["matchLabels"].items())
    assert f"kubectl delete pod -l {labels}" in (ROOT / "deploy" / "README.md").read_text()
    replicas = sts["spec"]["replicas"]
    assert int(settings["BYTEWAX_PROCESSES"]) == replicas
    workers = replicas * int(settings["BYTEWAX_WORKERS_PER_PROCESS"])
    assert int(settings["RECOVERY_PARTITIONS"]) >= workers
    assert pod["terminationGracePeriodSeconds"] > float(settings["DRAIN_TIMEOUT_S"])
    assert worker["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert worker["readinessProbe"]["httpGet"]["path"] == "/readyz"
    ports = {p["name"]: p["containerPort"] for p in worker["ports"]}
    assert ports == {"cluster": int(settings["BYTEWAX_CLUSTER_PORT"]), "http": 4900}
    assert str(ports["http"]) == settings["HEALTH_PORT"]
    env = {e["name"]: e for e in worker["env"]}
    assert env["BYTEWAX_POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["BYTEWAX_STATEFULSET_NAME"]["value"] == sts["metadata"]["name"]
    sources = {next(iter(s)): next(iter(s.values()))["name"] for s in worker["envFrom"]}
    assert sources == {"configMapRef": "wa-worker-settings", "secretRef": "wa-worker-secrets"}
    (init,) = pod["initContainers"]
    assert init["args"] == ["init-recovery"] and init["image"] == worker["image"]
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in worker["volumeMounts"] + init["volumeMounts"]}
    assert mounts == {claim["metadata"]["name"]: "/var/lib/wa-worker"}
    assert settings["RECOVERY_DIR"].startswith("/var/lib/wa-worker/")
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert _unknown_settings(settings) == set()


def test_metrics_service_selects_the_pods() -> None:
    docs = _k8s_docs()
    labels = docs["StatefulSet/wa-worker"]["spec"]["template"]["metadata"]["labels"]
    for name in ("wa-worker-cluster", "wa-worker-metrics"):
        selector = docs[f"Service/{name}"]["spec"]["selector"]
        assert selector.items() <= labels.items()


# --- Helm values -----------------------------------------------------------------------------

# Keys of Bytewax's chart (bytewax/helm-charts, charts/bytewax/values.yaml, chart 0.8.1) that
# deploy/helm/values.yaml sets; a key the chart does not have would be silently ignored.
CHART_KEYS = {
    "image.repository", "image.tag", "image.pullPolicy", "imagePullSecrets",
    "podSecurityContext.fsGroup", "podSecurityContext.runAsGroup",
    "podSecurityContext.runAsNonRoot", "podSecurityContext.runAsUser",
    "service.port", "api.enabled", "api.port", "api.cacheport",
    "resources", "env", "envFromSecrets", "podMonitor.enabled", "podMonitor.selector",
    "configuration.pythonFileName", "configuration.processesCount",
    "configuration.workersPerProcess", "configuration.keepAlive", "configuration.jobMode",
    "configuration.configMap.create", "configuration.configMap.customName",
    "configuration.configMap.files.pattern", "configuration.configMap.files.tarName",
    "configuration.recovery.enabled", "configuration.recovery.partsCount",
    "configuration.recovery.snapshotInterval", "configuration.recovery.backupInterval",
    "configuration.recovery.persistence.hostPath.enabled",
    "configuration.recovery.persistence.hostPath.path",
    "configuration.recovery.persistence.accessModes",
    "configuration.recovery.persistence.size",
    "configuration.recovery.persistence.finalizers",
    "configuration.recovery.persistence.extraPvcLabels",
}  # fmt: skip
# Free-form maps: their own keys are not the chart's.
OPEN_MAPS = {
    "resources",
    "env",
    "podMonitor.selector",
    "configuration.recovery.persistence.extraPvcLabels",
}


def _leaf_keys(values: dict[str, Any], prefix: str = "") -> set[str]:
    keys = set()
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and path not in OPEN_MAPS:
            keys |= _leaf_keys(value, f"{path}.")
        else:
            keys.add(path)
    return keys


def test_helm_values_use_only_the_charts_keys_and_fit_the_worker() -> None:
    values = yaml.safe_load((ROOT / "deploy" / "helm" / "values.yaml").read_text())
    assert _leaf_keys(values) <= CHART_KEYS
    config = values["configuration"]
    assert config["pythonFileName"] == "dataflow.py"
    assert config["recovery"]["enabled"] is True
    workers = config["processesCount"] * config["workersPerProcess"]
    assert config["recovery"]["partsCount"] >= workers
    # The chart's pods have terminationGracePeriodSeconds: 10.
    assert float(values["env"]["DRAIN_TIMEOUT_S"]) < 10
    assert _unknown_settings(values["env"]) == set()


# --- deploy/waxctl.sh ------------------------------------------------------------------------


def _waxctl(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(ROOT / "deploy" / "waxctl.sh"), "--out", str(tmp_path / "out"), *args],
        env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=60,
    )


def _flags(command: str) -> dict[str, str | None]:
    words = shlex.split(command.replace("\\\n", " "))
    assert words[:3] == ["waxctl", "dataflow", "deploy"]
    flags: dict[str, str | None] = {}
    for word, following in zip(words[4:], [*words[5:], None], strict=True):
        if word.startswith("--"):
            takes_value = following is not None and not following.startswith("--")
            flags[word] = following if takes_value else None
    return flags


def test_waxctl_script_builds_a_self_contained_tarball_and_prints_the_command(
    tmp_path: Path,
) -> None:
    done = _waxctl(tmp_path, "--processes", "3", "--workers", "2", "--namespace", "wa")
    assert done.returncode == 0, done.stderr
    out = tmp_path / "out"
    with tarfile.open(out / "wa-worker.tar") as tar:
        names = tar.getnames()
        tar.extractall(tmp_path / "unpacked", filter="data")
    assert "dataflow.py" in names
    for package in ("wa_worker", "operators", "sinks"):
        assert f"{package}/__init__.py" in names
    assert not [n for n in names if "__pycache__" in n or n.startswith(("tests", "."))]
    # The unpacked tree imports its own packages (as in the chart's working directory).
    where = subprocess.run(
        [sys.executable, "-c", "import wa_worker, operators, sinks; print(wa_worker.__file__)"],
        cwd=tmp_path / "unpacked",
        capture_output=True,
        text=True,
    )
    assert where.stdout.startswith(str(tmp_path / "unpacked")), where.stderr
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    requirements = (out / "requirements.txt").read_text().splitlines()
    assert [r for r in requirements if not r.startswith("#")] == dependencies
    assert yaml.safe_load((out / "values.yaml").read_text())["envFromSecrets"]

    flags = _flags(done.stdout[done.stdout.index("waxctl dataflow deploy") :])
    assert flags["--processes"] == "3" and flags["--workers"] == "2"
    assert flags["--python-file-name"] == "dataflow.py"
    assert flags["--requirements-file-name"] == str(out / "requirements.txt")
    assert flags["--recovery-parts"] == "8" and "--recovery" in flags
    assert flags["--recovery-snapshot-interval"] == "5"
    assert flags["--recovery-backup-interval"] == "0"
    assert flags["--namespace"] == "wa" and flags["--name"] == "wa-worker"
    assert flags["--chart-values-file"] == str(out / "values.yaml")
    assert "--recovery-single-volume" in flags
    # Only flags of `waxctl dataflow deploy --help` (Waxctl 0.12).
    assert set(flags) <= {
        "--name", "--namespace", "--python-file-name", "--requirements-file-name",
        "--processes", "--workers", "--recovery", "--recovery-parts",
        "--recovery-snapshot-interval", "--recovery-backup-interval", "--recovery-size",
        "--recovery-single-volume", "--image-repository", "--image-tag",
        "--chart-values-file", "--yes",
    }  # fmt: skip


@pytest.mark.parametrize(
    "args, reason",
    [
        (("--processes", "0"), "not a positive integer: 0"),
        (("--processes", "4", "--recovery-parts", "3"), "--recovery-parts (3) must be >="),
        (("--frobnicate", "1"), "unknown option --frobnicate"),
    ],
)
def test_waxctl_script_rejects_bad_options(
    tmp_path: Path, args: tuple[str, ...], reason: str
) -> None:
    done = _waxctl(tmp_path, *args)
    assert done.returncode == 2
    assert reason in done.stderr


@pytest.mark.parametrize(
    "args, reason",
    [
        (("--frobnicate",), "unknown option --frobnicate"),
        # A trailing option without its value: usage, not bash's "unbound variable" (exit 1).
        (("--out",), "--out needs a value"),
        (("--processes", "3", "--image"), "--image needs a value"),
        (("--help",), ""),
    ],
)
def test_waxctl_script_prints_usage_for_options_it_cannot_parse(
    tmp_path: Path, args: tuple[str, ...], reason: str
) -> None:
    done = _waxctl(tmp_path, *args)
    assert done.returncode == 2, done.stderr
    assert reason in done.stderr
    assert "usage: deploy/waxctl.sh" in done.stderr
    assert not (tmp_path / "out").exists()
