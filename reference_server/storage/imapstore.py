"""IMAP mailbox state over the users' Maildirs: names, UIDs, flags, \\Recent, change notification.

Theory of operation
-------------------
Everything here is blocking file I/O, called by the asyncio IMAP sessions
through ``asyncio.to_thread`` (or a worker pool) from one process. One
:class:`ImapStore` per process holds one shared :class:`Mailbox` object per
``(user, mailbox name)``, so every session of a user sees the same state; each
Mailbox serialises its operations with a lock. Other processes and the POP3
sessions may add, rename and delete message files at any moment: every
operation tolerates files appearing and vanishing.

**Layout** (see :mod:`.mailbox_names`): INBOX is the user's Maildir
``<root>/<user>/`` (where SMTP delivers into ``new/``); every other mailbox is
a Maildir++ folder ``<root>/<user>/.<a>.<b>`` for the name ``a/b`` (delimiter
``/``; ``.``, ``%`` and control characters in a level are ``%XX``-escaped).
Files this module keeps, in each mailbox directory: ``mailharness-imap-index``
and ``mailharness-imap-keywords`` (:mod:`.mailbox_index`), ``maildirfolder``
(Maildir++ marker, folders only); in the user's Maildir:
``mailharness-subscriptions`` (one name per line, UTF-8),
``mailharness-imap-uidvalidity`` (the last UIDVALIDITY given out) and
``mailharness-imap-setup`` (written once the special-use mailboxes exist).

**Messages** are the files in ``new/`` and ``cur/``, named as maildir(5)
says; flags are the info letters (``:2,DFRST`` + keyword letters ``a``-``z``).
A message found in ``new/`` is moved to ``cur/`` when it gets its UID. New
files get UIDs in delivery order (the numbers of ``<secs>.M<usec>P..Q<n>``
compared as numbers), files that vanished are expunged, and a file whose
info letters changed behind the store's back gets a new mod-sequence.

**Rescans are cheap when nothing changed**: :meth:`Mailbox.refresh` stats
``new/`` and ``cur/`` and lists them only if an mtime changed, or if the last
listing was taken less than a second after the directory's last change
(timestamps are coarse, so a change in the same tick would be invisible), or
if :func:`notify_delivery` or an error asked for it. When one did change, only
the names that appeared or vanished since the previous listing are looked at
(set differences of the two listings), so a delivery into a mailbox of 50,000
messages costs a rescan of about 20 ms, not 80. Opening a mailbox whose index
is current lists the two directories once and stats no message file.

**Sessions** watch a mailbox (:meth:`Mailbox.select` or :meth:`Mailbox.watch`):
a :class:`Watch` queues the changes the session has not been told about, and
its callback is called (from whichever thread made the change, or from the
event loop for :func:`notify_delivery`) whenever something is queued, so IDLE
can wake up; the session then calls ``refresh(watch)`` and gets its
:class:`Changes`. Changes made through the store are queued for every other
watch; new messages are queued for the originating watch too (RFC 3501
§6.3.11: an APPEND to the selected mailbox is announced with EXISTS), while
flag changes and expunges are not (the command's own responses report
those). A message added and expunged before a session drained its queue is
never reported to it.

**\\Recent** (RFC 3501 §2.3.2): the index keeps the first UID no session has
claimed. ``select(claim_recent=True)`` (SELECT) claims every message at or
above it; EXAMINE (``claim_recent=False``) sees them as recent without
claiming them. Messages that arrive while sessions are open are claimed by
the first claiming watch that drains them. STATUS RECENT counts the
unclaimed messages.

**Durability**: messages are written to ``tmp/``, fsynced, renamed into
``cur/`` and the directory fsynced before APPEND, COPY or MOVE returns; flag
renames and expunges fsync ``cur/`` once per call. The index is written
atomically (temp, fsync, rename, fsync) but lazily, protected by
reservations (:mod:`.mailbox_index`): an UID or mod-sequence given out is
never given to anything else, even after a crash. Without the index (missing,
corrupt), the mailbox is rebuilt with a new UIDVALIDITY (logged), never by
silently reusing UIDs. UIDVALIDITY is the time in seconds, but always above
the last one given out to that user (``mailharness-imap-uidvalidity``), so a
mailbox deleted and created again in the same second still gets a new one.

Wiring SMTP deliveries
----------------------
``MaildirStore.deliver`` knows nothing of IMAP. After it returns, the SMTP
side calls :func:`notify_delivery` (or ``ImapStore.notify_delivery``) for each
local user; it does no I/O and takes no mailbox lock, so it is safe on the
event loop. Deliveries that bypass it (another process, files dropped in by
hand) are still found by the next ``refresh``, which a session in IDLE should
call every few seconds anyway.

Choices where the RFCs leave room
---------------------------------
- ``CREATE foo/`` creates the selectable mailbox ``foo`` (Maildir++ folders
  can always have children). CREATE makes missing superiors, as selectable
  mailboxes (RFC 3501 §6.3.3). CREATE of a ``\\Noselect`` name makes it
  selectable.
- DELETE of a mailbox with inferiors removes its messages and leaves it
  ``\\Noselect`` (RFC 3501 §6.3.4); deleting a ``\\Noselect`` name with
  inferiors is refused, INBOX is refused. Subscriptions are kept on DELETE
  (RFC 3501 §6.3.6: never removed unilaterally) and follow a RENAME.
- RENAME moves inferiors too, creates missing superiors of the new name,
  refuses a target that exists or has inferiors, and refuses renaming a
  mailbox below itself. RENAME of INBOX moves its messages to a new
  mailbox (fresh UIDVALIDITY) and leaves INBOX empty with its inferiors in
  place (RFC 3501 §6.3.5). A session with a renamed or deleted mailbox
  selected gets :class:`MailboxNotFound` from its next call.
- Special use (RFC 6154): ``Drafts``, ``Sent``, ``Trash`` and ``Junk`` are
  created and subscribed (with INBOX) the first time a user is seen, once
  (a user may delete them afterwards). The top-level names ``Drafts``,
  ``Sent``, ``Trash``, ``Junk`` and ``Archive`` carry ``\\Drafts`` ... ``\\Archive``.
- Keywords are matched case-insensitively (RFC 3501 §9: atoms are
  case-insensitive) and keep the spelling first used. Setting or clearing
  ``\\Recent`` or an unknown ``\\`` flag raises :class:`InvalidFlag`.
- One STORE, EXPUNGE, MOVE or rescan gives all the messages whose flags it
  changes one new mod-sequence (RFC 7162 lets messages share one); each new
  message gets a mod-sequence of its own.
- Subscribing a name that does not exist is allowed; LIST data includes such
  names with ``\\NonExistent`` (RFC 5258 §3).
- Mailbox objects are kept for the life of the process (about 0.75 KB per
  message once loaded and snapshotted).
- One IMAP server process per data directory: the index is not locked
  against another writer process.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import itertools
import logging
import os
import re
import secrets
import shutil
import socket
import stat
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, NamedTuple

from conformance.wire import crlf_length

from .mailbox_index import (
    INDEX_NAME,
    KEYWORDS_NAME,
    SYSTEM_FLAGS,
    IndexCorrupt,
    IndexData,
    IndexEntry,
    InvalidFlag,
    Keywords,
    MessageInfo,
    TooManyKeywords,
    delivery_order,
    load_index,
    normalize_flags,
    save_index,
    write_atomically,
)
from .mailbox_names import (
    DELIMITER,
    INBOX,
    ImapStoreError,
    InvalidMailboxName,
    canonical_name,
    dirname_to_name,
    is_inferior,
    mailbox_dirname,
    mailbox_path,
    parent_names,
)
from .maildir import fsync_directory, sanitize_hostname

__all__ = [
    "DELIMITER",
    "INBOX",
    "Changes",
    "ImapStore",
    "ImapStoreError",
    "InvalidFlag",
    "InvalidMailboxName",
    "Mailbox",
    "MailboxExists",
    "MailboxInfo",
    "MailboxNotFound",
    "MailboxNotSelectable",
    "MailboxStatus",
    "MessageExpunged",
    "MessageInfo",
    "OperationRefused",
    "Selection",
    "StoreResult",
    "TooManyKeywords",
    "Watch",
    "notify_delivery",
]

log = logging.getLogger("reference_server.imap.store")

SUBSCRIPTIONS_NAME = "mailharness-subscriptions"
UIDVALIDITY_NAME = "mailharness-imap-uidvalidity"
SETUP_NAME = "mailharness-imap-setup"
_FOLDER_MARKER = "maildirfolder"  # Maildir++: "this directory is a folder, not a user's root"
_TEMP_PREFIX = "mailharness-tmp-"  # no leading ".": never mistaken for a mailbox
# RFC 6154 §2: the special-use attributes, by top-level name.
SPECIAL_USE: dict[str, str] = {
    "Archive": "\\Archive",
    "Drafts": "\\Drafts",
    "Junk": "\\Junk",
    "Sent": "\\Sent",
    "Trash": "\\Trash",
}
CREATED_SPECIAL_USE = ("Drafts", "Sent", "Trash", "Junk")
_RESERVE = 1000  # UIDs / mod-sequences handed out between index writes, at most
_SETTLE_NS = 1_000_000_000  # a listing this long after the last change saw all of it
_MAILDIR_SUBDIRS = ("cur", "new", "tmp")
_NO_LINK = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP}

Callback = Callable[[], None]

# Folder directory name -> mailbox name, remembered: a pure function of the name, and the
# scan of a user's folders (CREATE, DELETE, RENAME, LIST, opening a missing mailbox)
# would otherwise decode every folder's name each time.
_folder_name = functools.lru_cache(maxsize=65536)(dirname_to_name)


def _current_place(places: list[tuple[str, str]]) -> tuple[str, str]:
    """Where a message is, of the files with its unique name: ``cur/`` before ``new/``
    (maildir(5): a reader moves from new to cur), then the greatest name."""
    return max(places, key=lambda place: (place[0] == "cur", place[1]))


def _is_real_dir(path: Path | str) -> bool:
    """A directory itself, not a symbolic link to one (as folder listings count them)."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


# -- errors -------------------------------------------------------------------------------


class MailboxNotFound(ImapStoreError):
    """No mailbox by that name (or it was deleted or renamed meanwhile); RFC 5530 NONEXISTENT."""

    code = "NONEXISTENT"


class MailboxExists(ImapStoreError):
    """The target name exists already; RFC 5530 ALREADYEXISTS."""

    code = "ALREADYEXISTS"


class MailboxNotSelectable(ImapStoreError):
    """The name exists only as ``\\Noselect`` (a superior kept for its inferiors)."""

    code = "CANNOT"


class OperationRefused(ImapStoreError):
    """The operation is not allowed on this mailbox (deleting INBOX, ...); RFC 5530 CANNOT."""

    code = "CANNOT"


class MessageExpunged(ImapStoreError):
    """The message is gone (expunged elsewhere, or deleted by POP3); RFC 5530 EXPUNGEISSUED."""

    code = "EXPUNGEISSUED"


# -- results ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MailboxInfo:
    """One line of LIST data.

    Attributes:
        name: the canonical name (Unicode; the protocol layer encodes it).
        delimiter: the hierarchy delimiter, ``"/"``.
        attributes: ``\\HasChildren``/``\\HasNoChildren`` (RFC 3348), ``\\Noselect``,
            ``\\NonExistent`` (RFC 5258, for subscribed names that do not exist),
            special use (``\\Sent`` ..., RFC 6154).
        subscribed: whether the name is in the subscription list.
    """

    name: str
    delimiter: str
    attributes: frozenset[str]
    subscribed: bool


@dataclass(frozen=True, slots=True)
class Changes:
    """What a session has not been told yet (or what one rescan found), UIDs ascending.

    Attributes:
        expunged: messages gone.
        added: new messages.
        flags_changed: messages whose flags changed (not in ``added``).
        recent: the part of ``added`` that is ``\\Recent`` for this session.
    """

    expunged: list[int] = field(default_factory=list)
    added: list[int] = field(default_factory=list)
    flags_changed: list[int] = field(default_factory=list)
    recent: list[int] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.expunged or self.added or self.flags_changed)


@dataclass(frozen=True, slots=True)
class MailboxStatus:
    """The STATUS items (RFC 3501 §6.3.10, RFC 9051 §6.3.11, RFC 7162 §3.1.6)."""

    messages: int
    unseen: int
    recent: int
    uidnext: int
    uidvalidity: int
    deleted: int
    size: int
    highestmodseq: int


class StoreResult(NamedTuple):
    """The outcome of :meth:`Mailbox.store`.

    Attributes:
        changed: UIDs whose flags changed (each got the new mod-sequence).
        modified: UIDs left alone because their mod-sequence was above
            UNCHANGEDSINCE (RFC 7162 §3.1.3: the MODIFIED response code).
    """

    changed: list[int]
    modified: list[int]


@dataclass(frozen=True, slots=True)
class Selection:
    """What SELECT/EXAMINE report, and the session's watch on the mailbox.

    Attributes:
        watch: the session's :class:`Watch`; pass it to ``refresh`` and
            as ``origin``, close it on CLOSE/UNSELECT/LOGOUT.
        messages: the messages, UID order (sequence number = index + 1).
        recent: UIDs that are ``\\Recent`` to this session.
        uidvalidity: UIDVALIDITY.
        uidnext: UIDNEXT.
        highest_modseq: HIGHESTMODSEQ.
        keywords: the keywords defined in the mailbox (for FLAGS).
        can_create_keywords: whether PERMANENTFLAGS may include ``\\*``.
    """

    watch: Watch
    messages: list[MessageInfo]
    recent: frozenset[int]
    uidvalidity: int
    uidnext: int
    highest_modseq: int
    keywords: tuple[str, ...]
    can_create_keywords: bool


class Watch:
    """One session's subscription to a mailbox's changes (see the module doc).

    Attributes:
        mailbox: the mailbox watched.
        claim_recent: whether this session claims ``\\Recent`` (SELECT, not EXAMINE).
        recent: the UIDs that are ``\\Recent`` to this session (expunged ones removed).
    """

    def __init__(self, mailbox: Mailbox, callback: Callback | None, claim_recent: bool) -> None:
        self.mailbox = mailbox
        self.callback = callback
        self.claim_recent = claim_recent
        self.recent: set[int] = set()
        self._added: set[int] = set()
        self._expunged: set[int] = set()
        self._flags: set[int] = set()

    @property
    def pending(self) -> bool:
        """Whether changes are queued (a hint: ``refresh`` may find more on disk)."""
        return bool(self._added or self._expunged or self._flags)

    def close(self) -> None:
        """Stop watching (same as ``mailbox.unwatch(self)``); blocks on disk I/O."""
        self.mailbox.unwatch(self)

    def _queue(self, added: Iterable[int], expunged: Iterable[int], flags: Iterable[int]) -> None:
        self._added.update(added)
        for uid in expunged:
            if uid in self._added:  # never told about it: nothing to say now either
                self._added.discard(uid)
            else:
                self._expunged.add(uid)
            self._flags.discard(uid)
            self.recent.discard(uid)
        self._flags.update(uid for uid in flags if uid not in self._added)

    def _forget_unseen(self, expunged: Iterable[int]) -> None:
        """For the origin of an expunge: drop the expunged ones it was never told about."""
        for uid in expunged:
            self._added.discard(uid)
            self._flags.discard(uid)
            self.recent.discard(uid)

    def _drain(self) -> tuple[list[int], list[int], list[int]]:
        out = (sorted(self._expunged), sorted(self._added), sorted(self._flags))
        self._added, self._expunged, self._flags = set(), set(), set()
        return out


def _fire(callbacks: Iterable[Callback]) -> None:
    for callback in callbacks:
        try:
            callback()
        except Exception:  # a session's bug must not break another's command
            log.exception("mailbox change callback failed")


# -- one mailbox --------------------------------------------------------------------------


class _Delta:
    """Changes one operation made to the shared state."""

    __slots__ = ("added", "expunged", "flags")

    def __init__(self) -> None:
        self.added: list[int] = []
        self.expunged: list[int] = []
        self.flags: list[int] = []


class Mailbox:
    """The shared state of one selectable mailbox; get it from :meth:`ImapStore.open`.

    All methods block on disk I/O and are thread-safe. Methods raise
    :class:`MailboxNotFound` once the mailbox has been deleted or renamed, and
    ``OSError`` when the file system fails.
    """

    def __init__(self, store: ImapStore, user: str, name: str, path: Path) -> None:
        self.owner = store
        self.user = user
        self.name = name
        self.path = path
        top = name.split(DELIMITER, 1)[0]
        self.special_use: str | None = SPECIAL_USE.get(top) if top == name else None
        self._lock = threading.RLock()
        self._watches: tuple[Watch, ...] = ()  # replaced whole: readable without the lock
        self._loaded = False
        self._gone = False
        self._force_scan = True
        self._entries: dict[int, IndexEntry] = {}  # UID order: UIDs only ever grow
        self._by_unique: dict[str, IndexEntry] = {}
        self._keywords: Keywords | None = None
        self._uidvalidity = 0
        self._uidnext = 1
        self._highest = 1
        self._recent_from = 1
        self._saved_uid_reserved = 1
        self._saved_modseq_reserved = 1
        self._dirty = False
        self._last_save = 0.0
        self._stamps: dict[str, tuple[int, int]] = {}  # sub -> (dir mtime_ns, listed at ns)
        # the last listing of each of new/ and cur/ (every name), and from it, the
        # message files (regular files, no dot names) of each unique name
        self._raw: dict[str, set[str]] = {"new": set(), "cur": set()}
        self._files: dict[str, list[tuple[str, str]]] = {}  # a list: one entry, mostly
        self._listed = False
        self._cur = str(path / "cur")
        self._new = str(path / "new")

    def __repr__(self) -> str:
        return f"<Mailbox {self.user}:{self.name} uidvalidity={self._uidvalidity}>"

    # -- properties ------------------------------------------------------------------------

    @property
    def uidvalidity(self) -> int:
        """UIDVALIDITY (loads the mailbox if needed)."""
        with self._lock:
            self._check()
            return self._uidvalidity

    @property
    def uidnext(self) -> int:
        """UIDNEXT as of the last rescan."""
        with self._lock:
            self._check()
            return self._uidnext

    @property
    def highest_modseq(self) -> int:
        """HIGHESTMODSEQ (RFC 7162) as of the last rescan."""
        with self._lock:
            self._check()
            return self._highest

    @property
    def keywords(self) -> list[str]:
        """The keywords defined in this mailbox, in letter order."""
        with self._lock:
            self._check()
            assert self._keywords is not None
            return self._keywords.keywords()

    @property
    def can_create_keywords(self) -> bool:
        """Whether a new keyword would still fit (PERMANENTFLAGS ``\\*``)."""
        with self._lock:
            self._check()
            assert self._keywords is not None
            return not self._keywords.full

    @property
    def watches(self) -> int:
        """How many watches are registered."""
        return len(self._watches)

    # -- sessions ------------------------------------------------------------------------

    def select(self, *, claim_recent: bool = True, callback: Callback | None = None) -> Selection:
        """Rescan, register a watch for the session, and report the mailbox (SELECT/EXAMINE).

        Args:
            claim_recent: SELECT (``True``) claims the ``\\Recent`` messages for this
                session; EXAMINE (``False``) sees them without claiming them.
            callback: called (from any thread; keep it short and thread-safe, e.g.
                ``loop.call_soon_threadsafe``) when changes are queued for the watch.

        Returns:
            The selection, with the watch to pass to :meth:`refresh`.

        Raises:
            MailboxNotFound: the mailbox is gone.
        """
        with self._lock:
            self._check()
            wake = self._publish(self._sync())
            watch = Watch(self, callback, claim_recent)
            self._watches = (*self._watches, watch)
            messages = self._snapshot()
            recent = frozenset(uid for uid in self._entries if uid >= self._recent_from)
            if claim_recent and recent:
                self._recent_from = self._uidnext
                self._dirty = True
            watch.recent.update(recent)
            assert self._keywords is not None
            selection = Selection(
                watch=watch,
                messages=messages,
                recent=recent,
                uidvalidity=self._uidvalidity,
                uidnext=self._uidnext,
                highest_modseq=self._highest,
                keywords=tuple(self._keywords.keywords()),
                can_create_keywords=not self._keywords.full,
            )
            self._commit()
        _fire(wake)
        return selection

    def watch(self, callback: Callback | None = None, *, claim_recent: bool = False) -> Watch:
        """Register a watch without selecting (no rescan, no \\Recent claimed now).

        Args:
            callback: as for :meth:`select`.
            claim_recent: whether messages drained later are claimed as ``\\Recent``.
        """
        watch = Watch(self, callback, claim_recent)
        with self._lock:
            self._watches = (*self._watches, watch)
        return watch

    def unwatch(self, watch: Watch) -> None:
        """Remove a watch (idempotent); the last one out writes the index if it is behind."""
        with self._lock:
            self._watches = tuple(w for w in self._watches if w is not watch)
            if not self._watches and self._loaded and not self._gone and self._dirty:
                self._save(tight=True)

    def refresh(self, watch: Watch | None = None) -> Changes:
        """Pick up changes on disk (deliveries, POP3 deletions, other programs).

        Args:
            watch: the session's watch: return everything queued for it (changes
                by other sessions included) and clear the queue. Without one,
                return what this rescan found (it is queued for the watches too).

        Returns:
            The changes, UIDs ascending.

        Raises:
            MailboxNotFound: the mailbox was deleted or renamed.
        """
        with self._lock:
            self._check()
            delta = self._sync()
            wake = self._publish(delta, quiet=watch)
            if watch is None:
                changes = Changes(delta.expunged, delta.added, delta.flags)
            else:
                expunged, added, flags = watch._drain()
                recent = [uid for uid in added if uid >= self._recent_from]
                if watch.claim_recent and recent:
                    self._recent_from = max(recent) + 1
                    self._dirty = True
                watch.recent.update(recent)
                changes = Changes(expunged, added, flags, recent)
            self._commit()
        _fire(wake)
        return changes

    # -- reading -----------------------------------------------------------------------

    def snapshot(self) -> list[MessageInfo]:
        """Every message, in UID order, as of the last rescan (no disk access if loaded)."""
        with self._lock:
            self._check()
            return self._snapshot()

    def info(self, uid: int) -> MessageInfo | None:
        """One message as of the last rescan, or ``None`` if it is not (or no longer) here."""
        with self._lock:
            self._check()
            entry = self._entries.get(uid)
            return None if entry is None else self._info(entry)

    def read(self, uid: int) -> bytes:
        """The stored bytes of a message (CRLF line ends as stored).

        Raises:
            MessageExpunged: the message is not in the mailbox (any more).
        """
        for attempt in range(2):
            with self._lock:
                self._check()
                entry = self._entries.get(uid)
                if entry is None:
                    raise MessageExpunged(f"message UID {uid} has been expunged")
                path = os.path.join(self._dir(entry.sub), entry.filename)
            try:
                with open(path, "rb") as file:
                    return file.read()
            except FileNotFoundError:
                if attempt:
                    break
                with self._lock:  # renamed by someone else, or deleted: look again
                    self._force_scan = True
                    wake = self._publish(self._sync())
                _fire(wake)
        raise MessageExpunged(f"message UID {uid} has been expunged")

    def status(self) -> MailboxStatus:
        """Rescan and count (STATUS). RECENT counts the messages no session has claimed."""
        with self._lock:
            self._check()
            wake = self._publish(self._sync())
            unseen = deleted = size = 0
            for entry in self._entries.values():
                flags = entry.flags
                if "\\Seen" not in flags:
                    unseen += 1
                if "\\Deleted" in flags:
                    deleted += 1
                size += entry.size
            status = MailboxStatus(
                messages=len(self._entries),
                unseen=unseen,
                recent=sum(1 for uid in self._entries if uid >= self._recent_from),
                uidnext=self._uidnext,
                uidvalidity=self._uidvalidity,
                deleted=deleted,
                size=size,
                highestmodseq=self._highest,
            )
            self._commit()
        _fire(wake)
        return status

    # -- changing ----------------------------------------------------------------------

    def store(
        self,
        uids: Iterable[int],
        mode: Literal["add", "remove", "replace"],
        flags: Iterable[str],
        *,
        unchanged_since: int | None = None,
        origin: Watch | None = None,
    ) -> StoreResult:
        """Change flags (STORE, RFC 3501 §6.4.6; UNCHANGEDSINCE, RFC 7162 §3.1.3).

        UIDs not in the mailbox are ignored. Other watches are told.

        Args:
            uids: the messages.
            mode: ``"add"`` (+FLAGS), ``"remove"`` (-FLAGS) or ``"replace"`` (FLAGS).
            flags: system flags in any case, and keywords.
            unchanged_since: leave messages whose mod-sequence is above it alone.
            origin: the calling session's watch (not told of its own changes).

        Returns:
            The changed UIDs and the UIDs refused by ``unchanged_since``.

        Raises:
            InvalidFlag: ``\\Recent``, an unknown system flag or a bad keyword.
            TooManyKeywords: a new keyword does not fit (nothing was changed).
        """
        if mode not in ("add", "remove", "replace"):
            raise ValueError(f"store mode must be add, remove or replace, not {mode!r}")
        wanted = normalize_flags(flags)
        changed: list[int] = []
        modified: list[int] = []
        with self._lock:
            self._check()
            keywords = self._keywords
            assert keywords is not None
            new_keywords = [f for f in wanted if f not in SYSTEM_FLAGS]
            if mode != "remove":
                keywords.ensure(new_keywords)
                wanted = frozenset(self._spell(f) for f in wanted)
            removed_lower = {f.lower() for f in wanted}
            modseq = self._highest + 1
            touched = False
            for uid in sorted(set(uids)):
                entry = self._entries.get(uid)
                if entry is None:
                    continue
                if unchanged_since is not None and entry.modseq > unchanged_since:
                    modified.append(uid)
                    continue
                if mode == "add":
                    target = entry.flags | wanted
                elif mode == "remove":
                    target = frozenset(f for f in entry.flags if f.lower() not in removed_lower)
                else:
                    target = wanted
                if target == entry.flags:
                    continue
                filename = entry.unique + ":" + keywords.info_for(target, entry.unknown)
                try:
                    os.rename(
                        os.path.join(self._dir(entry.sub), entry.filename),
                        os.path.join(self._cur, filename),
                    )
                except FileNotFoundError:  # gone, or renamed by someone else: rescan later
                    self._force_scan = True
                    continue
                touched = True
                entry.sub, entry.filename, entry.flags = "cur", filename, target
                entry.modseq, entry.info = modseq, None
                changed.append(uid)
            if changed:
                self._highest = modseq
                self._dirty = True
            if touched:
                self._fsync_dir(self._cur)
            delta = _Delta()
            delta.flags = changed
            wake = self._publish(delta, origin=origin)
            self._commit()
        _fire(wake)
        return StoreResult(changed, modified)

    def expunge(
        self, uids: Iterable[int] | None = None, *, origin: Watch | None = None
    ) -> list[int]:
        """Remove the messages flagged ``\\Deleted`` (EXPUNGE; UID EXPUNGE with ``uids``).

        Args:
            uids: only these (RFC 4315 UID EXPUNGE); ``None`` for all.
            origin: the calling session's watch (not told of its own expunges).

        Returns:
            The expunged UIDs, ascending. Map them through the session's own
            view: a message delivered since the session's last refresh can be
            among them.

        Raises:
            OSError: a file could not be removed; those removed before stay removed.
        """
        only = None if uids is None else set(uids)
        with self._lock:
            self._check()
            targets = [
                entry
                for uid, entry in self._entries.items()
                if "\\Deleted" in entry.flags and (only is None or uid in only)
            ]
            done: list[IndexEntry] = []
            dirs: set[str] = set()
            try:
                for entry in targets:
                    directory = self._dir(entry.sub)
                    with contextlib.suppress(FileNotFoundError):  # gone already: fine
                        os.unlink(os.path.join(directory, entry.filename))
                    done.append(entry)
                    dirs.add(directory)
            finally:
                for directory in dirs:
                    self._fsync_dir(directory)
                delta = _Delta()
                delta.expunged = self._remove_entries(done)
                wake = self._publish(delta, origin=origin)
                self._commit()
        _fire(wake)
        return delta.expunged

    def append(
        self,
        data: bytes,
        flags: Iterable[str] = (),
        internaldate: datetime | None = None,
        *,
        origin: Watch | None = None,
    ) -> int:
        """Store a new message durably (APPEND, RFC 3501 §6.3.11) and return its UID.

        Args:
            data: the message, with CRLF line ends.
            flags: its flags (``\\Recent`` refused, as in STORE).
            internaldate: INTERNALDATE (the file's mtime); now if ``None``.
            origin: the calling session's watch (told too: RFC 3501 §6.3.11).

        Raises:
            InvalidFlag: as :meth:`store`.
            TooManyKeywords: as :meth:`store` (nothing stored).
        """
        wanted = normalize_flags(flags)
        when = self.owner.clock() if internaldate is None else internaldate.timestamp()
        with self._lock:
            self._check()
            assert self._keywords is not None
            self._keywords.ensure(f for f in wanted if f not in SYSTEM_FLAGS)
        unique, written = self.owner._write_tmp(self.path / "tmp", data, when)
        tmp: str | None = written
        try:
            with self._lock:
                self._check()
                keywords = self._keywords
                assert keywords is not None
                keywords.ensure(f for f in wanted if f not in SYSTEM_FLAGS)  # filled up meanwhile?
                # files already waiting get the lower UIDs; ours is not in cur/ yet
                wake = self._publish(self._sync())
                target = frozenset(self._spell(f) for f in wanted)
                filename = unique + ":" + keywords.info_for(target)
                os.rename(written, os.path.join(self._cur, filename))
                tmp = None
                self._fsync_dir(self._cur)
                delta = _Delta()
                delta.added.append(self._add(filename, len(data), int(when), target))
                wake += self._publish(delta, origin=origin)
                self._commit()
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
        _fire(wake)
        return delta.added[0]

    def copy(
        self, uids: Iterable[int], dest: Mailbox, *, origin: Watch | None = None
    ) -> list[tuple[int, int]]:
        """Copy messages with their flags and INTERNALDATE (COPY, RFC 3501 §6.4.7).

        Hard links when both are on one file system, else copies (fsynced).

        Args:
            uids: the messages; UIDs not here are skipped.
            dest: the target mailbox (may be this one).
            origin: the calling session's watch.

        Returns:
            ``(source UID, new UID)`` pairs, ascending (RFC 4315 COPYUID).

        Raises:
            MailboxNotFound: either mailbox is gone.
            TooManyKeywords: the target cannot take the keywords (nothing copied).
        """
        return self._transfer(uids, dest, origin, move=False)

    def move(
        self, uids: Iterable[int], dest: Mailbox, *, origin: Watch | None = None
    ) -> list[tuple[int, int]]:
        """Move messages (MOVE, RFC 6851): each file is renamed into the target, so a
        message is in one mailbox or the other at every moment, never both or neither.

        Args:
            uids: the messages; UIDs not here are skipped.
            dest: the target mailbox (moving into the same mailbox is refused).
            origin: the calling session's watch: not told of the expunges (it
                reports them itself), told of additions if it watches ``dest``.

        Returns:
            ``(source UID, new UID)`` pairs, ascending (COPYUID in RFC 6851 §4.3).

        Raises:
            OperationRefused: ``dest`` is this mailbox.
            MailboxNotFound: either mailbox is gone.
            TooManyKeywords: the target cannot take the keywords (nothing moved).
        """
        if dest is self:
            raise OperationRefused("cannot move messages into the mailbox they are in")
        return self._transfer(uids, dest, origin, move=True)

    def flush(self) -> None:
        """Write the index now if it is behind (CHECK, shutdown)."""
        with self._lock:
            if self._loaded and not self._gone and self._dirty:
                self._save(tight=True)

    # -- internals: state --------------------------------------------------------------

    def _check(self) -> None:
        if self._gone:
            raise MailboxNotFound(f"mailbox {self.name!r} has been deleted or renamed")
        if not self._loaded:
            self._load()

    def _dir(self, sub: str) -> str:
        return self._cur if sub == "cur" else self._new

    def _spell(self, flag: str) -> str:
        """A keyword as first spelt in this mailbox (keywords are case-insensitive)."""
        if flag in SYSTEM_FLAGS:
            return flag
        assert self._keywords is not None
        letter = self._keywords.letter(flag)
        if letter is None:
            return flag
        spelt = self._keywords.names[ord(letter) - ord("a")]
        return spelt if spelt is not None else flag

    def _info(self, entry: IndexEntry) -> MessageInfo:
        info = entry.info
        if info is None:
            info = entry.info = MessageInfo(
                uid=entry.uid,
                flags=entry.flags,
                internaldate=datetime.fromtimestamp(entry.mtime, UTC),
                size=entry.size,
                modseq=entry.modseq,
                path=(self._cur if entry.sub == "cur" else self._new) + os.sep + entry.filename,
            )
        return info

    def _snapshot(self) -> list[MessageInfo]:
        info = self._info
        return [entry.info or info(entry) for entry in self._entries.values()]

    def _load(self) -> None:
        if not os.path.isdir(self._cur):
            self._gone = True
            raise MailboxNotFound(f"mailbox {self.name!r} does not exist")
        for sub in ("new", "tmp"):  # a hand-made Maildir may lack them
            os.makedirs(self.path / sub, mode=0o700, exist_ok=True)
        self._keywords = keywords = Keywords(self.path, fsync=self.owner.fsync)
        index_path = self.path / INDEX_NAME
        data: IndexData | None = None
        try:
            data = load_index(index_path)
        except FileNotFoundError:
            pass
        except IndexCorrupt as exc:
            log.warning(
                "%s: index of %r is corrupt (%s): rebuilding with a new UIDVALIDITY",
                self.user,
                self.name,
                exc,
            )
        fresh = data is None
        if data is None:
            data = IndexData(uidvalidity=self.owner._new_uidvalidity(self.user))
            if os.path.exists(index_path):
                with contextlib.suppress(OSError):
                    os.replace(index_path, index_path.with_name(INDEX_NAME + ".corrupt"))
            self._dirty = True
        self._uidvalidity = data.uidvalidity
        # Above the reservations: after a crash, what may have been handed out is skipped.
        self._uidnext = max(data.uidnext, data.uid_reserved)
        self._highest = max(data.highest_modseq, data.modseq_reserved)
        self._saved_uid_reserved = data.uid_reserved
        self._saved_modseq_reserved = data.modseq_reserved
        self._recent_from = data.recent_from
        parse = keywords.parse_info
        entries = self._entries = {}
        by_unique = self._by_unique = {}
        for entry in data.entries:
            entry.flags, entry.unknown = parse(entry.filename.partition(":")[2])
            entries[entry.uid] = entry
            by_unique[entry.unique] = entry
        self._loaded = True
        self._last_save = time.monotonic()
        self._force_scan = True
        self._sync()  # nobody watches yet: the differences are not news to anyone
        if fresh:  # a new index: its UIDVALIDITY is durable before anyone sees it
            self._save(tight=False)
        self._commit()

    def _add(self, filename: str, size: int, mtime: int, flags: frozenset[str]) -> int:
        """Give a file in ``cur/`` the next UID (the caller commits)."""
        uid = self._uidnext
        self._uidnext += 1
        self._highest += 1
        entry = IndexEntry(uid, self._highest, size, mtime, "cur", filename, flags)
        self._entries[uid] = entry
        self._by_unique[entry.unique] = entry
        self._dirty = True
        return uid

    def _remove_entries(self, entries: Sequence[IndexEntry]) -> list[int]:
        if not entries:
            return []
        for entry in entries:
            self._entries.pop(entry.uid, None)
            if self._by_unique.get(entry.unique) is entry:
                del self._by_unique[entry.unique]
        self._highest += 1  # RFC 7162 §3.1: an expunge changes the mailbox's mod-sequence
        self._dirty = True
        return sorted(entry.uid for entry in entries)

    def _commit(self) -> None:
        """Write the index if a reservation ran out, or now and then when it is behind."""
        reservation_out = (
            self._uidnext > self._saved_uid_reserved or self._highest > self._saved_modseq_reserved
        )
        stale = self._dirty and time.monotonic() - self._last_save >= self.owner.flush_interval
        if reservation_out or stale:
            self._save(tight=False)

    def _save(self, *, tight: bool) -> None:
        reserve = 0 if tight else _RESERVE
        data = IndexData(
            uidvalidity=self._uidvalidity,
            uidnext=self._uidnext,
            uid_reserved=self._uidnext + reserve,
            highest_modseq=self._highest,
            modseq_reserved=self._highest + reserve,
            recent_from=self._recent_from,
            entries=list(self._entries.values()),
        )
        save_index(self.path / INDEX_NAME, data, fsync=self.owner.fsync)
        self._saved_uid_reserved = data.uid_reserved
        self._saved_modseq_reserved = data.modseq_reserved
        self._dirty = False
        self._last_save = time.monotonic()

    def _publish(
        self, delta: _Delta, *, origin: Watch | None = None, quiet: Watch | None = None
    ) -> list[Callback]:
        """Queue a delta for the watches; returns the callbacks to call after unlocking."""
        if not (delta.added or delta.expunged or delta.flags):
            return []
        wake: list[Callback] = []
        for watch in self._watches:
            if watch is origin:
                watch._queue(delta.added, (), ())
                watch._forget_unseen(delta.expunged)
                if not delta.added:
                    continue
            else:
                watch._queue(delta.added, delta.expunged, delta.flags)
            if watch is not quiet and watch.callback is not None:
                wake.append(watch.callback)
        return wake

    def _wake_all(self) -> None:
        _fire(w.callback for w in self._watches if w.callback is not None)

    def _mark_gone(self) -> list[Callback]:
        """Flush and retire this object (the directory is about to be renamed or deleted)."""
        with self._lock:
            if self._loaded and not self._gone and self._dirty:
                with contextlib.suppress(OSError):
                    self._save(tight=True)
            self._gone = True
            return [w.callback for w in self._watches if w.callback is not None]

    def _fsync_dir(self, directory: str | Path) -> None:
        if self.owner.fsync:
            fsync_directory(Path(directory))

    # -- internals: scanning ------------------------------------------------------------

    def _dirs_unchanged(self) -> bool:
        for sub, directory in (("cur", self._cur), ("new", self._new)):
            stamp = self._stamps.get(sub)
            if stamp is None:
                return False
            try:
                mtime = os.stat(directory).st_mtime_ns
            except FileNotFoundError:
                return False
            if mtime != stamp[0] or stamp[1] - mtime < _SETTLE_NS:
                return False
        return True

    def _list_changes(self, changed: set[str]) -> None:
        """List ``new/`` and ``cur/``, and apply what differs from the last listing.

        Only the names that appeared or disappeared since then are looked at (set
        differences of the two listings, in C), so a rescan of a large mailbox
        after one delivery costs two ``listdir`` calls, not a pass over every
        message. The uniques whose files changed are added to ``changed``; sets
        the stamps.
        """
        stamps: dict[str, tuple[int, int]] = {}
        files = self._files
        # new/ first: a file another reader moves to cur/ meanwhile is then seen
        # at least once; in both, cur/ wins (_current_place).
        for sub, directory in (("new", self._new), ("cur", self._cur)):
            listed_at = time.time_ns()
            before = self._raw[sub]
            regular: set[str] | None = None
            try:
                mtime = os.stat(directory).st_mtime_ns  # before listing: later changes show
                if before:
                    names = set(os.listdir(directory))
                else:  # the first listing: file types from the entries, no stat per file
                    with os.scandir(directory) as it:
                        entries = list(it)
                    names = {entry.name for entry in entries}
                    regular = {e.name for e in entries if e.is_file(follow_symlinks=False)}
            except FileNotFoundError:
                if sub == "cur" or not os.path.isdir(self.path):
                    self._gone = True
                    raise MailboxNotFound(f"mailbox {self.name!r} has been deleted") from None
                names = set()  # new/ missing: nothing delivered
            else:
                stamps[sub] = (mtime, listed_at)
            for name in before - names:
                unique = name.partition(":")[0]
                places = files.get(unique)
                if places is not None and (sub, name) in places:
                    places.remove((sub, name))
                    changed.add(unique)
                    if not places:
                        del files[unique]
            for name in names - before:
                if name[0] == "." or "\n" in name:
                    continue
                if regular is not None:
                    is_file = name in regular
                else:
                    try:
                        is_file = stat.S_ISREG(os.lstat(os.path.join(directory, name)).st_mode)
                    except FileNotFoundError:
                        continue  # gone since the listing
                if is_file:  # not directories, not symbolic links
                    unique = name.partition(":")[0]
                    places = files.setdefault(unique, [])
                    if (sub, name) not in places:  # new to this listing: not there yet
                        places.append((sub, name))
                    changed.add(unique)
            self._raw[sub] = names
        self._stamps = stamps

    def _sync(self) -> _Delta:
        """Reconcile the state with the directories; the caller publishes and commits."""
        delta = _Delta()
        if not self._force_scan and self._dirs_unchanged():
            return delta
        self._force_scan = False  # a notify during the listing sets it again
        # the first listing has no earlier one to differ from: every indexed message
        # is checked against it (one that vanished while the mailbox was closed)
        changed: set[str] = set() if self._listed else set(self._by_unique)
        by_unique = self._by_unique
        files = self._files
        self._list_changes(changed)
        self._listed = True
        missing = {u for u in changed if u not in files and u in by_unique}
        if missing:
            # readdir(3) may miss a file renamed while it lists (another program
            # changing flags): list again before calling anything expunged.
            self._list_changes(changed)
        assert self._keywords is not None
        parse = self._keywords.parse_info
        modseq = self._highest + 1
        vanished: list[IndexEntry] = []
        fresh: list[tuple[tuple[int, int, int, str], str, str]] = []
        for unique in changed:
            entry = by_unique.get(unique)
            places = files.get(unique)
            if not places:
                if entry is not None:
                    if unique in missing:  # absent from both listings
                        vanished.append(entry)
                    else:  # seen in the first listing only: look again next time
                        self._force_scan = True
                continue
            sub, name = _current_place(places)
            if entry is None:
                fresh.append((delivery_order(unique), sub, name))
                continue
            if sub == "new":
                moved = self._to_cur(name)
                if moved is not None:
                    sub, name = "cur", moved
            if entry.filename != name or entry.sub != sub:
                flags, unknown = parse(name.partition(":")[2])
                if flags != entry.flags:
                    entry.flags, entry.modseq = flags, modseq
                    delta.flags.append(entry.uid)
                entry.sub, entry.filename, entry.unknown, entry.info = sub, name, unknown, None
        delta.expunged = self._remove_entries(vanished)
        if delta.flags:
            delta.flags.sort()
            self._highest = max(self._highest, modseq)
            self._dirty = True
        fresh.sort(key=lambda item: item[0])
        for _, sub, name in fresh:
            try:
                st = os.lstat(os.path.join(self._new if sub == "new" else self._cur, name))
            except FileNotFoundError:
                continue  # deleted since the listing
            if sub == "new":
                moved = self._to_cur(name)
                if moved is None:
                    continue
                name = moved
            flags, unknown = parse(name.partition(":")[2])
            size = _rfc822_size(os.path.join(self._cur, name), name, st.st_size)
            uid = self._add(name, size, int(st.st_mtime), flags)
            self._entries[uid].unknown = unknown
            delta.added.append(uid)
        return delta

    def _to_cur(self, name: str) -> str | None:
        """Move ``new/<name>`` to ``cur/`` (maildir(5): a reader that has seen it does).

        Returns the name in ``cur/``, or ``None`` if the file vanished.
        """
        unique, _, info = name.partition(":")
        target = unique + ":" + (info if info.startswith("2,") else "2,")
        try:
            os.rename(os.path.join(self._new, name), os.path.join(self._cur, target))
        except FileNotFoundError:
            return None
        # what the next listing will show: not news then
        self._raw["new"].discard(name)
        self._raw["cur"].add(target)
        places = self._files.setdefault(unique, [])
        if ("new", name) in places:
            places.remove(("new", name))
        if ("cur", target) not in places:
            places.append(("cur", target))
        return target

    # -- internals: copy and move ------------------------------------------------------

    @contextlib.contextmanager
    def _both_locked(self, other: Mailbox) -> Iterator[None]:
        if other is self:
            with self._lock:
                yield
            return
        first, second = sorted((self, other), key=lambda m: (m.user, m.name))
        with first._lock, second._lock:  # one global order: no deadlock
            yield

    def _transfer(
        self, uids: Iterable[int], dest: Mailbox, origin: Watch | None, *, move: bool
    ) -> list[tuple[int, int]]:
        mapping: list[tuple[int, int]] = []
        with self._both_locked(dest):
            self._check()
            dest._check()
            wake = dest._publish(dest._sync())  # waiting files first: they get the lower UIDs
            dest_delta = _Delta()
            wanted = set(uids)
            sources = [e for uid, e in self._entries.items() if uid in wanted]
            dest_keywords = dest._keywords
            assert dest_keywords is not None
            dest_keywords.ensure(f for e in sources for f in e.flags if f not in SYSTEM_FLAGS)
            placed: list[tuple[IndexEntry, str, frozenset[str]]] = []
            removed_dirs: set[str] = set()
            try:
                for entry in sources:
                    flags = frozenset(dest._spell(f) for f in entry.flags)
                    unique = self.owner._unique_name(entry.size)
                    filename = unique + ":" + dest_keywords.info_for(flags)
                    source = os.path.join(self._dir(entry.sub), entry.filename)
                    target = os.path.join(dest._cur, filename)
                    if not self._place(source, target, entry, move=move):
                        self._force_scan = True
                        continue
                    if move:
                        removed_dirs.add(self._dir(entry.sub))
                    placed.append((entry, filename, flags))
            finally:
                if placed:
                    dest._fsync_dir(dest._cur)
                for directory in removed_dirs:
                    self._fsync_dir(directory)
                for entry, filename, flags in placed:
                    new_uid = dest._add(filename, entry.size, entry.mtime, flags)
                    mapping.append((entry.uid, new_uid))
                    dest_delta.added.append(new_uid)
                source_delta = _Delta()
                if move:
                    source_delta.expunged = self._remove_entries([e for e, _, _ in placed])
                wake += dest._publish(dest_delta, origin=origin)
                if dest is not self:
                    wake += self._publish(source_delta, origin=origin)
                    self._commit()
                dest._commit()
        _fire(wake)
        return mapping

    def _place(self, source: str, target: str, entry: IndexEntry, *, move: bool) -> bool:
        """Link (copy) or rename (move) one file into the target; False if it vanished."""
        try:
            if move:
                os.rename(source, target)
            else:
                os.link(source, target)
            return True
        except FileNotFoundError:
            return False
        except OSError as exc:
            if exc.errno not in _NO_LINK:
                raise
        # Another file system (or no hard links): copy the bytes durably.
        try:
            with open(source, "rb") as file:
                data = file.read()
        except FileNotFoundError:
            return False
        _, tmp = self.owner._write_tmp(Path(target).parent.parent / "tmp", data, entry.mtime)
        try:
            os.rename(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        if move:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(source)
        return True


# -- the store ------------------------------------------------------------------------------

_stores: weakref.WeakSet[ImapStore] = weakref.WeakSet()


_VIRTUAL_SIZE = re.compile(r",W=(\d+)")


def _rfc822_size(path: str, name: str, size: int) -> int:
    """RFC822.SIZE of a file found on disk: its octets with CRLF line ends (RFC 9051 §2.3.4).

    Files from other programs (procmail, Dovecot) may use bare LF, which IMAP
    serves as CRLF; Dovecot's ``,W=`` in the name gives it, else the file is
    read once (the index keeps the result).
    """
    m = _VIRTUAL_SIZE.search(name.partition(":")[0])
    if m is not None:
        return int(m[1])
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return size
    return crlf_length(data)


def notify_delivery(user: str) -> None:
    """Tell every live :class:`ImapStore` that a message was delivered to ``user``'s INBOX.

    Cheap and non-blocking (no disk I/O, no waiting on mailbox locks): safe to
    call on the event loop right after ``MaildirStore.deliver`` returns. Marks
    INBOX for a rescan and calls its watchers' callbacks; they then call
    ``refresh(watch)``, which finds the new file.
    """
    for store in list(_stores):
        store.notify_delivery(user)


class ImapStore:
    """The IMAP view of the Maildirs under ``root`` (``root/<user>/``, as :class:`MaildirStore`).

    Args:
        root: the directory holding one Maildir per user.
        fsync: whether to fsync at all (``False`` only for throwaway test servers).
        hostname: the host part of new file names; ``socket.gethostname()`` by default.
        clock: seconds since the epoch (UIDVALIDITY, file names, APPEND's default date).
        flush_interval: seconds after which an index that is behind is written
            at the next operation (it is always written before reservations run out).
        special_use: create the special-use mailboxes for new users.
    """

    def __init__(
        self,
        root: Path,
        *,
        fsync: bool = True,
        hostname: str | None = None,
        clock: Callable[[], float] = time.time,
        flush_interval: float = 5.0,
        special_use: bool = True,
    ) -> None:
        self.root = Path(root)
        self.fsync = fsync
        self.hostname = sanitize_hostname(socket.gethostname() if hostname is None else hostname)
        self.clock = clock
        self.flush_interval = flush_interval
        self.special_use = special_use
        self._lock = threading.Lock()  # the caches below
        self._uidvalidity_lock = threading.Lock()  # a leaf: taken while holding others
        self._user_locks: dict[str, threading.RLock] = {}
        self._ready: set[str] = set()
        self._mailboxes: dict[tuple[str, str], Mailbox] = {}
        self._counter = itertools.count(1)
        _stores.add(self)

    # -- users ---------------------------------------------------------------------------

    def user_root(self, user: str) -> Path:
        """The Maildir of ``user`` (INBOX), checked like ``MaildirStore.mailbox_path``.

        Raises:
            ValueError: the user name is not a safe directory name.
        """
        if (
            not user
            or "/" in user
            or "\x00" in user
            or ".." in user
            or user.startswith(".")
            or len(os.fsencode(user)) > 255
        ):
            raise ValueError(f"user name {user!r} is not a safe directory name")
        return self.root / user

    def _user_lock(self, user: str) -> threading.RLock:
        with self._lock:
            lock = self._user_locks.get(user)
            if lock is None:
                lock = self._user_locks[user] = threading.RLock()
            return lock

    def ensure_user(self, user: str) -> Path:
        """Create the user's INBOX and (once ever) the special-use mailboxes; returns INBOX's path.

        Raises:
            ValueError: unsafe user name.
            OSError: the directories cannot be created.
        """
        root = self.user_root(user)
        if user in self._ready:
            return root
        with self._user_lock(user):
            if user in self._ready:
                return root
            created = not root.is_dir()
            for sub in _MAILDIR_SUBDIRS:
                os.makedirs(root / sub, mode=0o700, exist_ok=True)
            if created and self.fsync:
                fsync_directory(root)
                fsync_directory(self.root)
            for leftover in root.glob(_TEMP_PREFIX + "*"):  # an interrupted create/delete
                shutil.rmtree(leftover, ignore_errors=True)
            if self.special_use and not (root / SETUP_NAME).exists():
                existing = self._scan_dirs(root)
                subscribed = self._read_subscriptions(root)
                for name in CREATED_SPECIAL_USE:
                    if name not in existing:
                        self._make_mailbox(root, name)
                    subscribed.setdefault(name, None)
                subscribed.setdefault(INBOX, None)
                self._write_subscriptions(root, subscribed)
                marker = b"special-use mailboxes created\n"
                write_atomically(root / SETUP_NAME, marker, fsync=self.fsync)
            with self._lock:
                self._ready.add(user)
        return root

    # -- mailboxes -----------------------------------------------------------------------

    def open(self, user: str, name: str) -> Mailbox:
        """The shared :class:`Mailbox` for ``name`` (the same object for every caller).

        Cheap: the mailbox loads on its first use.

        Raises:
            InvalidMailboxName: the name is refused.
            MailboxNotFound: no such mailbox.
            MailboxNotSelectable: the name is ``\\Noselect``.
        """
        name = canonical_name(name)
        root = self.ensure_user(user)
        key = (user, name)
        with self._lock:
            mailbox = self._mailboxes.get(key)
            if mailbox is not None and not mailbox._gone:
                return mailbox
        path = mailbox_path(root, name)
        if not (path / "cur").is_dir():
            if path.is_dir() or self._has_inferiors(root, name):
                raise MailboxNotSelectable(
                    f"mailbox {name!r} is \\Noselect (it has only inferiors)"
                )
            raise MailboxNotFound(f"mailbox {name!r} does not exist")
        with self._lock:
            mailbox = self._mailboxes.get(key)
            if mailbox is None or mailbox._gone:
                mailbox = self._mailboxes[key] = Mailbox(self, user, name, path)
            return mailbox

    def list_mailboxes(self, user: str) -> list[MailboxInfo]:
        """Every mailbox of the user, plus implied superiors and subscribed names (LIST/LSUB).

        Sorted with INBOX first and superiors before their inferiors.
        """
        root = self.ensure_user(user)
        existing = self._scan_dirs(root)
        existing[INBOX] = True
        subscribed = self._read_subscriptions(root)
        names = set(existing)
        has_children: set[str] = set()
        for name in list(existing):
            for parent in parent_names(name):
                has_children.add(parent)
                names.add(parent)
        names.update(subscribed)
        out: list[MailboxInfo] = []
        for name in sorted(names, key=lambda n: (n != INBOX, n.split(DELIMITER))):
            attributes: set[str] = set()
            if name in existing or name in has_children:
                if not existing.get(name, False):
                    attributes.add("\\Noselect")
                attributes.add("\\HasChildren" if name in has_children else "\\HasNoChildren")
            else:
                attributes.update(("\\NonExistent", "\\Noselect"))
            special = SPECIAL_USE.get(name)
            if special is not None and existing.get(name, False):
                attributes.add(special)
            out.append(MailboxInfo(name, DELIMITER, frozenset(attributes), name in subscribed))
        return out

    def create(self, user: str, name: str) -> str:
        """Create a mailbox and any missing superiors (CREATE, RFC 3501 §6.3.3).

        Args:
            user: the owner.
            name: the name; one trailing ``/`` is allowed and dropped.

        Returns:
            The canonical name created.

        Raises:
            InvalidMailboxName: the name is refused.
            MailboxExists: it exists (INBOX always does).
        """
        name = canonical_name(name, allow_trailing_delimiter=True)
        root = self.ensure_user(user)
        with self._user_lock(user):
            # a stat per name that matters, not a listing of every folder

            def selectable(folder: str) -> bool:
                path = mailbox_path(root, folder)
                return _is_real_dir(path) and os.path.isdir(os.path.join(path, "cur"))

            if name == INBOX or selectable(name):
                raise MailboxExists(f"mailbox {name!r} already exists")
            for parent in parent_names(name):
                if parent != INBOX and not selectable(parent):
                    self._make_mailbox(root, parent)
            self._make_mailbox(root, name)
        return name

    def delete(self, user: str, name: str) -> None:
        """Delete a mailbox (DELETE, RFC 3501 §6.3.4).

        A mailbox with inferiors loses its messages and becomes ``\\Noselect``.

        Raises:
            InvalidMailboxName: the name is refused.
            OperationRefused: INBOX, or a ``\\Noselect`` name with inferiors.
            MailboxNotFound: no such mailbox.
        """
        name = canonical_name(name)
        if name == INBOX:
            raise OperationRefused("INBOX cannot be deleted (RFC 3501 §6.3.4)")
        root = self.ensure_user(user)
        with self._user_lock(user):
            existing = self._scan_dirs(root)
            inferiors = any(is_inferior(n, name) for n in existing)
            if name not in existing:
                if inferiors:
                    raise OperationRefused(
                        f"{name!r} is \\Noselect and has inferiors: delete those first "
                        "(RFC 3501 §6.3.4)"
                    )
                raise MailboxNotFound(f"mailbox {name!r} does not exist")
            if inferiors and not existing[name]:
                raise OperationRefused(
                    f"{name!r} is \\Noselect and has inferiors: delete those first "
                    "(RFC 3501 §6.3.4)"
                )
            wake = self._retire(user, [name])
            path = mailbox_path(root, name)
            trash = root / f"{_TEMP_PREFIX}{secrets.token_hex(8)}"
            if inferiors:  # keep the directory, as \Noselect: the messages go
                trash.mkdir(mode=0o700)
                for item in (*_MAILDIR_SUBDIRS, INDEX_NAME, KEYWORDS_NAME, _FOLDER_MARKER):
                    with contextlib.suppress(FileNotFoundError):
                        os.rename(path / item, trash / item)  # cur/ first: \Noselect at once
                if self.fsync:
                    fsync_directory(path)
            else:
                os.rename(path, trash)
            if self.fsync:
                fsync_directory(root)
            shutil.rmtree(trash, ignore_errors=True)
        _fire(wake)

    def rename(self, user: str, old: str, new: str) -> None:
        """Rename a mailbox and its inferiors (RENAME, RFC 3501 §6.3.5).

        Renaming INBOX moves its messages into a new mailbox and leaves INBOX
        empty, with its inferiors where they are.

        Raises:
            InvalidMailboxName: a name (or a renamed inferior's) is refused.
            MailboxNotFound: ``old`` does not exist.
            MailboxExists: ``new`` exists or has inferiors.
            OperationRefused: ``new`` is below ``old``.
        """
        old = canonical_name(old)
        new = canonical_name(new)
        root = self.ensure_user(user)
        with self._user_lock(user):
            existing = self._scan_dirs(root)
            if new == INBOX or new in existing or any(is_inferior(n, new) for n in existing):
                raise MailboxExists(f"mailbox {new!r} already exists")
            if old == INBOX:
                self._rename_inbox(user, root, new, existing)
                return
            if is_inferior(new, old):
                raise OperationRefused(f"cannot rename {old!r} to a name below itself")
            moving = sorted(n for n in existing if n == old or is_inferior(n, old))
            if not moving:
                raise MailboxNotFound(f"mailbox {old!r} does not exist")
            targets = {n: canonical_name(new + n[len(old) :]) for n in moving}
            for parent in parent_names(new):
                if parent != INBOX and not existing.get(parent, False):
                    self._make_mailbox(root, parent)
            wake = self._retire(user, moving)
            for source, target in targets.items():
                os.rename(root / mailbox_dirname(source), root / mailbox_dirname(target))
            if self.fsync:
                fsync_directory(root)
            subscribed = self._read_subscriptions(root)
            if any(n == old or is_inferior(n, old) for n in subscribed):
                renamed = {
                    (new + n[len(old) :] if n == old or is_inferior(n, old) else n): None
                    for n in subscribed
                }
                self._write_subscriptions(root, renamed)
        _fire(wake)

    def _rename_inbox(self, user: str, root: Path, new: str, existing: dict[str, bool]) -> None:
        for parent in parent_names(new):
            if parent != INBOX and not existing.get(parent, False):
                self._make_mailbox(root, parent)
        target = self._make_mailbox(root, new)
        inbox = self.open(user, INBOX)
        with inbox._lock:
            inbox._check()
            wake = inbox._publish(inbox._sync())
            with contextlib.suppress(FileNotFoundError):
                keywords = (root / KEYWORDS_NAME).read_bytes()
                write_atomically(target / KEYWORDS_NAME, keywords, fsync=self.fsync)
            moved: list[IndexEntry] = []
            try:
                for entry in list(inbox._entries.values()):
                    with contextlib.suppress(FileNotFoundError):
                        os.rename(
                            os.path.join(inbox._dir(entry.sub), entry.filename),
                            target / "cur" / entry.filename,
                        )
                        moved.append(entry)
            finally:
                inbox._fsync_dir(target / "cur")
                inbox._fsync_dir(inbox._cur)
                delta = _Delta()
                delta.expunged = inbox._remove_entries(moved)
                inbox._force_scan = True
                wake += inbox._publish(delta)
                inbox._commit()
        _fire(wake)

    def subscribe(self, user: str, name: str) -> None:
        """Add a name to the subscriptions (SUBSCRIBE; the mailbox need not exist)."""
        name = canonical_name(name)
        root = self.ensure_user(user)
        with self._user_lock(user):
            subscribed = self._read_subscriptions(root)
            if name not in subscribed:
                subscribed[name] = None
                self._write_subscriptions(root, subscribed)

    def unsubscribe(self, user: str, name: str) -> bool:
        """Remove a name from the subscriptions; returns whether it was there (UNSUBSCRIBE)."""
        name = canonical_name(name)
        root = self.ensure_user(user)
        with self._user_lock(user):
            subscribed = self._read_subscriptions(root)
            if name not in subscribed:
                return False
            del subscribed[name]
            self._write_subscriptions(root, subscribed)
            return True

    def subscriptions(self, user: str) -> list[str]:
        """The subscribed names, in the order they were added."""
        return list(self._read_subscriptions(self.ensure_user(user)))

    def notify_delivery(self, user: str) -> None:
        """A message was delivered to ``user``'s INBOX: rescan it next time, wake its watchers.

        Non-blocking (safe on the event loop); see :func:`notify_delivery`.
        """
        mailbox = self._mailboxes.get((user, INBOX))  # a dict read is atomic
        if mailbox is None or mailbox._gone:
            return
        mailbox._force_scan = True
        mailbox._wake_all()

    def flush(self) -> None:
        """Write every index that is behind (shutdown)."""
        with self._lock:
            mailboxes = list(self._mailboxes.values())
        for mailbox in mailboxes:
            try:
                mailbox.flush()
            except OSError as exc:
                log.error("%s: cannot write the index of %r: %s", mailbox.user, mailbox.name, exc)

    def close(self) -> None:
        """Flush and forget every mailbox (its objects become unusable)."""
        self.flush()
        with self._lock:
            mailboxes = list(self._mailboxes.values())
            self._mailboxes.clear()
        for mailbox in mailboxes:
            _fire(mailbox._mark_gone())
        _stores.discard(self)

    # -- internals ----------------------------------------------------------------------

    def _retire(self, user: str, names: Iterable[str]) -> list[Callback]:
        wake: list[Callback] = []
        for name in names:
            with self._lock:
                mailbox = self._mailboxes.pop((user, name), None)
            if mailbox is not None:
                wake += mailbox._mark_gone()
        return wake

    def _scan_dirs(self, root: Path) -> dict[str, bool]:
        """``{canonical name: selectable}`` for every Maildir++ folder of a user."""
        return {
            name: os.path.isdir(os.path.join(path, "cur")) for name, path in self._folders(root)
        }

    def _has_inferiors(self, root: Path, name: str) -> bool:
        """Whether a folder below ``name`` (canonical, not INBOX) exists, selectable or not.

        The directory names of ``name``'s inferiors, and only theirs, start with its
        own followed by the level separator: a prefix test per entry, no decoding.
        """
        prefix = mailbox_dirname(name) + "."
        try:
            candidates = [n for n in os.listdir(root) if n.startswith(prefix)]
        except FileNotFoundError:
            return False
        return any(
            _folder_name(n) is not None and _is_real_dir(os.path.join(root, n)) for n in candidates
        )

    def _folders(self, root: Path) -> Iterator[tuple[str, str]]:
        """``(canonical name, path)`` of every Maildir++ folder of a user, selectable or not."""
        try:
            with os.scandir(root) as it:
                for entry in it:
                    if entry.name[:1] != "." or not entry.is_dir(follow_symlinks=False):
                        continue
                    name = _folder_name(entry.name)
                    if name is not None:
                        yield name, entry.path
        except FileNotFoundError:
            pass

    def _make_mailbox(self, root: Path, name: str) -> Path:
        """Create one folder atomically (built aside, then renamed into place)."""
        path = mailbox_path(root, name)
        if path.is_dir():  # \Noselect: make it selectable in place
            for sub in _MAILDIR_SUBDIRS:
                os.makedirs(path / sub, mode=0o700, exist_ok=True)
            (path / _FOLDER_MARKER).touch(mode=0o600)
            if self.fsync:
                fsync_directory(path)
            return path
        building = root / f"{_TEMP_PREFIX}{secrets.token_hex(8)}"
        try:
            building.mkdir(mode=0o700)
            for sub in _MAILDIR_SUBDIRS:
                (building / sub).mkdir(mode=0o700)
            (building / _FOLDER_MARKER).touch(mode=0o600)
            if self.fsync:
                fsync_directory(building)
            try:
                os.rename(building, path)
            except OSError as exc:
                if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    raise MailboxExists(f"mailbox {name!r} already exists") from None
                raise
        finally:
            shutil.rmtree(building, ignore_errors=True)
        if self.fsync:
            fsync_directory(root)
        return path

    def _read_subscriptions(self, root: Path) -> dict[str, None]:
        try:
            text = (root / SUBSCRIPTIONS_NAME).read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except UnicodeDecodeError:
            log.warning("%s: subscriptions file is not UTF-8; ignoring it", root.name)
            return {}
        out: dict[str, None] = {}
        for line in text.splitlines():
            with contextlib.suppress(InvalidMailboxName):
                out[canonical_name(line)] = None
        return out

    def _write_subscriptions(self, root: Path, names: dict[str, None]) -> None:
        text = "".join(name + "\n" for name in names)
        write_atomically(root / SUBSCRIPTIONS_NAME, text.encode("utf-8"), fsync=self.fsync)

    def _new_uidvalidity(self, user: str) -> int:
        """A UIDVALIDITY above every one given out to the user so far (RFC 3501 §2.3.1.1)."""
        path = self.user_root(user) / UIDVALIDITY_NAME
        with self._uidvalidity_lock:
            last = 0
            with contextlib.suppress(FileNotFoundError, ValueError):
                last = int(path.read_text(encoding="ascii").strip())
            value = max(int(self.clock()), last + 1) % (1 << 32) or 1
            write_atomically(path, f"{value}\n".encode("ascii"), fsync=self.fsync)
            return value

    def _unique_name(self, size: int) -> str:
        # maildir(5) / Dovecot, as MaildirStore: <seconds>.M<usec>P<pid>Q<n>.<host>,S=<size>
        now = self.clock()
        seconds = int(now)
        micros = int((now - seconds) * 1_000_000)
        count = next(self._counter)
        return f"{seconds}.M{micros}P{os.getpid()}Q{count}.{self.hostname},S={size}"

    def _write_tmp(self, tmp_dir: Path, data: bytes, mtime: float) -> tuple[str, str]:
        """Write ``data`` to a new file in ``tmp/`` with the mtime given, fsynced.

        Returns ``(unique name, path)``. ``O_EXCL`` makes a name clash with a
        concurrent delivery fail here, and a fresh name is tried.
        """
        for _ in range(100):
            unique = self._unique_name(len(data))
            path = os.path.join(tmp_dir, unique)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            except FileExistsError:
                continue
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.utime(fd, (mtime, mtime))
                if self.fsync:
                    os.fsync(fd)
            except BaseException:
                os.close(fd)
                with contextlib.suppress(OSError):
                    os.unlink(path)
                raise
            os.close(fd)
            return unique, path
        raise OSError(errno.EEXIST, f"no free file name in {tmp_dir}")
