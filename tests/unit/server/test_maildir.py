"""MaildirStore: durable tmp -> fsync -> rename -> directory fsync, and group commit."""

from __future__ import annotations

import asyncio
import errno
import os
import random
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from reference_server.storage.maildir import DirectorySync, MaildirStore, sanitize_hostname

needs_proc_fd = pytest.mark.skipif(
    not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd to name a descriptor"
)


def fd_path(fd: int) -> Path:
    return Path(os.readlink(f"/proc/self/fd/{fd}"))


class FsyncRecorder:
    """An fsync that records what it synced (and what ``new/`` held), then really syncs.

    ``fail`` decides, from the path, whether to raise EIO instead.
    """

    def __init__(self, fail: Callable[[Path], bool] = lambda path: False) -> None:
        self.fail = fail
        self.lock = threading.Lock()
        # ("file", path, exists-in-place) or ("dir", path, names in it when the sync began)
        self.calls: list[tuple[str, Path, frozenset[str]]] = []

    def __call__(self, fd: int) -> None:
        path = fd_path(fd)
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            entry = ("dir", path, frozenset(os.listdir(path)))
        else:
            entry = ("file", path, frozenset())
        with self.lock:
            self.calls.append(entry)
        if self.fail(path):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        os.fsync(fd)

    def dir_syncs(self, name: str = "new") -> list[tuple[str, Path, frozenset[str]]]:
        return [c for c in self.calls if c[0] == "dir" and c[1].name == name]


def all_files(root: Path, sub: str) -> list[Path]:
    return sorted(root.glob(f"*/{sub}/*"))


def test_delivered_message_is_byte_identical_in_new(tmp_path: Path) -> None:
    store = MaildirStore(tmp_path / "mail", hostname="mx.test")
    message = b"Subject: hi\r\n\r\nbody \x00\xff bytes\r\n.\r\n"
    [name] = store.deliver_sync(["alice"], message)
    [path] = store.list_new("alice")
    assert path.name == name
    assert path.read_bytes() == message
    assert all_files(tmp_path / "mail", "tmp") == []
    assert {p.name for p in (tmp_path / "mail" / "alice").iterdir()} == {"tmp", "new", "cur"}


def test_file_name_follows_maildir5_with_size(tmp_path: Path) -> None:
    store = MaildirStore(tmp_path, hostname="mx.test", clock=lambda: 1700000000.123456)
    name = store.deliver_sync(["alice"], b"12345")[0]
    assert re.fullmatch(rf"1700000000\.M12345[56]P{os.getpid()}Q1\.mx\.test,S=5", name)
    assert store.deliver_sync(["alice"], b"x")[0].endswith("Q2.mx.test,S=1")


def test_names_are_unique_even_with_a_frozen_clock(tmp_path: Path) -> None:
    store = MaildirStore(tmp_path, fsync=False, hostname="h", clock=lambda: 5.0)
    names = [store.deliver_sync(["u"], b"m")[0] for _ in range(300)]
    assert len(set(names)) == 300
    assert len(store.list_new("u")) == 300


def test_hostname_is_sanitised() -> None:
    assert sanitize_hostname("a/b:c,d") == "a\\057b\\072c\\054d"


def test_hostname_defaults_to_this_host(tmp_path: Path) -> None:
    store = MaildirStore(tmp_path, fsync=False)
    assert store.hostname == sanitize_hostname(socket.gethostname())
    assert store.deliver_sync(["u"], b"m")[0].split(".", 2)[2].startswith(store.hostname)


@pytest.mark.parametrize("user", ["", "a/b", "..", "a..b", ".hidden", "a\x00b", "x" * 256])
def test_unsafe_user_names_are_refused(tmp_path: Path, user: str) -> None:
    store = MaildirStore(tmp_path)
    with pytest.raises(ValueError):
        store.mailbox_path(user)
    with pytest.raises(ValueError):
        store.deliver_sync(["alice", user], b"m")
    assert not (tmp_path / "alice").exists()  # nothing written before the check


def test_mailbox_path(tmp_path: Path) -> None:
    assert MaildirStore(tmp_path).mailbox_path("bob") == tmp_path / "bob"


def test_permissions_are_private(tmp_path: Path) -> None:
    store = MaildirStore(tmp_path / "mail", fsync=False)
    store.deliver_sync(["alice"], b"m")
    for sub in ("", "tmp", "new", "cur"):
        mode = stat.S_IMODE((tmp_path / "mail" / "alice" / sub).stat().st_mode)
        assert mode & 0o077 == 0, oct(mode)
    assert stat.S_IMODE(store.list_new("alice")[0].stat().st_mode) & 0o077 == 0


def test_several_users_get_a_copy_each(tmp_path: Path) -> None:
    store = MaildirStore(tmp_path, hostname="h")
    names = store.deliver_sync(["alice", "bob", "alice"], b"shared")
    assert names[0] == names[2] != names[1]
    assert [p.read_bytes() for p in store.list_new("alice")] == [b"shared"]
    assert [p.read_bytes() for p in store.list_new("bob")] == [b"shared"]


def test_no_users_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        MaildirStore(tmp_path).deliver_sync([], b"m")


def test_list_new_of_unknown_user_is_empty(tmp_path: Path) -> None:
    assert MaildirStore(tmp_path).list_new("nobody") == []


def test_fsync_false_never_syncs(tmp_path: Path) -> None:
    recorder = FsyncRecorder()
    store = MaildirStore(tmp_path, fsync=False, fsync_fn=recorder)
    store.deliver_sync(["a", "b"], b"m")
    assert recorder.calls == []


# -- durability order ------------------------------------------------------------------------


@needs_proc_fd
def test_file_fsync_before_rename_before_the_directory_fsync_waited_for(tmp_path: Path) -> None:
    recorder = FsyncRecorder()
    store = MaildirStore(tmp_path, hostname="h", fsync_fn=recorder)
    names = store.deliver_sync(["alice", "bob"], b"durable")
    for user, name in zip(["alice", "bob"], names, strict=True):
        calls = recorder.calls
        # the file was fsynced while it was still in tmp/ (so before the rename)
        file_syncs = [i for i, c in enumerate(calls) if c[0] == "file" and c[1].name == name]
        assert len(file_syncs) == 1
        assert calls[file_syncs[0]][1] == tmp_path / user / "tmp" / name
        # and a directory fsync of this user's new/ began after the rename
        dir_syncs = [
            i
            for i, c in enumerate(calls)
            if c[0] == "dir" and c[1] == tmp_path / user / "new" and name in c[2]
        ]
        assert dir_syncs and dir_syncs[0] > file_syncs[0]


@needs_proc_fd
def test_creating_a_mailbox_makes_its_directories_durable(tmp_path: Path) -> None:
    recorder = FsyncRecorder()
    store = MaildirStore(tmp_path / "mail", fsync_fn=recorder)
    store.deliver_sync(["alice"], b"m")
    synced = {c[1] for c in recorder.calls if c[0] == "dir"}
    assert {tmp_path, tmp_path / "mail", tmp_path / "mail" / "alice"} <= synced
    recorder.calls.clear()
    store.deliver_sync(["alice"], b"m")  # only once per mailbox
    assert {c[1] for c in recorder.calls if c[0] == "dir"} == {tmp_path / "mail" / "alice" / "new"}


@needs_proc_fd
@pytest.mark.parametrize(
    "failing",
    [
        pytest.param(lambda p: p.parent.name == "tmp", id="file-fsync"),
        pytest.param(lambda p: p.name == "new", id="new-dir-fsync"),
        pytest.param(
            lambda p: p.parent.name == "tmp" and p.parent.parent.name == "bob", id="bob-file"
        ),
        pytest.param(lambda p: p.name == "new" and p.parent.name == "bob", id="bob-new-dir"),
    ],
)
def test_a_failed_fsync_leaves_nothing_in_new_or_tmp(
    tmp_path: Path, failing: Callable[[Path], bool]
) -> None:
    recorder = FsyncRecorder(fail=lambda p: "carol" not in p.parts and failing(p))
    store = MaildirStore(tmp_path, fsync_fn=recorder)
    store.deliver_sync(["carol"], b"before")  # carol's mailbox works (and exists)
    with pytest.raises(OSError) as info:
        store.deliver_sync(["alice", "bob"], b"message")
    assert info.value.errno == errno.EIO
    assert all_files(tmp_path, "new") == sorted(store.list_new("carol"))
    assert all_files(tmp_path, "tmp") == []


def test_a_failed_rename_leaves_nothing(tmp_path: Path) -> None:
    store = MaildirStore(tmp_path, hostname="h", clock=lambda: 7.0)
    store.deliver_sync(["alice"], b"m")
    # the next name is predictable with a frozen clock; a directory there stops the rename
    blocker = tmp_path / "alice" / "new" / f"7.M0P{os.getpid()}Q2.h,S=6"
    blocker.mkdir()
    with pytest.raises(IsADirectoryError):
        store.deliver_sync(["alice"], b"second")
    blocker.rmdir()
    assert [p.read_bytes() for p in store.list_new("alice")] == [b"m"]
    assert all_files(tmp_path, "tmp") == []


# -- group commit ----------------------------------------------------------------------------


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(max_workers=2)
    yield pool
    pool.shutdown(wait=True)


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def test_callers_that_arrive_during_a_sync_share_the_next_one(
    tmp_path: Path, executor: ThreadPoolExecutor
) -> None:
    """The first fsync is held until 19 more callers queue; they then need exactly one more."""
    in_first = threading.Event()
    calls: list[int] = []

    def slow_fsync(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 1:
            in_first.set()
            wait_for(lambda: sync.pending == 19)

    sync = DirectorySync(tmp_path, executor, slow_fsync)
    threads = [threading.Thread(target=sync.commit) for _ in range(20)]
    threads[0].start()
    assert in_first.wait(10)
    for t in threads[1:]:
        t.start()
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads)
    assert len(calls) == sync.syncs == 2
    assert sync.pending == 0


def test_commit_returns_only_after_a_sync_that_began_after_it(
    tmp_path: Path, executor: ThreadPoolExecutor
) -> None:
    log: list[tuple[str, int]] = []
    lock = threading.Lock()
    counter = iter(range(10**6))

    def fsync(fd: int) -> None:
        with lock:
            n = next(counter)
            log.append(("start", n))
        time.sleep(random.uniform(0, 0.003))
        with lock:
            log.append(("end", n))

    sync = DirectorySync(tmp_path, executor, fsync)

    def caller(i: int) -> None:
        for _ in range(5):
            with lock:
                log.append(("call", i))
            sync.commit()
            with lock:
                log.append(("return", i))
            time.sleep(random.uniform(0, 0.002))

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sync.syncs < 60  # some batching happened
    for i in range(12):
        calls = [k for k, e in enumerate(log) if e == ("call", i)]
        returns = [k for k, e in enumerate(log) if e == ("return", i)]
        assert len(calls) == len(returns) == 5
        for called, returned in zip(calls, returns, strict=True):
            covered = [
                n
                for k, (what, n) in enumerate(log[called:returned], called)
                if what == "start" and ("end", n) in log[k:returned]
            ]
            assert covered, f"caller {i} returned without a sync that began after its call"


def test_a_failed_group_sync_fails_every_member(
    tmp_path: Path, executor: ThreadPoolExecutor
) -> None:
    in_first = threading.Event()
    calls: list[int] = []

    def failing_fsync(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 1:
            in_first.set()
            wait_for(lambda: sync.pending == 5)
        elif len(calls) == 2:
            raise OSError(errno.EIO, "disk on fire")

    sync = DirectorySync(tmp_path, executor, failing_fsync)
    errors: list[BaseException | None] = []

    def caller() -> None:
        try:
            sync.commit()
            errors.append(None)
        except OSError as exc:
            errors.append(exc)

    first = threading.Thread(target=caller)
    first.start()
    assert in_first.wait(10)
    rest = [threading.Thread(target=caller) for _ in range(5)]
    for t in rest:
        t.start()
    for t in [first, *rest]:
        t.join(10)
    assert errors.count(None) == 1
    failed = [e for e in errors if e is not None]
    assert len(failed) == 5
    assert all(isinstance(e, OSError) and e.errno == errno.EIO for e in failed)
    sync.commit()  # a later batch gets its own, working, fsync
    assert len(calls) == 3


@needs_proc_fd
def test_concurrent_deliveries_from_50_tasks(tmp_path: Path) -> None:
    dir_syncs: list[Path] = []
    lock = threading.Lock()

    def slow_dir_fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            with lock:
                dir_syncs.append(fd_path(fd))
            time.sleep(0.01)  # a slow disk makes batching certain
        os.fsync(fd)

    async def main() -> list[list[str]]:
        store = MaildirStore(tmp_path, hostname="h", fsync_fn=slow_dir_fsync, workers=8)
        try:
            return await asyncio.gather(
                *(store.deliver([f"user{i % 3}"], f"message {i}\r\n".encode()) for i in range(50))
            )
        finally:
            await store.close()

    names = asyncio.run(main())
    flat = [n for ns in names for n in ns]
    assert len(set(flat)) == 50
    for i, [name] in enumerate(names):
        assert (
            tmp_path / f"user{i % 3}" / "new" / name
        ).read_bytes() == f"message {i}\r\n".encode()
    assert all_files(tmp_path, "tmp") == []
    # mailbox creation, once per user: its directory, then the root holding its entry
    setup = [p for p in dir_syncs if p.name != "new"]
    assert sorted(setup) == sorted([tmp_path / f"user{i}" for i in range(3)] + [tmp_path] * 3)
    assert len(dir_syncs) - len(setup) < 25, dir_syncs


@needs_proc_fd
def test_waiting_deliveries_hold_no_thread(tmp_path: Path) -> None:
    """One worker leads a blocked fsync; the other stages 19 more, which wait on the loop."""
    new_dir_syncs: list[int] = []

    def fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode) and fd_path(fd).name == "new":
            new_dir_syncs.append(fd)
            if len(new_dir_syncs) == 1:
                wait_for(lambda: store._dirsync(tmp_path / "alice" / "new").pending == 19)

    store = MaildirStore(tmp_path, hostname="h", fsync_fn=fsync, workers=2)

    async def main() -> list[list[str]]:
        try:
            return await asyncio.gather(*(store.deliver(["alice"], b"m%d" % i) for i in range(20)))
        finally:
            await store.close()

    names = asyncio.run(main())
    assert len({n for [n] in names}) == 20
    assert len(new_dir_syncs) == 2


def test_deliver_keeps_the_event_loop_running(tmp_path: Path) -> None:
    def slow_fsync(fd: int) -> None:
        time.sleep(0.05)

    async def main() -> int:
        store = MaildirStore(tmp_path, fsync_fn=slow_fsync)
        ticks = 0
        delivery = asyncio.ensure_future(store.deliver(["alice"], b"m"))
        while not delivery.done():
            ticks += 1
            await asyncio.sleep(0.005)
        await delivery
        await store.close()
        return ticks

    assert asyncio.run(main()) >= 5


def test_closed_store_refuses_deliveries(tmp_path: Path) -> None:
    async def main() -> None:
        store = MaildirStore(tmp_path)
        await store.deliver(["a"], b"m")
        await store.close()
        with pytest.raises(RuntimeError):
            await store.deliver(["a"], b"m")

    asyncio.run(main())


def test_workers_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        MaildirStore(tmp_path, workers=0)


def test_request_without_inline_syncs_in_the_executor(
    tmp_path: Path, executor: ThreadPoolExecutor
) -> None:
    threads: list[int] = []
    sync = DirectorySync(tmp_path, executor, lambda fd: threads.append(threading.get_ident()))
    assert sync.request().result(timeout=10) is None
    assert sync.syncs == 1 and threads != [threading.get_ident()]


CRASH_CHILD = """
import asyncio, sys
from pathlib import Path
from reference_server.storage import MaildirStore

async def main():
    store = MaildirStore(Path(sys.argv[1]), hostname="h")
    async def one(i):
        while True:
            body = (b"%d:" % i) * (1000 + i * 37)
            [name] = await store.deliver(["u%d" % (i % 3)], body)
            print(i, name, flush=True)  # printed only once durable: the "250"
            i += 20
    await asyncio.gather(*(one(i) for i in range(20)))

asyncio.run(main())
"""


def test_sigkill_under_load_loses_no_acknowledged_message(tmp_path: Path) -> None:
    """Not power loss (that needs a VM), but every acknowledged file is whole, none half."""
    acked: list[tuple[int, str]] = []
    with subprocess.Popen(
        [sys.executable, "-c", CRASH_CHILD, str(tmp_path)], stdout=subprocess.PIPE
    ) as child:
        assert child.stdout is not None
        while len(acked) < 300:
            number, name = child.stdout.readline().split()
            acked.append((int(number), name.decode()))
        child.send_signal(signal.SIGKILL)
        rest = child.stdout.read()
        child.wait(10)
    assert child.returncode == -signal.SIGKILL
    for line in rest.split(b"\n")[:-1]:  # complete lines only
        number, name = line.split()
        acked.append((int(number), name.decode()))
    for i, acked_name in acked:
        body = (b"%d:" % i) * (1000 + i * 37)
        assert (tmp_path / f"u{i % 3}" / "new" / acked_name).read_bytes() == body
    for path in all_files(tmp_path, "new"):  # acknowledged or not, nothing partial
        i = int(path.read_bytes().split(b":", 1)[0])
        assert path.read_bytes() == (b"%d:" % i) * (1000 + i * 37)
        assert path.name.endswith(f",S={path.stat().st_size}")
