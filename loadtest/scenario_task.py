"""Any scenario file as load: ``--scenario FILE`` runs its dialogues as a Locust task.

Theory of operation
-------------------
The scenario engine (:mod:`conformance.scenario`) is asyncio code; Locust runs
users as greenlets on a gevent hub that has monkey-patched ``socket``,
``ssl``, ``selectors`` and ``threading``. Driving an asyncio loop from a
greenlet would block the hub, and gevent's patched selector is no place for
an asyncio loop. So each execution runs in a real OS thread from gevent's
thread pool (``gevent.get_hub().threadpool.apply``), on a fresh asyncio
event loop built over the *original* ``selectors.DefaultSelector``
(``gevent.monkey.get_original``). Inside that thread everything is the
conformance runner as ``mailharness run`` uses it; the greenlet that called
``apply`` sleeps until the thread is done while the other users go on. The
scenarios connect to IP literals, so no resolver thread is involved. The pool
grows to the number of users in the process (at most :data:`MAX_THREADS`).

Events (fired from the user's greenlet, after the thread returns, so
Locust's statistics are only touched from the hub):

- one per step that talks to a connection: request type ``SCENARIO``, name
  ``<scenario id> step <N>`` (N counts from 1, as in the conformance report),
  its own time; the step that failed is a failure with the runner's message;
- one for the whole execution: request type ``SCENARIO``, name ``<scenario
  id>``, the scenario's duration; a failed, errored or not-applicable verdict
  is a failure.

So the aggregate counts both; read the per-scenario row for transactions per
second and the step rows for where the time goes. ``sleep`` and ``close``
steps fire nothing.

Each user keeps one conformance :class:`~conformance.scenario.runner.Runner`
(so capability probes for ``requires`` happen once per user) and takes the
file's scenarios in turn, starting at a different one per user. POP3
scenarios take a per-account lock shared by the users of the process, as the
conformance runner does within one run (RFC 1939 §4: one session per
maildrop); users in other processes may still collide, which shows as
``-ERR [IN-USE]`` failures. Scenarios that need the outbound sink
(``sink: true``) cannot run as load (every user would listen on the sink's
port) and are refused when the file is loaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gevent
import gevent.lock
import gevent.monkey
from locust import User, constant, events
from locust.env import Environment
from locust.exception import StopUser

from conformance._yaml import LoadError
from conformance.results import ScenarioResult, Status
from conformance.scenario.loader import LoadErrors, load_paths
from conformance.scenario.model import Close, Scenario, Sleep, Step
from conformance.scenario.runner import Runner, _pop3_accounts, check_against_target
from conformance.targets import Target, load_target

from .users import register_profile

__all__ = ["MAX_THREADS", "REQUEST_TYPE", "ScenarioUser", "load_scenarios"]

log = logging.getLogger("loadtest.scenario_task")

REQUEST_TYPE = "SCENARIO"
MAX_THREADS = 200


@dataclass(frozen=True)
class _StepTime:
    step: Step
    ms: float
    error: BaseException | None


class _TimedRunner(Runner):
    """The conformance runner, noting each step's time (a hook on its ``_step``)."""

    def __init__(self, target: Target) -> None:
        super().__init__(target, jobs=1)
        self.times: list[_StepTime] = []

    async def _step(self, ex: Any, step: Step) -> None:
        started = time.perf_counter()
        try:
            await super()._step(ex, step)
        except BaseException as exc:
            self.times.append(_StepTime(step, (time.perf_counter() - started) * 1000, exc))
            raise
        self.times.append(_StepTime(step, (time.perf_counter() - started) * 1000, None))


def _run_in_thread(runner: _TimedRunner, scenario: Scenario) -> ScenarioResult:
    """Body of the OS thread: one execution on its own event loop."""
    selector_class = gevent.monkey.get_original("selectors", "DefaultSelector")
    loop = asyncio.SelectorEventLoop(selector_class())
    try:
        return loop.run_until_complete(runner.run_one(scenario))
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


class ScenarioFailed(Exception):
    """A scenario's verdict under load was not ``passed``."""

    def __repr__(self) -> str:
        return f"ScenarioFailed: {self}"


_LOADED: dict[tuple[str, str], tuple[Target, list[Scenario]]] = {}
_MAILDROPS: dict[str, gevent.lock.Semaphore] = {}


def load_scenarios(scenario_path: Path, target_path: Path) -> tuple[Target, list[Scenario]]:
    """The target and the scenarios of ``scenario_path`` (a file or directory), checked.

    Raises:
        ValueError: a load error, a service the target lacks, or a sink scenario;
            the message lists every problem.
    """
    key = (str(scenario_path), str(target_path))
    if key in _LOADED:
        return _LOADED[key]
    try:
        target = load_target(target_path)
    except LoadError as exc:
        raise ValueError(str(exc)) from None
    try:
        scenarios = load_paths([scenario_path], accounts=set(target.accounts))
    except LoadErrors as exc:
        raise ValueError("\n".join(str(e) for e in exc.errors)) from None
    problems = [str(e) for e in check_against_target(scenarios, target)]
    problems += [
        f"{sc.location}: scenario {sc.id} needs the outbound sink (sink: true), which load "
        "runs cannot serve; leave it out of --scenario"
        for sc in scenarios
        if sc.sink
    ]
    if not scenarios:
        problems.append(f"{scenario_path}: no scenario found")
    if problems:
        raise ValueError("\n".join(problems))
    _LOADED[key] = (target, scenarios)
    return target, scenarios


@contextlib.contextmanager
def _maildrops(scenario: Scenario) -> Iterator[None]:
    """Hold the process's POP3 maildrop locks the scenario needs (sorted: no deadlock)."""
    held: list[gevent.lock.Semaphore] = []
    try:
        for account in sorted(_pop3_accounts(scenario)):
            lock = _MAILDROPS.setdefault(account, gevent.lock.Semaphore())
            lock.acquire()
            held.append(lock)
        yield
    finally:
        for lock in reversed(held):
            lock.release()


class ScenarioUser(User):
    """Runs the scenarios of ``--scenario FILE`` one after another (closed model: no wait)."""

    wait_time = constant(0)
    _instances = 0

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        ScenarioUser._instances += 1
        self._offset = ScenarioUser._instances
        self._runner: _TimedRunner | None = None
        self._scenarios: list[Scenario] = []

    def on_start(self) -> None:
        options = self.environment.parsed_options
        path = getattr(options, "scenario", None)
        target_file = getattr(options, "target_file", None)
        if not path or not target_file:
            log.error("ScenarioUser needs --scenario FILE and --target-file FILE")
            raise StopUser()
        try:
            target, self._scenarios = load_scenarios(Path(path), Path(target_file))
        except ValueError as exc:
            log.error("cannot run --scenario %s:\n%s", path, exc)
            raise StopUser() from None
        self._runner = _TimedRunner(target)
        pool = gevent.get_hub().threadpool
        users = max(1, self.environment.runner.user_count if self.environment.runner else 1)
        if pool.maxsize < min(users, MAX_THREADS):
            pool.maxsize = min(users, MAX_THREADS)

    def _next_scenario(self) -> Scenario:
        scenario = self._scenarios[self._offset % len(self._scenarios)]
        self._offset += 1
        return scenario

    def run_scenario(self) -> None:
        """One execution of the next scenario, reported as its steps and as a whole."""
        runner = self._runner
        if runner is None:
            raise StopUser()
        scenario = self._next_scenario()
        runner.times = []
        with _maildrops(scenario):
            start_time = time.time()
            result: ScenarioResult = gevent.get_hub().threadpool.apply(
                _run_in_thread, (runner, scenario)
            )
        self._fire(scenario, result, start_time, runner.times)

    def _fire(
        self, scenario: Scenario, result: ScenarioResult, start_time: float, times: list[_StepTime]
    ) -> None:
        request = self.environment.events.request
        failed = result.status is not Status.PASSED
        for st in times:
            if isinstance(st.step.action, Close | Sleep):
                continue
            error: Exception | None = None
            if st.error is not None and failed and result.step in (None, st.step.index):
                error = ScenarioFailed(result.message or type(st.error).__name__)
            request.fire(
                request_type=REQUEST_TYPE,
                name=f"{scenario.id} step {st.step.index + 1}",
                response_time=st.ms,
                response_length=0,
                exception=error,
                context={},
                start_time=start_time,
            )
        exception = None
        if failed:
            what = result.status.value.replace("_", " ")
            exception = ScenarioFailed(f"{what}: {result.message or ''}".rstrip(": "))
        request.fire(
            request_type=REQUEST_TYPE,
            name=scenario.id,
            response_time=result.duration * 1000,
            response_length=0,
            exception=exception,
            context={},
            start_time=start_time,
        )

    tasks = [run_scenario]


register_profile("scenario", ScenarioUser)


@events.init_command_line_parser.add_listener
def _add_arguments(parser: Any) -> None:
    parser.add_argument(
        "--scenario",
        default=None,
        metavar="FILE",
        help="A scenario file (or directory) for ScenarioUser to run as load; needs --target-file.",
    )
