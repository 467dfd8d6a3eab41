"""The delivery path as load: submit a message, watch it arrive, report the time between.

Theory of operation
-------------------
A :class:`DeliveryUser` submits messages over the target's ``submission``
service (``submissions`` if that is all there is) with the SMTP driver, one
session kept open across messages; each message carries a unique token in
``X-Mailharness-Token`` (:class:`~loadtest.corpus.MessageFactory`). The SMTP
steps are ordinary ``SMTP ...`` requests. The recipient's INBOX is watched
by a :class:`Watcher` greenlet: over IMAP IDLE (``imap``, else ``imaps``),
or, when the target has no IMAP, by polling POP3 (``pop3``/``pop3s``) every
``--delivery-poll`` seconds. Each user leases a recipient of its own while
the process's accounts last (then users share a recipient, and its watcher).

The watcher is set up (connect, TLS, login, SELECT) before the user's first
submission, and that setup is not part of any measurement. Its own traffic
(IDLE, DONE, FETCH of the token header; POP3 UIDL and TOP) is not reported as
requests either: it is observation, not load. A watcher that loses its
connection reports a failed ``DELIVERY watcher`` request and reconnects,
resuming from the UID it had reached (IMAP), so nothing is missed.

Timing: the clock starts when the ``250`` after DATA is read (the server has
taken responsibility, RFC 5321 §4.2.5) and stops when the message is
*visible*: the moment the IDLE connection reads the ``* n EXISTS`` that
announced it (then ``UID FETCH`` of the new messages' token header tells
which message it was), or the POP3 poll whose UIDL first listed it (so POP3
times are as coarse as the poll interval). A message can become visible
before the client has read its 250; its latency is then 0. Each arrival
fires one ``DELIVERY delivery end-to-end`` request with that latency.

Counting (a :class:`Tracker` per process): *submitted* (got the 250),
*seen* (visible within ``--delivery-timeout`` seconds of the 250), *lost*
(not), *late* (seen after being counted lost), *duplicated* (seen under two
or more different UIDs or UIDLs; ``duplicate_copies`` counts the extra
copies), and *delivered_after_failure* (a message whose submission failed
that arrived anyway). A lost message is fired as a *failed*
``DELIVERY delivery end-to-end`` request (``MessageLost``) with the timeout as
its time, when its timeout passes during the run or at the end of the test;
a duplicate as a failed ``DELIVERY delivery duplicate`` request. At the end
of the test (``test_stop``; on a worker when the master collects, see
:mod:`loadtest.runinfo`) the tracker stops new submissions, waits up to
``--delivery-timeout`` for messages in flight, stops the watchers, and
reports its counts in the ``delivery`` section of the results. Finished
entries are forgotten :data:`KEEP_FACTOR` timeouts after they were
resolved, so memory stays bounded in a long run (a duplicate arriving later
than that is not noticed).
"""

from __future__ import annotations

import logging
import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from weakref import WeakKeyDictionary

import gevent
from gevent.event import Event
from locust import events, task
from locust.env import Environment
from locust.exception import StopUser

from conformance.targets import Account, Target

from . import runinfo
from .clients import MeasuredSmtpClient
from .drivers import DriverError, Endpoint, ImapDriver, Pop3Driver
from .users import MailUser, register_profile

__all__ = [
    "DELIVERY_NAME",
    "DUPLICATE_NAME",
    "REQUEST_TYPE",
    "DeliveryUser",
    "MessageLost",
    "Tracker",
    "Watcher",
    "tracker_for",
]

log = logging.getLogger("loadtest.delivery")

REQUEST_TYPE = "DELIVERY"
DELIVERY_NAME = "delivery end-to-end"
DUPLICATE_NAME = "delivery duplicate"
WATCHER_NAME = "watcher"
IDLE_SLICE = 20.0  # seconds per IDLE before DONE and a new IDLE (RFC 2177 §3: < 29 min)
RECONNECT_DELAY = 1.0
KEEP_FACTOR = 2.0
MAX_LOST_SAMPLES = 20
_TOKEN = re.compile(rb"^X-Mailharness-Token:[ \t]*(\S+)", re.IGNORECASE | re.MULTILINE)


class MessageLost(Exception):
    """A submitted message did not arrive within the delivery timeout."""

    def __repr__(self) -> str:
        return f"MessageLost: {self}"


class DuplicateDelivery(Exception):
    """One submitted message arrived more than once."""

    def __repr__(self) -> str:
        return f"DuplicateDelivery: {self}"


def token_of(header: bytes) -> str | None:
    m = _TOKEN.search(header)
    return m.group(1).decode("ascii", "replace") if m else None


# -- bookkeeping ----------------------------------------------------------------------


@dataclass
class _Entry:
    token: str
    mailbox: str
    submitted_at: float | None = None  # monotonic time of the 250; None while in flight
    first_seen: float | None = None
    copies: set[str] = field(default_factory=set)  # UIDs / UIDLs it was seen under
    failed: bool = False  # the submission failed
    lost: bool = False
    resolved_at: float | None = None


class Tracker:
    """The delivery counts of one process; see the module docstring.

    Args:
        fire: ``fire(name, response_time_ms, exception)`` reports a request.
        timeout: seconds a message may take before it counts as lost.
        clock: monotonic seconds.
    """

    def __init__(
        self,
        fire: Callable[[str, float, Exception | None], None],
        timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.fire, self.timeout, self.clock = fire, timeout, clock
        self.watchers: dict[str, Watcher] = {}
        self.reset()

    def reset(self) -> None:
        self.entries: dict[str, _Entry] = {}
        self._waiting: deque[str] = deque()  # submitted tokens, in order: lost when too old
        self._resolved: deque[tuple[float, str]] = deque()  # (when, token): forgotten later
        self.closed = False
        self.counts = dict.fromkeys(
            (
                "submitted",
                "seen",
                "lost",
                "late",
                "duplicated",
                "duplicate_copies",
                "delivered_after_failure",
            ),
            0,
        )
        self.max_latency_ms = 0.0
        self.lost_tokens: list[str] = []

    # -- the submitting side ---------------------------------------------------------

    def expect(self, token: str, mailbox: str) -> None:
        """A message is about to be submitted (before DATA, so an early arrival is known)."""
        self.entries[token] = _Entry(token, mailbox)

    def submitted(self, token: str, at: float) -> None:
        """Its 250 came at ``at``."""
        entry = self.entries.get(token)
        if entry is None:
            return
        entry.submitted_at = at
        self.counts["submitted"] += 1
        self._waiting.append(token)
        if entry.first_seen is not None:  # visible before the 250 was read
            self._arrived(entry, max(0.0, entry.first_seen - at))

    def failed(self, token: str) -> None:
        """The submission failed; an arrival would be ``delivered_after_failure``."""
        entry = self.entries.get(token)
        if entry is not None:
            entry.failed = True
            self._resolve(entry, self.clock())
            if entry.copies:
                self.counts["delivered_after_failure"] += 1

    def abandon(self, token: str) -> None:
        """The transaction was cut off (the user stopped): forget the message."""
        entry = self.entries.get(token)
        if entry is not None and entry.submitted_at is None and not entry.failed:
            del self.entries[token]

    # -- the watching side -----------------------------------------------------------

    def seen(self, token: str, copy_id: str, at: float) -> None:
        """A watcher saw ``token`` in the mailbox under ``copy_id`` (UID or UIDL) at ``at``."""
        entry = self.entries.get(token)
        if entry is None or copy_id in entry.copies:
            return  # not ours (another user's, an earlier run's), or the same copy again
        entry.copies.add(copy_id)
        if len(entry.copies) == 2:
            self.counts["duplicated"] += 1
        if len(entry.copies) >= 2:
            self.counts["duplicate_copies"] += 1
            self.fire(
                DUPLICATE_NAME,
                0.0,
                DuplicateDelivery(f"message {token} arrived {len(entry.copies)} times"),
            )
            return
        entry.first_seen = at
        if entry.failed:
            self.counts["delivered_after_failure"] += 1
        elif entry.lost:
            self.counts["late"] += 1
        elif entry.submitted_at is not None:
            # the EXISTS can be read just before the 250 is (both come from one moment)
            self._arrived(entry, max(0.0, at - entry.submitted_at))

    def _arrived(self, entry: _Entry, latency: float) -> None:
        self.counts["seen"] += 1
        self._resolve(entry, self.clock())
        ms = latency * 1000.0
        self.max_latency_ms = max(self.max_latency_ms, ms)
        self.fire(DELIVERY_NAME, ms, None)

    # -- expiry --------------------------------------------------------------------------

    def _resolve(self, entry: _Entry, now: float) -> None:
        entry.resolved_at = now
        self._resolved.append((now, entry.token))

    def expire(self, now: float | None = None) -> None:
        """Count as lost what passed its timeout; forget entries resolved long ago."""
        now = self.clock() if now is None else now
        while self._waiting:
            entry = self.entries.get(self._waiting[0])
            if entry is not None and entry.resolved_at is None:
                assert entry.submitted_at is not None
                if now - entry.submitted_at < self.timeout:
                    break
                self._lose(entry, now)
            self._waiting.popleft()
        keep = self.timeout * KEEP_FACTOR
        while self._resolved and now - self._resolved[0][0] >= keep:
            _, token = self._resolved.popleft()
            self.entries.pop(token, None)

    def _lose(self, entry: _Entry, now: float) -> None:
        entry.lost = True
        self._resolve(entry, now)
        self.counts["lost"] += 1
        if len(self.lost_tokens) < MAX_LOST_SAMPLES:
            self.lost_tokens.append(entry.token)
        self.fire(
            DELIVERY_NAME,
            self.timeout * 1000.0,
            MessageLost(f"not in {entry.mailbox} within {self.timeout:g}s of the 250"),
        )

    def pending(self) -> int:
        """Messages submitted and not yet seen or lost, plus transactions in progress."""
        return sum(1 for e in self.entries.values() if e.resolved_at is None)

    def finish(self, sleep: Callable[[float], object] = gevent.sleep) -> dict[str, Any]:
        """End of test: no new submissions, wait for what is in flight, stop the watchers.

        Submissions stay closed until :meth:`reset` (the next test's start).
        """
        self.closed = True
        deadline = self.clock() + self.timeout
        while self.pending() and self.clock() < deadline:
            sleep(0.05)
            self.expire()
        for entry in list(self.entries.values()):
            if entry.submitted_at is not None and entry.resolved_at is None:
                self._lose(entry, self.clock())
        for watcher in list(self.watchers.values()):
            watcher.stop()
        self.watchers.clear()
        data: dict[str, Any] = {
            **self.counts,
            "max_latency_ms": round(self.max_latency_ms, 1),
            "lost_tokens": list(self.lost_tokens),
        }
        self.entries.clear()
        self._waiting.clear()
        self._resolved.clear()
        return data


_TRACKERS: WeakKeyDictionary[Environment, Tracker] = WeakKeyDictionary()


def tracker_for(environment: Environment) -> Tracker:
    """This process's tracker (its events go to ``environment``'s request hook)."""
    tracker = _TRACKERS.get(environment)
    if tracker is None:

        def fire(name: str, ms: float, exc: Exception | None) -> None:
            environment.events.request.fire(
                request_type=REQUEST_TYPE,
                name=name,
                response_time=ms,
                response_length=0,
                exception=exc,
                context={},
            )

        options = environment.parsed_options
        timeout = float(getattr(options, "delivery_timeout", None) or 10.0)
        tracker = Tracker(fire, timeout)
        _TRACKERS[environment] = tracker
    return tracker


# -- watching a mailbox ---------------------------------------------------------------


class Watcher:
    """A greenlet watching one account's INBOX for tokens (IMAP IDLE or POP3 polling).

    Args:
        tracker: told of every token seen.
        endpoint: the IMAP or POP3 endpoint (its ``service`` name says which).
        account: whose INBOX.
        poll: POP3 poll interval, seconds.
        on_error: called with a watcher failure (reported as a failed request).
    """

    def __init__(
        self,
        tracker: Tracker,
        endpoint: Endpoint,
        account: Account,
        *,
        poll: float = 1.0,
        on_error: Callable[[Exception], None] | None = None,
    ) -> None:
        self.tracker, self.endpoint, self.account = tracker, endpoint, account
        self.poll = poll
        self.on_error = on_error
        self.ready = Event()
        self.imap = endpoint.service.startswith("imap")
        self._next_uid: int | None = None
        self._known: set[str] | None = None  # POP3: UIDLs there before (or already read)
        self._driver: ImapDriver | Pop3Driver | None = None
        self._greenlet: gevent.Greenlet | None = None

    @property
    def mailbox(self) -> str:
        return self.account.address

    def start(self) -> Watcher:
        self._greenlet = gevent.spawn(self._run)
        return self

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=True, timeout=2)
            self._greenlet = None
        if self._driver is not None:
            self._driver.close()
            self._driver = None

    def _run(self) -> None:
        while True:
            try:
                if self.imap:
                    self._watch_imap()
                else:
                    self._watch_pop3()
            except DriverError as exc:
                if self._driver is not None:
                    self._driver.close()
                if self.on_error is not None:
                    self.on_error(exc)
                gevent.sleep(RECONNECT_DELAY)

    # IMAP ------------------------------------------------------------------------------

    def _watch_imap(self) -> None:
        driver = ImapDriver(self.endpoint)
        self._driver = driver
        driver.start(username=self.account.username, password=self.account.password)
        info = driver.select("INBOX")
        if self._next_uid is None:  # first connection: only what comes from now on
            self._next_uid = info.uidnext or 1
        if info.exists:  # anything that came while (re)connecting
            self._fetch_new(driver, time.monotonic())
        self.ready.set()
        while True:
            pushed = driver.idle()
            if not any(r.keyword == "EXISTS" for r in pushed):
                pushed += driver.idle_wait(IDLE_SLICE, until=lambda r: r.keyword == "EXISTS")
            at = time.monotonic()
            pushed += driver.done()
            if any(r.keyword == "EXISTS" for r in pushed):
                self._fetch_new(driver, at)
            self.tracker.expire()

    def _fetch_new(self, driver: ImapDriver, at: float) -> None:
        """The token of every message from ``_next_uid`` on; again while the answer
        announces more mail (an EXISTS that came with the FETCH is not repeated at the
        next IDLE, so the message it announced would wait for the one after it)."""
        more = True
        while more:
            assert self._next_uid is not None
            found, updates = driver.fetch_with_updates(
                f"{self._next_uid}:*",
                "(UID BODY.PEEK[HEADER.FIELDS (X-MAILHARNESS-TOKEN)])",
                uid=True,
            )
            for msg in found:
                uid = msg.uid
                if uid is None or uid < self._next_uid:
                    continue  # "n:*" also names the last message when n is beyond it
                self._next_uid = uid + 1
                token = token_of(msg.body or b"")
                if token is not None:
                    self.tracker.seen(token, f"uid {uid}", at)
            more = any(r.keyword == "EXISTS" for r in updates)
            at = time.monotonic()

    # POP3 ------------------------------------------------------------------------------

    def _watch_pop3(self) -> None:
        while True:
            driver = Pop3Driver(self.endpoint)
            self._driver = driver
            driver.start(username=self.account.username, password=self.account.password)
            listing = driver.uidl()
            at = time.monotonic()
            if self._known is None:
                self._known = set(listing.values())
            else:
                for number, uidl in sorted(listing.items()):
                    if uidl in self._known:
                        continue
                    self._known.add(uidl)
                    token = token_of(driver.top(number, 0))
                    if token is not None:
                        self.tracker.seen(token, f"uidl {uidl}", at)
            driver.quit()
            self._driver = None
            self.ready.set()
            self.tracker.expire()
            gevent.sleep(self.poll)


# -- the user -------------------------------------------------------------------------


def _service(target: Target, *names: str) -> str | None:
    return next((n for n in names if n in target.services), None)


class DeliveryUser(MailUser):
    """Submits messages and reports when each becomes visible in the recipient's INBOX.

    Profile ``delivery``. Uses the process's :class:`~loadtest.users.LoadContext`
    (target, this worker's accounts, the seeded message factory, endpoints); the
    sender is the next account round robin, the recipient one leased for the
    user's life when there is one free.
    """

    profile = "delivery"
    default_service = "submission"

    smtp: MeasuredSmtpClient
    watcher: Watcher
    sender: Account
    recipient: Account

    def on_start(self) -> None:
        super().on_start()
        ctx, env = self.ctx, self.environment
        target = ctx.target
        submit = ctx.settings.services.get("delivery") or _service(
            target, "submission", "submissions"
        )
        watch = _service(target, "imap", "imaps", "pop3", "pop3s")
        if submit is None or watch is None:
            ctx.warn_once(
                "delivery-services",
                "the delivery profile needs a submission (or submissions) service and an "
                "imap, imaps, pop3 or pop3s service in the target",
            )
            raise StopUser()
        self._leased = ctx.accounts.lease()
        self.recipient = self._leased or ctx.accounts.next()
        self.sender = ctx.accounts.next()
        tracker = tracker_for(env)
        watcher = tracker.watchers.get(self.recipient.name)
        if watcher is None:
            poll = float(getattr(env.parsed_options, "delivery_poll", None) or 1.0)
            watcher = Watcher(
                tracker,
                ctx.endpoint(watch),
                self.recipient,
                poll=poll,
                on_error=self._watcher_failed,
            ).start()
            tracker.watchers[self.recipient.name] = watcher
        self.watcher = watcher
        s = ctx.settings
        self.smtp = MeasuredSmtpClient(
            env,
            ctx.endpoint(submit),
            helo_name=s.helo_name,
            pipelining=s.pipelining,
            per_message=s.events == "per-message",
        )

    def _watcher_failed(self, exc: Exception) -> None:
        self.environment.events.request.fire(
            request_type=REQUEST_TYPE,
            name=WATCHER_NAME,
            response_time=0,
            response_length=0,
            exception=exc,
            context={},
        )

    def on_stop(self) -> None:
        if hasattr(self, "smtp"):
            self.smtp.close()  # stopped maybe mid-transaction: no QUIT into unread replies
        if getattr(self, "_leased", None) is not None:
            self.ctx.accounts.release(self.recipient)
            self._leased = None

    @task
    def deliver(self) -> None:
        """Submit one message (a new SMTP session first if there is none)."""
        tracker = tracker_for(self.environment)
        tracker.expire()
        if tracker.closed or not self.watcher.ready.wait(timeout=1.0):
            return  # the test is ending, or the watcher is not watching yet
        smtp, sender = self.smtp, self.sender
        if not smtp.is_connected:
            try:
                smtp.start(
                    username=sender.username,
                    password=sender.password,
                    mechanism=self.ctx.settings.auth_mechanism,
                )
            except DriverError:
                return  # counted as a failed SMTP step; the next task tries again
        msg = self.ctx.factory.make(sender.address, [self.recipient.address])
        tracker.expect(msg.token, self.watcher.mailbox)
        try:
            smtp.send_message(sender.address, [self.recipient.address], msg.data)
        except DriverError:
            tracker.failed(msg.token)
            return
        except BaseException:  # the user was stopped mid-transaction: not a submission
            tracker.abandon(msg.token)
            raise
        tracker.submitted(msg.token, time.monotonic())


register_profile("delivery", DeliveryUser)


# -- wiring ---------------------------------------------------------------------------


@events.init_command_line_parser.add_listener
def _add_arguments(parser: Any) -> None:
    group = parser.add_argument_group("mailharness delivery path (loadtest/delivery.py)")
    group.add_argument(
        "--delivery-timeout",
        type=float,
        default=10.0,
        help="Seconds a submitted message may take to become visible before it counts lost.",
    )
    group.add_argument(
        "--delivery-poll",
        type=float,
        default=1.0,
        help="Seconds between POP3 polls, when the target has no IMAP to IDLE on.",
    )


@events.test_start.add_listener
def _on_test_start(environment: Environment, **_kwargs: Any) -> None:
    tracker = _TRACKERS.get(environment)
    if tracker is not None:
        tracker.reset()


def _finish(environment: Environment) -> dict[str, Any]:
    tracker = _TRACKERS.get(environment)
    if tracker is None:
        return {}
    return tracker.finish()


def _grace(environment: Environment) -> float:
    options = environment.parsed_options
    return float(getattr(options, "delivery_timeout", None) or 10.0)


runinfo.register("delivery", runinfo.Section(finish=_finish, grace=_grace))
