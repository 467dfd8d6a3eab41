"""Run the server in a background thread: for tests, ``mailharness check`` and scripts.

The server gets its own event loop in its own thread, so callers on any
loop (or none) can start it, learn the bound ports, and stop it cleanly.
"""

from __future__ import annotations

import asyncio
import threading
from types import TracebackType

from .app import MailServer
from .config import ServerConfig

__all__ = ["ServerThread"]


class ServerThread:
    """``with ServerThread(config) as srv: srv.bound["mx"] -> (host, port)``."""

    def __init__(self, config: ServerConfig, *, start_timeout: float = 30.0) -> None:
        self.config = config
        self.start_timeout = start_timeout
        self.server: MailServer | None = None
        self.bound: dict[str, tuple[str, int]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stopped: asyncio.Event | None = None
        self._error: BaseException | None = None

    def start(self) -> ServerThread:
        self._thread = threading.Thread(target=self._main, name="reference-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(self.start_timeout):
            raise TimeoutError(f"reference server did not start within {self.start_timeout:g}s")
        if self._error is not None:
            raise self._error
        return self

    def _main(self) -> None:
        asyncio.run(self._amain())

    async def _amain(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        try:
            self.server = MailServer(self.config)
            self.bound = await self.server.start()
        except BaseException as exc:  # reported to the starting thread
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        await self._stopped.wait()
        await self.server.stop()

    def stop(self, timeout: float = 10.0) -> None:
        if self._loop is not None and self._stopped is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
