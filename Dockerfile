# The worker image. Kafka and Redis are external (KAFKA_BROKERS, REDIS_URL).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 RECOVERY_DIR=/var/lib/wa-worker/recovery
WORKDIR /app

COPY pyproject.toml README.md ./
COPY wa_worker ./wa_worker
COPY operators ./operators
COPY sinks ./sinks
COPY dataflow.py ./
RUN pip install . && useradd --system --uid 10001 wa && mkdir -p /var/lib/wa-worker \
    && chown wa /var/lib/wa-worker

USER wa
# Recovery snapshots must outlive the container: mount a volume here.
VOLUME ["/var/lib/wa-worker"]
EXPOSE 4900
# `wa-worker run` execs bytewax.run, so SIGTERM reaches the dataflow process.
ENTRYPOINT ["wa-worker", "run"]
