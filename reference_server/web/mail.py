"""The mailboxes as the web pages and the JSON API see them: the IMAP store, scoped to one user.

Theory of operation: everything goes through the same
:class:`~reference_server.storage.imapstore.ImapStore` the IMAP sessions
use, so the two share one state. A flag change here is
:meth:`Mailbox.store` (what IMAP ``STORE`` calls), which queues the change
for every IMAP session watching the mailbox and wakes those in IDLE; a
delete is :meth:`Mailbox.move` into Trash (what IMAP ``MOVE`` calls). A
listing first calls :meth:`Mailbox.refresh`, which picks up what SMTP
delivered since (and tells the IMAP sessions too).

Every method takes the logged-in user's name and opens mailboxes under that
user only; a mailbox name cannot leave the user's directory
(:func:`~reference_server.storage.mailbox_names.canonical_name`). A message
is named by mailbox, UIDVALIDITY and UID (:class:`MessageRef`); a UIDVALIDITY
that is not the mailbox's current one, an unknown UID, an unknown or invalid
mailbox name are all the same :class:`NotFound`, so nothing tells whether
something exists elsewhere.

All methods block on disk I/O: call them through ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import email.utils
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.message import Message
from email.parser import BytesHeaderParser
from typing import Any, Final
from urllib.parse import quote

from ..storage.imapstore import (
    ImapStore,
    InvalidFlag,
    InvalidMailboxName,
    Mailbox,
    MailboxExists,
    MailboxNotFound,
    MailboxNotSelectable,
    MessageExpunged,
    MessageInfo,
    TooManyKeywords,
)

__all__ = [
    "MAX_PAGE_SIZE",
    "PAGE_SIZE",
    "TRASH",
    "BadFlags",
    "DeleteResult",
    "MailAccess",
    "MailboxView",
    "MessageRef",
    "NotFound",
    "Page",
    "Summary",
    "flags_from",
    "header_text",
    "message_date",
]

PAGE_SIZE: Final = 50  # messages per page by default
MAX_PAGE_SIZE: Final = 200
TRASH: Final = "Trash"  # RFC 6154 \Trash: the store gives the top-level "Trash" that attribute
SENT: Final = "Sent"
_HEADER_LIMIT: Final = 256 * 1024  # octets read to find the end of a header section
_CACHE_LIMIT: Final = 50_000


class NotFound(Exception):
    """No such mailbox or message for this user (answered 404, whatever the reason)."""


class BadFlags(Exception):
    """A flag the store refuses (``\\Recent``, an unknown system flag, too many keywords)."""


@dataclass(frozen=True, slots=True)
class MessageRef:
    """A message's id in URLs: mailbox name, its UIDVALIDITY, and the UID."""

    mailbox: str
    uidvalidity: int
    uid: int

    @property
    def path(self) -> str:
        """``<mailbox>/<uidvalidity>/<uid>`` with the name percent-encoded (``/`` too)."""
        return f"{quote(self.mailbox, safe='')}/{self.uidvalidity}/{self.uid}"

    def to_json(self) -> dict[str, Any]:
        return {"mailbox": self.mailbox, "uidvalidity": self.uidvalidity, "uid": self.uid}


@dataclass(frozen=True, slots=True)
class MailboxView:
    """One selectable mailbox with its counts (STATUS)."""

    name: str
    special_use: str | None
    messages: int
    unseen: int
    uidvalidity: int
    uidnext: int

    @property
    def path(self) -> str:
        return quote(self.name, safe="")

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "special_use": self.special_use,
            "messages": self.messages,
            "unseen": self.unseen,
            "uidvalidity": self.uidvalidity,
            "uidnext": self.uidnext,
        }


@dataclass(frozen=True, slots=True)
class Summary:
    """One line of a message list."""

    ref: MessageRef
    flags: tuple[str, ...]
    size: int
    internaldate: datetime
    sender: str
    subject: str
    date: datetime | None

    @property
    def seen(self) -> bool:
        return "\\Seen" in self.flags

    @property
    def flagged(self) -> bool:
        return "\\Flagged" in self.flags

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.ref.to_json(),
            "flags": list(self.flags),
            "size": self.size,
            "internaldate": _iso(self.internaldate),
            "from": self.sender,
            "subject": self.subject,
            "date": _iso(self.date) if self.date is not None else None,
        }


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a mailbox's messages, newest first (page 1 is the newest)."""

    mailbox: MailboxView
    messages: list[Summary]
    page: int
    pages: int
    per_page: int
    total: int

    def to_json(self) -> dict[str, Any]:
        return {
            "mailbox": self.mailbox.to_json(),
            "page": self.page,
            "pages": self.pages,
            "per_page": self.per_page,
            "total": self.total,
            "messages": [m.to_json() for m in self.messages],
        }


@dataclass(frozen=True, slots=True)
class DeleteResult:
    """Where a deleted message went: moved to Trash (with its new id), or expunged."""

    moved_to: MessageRef | None
    expunged: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "expunged": self.expunged,
            "moved_to": self.moved_to.to_json() if self.moved_to is not None else None,
        }


def _iso(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


def header_text(msg: Message, name: str) -> str:
    """A header field's decoded value (RFC 2047 words decoded), or ``""``.

    The email package may raise on a malformed field; then the raw value is
    shown instead, unfolded.
    """
    try:
        value = msg.get(name)
        return "" if value is None else str(value)
    except Exception:  # the email package's parsers raise assorted errors on bad input
        for key, raw in msg.raw_items():
            if key.lower() == name.lower():
                return " ".join(str(raw).split())
        return ""


def message_date(msg: Message) -> datetime | None:
    """The ``Date:`` field as an aware datetime in UTC, or None if absent or unreadable."""
    raw = header_text(msg, "Date")
    if not raw:
        return None
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000": the time is UTC, the zone unknown (RFC 5322 §3.3)
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC)


class _HeaderCache:
    """Maildir unique name -> (sender, subject, date): a message's bytes never change."""

    def __init__(self, limit: int = _CACHE_LIMIT) -> None:
        self.limit = limit
        self._items: dict[str, tuple[str, str, datetime | None]] = {}
        self._lock = threading.Lock()

    def get(self, unique: str) -> tuple[str, str, datetime | None] | None:
        return self._items.get(unique)

    def put(self, unique: str, value: tuple[str, str, datetime | None]) -> None:
        with self._lock:
            if len(self._items) >= self.limit:
                self._items.clear()
            self._items[unique] = value


def _read_head(mailbox: Mailbox, info: MessageInfo) -> bytes:
    """The header section of a message (up to the empty line), read from its file."""
    try:
        with open(info.path, "rb") as file:
            data = b""
            while len(data) < _HEADER_LIMIT:
                chunk = file.read(16384)
                if not chunk:
                    break
                data += chunk
                end = data.find(b"\r\n\r\n")
                if end >= 0:
                    return data[: end + 4]
            return data
    except FileNotFoundError:  # renamed meanwhile (a flag change): read() looks it up again
        data = mailbox.read(info.uid)
        end = data.find(b"\r\n\r\n")
        return data if end < 0 else data[: end + 4]


class MailAccess:
    """The web's view of the IMAP store (see the module doc); every call is per user."""

    def __init__(self, store: ImapStore) -> None:
        self.store = store
        self._headers = _HeaderCache()

    # -- mailboxes -----------------------------------------------------------------------

    def _mailbox(self, user: str, name: str) -> Mailbox:
        try:
            return self.store.open(user, name)
        except (InvalidMailboxName, MailboxNotFound, MailboxNotSelectable):
            raise NotFound(f"no mailbox {name!r}") from None

    def mailboxes(self, user: str) -> list[MailboxView]:
        """The user's selectable mailboxes, INBOX first, with message counts."""
        out: list[MailboxView] = []
        for info in self.store.list_mailboxes(user):
            if "\\Noselect" in info.attributes or "\\NonExistent" in info.attributes:
                continue
            try:
                view = self._view(self.store.open(user, info.name))
            except (MailboxNotFound, MailboxNotSelectable):  # deleted meanwhile
                continue
            out.append(view)
        return out

    def _view(self, mailbox: Mailbox) -> MailboxView:
        status = mailbox.status()  # rescans: deliveries since the last look are counted
        return MailboxView(
            name=mailbox.name,
            special_use=mailbox.special_use,
            messages=status.messages,
            unseen=status.unseen,
            uidvalidity=status.uidvalidity,
            uidnext=status.uidnext,
        )

    def page(self, user: str, name: str, page: int = 1, per_page: int = PAGE_SIZE) -> Page:
        """Messages of one mailbox, newest (highest UID) first.

        Raises:
            NotFound: no such mailbox for this user.
        """
        mailbox = self._mailbox(user, name)
        try:
            view = self._view(mailbox)
            infos = mailbox.snapshot()
        except MailboxNotFound:
            raise NotFound(f"no mailbox {name!r}") from None
        total = len(infos)
        pages = max(1, -(-total // per_page))
        page = min(max(page, 1), pages)
        newest_first = infos[::-1]
        chosen = newest_first[(page - 1) * per_page : page * per_page]
        summaries = []
        for info in chosen:
            try:
                summaries.append(self._summary(mailbox, view.uidvalidity, info))
            except MessageExpunged:
                continue
        return Page(view, summaries, page, pages, per_page, total)

    def _summary(self, mailbox: Mailbox, uidvalidity: int, info: MessageInfo) -> Summary:
        unique = info.path.rpartition("/")[2].partition(":")[0]
        cached = self._headers.get(unique)
        if cached is None:
            head = BytesHeaderParser(policy=policy.default).parsebytes(_read_head(mailbox, info))
            cached = (header_text(head, "From"), header_text(head, "Subject"), message_date(head))
            self._headers.put(unique, cached)
        sender, subject, date = cached
        return Summary(
            ref=MessageRef(mailbox.name, uidvalidity, info.uid),
            flags=tuple(sorted(info.flags)),
            size=info.size,
            internaldate=info.internaldate,
            sender=sender,
            subject=subject,
            date=date,
        )

    # -- one message ---------------------------------------------------------------------

    def _locate(self, user: str, ref: MessageRef) -> tuple[Mailbox, MessageInfo]:
        mailbox = self._mailbox(user, ref.mailbox)
        try:
            if mailbox.uidvalidity != ref.uidvalidity:
                raise NotFound("no such message")
            info = mailbox.info(ref.uid)
            if info is None:
                mailbox.refresh()  # delivered since the last rescan?
                info = mailbox.info(ref.uid)
        except MailboxNotFound:
            raise NotFound("no such message") from None
        if info is None:
            raise NotFound("no such message")
        return mailbox, info

    def read(self, user: str, ref: MessageRef, *, mark_seen: bool) -> tuple[Summary, bytes]:
        """A message's summary and stored bytes; ``mark_seen`` sets ``\\Seen`` first
        (as IMAP ``FETCH BODY[]`` does; IMAP sessions are told).

        Raises:
            NotFound: no such message for this user.
        """
        mailbox, info = self._locate(user, ref)
        try:
            if mark_seen and "\\Seen" not in info.flags:
                mailbox.store([ref.uid], "add", ["\\Seen"])
                info = mailbox.info(ref.uid) or info
            data = mailbox.read(ref.uid)
        except (MessageExpunged, MailboxNotFound):
            raise NotFound("no such message") from None
        return self._summary(mailbox, ref.uidvalidity, info), data

    def summary(self, user: str, ref: MessageRef) -> Summary:
        """One message's list line.

        Raises:
            NotFound: no such message for this user.
        """
        mailbox, info = self._locate(user, ref)
        try:
            return self._summary(mailbox, ref.uidvalidity, info)
        except MessageExpunged:
            raise NotFound("no such message") from None

    def set_flags(
        self, user: str, ref: MessageRef, add: Iterable[str] = (), remove: Iterable[str] = ()
    ) -> Summary:
        """Add and remove flags through :meth:`Mailbox.store` (IMAP sessions are told).

        Raises:
            NotFound: no such message for this user.
            BadFlags: a flag the store refuses; nothing was changed.
        """
        mailbox, _ = self._locate(user, ref)
        add, remove = list(add), list(remove)
        try:
            if add:
                mailbox.store([ref.uid], "add", add)
            if remove:
                mailbox.store([ref.uid], "remove", remove)
        except (InvalidFlag, TooManyKeywords) as exc:
            raise BadFlags(str(exc)) from None
        except MailboxNotFound:
            raise NotFound("no such message") from None
        return self.summary(user, ref)

    def delete(self, user: str, ref: MessageRef) -> DeleteResult:
        """Move a message to Trash (created if missing); in Trash itself, expunge it.

        Raises:
            NotFound: no such message for this user.
        """
        mailbox, _ = self._locate(user, ref)
        try:
            if mailbox.name == TRASH:
                mailbox.store([ref.uid], "add", ["\\Deleted"])
                gone = mailbox.expunge([ref.uid])
                return DeleteResult(None, ref.uid in gone)
            trash = self._trash(user)
            moved = mailbox.move([ref.uid], trash)
        except (MailboxNotFound, MessageExpunged):
            raise NotFound("no such message") from None
        if not moved:
            raise NotFound("no such message")
        return DeleteResult(MessageRef(TRASH, trash.uidvalidity, moved[0][1]), False)

    def _trash(self, user: str) -> Mailbox:
        try:
            return self.store.open(user, TRASH)
        except MailboxNotFound:
            pass
        with contextlib.suppress(MailboxExists):  # created meanwhile
            self.store.create(user, TRASH)
        return self.store.open(user, TRASH)

    def save_sent(self, user: str, data: bytes) -> MessageRef | None:
        """Keep a copy of a sent message in Sent (``\\Seen``), if the user has that mailbox."""
        try:
            sent = self.store.open(user, SENT)
            uid = sent.append(data, ["\\Seen"])
            return MessageRef(SENT, sent.uidvalidity, uid)
        except (MailboxNotFound, MailboxNotSelectable):
            return None


def flags_from(values: object) -> Sequence[str]:
    """A JSON list of flag strings, checked; raises BadFlags otherwise."""
    if values is None:
        return []
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise BadFlags('expected a list of flag names like ["\\\\Seen"]')
    return values
