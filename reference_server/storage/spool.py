"""The outbound spool: durable, one directory per queued message, for mail to other domains.

Theory of operation
-------------------
Each queued message is a directory ``root/<id>/`` holding ``message.eml`` (the
bytes as received) and ``envelope.json`` (sender, recipients, times). It is built
as ``root/.tmp-<id>/``: both files written and fsynced, the directory fsynced,
then renamed to ``root/<id>`` and ``root`` fsynced (group commit, shared with
concurrent enqueues, see :class:`~reference_server.storage.maildir.DirectorySync`).
A directory appears under its id complete or not at all, and :meth:`enqueue`
returns only once it is durable, so the server acknowledges nothing it could
lose. Names starting with "." are never queue entries; ``.tmp-*`` leftovers of a
crash are ignored by :meth:`OutboundSpool.list`.

Delivery progress lives beside them in ``state.json`` (:class:`QueueState`: the
attempts so far, the next one, and each recipient's status and last answer). An
entry without it has never been tried, so the SMTP path writes nothing extra.
:meth:`OutboundSpool.write_state` replaces it atomically and durably (write a
temporary file, fsync, rename over, fsync the entry's directory): after a crash
the file holds the old state or the new one, never a mix.

The queue runner (sending, retries, bounces) is not here; it reads the spool
through :meth:`OutboundSpool.list`, :meth:`OutboundSpool.read_state`,
:meth:`OutboundSpool.write_state` and :meth:`OutboundSpool.remove`.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import itertools
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from reference_server.storage.maildir import (
    DirectorySync,
    FsyncFn,
    fsync_directory,
    write_new_file,
)

__all__ = ["ENVELOPE_VERSION", "OutboundSpool", "QueueState", "RecipientState", "SpoolEntry"]

log = logging.getLogger(__name__)

ENVELOPE_VERSION = 1
MESSAGE_FILE = "message.eml"
ENVELOPE_FILE = "envelope.json"
STATE_FILE = "state.json"
STATE_VERSION = 1

RecipientStatus = Literal["pending", "delivered", "failed"]
_STATUSES: tuple[RecipientStatus, ...] = ("pending", "delivered", "failed")


@dataclass(frozen=True, kw_only=True)
class SpoolEntry:
    """One queued message.

    Attributes:
        id: the queue id (the directory name under the spool root).
        sender: the reverse-path, without angle brackets; ``""`` for the null
            reverse-path of a bounce (RFC 5321 §4.5.5).
        recipients: the forward-paths still to deliver.
        message_path: ``root/<id>/message.eml``.
        created: when it was queued, seconds since the epoch.
        received_from: the client it came from (free text, for the Received
            trace and bounces), if known.
    """

    id: str
    sender: str
    recipients: tuple[str, ...]
    message_path: Path
    created: float
    received_from: str | None = None


@dataclass(kw_only=True)
class RecipientState:
    """Where one recipient of a queued message stands.

    Attributes:
        status: ``pending`` (still to try), ``delivered`` or ``failed`` (for good).
        code: the RFC 3463 status of the last answer or error (``"4.4.1"``).
        diagnostic: the last answer (``"450 4.2.1 mailbox busy"``) or error text.
        remote_mta: the host that gave that answer, if one did.
        last_attempt: when it was last tried, seconds since the epoch.
    """

    status: RecipientStatus = "pending"
    code: str | None = None
    diagnostic: str | None = None
    remote_mta: str | None = None
    last_attempt: float | None = None


@dataclass(kw_only=True)
class QueueState:
    """Delivery progress of one queued message (``state.json``).

    Attributes:
        recipients: per recipient, in envelope order, without repeats.
        attempts: delivery attempts made so far.
        next_attempt: when the next one is due, seconds since the epoch.
        last_attempt: when the last one started, if any.
        warned: a "delayed" DSN was sent.
        bounced: the DSN for the failed recipients was stored.
    """

    recipients: dict[str, RecipientState] = field(default_factory=dict)
    attempts: int = 0
    next_attempt: float = 0.0
    last_attempt: float | None = None
    warned: bool = False
    bounced: bool = False

    @classmethod
    def fresh(cls, entry: SpoolEntry) -> QueueState:
        """The state of an entry never tried: every recipient pending, due at once."""
        recipients = {address: RecipientState() for address in entry.recipients}
        return cls(recipients=recipients, next_attempt=entry.created)

    def with_status(self, status: RecipientStatus) -> builtins.list[str]:
        """The recipients in ``status``, in envelope order."""
        return [a for a, r in self.recipients.items() if r.status == status]

    def to_json(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "attempts": self.attempts,
            "next_attempt": self.next_attempt,
            "last_attempt": self.last_attempt,
            "warned": self.warned,
            "bounced": self.bounced,
            "recipients": [{"address": a, **vars(r)} for a, r in self.recipients.items()],
        }

    @classmethod
    def from_json(cls, data: object) -> QueueState:
        """Raises ValueError when ``data`` is not a state this version wrote."""
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            raise ValueError(f"{STATE_FILE} is not a version {STATE_VERSION} state")
        try:
            recipients: dict[str, RecipientState] = {}
            for item in data["recipients"]:
                status = item["status"]
                if status not in _STATUSES:
                    raise ValueError(f"unknown recipient status {status!r}")
                recipients[str(item["address"])] = RecipientState(
                    status=cast(RecipientStatus, status),
                    code=item.get("code"),
                    diagnostic=item.get("diagnostic"),
                    remote_mta=item.get("remote_mta"),
                    last_attempt=item.get("last_attempt"),
                )
            return cls(
                recipients=recipients,
                attempts=int(data["attempts"]),
                next_attempt=float(data["next_attempt"]),
                last_attempt=data.get("last_attempt"),
                warned=bool(data.get("warned", False)),
                bounced=bool(data.get("bounced", False)),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{STATE_FILE} has missing or mistyped fields ({exc})") from None


class OutboundSpool:
    """Durable on-disk queue of outbound messages under ``root``.

    Args:
        root: the spool directory (created on the first enqueue).
        fsync: whether to fsync at all (``False`` only for throwaway test servers).
        fsync_fn: the fsync used for files and directories (injectable for tests).
        clock: seconds since the epoch (injectable for tests).
    """

    def __init__(
        self,
        root: Path,
        *,
        fsync: bool = True,
        fsync_fn: FsyncFn = os.fsync,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = Path(root)
        self.fsync = fsync
        self._fsync_fn = fsync_fn
        self._clock = clock
        self._counter = itertools.count(1)
        self._root_ready = False
        # root fsyncs run here, one at a time, shared by concurrent enqueues
        self._sync_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spool-dirsync")
        self._root_sync = DirectorySync(self.root, self._sync_pool, fsync_fn)

    def _new_id(self, now: float) -> str:
        count = next(self._counter)
        # hex microseconds first, so ids sort by time; pid and counter make it unique
        return f"{int(now * 1_000_000):014x}-{os.getpid():x}-{count:x}"

    def enqueue_sync(
        self,
        sender: str,
        recipients: Sequence[str],
        message: bytes,
        *,
        received_from: str | None = None,
    ) -> str:
        """Queue ``message`` durably; blocks on disk I/O (from a coroutine use :meth:`enqueue`).

        Args:
            sender: the reverse-path without angle brackets (``""`` for a bounce).
            recipients: the forward-paths, at least one.
            message: the message bytes.
            received_from: where it came from, kept for the queue runner.

        Returns:
            The queue id.

        Raises:
            ValueError: no recipients.
            OSError: the message could not be stored; nothing stays in the spool.
        """
        queue_id, commit = self._stage(sender, recipients, message, received_from)
        error = commit.result() if commit is not None else None
        if error is not None:
            self._discard(queue_id)
            raise error
        return queue_id

    async def enqueue(
        self,
        sender: str,
        recipients: Sequence[str],
        message: bytes,
        *,
        received_from: str | None = None,
    ) -> str:
        """:meth:`enqueue_sync` without blocking the event loop.

        The files are written in a worker thread; the wait for the fsync of the
        spool directory (shared with concurrent enqueues) happens on the loop.

        Args:
            sender: the reverse-path without angle brackets (``""`` for a bounce).
            recipients: the forward-paths, at least one.
            message: the message bytes.
            received_from: where it came from.

        Returns:
            The queue id.

        Raises:
            ValueError: no recipients.
            OSError: the message could not be stored; nothing stays in the spool.
        """
        queue_id, commit = await asyncio.to_thread(
            self._stage, sender, builtins.list(recipients), message, received_from
        )
        if commit is None or commit.done():
            error = commit.result() if commit is not None else None
        else:
            error = await asyncio.wrap_future(commit)
        if error is not None:
            await asyncio.to_thread(self._discard, queue_id)
            raise error
        return queue_id

    async def close(self) -> None:
        """Stop the thread that runs directory fsyncs (after the ones in flight)."""
        await asyncio.to_thread(self._sync_pool.shutdown, wait=True)

    def list(self) -> builtins.list[SpoolEntry]:
        """The queued messages, oldest first.

        Entries whose envelope cannot be read are skipped with a warning in the
        log (they are left on disk for a human to look at).

        Returns:
            One :class:`SpoolEntry` per queued message.
        """
        try:
            with os.scandir(self.root) as it:
                names = [e.name for e in it if not e.name.startswith(".") and e.is_dir()]
        except FileNotFoundError:
            return []
        entries = []
        for name in names:
            try:
                entries.append(self._read_entry(name))
            except (OSError, ValueError) as exc:
                log.warning("spool entry %s skipped: %s", self.root / name, exc)
        entries.sort(key=lambda e: (e.created, e.id))
        return entries

    def get(self, queue_id: str) -> SpoolEntry:
        """One queued message by id.

        Raises:
            ValueError: not a queue id, or its envelope cannot be read.
            FileNotFoundError: no such entry.
        """
        self._check_id(queue_id)
        if not (self.root / queue_id).is_dir():
            raise FileNotFoundError(f"no queued message {queue_id}")
        return self._read_entry(queue_id)

    def read_state(self, entry: SpoolEntry) -> QueueState:
        """The delivery progress of ``entry``; :meth:`QueueState.fresh` if it was never tried.

        Raises:
            ValueError: ``state.json`` exists but cannot be read.
        """
        try:
            data = (self.root / entry.id / STATE_FILE).read_bytes()
        except FileNotFoundError:
            return QueueState.fresh(entry)
        try:
            return QueueState.from_json(json.loads(data))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{STATE_FILE} is not JSON: {exc}") from None

    def write_state(self, queue_id: str, state: QueueState) -> None:
        """Replace the entry's ``state.json`` atomically and durably (blocks on disk I/O).

        Raises:
            OSError: it could not be written; the previous state stays.
        """
        self._check_id(queue_id)
        directory = self.root / queue_id
        temporary = directory / f".{STATE_FILE}.tmp"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)  # left by a crash mid-write
        data = json.dumps(state.to_json(), ensure_ascii=False, indent=1).encode("utf-8") + b"\n"
        self._write_durably(temporary, data)
        os.rename(temporary, directory / STATE_FILE)
        if self.fsync:
            self._fsync_dir(directory)

    def remove(self, queue_id: str) -> None:
        """Delete a queue entry (delivered, or bounced for good).

        The entry is first renamed to a hidden name, so it leaves :meth:`list`
        atomically even if deleting its files is interrupted.

        Args:
            queue_id: the id from :meth:`enqueue` or :meth:`list`.

        Raises:
            ValueError: the id is not a queue id.
            FileNotFoundError: no such entry.
        """
        self._check_id(queue_id)
        doomed = self.root / f".del-{queue_id}"
        os.rename(self.root / queue_id, doomed)
        if self.fsync:
            self._root_sync.commit()
        shutil.rmtree(doomed, ignore_errors=True)

    # -- internals ---------------------------------------------------------------------

    @staticmethod
    def _check_id(queue_id: str) -> None:
        if not queue_id or "/" in queue_id or queue_id.startswith(".") or "\x00" in queue_id:
            raise ValueError(f"not a queue id: {queue_id!r}")

    def _stage(
        self,
        sender: str,
        recipients: Sequence[str],
        message: bytes,
        received_from: str | None,
    ) -> tuple[str, Future[OSError | None] | None]:
        """Build the entry in a hidden directory, rename it into place, request the root sync."""
        if isinstance(recipients, str) or not recipients:
            raise ValueError("enqueue needs a non-empty sequence of recipients")
        self._ensure_root()
        now = self._clock()
        queue_id = self._new_id(now)
        envelope: dict[str, Any] = {
            "version": ENVELOPE_VERSION,
            "id": queue_id,
            "sender": sender,
            "recipients": builtins.list(recipients),
            "created": now,
            "received_from": received_from,
        }
        staging = self.root / f".tmp-{queue_id}"
        os.mkdir(staging, 0o700)
        placed = False
        try:
            self._write_durably(staging / MESSAGE_FILE, message)
            self._write_durably(
                staging / ENVELOPE_FILE,
                json.dumps(envelope, ensure_ascii=False, indent=1).encode("utf-8") + b"\n",
            )
            if self.fsync:
                self._fsync_dir(staging)
            os.rename(staging, self.root / queue_id)
            placed = True
            commit = self._root_sync.request(inline=True) if self.fsync else None
        except BaseException:
            shutil.rmtree(self.root / queue_id if placed else staging, ignore_errors=True)
            raise
        return queue_id, commit

    def _discard(self, queue_id: str) -> None:
        shutil.rmtree(self.root / queue_id, ignore_errors=True)

    def _read_entry(self, name: str) -> SpoolEntry:
        directory = self.root / name
        data = json.loads((directory / ENVELOPE_FILE).read_bytes())
        if not isinstance(data, dict) or data.get("version") != ENVELOPE_VERSION:
            raise ValueError(f"{ENVELOPE_FILE} is not a version {ENVELOPE_VERSION} envelope")
        sender, recipients = data.get("sender"), data.get("recipients")
        created, received_from = data.get("created"), data.get("received_from")
        if (
            data.get("id") != name
            or not isinstance(sender, str)
            or not isinstance(recipients, builtins.list)
            or not all(isinstance(r, str) for r in recipients)
            or not isinstance(created, int | float)
            or not (received_from is None or isinstance(received_from, str))
        ):
            raise ValueError(f"{ENVELOPE_FILE} has missing or mistyped fields")
        message_path = directory / MESSAGE_FILE
        if not message_path.is_file():
            raise ValueError(f"{MESSAGE_FILE} is missing")
        return SpoolEntry(
            id=name,
            sender=sender,
            recipients=tuple(recipients),
            message_path=message_path,
            created=float(created),
            received_from=received_from,
        )

    def _ensure_root(self) -> None:
        if self._root_ready:
            return
        existed = self.root.is_dir()
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        if self.fsync and not existed:
            self._fsync_dir(self.root.parent)
        self._root_ready = True

    def _fsync_dir(self, directory: Path) -> None:
        fsync_directory(directory, self._fsync_fn)

    def _write_durably(self, path: Path, data: bytes) -> None:
        write_new_file(path, data, self._fsync_fn if self.fsync else None)
