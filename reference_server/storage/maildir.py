"""Durable delivery into Maildirs (maildir(5)), with group commit of directory fsyncs.

Theory of operation
-------------------
The SMTP server answers 250 only once the message is on stable storage in every
recipient's Maildir, so a crash (power loss, SIGKILL) after the 250 can never
lose it, and no reader ever sees half a message. One delivery into one mailbox is:

1. create ``tmp/<name>`` (``O_EXCL``) and write the whole message;
2. ``fsync`` the file: its data and inode are durable, but not yet reachable;
3. ``rename`` it to ``new/<name>``: readers see it complete or not at all
   (rename is atomic), never a partial file;
4. ``fsync`` the ``new/`` directory: the directory entry, and so the message, is
   durable. Only now may the caller acknowledge.

Step 4 is the serialising one: every delivery into the same directory needs a
directory fsync that *began after its rename*. :class:`DirectorySync` shares one
fsync among all deliveries whose renames completed before it began (group
commit, as databases do for their log): while one fsync runs, the deliveries
that rename meanwhile gather in the next batch, which gets one fsync as soon as
the current one ends. Steps 1-3 run in a thread pool (so file fsyncs run in
parallel and the event loop never blocks on the disk); the wait for step 4 is a
future that :meth:`MaildirStore.deliver` awaits on the event loop, so a waiting
delivery holds no thread and a batch can take in every delivery in flight.
Under load the directory fsyncs per second stay near ``1 / fsync latency``
while deliveries per second grow with concurrency.

Hand-offs between the loop and the threads cost more than they seem: every
wake-up is a futex call and a contended GIL, and the event loop waits for the
GIL after each of its own socket calls. So :meth:`MaildirStore.deliver` queues
work to bare threads (no executor future per delivery), the threads hand staged
deliveries back to the loop in batches (one wake-up for all that finished
before the loop took the previous ones), and the deliveries waiting on one
directory fsync are woken together, with one hand-off per fsync.

A message for several users is written once per mailbox (copies, not hard
links), renamed into every ``new/``, and each distinct ``new/`` directory is
committed. If anything fails, what was written is removed (``tmp/`` files, and,
best effort, files already renamed into ``new/``) and the ``OSError`` propagates:
the caller answers 451 and the client retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import itertools
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported when first used: `python -m ...stager` runs it fresh
    from .stager import DeliveryHelper

log = logging.getLogger("reference_server.storage")

__all__ = [
    "DirectorySync",
    "FsyncFn",
    "MaildirStore",
    "fsync_directory",
    "sanitize_hostname",
    "write_new_file",
]

FsyncFn = Callable[[int], None]

# maildir(5): "tmp", "new" and "cur" are the three subdirectories of a Maildir.
SUBDIRS = ("tmp", "new", "cur")
# NAME_MAX on Linux and the BSDs; longer user names could never be directories.
_NAME_MAX = 255


def sanitize_hostname(hostname: str) -> str:
    """Make a host name safe inside a Maildir file name.

    maildir(5): "/" is replaced with "\\057" and ":" with "\\072" (":" separates
    the info part, "/" the path). "," is replaced with "\\054" too, because this
    store appends ``,S=<size>`` after the host name and readers split on ",".

    Args:
        hostname: the raw host name.

    Returns:
        The host name with those characters replaced by octal escapes.
    """
    return hostname.replace("/", "\\057").replace(":", "\\072").replace(",", "\\054")


def fsync_directory(directory: Path, fsync_fn: FsyncFn = os.fsync) -> None:
    """Make the entries of ``directory`` (creations, renames, unlinks) durable.

    Args:
        directory: the directory to fsync.
        fsync_fn: the fsync to call with the open descriptor.

    Raises:
        OSError: opening or syncing failed.
    """
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fsync_fn(fd)
    finally:
        os.close(fd)


def write_new_file(path: Path | str, data: bytes, fsync_fn: FsyncFn | None = os.fsync) -> None:
    """Create ``path`` (it must not exist), write ``data`` and fsync it.

    The file is durable but its directory entry is not: the caller renames it
    into place and fsyncs the directory.

    Args:
        path: the new file; created with mode 0o600 and ``O_EXCL``.
        data: the whole content.
        fsync_fn: the fsync to call, or ``None`` not to sync.

    Raises:
        OSError: creating, writing or syncing failed (a partial file may remain).
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if fsync_fn is not None:
            fsync_fn(fd)
    finally:
        os.close(fd)


class _Batch:
    """Requests that share one directory fsync, and the future they wait on."""

    __slots__ = ("future", "members")

    def __init__(self) -> None:
        self.members = 0
        self.future: Future[OSError | None] = Future()
        # RUNNING futures cannot be cancelled: one impatient waiter must not
        # cancel the fsync result the other members wait for.
        self.future.set_running_or_notify_cancel()


class DirectorySync:
    """Group commit of ``fsync`` on one directory.

    :meth:`request` returns a future that completes once an fsync of the
    directory that *began after the request* has completed, so a caller that
    renamed a file into the directory and then requests knows, when the future
    completes, that the rename is durable.

    Requests join the open batch. If no fsync is running, the request starts a
    sync job in ``executor``; the job closes the open batch (later requests join
    a fresh one), fsyncs once for all its members, completes their shared
    future, and repeats while a next batch has members. Nobody holds a thread
    while waiting: threads block on the future (:meth:`commit`), coroutines await
    it (``asyncio.wrap_future``), so a batch can hold every delivery in flight.

    Args:
        path: the directory.
        executor: where sync jobs run; at most one job per directory runs at once.
        fsync_fn: the fsync to call with an open directory descriptor
            (injectable so tests can count and fail fsyncs).
    """

    def __init__(self, path: Path, executor: Executor, fsync_fn: FsyncFn = os.fsync) -> None:
        self.path = path
        self._executor = executor
        self._fsync = fsync_fn
        self._lock = threading.Lock()
        self._open = _Batch()
        self._syncing = False
        self._syncs = 0

    @property
    def pending(self) -> int:
        """Requests in the open batch (waiting for an fsync that has not begun yet)."""
        with self._lock:
            return self._open.members

    @property
    def syncs(self) -> int:
        """Directory fsyncs begun so far (successful or not)."""
        with self._lock:
            return self._syncs

    def request(self, *, inline: bool = False) -> Future[OSError | None]:
        """Ask for a directory fsync that begins after this call.

        Args:
            inline: if no fsync is running, run the one for this caller's batch
                in the calling thread (a thread-pool worker that would otherwise
                hand it to ``executor`` and back), then hand any next batch to
                ``executor``. The caller's future is done on return then.

        Returns:
            A future shared by the batch; its result is ``None`` once the fsync
            succeeded, or the ``OSError`` to raise if it failed. It cannot be
            cancelled (other members wait on it too).
        """
        with self._lock:
            batch = self._open
            batch.members += 1
            start = not self._syncing
            self._syncing = True
        if start:
            if inline:
                self._run(handoff=True)
            else:
                self._submit()
        return batch.future

    def commit(self) -> None:
        """Block until a directory fsync that began after this call has completed.

        Raises:
            OSError: the fsync covering this caller failed.
        """
        error = self.request(inline=True).result()
        if error is not None:
            raise error

    def _submit(self) -> None:
        try:
            self._executor.submit(self._run)
        except RuntimeError:  # executor shut down: sync in this thread instead
            self._run()

    def _run(self, *, handoff: bool = False) -> None:
        """Sync batches until none has members (with ``handoff``: one, then submit)."""
        first = True
        while True:
            with self._lock:
                batch = self._open
                if batch.members == 0:
                    self._syncing = False
                    return
                if handoff and not first:
                    break  # still "syncing": the executor's job takes this batch
                # Close the batch: every member renamed before joining it, so
                # before this fsync begins. Newcomers wait for the next one.
                self._open = _Batch()
                self._syncs += 1
            first = False
            outcome: OSError | None = None
            try:
                fsync_directory(self.path, self._fsync)
            except BaseException as exc:  # every member must hear of it, whatever it is
                code = getattr(exc, "errno", None) or errno.EIO
                outcome = OSError(code, f"fsync of directory {self.path} failed: {exc}")
                outcome.__cause__ = exc
            batch.future.set_result(outcome)
        self._submit()


class _Box:
    """A ready Maildir: its paths as strings (ready to append a name) and its ``new/`` sync."""

    __slots__ = ("new", "sync", "tmp")

    def __init__(self, path: Path, sync: DirectorySync) -> None:
        self.tmp = f"{path}/tmp/"
        self.new = f"{path}/new/"
        self.sync = sync


class _Staged:
    """A delivery whose files are in ``new/``, waiting for its directory fsyncs."""

    __slots__ = ("commits", "names", "renamed")

    def __init__(
        self, names: list[str], renamed: list[str], commits: list[Future[OSError | None]]
    ) -> None:
        self.names = names
        self.renamed = renamed
        self.commits = commits

    def roll_back(self) -> None:
        """Remove the files again (best effort): the message is not acknowledged."""
        for path in self.renamed:
            with contextlib.suppress(OSError):
                os.unlink(path)


class _Job:
    """A delivery for a staging thread, and where its caller waits."""

    __slots__ = ("loop", "message", "users", "waiter")

    def __init__(
        self,
        users: list[str],
        message: bytes,
        waiter: asyncio.Future[_Staged | BaseException],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.users = users
        self.message = message
        self.waiter = waiter
        self.loop = loop


def _set_outcome(
    waiter: asyncio.Future[_Staged | BaseException], outcome: _Staged | BaseException
) -> None:
    if not waiter.done():  # a cancelled delivery may still be stored
        waiter.set_result(outcome)


# Group commit, seen from an event loop: the deliveries waiting on one directory
# fsync share one hand-off back to the loop when it ends (``asyncio.wrap_future``
# would hand each one back separately: a self-pipe write and a GIL hand-off each).
_SharedKey = tuple["Future[OSError | None]", asyncio.AbstractEventLoop]
_shared_waits: dict[_SharedKey, list[asyncio.Future[OSError | None]]] = {}


async def _wait_shared(
    commit: Future[OSError | None], loop: asyncio.AbstractEventLoop
) -> OSError | None:
    """Await ``commit`` (a directory fsync) on ``loop``, sharing the wake-up with its batch.

    Each caller waits on a future of its own, so cancelling one delivery never
    cancels the others' wait.
    """
    waiter: asyncio.Future[OSError | None] = loop.create_future()
    key = (commit, loop)
    group = _shared_waits.get(key)
    if group is None:
        group = _shared_waits[key] = []
        # if the fsync is already over, this runs now, and _wake_group still comes later
        commit.add_done_callback(functools.partial(_commit_done, key))
    group.append(waiter)
    return await waiter


def _commit_done(key: _SharedKey, _commit: Future[OSError | None]) -> None:
    with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits any more
        key[1].call_soon_threadsafe(_wake_group, key)


def _wake_group(key: _SharedKey) -> None:
    outcome = key[0].result()
    for waiter in _shared_waits.pop(key, ()):
        if not waiter.done():  # a cancelled delivery may still be stored
            waiter.set_result(outcome)


class MaildirStore:
    """Durable delivery into per-user Maildirs under one root: ``root/<user>/{tmp,new,cur}``.

    Args:
        root: the directory holding one Maildir per user (created on demand).
        fsync: whether to fsync at all. ``False`` is for throwaway test servers
            only: nothing survives a crash then.
        hostname: the host part of file names; defaults to ``socket.gethostname()``.
            Sanitised per maildir(5) (see :func:`sanitize_hostname`).
        workers: threads that write and fsync files (so the file fsyncs in flight
            at once), and, separately, at most as many directory fsyncs at once.
        fsync_fn: the fsync used for files and directories (tests inject one that
            records or fails).
        clock: seconds since the epoch, for file names (tests inject a fixed one).
        helper_process: :meth:`deliver` hands deliveries to a helper process
            (:mod:`reference_server.storage.stager`, started on the first one)
            instead of this process' staging threads, so they never hold up the
            event loop on the GIL. The helper uses ``os.fsync`` and the real clock.
    """

    def __init__(
        self,
        root: Path,
        *,
        fsync: bool = True,
        hostname: str | None = None,
        workers: int = 8,
        fsync_fn: FsyncFn = os.fsync,
        clock: Callable[[], float] = time.time,
        helper_process: bool = False,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, not {workers}")
        self.root = Path(root)
        self.fsync = fsync
        if hostname is None:
            hostname = socket.gethostname()
        self.hostname = sanitize_hostname(hostname)
        self._fsync_fn = fsync_fn
        self._clock = clock
        self._lock = threading.Lock()
        self._counter = itertools.count(1)
        self._ready: set[str] = set()
        self._boxes: dict[str, _Box] = {}  # ready users' Maildirs
        self._create_lock = threading.Lock()  # mailbox creation, once per user
        self._dirsyncs: dict[Path, DirectorySync] = {}
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="maildir")
        # directory fsyncs: one job at a time per directory, never waiting on others
        self._sync_pool = ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="maildir-dirsync"
        )
        # deliver()'s staging threads: bare threads on a queue (no executor futures),
        # whose results go back to the loop in batches
        self._workers = workers
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._staged: list[tuple[_Job, _Staged | BaseException]] = []  # for the loop
        self._closed = False
        self.helper_process = helper_process
        self._helper: DeliveryHelper | None = None
        self._helper_started: asyncio.Task[None] | None = None

    @property
    def directory_syncs(self) -> int:
        """``new/`` directory fsyncs run so far, over all mailboxes (a group-commit figure)."""
        with self._lock:
            syncs = list(self._dirsyncs.values())
        return sum(sync.syncs for sync in syncs)

    # -- names and paths ---------------------------------------------------------------

    def mailbox_path(self, user: str) -> Path:
        """The Maildir of ``user`` (which need not exist yet).

        Args:
            user: the mailbox owner; it becomes a directory name.

        Returns:
            ``root/<user>``.

        Raises:
            ValueError: the name is empty, contains "/", NUL or "..", starts with
                "." (hidden, and reserved for the store's own use), or is longer
                than 255 bytes.
        """
        if not user:
            raise ValueError("mailbox user name is empty")
        if "/" in user or "\x00" in user or ".." in user or user.startswith("."):
            raise ValueError(
                f"mailbox user name {user!r} is not a safe directory name "
                "(no '/', NUL or '..', and no leading '.')"
            )
        if len(os.fsencode(user)) > _NAME_MAX:
            raise ValueError(f"mailbox user name is longer than {_NAME_MAX} bytes")
        return self.root / user

    def _unique_name(self, size: int) -> str:
        # maildir(5) / Dovecot: <seconds>.M<usec>P<pid>Q<deliveries>.<host>,S=<size>
        now = self._clock()
        seconds = int(now)
        micros = int((now - seconds) * 1_000_000)
        count = next(self._counter)  # atomic: itertools.count is one C call
        return f"{seconds}.M{micros}P{os.getpid()}Q{count}.{self.hostname},S={size}"

    # -- delivery ----------------------------------------------------------------------

    def deliver_sync(self, users: Sequence[str], message: bytes) -> list[str]:
        """Store ``message`` durably in the ``new/`` directory of every user's Maildir.

        Blocks on disk I/O: from a coroutine, use :meth:`deliver`.

        Args:
            users: the recipients' mailbox names; a name listed twice gets one copy.
            message: the message exactly as it is to be stored.

        Returns:
            The file name in ``new/`` for each entry of ``users``, in order (the
            same name for a repeated user).

        Raises:
            ValueError: ``users`` is empty or holds an unsafe name (nothing written).
            OSError: storing failed; whatever this call wrote has been removed
                (from ``new/`` best effort) and the message must not be acknowledged.
        """
        staged = self._stage(users, message)
        for commit in staged.commits:
            error = commit.result()
            if error is not None:
                staged.roll_back()
                raise error
        return staged.names

    async def deliver(self, users: Sequence[str], message: bytes) -> list[str]:
        """:meth:`deliver_sync` without blocking the event loop.

        Writing, file fsyncs and renames run in the store's thread pool; the wait
        for the directory fsync happens here, on the loop, so waiting deliveries
        hold no thread and any number of them can share one directory fsync.

        If the awaiting task is cancelled, the message may still be stored
        (a possible duplicate, never a loss or a partial file).

        Args:
            users: the recipients' mailbox names.
            message: the message bytes.

        Returns:
            The file names, as :meth:`deliver_sync`.

        Raises:
            ValueError: as :meth:`deliver_sync`.
            OSError: as :meth:`deliver_sync`.
        """
        if self._closed:
            raise RuntimeError("the store is closed")
        loop = asyncio.get_running_loop()
        if self.helper_process:
            helper = await self._helper_for(users, loop)
            if helper is not None:
                return await helper.deliver(users, message)
        waiter: asyncio.Future[_Staged | BaseException] = loop.create_future()
        if len(self._threads) < self._workers:
            self._start_workers()
        self._jobs.put(_Job(list(users), message, waiter, loop))
        outcome = await waiter
        if isinstance(outcome, BaseException):
            raise outcome
        staged = outcome
        for commit in staged.commits:
            # the first delivery of a batch usually ran its fsync itself: no hop then;
            # the others share one hand-off back to the loop per directory fsync
            error = commit.result() if commit.done() else await _wait_shared(commit, loop)
            if error is not None:
                await loop.run_in_executor(self._pool, staged.roll_back)
                raise error
        return staged.names

    async def _helper_for(
        self, users: Sequence[str], loop: asyncio.AbstractEventLoop
    ) -> DeliveryHelper | None:
        """The running helper of ``loop``, started if need be; ``None``: use the threads.

        Checks the names first (a ``ValueError`` before anything is sent). A helper
        belongs to one event loop: a delivery from another loop, while the
        helper's own still runs, goes through the staging threads instead.
        """
        if not users:
            raise ValueError("deliver needs at least one user")
        for user in users:
            self.mailbox_path(user)
        helper, started = self._helper, self._helper_started
        if helper is not None and helper.loop is not None and helper.loop is not loop:
            if not helper.loop.is_closed():
                return None
            await asyncio.to_thread(helper.kill)  # its loop is gone, and nobody waits on it
            helper = None
        # a helper that failed to start is not alive either (shield took its exception)
        if helper is None or started is None or (started.done() and not helper.alive):
            if helper is not None:
                await asyncio.to_thread(helper.kill)  # reap a helper that died
                if helper.answered == 0:
                    # it never stored anything: starting it again would fail the same way
                    log.error(
                        "the delivery helper exited without storing a message (its errors "
                        "are above); deliveries now go through threads of this process"
                    )
                    self.helper_process = False
                    self._helper = self._helper_started = None
                    return None
            from .stager import DeliveryHelper

            helper = self._helper = DeliveryHelper(
                self.root, hostname=self.hostname, fsync=self.fsync, workers=self._workers
            )
            started = self._helper_started = loop.create_task(helper.start())
        await asyncio.shield(started)  # OSError: it cannot be started (the caller says 451)
        return helper

    def _start_workers(self) -> None:
        with self._lock:
            while len(self._threads) < self._workers:
                thread = threading.Thread(
                    target=self._work, name=f"maildir-{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()

    def _work(self) -> None:
        """A staging thread: one job per delivery; results go back to the loop in batches.

        Compared with ``run_in_executor``: no executor future per delivery, and one
        hand-off to the loop for all the deliveries staged while the loop had not
        yet taken the previous ones (one self-pipe write, one wake-up).
        """
        jobs, staged, lock = self._jobs, self._staged, self._lock
        while True:
            job = jobs.get()
            if job is None:
                return
            outcome: _Staged | BaseException
            try:
                outcome = self._stage(job.users, job.message)
            except BaseException as exc:  # the delivery's caller gets it, whatever it is
                outcome = exc
            with lock:
                first = not staged
                staged.append((job, outcome))
            if first:  # otherwise the hand-off already scheduled takes this one too
                with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
                    job.loop.call_soon_threadsafe(self._hand_back)

    def _hand_back(self) -> None:
        """On a loop: give the staged deliveries to their callers."""
        with self._lock:
            done = self._staged[:]
            self._staged.clear()
        here = asyncio.get_running_loop()
        for job, outcome in done:
            if job.loop is not here:  # another loop's delivery (rare): pass it on
                with contextlib.suppress(RuntimeError):
                    job.loop.call_soon_threadsafe(_set_outcome, job.waiter, outcome)
            else:
                _set_outcome(job.waiter, outcome)

    def list_new(self, user: str) -> list[Path]:
        """The messages in ``new/`` of ``user``'s Maildir, sorted by file name.

        Args:
            user: the mailbox name.

        Returns:
            Paths of the files (empty if the Maildir does not exist yet).
        """
        new = self.mailbox_path(user) / "new"
        try:
            with os.scandir(new) as entries:
                return sorted(
                    Path(entry.path) for entry in entries if not entry.name.startswith(".")
                )
        except FileNotFoundError:
            return []

    async def close(self) -> None:
        """Wait for deliveries in flight and stop the threads (and the helper process)."""
        self._closed = True
        helper, self._helper = self._helper, None
        started, self._helper_started = self._helper_started, None
        if started is not None and not started.done() and helper is not None:
            with contextlib.suppress(Exception):  # a helper still starting is stopped too
                await asyncio.shield(started)
        if helper is not None:
            if helper.loop is asyncio.get_running_loop():
                await helper.close()
            else:
                await asyncio.to_thread(helper.kill)
        with self._lock:
            threads = list(self._threads)
        for _ in threads:
            self._jobs.put(None)  # after every job queued before
        for thread in threads:
            await asyncio.to_thread(thread.join)
        await asyncio.sleep(0)  # their last results were handed to this loop
        await asyncio.to_thread(self._pool.shutdown, wait=True)
        await asyncio.to_thread(self._sync_pool.shutdown, wait=True)

    # -- internals ---------------------------------------------------------------------

    def _stage(self, users: Sequence[str], message: bytes) -> _Staged:
        """Write, fsync and rename into every ``new/``, then request the directory syncs."""
        if not users:
            raise ValueError("deliver needs at least one user")
        distinct = list(dict.fromkeys(users))
        # dict reads are atomic; changes hold the lock. Every name is checked
        # before any Maildir is created.
        known = [self._boxes.get(user) for user in distinct]
        paths = [
            self.mailbox_path(u) if b is None else None
            for u, b in zip(distinct, known, strict=True)
        ]
        boxes = [
            b if b is not None else self._open_box(u, path)
            for u, b, path in zip(distinct, known, paths, strict=True)
        ]

        written: list[tuple[str, str]] = []  # (tmp path, new path)
        renamed: list[str] = []
        names: dict[str, str] = {}
        try:
            for user, box in zip(distinct, boxes, strict=True):
                name = self._unique_name(len(message))
                tmp, new = box.tmp + name, box.new + name
                written.append((tmp, new))
                self._write_durably(tmp, message)
                names[user] = name
            for tmp, new in written:
                os.rename(tmp, new)
                renamed.append(new)
            commits = [box.sync.request(inline=True) for box in boxes] if self.fsync else []
        except BaseException:
            for tmp, new in written:
                with contextlib.suppress(OSError):
                    os.unlink(new if new in renamed else tmp)
            with self._lock:  # a mailbox removed behind our back is re-created next time
                self._ready.difference_update(distinct)
                for user in distinct:
                    self._boxes.pop(user, None)
            raise
        return _Staged([names[user] for user in users], renamed, commits)

    def _open_box(self, user: str, path: Path | None) -> _Box:
        """Create the Maildir ``path`` of ``user`` if needed, and remember its paths."""
        assert path is not None
        self._ensure_mailbox(user, path)
        box = _Box(path, self._dirsync(path / "new"))
        with self._lock:
            if user in self._ready:
                self._boxes[user] = box
        return box

    def _dirsync(self, directory: Path) -> DirectorySync:
        sync = self._dirsyncs.get(directory)  # dict reads are atomic; only creation locks
        if sync is None:
            with self._lock:
                sync = self._dirsyncs.setdefault(
                    directory, DirectorySync(directory, self._sync_pool, self._fsync_fn)
                )
        return sync

    def ensure_mailbox(self, user: str) -> Path:
        """Create ``user``'s Maildir if needed (durably); returns its path. Blocks on disk I/O.

        Raises:
            ValueError: the name is unsafe (see :meth:`mailbox_path`).
            OSError: it cannot be created.
        """
        box = self.mailbox_path(user)
        self._ensure_mailbox(user, box)
        return box

    def _ensure_mailbox(self, user: str, box: Path) -> None:
        """Create ``box/{tmp,new,cur}`` once, durably (the new entries are fsynced too)."""
        if user in self._ready:  # set reads are atomic; changes hold the lock
            return
        with self._create_lock:  # concurrent first deliveries create and sync once
            with self._lock:
                if user in self._ready:
                    return
            created_root = not self.root.is_dir()
            os.makedirs(self.root, mode=0o700, exist_ok=True)
            created_box = not box.is_dir()
            os.makedirs(box, mode=0o700, exist_ok=True)
            for sub in SUBDIRS:
                os.makedirs(box / sub, mode=0o700, exist_ok=True)
            if self.fsync:
                # A directory fsync of new/ is worthless if new/ itself can vanish in
                # a crash: make the entries of the chain durable, parents last.
                self._fsync_dir(box)
                if created_box:
                    self._fsync_dir(self.root)
                if created_root:
                    self._fsync_dir(self.root.parent)
            with self._lock:
                self._ready.add(user)

    def _fsync_dir(self, directory: Path) -> None:
        fsync_directory(directory, self._fsync_fn)

    def _write_durably(self, path: Path | str, data: bytes) -> None:
        write_new_file(path, data, self._fsync_fn if self.fsync else None)
