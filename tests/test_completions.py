"""The completion source (`operators/completions.py`): it batches the I/O runtime's results and
ends, during a drain, only once nothing is left to report (or the drain ran out of time)."""

from __future__ import annotations

import queue
from typing import cast

import pytest
from bytewax.inputs import StatelessSourcePartition

from wa_worker.core.runtime import IoRuntime
from wa_worker.models.completions import Completion, HandleResult, HandleStatus
from wa_worker.operators.completions import CompletionSource

Item = tuple[str, Completion]


class FakeRuntime:
    """The two things the source reads from `IoRuntime`: its results queue and `idle()`."""

    def __init__(self) -> None:
        self.completions: queue.SimpleQueue[Item] = queue.SimpleQueue()
        self.busy = False

    def idle(self) -> bool:
        return not self.busy


class FakeEnd:
    """An EndSignal the test flips; counts `expired()` calls (the drain logs on the first)."""

    def __init__(self) -> None:
        self.draining = False
        self.out_of_time = False
        self.expiry_asks = 0

    def expired(self) -> bool:
        self.expiry_asks += 1
        return self.out_of_time


def result(n: int) -> Item:
    return f"conv-{n}", HandleResult(f"event-{n}", "token", HandleStatus.OK)


def partition(runtime: FakeRuntime, end: FakeEnd) -> StatelessSourcePartition[Item]:
    return CompletionSource(lambda: cast(IoRuntime, runtime), end).build("completions", 0, 1)


def test_a_batch_takes_every_queued_result_in_order() -> None:
    runtime = FakeRuntime()
    part = partition(runtime, FakeEnd())
    for n in range(3):
        runtime.completions.put(result(n))
    assert part.next_batch() == [result(0), result(1), result(2)]
    assert part.next_batch() == []  # nothing waits: an empty batch, no blocking


def test_a_batch_holds_at_most_5000_results() -> None:
    runtime = FakeRuntime()
    part = partition(runtime, FakeEnd())
    for n in range(5001):
        runtime.completions.put(result(n))
    assert len(list(part.next_batch())) == 5000
    assert part.next_batch() == [result(5000)]


def test_without_a_drain_the_source_never_ends() -> None:
    runtime, end = FakeRuntime(), FakeEnd()
    end.out_of_time = True  # ignored while not draining
    part = partition(runtime, end)
    assert [part.next_batch() for _ in range(3)] == [[], [], []]


def test_a_drain_ends_the_source_once_the_queue_is_empty_and_the_runtime_idle() -> None:
    runtime, end = FakeRuntime(), FakeEnd()
    part = partition(runtime, end)
    runtime.completions.put(result(1))
    end.draining = True
    assert part.next_batch() == [result(1)]  # results still queued are delivered first
    with pytest.raises(StopIteration):
        part.next_batch()
    assert end.expiry_asks == 0  # idle: the drain's timeout is not consulted (nor logged)


def test_a_drain_waits_for_calls_in_flight_until_it_expires() -> None:
    runtime, end = FakeRuntime(), FakeEnd()
    runtime.busy = True
    end.draining = True
    part = partition(runtime, end)
    assert part.next_batch() == []  # a call has not reported back yet: keep waiting
    runtime.completions.put(result(2))
    assert part.next_batch() == [result(2)]
    end.out_of_time = True
    with pytest.raises(StopIteration):
        part.next_batch()


def test_a_result_that_arrives_as_the_drain_expires_is_still_delivered() -> None:
    runtime, end = FakeRuntime(), FakeEnd()
    runtime.busy, end.draining, end.out_of_time = True, True, True
    part = partition(runtime, end)
    runtime.completions.put(result(3))
    assert part.next_batch() == [result(3)]  # a non-empty queue never ends the source
    with pytest.raises(StopIteration):
        part.next_batch()


def test_the_runtime_is_made_when_a_partition_is_built_not_before() -> None:
    made: list[FakeRuntime] = []

    def runtime() -> IoRuntime:
        made.append(FakeRuntime())
        return cast(IoRuntime, made[-1])

    source = CompletionSource(runtime, FakeEnd())
    assert made == []  # Bytewax may pickle the source to other processes: nothing started yet
    part = source.build("completions", 0, 1)
    made[0].completions.put(result(4))
    assert made and part.next_batch() == [result(4)]
