"""One user's Maildir as a POP3 maildrop: locked, numbered, and changed only on QUIT.

Theory of operation
-------------------
RFC 1939 §4 gives a session exclusive access to its maildrop from login to
the end of the UPDATE state, and numbers the messages as they were at login.
:meth:`Maildrop.open` takes an ``flock(2)`` lock on a file in the Maildir
(:data:`LOCK_NAME`), then lists ``new/`` and ``cur/`` once. An flock belongs
to the open file description: it is dropped when the file is closed, which
happens on QUIT, when a session ends any other way, and, by the kernel, when
the process dies; so a crash never leaves a stale lock behind. Another
session, in this process or another, fails to take it: :class:`MaildropLocked`.

Sizes are octets of the message with CRLF line ends, which is what RETR
sends before byte-stuffing (RFC 1939 §11); files with bare LFs are counted as
if each LF were CRLF. Computing that reads the file once per process: the
result is cached by name, size and modification time.

The unique id (UIDL) is the Maildir unique name, the file name up to ":"
(maildir(5)); readers that move a file from ``new/`` to ``cur/`` or change its
flags keep that part, so ids survive sessions, restarts and other readers.

Marked messages are unlinked only by :meth:`Maildrop.expunge` (the UPDATE
state), and the directories are fsynced before it returns, so a ``+OK`` to
QUIT means the deletions are durable.

Everything here blocks on the disk: the POP3 session calls it through
``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from conformance.wire.pop3 import crlf_size

from .maildir import fsync_directory

__all__ = ["LOCK_NAME", "DropMessage", "Maildrop", "MaildropLocked", "unique_id"]

LOCK_NAME = "mailharness-pop3.lock"
_READ_DIRS = ("new", "cur")
# RFC 1939 §7 (UIDL): "The unique-id of a message is an arbitrary server-determined
# string, consisting of one to 70 characters in the range 0x21 to 0x7E".
_UID = re.compile(r"[\x21-\x7e]{1,70}")
_SIZE_CACHE_LIMIT = 100_000
_size_cache: dict[tuple[str, int, int], int] = {}
_size_lock = threading.Lock()


class MaildropLocked(Exception):
    """Another session holds the maildrop (RFC 1939 §4; ``[IN-USE]``, RFC 2449 §8.1.2)."""


@dataclass
class DropMessage:
    """One message of the maildrop as numbered at login."""

    number: int  # 1-based, fixed for the session
    uid: str  # the UIDL id
    base: str  # the Maildir unique name: the file name up to ":"
    path: Path  # where it was last seen
    size: int  # octets with CRLF line ends
    deleted: bool = False


def unique_id(base: str) -> str:
    """The UIDL id for a Maildir unique name: the name itself if RFC 1939 §7 allows it."""
    if _UID.fullmatch(base):
        return base
    return "h" + hashlib.sha256(base.encode("utf-8", "surrogateescape")).hexdigest()[:40]


# <seconds>.M<usec>P<pid>Q<deliveries>. as MaildirStore (and Dovecot) write them
_NAME_TIME = re.compile(r"(\d+)\.M(\d+)P\d+Q(\d+)\.")


def _delivery_order(name: str) -> tuple[int, int, int, str]:
    """Sort key: delivery time to the microsecond, then the delivery counter.

    The numbers in the name are not zero-padded, so they are compared as
    numbers. Other names that start with seconds (maildir(5)) sort by those,
    and names without a time go last.
    """
    m = _NAME_TIME.match(name)
    if m is not None:
        return (int(m[1]), int(m[2]), int(m[3]), name)
    head = name.split(".", 1)[0]
    return (int(head) if head.isdigit() else 1 << 62, 0, 0, name)


def _crlf_octets(path: Path, st: os.stat_result) -> int:
    key = (path.name, st.st_size, st.st_mtime_ns)
    with _size_lock:
        size = _size_cache.get(key)
    if size is None:
        size = crlf_size(path.read_bytes())
        with _size_lock:
            if len(_size_cache) >= _SIZE_CACHE_LIMIT:
                _size_cache.clear()
            _size_cache[key] = size
    return size


class Maildrop:
    """The locked, numbered view of one Maildir for one POP3 session.

    Use :meth:`open`; call :meth:`close` when the session ends (whatever way).
    """

    def __init__(self, box: Path, lock_fd: int, messages: list[DropMessage]) -> None:
        self.box = box
        self._lock_fd: int | None = lock_fd
        self.messages = messages

    @classmethod
    def open(cls, box: Path) -> Maildrop:
        """Lock the Maildir ``box`` (which must exist) and list its messages.

        Raises:
            MaildropLocked: another session holds it.
            OSError: the Maildir cannot be read.
        """
        fd = os.open(box / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise MaildropLocked(f"{box.name}: maildrop is locked by another session") from None
            messages = cls._scan(box)
        except BaseException:
            os.close(fd)  # closing drops the lock too
            raise
        return cls(box, fd, messages)

    @staticmethod
    def _scan(box: Path) -> list[DropMessage]:
        found: list[tuple[tuple[int, int, int, str], Path, os.stat_result]] = []
        for sub in _READ_DIRS:
            try:
                entries = list(os.scandir(box / sub))
            except FileNotFoundError:
                continue
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:  # moved or removed meanwhile
                    continue
                if not entry.is_file(follow_symlinks=False):
                    continue
                found.append((_delivery_order(entry.name), Path(entry.path), st))
        found.sort(key=lambda item: item[0])
        messages: list[DropMessage] = []
        for _, path, st in found:
            base = path.name.split(":", 1)[0]
            try:
                size = _crlf_octets(path, st)
            except FileNotFoundError:
                continue
            messages.append(
                DropMessage(
                    number=len(messages) + 1,
                    uid=unique_id(base),
                    base=base,
                    path=path,
                    size=size,
                )
            )
        return messages

    # -- reading -------------------------------------------------------------------------

    def _locate(self, msg: DropMessage) -> Path:
        """Where the message is now: another reader may have moved it or changed its flags."""
        if msg.path.exists():
            return msg.path
        for sub in _READ_DIRS:
            with contextlib.suppress(FileNotFoundError), os.scandir(self.box / sub) as entries:
                for entry in entries:
                    if entry.name == msg.base or entry.name.startswith(msg.base + ":"):
                        msg.path = Path(entry.path)
                        return msg.path
        raise FileNotFoundError(f"message {msg.number} ({msg.uid}) is gone from {self.box}")

    def read(self, msg: DropMessage) -> bytes:
        """The stored bytes of ``msg``.

        Raises:
            OSError: it cannot be read (FileNotFoundError: someone else removed it).
        """
        return self._locate(msg).read_bytes()

    # -- UPDATE ----------------------------------------------------------------------------

    def expunge(self) -> int:
        """Remove the messages marked deleted, durably; returns how many could not be removed."""
        failed = 0
        touched: set[Path] = set()
        for msg in self.messages:
            if not msg.deleted:
                continue
            try:
                path = self._locate(msg)
                path.unlink()
                touched.add(path.parent)
            except FileNotFoundError:
                continue  # already gone: removed is removed
            except OSError:
                failed += 1
        for directory in touched:
            try:
                fsync_directory(directory)
            except OSError:
                failed += 1
        return failed

    def close(self) -> None:
        """Release the lock (idempotent)."""
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)
