"""Maildir deliveries in a helper process, so the event loop never shares a GIL with them.

Why: with the staging threads in the server's own process (``MaildirStore.deliver``'s
default), every write, fsync and rename of a delivery ends with its thread taking
the GIL back, and the event loop waits behind those hand-offs. Measured with
Postfix's smtp-source (20 sessions, a new connection per 1 KB message) on a
2-core machine: 1,350-1,460 msgs/s with threads, 1,970-2,080 with the same
:class:`~reference_server.storage.maildir.MaildirStore` code run in a helper
process, and a third of the CPU idle went to work (docs/benchmarks.md).

The helper (``python -m reference_server.storage.stager``) runs
:meth:`MaildirStore.deliver_sync` in a pool of threads, so it keeps the same
durability steps (``tmp/``, fsync, rename into ``new/``, fsync of ``new/``, with
group commit), and answers each delivery only once they are done. The server
answers 250 only after that answer.

The wire between the two is a socket pair, one frame per delivery each way::

    request:  !QII  job id, length of the user names, length of the message
              user names joined by NUL, then the message bytes
    response: !QBI  job id, status (0 stored, 1 OSError, 2 ValueError), payload length
              stored: the file names joined by NUL; else "errno NUL text"

If the helper dies, every delivery in flight fails with an ``OSError`` (the caller
answers 451; the message may or may not be stored: a possible duplicate, never a
loss) and the next delivery starts a new helper. If the server dies, the helper
sees the socket close, finishes what it had been given, and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO, Final

__all__ = ["DeliveryHelper"]

log = logging.getLogger("reference_server.storage")

_REQUEST: Final = struct.Struct("!QII")
_RESPONSE: Final = struct.Struct("!QBI")
_STORED, _OS_ERROR, _VALUE_ERROR = 0, 1, 2
_STOP_TIMEOUT: Final = 30.0  # seconds for the helper to finish and exit on close
_ONE_WRITE: Final = 256 * 1024  # messages up to this size go out with their header
# names and texts cross as file names do: UTF-8, undecodable bytes kept (PEP 383)
_CODING, _ERRORS = "utf-8", "surrogateescape"


class DeliveryHelper:
    """One helper process and the deliveries waiting on it, for one event loop.

    Args:
        root: the Maildirs' root (as :class:`MaildirStore`'s).
        hostname: the host part of the file names (already sanitised).
        fsync: whether the helper fsyncs (``False`` only for throwaway test data).
        workers: the helper's delivery threads (file fsyncs in flight at once).
    """

    python = sys.executable  # the helper's interpreter (tests swap in a broken one)

    def __init__(self, root: Path, *, hostname: str, fsync: bool, workers: int) -> None:
        self.root = root
        self.hostname = hostname
        self.fsync = fsync
        self.workers = workers
        self.loop: asyncio.AbstractEventLoop | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None  # ours: closed here on any path
        self._inbox = bytearray()  # answers not yet complete
        self._outbox = bytearray()  # requests the socket did not take yet
        self._waiting: dict[int, asyncio.Future[list[str]]] = {}
        self._next_job = 0
        self._alive = False
        self.answered = 0  # deliveries the helper answered (a helper that never did is broken)

    @property
    def alive(self) -> bool:
        """Started, and neither closed nor lost."""
        return self._alive

    async def start(self) -> None:
        """Spawn the helper and connect to it (it reads once its interpreter is up)."""
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        try:
            command = [
                self.python,
                "-m",
                "reference_server.storage.stager",
                "--fd",
                str(theirs.fileno()),
                "--root",
                str(self.root),
                "--hostname",
                self.hostname,
                "--workers",
                str(self.workers),
            ]
            if not self.fsync:
                command.append("--no-fsync")
            self.process = subprocess.Popen(
                command, pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, env=_helper_env()
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        loop.add_reader(ours.fileno(), self._readable)
        self.loop, self._sock, self._alive = loop, ours, True

    async def deliver(self, users: Sequence[str], message: bytes) -> list[str]:
        """Have the helper store ``message`` for ``users`` (checked names); their file names.

        Raises:
            OSError: storing failed, or the helper died meanwhile.
            ValueError: the helper refused a name.
        """
        if not self._alive or self.loop is None:
            raise OSError(errno.EIO, "the delivery helper is not running")
        self._next_job += 1
        job = self._next_job
        waiter: asyncio.Future[list[str]] = self.loop.create_future()
        self._waiting[job] = waiter
        names = "\0".join(users).encode(_CODING, _ERRORS)
        header = _REQUEST.pack(job, len(names), len(message)) + names
        if len(message) <= _ONE_WRITE:
            self._send(header + message)  # one send: the usual case
        else:
            self._send(header)  # no copy of a large message
            self._send(message)
        return await waiter

    def _send(self, data: bytes) -> None:
        """Send now what the socket takes; the rest when it is writable (in order)."""
        if self._sock is None or self.loop is None:
            return  # lost meanwhile: the waiter has its OSError already
        if not self._outbox:
            try:
                sent = self._sock.send(data)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                self._lost(exc)
                return
            if sent == len(data):
                return
            data = data[sent:]
            self.loop.add_writer(self._sock.fileno(), self._writable)
        self._outbox += data

    def _writable(self) -> None:
        if self._sock is None or self.loop is None:
            return
        try:
            sent = self._sock.send(self._outbox)
        except BlockingIOError:
            return
        except OSError as exc:
            self._lost(exc)
            return
        del self._outbox[:sent]
        if not self._outbox:
            self.loop.remove_writer(self._sock.fileno())

    def _readable(self) -> None:
        if self._sock is None:
            return
        try:
            data = self._sock.recv(1 << 20)
        except BlockingIOError:
            return
        except OSError as exc:
            self._lost(exc)
            return
        if not data:
            self._lost(None)
            return
        buf = self._inbox
        buf += data
        start, size = 0, _RESPONSE.size
        while len(buf) - start >= size:
            job, status, length = _RESPONSE.unpack_from(buf, start)
            end = start + size + length
            if len(buf) < end:
                break
            self._answer(job, status, bytes(buf[start + size : end]))
            start = end
        if start:
            del buf[:start]

    def _answer(self, job: int, status: int, payload: bytes) -> None:
        self.answered += 1
        waiter = self._waiting.pop(job, None)
        if waiter is None or waiter.done():  # cancelled: the message may still be stored
            return
        if status == _STORED:
            waiter.set_result(payload.decode(_CODING, _ERRORS).split("\0"))
            return
        code, _, text = payload.decode("utf-8", "replace").partition("\0")
        if status == _VALUE_ERROR:
            waiter.set_exception(ValueError(text))
        else:
            waiter.set_exception(OSError(int(code) if code.isdigit() else errno.EIO, text))

    def _lost(self, exc: Exception | None) -> None:
        """The channel is closed or broken: fail whatever waits, and let go of the socket."""
        was_alive, self._alive = self._alive, False
        self._disconnect()
        if was_alive:
            log.warning("the delivery helper's channel closed (%s); it is restarted", exc)
        self._fail_waiting("the delivery helper exited before storing the message")

    def _fail_waiting(self, why: str) -> None:
        waiting, self._waiting = self._waiting, {}
        for waiter in waiting.values():
            if not waiter.done():  # the message may be stored or not: the caller says 451
                waiter.set_exception(OSError(errno.EIO, why))

    def _disconnect(self) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        loop = self.loop
        if loop is not None and not loop.is_closed():
            loop.remove_reader(sock.fileno())
            loop.remove_writer(sock.fileno())
        sock.close()  # the helper reads EOF: it finishes what it was given and exits

    async def close(self) -> None:
        """Take no more deliveries, wait for the answers to those in flight, then let the
        helper exit (it finishes whatever it still holds first)."""
        self._alive = False
        waiting = [w for w in self._waiting.values() if not w.done()]
        if waiting and self._sock is not None:  # the loop still sends and reads for them
            _, late = await asyncio.wait(waiting, timeout=_STOP_TIMEOUT)
            if late:
                log.warning("%d deliveries unanswered after %gs: closing", len(late), _STOP_TIMEOUT)
        self._disconnect()
        self._fail_waiting("the delivery helper was stopped before storing the message")
        process = self.process
        if process is None:
            return
        try:
            await asyncio.to_thread(process.wait, _STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            log.warning("the delivery helper did not exit in %gs: killed", _STOP_TIMEOUT)
            process.kill()
            await asyncio.to_thread(process.wait)

    def kill(self) -> None:
        """Stop the helper now (its event loop is gone: nobody waits for an answer)."""
        self._alive = False
        self._disconnect()
        self._waiting = {}
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=5)


def _helper_env() -> dict[str, str]:
    """This environment, with the directory holding ``reference_server`` first on the
    helper's path: the server may have found the package through a ``sys.path`` entry
    of its own, which a new interpreter would not have."""
    env = dict(os.environ)
    here = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
    return env


# -- the helper process -----------------------------------------------------------------


def _read_exactly(stream: BinaryIO, n: int) -> bytes | None:
    """``n`` bytes, or ``None`` at end of stream (only before the first byte)."""
    data = stream.read(n)
    if len(data) == n:
        return data
    if data:
        raise EOFError("the server closed the channel in the middle of a delivery")
    return None


def serve(channel: socket.socket, root: Path, *, hostname: str, fsync: bool, workers: int) -> None:
    """The helper's loop: one delivery per frame, answered once stored (or failed)."""
    from reference_server.storage.maildir import MaildirStore

    store = MaildirStore(root, hostname=hostname, fsync=fsync, workers=workers)
    send_lock = threading.Lock()

    def answer(job: int, status: int, text: str) -> None:
        payload = text.encode(_CODING, _ERRORS)
        with send_lock, contextlib.suppress(OSError):  # the server is gone: nobody listens
            channel.sendall(_RESPONSE.pack(job, status, len(payload)) + payload)

    def deliver(job: int, users: list[str], message: bytes) -> None:
        try:
            names = store.deliver_sync(users, message)
        except ValueError as exc:
            answer(job, _VALUE_ERROR, f"0\0{exc}")
        except OSError as exc:
            answer(job, _OS_ERROR, f"{exc.errno or errno.EIO}\0{exc}")
        except Exception as exc:  # the caller must hear of it, whatever it is
            answer(job, _OS_ERROR, f"{errno.EIO}\0{type(exc).__name__}: {exc}")
        else:
            answer(job, _STORED, "\0".join(names))

    incoming = channel.makefile("rb")  # buffered: a frame usually takes one recv
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="deliver") as pool:
        while True:
            header = _read_exactly(incoming, _REQUEST.size)
            if header is None:
                break  # the server closed (or died): finish the rest and exit
            job, names_length, message_length = _REQUEST.unpack(header)
            names = _read_exactly(incoming, names_length) if names_length else b""
            message = _read_exactly(incoming, message_length) if message_length else b""
            if names is None or message is None:
                raise EOFError("the server closed the channel in the middle of a delivery")
            pool.submit(deliver, job, names.decode(_CODING, _ERRORS).split("\0"), message)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m reference_server.storage.stager",
        description="The reference server's delivery helper (started by the server itself).",
    )
    parser.add_argument("--fd", type=int, required=True, help="the socket to the server")
    parser.add_argument("--root", type=Path, required=True, help="the Maildirs' root")
    parser.add_argument("--hostname", required=True, help="host part of the file names")
    parser.add_argument("--workers", type=int, default=8, help="delivery threads")
    parser.add_argument("--no-fsync", action="store_true", help="throwaway test data only")
    args = parser.parse_args(argv)
    # The server stops us by closing the channel, after its last delivery: a Ctrl-C
    # sent to the whole process group must not cut deliveries short.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    channel = socket.socket(fileno=args.fd)
    try:
        serve(
            channel,
            args.root,
            hostname=args.hostname,
            fsync=not args.no_fsync,
            workers=args.workers,
        )
    finally:
        channel.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
