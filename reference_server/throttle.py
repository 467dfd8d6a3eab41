"""Slowing down password guessing: each failed login from an address waits longer.

A per-session delay alone is beaten by opening a new connection per guess,
so failures are counted per client address over a sliding window, shared by
every listener that takes passwords.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["FailureThrottle"]


class FailureThrottle:
    """Counts recent login failures per client address.

    Args:
        base: seconds of delay for the first failure; ``n`` recent failures wait
            ``base * min(n, cap)``.
        window: seconds a failure is remembered.
        cap: the most multiples of ``base`` a failure ever waits.
        max_addresses: addresses remembered at once; beyond that the oldest go.
    """

    def __init__(
        self,
        base: float,
        *,
        window: float = 900.0,
        cap: int = 8,
        max_addresses: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.base = base
        self.window = window
        self.cap = cap
        self.max_addresses = max_addresses
        self._clock = clock
        self._failures: dict[str, list[float]] = {}

    def record_failure(self, address: str) -> float:
        """Note a failure from ``address``; returns the seconds to wait before answering."""
        now = self._clock()
        recent = [t for t in self._failures.pop(address, []) if now - t < self.window]
        recent.append(now)
        self._failures[address] = recent[-self.cap :]  # re-inserted: dict order is recency
        while len(self._failures) > self.max_addresses:
            del self._failures[next(iter(self._failures))]
        return self.base * min(len(recent), self.cap)

    def recent(self, address: str) -> int:
        """Failures from ``address`` within the window."""
        now = self._clock()
        return sum(1 for t in self._failures.get(address, ()) if now - t < self.window)
