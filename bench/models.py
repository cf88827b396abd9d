"""What the bench measures, as data: contestants, per-run figures and the suite's results."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict


class Kind(StrEnum):
    CEILING = "ceiling"
    TUNED = "tuned"
    NAIVE = "naive"
    WORKER = "worker"
    QUIX = "quix"


class RedisKind(StrEnum):
    """The Redis a worker row runs on (the other contestants always use the standalone one)."""

    STANDALONE = "standalone"
    CLUSTER = "cluster"  # three primaries, the keys spread over them
    TLS = "tls"  # standalone over TLS, with a client certificate and an ACL user


class Contestant(BaseModel):
    model_config = ConfigDict(frozen=True)

    letter: str  # A, B, C, D or E
    label: str
    kind: Kind
    events: int  # inbound records per throughput run
    shape: str = "base"  # the workload (bench.workload.SHAPES)
    handler_ms: int | None = None  # None: no handler call (the worker's pass-through)
    processes: int = 1
    concurrency: int | None = None  # the worker's HANDLER_CONCURRENCY; None: its default
    cluster: bool = False  # on the 3-broker SASL_SSL cluster instead of the single broker
    redis: RedisKind = RedisKind.STANDALONE
    reorder_window_ms: int | None = None  # the worker's REORDER_WINDOW_MS; None: its default
    # Rows of one group take their runs in turn (run 1 of each, then run 2 of each, ...), so
    # the rows whose ratio is a target see the same drift of a noisy machine.
    group: str | None = None

    @property
    def dedupes(self) -> bool:
        return self.kind is not Kind.CEILING


class RunFigures(BaseModel):
    # outputs per second (events for a deduping contestant, records for the ceiling), from the
    # first produce of the backlog to its last output, the contestant started and warm
    rate: float
    cpu_s_per_10k: float  # per 10,000 outputs
    peak_rss_mb: float
    seconds: float  # wall time of the run, start-up included


class Latency(BaseModel):
    rate: float  # the paced input rate, records/s
    sent: int
    p50_ms: float
    p99_ms: float
    # From the produce call to Kafka's acknowledgement of the webhook: the part of the latency
    # that is the input's own way into the brokers, before any contestant can read it.
    acked_p50_ms: float | None = None
    acked_p99_ms: float | None = None


class Row(BaseModel):
    contestant: Contestant
    runs: list[RunFigures] = []
    latency: Latency | None = None
    failure: str | None = None  # what went wrong, with the log's path

    @property
    def rate(self) -> float | None:
        rates = sorted(r.rate for r in self.runs)
        return rates[len(rates) // 2] if rates else None

    def median(self, field: str) -> float | None:
        values = sorted(getattr(r, field) for r in self.runs)
        return values[len(values) // 2] if values else None


class Soak(BaseModel):
    events: int
    rss_mb_at_10pct: float
    rss_mb_at_end: float
    rate: float | None = None
    failure: str | None = None

    @property
    def change_pct(self) -> float:
        return (self.rss_mb_at_end / self.rss_mb_at_10pct - 1) * 100


class Results(BaseModel):
    mode: str
    events: int
    runs: int
    machine: str
    rows: list[Row]
    soak: Soak | None = None
    seconds: float = 0.0
