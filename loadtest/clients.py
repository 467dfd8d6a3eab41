"""The drivers, measured: every protocol step becomes one Locust request event.

:class:`LocustRecorder` is the :class:`~loadtest.drivers.StepRecorder` that
does it, like ``environment.events.request.measure(protocol, step)`` would:
``request_type`` is the protocol (``"SMTP"``, ``"POP3"``, ``"IMAP"``),
``name`` the step (``"connect"``, ``"STARTTLS"``, ``"AUTH"``, ``"MAIL"``,
``"RCPT"``, ``"DATA"``, ``"SELECT"``, ``"FETCH"``, ...), ``response_time`` in
milliseconds, ``response_length`` in bytes (for DATA and APPEND: the message
sent), and for a failure ``exception``, whose ``repr`` Locust shows in its
failure table: ``SmtpReplyError: 451 4.3.0 try again later``. Locust's
console, web UI, CSV and HTML report then show ``SMTP DATA`` and the rest,
and a distributed run aggregates them as usual.

``MeasuredSmtpClient``, ``MeasuredPop3Client`` and ``MeasuredImapClient`` are
the drivers with that recorder plugged in; everything else about them is the
driver's API (:mod:`loadtest.drivers`). Failures still raise, so the user's
task stops its transaction; Locust has counted the failure by then.
"""

from __future__ import annotations

import logging
import time
import traceback
from types import TracebackType
from typing import Any

from locust import log as locust_log
from locust.env import Environment
from locust.exception import (
    InterruptTaskSet,
    RescheduleTask,
    RescheduleTaskImmediately,
    StopTest,
    StopUser,
)

from .drivers import (
    Endpoint,
    ImapDriver,
    Pop3Driver,
    SmtpDriver,
    StepMeta,
)

__all__ = ["LocustRecorder", "MeasuredImapClient", "MeasuredPop3Client", "MeasuredSmtpClient"]

# what EventHook.fire lets out of a listener rather than logging it
_FLOW_CONTROL = (StopUser, StopTest, RescheduleTask, RescheduleTaskImmediately, InterruptTaskSet)


class LocustRecorder:
    """Fires ``environment.events.request`` once per driver step.

    It fires the event itself rather than through ``events.request.measure()``:
    ``measure()`` swallows the exception (the driver needs it to stop the
    transaction) and, from its ``finally``, reports a step cut short by
    ``GreenletExit`` (Locust stopping the user) as a success. Here a step is
    reported when it ends: with its exception if it failed, and not at all if
    the user was stopped in the middle of it.
    """

    def __init__(self, environment: Environment, *, context: dict[str, Any] | None = None) -> None:
        self.environment = environment
        self.context = context or {}

    def step(self, protocol: str, name: str) -> _LocustStep:
        return _LocustStep(self, StepMeta(protocol, name))

    def record(
        self,
        protocol: str,
        name: str,
        start_time: float,
        response_time: float,
        response_length: int,
        exception: Exception | None,
    ) -> None:
        """One step the driver timed itself (pipelined SMTP transactions): one event.

        The event's listeners are called as ``EventHook.fire`` calls them (a
        copy of the list, in order, Locust's control-flow exceptions passed on,
        any other error logged), without its keyword packing and unpacking,
        which at three steps per message is a good part of the cost of a step.
        """
        hook = self.environment.events.request
        handlers = getattr(hook, "_handlers", None)
        if type(handlers) is not list:  # not the EventHook this was written against
            hook.fire(
                request_type=protocol,
                name=name,
                response_time=response_time,
                response_length=response_length,
                exception=exception,
                context=self.context,
                start_time=start_time,
                url=None,
            )
            return
        for handler in handlers.copy():
            try:
                handler(
                    request_type=protocol,
                    name=name,
                    response_time=response_time,
                    response_length=response_length,
                    exception=exception,
                    context=self.context,
                    start_time=start_time,
                    url=None,
                )
            except _FLOW_CONTROL:
                raise
            except Exception:
                logging.error("Uncaught exception in event handler: \n%s", traceback.format_exc())
                locust_log.unhandled_greenlet_exception = True


class _LocustStep:
    """One step of a :class:`LocustRecorder`: a class, not a generator context manager,
    since it runs for every protocol step (tens of thousands a second)."""

    __slots__ = ("meta", "recorder", "start", "start_time")

    def __init__(self, recorder: LocustRecorder, meta: StepMeta) -> None:
        self.recorder = recorder
        self.meta = meta

    def __enter__(self) -> StepMeta:
        self.start_time = time.time()
        self.start = time.perf_counter()
        return self.meta

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None and not issubclass(exc_type, Exception):
            return  # GreenletExit (the user was stopped), KeyboardInterrupt: no step ended
        meta, recorder = self.meta, self.recorder
        recorder.environment.events.request.fire(
            request_type=meta.protocol,
            name=meta.name,
            response_time=(time.perf_counter() - self.start) * 1000.0,
            response_length=meta.response_length,
            exception=exc,
            context=recorder.context,
            start_time=self.start_time,
            url=None,
        )


class MeasuredSmtpClient(SmtpDriver):
    """:class:`~loadtest.drivers.SmtpDriver` whose steps are Locust requests."""

    def __init__(self, environment: Environment, endpoint: Endpoint, **kwargs: Any) -> None:
        super().__init__(endpoint, recorder=LocustRecorder(environment), **kwargs)


class MeasuredPop3Client(Pop3Driver):
    """:class:`~loadtest.drivers.Pop3Driver` whose steps are Locust requests."""

    def __init__(self, environment: Environment, endpoint: Endpoint, **kwargs: Any) -> None:
        super().__init__(endpoint, recorder=LocustRecorder(environment), **kwargs)


class MeasuredImapClient(ImapDriver):
    """:class:`~loadtest.drivers.ImapDriver` whose steps are Locust requests."""

    def __init__(self, environment: Environment, endpoint: Endpoint, **kwargs: Any) -> None:
        super().__init__(endpoint, recorder=LocustRecorder(environment), **kwargs)
