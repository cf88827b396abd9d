"""The worker's one error tree.

    WorkerError
    ├── ConfigError        a setting is wrong; start-up stops with its name
    ├── InputError         an envelope or payload cannot be used; goes to the DLQ
    │   └── SignatureError the X-Hub-Signature-256 check failed
    ├── TransientError     worth retrying later (timeouts, 5xx, 429, connection errors)
    ├── PermanentError     retrying cannot help (other 4xx, handler said so); DLQ at once
    ├── DeliveryError      a record could not be written to Kafka; fail loudly
    │   └── PublishError   some records of a publish or re-drive were not written (the rest were)
    ├── ProbeFailed        a /health probe: the dependency did not answer as it must
    └── CommandError       an operator command cannot do what was asked (no such record, an
                           empty range, an unknown class): one line, exit 1

Handler callables raise `TransientError` / `PermanentError` to steer the outcome; any other
exception counts as transient.
"""

from __future__ import annotations

from wa_worker.models.records import ErrorClass


class WorkerError(Exception):
    """Root of every error the worker raises on purpose."""


class ConfigError(WorkerError):
    """A setting is invalid or a dependency named by a setting is unusable."""


class InputError(WorkerError):
    """An envelope or payload cannot be parsed or validated; `reason` is its DLQ class."""

    reason = ErrorClass.INVALID_PAYLOAD

    def __init__(self, message: str, reason: ErrorClass | None = None) -> None:
        super().__init__(message)
        if reason:
            self.reason = reason


class SignatureError(InputError):
    reason = ErrorClass.BAD_SIGNATURE


class TransientError(WorkerError):
    """A failure that may pass; `retry_after_s` honours the peer's Retry-After."""

    def __init__(
        self, message: str, retry_after_s: float | None = None, status_code: int | None = None
    ) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.status_code = status_code


class PermanentError(WorkerError):
    """A failure that retrying cannot fix."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class DeliveryError(WorkerError):
    """Kafka did not acknowledge a record; the batch must not be considered written."""


class PublishError(DeliveryError):
    """Some records were not written; the others were (and were flushed)."""


class ProbeFailed(WorkerError):
    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class CommandError(WorkerError, ValueError):
    """What an operator asked for does not exist or cannot be done (a bad value given to a
    command, hence also a ValueError)."""
