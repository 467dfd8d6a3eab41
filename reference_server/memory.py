"""The reference server without sockets: real sessions over an in-memory byte pipe.

:class:`MemoryServer` builds a :class:`~reference_server.app.MailServer` from a
:class:`~reference_server.config.ServerConfig` (storage, accounts, listeners)
but opens nothing: no listening socket, no control socket, and no queue runner
(mail for other domains waits in the spool; nothing is relayed). Each
:meth:`MemoryServer.connect` makes the listener's own
:class:`~reference_server.transport.Connection` exactly as an accepted socket
would, attaches it to a :class:`MemoryTransport`, and the listener's session
runs on it in the current event loop (the greeting comes first, connection
limits and shutdown behave as on sockets). The test talks to it through the
returned :class:`MemoryClient`.

The pipe behaves like a TCP connection on loopback:

* bytes the server writes wait in the client's buffer until :meth:`MemoryClient.recv`;
  while more than ``buffer_limit`` bytes wait, the server's writing pauses
  (``pause_writing``), as with a full socket buffer;
* bytes the client sends go into the server's ``Connection`` at once, unless the
  server paused reading; then :meth:`MemoryClient.send` waits while more than
  ``buffer_limit`` bytes are held back;
* a server-side close is EOF for the client (bytes sent before it can still be read);
* :meth:`MemoryClient.close` is a FIN (``eof_received`` once the server took
  everything sent before), or a reset (``connection_lost`` with
  ``ConnectionResetError``) if server bytes were left unread, as on Linux;
  :meth:`MemoryClient.abort` always resets.

There is no TLS in memory. Sessions run as on a TLS connection when
``assume_tls`` (the default: AUTH on submission, POP3/IMAP logins without
STLS/STARTTLS), and an implicit-TLS listener (``submissions``, ``pop3s``,
``imaps``) always does. STARTTLS and STLS are never offered over memory and are
refused if sent (``Connection.can_start_tls`` is false); on a connection that
assumes TLS they get the usual "TLS is already active" refusal.

Example::

    async with MemoryServer(config) as srv:
        client = await srv.connect("mx")
        greeting = await client.recv(5.0)
        await client.send(b"EHLO client.test\\r\\n")
"""

from __future__ import annotations

import asyncio
import itertools
from types import TracebackType

from .app import MailServer
from .config import ServerConfig
from .listener import Listener

__all__ = ["BUFFER_LIMIT", "MemoryClient", "MemoryServer", "MemoryTransport"]

BUFFER_LIMIT = 1 << 20  # bytes in flight each way before the writer waits (a socket buffer)

_ports = itertools.count(49152)  # made-up client ports, for the logs only


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)


def _wake(waiter: asyncio.Future[bool] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(True)


class MemoryTransport(asyncio.Transport):
    """The server's end of an in-memory pipe; :class:`MemoryClient` is the other end.

    Args:
        loop: the loop the protocol's callbacks run in.
        protocol: the server side (a :class:`~reference_server.transport.Connection`,
            or any ``asyncio.Protocol`` / ``BufferedProtocol``);
            ``connection_made`` is the caller's to call.
        peer: what ``get_extra_info("peername")`` answers.
        buffer_limit: bytes in flight each way before the writer waits.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        protocol: asyncio.BaseProtocol,
        *,
        peer: tuple[str, int] = ("127.0.0.1", 0),
        buffer_limit: int = BUFFER_LIMIT,
    ) -> None:
        super().__init__({"peername": peer, "sockname": ("memory", 0)})
        self._loop = loop
        self._protocol = protocol
        self._limit = buffer_limit
        self._to_server = bytearray()  # sent by the client, not yet taken by the protocol
        self._to_client = bytearray()  # written by the server, not yet received
        self._closing = False  # the server side closed (EOF for the client)
        self._lost = False  # connection_lost was called
        self._client_closed = False
        self._eof_sent = False
        self._reading_paused = False
        self._writing_paused = False
        self._recv_waiter: asyncio.Future[bool] | None = None
        self._send_waiter: asyncio.Future[bool] | None = None

    # -- asyncio.Transport, for the server --------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or self._client_closed:
            return  # as a socket's peer that is gone: the bytes go nowhere
        self._to_client += data
        _wake(self._recv_waiter)
        if not self._writing_paused and len(self._to_client) > self._limit:
            self._writing_paused = True
            self._protocol.pause_writing()

    def can_write_eof(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return len(self._to_client)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return 0, self._limit

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is not None:
            self._limit = high

    def pause_reading(self) -> None:
        self._reading_paused = True

    def resume_reading(self) -> None:
        if self._reading_paused:
            self._reading_paused = False
            # later, as a socket's reader callback would: never inside the protocol's call
            self._loop.call_soon(self._feed)

    def is_reading(self) -> bool:
        return not self._reading_paused and not self._closing

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """Close the server's side: the client reads what was written, then EOF."""
        if self._closing:
            return
        self._closing = True
        _wake(self._recv_waiter)
        _wake(self._send_waiter)
        self._loop.call_soon(self._connection_lost, None)

    def abort(self) -> None:
        self.close()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    # -- the plumbing ---------------------------------------------------------------------

    def _connection_lost(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._lost = self._closing = True
        self._to_server.clear()
        _wake(self._recv_waiter)
        _wake(self._send_waiter)
        self._protocol.connection_lost(exc)

    def _feed(self) -> None:
        """Hand the protocol what the client sent (while it reads), then a pending EOF."""
        protocol = self._protocol
        pending = self._to_server
        while pending and not self._reading_paused and not self._closing:
            if isinstance(protocol, asyncio.BufferedProtocol):
                buf = memoryview(protocol.get_buffer(len(pending)))
                n = min(len(buf), len(pending))
                buf[:n] = pending[:n]
                del pending[:n]
                protocol.buffer_updated(n)
            else:
                data = bytes(pending)
                pending.clear()
                assert isinstance(protocol, asyncio.Protocol)
                protocol.data_received(data)
        if len(pending) <= self._limit:
            _wake(self._send_waiter)
        if self._client_closed and not pending and not self._eof_sent and not self._closing:
            self._eof_sent = True
            keep_open = (
                protocol.eof_received()
                if isinstance(protocol, asyncio.Protocol | asyncio.BufferedProtocol)
                else False
            )
            if not keep_open:
                self.close()


class MemoryClient:
    """The client's end of an in-memory connection (see :meth:`MemoryServer.connect`)."""

    def __init__(self, transport: MemoryTransport) -> None:
        self._t = transport

    @property
    def transport(self) -> MemoryTransport:
        """The server's end."""
        return self._t

    @property
    def closed(self) -> bool:
        """Either end closed the connection (bytes the server sent before may still be
        unread: :meth:`recv` returns them, then ``b""``)."""
        return self._t._client_closed or self._t._closing

    def send_nowait(self, data: bytes) -> bool:
        """Hand ``data`` to the server now, without the event loop; ``False`` if the
        server holds back more than ``buffer_limit`` bytes (await :meth:`send` then).

        The server's session sees the bytes the next time the loop runs. This is
        :meth:`send` without the coroutine, for a synchronous driver that runs the
        loop only while it waits for an answer (the fuzzer's memory connector).

        Raises:
            ConnectionAbortedError: this end was closed.
            BrokenPipeError: the server closed the connection.
        """
        t = self._t
        if t._client_closed:
            raise ConnectionAbortedError("the client closed this connection")
        if t._closing:
            raise BrokenPipeError("the server closed the connection")
        t._to_server += data
        t._feed()
        return len(t._to_server) <= t._limit or t._closing

    async def send(self, data: bytes) -> None:
        """Send ``data`` to the server; waits only while the server is not reading.

        Raises:
            ConnectionAbortedError: this end was closed.
            BrokenPipeError: the server closed the connection.
        """
        if self.send_nowait(data):
            return
        t = self._t
        while len(t._to_server) > t._limit and not t._closing:
            waiter = t._send_waiter = t._loop.create_future()
            try:
                await waiter
            finally:
                t._send_waiter = None

    async def recv(self, timeout: float = 10.0) -> bytes:
        """Everything the server sent so far (at least one byte), or ``b""`` at EOF.

        Raises:
            TimeoutError: nothing arrived within ``timeout`` seconds.
            ConnectionAbortedError: this end was closed.
        """
        t = self._t
        if t._client_closed:
            raise ConnectionAbortedError("the client closed this connection")
        if not t._to_client and not t._closing:
            waiter = t._recv_waiter = t._loop.create_future()
            timer = t._loop.call_later(timeout, _expire, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                t._recv_waiter = None
            if not waiter.result():
                raise TimeoutError(f"nothing received within {timeout:g}s")
            if t._client_closed:
                raise ConnectionAbortedError("the client closed this connection")
        data = bytes(t._to_client)
        t._to_client.clear()
        if t._writing_paused and not t._lost:
            t._writing_paused = False
            t._protocol.resume_writing()
        return data

    def readable(self) -> bool:
        """:meth:`recv_nowait` has something to return (bytes, EOF, or the error)."""
        t = self._t
        return bool(t._to_client) or t._closing or t._client_closed

    def recv_nowait(self) -> bytes | None:
        """Everything the server sent so far, ``b""`` at EOF, ``None`` if nothing yet.

        Raises:
            ConnectionAbortedError: this end was closed.
        """
        t = self._t
        if t._client_closed:
            raise ConnectionAbortedError("the client closed this connection")
        if not t._to_client:
            return b"" if t._closing else None
        data = bytes(t._to_client)
        t._to_client.clear()
        if t._writing_paused and not t._lost:
            t._writing_paused = False
            t._protocol.resume_writing()
        return data

    def close(self) -> None:
        """Close this end: EOF for the server after what was sent, or a reset if bytes
        from the server are left unread (as a socket's close does)."""
        t = self._t
        if t._client_closed:
            return
        t._client_closed = True
        unread = bool(t._to_client)
        t._to_client.clear()
        _wake(t._recv_waiter)
        if unread:
            self._reset()
        else:
            t._feed()

    def abort(self) -> None:
        """Reset the connection: the server's ``connection_lost`` gets ``ConnectionResetError``."""
        t = self._t
        t._client_closed = True
        t._to_client.clear()
        _wake(t._recv_waiter)
        self._reset()

    def _reset(self) -> None:
        t = self._t
        if not t._lost:
            t._closing = True
            t._loop.call_soon(t._connection_lost, ConnectionResetError("reset by the client"))


class MemoryServer:
    """A reference server whose listeners are reached in memory (``async with``).

    Args:
        config: the server's configuration; listener names are its listeners' names.
        assume_tls: run sessions as on a TLS connection (see the module's docstring);
            :meth:`connect` can override it per connection.
        buffer_limit: bytes in flight each way on a connection before the writer waits.
        inline_blocking: run the server's blocking work (Maildir deliveries, IMAP and
            POP3 store calls, password checks) on the event loop rather than in
            worker threads (``MailServer.inline_blocking``). Sessions then see the
            same answers, in one thread, in a fixed order; what is left out is
            the interleaving of threads, which the server on sockets exercises.
    """

    def __init__(
        self,
        config: ServerConfig,
        *,
        assume_tls: bool = True,
        buffer_limit: int = BUFFER_LIMIT,
        inline_blocking: bool = True,
    ) -> None:
        self.config = config
        self.assume_tls = assume_tls
        self.buffer_limit = buffer_limit
        self.server = MailServer(config)  # builds the parts; start() is never called
        self.server.inline_blocking = inline_blocking
        self._listeners: dict[str, Listener] = {lst.name: lst for lst in self.server.listeners}
        self._stopped = False

    async def __aenter__(self) -> MemoryServer:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def listener(self, name: str) -> Listener:
        """The listener called ``name`` in the configuration.

        Raises:
            KeyError: no such listener.
        """
        try:
            return self._listeners[name]
        except KeyError:
            known = ", ".join(self._listeners) or "none"
            raise KeyError(f"no listener {name!r} (configured: {known})") from None

    async def connect(
        self,
        listener: str,
        *,
        assume_tls: bool | None = None,
        peer: tuple[str, int] | None = None,
    ) -> MemoryClient:
        """A new connection to ``listener``, its session started as the listener would.

        Args:
            listener: a listener name from the configuration (``"mx"``, ``"imap"``...).
            assume_tls: overrides the server's ``assume_tls`` for this connection
                (an implicit-TLS listener always runs as on TLS).
            peer: the client's address as the session sees it; by default 127.0.0.1
                and a made-up port.

        Raises:
            KeyError: no such listener.
            RuntimeError: the server was stopped.
        """
        lst = self.listener(listener)
        if self._stopped:
            raise RuntimeError("the memory server was stopped")
        tls = self.assume_tls if assume_tls is None else assume_tls
        conn = lst._connection()
        transport = MemoryTransport(
            asyncio.get_running_loop(),
            conn,
            peer=peer if peer is not None else ("127.0.0.1", next(_ports)),
            buffer_limit=self.buffer_limit,
        )
        conn.can_start_tls = False
        conn.connection_made(transport)  # starts the session task; it runs once we yield
        conn.tls = tls or lst.tls_mode == "implicit"
        return MemoryClient(transport)

    async def stop(self) -> None:
        """Stop as the socket server does (421 / ``* BYE`` to open sessions), close storage."""
        if not self._stopped:
            self._stopped = True
            await self.server.stop()

    @property
    def active_sessions(self) -> int:
        return self.server.active_sessions

    def __repr__(self) -> str:
        return f"<MemoryServer {list(self._listeners)} sessions={self.active_sessions}>"
