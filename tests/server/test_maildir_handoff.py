"""MaildirStore.deliver's hand-offs: staging threads answer the loop in batches, and the
deliveries of one directory fsync share one wake-up. Durability and failures as before."""

from __future__ import annotations

import asyncio
import errno
import os
import stat
import threading
import time
from pathlib import Path

import pytest

from reference_server.storage.maildir import MaildirStore

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd to name a descriptor"
)


class SlowDirSync:
    """An fsync that records ("file"/"dir", path, names in new/ when a dir sync began);
    directory syncs take ``delay`` seconds, and fail with EIO while ``fail`` is set."""

    def __init__(self, delay: float = 0.02) -> None:
        self.delay = delay
        self.fail = False
        self.lock = threading.Lock()
        self.calls: list[tuple[str, str, frozenset[str]]] = []

    def __call__(self, fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            with self.lock:
                self.calls.append(("dir", path, frozenset(os.listdir(path))))
            time.sleep(self.delay)
            if self.fail and path.endswith("/new"):
                raise OSError(errno.EIO, os.strerror(errno.EIO))
        else:
            with self.lock:
                self.calls.append(("file", path, frozenset()))
        os.fsync(fd)


def test_concurrent_deliveries_are_durable_before_they_return(tmp_path: Path) -> None:
    fsync = SlowDirSync()
    store = MaildirStore(tmp_path, hostname="h", fsync_fn=fsync, workers=4)
    returned: list[tuple[str, int]] = []  # (name, calls recorded when the delivery returned)

    async def one(i: int) -> None:
        [name] = await store.deliver(["alice"], b"message %d\r\n" % i)
        returned.append((name, len(fsync.calls)))

    async def main() -> None:
        try:
            await one(-1)  # the mailbox exists and is known from here on
            await asyncio.gather(*(one(i) for i in range(40)))
        finally:
            await store.close()

    asyncio.run(main())
    new = tmp_path / "alice" / "new"
    assert len(returned) == 41 and len({n for n, _ in returned}) == 41
    assert sorted(os.listdir(new)) == sorted(n for n, _ in returned)
    assert os.listdir(tmp_path / "alice" / "tmp") == []
    for name, seen in returned:
        calls = fsync.calls[:seen]
        # its file was fsynced (under tmp/), and a sync of new/ that began once the
        # file was there completed before deliver returned
        assert ("file", str(tmp_path / "alice" / "tmp" / name), frozenset()) in calls
        assert any(kind == "dir" and name in names for kind, _, names in calls)
    dir_syncs = [c for c in fsync.calls if c[0] == "dir" and c[1] == str(new)]
    assert len(dir_syncs) < 30  # group commit: deliveries shared directory fsyncs


def test_cancelling_one_waiter_leaves_the_others_of_its_batch_alone(tmp_path: Path) -> None:
    fsync = SlowDirSync(delay=0.1)
    store = MaildirStore(tmp_path, hostname="h", fsync_fn=fsync, workers=4)

    async def main() -> list[list[str] | BaseException]:
        try:
            await store.deliver(["alice"], b"first")
            tasks = [asyncio.ensure_future(store.deliver(["alice"], b"m%d" % i)) for i in range(8)]
            await asyncio.sleep(0.05)  # all staged, waiting for a directory fsync
            tasks[3].cancel()
            return await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            await store.close()

    results = asyncio.run(main())
    assert isinstance(results[3], asyncio.CancelledError)
    stored = set(os.listdir(tmp_path / "alice" / "new"))
    for i, result in enumerate(results):
        if i != 3:
            assert isinstance(result, list) and result[0] in stored


def test_a_failed_directory_fsync_fails_its_whole_batch_and_removes_it(tmp_path: Path) -> None:
    fsync = SlowDirSync()
    store = MaildirStore(tmp_path, hostname="h", fsync_fn=fsync, workers=4)

    async def main() -> list[list[str] | BaseException]:
        try:
            await store.deliver(["alice"], b"kept")
            fsync.fail = True
            return await asyncio.gather(
                *(store.deliver(["alice"], b"m%d" % i) for i in range(10)),
                return_exceptions=True,
            )
        finally:
            await store.close()

    results = asyncio.run(main())
    assert all(isinstance(r, OSError) and r.errno == errno.EIO for r in results)
    assert [p.read_bytes() for p in store.list_new("alice")] == [b"kept"]
    assert os.listdir(tmp_path / "alice" / "tmp") == []


def test_a_mailbox_removed_behind_the_stores_back_is_created_again(tmp_path: Path) -> None:
    store = MaildirStore(tmp_path, hostname="h")

    async def main() -> None:
        try:
            await store.deliver(["alice"], b"one")
            for sub in ("tmp", "new", "cur"):
                for entry in (tmp_path / "alice" / sub).iterdir():
                    entry.unlink()
                (tmp_path / "alice" / sub).rmdir()
            (tmp_path / "alice").rmdir()
            with pytest.raises(OSError):
                await store.deliver(["alice"], b"two")  # the caller answers 451
            await store.deliver(["alice"], b"three")
        finally:
            await store.close()

    asyncio.run(main())
    assert [p.read_bytes() for p in store.list_new("alice")] == [b"three"]


def test_unsafe_names_fail_before_anything_is_created(tmp_path: Path) -> None:
    store = MaildirStore(tmp_path, hostname="h")

    async def main() -> None:
        try:
            await store.deliver(["alice"], b"one")
            with pytest.raises(ValueError):
                await store.deliver(["alice", "../bob"], b"two")
        finally:
            await store.close()

    asyncio.run(main())
    assert [p.read_bytes() for p in store.list_new("alice")] == [b"one"]
