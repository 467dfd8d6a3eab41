"""Fuzz the reference server in memory: no sockets, no TLS (``mailharness fuzz --in-memory``).

:class:`MemoryConnector` is a :class:`~conformance.fuzz.oracle.Connector` whose
channels are :class:`~reference_server.memory.MemoryClient` connections to a
:class:`~reference_server.memory.MemoryServer`. The oracle stays synchronous: the
connector owns a private asyncio event loop and runs it, in the calling thread,
only for as long as one ``send`` or ``recv`` takes (``loop.run_until_complete``).
The server's sessions are tasks of that loop, so they make progress exactly while
the oracle waits for an answer; between two calls nothing runs, which an
in-memory server does not mind (no socket has to be serviced, and a timer that
came due fires at the next call). No thread hop per step keeps this fast; the
price is that it cannot be used from inside a running event loop (a coroutine
must run the fuzzer in a worker thread, ``asyncio.to_thread``).

Sessions run as after TLS (``assume_tls``): the login prefix has no STARTTLS, and
STARTTLS/STLS in a dialogue get the server's "TLS already active" refusal.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import selectors
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from conformance.fuzz.dialogue import Login, LoginFailed
from conformance.fuzz.oracle import Channel, Connector
from conformance.targets import Account, Service, Target, TlsMode
from reference_server.config import ServerConfig
from reference_server.devsetup import dev_config
from reference_server.memory import MemoryClient, MemoryServer

__all__ = ["MemoryChannel", "MemoryConnector", "dev_memory_target", "scratch_base"]


def _pump(loop: asyncio.AbstractEventLoop, done: Callable[[], bool], timeout: float) -> bool:
    """Run ``loop`` in this thread until ``done()`` or ``timeout`` seconds passed;
    ``False`` (and nothing run) if the loop is not a stock asyncio loop.

    ``run_until_complete`` would do, but costs a task, a done-callback and one more
    loop iteration (for the stop) on every answer; this runs the loop's iterations
    one at a time and checks ``done`` after each (docs/benchmarks.md, issue 8).
    ``_run_once`` is private to asyncio's base loop (3.11 to 3.14 have it); any
    other loop takes the public way.
    """
    run_once = getattr(loop, "_run_once", None)
    if run_once is None or loop.is_running():
        return False
    ready = getattr(loop, "_ready", None)  # the loop's queue of callbacks due now
    end = loop.time() + timeout
    alarm: asyncio.TimerHandle | None = None
    asyncio.events._set_running_loop(loop)
    try:
        while not done() and loop.time() < end:
            if alarm is None and not ready:  # the next iteration may block: not past the end
                alarm = loop.call_at(end, _nothing)
            run_once()
    finally:
        asyncio.events._set_running_loop(None)
        if alarm is not None:
            alarm.cancel()
    return True


def _nothing() -> None:
    pass


class _LazySelector(selectors.DefaultSelector):
    """A selector that skips most non-blocking polls.

    The loop polls its selector once per iteration, with timeout 0 while callbacks
    are ready; in memory no socket is registered (only the loop's self-pipe, whose
    callbacks are queued anyway), yet each poll is a system call, and here one of
    the largest costs of a fuzz step. A poll that may block, and every 64th, still
    goes to the kernel, so a wake-up from another thread is never lost.
    """

    _skipped = 0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is not None and timeout <= 0 and self._skipped < 64:
            self._skipped += 1
            return []
        self._skipped = 0
        return super().select(timeout)


class MemoryChannel:
    """One in-memory connection, driven by the connector's loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, client: MemoryClient) -> None:
        self._loop, self._client = loop, client

    def send(self, data: bytes) -> None:
        # OSError if closed; the loop runs only when the server holds back too much
        if not self._client.send_nowait(data):
            self._loop.run_until_complete(self._client.send(b""))

    def recv(self, timeout: float) -> bytes:
        client = self._client
        try:
            data = client.recv_nowait()
            if data is None:
                if not _pump(self._loop, client.readable, timeout):
                    return self._loop.run_until_complete(client.recv(timeout))
                data = client.recv_nowait()
        except ConnectionAbortedError:
            return b""
        if data is None:
            raise TimeoutError(f"nothing received within {timeout:g}s")
        return data

    def starttls(self, login: Login, deadline: float) -> None:
        raise LoginFailed("no TLS in memory: the sessions run as after STARTTLS already")

    def close(self) -> None:
        self._client.close()
        # let the session see the FIN (or reset) and end now, not at the next dialogue
        self._loop.run_until_complete(asyncio.sleep(0))


class MemoryConnector:
    """The reference server's listener ``listener`` of ``config``, in memory.

    Use as a context manager (or call :meth:`close`): it stops the server (closing
    its storage) and the loop.
    """

    def __init__(self, config: ServerConfig, listener: str, *, assume_tls: bool = True) -> None:
        self.listener = listener
        self._loop = asyncio.SelectorEventLoop(_LazySelector())
        try:
            self.server = MemoryServer(config, assume_tls=assume_tls)
            self.server.listener(listener)  # KeyError now rather than at the first dialogue
        except BaseException:
            self._loop.close()
            raise

    def open(self) -> Channel:
        client = self._loop.run_until_complete(self.server.connect(self.listener))
        return MemoryChannel(self._loop, client)

    def sibling(self, listener: str) -> Connector:
        """A connector to another listener of the same in-memory server, on the same
        loop (the retrieval check reads the mailboxes SMTP delivered to over ``imap``).

        Raises:
            KeyError: no such listener.
        """
        self.server.listener(listener)
        return _Sibling(self, listener)

    def close(self) -> None:
        if self._loop.is_closed():
            return
        try:
            self._loop.run_until_complete(self.server.stop())
            pending = asyncio.all_tasks(self._loop)
            for task in pending:
                task.cancel()
            if pending:
                with contextlib.suppress(BaseException):
                    self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
        finally:
            self._loop.close()

    def __enter__(self) -> MemoryConnector:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@dataclass(frozen=True)
class _Sibling:
    parent: MemoryConnector
    listener: str

    def open(self) -> Channel:
        loop = self.parent._loop
        return MemoryChannel(
            loop, loop.run_until_complete(self.parent.server.connect(self.listener))
        )


def scratch_base() -> str | None:
    """Where an in-memory run keeps the server's throwaway data: ``/dev/shm`` (tmpfs)
    when this machine has it, else the system's temporary directory (``None``).

    The server still writes and fsyncs every message as it would on disk; on tmpfs an
    fsync costs microseconds instead of about a millisecond, and a fuzz run delivers
    thousands of messages (docs/benchmarks.md).
    """
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK):
        return shm
    return None


def dev_memory_target(base_dir: Path) -> tuple[ServerConfig, Target]:
    """A development setup (:func:`reference_server.devsetup.dev_config`) in ``base_dir``
    and a :class:`Target` describing it for the strategies and the scenario writer.

    The services carry the listeners' names and TLS modes; host ``memory`` and port 0
    say they are not reachable over the network.
    """
    config, passwords = dev_config(base_dir)
    services = {
        name: Service(name=name, host="memory", port=0, tls=TlsMode(lst.tls.value))
        for name, lst in config.listeners.items()
    }
    domain = config.domains[0]
    accounts = {
        name: Account(name=name, address=f"{name}@{domain}", username=name, password=password)
        for name, password in passwords.items()
    }
    target = Target(
        host="memory",
        domain=domain,
        services=services,
        accounts=accounts,
        server_name=config.hostname,
    )
    return config, target
