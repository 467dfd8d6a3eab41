"""The files the IMAP store keeps beside each Maildir: the UID index and the keywords.

Theory of operation
-------------------
The message files are the truth about *which* messages exist and their
flags (maildir(5): ``<unique>:2,<letters>``); the index only adds what a
Maildir cannot say: UIDVALIDITY, the UID and mod-sequence of each unique
name, UIDNEXT, HIGHESTMODSEQ (RFC 7162) and the first UID no session has
seen as ``\\Recent`` yet. It also caches each file's size, mtime and full
name, so opening a mailbox whose index is current lists ``new/`` and ``cur/``
once and stats no message file at all.

The index file (:data:`INDEX_NAME`) is text, written whole and atomically
(:func:`write_atomically`: temp file, fsync, rename, fsync directory)::

    mailharness-imap-index 1 uidvalidity=V uidnext=N uidreserved=R highestmodseq=H \
        modseqreserved=M recent=F        (one line)
    <uid> <modseq> <size> <mtime> <cur|new>/<file name>
    ...
    end <count> <crc32 of everything above, hex>

A file that does not parse, is truncated, or fails the CRC is corrupt:
:func:`load_index` raises :class:`IndexCorrupt` and the caller rebuilds with a
new UIDVALIDITY.

*Reservations* keep the writes rare without ever reusing a UID or letting a
mod-sequence go backwards after a crash: the store may hand out UIDs below
``uidreserved`` and mod-sequences up to ``modseqreserved`` without writing
the index; beyond them it writes first, reserving a new block. A clean flush
writes the reservations tight (equal to UIDNEXT and HIGHESTMODSEQ). After a
crash, files the index does not know get UIDs from ``uidreserved`` on, and
changes found on disk get mod-sequences above ``modseqreserved``, so a UID
or mod-sequence a client may have seen is never given to something else.

Keywords (RFC 3501 §2.3.2) are the lower-case letters ``a``-``z`` in the file
names, mapped through :data:`KEYWORDS_NAME` in the same directory, one
``<index> <keyword>`` line each, as Dovecot's ``dovecot-keywords``: index 0 is
``a``. Without that file, a ``dovecot-keywords`` file is read instead (a
Maildir Dovecot wrote keeps its keywords). A keyword is written there
(durably) before any file name uses its letter, and a letter, once given,
keeps its meaning. The 27th keyword is
refused (:class:`TooManyKeywords`).
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from .mailbox_names import ImapStoreError
from .maildir import fsync_directory

__all__ = [
    "INDEX_NAME",
    "KEYWORDS_NAME",
    "SYSTEM_FLAGS",
    "IndexCorrupt",
    "IndexData",
    "IndexEntry",
    "InvalidFlag",
    "Keywords",
    "MessageInfo",
    "TooManyKeywords",
    "delivery_order",
    "load_index",
    "normalize_flags",
    "save_index",
    "serialize_index",
    "split_filename",
    "write_atomically",
]

INDEX_NAME = "mailharness-imap-index"
KEYWORDS_NAME = "mailharness-imap-keywords"
DOVECOT_KEYWORDS_NAME = "dovecot-keywords"
_MAGIC = "mailharness-imap-index 1"
_MAX_KEYWORDS = 26  # the letters a-z

# maildir(5): the info letters of the "2," experimental semantics.
SYSTEM_FLAGS: dict[str, str] = {
    "\\Draft": "D",
    "\\Flagged": "F",
    "\\Answered": "R",
    "\\Seen": "S",
    "\\Deleted": "T",
}
_LETTER_FLAG = {letter: flag for flag, letter in SYSTEM_FLAGS.items()}
_FLAG_BY_LOWER = {flag.lower(): flag for flag in SYSTEM_FLAGS}
# RFC 3501 §9: flag-keyword = atom; ATOM-CHAR is any CHAR except atom-specials
# (SP, CTL, "(", ")", "{", "%", "*", DQUOTE, "\\", "]").
_ATOM = re.compile(r'[^\x00-\x20\x7f(){%*"\\\]]+')


class InvalidFlag(ImapStoreError):
    """A flag that cannot be stored: ``\\Recent`` or an unknown system flag or a non-atom.

    RFC 3501 §2.3.2: ``\\Recent`` cannot be altered by the client. The IMAP layer
    answers ``BAD``.
    """


class TooManyKeywords(ImapStoreError):
    """The mailbox already has 26 keywords (one letter each); RFC 5530 LIMIT."""

    code = "LIMIT"


class IndexCorrupt(Exception):
    """The index file cannot be trusted; the reason is in the message."""


# -- Maildir file names -------------------------------------------------------------------


def split_filename(filename: str) -> tuple[str, str]:
    """``(unique name, info)``: the name up to ``:`` and what follows it (maildir(5))."""
    unique, _, info = filename.partition(":")
    return unique, info


_NAME_FIELDS = re.compile(r"([A-Za-z])(\d+)")


def delivery_order(unique: str) -> tuple[int, int, int, str]:
    """Sort key for messages found on disk: delivery second, microsecond, counter, name.

    Names are ``<secs>.M<usec>P<pid>Q<n>.<host>`` (this server, Dovecot) or at
    least start with seconds (maildir(5)); the numbers are not zero-padded, so
    they are compared as numbers. Names without a leading number sort last.
    """
    head, _, rest = unique.partition(".")
    if not head.isdigit():
        return (1 << 62, 0, 0, unique)
    usec = counter = 0
    for letter, digits in _NAME_FIELDS.findall(rest.partition(".")[0]):
        if letter == "M":
            usec = int(digits)
        elif letter == "Q":
            counter = int(digits)
    return (int(head), usec, counter, unique)


# -- flags and keywords -------------------------------------------------------------------


class Keywords:
    """The keyword ↔ letter map of one mailbox (see the module doc).

    Not thread-safe: the owning mailbox serialises access.

    Args:
        directory: the Maildir holding :data:`KEYWORDS_NAME`.
        fsync: whether writes are made durable.
    """

    def __init__(self, directory: Path, *, fsync: bool = True) -> None:
        self._path = directory / KEYWORDS_NAME
        self._fsync = fsync
        self.names: list[str | None] = [None] * _MAX_KEYWORDS
        self._by_lower: dict[str, int] = {}
        self._parse_cache: dict[str, tuple[frozenset[str], str]] = {}
        self.load()

    def load(self) -> None:
        """Read the file again (a missing or unreadable file means no keywords)."""
        self.names = [None] * _MAX_KEYWORDS
        self._by_lower = {}
        self._parse_cache = {}
        text = ""
        # Dovecot's file has the same format: a Maildir it wrote keeps its keyword letters.
        for path in (self._path, self._path.with_name(DOVECOT_KEYWORDS_NAME)):
            try:
                text = path.read_text(encoding="utf-8")
                break
            except (FileNotFoundError, UnicodeDecodeError):
                continue
        for line in text.splitlines():
            index, _, keyword = line.partition(" ")
            if not index.isdigit() or not _ATOM.fullmatch(keyword):
                continue
            number = int(index)
            if number < _MAX_KEYWORDS and keyword.lower() not in self._by_lower:
                self.names[number] = keyword
                self._by_lower[keyword.lower()] = number

    def keywords(self) -> list[str]:
        """The keywords defined, in letter order."""
        return [name for name in self.names if name is not None]

    @property
    def full(self) -> bool:
        """Whether no new keyword can be added."""
        return len(self._by_lower) >= _MAX_KEYWORDS

    def letter(self, keyword: str) -> str | None:
        """The letter of a keyword (case-insensitive, RFC 3501 §9), if it has one."""
        index = self._by_lower.get(keyword.lower())
        return None if index is None else chr(ord("a") + index)

    def ensure(self, keywords: Iterable[str]) -> None:
        """Give every keyword a letter, writing the file first if any is new.

        Raises:
            TooManyKeywords: the new ones do not fit in 26 letters (nothing changed).
        """
        new = sorted(
            {k.lower(): k for k in keywords if k.lower() not in self._by_lower}.values(),
            key=str.lower,
        )
        if not new:
            return
        free = [i for i, name in enumerate(self.names) if name is None]
        if len(new) > len(free):
            raise TooManyKeywords(
                f"this mailbox already has {_MAX_KEYWORDS - len(free)} keywords, "
                f"the most it can hold is {_MAX_KEYWORDS}; remove unused ones from messages "
                "or use another mailbox"
            )
        names = list(self.names)
        for index, keyword in zip(free, new, strict=False):
            names[index] = keyword
        text = "".join(f"{i} {name}\n" for i, name in enumerate(names) if name is not None)
        write_atomically(self._path, text.encode("utf-8"), fsync=self._fsync)
        self.names = names
        self._by_lower = {name.lower(): i for i, name in enumerate(names) if name is not None}
        self._parse_cache = {}

    def parse_info(self, info: str) -> tuple[frozenset[str], str]:
        """``(IMAP flags, letters this store does not know)`` of a file name's info part."""
        cached = self._parse_cache.get(info)
        if cached is not None:
            return cached
        flags: list[str] = []
        unknown: list[str] = []
        letters = info[2:] if info.startswith("2,") else ""
        for letter in letters:
            flag = _LETTER_FLAG.get(letter)
            if flag is None and "a" <= letter <= "z":
                flag = self.names[ord(letter) - ord("a")]
            if flag is None:
                unknown.append(letter)
            else:
                flags.append(flag)
        result = (frozenset(flags), "".join(unknown))
        if len(self._parse_cache) < 4096:
            self._parse_cache[info] = result
        return result

    def info_for(self, flags: Iterable[str], unknown: str = "") -> str:
        """The info part ``2,<sorted letters>`` for canonical flags (keywords need letters)."""
        letters = set(unknown)
        for flag in flags:
            letter = SYSTEM_FLAGS.get(flag) or self.letter(flag)
            if letter is None:  # pragma: no cover - callers ensure() first
                raise KeyError(flag)
            letters.add(letter)
        return "2," + "".join(sorted(letters))


def normalize_flags(flags: Iterable[str]) -> frozenset[str]:
    """Canonical spelling of system flags; keywords checked as atoms and kept as given.

    Raises:
        InvalidFlag: ``\\Recent`` (RFC 3501 §2.3.2), an unknown ``\\`` flag, or a
            keyword that is not an atom.
    """
    out: set[str] = set()
    for flag in flags:
        if flag.startswith("\\"):
            canonical = _FLAG_BY_LOWER.get(flag.lower())
            if canonical is None:
                if flag.lower() == "\\recent":
                    raise InvalidFlag("\\Recent cannot be set or cleared (RFC 3501 §2.3.2)")
                raise InvalidFlag(
                    f"unknown system flag {flag}; use \\Seen \\Answered \\Flagged \\Deleted "
                    "\\Draft or a keyword without a backslash"
                )
            out.add(canonical)
        elif _ATOM.fullmatch(flag):
            out.add(flag)
        else:
            raise InvalidFlag(f"keyword {flag!r} is not an IMAP atom (RFC 3501 §9 flag-keyword)")
    return frozenset(out)


# -- the index file -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MessageInfo:
    """One message of a mailbox as a session sees it (immutable; a change makes a new one).

    Attributes:
        uid: the UID (RFC 3501 §2.3.1.1).
        flags: canonical system flags (``\\Seen`` ...) and keywords; never ``\\Recent``,
            which belongs to a session (see ``Watch.recent``).
        internaldate: the file's mtime when the store first saw it (for APPEND:
            the date the client gave), in UTC.
        size: octets of the file, which is stored with CRLF line ends (RFC822.SIZE).
        modseq: the RFC 7162 mod-sequence of the last change.
        path: the file's path as last seen (a ``str``: cheap for 10,000 messages).
            Another program may rename it; ``Mailbox.read`` copes with that.
    """

    uid: int
    flags: frozenset[str]
    internaldate: datetime
    size: int
    modseq: int
    path: str


@dataclass(slots=True)
class IndexEntry:
    """One message as the index records it, plus what the store derives from its name."""

    uid: int
    modseq: int
    size: int
    mtime: int
    sub: str  # "cur" or "new"
    filename: str
    flags: frozenset[str] = frozenset()
    unknown: str = ""  # info letters the store does not interpret, kept on renames
    info: MessageInfo | None = None  # cache, rebuilt after any change

    @property
    def unique(self) -> str:
        """The Maildir unique name: the file name up to ":" (maildir(5))."""
        return self.filename.partition(":")[0]


@dataclass
class IndexData:
    """The whole index of one mailbox."""

    uidvalidity: int
    uidnext: int = 1
    uid_reserved: int = 1
    highest_modseq: int = 1
    modseq_reserved: int = 1
    recent_from: int = 1
    entries: list[IndexEntry] = field(default_factory=list)


_HEADER_KEYS = (
    "uidvalidity",
    "uidnext",
    "uidreserved",
    "highestmodseq",
    "modseqreserved",
    "recent",
)


def _crc(data: bytes) -> str:
    return f"{zlib.crc32(data):08x}"


def serialize_index(data: IndexData) -> bytes:
    """The bytes of the index file for ``data``."""
    values = (
        data.uidvalidity,
        data.uidnext,
        data.uid_reserved,
        data.highest_modseq,
        data.modseq_reserved,
        data.recent_from,
    )
    lines = [_MAGIC + "".join(f" {k}={v}" for k, v in zip(_HEADER_KEYS, values, strict=True))]
    lines.extend(
        f"{e.uid} {e.modseq} {e.size} {e.mtime} {e.sub}/{e.filename}" for e in data.entries
    )
    body = ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape")
    return body + f"end {len(data.entries)} {_crc(body)}\n".encode()


def load_index(path: Path) -> IndexData:
    """Read and check an index file.

    Raises:
        FileNotFoundError: there is none.
        IndexCorrupt: it cannot be trusted (the message says why).
    """
    raw = path.read_bytes()
    end = raw.rfind(b"end ", 0, len(raw) - 1)
    if end < 0 or not raw.endswith(b"\n") or (end > 0 and raw[end - 1 : end] != b"\n"):
        raise IndexCorrupt("no end line (truncated?)")
    trailer = raw[end:-1].split(b" ")
    body = raw[:end]
    if len(trailer) != 3 or trailer[2].decode("ascii", "replace") != _crc(body):
        raise IndexCorrupt("checksum mismatch")
    lines = body.decode("utf-8", "surrogateescape").split("\n")[:-1]
    if not lines or not lines[0].startswith(_MAGIC + " "):
        raise IndexCorrupt("not an index file of this version")
    try:
        header = dict(item.split("=", 1) for item in lines[0][len(_MAGIC) + 1 :].split(" "))
        numbers = [int(header[key]) for key in _HEADER_KEYS]
        count = int(trailer[1])
    except (KeyError, ValueError) as exc:
        raise IndexCorrupt(f"bad header: {exc}") from None
    data = IndexData(
        uidvalidity=numbers[0],
        uidnext=numbers[1],
        uid_reserved=numbers[2],
        highest_modseq=numbers[3],
        modseq_reserved=numbers[4],
        recent_from=numbers[5],
    )
    if not 0 < data.uidvalidity < 1 << 32:
        raise IndexCorrupt(f"UIDVALIDITY {data.uidvalidity} out of range")
    if count != len(lines) - 1:
        raise IndexCorrupt(f"{len(lines) - 1} entries, the end line says {count}")
    previous = 0
    entries = data.entries
    try:
        for line in lines[1:]:
            uid, modseq, size, mtime, location = line.split(" ", 4)
            sub, _, filename = location.partition("/")
            entry = IndexEntry(int(uid), int(modseq), int(size), int(mtime), sub, filename)
            if entry.uid <= previous or sub not in ("cur", "new") or not filename:
                raise IndexCorrupt(f"bad entry {line!r}")
            previous = entry.uid
            entries.append(entry)
    except ValueError:
        raise IndexCorrupt("an entry does not parse") from None
    if previous >= data.uidnext or data.uidnext > data.uid_reserved:
        raise IndexCorrupt("UIDNEXT is not above every UID, or above the reservation")
    if data.highest_modseq > data.modseq_reserved:
        raise IndexCorrupt("HIGHESTMODSEQ is above its reservation")
    return data


def save_index(path: Path, data: IndexData, *, fsync: bool = True) -> None:
    """Write the index atomically and (with ``fsync``) durably."""
    write_atomically(path, serialize_index(data), fsync=fsync)


def write_atomically(
    path: Path,
    data: bytes,
    *,
    fsync: bool = True,
    fsync_fn: Callable[[int], None] = os.fsync,
) -> None:
    """Replace ``path`` with ``data``: write a temp file, fsync, rename, fsync the directory.

    Readers see the old content or the new, never a mix; after a crash, one of them.

    Raises:
        OSError: writing failed (the old file is untouched, the temp file removed).
    """
    tmp = path.with_name(f"{path.name}.tmp.{os.getpid()}.{threading.get_ident()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if fsync:
                fsync_fn(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if fsync:
        fsync_directory(path.parent, fsync_fn)
