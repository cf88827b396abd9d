"""CPU time and memory of contestant processes, from /proc, sampled in a thread.

Sampling keeps the last readings of a process after it exits (A, B and C exit on their own
right after their last output), so figures can be taken at the moment an output was seen.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Sample:
    at: float  # time.perf_counter()
    cpu_s: float  # user + system, summed over the processes
    rss_kb: int  # VmRSS, summed over the processes
    hwm_kb: int  # VmHWM (peak RSS), the largest of the processes


def cpu_seconds(pid: int) -> float | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the command name, which may hold spaces: utime and stime are 14 and 15.
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def memory_kb(pid: int) -> tuple[int, int] | None:
    """(VmRSS, VmHWM) in kB."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return None
    pairs = (line.partition(":") for line in lines)
    found = {k: int(v.split()[0]) for k, _, v in pairs if k in ("VmRSS", "VmHWM")}
    if len(found) < 2:
        return None  # a zombie has no memory lines
    return found["VmRSS"], found["VmHWM"]


class Sampler:
    """Reads the processes every `interval_s`; `take()` reads them now. A process that has
    exited counts with its last readings."""

    def __init__(self, pids: list[int], interval_s: float = 0.02) -> None:
        self._pids = pids
        self._interval_s = interval_s
        self._last: dict[int, tuple[float, int, int]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self.take()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.take()

    def take(self) -> Sample:
        with self._lock:
            for pid in self._pids:
                cpu, memory = cpu_seconds(pid), memory_kb(pid)
                if cpu is not None and memory is not None:
                    self._last[pid] = (cpu, *memory)
            values = list(self._last.values()) or [(0.0, 0, 0)]
            return Sample(
                time.perf_counter(),
                sum(v[0] for v in values),
                sum(v[1] for v in values),
                max(v[2] for v in values),
            )
