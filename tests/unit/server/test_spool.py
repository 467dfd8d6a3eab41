"""OutboundSpool: entries appear complete and durable, or not at all."""

from __future__ import annotations

import asyncio
import errno
import itertools
import json
import logging
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from reference_server.storage.spool import OutboundSpool, SpoolEntry

needs_proc_fd = pytest.mark.skipif(
    not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd to name a descriptor"
)


class FsyncRecorder:
    """Records (kind, path, names in the directory) per fsync, then syncs or fails."""

    def __init__(self, fail: Callable[[Path], bool] = lambda path: False) -> None:
        self.fail = fail
        self.lock = threading.Lock()
        self.calls: list[tuple[str, Path, frozenset[str]]] = []

    def __call__(self, fd: int) -> None:
        path = Path(os.readlink(f"/proc/self/fd/{fd}"))
        is_dir = stat.S_ISDIR(os.fstat(fd).st_mode)
        names = frozenset(os.listdir(path)) if is_dir else frozenset()
        with self.lock:
            self.calls.append(("dir" if is_dir else "file", path, names))
        if self.fail(path):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        os.fsync(fd)


def ticking_clock(start: float = 1_700_000_000.0) -> Callable[[], float]:
    counter = itertools.count()
    return lambda: start + next(counter)


def test_round_trip(tmp_path: Path) -> None:
    spool = OutboundSpool(tmp_path / "spool", clock=lambda: 1_700_000_000.5)
    message = b"Subject: out\r\n\r\n\x00\xff\r\n"
    queue_id = spool.enqueue_sync(
        "alice@example.test",
        ["x@remote.test", "y@remote.test"],
        message,
        received_from="192.0.2.1",
    )
    [entry] = spool.list()
    assert entry == SpoolEntry(
        id=queue_id,
        sender="alice@example.test",
        recipients=("x@remote.test", "y@remote.test"),
        message_path=tmp_path / "spool" / queue_id / "message.eml",
        created=1_700_000_000.5,
        received_from="192.0.2.1",
    )
    assert entry.message_path.read_bytes() == message
    envelope = json.loads((tmp_path / "spool" / queue_id / "envelope.json").read_text())
    assert envelope == {
        "version": 1,
        "id": queue_id,
        "sender": "alice@example.test",
        "recipients": ["x@remote.test", "y@remote.test"],
        "created": 1_700_000_000.5,
        "received_from": "192.0.2.1",
    }
    assert sorted(os.listdir(tmp_path / "spool")) == [queue_id]


def test_null_sender_and_utf8_addresses_survive(tmp_path: Path) -> None:
    spool = OutboundSpool(tmp_path)
    spool.enqueue_sync("", ["jörg@bücher.test"], b"bounce")
    [entry] = spool.list()
    assert (entry.sender, entry.recipients, entry.received_from) == (
        "",
        ("jörg@bücher.test",),
        None,
    )


@pytest.mark.parametrize("recipients", [[], "x@remote.test"])
def test_recipients_must_be_a_non_empty_list(tmp_path: Path, recipients: list[str] | str) -> None:
    with pytest.raises(ValueError):
        OutboundSpool(tmp_path).enqueue_sync("a@b.test", recipients, b"m")
    assert os.listdir(tmp_path) == []


def test_async_enqueue_lists_oldest_first_with_unique_ids(tmp_path: Path) -> None:
    spool = OutboundSpool(tmp_path, clock=ticking_clock())

    async def main() -> list[str]:
        ids = [await spool.enqueue("s@a.test", [f"r{i}@b.test"], b"m%d" % i) for i in range(5)]
        ids += await asyncio.gather(
            *(spool.enqueue("s@a.test", ["r@b.test"], b"x") for _ in range(30))
        )
        await spool.close()
        return ids

    ids = asyncio.run(main())
    assert len(set(ids)) == 35
    listed = spool.list()
    assert [e.id for e in listed][:5] == ids[:5]
    assert sorted(e.id for e in listed) == sorted(ids)
    assert [e.created for e in listed] == sorted(e.created for e in listed)


def test_ids_are_unique_with_a_frozen_clock(tmp_path: Path) -> None:
    spool = OutboundSpool(tmp_path, fsync=False, clock=lambda: 1.0)
    ids = {spool.enqueue_sync("", ["r@b.test"], b"m") for _ in range(50)}
    assert len(ids) == 50


@needs_proc_fd
def test_durability_order(tmp_path: Path) -> None:
    recorder = FsyncRecorder()
    spool = OutboundSpool(tmp_path / "spool", fsync_fn=recorder)
    queue_id = spool.enqueue_sync("s@a.test", ["r@b.test"], b"m")
    staging = tmp_path / "spool" / f".tmp-{queue_id}"
    kinds = [(kind, path) for kind, path, _ in recorder.calls]
    # parent of the new spool directory, then the files and the staging directory
    assert kinds[:4] == [
        ("dir", tmp_path),
        ("file", staging / "message.eml"),
        ("file", staging / "envelope.json"),
        ("dir", staging),
    ]
    # then the spool directory, once the entry was renamed into place
    [(kind, path, names)] = recorder.calls[4:]
    assert (kind, path) == ("dir", tmp_path / "spool")
    assert queue_id in names and staging.name not in names


@needs_proc_fd
@pytest.mark.parametrize(
    "failing",
    [
        pytest.param(lambda p: p.name == "message.eml", id="message"),
        pytest.param(lambda p: p.name == "envelope.json", id="envelope"),
        pytest.param(lambda p: p.name.startswith(".tmp-"), id="staging-dir"),
        pytest.param(lambda p: p.name == "spool", id="spool-dir"),
    ],
)
def test_a_failed_fsync_leaves_no_entry(tmp_path: Path, failing: Callable[[Path], bool]) -> None:
    (tmp_path / "spool").mkdir()
    spool = OutboundSpool(tmp_path / "spool", fsync_fn=FsyncRecorder(fail=failing))
    with pytest.raises(OSError) as info:
        spool.enqueue_sync("s@a.test", ["r@b.test"], b"m")
    assert info.value.errno == errno.EIO
    assert os.listdir(tmp_path / "spool") == []
    assert spool.list() == []


@needs_proc_fd
def test_a_failed_fsync_fails_the_async_enqueue_too(tmp_path: Path) -> None:
    (tmp_path / "spool").mkdir()
    spool = OutboundSpool(
        tmp_path / "spool", fsync_fn=FsyncRecorder(fail=lambda p: p.name == "spool")
    )

    async def main() -> None:
        with pytest.raises(OSError):
            await spool.enqueue("s@a.test", ["r@b.test"], b"m")
        await spool.close()

    asyncio.run(main())
    assert os.listdir(tmp_path / "spool") == []


def test_list_skips_staging_leftovers_and_broken_entries(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = OutboundSpool(tmp_path)
    good = spool.enqueue_sync("s@a.test", ["r@b.test"], b"m")
    (tmp_path / ".tmp-crashed").mkdir()  # a crash mid-enqueue
    (tmp_path / "no-envelope").mkdir()
    (tmp_path / "bad-json").mkdir()
    (tmp_path / "bad-json" / "envelope.json").write_text("{")
    (tmp_path / "wrong-id").mkdir()
    envelope = json.loads((tmp_path / good / "envelope.json").read_text())
    (tmp_path / "wrong-id" / "envelope.json").write_text(json.dumps(envelope))
    (tmp_path / "stray-file").write_text("x")
    with caplog.at_level(logging.WARNING, logger="reference_server.storage.spool"):
        assert [e.id for e in spool.list()] == [good]
    assert len(caplog.records) == 3


def test_list_of_a_missing_spool_is_empty(tmp_path: Path) -> None:
    assert OutboundSpool(tmp_path / "nothing-yet").list() == []


def test_remove(tmp_path: Path) -> None:
    spool = OutboundSpool(tmp_path)
    first = spool.enqueue_sync("s@a.test", ["r@b.test"], b"1")
    second = spool.enqueue_sync("s@a.test", ["r@b.test"], b"2")
    spool.remove(first)
    assert [e.id for e in spool.list()] == [second]
    assert sorted(os.listdir(tmp_path)) == [second]
    with pytest.raises(FileNotFoundError):
        spool.remove(first)
    for bad in ["", "../x", ".tmp-x"]:
        with pytest.raises(ValueError):
            spool.remove(bad)


# -- delivery state ---------------------------------------------------------------------


def test_an_entry_never_tried_has_a_fresh_state(tmp_path: Path) -> None:
    spool = OutboundSpool(tmp_path, clock=lambda: 1_700_000_000.0)
    queue_id = spool.enqueue_sync("a@x.test", ["b@y.test", "c@y.test", "b@y.test"], b"m\r\n")
    state = spool.read_state(spool.get(queue_id))
    assert list(state.recipients) == ["b@y.test", "c@y.test"]  # repeats collapse
    assert state.with_status("pending") == ["b@y.test", "c@y.test"]
    assert (state.attempts, state.next_attempt, state.bounced) == (0, 1_700_000_000.0, False)


def test_state_round_trips_and_is_replaced_durably(tmp_path: Path) -> None:
    recorder = FsyncRecorder()
    spool = OutboundSpool(tmp_path, fsync_fn=recorder)
    queue_id = spool.enqueue_sync("a@x.test", ["b@y.test", "c@y.test"], b"m\r\n")
    entry = spool.get(queue_id)
    state = spool.read_state(entry)
    state.attempts, state.next_attempt, state.warned = 2, 1234.5, True
    state.recipients["b@y.test"].status = "delivered"
    failed = state.recipients["c@y.test"]
    failed.status, failed.code, failed.diagnostic = "failed", "5.1.1", "550 5.1.1 no such user"
    recorder.calls.clear()
    spool.write_state(queue_id, state)
    assert spool.read_state(entry) == state
    directory = tmp_path / queue_id
    assert sorted(os.listdir(directory)) == ["envelope.json", "message.eml", "state.json"]
    # the temporary file is synced before the rename, the directory after it
    kinds = [(kind, path.name) for kind, path, _ in recorder.calls]
    assert kinds == [("file", ".state.json.tmp"), ("dir", queue_id)]
    assert "state.json" in recorder.calls[1][2]


def test_a_broken_state_file_is_a_value_error(tmp_path: Path) -> None:
    spool = OutboundSpool(tmp_path)
    queue_id = spool.enqueue_sync("a@x.test", ["b@y.test"], b"m\r\n")
    entry = spool.get(queue_id)
    (tmp_path / queue_id / "state.json").write_text('{"version": 1, "attempts": "x"}')
    with pytest.raises(ValueError, match=r"state\.json has missing or mistyped fields"):
        spool.read_state(entry)
    (tmp_path / queue_id / "state.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"state\.json is not JSON"):
        spool.read_state(entry)


def test_get_refuses_bad_and_unknown_ids(tmp_path: Path) -> None:
    spool = OutboundSpool(tmp_path)
    with pytest.raises(ValueError, match="not a queue id"):
        spool.get("../x")
    with pytest.raises(FileNotFoundError, match="no queued message"):
        spool.get("0123-nope")
