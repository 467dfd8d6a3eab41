"""The failed-login throttle: delays grow per address, within a window and a cap."""

from __future__ import annotations

from reference_server.throttle import FailureThrottle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_delay_grows_with_failures_from_one_address_up_to_the_cap():
    throttle = FailureThrottle(0.5, cap=3, clock=Clock())
    assert [throttle.record_failure("192.0.2.1") for _ in range(5)] == [0.5, 1.0, 1.5, 1.5, 1.5]


def test_addresses_are_counted_separately():
    throttle = FailureThrottle(1.0, clock=Clock())
    throttle.record_failure("192.0.2.1")
    throttle.record_failure("192.0.2.1")
    assert throttle.record_failure("192.0.2.2") == 1.0
    assert throttle.recent("192.0.2.1") == 2


def test_failures_older_than_the_window_are_forgotten():
    clock = Clock()
    throttle = FailureThrottle(1.0, window=60, clock=clock)
    throttle.record_failure("192.0.2.1")
    throttle.record_failure("192.0.2.1")
    clock.now += 61
    assert throttle.recent("192.0.2.1") == 0
    assert throttle.record_failure("192.0.2.1") == 1.0


def test_memory_is_bounded_by_forgetting_the_least_recent_address():
    throttle = FailureThrottle(1.0, max_addresses=3, clock=Clock())
    for n in range(5):
        throttle.record_failure(f"192.0.2.{n}")
    assert [throttle.recent(f"192.0.2.{n}") for n in range(5)] == [0, 0, 1, 1, 1]
