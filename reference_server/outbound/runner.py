"""The queue runner: delivers what the spool holds, retries on a schedule, and bounces.

Theory of operation
-------------------
At start the runner reads every spool entry and its :class:`QueueState` into
memory; afterwards the SMTP path calls :meth:`QueueRunner.submitted` for each
new entry. One loop starts an attempt for each entry that is due (at most
``queue.max_deliveries`` at once) and sleeps until the next one is due or
something wakes it (a new entry, a finished attempt, a flush).

An attempt groups the pending recipients by domain; each domain gets its next
hops from the :class:`~.routing.Router` (at most ``queue.max_per_destination``
deliveries to one domain at once) and the message goes to the first hop that
takes part in a transaction (:func:`~.client.relay`). 2xx marks a recipient
delivered, 5xx failed, anything else leaves it pending. The state is written
(atomically, fsynced) as soon as a domain's transaction is answered, before
anything else, so a crash can repeat a delivery only inside that short window
(RFC 5321 §6.1 prefers a duplicate to a loss), and it is written again when
the attempt ends, with the next attempt's time: ``retry_interval`` doubling up
to ``max_retry_interval``, and a last attempt exactly when ``lifetime`` runs
out. After that the pending recipients fail with their last error.

When nothing is pending the failed recipients get one DSN (RFC 3464) to the
envelope sender, unless that is null (RFC 5321 §6.2: no bounce to a bounce);
a local sender gets it in their Maildir, another one through the spool, sent
with a null sender. The entry is removed only after the DSN is stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import logging
import re
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from reference_server.storage.spool import QueueState, RecipientState, SpoolEntry

from .client import HopFailure, Outcome, relay
from .dsn import RecipientReport, build_dsn
from .routing import Router, RoutingError

if TYPE_CHECKING:
    from reference_server.app import MailServer

__all__ = ["QueueBusy", "QueueRunner"]

log = logging.getLogger(__name__)

_IDLE_RECHECK = 60.0  # seconds; the loop looks at the queue at least this often
_STOP_GRACE = 2.0  # seconds an attempt in flight gets to finish on stop
_RECEIVED = re.compile(rb"(?im)^Received[ \t]*:")


class QueueBusy(Exception):
    """The entry is being delivered right now (delete it after the attempt)."""


class QueueRunner:
    """Runs the outbound queue of one :class:`~reference_server.app.MailServer`.

    Args:
        server: gives the config, the spool and local delivery (for DSNs).
        router: finds next hops; by default one built from ``config.relay``.
        clock: seconds since the epoch (injectable for tests).
    """

    def __init__(
        self,
        server: MailServer,
        *,
        router: Router | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.server = server
        self.config = server.config
        self.spool = server.spool
        self.settings = server.config.queue
        relay_settings = server.config.relay
        self.router = router or Router(relay_settings, mx_port=relay_settings.mx_port)
        self._clock = clock
        self._entries: dict[str, tuple[SpoolEntry, QueueState]] = {}
        self._new: list[str] = []
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._per_domain: defaultdict[str, asyncio.Semaphore] = defaultdict(
            lambda: asyncio.Semaphore(self.settings.max_per_destination)
        )
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._closing = False

    # -- control -------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the spool and start the loop (entries found are due as their state says)."""
        entries = await asyncio.to_thread(self.spool.list)
        for entry in entries:
            await self._load(entry)
        if entries:
            log.info("queue: %d message(s) in the spool", len(entries))
        self._loop_task = asyncio.create_task(self._run(), name="queue-runner")

    async def stop(self) -> None:
        """Stop starting attempts; let those in flight finish briefly, then cancel them."""
        self._closing = True
        self._wake.set()
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        tasks = list(self._inflight.values())
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=_STOP_GRACE)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)

    def submitted(self, queue_id: str) -> None:
        """A new entry is in the spool (durably); try it as soon as a slot is free."""
        self._new.append(queue_id)
        self._wake.set()

    def flush(self) -> int:
        """Make every entry due now (``mailharness queue flush``); returns how many."""
        now = self._clock()
        for _, state in self._entries.values():
            state.next_attempt = min(state.next_attempt, now)
        self._wake.set()
        return len(self._entries)

    async def delete(self, queue_id: str) -> None:
        """Remove an entry without a DSN (``mailharness queue delete``).

        Raises:
            QueueBusy: it is being delivered right now.
            FileNotFoundError: no such entry.
            ValueError: not a queue id.
        """
        if queue_id in self._inflight:
            raise QueueBusy(f"{queue_id} is being delivered right now; try again in a moment")
        self._entries.pop(queue_id, None)  # first, so the loop cannot start it meanwhile
        await asyncio.to_thread(self.spool.remove, queue_id)

    @property
    def in_flight(self) -> frozenset[str]:
        """Ids of the entries being delivered right now."""
        return frozenset(self._inflight)

    # -- the loop ------------------------------------------------------------------------

    async def _load(self, entry: SpoolEntry) -> None:
        try:
            state = await asyncio.to_thread(self.spool.read_state, entry)
        except (OSError, ValueError) as exc:
            log.warning("queue: %s skipped: %s", entry.id, exc)
            return
        self._entries[entry.id] = (entry, state)

    async def _run(self) -> None:
        while not self._closing:
            self._wake.clear()
            while self._new:
                queue_id = self._new.pop(0)
                try:
                    entry = await asyncio.to_thread(self.spool.get, queue_id)
                except (OSError, ValueError) as exc:
                    log.warning("queue: new entry %s unreadable: %s", queue_id, exc)
                    continue
                await self._load(entry)
            now = self._clock()
            waiting = [
                (state.next_attempt, queue_id)
                for queue_id, (_, state) in self._entries.items()
                if queue_id not in self._inflight
            ]
            waiting.sort()
            for due, queue_id in waiting:
                if due > now or len(self._inflight) >= self.settings.max_deliveries:
                    break
                task = asyncio.create_task(self._attempt(queue_id), name=f"deliver-{queue_id}")
                self._inflight[queue_id] = task
                task.add_done_callback(functools.partial(self._finished, queue_id))
            later = [due for due, qid in waiting if qid not in self._inflight]
            pause = min(later, default=now + _IDLE_RECHECK) - now
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(max(pause, 0.0), _IDLE_RECHECK)):
                    await self._wake.wait()

    def _finished(self, queue_id: str, _task: asyncio.Task[None]) -> None:
        self._inflight.pop(queue_id, None)
        self._wake.set()

    # -- one attempt ---------------------------------------------------------------------

    async def _attempt(self, queue_id: str) -> None:
        entry, state = self._entries[queue_id]
        try:
            await self._deliver(entry, state)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug or a disk error must not stop the queue
            log.exception("queue: %s: attempt failed", queue_id)
            state.next_attempt = self._clock() + self.settings.retry_interval

    async def _deliver(self, entry: SpoolEntry, state: QueueState) -> None:
        started = self._clock()
        state.attempts += 1
        state.last_attempt = started
        message = await asyncio.to_thread(entry.message_path.read_bytes)
        by_domain: dict[str, list[str]] = defaultdict(list)
        for address in state.with_status("pending"):
            by_domain[address.rpartition("@")[2].lower()].append(address)
        hops = len(_RECEIVED.findall(_header_section(message)))
        if hops >= self.config.relay.max_hops:
            loop = Outcome(
                status="failed",
                code="5.4.6",
                diagnostic=f"routing loop: {hops} Received headers (RFC 5321 §6.3)",
                remote_mta=None,
            )
            self._apply(state, dict.fromkeys(state.with_status("pending"), loop), started)
        else:
            writing = asyncio.Lock()  # one state.json writer at a time
            await asyncio.gather(
                *(
                    self._deliver_domain(entry, state, domain, rcpts, message, started, writing)
                    for domain, rcpts in by_domain.items()
                )
            )
        await self._conclude(entry, state, message)

    async def _deliver_domain(
        self,
        entry: SpoolEntry,
        state: QueueState,
        domain: str,
        recipients: list[str],
        message: bytes,
        started: float,
        writing: asyncio.Lock,
    ) -> None:
        async with self._per_domain[domain]:
            outcomes = await self._offer(entry, domain, recipients, message)
        self._apply(state, outcomes, started)
        if any(o.status == "delivered" for o in outcomes.values()):
            # the hop has the message now: record it before anything can interrupt us
            async with writing:
                await self._save(entry, state)

    async def _offer(
        self, entry: SpoolEntry, domain: str, recipients: Sequence[str], message: bytes
    ) -> dict[str, Outcome]:
        """Each next hop in turn until one takes part in a transaction."""
        try:
            hops = await self.router.next_hops(domain)
        except RoutingError as exc:
            outcome = Outcome(
                status="failed" if exc.permanent else "deferred",
                code=exc.status,
                diagnostic=exc.text,
                remote_mta=None,
            )
            log.info("queue: %s: %s: %s", entry.id, domain, exc.text)
            return dict.fromkeys(recipients, outcome)
        failure: HopFailure | None = None
        for hop in hops:
            try:
                outcomes = await relay(
                    hop,
                    helo=self.config.relay.helo_name or self.config.hostname,
                    sender=entry.sender,
                    recipients=recipients,
                    message=message,
                    timeouts=self.config.relay.timeouts,
                )
            except HopFailure as exc:
                log.info("queue: %s: %s (%s)", entry.id, exc.diagnostic, hop.via)
                failure = exc
                continue
            for address, outcome in outcomes.items():
                log.info(
                    "queue: %s: to=<%s> via %s: %s (%s)",
                    entry.id,
                    address,
                    hop.host,
                    outcome.status,
                    outcome.diagnostic,
                )
            return outcomes
        assert failure is not None  # next_hops never returns an empty list
        deferred = Outcome(
            status="deferred", code=failure.status, diagnostic=failure.diagnostic, remote_mta=None
        )
        return dict.fromkeys(recipients, deferred)

    async def _save(self, entry: SpoolEntry, state: QueueState) -> None:
        """Write a snapshot (other domains of the attempt may change ``state`` meanwhile)."""
        await asyncio.to_thread(self.spool.write_state, entry.id, copy.deepcopy(state))

    @staticmethod
    def _apply(state: QueueState, outcomes: dict[str, Outcome], when: float) -> None:
        for address, outcome in outcomes.items():
            state.recipients[address] = RecipientState(
                status="pending" if outcome.status == "deferred" else outcome.status,
                code=outcome.code,
                diagnostic=outcome.diagnostic,
                remote_mta=outcome.remote_mta,
                last_attempt=when,
            )

    async def _conclude(self, entry: SpoolEntry, state: QueueState, message: bytes) -> None:
        """Schedule the next attempt or give up; bounce and remove a finished entry."""
        now = self._clock()
        expires = entry.created + self.settings.lifetime
        pending = state.with_status("pending")
        if pending and now >= expires:
            for address in pending:
                rcpt = state.recipients[address]
                rcpt.status = "failed"
                rcpt.code = rcpt.code or "4.4.7"
                rcpt.diagnostic = (
                    f"gave up after {state.attempts} attempt(s) in "
                    f"{_duration(now - entry.created)}; last error: {rcpt.diagnostic or 'none'}"
                )
            pending = []
        if pending:
            state.next_attempt = min(now + self.settings.retry_delay(state.attempts), expires)
            warn_after = self.settings.delay_warning
            if (
                warn_after is not None
                and not state.warned
                and entry.sender
                and now - entry.created >= warn_after
            ):
                await self._notify(entry, state, message, pending, "delayed", expires)
                state.warned = True
            await self._save(entry, state)
            return
        failed = state.with_status("failed")
        if failed and entry.sender and not state.bounced:
            await self._notify(entry, state, message, failed, "failed", None)
            state.bounced = True
            await self._save(entry, state)
        elif failed and not entry.sender:
            log.info("queue: %s: no DSN for a message with a null sender (RFC 5321 §6.2)", entry.id)
        await asyncio.to_thread(self.spool.remove, entry.id)
        self._entries.pop(entry.id, None)
        log.info(
            "queue: %s: done: %d delivered, %d failed",
            entry.id,
            len(state.with_status("delivered")),
            len(failed),
        )

    async def _notify(
        self,
        entry: SpoolEntry,
        state: QueueState,
        message: bytes,
        addresses: Sequence[str],
        action: str,
        retry_until: float | None,
    ) -> None:
        """Build the DSN for ``addresses`` and store it for the envelope sender."""
        reports = [
            RecipientReport(
                address=address,
                action="failed" if action == "failed" else "delayed",
                status=state.recipients[address].code
                or ("5.0.0" if action == "failed" else "4.0.0"),
                diagnostic=state.recipients[address].diagnostic,
                remote_mta=state.recipients[address].remote_mta,
                last_attempt=state.recipients[address].last_attempt,
                will_retry_until=retry_until,
            )
            for address in addresses
        ]
        dsn = build_dsn(
            reporting_mta=self.config.hostname,
            original_sender=entry.sender,
            original=message,
            queue_id=entry.id,
            arrival=entry.created,
            recipients=reports,
            now=self._clock(),
        )
        await self.deliver_notice(entry.sender, dsn)
        log.info("queue: %s: %s DSN sent to <%s>", entry.id, action, entry.sender)

    async def deliver_notice(self, to: str, message: bytes) -> None:
        """Store a message from the mail system itself: locally, or queued with a null sender."""
        domain = to.rpartition("@")[2]
        if domain and self.config.is_local(domain):
            user = self.server.mailbox_for(to)
            if user is None:
                log.warning("queue: notice to unknown local address <%s> dropped", to)
                return
            await self.server.deliver_final([user], "", message)  # the null reverse-path
            return
        queue_id = await self.spool.enqueue("", [to], message)
        self.submitted(queue_id)


def _header_section(message: bytes) -> bytes:
    end = message.find(b"\r\n\r\n")
    return message if end < 0 else message[: end + 2]


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.1f}s"
