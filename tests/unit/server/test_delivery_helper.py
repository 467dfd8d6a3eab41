"""MaildirStore(helper_process=True): deliveries written by a real helper process.

Each test starts real helpers (``python -m reference_server.storage.stager``) over a
socket pair; nothing is mocked. What is checked: the files are the same as the
in-process path writes, every failure reaches the caller as the same exception,
a helper that dies fails only what it held and is replaced, and a helper never
outlives the server that started it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

import reference_server
from reference_server.storage.maildir import MaildirStore
from reference_server.storage.stager import DeliveryHelper, _helper_env

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="helper tests use /proc")

MESSAGE = b"Subject: hello\r\n\r\nbody\r\n"
T = TypeVar("T")


def helper_store(root: Path, **kwargs: object) -> MaildirStore:
    return MaildirStore(root, hostname="test", helper_process=True, **kwargs)  # type: ignore[arg-type]


def run_with(root: Path, body: Callable[[MaildirStore], Awaitable[T]]) -> T:
    """``body(store)`` on a new event loop, with a helper store closed afterwards."""

    async def main() -> T:
        store = helper_store(root)
        try:
            return await body(store)
        finally:
            await store.close()

    return asyncio.run(main())


def new_files(root: Path, user: str) -> list[Path]:
    return sorted((root / user / "new").iterdir())


def helper_pid(store: MaildirStore) -> int:
    helper = store._helper
    assert helper is not None and helper.process is not None
    return helper.process.pid


def gone(pid: int) -> bool:
    """The process has exited (a zombie counts: it runs no more)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def test_the_helper_stores_byte_identical_files_and_answers_their_names(tmp_path: Path) -> None:
    async def body(store: MaildirStore) -> list[str]:
        return await store.deliver(["alice", "bob", "alice"], MESSAGE)

    names = run_with(tmp_path, body)
    assert names[0] == names[2] and len(set(names)) == 2  # one copy per user
    for user, name in (("alice", names[0]), ("bob", names[1])):
        (path,) = new_files(tmp_path, user)
        assert path.name == name and path.read_bytes() == MESSAGE
        assert name.endswith(f".test,S={len(MESSAGE)}")
        assert f"P{os.getpid()}Q" not in name  # written by the helper, not this process
        assert not list((tmp_path / user / "tmp").iterdir())


def test_many_deliveries_at_once_and_a_large_message(tmp_path: Path) -> None:
    large = b"X-Big: yes\r\n\r\n" + b"0123456789abcdef" * (3 * 1024 * 1024 // 16) + b"\r\n"

    async def body(store: MaildirStore) -> tuple[list[list[str]], list[str]]:
        small = await asyncio.gather(
            *(store.deliver([f"user{i % 5}"], MESSAGE + b"%d" % i) for i in range(200))
        )
        return small, await store.deliver(["big"], large)

    small, (big,) = run_with(tmp_path, body)
    assert sum(len(new_files(tmp_path, f"user{i}")) for i in range(5)) == 200
    assert len({name for (name,) in small}) == 200
    for i, (name,) in enumerate(small):
        assert (tmp_path / f"user{i % 5}" / "new" / name).read_bytes() == MESSAGE + b"%d" % i
    assert (tmp_path / "big" / "new" / big).read_bytes() == large


@pytest.mark.parametrize("users", [[], ["../escape"], ["ok", ".hidden"]])
def test_bad_names_are_refused_before_anything_is_sent(tmp_path: Path, users: list[str]) -> None:
    async def body(store: MaildirStore) -> None:
        with pytest.raises(ValueError):
            await store.deliver(users, MESSAGE)
        assert store._helper is None  # no helper was even started

    run_with(tmp_path, body)
    assert not (tmp_path / "ok").exists()


def test_a_storage_error_in_the_helper_is_an_oserror_here_and_the_helper_goes_on(
    tmp_path: Path,
) -> None:
    (tmp_path / "blocked").write_text("a file where the Maildir should be\n")

    async def body(store: MaildirStore) -> None:
        with pytest.raises(OSError) as caught:
            await store.deliver(["blocked"], MESSAGE)
        assert caught.value.errno is not None and caught.value.errno != 0
        assert "blocked" in str(caught.value)
        pid = helper_pid(store)
        await store.deliver(["fine"], MESSAGE)
        assert helper_pid(store) == pid  # the same helper

    run_with(tmp_path, body)
    assert (tmp_path / "blocked").is_file()
    assert len(new_files(tmp_path, "fine")) == 1


def test_a_helper_that_dies_fails_what_it_held_and_is_replaced(tmp_path: Path) -> None:
    async def body(store: MaildirStore) -> None:
        await store.deliver(["alice"], MESSAGE)
        first = helper_pid(store)
        os.kill(first, signal.SIGSTOP)  # holds the next delivery without answering
        held = asyncio.ensure_future(store.deliver(["alice"], MESSAGE))
        await asyncio.sleep(0.2)
        assert not held.done()
        os.kill(first, signal.SIGKILL)
        with pytest.raises(OSError, match="helper exited before storing"):
            await asyncio.wait_for(held, 10)
        await store.deliver(["alice"], MESSAGE)  # a new helper
        assert helper_pid(store) != first
        assert gone(first)

    run_with(tmp_path, body)
    assert 2 <= len(new_files(tmp_path, "alice")) <= 3  # the held one may not be stored


def test_close_lets_the_helper_finish_and_exit(tmp_path: Path) -> None:
    async def main() -> int:
        store = helper_store(tmp_path)
        await store.deliver(["alice"], MESSAGE)
        pending = [asyncio.ensure_future(store.deliver(["alice"], MESSAGE)) for _ in range(20)]
        await asyncio.sleep(0)  # written to the channel before it closes
        pid = helper_pid(store)
        helper = store._helper
        await asyncio.gather(*pending)
        await store.close()
        assert helper is not None and helper.process is not None
        assert helper.process.returncode == 0
        return pid

    pid = asyncio.run(main())
    assert gone(pid)
    assert len(new_files(tmp_path, "alice")) == 21


def test_the_helper_ignores_sigint_meant_for_the_terminal(tmp_path: Path) -> None:
    async def body(store: MaildirStore) -> None:
        await store.deliver(["alice"], MESSAGE)
        pid = helper_pid(store)
        os.kill(pid, signal.SIGINT)
        await asyncio.sleep(0.2)
        await store.deliver(["alice"], MESSAGE)
        assert helper_pid(store) == pid

    run_with(tmp_path, body)
    assert len(new_files(tmp_path, "alice")) == 2


def test_a_store_used_from_a_new_event_loop_gets_a_new_helper(tmp_path: Path) -> None:
    store = helper_store(tmp_path)

    async def deliver() -> int:
        await store.deliver(["alice"], MESSAGE)
        return helper_pid(store)

    first = asyncio.run(deliver())  # this loop closes; its helper is left behind
    second = asyncio.run(deliver())
    assert first != second
    assert wait_until(lambda: gone(first))
    asyncio.run(store.close())
    assert wait_until(lambda: gone(second))
    assert len(new_files(tmp_path, "alice")) == 2


def test_the_helper_exits_when_the_server_is_killed(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import asyncio, sys
        from pathlib import Path
        from reference_server.storage.maildir import MaildirStore

        async def main():
            store = MaildirStore(Path(sys.argv[1]), hostname="test", helper_process=True)
            await store.deliver(["alice"], b"Subject: x\\r\\n\\r\\nx\\r\\n")
            print(store._helper.process.pid, flush=True)
            await asyncio.sleep(60)

        asyncio.run(main())
        """
    )
    server = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        pid = int(server.stdout.readline())
        assert not gone(pid)
        server.kill()
        server.wait(10)
        assert wait_until(lambda: gone(pid)), "the helper outlived the server"
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        assert server.stdout is not None
        server.stdout.close()
    assert len(new_files(tmp_path, "alice")) == 1


def test_a_helper_that_cannot_run_leaves_deliveries_to_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(DeliveryHelper, "python", "/bin/false")  # exits at once

    async def main() -> list[str]:
        store = helper_store(tmp_path)
        try:
            with pytest.raises(OSError, match=r"helper (exited before storing|is not running)"):
                await store.deliver(["alice"], MESSAGE)
            names = await store.deliver(["alice"], MESSAGE)
            assert not store.helper_process and store._helper is None
            return names
        finally:
            await store.close()

    with caplog.at_level(logging.ERROR, logger="reference_server.storage"):
        (name,) = asyncio.run(main())
    assert f"P{os.getpid()}Q" in name  # written by this process' threads
    assert [p.name for p in new_files(tmp_path, "alice")] == [name]
    assert "deliveries now go through threads" in caplog.text


def test_the_helper_finds_the_package_from_any_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server may have found the package through a sys.path entry of its own: the
    helper's path starts with the directory that holds it, whatever PYTHONPATH was."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", "/nonexistent")
    package_parent = Path(reference_server.__file__).resolve().parents[1]
    assert _helper_env()["PYTHONPATH"].split(os.pathsep) == [str(package_parent), "/nonexistent"]

    async def body(store: MaildirStore) -> None:
        await store.deliver(["alice"], MESSAGE)
        assert store._helper is not None and store._helper.answered == 1

    run_with(tmp_path / "mail", body)


def test_close_while_the_helper_is_starting_stops_it_and_answers(tmp_path: Path) -> None:
    """The delivery that asked for the helper gets a definite answer either way:
    stored (it reached the helper first), or an OSError with nothing stored."""

    async def main() -> tuple[DeliveryHelper, list[str] | BaseException]:
        store = helper_store(tmp_path)
        delivery = asyncio.ensure_future(store.deliver(["alice"], MESSAGE))
        await asyncio.sleep(0)  # the delivery has asked for a helper; it has not started
        helper = store._helper
        assert helper is not None and helper.process is None
        await asyncio.wait_for(store.close(), 30)
        (outcome,) = await asyncio.wait_for(asyncio.gather(delivery, return_exceptions=True), 1)
        return helper, outcome

    helper, outcome = asyncio.run(main())
    assert helper.process is not None and helper.process.returncode == 0
    stored = [p.name for p in new_files(tmp_path, "alice")] if (tmp_path / "alice").exists() else []
    if isinstance(outcome, BaseException):
        assert isinstance(outcome, OSError) and not stored
    else:
        assert stored == outcome


def test_close_answers_every_delivery_in_flight(tmp_path: Path) -> None:
    async def main() -> list[list[str]]:
        store = helper_store(tmp_path)
        await store.deliver(["alice"], MESSAGE)
        pid = helper_pid(store)
        os.kill(pid, signal.SIGSTOP)  # the next ones wait in the helper's socket
        flight = [asyncio.ensure_future(store.deliver(["alice"], MESSAGE)) for _ in range(5)]
        await asyncio.sleep(0.1)
        closing = asyncio.ensure_future(store.close())
        await asyncio.sleep(0.2)
        assert not closing.done() and not any(f.done() for f in flight)
        os.kill(pid, signal.SIGCONT)
        await asyncio.wait_for(closing, 30)
        return [f.result() for f in flight]

    names = asyncio.run(main())
    assert len(new_files(tmp_path, "alice")) == 6
    assert {n for (n,) in names} <= {p.name for p in new_files(tmp_path, "alice")}


def test_a_name_with_bytes_that_are_not_utf8_crosses_as_a_file_name_does(tmp_path: Path) -> None:
    user = os.fsdecode(b"caf\xe9")  # Latin-1 bytes: a lone surrogate in the str

    async def body(store: MaildirStore) -> list[str]:
        return await store.deliver([user], MESSAGE)

    (name,) = run_with(tmp_path, body)
    assert (tmp_path / os.fsdecode(b"caf\xe9") / "new" / name).read_bytes() == MESSAGE


def test_a_helper_that_cannot_be_spawned_leaves_deliveries_to_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(DeliveryHelper, "python", str(tmp_path / "no-such-python"))

    async def body(store: MaildirStore) -> list[str]:
        with pytest.raises(OSError):
            await store.deliver(["alice"], MESSAGE)  # the spawn fails: 451 for this one
        names = await store.deliver(["alice"], MESSAGE)
        assert not store.helper_process
        return names

    (name,) = run_with(tmp_path, body)
    assert f"P{os.getpid()}Q" in name
