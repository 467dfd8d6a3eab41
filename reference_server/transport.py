"""The server's byte pipe: an asyncio Protocol that a session coroutine reads from.

Why a Protocol and not streams: on STARTTLS the server must drop every byte
the client sent in cleartext after the STARTTLS command (RFC 3207 §4.2; the
"command injection" of CVE-2011-0411). With a Protocol all received bytes
pass through :meth:`Connection.data_received` into our own inbox, so
:meth:`Connection.start_tls` can discard exactly those bytes before the
handshake; a StreamReader would keep its own buffer we cannot see.

Flow control both ways: reading pauses while the inbox holds more than
``high_water`` bytes the session has not taken, and :meth:`drain` waits while
the transport's write buffer is full.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import cast

__all__ = ["TLS_SHUTDOWN_TIMEOUT", "Connection", "ConnectionTimeout"]


class ConnectionTimeout(Exception):
    """The client sent nothing within the deadline."""


log = logging.getLogger("reference_server.tls")

_TIMED_OUT = object()

# RFC 8446 §6.1: we send close_notify, but need not wait long for the peer's; a
# client that never answers it must not hold the socket for asyncio's default 30 s.
TLS_SHUTDOWN_TIMEOUT = 0.5


def _expire(waiter: asyncio.Future[object]) -> None:
    if not waiter.done():
        waiter.set_result(_TIMED_OUT)


class Connection(asyncio.BufferedProtocol):
    """One accepted connection; ``handler(conn)`` runs as its session task."""

    def __init__(
        self,
        handler: Callable[[Connection], Awaitable[None]],
        *,
        high_water: int = 1 << 20,
        on_lost: Callable[[Connection], None] | None = None,
    ) -> None:
        self._handler = handler
        self._high_water = high_water
        self._on_lost = on_lost
        self.transport: asyncio.Transport | None = None
        self.peer: tuple[str, int] = ("", 0)
        self.tls = False
        # False when the transport cannot carry TLS (the in-memory pipe of
        # reference_server.memory): sessions then neither offer nor accept STARTTLS/STLS
        self.can_start_tls = True
        self._inbox = bytearray()
        self._rbuf = memoryview(bytearray(65536))
        self._eof = False
        self._lost = False
        self._paused = False
        self._waiter: asyncio.Future[object] | None = None
        self._can_write = asyncio.Event()
        self._can_write.set()
        self.task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop  # set by connection_made

    # -- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # other loops' transports (uvloop's) implement the interface without subclassing it
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.peer = (str(peer[0]), int(peer[1])) if peer else ("", 0)
        self.tls = transport.get_extra_info("sslcontext") is not None
        # kept: asyncio.get_running_loop() makes a getpid() system call on every call
        # (Python 3.11), and read() needs the loop several times per message
        self._loop = asyncio.get_running_loop()
        self.task = self._loop.create_task(self._run())

    def get_buffer(self, sizehint: int) -> memoryview:
        # one preallocated buffer per connection: asyncio's default reading
        # allocates (and maps) 256 KiB for every recv
        return self._rbuf

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(self._rbuf[:nbytes]))

    def data_received(self, data: bytes) -> None:
        self._inbox += data
        if len(self._inbox) > self._high_water and not self._paused and self.transport:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = self._eof = True
        self._can_write.set()
        self._wake()
        if self._on_lost is not None:
            self._on_lost(self)

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    # -- for the session -----------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._handler(self)
        finally:
            self.close()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def read(self, timeout: float) -> bytes:
        """Everything received so far (at least one byte), or ``b""`` at EOF.

        Raises:
            ConnectionTimeout: nothing arrived within ``timeout`` seconds.
        """
        if not self._inbox and not self._eof:
            loop = self._loop
            waiter = self._waiter = loop.create_future()
            # a timer handle, cheaper than wait_for on every read of a busy server
            timer = loop.call_later(timeout, _expire, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
            if waiter.result() is _TIMED_OUT:
                raise ConnectionTimeout(f"no data within {timeout:g}s")
        data = bytes(self._inbox)
        self._inbox.clear()
        if self._paused and self.transport is not None and not self._lost:
            self._paused = False
            self.transport.resume_reading()
        return data

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self._lost:
            self.transport.write(data)

    async def drain(self) -> None:
        await self._can_write.wait()

    @property
    def closed(self) -> bool:
        return self._lost

    def take_unread(self) -> bytes:
        """Drop and return bytes received but not yet read (STARTTLS discards them)."""
        data = bytes(self._inbox)
        self._inbox.clear()
        return data

    async def start_tls(self, context: ssl.SSLContext, timeout: float = 30.0) -> bytes:
        """Upgrade to TLS; returns the cleartext bytes that were discarded first."""
        assert self.transport is not None
        await self.drain()
        dropped = self.take_unread()
        loop = asyncio.get_running_loop()
        new = await asyncio.wait_for(
            loop.start_tls(
                self.transport,
                self,
                context,
                server_side=True,
                ssl_shutdown_timeout=TLS_SHUTDOWN_TIMEOUT,
            ),
            timeout,
        )
        if new is None:
            raise ConnectionError("TLS handshake did not complete")
        self.transport = new
        self.tls = True
        return dropped

    async def upgrade(
        self, context: ssl.SSLContext, *, unread: bytes, timeout: float, who: str, after: str
    ) -> bool:
        """STARTTLS/STLS after the go-ahead was sent: the handshake, with cleartext dropped.

        ``unread`` is what the protocol reader held back; with the bytes still
        in this connection's inbox it is discarded, never executed (RFC 3207
        §4.2, RFC 2595 §4, RFC 9051 §6.2.1: the command injection of
        CVE-2011-0411), and logged with ``who`` (the session) and ``after``
        (the command and its rule).

        Returns:
            False if the handshake failed (logged); the session should end.
        """
        try:
            dropped = unread + await self.start_tls(context, timeout=timeout)
        except (OSError, TimeoutError, ConnectionError) as exc:
            log.info("%s: TLS handshake failed: %s", who, exc)
            return False
        if dropped:
            log.warning("%s: discarded %d cleartext bytes sent after %s", who, len(dropped), after)
        return True

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
