"""The POP3 maildrop over a real Maildir: lock, numbering, sizes, ids, expunge."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from reference_server.storage.maildrop import LOCK_NAME, Maildrop, MaildropLocked, unique_id


def make_box(tmp_path: Path) -> Path:
    box = tmp_path / "alice"
    for sub in ("tmp", "new", "cur"):
        (box / sub).mkdir(parents=True)
    return box


def put(box: Path, sub: str, name: str, data: bytes) -> Path:
    path = box / sub / name
    path.write_bytes(data)
    return path


def test_messages_are_numbered_by_delivery_time_across_new_and_cur(tmp_path):
    box = make_box(tmp_path)
    put(box, "new", "1700000300.M1P1Q3.host,S=3", b"c\r\n")
    put(box, "cur", "1700000100.M1P1Q1.host,S=3:2,S", b"a\r\n")
    put(box, "new", "1700000200.M1P1Q2.host,S=3", b"b\r\n")
    put(box, "new", ".hidden", b"x\r\n")
    drop = Maildrop.open(box)
    try:
        assert [m.number for m in drop.messages] == [1, 2, 3]
        assert [drop.read(m) for m in drop.messages] == [b"a\r\n", b"b\r\n", b"c\r\n"]
        assert drop.messages[0].uid == "1700000100.M1P1Q1.host,S=3"  # without ":2,S"
    finally:
        drop.close()


def test_sizes_count_bare_lf_as_crlf(tmp_path):
    box = make_box(tmp_path)
    put(box, "new", "1.a", b"Subject: x\n\nline\r\nend\n")
    drop = Maildrop.open(box)
    try:
        assert drop.messages[0].size == len(b"Subject: x\r\n\r\nline\r\nend\r\n")
    finally:
        drop.close()


def test_a_second_open_is_refused_until_the_first_closes(tmp_path):
    box = make_box(tmp_path)
    first = Maildrop.open(box)
    with pytest.raises(MaildropLocked):
        Maildrop.open(box)
    first.close()
    first.close()  # idempotent
    Maildrop.open(box).close()
    assert (box / LOCK_NAME).exists()


def test_expunge_removes_only_marked_messages_even_after_a_move(tmp_path):
    box = make_box(tmp_path)
    keep = put(box, "new", "1.keep", b"k\r\n")
    gone = put(box, "new", "2.gone", b"g\r\n")
    drop = Maildrop.open(box)
    try:
        drop.messages[1].deleted = True
        os.rename(gone, box / "cur" / "2.gone:2,S")  # another reader moved it meanwhile
        assert drop.expunge() == 0
    finally:
        drop.close()
    assert keep.exists()
    assert sorted(p.name for p in (box / "cur").iterdir()) == []


def test_reading_a_message_someone_removed_raises_file_not_found(tmp_path):
    box = make_box(tmp_path)
    path = put(box, "new", "1.a", b"a\r\n")
    drop = Maildrop.open(box)
    try:
        path.unlink()
        with pytest.raises(FileNotFoundError):
            drop.read(drop.messages[0])
    finally:
        drop.close()


@pytest.mark.parametrize(
    ("base", "kept"),
    [("1700000000.M1P2Q3.host,S=10", True), ("x" * 70, True), ("x" * 71, False), ("a b", False)],
)
def test_unique_ids_follow_rfc_1939_or_are_hashed(base, kept):
    uid = unique_id(base)
    assert (uid == base) is kept
    assert 1 <= len(uid) <= 70 and all(0x21 <= ord(c) <= 0x7E for c in uid)
    assert unique_id(base) == uid
