"""The handler's circuit breaker, on a hand-driven clock."""

from __future__ import annotations

from wa_worker.core.breaker import CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make() -> tuple[CircuitBreaker, Clock]:
    clock = Clock()
    return CircuitBreaker(
        window=10, failure_ratio=0.9, min_calls=5, probe_interval_s=2, clock=clock
    ), clock


def test_stays_closed_when_a_third_of_calls_fail() -> None:
    breaker, _ = make()
    for i in range(100):
        breaker.record(answered=i % 3 != 0)
    assert not breaker.is_open() and breaker.admit_call()


def test_opens_when_almost_all_fail_then_one_trial_per_interval() -> None:
    breaker, clock = make()
    for _ in range(5):
        breaker.record(answered=False)
    assert breaker.is_open() and "circuit open" in (breaker.reason() or "")
    assert not breaker.admit_call()  # nothing until the probe interval passes
    clock.now = 2.0
    assert breaker.admit_call()  # the trial
    assert not breaker.admit_call()  # only one at a time
    breaker.record(answered=False)
    assert not breaker.admit_call()
    clock.now = 4.1
    assert breaker.admit_call()
    breaker.record(answered=True)
    assert not breaker.is_open() and breaker.reason() is None and breaker.admit_call()


def test_permanent_answers_count_as_the_handler_being_up() -> None:
    breaker, _ = make()
    for _ in range(50):
        breaker.record(answered=True)  # e.g. 422s: the handler answers
    assert not breaker.is_open()


def test_disabled_never_opens() -> None:
    breaker = CircuitBreaker(window=5, min_calls=1, enabled=False)
    for _ in range(20):
        breaker.record(answered=False)
    assert not breaker.is_open()


def test_a_trial_that_reports_after_another_call_closed_the_circuit_blocks_no_later_trial() -> None:
    # The circuit closes on an earlier call's answer while the trial is still out; the trial
    # then reports to a closed circuit. When it opens again, its trials must still come.
    breaker, clock = make()
    for _ in range(5):
        breaker.record(answered=False)
    clock.now = 2.0
    assert breaker.admit_call()  # the trial goes out
    breaker.record(answered=True)  # a call started before the circuit opened answers
    assert not breaker.is_open()
    breaker.record(answered=True)  # the trial's own report, to the closed circuit
    for _ in range(10):
        breaker.record(answered=False)
    assert breaker.is_open()
    clock.now = 10.0
    assert breaker.admit_call()  # the next probe, not a circuit held open for good
