"""librdkafka's own log lines, routed through Python logging and collapsed when they repeat.

Without a `logger`, librdkafka prints `%3|…|FAIL|…` lines straight to stderr, outside the log
format: a broker outage printed some 40 a second (every client reconnecting to every broker).
Each client the worker builds gets `librdkafka_logger()` as its confluent-kafka `logger`, so
the lines reach the worker's handler (JSON with LOG_FORMAT=json, redacted), and `RepeatFilter`
lets one line of each kind through per `REPEAT_WINDOW_S`: the next one that gets through
carries `suppressed_repeats`, the number of identical lines left out since.

confluent-kafka hands the lines over on the client's own poll/flush calls (not from
librdkafka's threads), so a client that is never polled must call `poll(0)` now and then.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable

LOGGER_NAME = "librdkafka"
REPEAT_WINDOW_S = 30.0
_MAX_KINDS = 1000
# What changes between repeats of one failure: durations, librdkafka's own repeat count and
# the client's name (left out of the kind below).
_VARYING = re.compile(r"\d+ms\b|, \d+ identical error\(s\) suppressed")


class RepeatFilter(logging.Filter):
    """Per kind of line (level, text without durations and client name), the first in each
    window passes; the others are counted and reported on the next line that passes."""

    def __init__(
        self, window_s: float = REPEAT_WINDOW_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self._window_s = window_s
        self._clock = clock
        self._lock = threading.Lock()
        self._kinds: dict[tuple[int, str], tuple[float, int]] = {}  # kind → (passed at, left out)

    def filter(self, record: logging.LogRecord) -> bool:
        kind = (record.levelno, _kind_text(record))
        now = self._clock()
        with self._lock:
            passed_at, left_out = self._kinds.get(kind, (float("-inf"), 0))
            if now - passed_at < self._window_s:
                self._kinds[kind] = (passed_at, left_out + 1)
                return False
            if len(self._kinds) >= _MAX_KINDS:
                self._forget_before(now - self._window_s)
            self._kinds[kind] = (now, 0)
        if left_out:
            record.suppressed_repeats = left_out
        return True

    def _forget_before(self, moment: float) -> None:
        self._kinds = {k: v for k, v in self._kinds.items() if v[0] >= moment}
        if len(self._kinds) >= _MAX_KINDS:
            self._kinds.clear()  # thousands of distinct lines: start over rather than grow


def _kind_text(record: logging.LogRecord) -> str:
    args = record.args
    if isinstance(args, tuple) and len(args) == 3:
        facility, _client, text = args  # confluent-kafka logs ("%s [%s] %s", fac, name, text)
        return f"{facility} {_VARYING.sub('', str(text))}"
    return _VARYING.sub("", record.getMessage())


_setup_lock = threading.Lock()


def librdkafka_logger() -> logging.Logger:
    """The logger every Kafka client of the worker is given (its `logger` setting)."""
    logger = logging.getLogger(LOGGER_NAME)
    with _setup_lock:
        if not any(isinstance(f, RepeatFilter) for f in logger.filters):
            logger.addFilter(RepeatFilter())
    return logger
