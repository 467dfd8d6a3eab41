"""Open-model load: a target arrival rate of messages per second, constant, stepped or ramped.

Theory of operation
-------------------
Locust's usual model is closed: each user starts its next transaction when
the previous one is done (plus ``wait_time``), so a slower server gets less
load, and the offered rate is whatever the server allows. In an open model
arrivals come at a rate of their own. Here:

- ``--rate R`` (messages per second, over all processes) turns it on. The
  users become a pool of at most ``--users`` concurrent transactions; each
  user takes its next *arrival slot* from a :class:`Pacer` shared by the users
  of its process, instead of its own ``wait_time``. Slots are spaced ``1/rate``
  apart whatever the response times, so while a user is free when its slot
  comes, arrivals follow the schedule exactly.
- When every user is busy the schedule falls behind; a free user takes an
  overdue slot at once (a catch-up burst), but never one more than
  ``--max-lag`` seconds old: older slots are *missed arrivals*, each fired as a
  failed request ``OPEN arrival missed`` so they show in the statistics (the
  offered load was not carried: too few users for the server's latency, or a
  server that cannot keep up). No queue of arrivals builds up, so memory and
  the catch-up are bounded.
- :class:`RateShape`, a ``LoadTestShape``, sets the rate once a second on the
  master (or the local runner): ``--rate-shape constant`` holds ``R``; ``step``
  goes from ``--rate-start`` to ``R`` in ``--rate-steps`` equal steps of
  ``--step-time`` seconds, then holds; ``ramp`` rises linearly from
  ``--rate-start`` to ``R`` over ``--ramp-time`` seconds (default: the run
  time), then holds; with ``--capacity`` the steps come from the capacity
  search (:mod:`loadtest.capacity`). A master sends each worker its share
  (``rate / workers``) as a custom message whenever it changes.
- The shape is active only when ``--rate`` is given: without it the init hook
  removes it, and Locust runs its closed model as usual.

Why slots rather than a greenlet per arrival: Locust's users, spawn rate,
statistics, task sets and distribution keep working unchanged, and the
concurrency bound is simply ``--users``. The price: a user's first task starts
at spawn time (Locust runs a first task before any wait), so up to ``--users``
arrivals come unpaced at the start. Arrivals are counted per process
(``started``, ``missed``, ``max_lag_s``) in the ``open_model`` results section.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any
from weakref import WeakKeyDictionary

import gevent
from locust import LoadTestShape, User, events
from locust.env import Environment
from locust.runners import MasterRunner, WorkerRunner

from . import runinfo
from .capacity import CapacitySearch

__all__ = [
    "ArrivalMissed",
    "Pacer",
    "RateSchedule",
    "RateShape",
    "open_wait_time",
    "pacer_for",
]

log = logging.getLogger("loadtest.shapes")

RATE_MESSAGE = "mailharness_rate"  # master -> worker: {"rate": this worker's share}
OPEN_TYPE = "OPEN"
MISSED_NAME = "arrival missed"
HORIZON = 1.0  # seconds: a user claims a slot at most this far ahead (rate changes apply soon)
MAX_MISSED_EVENTS = 100_000  # per process and test: a bound on events fired for missed arrivals


class ArrivalMissed(Exception):
    """An arrival slot passed while every user was busy (the open model's offered load lost)."""

    def __repr__(self) -> str:
        return f"ArrivalMissed: {self}"


class Pacer:
    """Arrival slots at ``rate`` per second, shared by the users of one process.

    Args:
        max_lag: the oldest overdue slot still started, in seconds.
        clock: monotonic seconds (injectable for tests).
        on_missed: called with the number of slots skipped as missed.
    """

    def __init__(
        self,
        *,
        max_lag: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        on_missed: Callable[[int], None] | None = None,
    ) -> None:
        self.max_lag = max_lag
        self.clock = clock
        self.on_missed = on_missed
        self.rate = 0.0
        self.started = 0
        self.missed = 0
        self.max_lag_seen = 0.0
        self._next: float | None = None

    def set_rate(self, rate: float) -> None:
        """Change the rate (0 pauses). A slot claimed under a lower rate is pulled in."""
        rate = max(0.0, rate)
        if rate > 0 and self._next is not None:
            self._next = min(self._next, self.clock() + 1.0 / rate)
        self.rate = rate

    def reset(self) -> None:
        self.started = self.missed = 0
        self.max_lag_seen = 0.0
        self._next = None

    def claim(self) -> float | None:
        """Claim the next slot if it is due within :data:`HORIZON`; its time, else None."""
        if self.rate <= 0:
            return None
        now = self.clock()
        if self._next is None:
            self._next = now
        slot = self._next
        if slot > now + HORIZON:
            return None
        oldest = now - self.max_lag
        if slot < oldest:
            skipped = math.ceil((oldest - slot) * self.rate)
            slot += skipped / self.rate
            self.missed += skipped
            if self.on_missed is not None:
                self.on_missed(skipped)
        self._next = slot + 1.0 / self.rate
        self.started += 1
        self.max_lag_seen = max(self.max_lag_seen, now - slot)
        return slot

    def wait(self, sleep: Callable[[float], object] = gevent.sleep) -> None:
        """Block until this caller's slot (polling while paused or far ahead)."""
        while True:
            slot = self.claim()
            if slot is not None:
                delay = slot - self.clock()
                if delay > 0:
                    sleep(delay)
                return
            sleep(min(HORIZON / 2, 1.0 / self.rate) if self.rate > 0 else 0.2)

    def summary(self) -> dict[str, Any]:
        return {
            "started": self.started,
            "missed": self.missed,
            "max_lag_s": round(self.max_lag_seen, 3),
        }


_PACERS: WeakKeyDictionary[Environment, Pacer] = WeakKeyDictionary()


def pacer_for(environment: Environment) -> Pacer:
    """This process's pacer (made on first use; missed arrivals fire failed requests)."""
    pacer = _PACERS.get(environment)
    if pacer is None:
        options = environment.parsed_options
        max_lag = float(getattr(options, "max_lag", 1.0) or 1.0)
        fired = [0]

        def missed(count: int) -> None:
            for _ in range(min(count, MAX_MISSED_EVENTS - fired[0])):
                fired[0] += 1
                environment.events.request.fire(
                    request_type=OPEN_TYPE,
                    name=MISSED_NAME,
                    response_time=0,
                    response_length=0,
                    exception=ArrivalMissed(f"arrival slot more than {max_lag:g}s overdue"),
                    context={},
                )

        pacer = Pacer(max_lag=max_lag, on_missed=missed)
        _PACERS[environment] = pacer
    return pacer


def open_wait_time(user: User) -> float:
    """A ``wait_time`` for the open model: sleep until this user's next arrival slot.

    The waiting happens here (Locust has already marked the user as waiting,
    so it can be stopped meanwhile); the returned remaining delay is 0.
    """
    pacer_for(user.environment).wait()
    return 0.0


# -- the rate over time ---------------------------------------------------------------


class RateSchedule:
    """The target rate at a time into the run, for ``constant``, ``step`` and ``ramp``.

    Args:
        rate: the final (target) rate, messages per second.
        shape: ``constant``, ``step`` or ``ramp``.
        start: the first rate of ``step``/``ramp`` (default: ``rate / steps`` for
            ``step``, 0 for ``ramp``).
        steps: number of steps of ``step``.
        step_time: seconds per step.
        ramp_time: seconds the ``ramp`` takes.
    """

    def __init__(
        self,
        rate: float,
        shape: str = "constant",
        *,
        start: float | None = None,
        steps: int = 5,
        step_time: float = 10.0,
        ramp_time: float = 60.0,
    ) -> None:
        if shape not in ("constant", "step", "ramp"):
            raise ValueError(f"unknown rate shape {shape!r}: use constant, step or ramp")
        self.rate, self.shape = rate, shape
        self.steps = max(1, steps)
        self.step_time = max(0.1, step_time)
        self.ramp_time = max(0.1, ramp_time)
        default_start = rate / self.steps if shape == "step" else 0.0
        self.start = default_start if start is None else start

    def step_rates(self) -> list[float]:
        """The rates of the ``step`` shape, in order (the last is ``rate``)."""
        if self.steps == 1:
            return [self.rate]
        span = self.rate - self.start
        return [self.start + span * i / (self.steps - 1) for i in range(self.steps)]

    def at(self, t: float) -> float:
        if self.shape == "constant":
            return self.rate
        if self.shape == "step":
            rates = self.step_rates()
            return rates[min(int(t // self.step_time), len(rates) - 1)]
        return self.start + (self.rate - self.start) * min(1.0, t / self.ramp_time)


# -- the shape ------------------------------------------------------------------------


class RateShape(LoadTestShape):
    """Keeps ``--users`` users (the concurrency bound) and sets the arrival rate each second.

    Active only with ``--rate`` (see the module docstring). Ends at ``--run-time``,
    or when the capacity search is done.
    """

    use_common_options = True

    def __init__(self) -> None:
        super().__init__()
        self.schedule: RateSchedule | None = None
        self.search: CapacitySearch | None = None  # with --capacity
        self.sent_rate: float | None = None
        self.sent_workers = -1

    def setup(self, environment: Environment) -> None:
        options = environment.parsed_options
        assert options is not None
        rate = float(options.rate)
        if getattr(options, "capacity", False):
            self.search = CapacitySearch.from_options(environment, options)
        else:
            run_time = getattr(options, "run_time", None) or 60
            self.schedule = RateSchedule(
                rate,
                options.rate_shape,
                start=options.rate_start,
                steps=options.rate_steps,
                step_time=options.step_time,
                ramp_time=options.ramp_time or run_time,
            )

    def reset_time(self) -> None:
        super().reset_time()
        self.sent_rate = None
        if self.search is not None:
            self.search.restart()

    def tick(self) -> tuple[int, float] | None:
        runner = self.runner
        if runner is None:
            return None
        env = runner.environment
        options = env.parsed_options
        users = int(getattr(options, "num_users", None) or 1)
        spawn_rate = float(getattr(options, "spawn_rate", None) or users)
        t = self.get_run_time()
        run_time = getattr(options, "run_time", None)
        if run_time and t >= run_time:
            return None  # Locust enforces --run-time only after a shape has ended
        if self.search is not None:
            rate = self.search.rate_at(t, runner.stats)
            if rate is None:
                return None
        else:
            assert self.schedule is not None
            rate = self.schedule.at(t)
        self._apply(env, rate)
        return users, spawn_rate

    def _apply(self, env: Environment, rate: float) -> None:
        runner = env.runner
        if isinstance(runner, MasterRunner):
            workers = runner.worker_count
            if workers and (rate != self.sent_rate or workers != self.sent_workers):
                runner.send_message(RATE_MESSAGE, {"rate": rate / workers})
                self.sent_rate, self.sent_workers = rate, workers
        elif rate != self.sent_rate:
            pacer_for(env).set_rate(rate)
            self.sent_rate = rate


# -- wiring into Locust ---------------------------------------------------------------


def _open_model(environment: Environment) -> bool:
    options = environment.parsed_options
    return options is not None and getattr(options, "rate", None) is not None


@events.init_command_line_parser.add_listener
def _add_arguments(parser: Any) -> None:
    group = parser.add_argument_group("mailharness open model (loadtest/shapes.py)")
    group.add_argument(
        "--rate",
        type=float,
        default=None,
        metavar="MSGS/S",
        help="Open model: start transactions at this rate (all processes together) "
        "instead of after each user's wait; --users bounds the concurrency.",
    )
    group.add_argument(
        "--rate-shape",
        choices=["constant", "step", "ramp"],
        default="constant",
        help="How the rate develops: constant, step (--rate-steps of --step-time "
        "seconds), or ramp (linear over --ramp-time).",
    )
    group.add_argument(
        "--rate-start", type=float, default=None, help="First rate of step, ramp and --capacity."
    )
    group.add_argument("--rate-steps", type=int, default=5, help="Steps of step and --capacity.")
    group.add_argument(
        "--step-time", type=float, default=10.0, help="Seconds per step (step, --capacity)."
    )
    group.add_argument(
        "--ramp-time",
        type=float,
        default=None,
        help="Seconds of the ramp (default: the run time).",
    )
    group.add_argument(
        "--max-lag",
        type=float,
        default=1.0,
        help="An arrival slot overdue by more than this many seconds is a missed arrival.",
    )


def _on_rate_message(environment: Environment, msg: Any, **_kwargs: Any) -> None:
    pacer_for(environment).set_rate(float(msg.data["rate"]))


@events.init.add_listener
def _on_init(environment: Environment, **_kwargs: Any) -> None:
    shape = environment.shape_class
    if isinstance(shape, RateShape):
        if _open_model(environment):
            shape.setup(environment)
        else:  # closed model: Locust's own -u/-r/-t, as if no shape were defined
            environment.shape_class = None
    if isinstance(environment.runner, WorkerRunner):
        environment.runner.register_message(RATE_MESSAGE, _on_rate_message)


@events.test_start.add_listener
def _on_test_start(environment: Environment, **_kwargs: Any) -> None:
    """Pace the users (on a worker, the master's options have arrived by now)."""
    if not _open_model(environment) or isinstance(environment.runner, MasterRunner):
        return
    pacer_for(environment).reset()
    for user_class in environment.user_classes:
        user_class.wait_time = open_wait_time


def _finish(environment: Environment) -> dict[str, Any]:
    if not _open_model(environment):
        return {}
    return {**pacer_for(environment).summary(), "processes": 1}


runinfo.register("open_model", runinfo.Section(finish=_finish))
