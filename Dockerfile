# syntax=docker/dockerfile:1
# The worker image. Kafka and Redis are external (KAFKA_BROKERS, REDIS_URL); see deploy/README.md.

# Any Debian-based image with Python 3.11, `python3 -m venv` and useradd: the official slim image,
# or the local one scripts/image-test makes from Debian's packages (no registry reachable there).
# Both stages use it, so the venv's interpreter link is valid in the runtime stage.
ARG BASE_IMAGE=python:3.11-slim

# --- build: install the project and its dependencies into a virtualenv ---
FROM ${BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# python3, not python: Debian's interpreter has no `python` name (the venv's has).
RUN python3 -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY dataflow.py ./
COPY wa_worker ./wa_worker
COPY operators ./operators
COPY sinks ./sinks
# The tracing extra: OTEL_TRACES_EXPORTER=otlp works in the image (off unless set).
RUN /opt/venv/bin/pip install '.[tracing]'

# --- runtime: the virtualenv, the entrypoint scripts, a non-root user ---
FROM ${BASE_IMAGE}
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH \
    HEALTH_PORT=4900
RUN groupadd --system --gid 10001 wa \
    && useradd --system --uid 10001 --gid wa --no-create-home --home-dir /nonexistent wa \
    && mkdir -p /var/lib/wa-worker/recovery \
    && chown -R 10001:10001 /var/lib/wa-worker
COPY --from=build /opt/venv /opt/venv
# Bytewax's Helm chart and waxctl run `sh ./entrypoint.sh` (and `./entrypoint-recovery.sh` in
# the init container) from the image's working directory: the scripts live there.
WORKDIR /app
COPY docker/entrypoint.sh docker/entrypoint-recovery.sh docker/healthcheck.py ./
RUN chmod 0755 entrypoint.sh entrypoint-recovery.sh && chmod 0644 healthcheck.py

# Numeric, so Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
# Recovery snapshots must outlive the container (RECOVERY_DIR defaults below it).
VOLUME ["/var/lib/wa-worker"]
# 4900: /livez /readyz /health /metrics; 2101: Bytewax cluster traffic between processes;
# 8080: the ingress (`entrypoint.sh ingress`).
EXPOSE 4900 2101 8080
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "/app/healthcheck.py", "/livez"]
# exec form, and the script execs the worker: SIGTERM reaches the dataflow, which drains.
ENTRYPOINT ["/app/entrypoint.sh"]
