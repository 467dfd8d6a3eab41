"""The IMAP store over real Maildirs: UIDs, flags, keywords, \\Recent, watchers, mailbox names."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest

from reference_server.storage import imapstore
from reference_server.storage.imapstore import (
    INBOX,
    ImapStore,
    InvalidFlag,
    InvalidMailboxName,
    Mailbox,
    MailboxExists,
    MailboxNotFound,
    MailboxNotSelectable,
    MessageExpunged,
    OperationRefused,
    TooManyKeywords,
)
from reference_server.storage.mailbox_index import INDEX_NAME, KEYWORDS_NAME, delivery_order
from reference_server.storage.maildir import MaildirStore
from reference_server.storage.maildrop import Maildrop

MSG = b"Subject: hello\r\n\r\nbody\r\n"

# -- helpers ------------------------------------------------------------------------------

_audit: list[tuple[str, str]] | None = None
_hooked = False


def _hook(event: str, args: tuple[object, ...]) -> None:
    if _audit is not None and event in ("open", "os.scandir") and args:
        _audit.append((event, os.fsdecode(args[0]) if isinstance(args[0], str | bytes) else ""))


@contextmanager
def audited() -> Iterator[list[tuple[str, str]]]:
    """Record the files opened and directories listed meanwhile (audit events, no mocks)."""
    global _audit, _hooked
    if not _hooked:  # a hook cannot be removed: install it once, inert outside audited()
        sys.addaudithook(_hook)
        _hooked = True
    events: list[tuple[str, str]] = []
    _audit = events
    try:
        yield events
    finally:
        _audit = None


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "mail"


@pytest.fixture
def store(root: Path) -> Iterator[ImapStore]:
    s = ImapStore(root, fsync=False, hostname="test")
    yield s
    s.close()


@pytest.fixture
def smtp(root: Path) -> Iterator[MaildirStore]:
    s = MaildirStore(root, fsync=False, hostname="mx")
    yield s
    asyncio.run(s.close())


def put(root: Path, name: str, sub: str = "new", data: bytes = MSG, user: str = "alice") -> Path:
    box = root / user
    for d in ("tmp", "new", "cur"):
        (box / d).mkdir(parents=True, exist_ok=True)
    path = box / sub / name
    path.write_bytes(data)
    return path


def uids(mailbox: Mailbox) -> list[int]:
    return [m.uid for m in mailbox.snapshot()]


def uniques(mailbox: Mailbox) -> dict[int, str]:
    return {m.uid: os.path.basename(m.path).partition(":")[0] for m in mailbox.snapshot()}


class Calls:
    """A watch callback that counts."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


# -- UIDs and the index -------------------------------------------------------------------


def test_new_files_get_uids_in_numeric_delivery_order(root: Path, store: ImapStore) -> None:
    # as strings "M10" < "M9" and "Q10" < "Q9": the order must come from the numbers
    put(root, "1700000001.M1P7Q1.h,S=24")
    put(root, "1700000000.M10P7Q10.h,S=24")
    put(root, "1700000000.M9P7Q9.h,S=24")
    put(root, "1700000000.M9P7Q11.h,S=24", sub="cur")
    put(root, "notime.h")
    inbox = store.open("alice", INBOX)
    assert uniques(inbox) == {
        1: "1700000000.M9P7Q9.h,S=24",
        2: "1700000000.M9P7Q11.h,S=24",
        3: "1700000000.M10P7Q10.h,S=24",
        4: "1700000001.M1P7Q1.h,S=24",
        5: "notime.h",
    }
    assert os.listdir(root / "alice" / "new") == []  # touched: moved to cur/
    assert "1700000000.M10P7Q10.h,S=24:2," in os.listdir(root / "alice" / "cur")


def test_delivery_order_key() -> None:
    assert delivery_order("1700000000.M9P7Q9.h") < delivery_order("1700000000.M10P7Q1.h")
    assert delivery_order("9.M1P1Q1.h") < delivery_order("10.M1P1Q1.h")
    assert delivery_order("10.x") < delivery_order("abc")


def test_uids_survive_a_restart_and_are_never_reused(root: Path, smtp: MaildirStore) -> None:
    smtp.deliver_sync(["alice"], MSG)
    smtp.deliver_sync(["alice"], MSG)
    first = ImapStore(root, fsync=False)
    inbox = first.open("alice", INBOX)
    before = uniques(inbox)
    validity = inbox.uidvalidity
    inbox.store([2], "add", ["\\Deleted"])
    assert inbox.expunge() == [2]
    first.close()

    second = ImapStore(root, fsync=False)
    inbox = second.open("alice", INBOX)
    assert inbox.uidvalidity == validity
    assert uniques(inbox) == {1: before[1]}
    smtp.deliver_sync(["alice"], MSG)
    assert inbox.refresh().added == [3]  # 2 is gone for good
    assert inbox.uidnext == 4
    second.close()


def test_uids_handed_out_are_not_reused_after_a_crash(root: Path, smtp: MaildirStore) -> None:
    first = ImapStore(root, fsync=False)
    inbox = first.open("alice", INBOX)
    inbox.snapshot()
    smtp.deliver_sync(["alice"], MSG)
    smtp.deliver_sync(["alice"], MSG)
    assert inbox.refresh().added == [1, 2]
    inbox.store([1], "add", ["\\Deleted"])
    inbox.expunge()
    # "crash": the index is not flushed; a new process starts from the files
    second = ImapStore(root, fsync=False)
    again = second.open("alice", INBOX)
    assert again.uidvalidity == inbox.uidvalidity
    (only,) = again.snapshot()
    assert only.uid == 2 or only.uid > 2  # never 1, never a UID another message had
    smtp.deliver_sync(["alice"], MSG)
    assert again.refresh().added[0] > 2
    second.close()


def test_a_corrupt_index_is_rebuilt_with_a_new_uidvalidity(
    root: Path, smtp: MaildirStore, caplog: pytest.LogCaptureFixture
) -> None:
    smtp.deliver_sync(["alice"], MSG)
    first = ImapStore(root, fsync=False)
    old = first.open("alice", INBOX).uidvalidity
    first.close()
    index = root / "alice" / INDEX_NAME
    data = bytearray(index.read_bytes())
    data[len(data) // 2] ^= 0x01
    index.write_bytes(bytes(data))

    second = ImapStore(root, fsync=False)
    with caplog.at_level(logging.WARNING, logger="reference_server.imap.store"):
        inbox = second.open("alice", INBOX)
        rebuilt = inbox.uidvalidity
        assert rebuilt > old
    assert "corrupt" in caplog.text
    assert uids(inbox) == [1]
    second.close()

    index.unlink()  # missing: the same
    third = ImapStore(root, fsync=False)
    assert third.open("alice", INBOX).uidvalidity > rebuilt
    third.close()


def test_uidvalidity_differs_for_a_name_recreated_in_the_same_second(root: Path) -> None:
    s = ImapStore(root, fsync=False, clock=lambda: 1_700_000_000.5)
    s.create("alice", "work")
    first = s.open("alice", "work").uidvalidity
    s.delete("alice", "work")
    s.create("alice", "work")
    second = s.open("alice", "work").uidvalidity
    assert first == 1_700_000_000 or first > 1_700_000_000
    assert second > first
    s.close()


def test_external_delivery_is_picked_up_in_order(store: ImapStore, smtp: MaildirStore) -> None:
    inbox = store.open("alice", INBOX)
    assert inbox.snapshot() == []
    for _ in range(3):
        smtp.deliver_sync(["alice"], MSG)
    changes = inbox.refresh()
    assert changes.added == [1, 2, 3]
    assert not changes.expunged and not changes.flags_changed
    assert inbox.refresh().added == []
    infos = inbox.snapshot()
    assert [m.size for m in infos] == [len(MSG)] * 3
    assert all(m.flags == frozenset() for m in infos)
    assert inbox.read(2) == MSG


def test_pop3_deletion_shows_up_as_expunge(
    root: Path, store: ImapStore, smtp: MaildirStore
) -> None:
    smtp.deliver_sync(["alice"], MSG)
    smtp.deliver_sync(["alice"], MSG)
    inbox = store.open("alice", INBOX)
    assert uids(inbox) == [1, 2]  # both moved to cur/ now
    drop = Maildrop.open(root / "alice")
    try:
        drop.messages[0].deleted = True
        assert drop.expunge() == 0
    finally:
        drop.close()
    changes = inbox.refresh()
    assert changes.expunged == [1]
    with pytest.raises(MessageExpunged):
        inbox.read(1)


def test_read_finds_a_file_renamed_by_another_program(root: Path, store: ImapStore) -> None:
    put(root, "1.M1P1Q1.h")
    inbox = store.open("alice", INBOX)
    (info,) = inbox.snapshot()
    os.rename(info.path, root / "alice" / "cur" / "1.M1P1Q1.h:2,S")
    assert inbox.read(1) == MSG
    assert inbox.info(1) is not None
    assert inbox.info(1).flags == {"\\Seen"}  # type: ignore[union-attr]


def test_opening_an_indexed_mailbox_reads_no_message(root: Path, store: ImapStore) -> None:
    for i in range(20):
        put(root, f"{1_700_000_000 + i}.M1P1Q{i}.h")
    store.open("alice", INBOX).snapshot()
    store.close()
    old = time.time() - 10  # settled directories: a refresh need not list them
    for sub in ("new", "cur"):
        os.utime(root / "alice" / sub, (old, old))
    fresh = ImapStore(root, fsync=False)
    with audited() as events:
        inbox = fresh.open("alice", INBOX)
        assert len(inbox.snapshot()) == 20
    opened = [path for event, path in events if event == "open"]
    listed = [path for event, path in events if event == "os.scandir"]
    assert all(not ("/cur/" in p or "/new/" in p) for p in opened), opened
    assert sorted(os.path.basename(p) for p in listed if "alice/" in p) == ["cur", "new"]
    with audited() as events:
        assert not inbox.refresh()
    assert [e for e in events if e[0] == "os.scandir"] == []  # nothing changed: not listed
    fresh.close()


# -- flags and keywords ---------------------------------------------------------------------


def test_flags_live_in_the_file_name(root: Path, store: ImapStore) -> None:
    put(root, "1.M1P1Q1.h")
    inbox = store.open("alice", INBOX)
    result = inbox.store([1], "add", ["\\seen", "\\FLAGGED"])
    assert result.changed == [1] and result.modified == []
    assert os.listdir(root / "alice" / "cur") == ["1.M1P1Q1.h:2,FS"]
    assert inbox.info(1).flags == {"\\Seen", "\\Flagged"}  # type: ignore[union-attr]
    inbox.store([1], "remove", ["\\Seen"])
    assert os.listdir(root / "alice" / "cur") == ["1.M1P1Q1.h:2,F"]
    inbox.store([1], "replace", ["\\Answered", "\\Draft", "\\Deleted"])
    assert os.listdir(root / "alice" / "cur") == ["1.M1P1Q1.h:2,DRT"]
    store.close()
    again = ImapStore(root, fsync=False).open("alice", INBOX)
    assert again.info(1).flags == {"\\Answered", "\\Draft", "\\Deleted"}  # type: ignore[union-attr]


def test_unknown_info_letters_are_kept(root: Path, store: ImapStore) -> None:
    put(root, "1.M1P1Q1.h:2,PS", sub="cur")  # P (passed) means nothing to IMAP
    inbox = store.open("alice", INBOX)
    assert inbox.info(1).flags == {"\\Seen"}  # type: ignore[union-attr]
    inbox.store([1], "add", ["\\Flagged"])
    assert os.listdir(root / "alice" / "cur") == ["1.M1P1Q1.h:2,FPS"]


def test_flags_changed_by_another_program_bump_the_modseq(root: Path, store: ImapStore) -> None:
    path = put(root, "1.M1P1Q1.h:2,", sub="cur")
    inbox = store.open("alice", INBOX)
    before = inbox.info(1).modseq  # type: ignore[union-attr]
    os.rename(path, path.with_name("1.M1P1Q1.h:2,S"))
    changes = inbox.refresh()
    assert changes.flags_changed == [1]
    assert inbox.info(1).modseq > before  # type: ignore[union-attr]
    assert inbox.highest_modseq == inbox.info(1).modseq  # type: ignore[union-attr]


def test_modseqs_never_go_back_after_a_crash(root: Path, store: ImapStore) -> None:
    put(root, "1.M1P1Q1.h")
    put(root, "2.M1P1Q1.h")
    inbox = store.open("alice", INBOX)
    inbox.store([1], "add", ["\\Seen"])
    inbox.store([2], "add", ["\\Flagged"])
    seen = {m.uid: m.modseq for m in inbox.snapshot()}
    highest = inbox.highest_modseq
    crashed = ImapStore(root, fsync=False)  # the first store's index was not flushed
    again = crashed.open("alice", INBOX)
    assert again.highest_modseq >= highest
    assert all(m.modseq >= seen[m.uid] for m in again.snapshot())
    assert again.info(1).flags == {"\\Seen"}  # type: ignore[union-attr]
    crashed.close()


def test_keywords_get_letters_from_the_keywords_file(root: Path, store: ImapStore) -> None:
    put(root, "1.M1P1Q1.h")
    inbox = store.open("alice", INBOX)
    inbox.store([1], "add", ["$Forwarded", "Work", "\\Seen"])
    keywords = (root / "alice" / KEYWORDS_NAME).read_text()
    assert keywords == "0 $Forwarded\n1 Work\n"
    assert os.listdir(root / "alice" / "cur") == ["1.M1P1Q1.h:2,Sab"]
    inbox.store([1], "remove", ["WORK"])  # keywords are case-insensitive
    assert inbox.info(1).flags == {"$Forwarded", "\\Seen"}  # type: ignore[union-attr]
    inbox.store([1], "add", ["work"])
    assert inbox.info(1).flags == {"$Forwarded", "Work", "\\Seen"}  # type: ignore[union-attr]
    assert inbox.keywords == ["$Forwarded", "Work"]
    store.close()
    again = ImapStore(root, fsync=False).open("alice", INBOX)
    assert again.info(1).flags == {"$Forwarded", "Work", "\\Seen"}  # type: ignore[union-attr]


def test_a_dovecot_keywords_file_is_honoured(root: Path, store: ImapStore) -> None:
    put(root, "1.M1P1Q1.h:2,Sb", sub="cur")
    (root / "alice" / "dovecot-keywords").write_text("0 $Junk\n1 $Label2\n")
    inbox = store.open("alice", INBOX)
    assert inbox.info(1).flags == {"\\Seen", "$Label2"}  # type: ignore[union-attr]
    inbox.store([1], "add", ["new"])
    assert (root / "alice" / KEYWORDS_NAME).read_text() == "0 $Junk\n1 $Label2\n2 new\n"


def test_the_27th_keyword_is_refused(root: Path, store: ImapStore) -> None:
    put(root, "1.M1P1Q1.h")
    inbox = store.open("alice", INBOX)
    inbox.store([1], "add", [f"k{i}" for i in range(25)])
    assert inbox.can_create_keywords
    with pytest.raises(TooManyKeywords) as caught:
        inbox.store([1], "add", ["k25", "k26"])
    assert caught.value.code == "LIMIT"
    assert len(inbox.info(1).flags) == 25  # type: ignore[union-attr]  # nothing changed
    inbox.store([1], "add", ["k25"])
    assert not inbox.can_create_keywords
    with pytest.raises(TooManyKeywords):
        inbox.append(MSG, ["one-too-many"])
    assert uids(inbox) == [1]
    assert os.listdir(root / "alice" / "tmp") == []


@pytest.mark.parametrize("flag", ["\\Recent", "\\Bogus", "has space", "a(b", ""])
def test_invalid_flags_are_refused(root: Path, store: ImapStore, flag: str) -> None:
    put(root, "1.M1P1Q1.h")
    with pytest.raises(InvalidFlag):
        store.open("alice", INBOX).store([1], "add", [flag])


def test_unchanged_since(root: Path, store: ImapStore) -> None:
    put(root, "1.M1P1Q1.h")
    put(root, "2.M1P1Q1.h")
    inbox = store.open("alice", INBOX)
    inbox.store([2], "add", ["\\Seen"])
    modseq_2 = inbox.info(2).modseq  # type: ignore[union-attr]
    result = inbox.store([1, 2], "add", ["\\Flagged"], unchanged_since=modseq_2 - 1)
    assert result.changed == [1] and result.modified == [2]
    assert inbox.store([1], "add", ["\\Flagged"], unchanged_since=0).modified == [1]
    new_modseq = inbox.info(1).modseq  # type: ignore[union-attr]
    assert new_modseq > modseq_2 and inbox.highest_modseq == new_modseq


# -- \Recent ----------------------------------------------------------------------------------


def test_recent_is_claimed_by_exactly_one_session(store: ImapStore, smtp: MaildirStore) -> None:
    smtp.deliver_sync(["alice"], MSG)
    smtp.deliver_sync(["alice"], MSG)
    inbox = store.open("alice", INBOX)
    examine = inbox.select(claim_recent=False)
    assert examine.recent == {1, 2}  # EXAMINE sees them and leaves them
    assert inbox.status().recent == 2
    one = inbox.select()
    two = inbox.select()
    assert one.recent == {1, 2} and two.recent == set()
    assert inbox.status().recent == 0

    smtp.deliver_sync(["alice"], MSG)
    got_two = inbox.refresh(two.watch)
    got_one = inbox.refresh(one.watch)
    assert got_two.added == got_one.added == [3]
    assert got_two.recent == [3] and got_one.recent == []
    assert two.watch.recent == {3} and one.watch.recent == {1, 2}
    store.close()
    # claimed for good: a restart does not make them recent again
    again = ImapStore(store.root, fsync=False).open("alice", INBOX)
    assert again.select().recent == set()


# -- expunge, append, copy, move ------------------------------------------------------------


def test_expunge_removes_only_deleted_messages(root: Path, store: ImapStore) -> None:
    for i in range(1, 5):
        put(root, f"{i}.M1P1Q1.h")
    inbox = store.open("alice", INBOX)
    inbox.store([1, 2, 4], "add", ["\\Deleted"])
    assert inbox.expunge([2, 3]) == [2]  # UID EXPUNGE: 3 is not \Deleted, 1 and 4 not named
    assert inbox.expunge() == [1, 4]
    assert uids(inbox) == [3]
    assert [n.partition(":")[0] for n in os.listdir(root / "alice" / "cur")] == ["3.M1P1Q1.h"]
    assert inbox.expunge() == []


def test_append_is_durable_with_its_internaldate(root: Path) -> None:
    durable = ImapStore(root, fsync=True, hostname="test")
    inbox = durable.open("alice", INBOX)
    when = datetime(2020, 2, 29, 12, 30, 15, tzinfo=UTC)
    uid = inbox.append(MSG, ["\\Seen", "$Label1"], when)
    info = inbox.info(uid)
    assert info is not None
    assert info.internaldate == when and info.size == len(MSG)
    assert info.flags == {"\\Seen", "$Label1"}
    assert os.stat(info.path).st_mtime == when.timestamp()
    assert os.path.dirname(info.path).endswith("alice/cur")
    assert os.listdir(root / "alice" / "tmp") == []
    assert inbox.read(uid) == MSG
    durable.close()
    again = ImapStore(root, fsync=False).open("alice", INBOX)
    assert again.info(uid) == info


def test_append_after_pending_deliveries_gets_the_next_uid(
    store: ImapStore, smtp: MaildirStore
) -> None:
    inbox = store.open("alice", INBOX)
    inbox.snapshot()
    smtp.deliver_sync(["alice"], MSG)
    assert inbox.append(MSG) == 2  # the waiting delivery took 1
    assert uids(inbox) == [1, 2]


def test_copy_maps_uids_and_keeps_flags_and_dates(root: Path, store: ImapStore) -> None:
    for i in range(1, 4):
        put(root, f"{1_700_000_000 + i}.M1P1Q{i}.h")
    inbox = store.open("alice", INBOX)
    inbox.store([1, 3], "add", ["Project", "\\Flagged"])
    store.create("alice", "Archive")
    archive = store.open("alice", "Archive")
    archive.append(MSG, ["Other"])  # so "Project" gets another letter there
    mapping = inbox.copy([3, 1, 99], archive)
    assert mapping == [(1, 2), (3, 3)]
    copied = archive.info(2)
    assert copied is not None
    original = inbox.info(1)
    assert original is not None
    assert copied.flags == {"Project", "\\Flagged"}
    assert copied.internaldate == original.internaldate and copied.size == original.size
    assert os.stat(copied.path).st_ino == os.stat(original.path).st_ino  # a hard link
    assert copied.path.endswith(":2,Fb")  # "Project" is b in Archive, a in INBOX
    assert uids(inbox) == [1, 2, 3]


def test_move_maps_uids_and_tells_the_right_watchers(root: Path, store: ImapStore) -> None:
    for i in range(1, 4):
        put(root, f"{1_700_000_000 + i}.M1P1Q{i}.h")
    inbox = store.open("alice", INBOX)
    trash = store.open("alice", "Trash")
    mover, other = inbox.select(), inbox.select()
    trash_watch = trash.select()
    mapping = inbox.move([1, 2], trash, origin=mover.watch)
    assert mapping == [(1, 1), (2, 2)]
    assert uids(inbox) == [3] and uids(trash) == [1, 2]
    assert len(os.listdir(root / "alice" / "cur")) == 1
    assert inbox.refresh(mover.watch).expunged == []  # MOVE reports its own EXPUNGEs
    assert inbox.refresh(other.watch).expunged == [1, 2]
    assert trash.refresh(trash_watch.watch).added == [1, 2]
    with pytest.raises(OperationRefused):
        inbox.move([3], inbox)


# -- watchers -----------------------------------------------------------------------------


def test_watchers_on_two_handles_see_each_others_changes(
    store: ImapStore, smtp: MaildirStore
) -> None:
    smtp.deliver_sync(["alice"], MSG)
    first, second = store.open("alice", INBOX), store.open("alice", "inbox")
    assert first is second  # one shared object per mailbox
    calls_a, calls_b = Calls(), Calls()
    a = first.select(callback=calls_a)
    b = second.select(callback=calls_b)

    assert first.store([1], "add", ["\\Seen"], origin=a.watch).changed == [1]
    assert (calls_a.count, calls_b.count) == (0, 1)
    assert second.refresh(b.watch).flags_changed == [1]
    assert not first.refresh(a.watch)  # its own change is not news to it

    uid = first.append(MSG, origin=a.watch)
    assert calls_b.count == 2 and calls_a.count == 1  # EXISTS for both (RFC 3501 §6.3.11)
    assert first.refresh(a.watch).added == [uid] == second.refresh(b.watch).added

    first.store([1, uid], "add", ["\\Deleted"], origin=a.watch)
    assert first.expunge(origin=a.watch) == [1, uid]
    changes = second.refresh(b.watch)
    assert changes.expunged == [1, uid] and changes.flags_changed == []
    a.watch.close()
    b.watch.close()
    assert first.watches == 0


def test_added_then_expunged_before_a_refresh_is_never_reported(store: ImapStore) -> None:
    inbox = store.open("alice", INBOX)
    watcher = inbox.select()
    uid = inbox.append(MSG, ["\\Deleted"])
    inbox.expunge([uid])
    assert not inbox.refresh(watcher.watch)


def test_notify_delivery_wakes_watchers(store: ImapStore, smtp: MaildirStore) -> None:
    inbox = store.open("alice", INBOX)
    calls = Calls()
    watcher = inbox.select(callback=calls)
    smtp.deliver_sync(["alice"], MSG)
    imapstore.notify_delivery("alice")
    imapstore.notify_delivery("bob")  # nobody watches bob: nothing happens
    assert calls.count == 1
    assert inbox.refresh(watcher.watch).added == [1]


def test_a_failing_callback_does_not_break_the_command(
    store: ImapStore, caplog: pytest.LogCaptureFixture
) -> None:
    inbox = store.open("alice", INBOX)

    def broken() -> None:
        raise RuntimeError("session bug")

    inbox.select(callback=broken)
    with caplog.at_level(logging.ERROR, logger="reference_server.imap.store"):
        assert inbox.append(MSG) == 1
    assert "callback failed" in caplog.text


def test_a_deleted_selected_mailbox_says_so(store: ImapStore) -> None:
    store.create("alice", "work")
    work = store.open("alice", "work")
    calls = Calls()
    watcher = work.select(callback=calls)
    store.delete("alice", "work")
    assert calls.count == 1
    with pytest.raises(MailboxNotFound):
        work.refresh(watcher.watch)
    with pytest.raises(MailboxNotFound):
        store.open("alice", "work")


def test_concurrent_appends_get_distinct_ascending_uids(store: ImapStore) -> None:
    inbox = store.open("alice", INBOX)
    results: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(25):
            uid = inbox.append(MSG)
            with lock:
                results.append(uid)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == list(range(1, 101))
    assert uids(inbox) == list(range(1, 101))


# -- mailbox names and hierarchy ---------------------------------------------------------------


def names(store: ImapStore) -> dict[str, set[str]]:
    return {m.name: set(m.attributes) for m in store.list_mailboxes("alice")}


def test_special_use_mailboxes_are_created_once_and_subscribed(root: Path) -> None:
    s = ImapStore(root, fsync=False)
    listed = names(s)
    assert listed == {
        "INBOX": {"\\HasNoChildren"},
        "Drafts": {"\\HasNoChildren", "\\Drafts"},
        "Junk": {"\\HasNoChildren", "\\Junk"},
        "Sent": {"\\HasNoChildren", "\\Sent"},
        "Trash": {"\\HasNoChildren", "\\Trash"},
    }
    assert next(iter(listed)) == INBOX
    assert set(s.subscriptions("alice")) == {"INBOX", "Drafts", "Sent", "Trash", "Junk"}
    assert (root / "alice" / ".Sent" / "maildirfolder").exists()
    s.delete("alice", "Trash")
    s.close()
    # the user's choice sticks (the name stays subscribed: RFC 3501 §6.3.6)
    assert names(ImapStore(root, fsync=False))["Trash"] == {"\\NonExistent", "\\Noselect"}


def test_inbox_is_case_insensitive(root: Path, store: ImapStore) -> None:
    assert store.open("alice", "inbox") is store.open("alice", "InBoX")
    assert store.create("alice", "iNbOx/child") == "INBOX/child"
    assert (root / "alice" / ".INBOX.child" / "cur").is_dir()
    assert names(store)["INBOX"] == {"\\HasChildren"}
    assert "INBOX/child" in names(store)
    with pytest.raises(MailboxExists):
        store.create("alice", "Inbox")
    store.create("alice", "a/inbox")  # only the first level is special
    assert "a/inbox" in names(store)


def test_create_makes_superiors_and_accepts_a_trailing_delimiter(
    root: Path, store: ImapStore
) -> None:
    assert store.create("alice", "a/b/c") == "a/b/c"
    assert store.create("alice", "x/") == "x"
    listed = names(store)
    assert listed["a"] == {"\\HasChildren"} and listed["a/b"] == {"\\HasChildren"}
    assert listed["a/b/c"] == {"\\HasNoChildren"} and listed["x"] == {"\\HasNoChildren"}
    assert (root / "alice" / ".a.b.c" / "cur").is_dir()
    with pytest.raises(MailboxExists):
        store.create("alice", "a/b")


def test_names_with_dots_and_percent_are_escaped(root: Path, store: ImapStore) -> None:
    store.create("alice", "v1.2/50%/ünï")
    assert (root / "alice" / ".v1%2E2.50%25.ünï").is_dir()
    assert "v1.2/50%/ünï" in names(store)
    store.open("alice", "v1.2/50%/ünï").append(MSG)


def test_hand_made_directories_that_are_not_canonical_are_ignored(
    root: Path, store: ImapStore
) -> None:
    store.list_mailboxes("alice")
    for odd in ("..", ".a..b", ".x%2e", ".INBOX", ".%41", "..hidden", ".bad%zz"):
        (root / "alice" / odd / "cur").mkdir(parents=True, exist_ok=True)
    assert set(names(store)) == {"INBOX", "Drafts", "Sent", "Trash", "Junk"}


@pytest.mark.parametrize(
    "name",
    [
        "",
        "/",
        "..",
        "../bob",
        "a/../../bob",
        "a//b",
        "/etc",
        "a/.",
        "nul\x00byte",
        "tab\there",
        "del\x7f",
        "c1\x85",
        "x" * 300,
        "a/" * 200,
        "lone\ud800surrogate",
    ],
)
def test_unsafe_names_are_refused(root: Path, store: ImapStore, name: str) -> None:
    store.list_mailboxes("alice")
    for call in (store.create, store.open, store.delete, store.subscribe):
        with pytest.raises(InvalidMailboxName) as caught:
            call("alice", name)
        assert caught.value.reason and "\n" not in caught.value.reason
    user_dir = root / "alice"
    assert all(p.parent == user_dir for p in user_dir.iterdir())  # nothing escaped
    assert sorted(p.name for p in root.iterdir()) == ["alice"]


def test_unsafe_user_names_are_refused(store: ImapStore) -> None:
    for user in ("", "../x", ".hidden", "a/b"):
        with pytest.raises(ValueError):
            store.open(user, INBOX)


def test_delete_with_inferiors_leaves_a_noselect_name(root: Path, store: ImapStore) -> None:
    store.create("alice", "a/b")
    a = store.open("alice", "a")
    a.append(MSG)
    store.delete("alice", "a")
    assert names(store)["a"] == {"\\Noselect", "\\HasChildren"}
    assert not (root / "alice" / ".a" / "cur").exists()
    with pytest.raises(MailboxNotSelectable):
        store.open("alice", "a")
    with pytest.raises(OperationRefused):
        store.delete("alice", "a")  # \Noselect with inferiors
    store.delete("alice", "a/b")
    store.delete("alice", "a")  # \Noselect without inferiors now: removed
    assert "a" not in names(store) and not (root / "alice" / ".a").exists()
    with pytest.raises(MailboxNotFound):
        store.delete("alice", "a")
    with pytest.raises(OperationRefused):
        store.delete("alice", "inbox")
    assert not [p for p in (root / "alice").iterdir() if p.name.startswith("mailharness-tmp")]


def test_create_over_a_noselect_name_makes_it_selectable(store: ImapStore) -> None:
    store.create("alice", "a/b")
    store.delete("alice", "a")
    store.create("alice", "a")
    assert names(store)["a"] == {"\\HasChildren"}
    assert store.open("alice", "a").snapshot() == []


def test_rename_moves_inferiors_and_subscriptions(root: Path, store: ImapStore) -> None:
    store.create("alice", "a/b")
    a = store.open("alice", "a")
    uid = a.append(MSG, ["\\Seen"])
    validity = a.uidvalidity
    store.subscribe("alice", "a/b")
    store.rename("alice", "a", "x/y")
    listed = names(store)
    assert "a" not in listed and "a/b" not in listed
    assert listed["x"] == {"\\HasChildren"} and listed["x/y/b"] == {"\\HasNoChildren"}
    moved = store.open("alice", "x/y")
    assert moved.uidvalidity == validity and uids(moved) == [uid]  # the same mailbox
    assert "x/y/b" in store.subscriptions("alice")
    with pytest.raises(MailboxNotFound):
        a.snapshot()  # the old handle is retired
    with pytest.raises(MailboxExists):
        store.rename("alice", "Sent", "x")
    with pytest.raises(OperationRefused):
        store.rename("alice", "x", "x/y/z")
    with pytest.raises(MailboxNotFound):
        store.rename("alice", "nothing", "else")


def test_rename_inbox_moves_its_messages_and_leaves_it_empty(
    root: Path, store: ImapStore, smtp: MaildirStore
) -> None:
    smtp.deliver_sync(["alice"], MSG)
    smtp.deliver_sync(["alice"], MSG)
    store.create("alice", "INBOX/kept")
    inbox = store.open("alice", INBOX)
    inbox.store([2], "add", ["Important", "\\Seen"])
    watcher = inbox.select()
    store.rename("alice", "inbox", "Old Mail")
    assert inbox.refresh(watcher.watch).expunged == [1, 2]
    assert inbox.snapshot() == [] and inbox.status().messages == 0
    old = store.open("alice", "Old Mail")
    assert uids(old) == [1, 2]
    assert old.uidvalidity != inbox.uidvalidity
    assert old.info(2).flags == {"Important", "\\Seen"}  # type: ignore[union-attr]
    assert "INBOX/kept" in names(store)  # inferiors of INBOX stay
    smtp.deliver_sync(["alice"], MSG)
    assert inbox.refresh().added == [3]  # INBOX goes on


def test_subscriptions_persist(root: Path) -> None:
    s = ImapStore(root, fsync=False, special_use=False)
    s.subscribe("alice", "news/today")  # need not exist
    s.subscribe("alice", "inbox")
    assert s.unsubscribe("alice", "nope") is False
    s.close()
    again = ImapStore(root, fsync=False, special_use=False)
    assert again.subscriptions("alice") == ["news/today", "INBOX"]
    listed = {m.name: m for m in again.list_mailboxes("alice")}
    assert listed["news/today"].subscribed
    assert listed["news/today"].attributes == {"\\NonExistent", "\\Noselect"}
    assert listed["INBOX"].subscribed and listed["INBOX"].delimiter == "/"
    assert again.unsubscribe("alice", "news/today") is True
    assert again.subscriptions("alice") == ["INBOX"]


def test_status(root: Path, store: ImapStore) -> None:
    for i in range(1, 4):
        put(root, f"{i}.M1P1Q1.h", data=MSG * i)
    inbox = store.open("alice", INBOX)
    inbox.store([1], "add", ["\\Seen"])
    inbox.store([2], "add", ["\\Deleted", "\\Seen"])
    status = inbox.status()
    assert (status.messages, status.unseen, status.deleted, status.recent) == (3, 1, 1, 3)
    assert status.size == len(MSG) * 6 and status.uidnext == 4
    assert status.uidvalidity == inbox.uidvalidity
    assert status.highestmodseq == inbox.highest_modseq


def test_open_refuses_unknown_and_noselect_mailboxes(root: Path, store: ImapStore) -> None:
    with pytest.raises(MailboxNotFound) as caught:
        store.open("alice", "nope")
    assert caught.value.code == "NONEXISTENT"
    store.list_mailboxes("alice")
    (root / "alice" / ".implied.child" / "cur").mkdir(parents=True)  # made by hand
    assert names(store)["implied"] == {"\\Noselect", "\\HasChildren"}
    with pytest.raises(MailboxNotSelectable):
        store.open("alice", "implied")
    assert store.open("alice", "implied/child").snapshot() == []


def test_open_tells_inferiors_from_names_that_only_share_a_prefix(
    root: Path, store: ImapStore
) -> None:
    """Only a folder one level down makes a missing name \\Noselect: not ``ab``
    next to ``a``, not ``a.b`` (one level whose name holds a dot, ``.a%2Eb``), not
    a symbolic link, not a directory whose name is not one of ours."""
    store.create("alice", "ab")
    user = root / "alice"
    (user / ".a%2Eb.c" / "cur").mkdir(parents=True)  # "a.b/c" made by hand: "a.b" is implied
    (user / ".x.y").symlink_to(user / ".ab")
    (user / ".q.%zz").mkdir()  # a bad escape: not a folder name
    for name in ("a", "x", "q"):
        with pytest.raises(MailboxNotFound):
            store.open("alice", name)
    with pytest.raises(MailboxNotSelectable):
        store.open("alice", "a.b")
    (user / ".x.real").mkdir()
    with pytest.raises(MailboxNotSelectable):
        store.open("alice", "x")


def test_create_does_not_count_a_symlinked_folder_as_existing(root: Path, store: ImapStore) -> None:
    store.create("alice", "real")
    (root / "alice" / ".alias").symlink_to(root / "alice" / ".real")
    with pytest.raises(MailboxExists):
        store.create("alice", "real")
    assert store.create("alice", "alias/child") == "alias/child"
