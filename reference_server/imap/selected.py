"""The selected mailbox as one session sees it: sequence numbers, and news not yet told.

Why a session view: sequence numbers are per session (RFC 9051 §2.3.1.2).
Another session's EXPUNGE, or a delivery, changes the mailbox at once, but
this session's numbers change only when it is told (``* n EXPUNGE``, ``* n
EXISTS``), and it may be told only at certain moments: never an EXPUNGE
while a FETCH, STORE or SEARCH runs (RFC 9051 §7.5.1), since the client
could not tell which numbers the command's own responses use. So the store's
changes are queued here (:meth:`refresh`), and :meth:`pending_updates`
turns them into responses when the session allows.

A message expunged elsewhere but not yet announced keeps its number here;
fetching it finds no file, and the command says so with ``EXPUNGEISSUED``.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Iterator

from conformance.wire.imap import SequenceSet

from ..storage.imapstore import Mailbox, Selection
from ..storage.mailbox_index import MessageInfo
from .fetch import flags_response

__all__ = ["SelectedMailbox"]


class SelectedMailbox:
    """One session's view of the mailbox it selected (or examined)."""

    def __init__(
        self,
        mailbox: Mailbox,
        selection: Selection,
        *,
        readonly: bool,
        event: asyncio.Event,
        condstore: bool = False,
    ) -> None:
        self.mailbox = mailbox
        self.selection = selection
        self.watch = selection.watch
        self.readonly = readonly
        self.event = event  # set (thread-safely) when another session changed something
        self.condstore = condstore
        self.uids: list[int] = [m.uid for m in selection.messages]
        self._expunged: set[int] = set()
        self._added: list[int] = []
        self._flags: dict[int, MessageInfo] = {}

    @property
    def name(self) -> str:
        return self.mailbox.name

    # -- news from the store (blocking: call in a worker thread) ---------------------------

    def refresh(self) -> None:
        """Collect what changed since the last call (other sessions, deliveries, POP3)."""
        changes = self.mailbox.refresh(self.watch)
        self._expunged.update(changes.expunged)
        known = set(self.uids)
        self._added.extend(uid for uid in changes.added if uid not in known)
        for uid in changes.flags_changed:
            info = self.mailbox.info(uid)
            if info is not None:
                self._flags[uid] = info

    # -- telling the client ------------------------------------------------------------------

    def pending_updates(self, *, allow_expunge: bool) -> bytes:
        """Untagged EXPUNGE / EXISTS / RECENT / FETCH for the queued news, in a safe order."""
        out = bytearray()
        if allow_expunge and self._expunged:
            out += self.forget(list(self._expunged))
        if self._added:
            self.uids.extend(sorted(set(self._added)))
            self._added = []
            out += b"* %d EXISTS\r\n" % len(self.uids)
            out += b"* %d RECENT\r\n" % len(self.watch.recent.intersection(self.uids))
        if self._flags:
            positions = self.positions()
            for uid, info in sorted(self._flags.items()):
                seq = positions.get(uid)
                if seq is not None and uid not in self._expunged:
                    out += flags_response(
                        seq,
                        info,
                        recent=uid in self.watch.recent,
                        uid=True,
                        modseq=self.condstore,
                    )
            self._flags = {}
        return bytes(out)

    def forget(self, expunged: list[int]) -> bytes:
        """Drop messages from the view, with their EXPUNGE responses (this session's own
        EXPUNGE or MOVE, or the news of another's)."""
        gone = set(expunged)
        out = bytearray()
        for index in range(len(self.uids) - 1, -1, -1):  # highest first: numbers stay valid
            if self.uids[index] in gone:
                out += b"* %d EXPUNGE\r\n" % (index + 1)
        self.uids = [uid for uid in self.uids if uid not in gone]
        self._expunged -= gone
        # news not yet told about a message that is gone now is never told
        self._added = [uid for uid in self._added if uid not in gone]
        for uid in gone:
            self._flags.pop(uid, None)
        return bytes(out)

    # -- numbers -----------------------------------------------------------------------------

    def positions(self) -> dict[int, int]:
        """UID -> sequence number in this session's view."""
        return {uid: index for index, uid in enumerate(self.uids, start=1)}

    def resolve(self, sequence: SequenceSet, *, uid: bool) -> Iterator[tuple[int, int]]:
        """``(sequence number, UID)`` of the messages a set names, ascending.

        With ``uid``, ``*`` is the highest UID in the view (RFC 9051 §9: "the
        largest number in use"), and UIDs that are not here are skipped.
        """
        uids = self.uids
        if not uids:
            return
        if uid:
            for low, high in sequence.ranges_for(uids[-1]):
                start = bisect.bisect_left(uids, low)
                stop = bisect.bisect_right(uids, high)
                for index in range(start, stop):
                    yield index + 1, uids[index]
        else:
            for number in sequence.resolve(len(uids)):
                if 1 <= number <= len(uids):
                    yield number, uids[number - 1]

    def valid_numbers(self, sequence: SequenceSet) -> bool:
        """Whether every message number in a (non-UID) set exists (RFC 9051 §6.4: else BAD)."""
        top = len(self.uids)
        if top == 0:
            # RFC 3501 §9 seq-number: BAD for a number above the message count, and "This
            # includes "*" if the selected mailbox is empty". "1:*" stays allowed on an
            # empty mailbox (it names nothing), which clients use to list whatever is there
            return all(lo == 1 and hi is None for lo, hi in sequence.ranges)
        return all(
            (lo is None or lo <= top) and (hi is None or hi <= top) for lo, hi in sequence.ranges
        )

    def close(self) -> None:
        """Stop watching the mailbox (blocking: the last watch out may write the index)."""
        self.watch.close()
