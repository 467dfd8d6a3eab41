"""ENVELOPE and BODYSTRUCTURE kept between FETCHes, so listing a mailbox reads no files.

Why this is safe: the bytes under a Maildir unique name never change
(maildir(5): a new message gets a new name; flag changes only touch the
part after ":"), so what is computed from them can be kept by that name for
as long as the process lives. Clients fetch ENVELOPE and BODYSTRUCTURE of a
whole mailbox on every resync; Dovecot keeps them in its index cache for
the same reason.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from .message import ParsedMessage

__all__ = ["StructureCache", "StructureView", "unique_of"]


def unique_of(path: str) -> str:
    """The Maildir unique name of a message file path (the file name up to ":")."""
    return path.rpartition("/")[2].partition(":")[0]


class _Entry:
    __slots__ = ("body", "bodystructure", "envelope")

    def __init__(self) -> None:
        self.envelope: bytes | None = None
        self.body: bytes | None = None
        self.bodystructure: bytes | None = None


class StructureView:
    """Duck-types the part of :class:`ParsedMessage` that ENVELOPE, BODY and BODYSTRUCTURE use.

    Reads and parses the message (``load``) only for what the cache lacks.
    """

    __slots__ = ("_entry", "_load", "_message")

    def __init__(self, entry: _Entry, load: Callable[[], ParsedMessage]) -> None:
        self._entry = entry
        self._load = load
        self._message: ParsedMessage | None = None

    def _parsed(self) -> ParsedMessage:
        if self._message is None:
            self._message = self._load()
        return self._message

    def envelope(self) -> bytes:
        entry = self._entry
        if entry.envelope is None:
            entry.envelope = self._parsed().envelope()
        return entry.envelope

    def bodystructure(self, extended: bool) -> bytes:
        entry = self._entry
        if extended:
            if entry.bodystructure is None:
                entry.bodystructure = self._parsed().bodystructure(True)
            return entry.bodystructure
        if entry.body is None:
            entry.body = self._parsed().bodystructure(False)
        return entry.body


class StructureCache:
    """Unique name -> cached structure, bounded (cleared when full), thread-safe."""

    def __init__(self, limit: int = 200_000) -> None:
        self.limit = limit
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()

    def view(self, unique: str, load: Callable[[], ParsedMessage]) -> StructureView:
        """The cached structure of the message named ``unique``; ``load`` fills what is missing."""
        entry = self._entries.get(unique)  # dict reads are atomic; changes hold the lock
        if entry is None:
            with self._lock:
                if len(self._entries) >= self.limit:
                    self._entries.clear()
                entry = self._entries.setdefault(unique, _Entry())
        return StructureView(entry, load)
