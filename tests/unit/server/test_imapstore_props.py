"""Properties of the IMAP store: name escaping; UIDs that never lie across restarts and crashes."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from pathlib import Path

from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from reference_server.storage.imapstore import INBOX, ImapStore, Mailbox
from reference_server.storage.mailbox_names import (
    InvalidMailboxName,
    canonical_name,
    dirname_to_name,
    escape_level,
    mailbox_dirname,
    unescape_level,
)
from reference_server.storage.maildir import MaildirStore
from reference_server.storage.maildrop import Maildrop

MSG = b"Subject: p\r\n\r\nx\r\n"
# any Unicode except lone surrogates, which have no UTF-8 form (refused separately)
levels = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=20)


@given(levels)
def test_a_level_escapes_reversibly_into_a_safe_file_name_part(level: str) -> None:
    escaped = escape_level(level)
    assert "." not in escaped and "/" not in escaped and "\x00" not in escaped
    assert unescape_level(escaped) == level


@given(st.one_of(st.text(), st.lists(levels, min_size=1, max_size=6).map("/".join)))
def test_accepted_names_round_trip_through_their_directory(name: str) -> None:
    try:
        canonical = canonical_name(name)
    except InvalidMailboxName as exc:
        assert exc.reason and "\n" not in exc.reason
        return
    assert canonical_name(canonical) == canonical
    assume(canonical != INBOX)
    dirname = mailbox_dirname(canonical)
    assert dirname.startswith(".") and dirname not in (".", "..")
    assert "/" not in dirname and "\x00" not in dirname
    assert len(dirname.encode("utf-8")) <= 255
    assert dirname_to_name(dirname) == canonical


@settings(max_examples=25, deadline=None)
@given(st.lists(levels, min_size=1, max_size=3).map("/".join))
def test_created_mailboxes_are_listed_under_their_name(name: str) -> None:
    try:
        canonical = canonical_name(name)
    except InvalidMailboxName:
        return
    assume(canonical != INBOX)
    with tempfile.TemporaryDirectory() as tmp:
        store = ImapStore(Path(tmp), fsync=False, special_use=False)
        store.create("alice", canonical)
        listed = {m.name for m in store.list_mailboxes("alice")}
        assert canonical in listed
        user_dir = Path(tmp) / "alice"
        assert all(p.parent == user_dir for p in user_dir.iterdir())
        store.open("alice", canonical).append(MSG)
        store.close()


class UidsNeverLie(RuleBasedStateMachine):
    """SMTP deliveries, APPENDs, POP3 deletions, expunges, clean restarts and crashes,
    and other programs renaming, moving and deleting files behind the store's back.

    While UIDVALIDITY stays, a UID once seen names the same message forever, and a
    UID never seen before is above every UID seen so far (RFC 3501 §2.3.1.1).
    """

    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.mkdtemp()
        self.root = Path(self.tmp)
        self.smtp = MaildirStore(self.root, fsync=False, hostname="mx")
        self.store = ImapStore(self.root, fsync=False, special_use=False)
        self.names: dict[int, str] = {}
        self.highest = 0
        self.validity: int | None = None

    def teardown(self) -> None:
        self.store.close()
        asyncio.run(self.smtp.close())
        shutil.rmtree(self.tmp, ignore_errors=True)

    @property
    def inbox(self) -> Mailbox:
        return self.store.open("alice", INBOX)

    @rule(count=st.integers(1, 3))
    def deliver(self, count: int) -> None:
        for _ in range(count):
            self.smtp.deliver_sync(["alice"], MSG)

    @rule()
    def append(self) -> None:
        self.inbox.append(MSG)

    @rule(data=st.data())
    def pop3_deletes_one(self, data: st.DataObject) -> None:
        drop = Maildrop.open(self.root / "alice")
        try:
            if drop.messages:
                data.draw(st.sampled_from(drop.messages)).deleted = True
                drop.expunge()
        finally:
            drop.close()

    @rule(data=st.data())
    def expunge_one(self, data: st.DataObject) -> None:
        snapshot = self.inbox.snapshot()
        if snapshot:
            uid = data.draw(st.sampled_from(snapshot)).uid
            self.inbox.store([uid], "add", ["\\Deleted"])
            self.inbox.expunge([uid])

    def _files(self, sub: str) -> list[str]:
        return sorted(n for n in os.listdir(self.root / "alice" / sub) if not n.startswith("."))

    @rule(data=st.data(), letters=st.sampled_from(["", "S", "FS", "RS", "T"]))
    def another_program_changes_flags(self, data: st.DataObject, letters: str) -> None:
        """A mail reader of its own renames a file in cur/ (maildir(5) info letters)."""
        names = self._files("cur")
        if names:
            name = data.draw(st.sampled_from(names))
            cur = self.root / "alice" / "cur"
            os.rename(cur / name, cur / f"{name.partition(':')[0]}:2,{letters}")

    @rule(data=st.data())
    def another_reader_takes_one_from_new(self, data: st.DataObject) -> None:
        names = self._files("new")
        if names:
            name = data.draw(st.sampled_from(names))
            box = self.root / "alice"
            os.rename(box / "new" / name, box / "cur" / f"{name}:2,S")

    @rule(data=st.data(), sub=st.sampled_from(["new", "cur"]))
    def another_program_deletes_one(self, data: st.DataObject, sub: str) -> None:
        names = self._files(sub)
        if names:
            os.unlink(self.root / "alice" / sub / data.draw(st.sampled_from(names)))

    @rule()
    def restart(self) -> None:
        self.store.close()
        self.store = ImapStore(self.root, fsync=False, special_use=False)

    @rule()
    def crash(self) -> None:
        """A new process; the old one's unwritten index state is simply lost."""
        self.store = ImapStore(self.root, fsync=False, special_use=False)

    @invariant()
    def uids_are_consistent(self) -> None:
        inbox = self.inbox
        inbox.refresh()
        if self.validity is None:
            self.validity = inbox.uidvalidity
        assert inbox.uidvalidity == self.validity  # nothing here corrupts the index
        snapshot = inbox.snapshot()
        found = [m.uid for m in snapshot]
        assert found == sorted(set(found))
        on_disk = {
            name.partition(":")[0]
            for sub in ("new", "cur")
            for name in os.listdir(self.root / "alice" / sub)
        }
        highest = self.highest
        for info in snapshot:
            unique = os.path.basename(info.path).partition(":")[0]
            if info.uid in self.names:
                assert self.names[info.uid] == unique, f"UID {info.uid} changed its message"
            else:
                assert info.uid > highest, f"new UID {info.uid} not above {highest}"
                self.names[info.uid] = unique
            self.highest = max(self.highest, info.uid)
        assert {self.names[u] for u in found} == on_disk
        assert inbox.uidnext > self.highest
        letters = {"\\Seen": "S", "\\Flagged": "F", "\\Answered": "R", "\\Deleted": "T"}
        for info in snapshot:
            name = os.path.basename(info.path)
            assert os.path.exists(info.path), f"UID {info.uid}: {info.path} is not there"
            shown = "".join(sorted(letters[f] for f in info.flags if f in letters))
            assert shown == "".join(sorted(set(name.partition(":2,")[2]) & set("SFRT"))), (
                f"UID {info.uid}: flags {sorted(info.flags)} but file {name}"
            )


UidsNeverLie.TestCase.settings = settings(max_examples=30, stateful_step_count=20, deadline=None)
TestUidsNeverLie = UidsNeverLie.TestCase
