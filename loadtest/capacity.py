"""Capacity search: raise the arrival rate step by step until the server stops keeping up.

Theory of operation
-------------------
With ``--capacity`` (and ``--rate``, the highest rate to try), :class:`RateShape
<loadtest.shapes.RateShape>` asks a :class:`CapacitySearch` for the rate each
second. The search runs at most ``--rate-steps`` steps of ``--step-time``
seconds, at rates rising evenly from ``--rate-start`` (default ``rate /
steps``) to ``--rate``. At the end of each step it judges that step's window
of Locust's statistics (the difference of two snapshots of every entry's
counts and response-time histogram, so earlier steps do not dilute it):

- p95 of the response times of all entries except the open model's own
  (``OPEN arrival missed``), in ms, must be at most ``--max-p95-ms``;
- failed / all requests (again without ``OPEN``) at most ``--max-error-rate``;
- missed arrivals / arrivals offered (rate x step time) at most
  ``--max-error-rate`` too: a rate the users could not even start is not
  sustained.

The first step that fails ends the test; the highest rate of a step that
passed is the *sustainable rate* (``None`` if the first step failed). If every
step passes the result says the limit was not reached (the true capacity is
higher than ``--rate``). The result is logged and saved in the
``capacity`` section of ``--mailharness-results``.

Bounded: at most ``--rate-steps`` steps (capped at :data:`MAX_STEPS`) of
``--step-time`` seconds, and Locust's ``--run-time``, if given, still ends the
run (the result then says so). On a master the workers report their
statistics every 3 seconds (Locust's ``WORKER_REPORT_INTERVAL``), so a step's
window is that much fuzzy; use steps of 10 seconds or more there.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from locust import events
from locust.env import Environment
from locust.stats import RequestStats

from . import runinfo

__all__ = ["MAX_STEPS", "CapacitySearch", "Snapshot", "StepVerdict", "percentile"]

log = logging.getLogger("loadtest.capacity")

MAX_STEPS = 50
EXCLUDED_TYPES = frozenset({"OPEN"})  # the open model's bookkeeping, not the server's answers
MISSED_KEY = ("arrival missed", "OPEN")


@dataclass(frozen=True)
class Snapshot:
    """Counts and the response-time histogram of the entries at one moment."""

    requests: int
    failures: int
    missed: int
    histogram: dict[int, int]

    @classmethod
    def take(cls, stats: RequestStats) -> Snapshot:
        requests = failures = missed = 0
        histogram: dict[int, int] = {}
        for key, entry in list(stats.entries.items()):
            if key == MISSED_KEY:
                missed += entry.num_requests
            if entry.method in EXCLUDED_TYPES:
                continue
            requests += entry.num_requests
            failures += entry.num_failures
            for ms, count in entry.response_times.items():
                histogram[ms] = histogram.get(ms, 0) + count
        return cls(requests, failures, missed, histogram)

    def minus(self, earlier: Snapshot) -> Snapshot:
        histogram = {
            ms: n - earlier.histogram.get(ms, 0)
            for ms, n in self.histogram.items()
            if n - earlier.histogram.get(ms, 0) > 0
        }
        return Snapshot(
            self.requests - earlier.requests,
            self.failures - earlier.failures,
            self.missed - earlier.missed,
            histogram,
        )


def percentile(histogram: dict[int, int], fraction: float) -> float | None:
    """The response time below which ``fraction`` of the samples fall (None: no samples)."""
    total = sum(histogram.values())
    if total == 0:
        return None
    wanted = fraction * total
    seen = 0
    for ms in sorted(histogram):
        seen += histogram[ms]
        if seen >= wanted:
            return float(ms)
    return float(max(histogram))


@dataclass
class StepVerdict:
    """One step's window, judged."""

    rate: float
    duration: float
    requests: int
    failures: int
    missed: int
    p95_ms: float | None
    passed: bool
    reasons: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        error_rate = self.failures / self.requests if self.requests else 0.0
        return {
            "rate": round(self.rate, 3),
            "duration_s": round(self.duration, 2),
            "requests": self.requests,
            "requests_per_s": round(self.requests / self.duration, 2) if self.duration else 0.0,
            "failures": self.failures,
            "error_rate": round(error_rate, 4),
            "missed_arrivals": self.missed,
            "p95_ms": self.p95_ms,
            "passed": self.passed,
            "reasons": self.reasons,
        }


class CapacitySearch:
    """Rates to try and the verdict on each; see the module docstring.

    Args:
        rates: the step rates, rising.
        step_time: seconds per step.
        max_p95_ms: the p95 limit.
        max_error_rate: the limit on failed requests and on missed arrivals (fractions).
    """

    def __init__(
        self, rates: list[float], step_time: float, max_p95_ms: float, max_error_rate: float
    ) -> None:
        if not rates:
            raise ValueError("a capacity search needs at least one rate")
        self.rates = rates[:MAX_STEPS]
        self.step_time = step_time
        self.max_p95_ms = max_p95_ms
        self.max_error_rate = max_error_rate
        self.restart()

    @classmethod
    def from_options(cls, environment: Environment, options: Any) -> CapacitySearch:
        top = float(options.rate)
        steps = max(1, min(int(options.rate_steps), MAX_STEPS))
        start = float(options.rate_start) if options.rate_start is not None else top / steps
        if steps == 1:
            rates = [top]
        else:
            rates = [start + (top - start) * i / (steps - 1) for i in range(steps)]
        return cls(
            rates,
            float(options.step_time),
            float(options.max_p95_ms),
            float(options.max_error_rate),
        )

    def restart(self) -> None:
        self.index = 0
        self.verdicts: list[StepVerdict] = []
        self.done = False
        self.stopped_because = ""
        self._started: float | None = None
        self._snapshot: Snapshot | None = None

    def rate_at(self, t: float, stats: RequestStats) -> float | None:
        """The rate for run time ``t`` (seconds); None once the search is over."""
        if self.done:
            return None
        if self._snapshot is None:
            self._snapshot, self._started = Snapshot.take(stats), t
        assert self._started is not None
        if t - self._started >= self.step_time:
            now = Snapshot.take(stats)
            verdict = self.judge(
                self.rates[self.index], t - self._started, now.minus(self._snapshot)
            )
            self.verdicts.append(verdict)
            log.info(
                "capacity step %d: %.2f msg/s %s (p95 %s ms, %d/%d failed, %d missed)%s",
                self.index + 1,
                verdict.rate,
                "sustained" if verdict.passed else "NOT sustained",
                verdict.p95_ms,
                verdict.failures,
                verdict.requests,
                verdict.missed,
                f": {'; '.join(verdict.reasons)}" if verdict.reasons else "",
            )
            if not verdict.passed:
                self.done = True
                self.stopped_because = "; ".join(verdict.reasons)
                return None
            self.index += 1
            if self.index >= len(self.rates):
                self.done = True
                self.stopped_because = "every step sustained (the limit was not reached)"
                return None
            self._snapshot, self._started = now, t
        return self.rates[self.index]

    def judge(self, rate: float, duration: float, window: Snapshot) -> StepVerdict:
        p95 = percentile(window.histogram, 0.95)
        reasons: list[str] = []
        if window.requests == 0:
            reasons.append("no requests completed in the step")
        if p95 is not None and p95 > self.max_p95_ms:
            reasons.append(f"p95 {p95:g} ms above {self.max_p95_ms:g} ms")
        error_rate = window.failures / window.requests if window.requests else 0.0
        if error_rate > self.max_error_rate:
            reasons.append(f"error rate {error_rate:.2%} above {self.max_error_rate:.2%}")
        offered = rate * duration
        if offered and window.missed / offered > self.max_error_rate:
            reasons.append(
                f"{window.missed} of ~{offered:.0f} arrivals missed "
                "(too few users, or a server too slow)"
            )
        return StepVerdict(
            rate,
            duration,
            window.requests,
            window.failures,
            window.missed,
            p95,
            not reasons,
            reasons,
        )

    def sustainable_rate(self) -> float | None:
        passed = [v.rate for v in self.verdicts if v.passed]
        return max(passed) if passed else None

    def result(self) -> dict[str, Any]:
        limit_reached = any(not v.passed for v in self.verdicts)
        return {
            "sustainable_rate": self.sustainable_rate(),
            "limit_reached": limit_reached,
            "stopped_because": self.stopped_because or "stopped before the search ended",
            "max_p95_ms": self.max_p95_ms,
            "max_error_rate": self.max_error_rate,
            "step_time_s": self.step_time,
            "rates": [round(r, 3) for r in self.rates],
            "steps": [v.to_json() for v in self.verdicts],
        }


def _add_arguments(parser: Any) -> None:
    group = parser.add_argument_group("mailharness capacity search (loadtest/capacity.py)")
    group.add_argument(
        "--capacity",
        action="store_true",
        default=False,
        help="Search the highest sustainable rate: --rate-steps steps of --step-time "
        "seconds from --rate-start up to --rate, stopping at the first step whose p95 or "
        "error rate crosses a limit.",
    )
    group.add_argument(
        "--max-p95-ms",
        type=float,
        default=1000.0,
        help="Capacity search: the highest acceptable p95 response time, ms.",
    )
    group.add_argument(
        "--max-error-rate",
        type=float,
        default=0.01,
        help="Capacity search: the highest acceptable fraction of failed requests "
        "(and of missed arrivals).",
    )


def _result(environment: Environment) -> dict[str, Any] | None:
    """The search's verdicts for the results file (also when --run-time cut it short)."""
    search = getattr(environment.shape_class, "search", None)
    if not isinstance(search, CapacitySearch):
        return None
    if not search.done:
        search.stopped_because = "the run ended (--run-time) before the search did"
    return search.result()


events.init_command_line_parser.add_listener(_add_arguments)
runinfo.provide("capacity", _result)
