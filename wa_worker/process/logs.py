"""Structured logs: JSON lines (LOG_FORMAT=json) or text, with phone numbers and secrets redacted.

Fields passed as `extra={...}` become JSON keys (or `key=value` in text). Unless LOG_REDACT is
false, runs of 7+ digits (phone numbers, WhatsApp ids) keep only their last 4 digits, URL
passwords and the app secret are masked. Message bodies are never logged.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from wa_worker.core.masking import mask_secrets
from wa_worker.settings import Settings

_PHONE = re.compile(r"(?<![\w.])\+?\d{3,}(\d{4})(?![\d])")
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    text = mask_secrets(_PHONE.sub(lambda m: "***" + m.group(1), text))
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


class _Formatter(logging.Formatter):
    def __init__(self, as_json: bool, redactor: Callable[[str], str]) -> None:
        super().__init__()
        self._as_json = as_json
        self._redact = redactor

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        fields = {k: v for k, v in record.__dict__.items() if k not in _STANDARD}
        when = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        if self._as_json:
            line = json.dumps(
                {
                    "ts": when,
                    "level": record.levelname,
                    "logger": record.name,
                    "msg": message,
                    **fields,
                },
                default=str,
            )
        else:
            extra = " ".join(f"{k}={v}" for k, v in fields.items())
            line = f"{when} {record.levelname} {record.name}: {message}" + (
                f" {extra}" if extra else ""
            )
        return self._redact(line)


def configure_from(settings: Settings) -> None:
    configure(
        settings.log_level,
        settings.log_format.value == "json",
        settings.log_redact,
        settings.secrets(),
    )


def configure(level: str, as_json: bool, redacted: bool, secrets: tuple[str, ...] = ()) -> None:
    handler = logging.StreamHandler(sys.stderr)
    redactor: Callable[[str], str] = (lambda s: redact(s, secrets)) if redacted else (lambda s: s)
    handler.setFormatter(_Formatter(as_json, redactor))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # httpx logs every request at INFO: one line per handler call is noise, not a log.
    for chatty in ("httpx", "httpcore"):
        logging.getLogger(chatty).setLevel(max(logging.WARNING, root.level))


def start_summary(interval_s: float, summary: Callable[[], dict[str, Any]]) -> None:
    """A periodic line with the worker's counters, for people reading logs rather than graphs."""
    log = logging.getLogger("wa_worker.summary")
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval_s):
            log.info("summary", extra=summary())

    threading.Thread(target=loop, name="wa-summary", daemon=True).start()
