"""Byte channels to a service: TCP over IPv4/IPv6, implicit TLS, STARTTLS upgrade.

A :class:`Channel` only moves bytes and writes them to the transcript; what
the bytes mean is the business of the sans-IO readers in
:mod:`conformance.wire`. Every read has a deadline, so a silent server turns
into a clear timeout rather than a hung run.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from .targets import Service, Target, TlsMode

__all__ = [
    "CHANNEL_TAP",
    "Channel",
    "ConnectFailed",
    "ReadTimeout",
    "TlsHandshakeFailed",
    "Transcript",
    "TranscriptEntry",
]

_SHOW_MAX = 400  # characters of one line shown in a transcript before eliding
_SALVAGE_MAX = 1 << 20  # bytes read from the socket after the connection was lost


@dataclass(frozen=True)
class TranscriptEntry:
    """One line of evidence: ``C`` client bytes, ``S`` server bytes, ``*`` an event."""

    t: float  # seconds since the scenario started
    conn: str
    direction: str
    text: str

    def render(self, *, show_conn: bool = True) -> str:
        who = f"{self.conn} " if show_conn else ""
        return f"{self.t:8.3f} {who}{self.direction}: {self.text}"


@dataclass
class Transcript:
    started: float = field(default_factory=time.monotonic)
    entries: list[TranscriptEntry] = field(default_factory=list)

    def event(self, conn: str, text: str) -> None:
        self.entries.append(TranscriptEntry(time.monotonic() - self.started, conn, "*", text))

    def data(self, conn: str, direction: str, data: bytes) -> None:
        """Record bytes as lines; CRLF is implied, any other line ending is shown."""
        now = time.monotonic() - self.started
        for line in _split_lines(data):
            self.entries.append(TranscriptEntry(now, conn, direction, line))


def show_bytes(data: bytes) -> str:
    """Printable form of bytes: control and 8-bit bytes escaped, long runs elided."""
    # escaping only lengthens, so the first _SHOW_MAX + 1 characters decide what is shown
    text = data.decode("utf-8", errors="backslashreplace")[: _SHOW_MAX + 1]
    text = "".join(
        c if (c.isprintable() or c == " ") else c.encode("unicode_escape").decode("ascii")
        for c in text
    )
    if len(text) > _SHOW_MAX:
        text = f"{text[:_SHOW_MAX]}… ({len(data)} bytes)"
    return text


def _split_lines(data: bytes) -> list[str]:
    lines: list[str] = []
    rest = data
    while rest:
        idx = rest.find(b"\n")
        if idx < 0:
            lines.append(show_bytes(rest) + " [no line end]")
            break
        line, rest = rest[: idx + 1], rest[idx + 1 :]
        if line.endswith(b"\r\n"):
            lines.append(show_bytes(line[:-2]))
        else:
            lines.append(show_bytes(line[:-1]) + " [bare LF]")
    return lines


class ConnectFailed(Exception):
    """The service could not be reached (refused, unreachable, timed out, TLS failed)."""


class ReadTimeout(Exception):
    """No bytes arrived within the read deadline."""


class TlsHandshakeFailed(ConnectFailed):
    """A STARTTLS/STLS handshake did not complete; ``how`` says in what way.

    ``how`` is ``closed`` (the server closed or reset the connection during the
    handshake), ``alert`` (the server sent a TLS alert), ``not-tls`` (the server sent
    bytes that are not TLS), ``certificate`` (its certificate did not verify),
    ``timeout`` (no handshake within the connect timeout) or ``other``.
    """

    def __init__(self, message: str, how: str):
        super().__init__(message)
        self.how = how


def _handshake_failure(exc: BaseException) -> tuple[str, str]:
    """(how, text) for an exception out of a TLS handshake; see :class:`TlsHandshakeFailed`."""
    text = str(exc)
    if isinstance(exc, TimeoutError):
        return "timeout", "no TLS handshake within the connect timeout"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "certificate", f"the certificate did not verify: {text}"
    if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError | ConnectionError):
        return "closed", "the server closed the connection during the handshake" + (
            f" ({text})" if text else ""
        )
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or ""
        if "ALERT" in reason.upper():
            return "alert", f"the server sent a TLS alert: {text}"
        return "not-tls", f"the server did not answer with TLS: {text}"
    if isinstance(exc, OSError):
        return "closed", f"the connection failed during the handshake: {text or type(exc).__name__}"
    return "other", text or type(exc).__name__


class _Protocol(asyncio.StreamReaderProtocol):
    """asyncio's stream protocol, but a connection lost to an error (a reset) ends the
    stream like a close: what arrived before it stays readable, then EOF.

    asyncio's own protocol turns a reset into an exception that hides the data still
    buffered, and a failed write stops the reading, so an answer the server sent just
    before it reset the connection (an IMAP "* BYE" for a line too long, while the
    client is still sending) would be lost. On a plain connection the bytes still in
    the socket's receive buffer are read too, before asyncio closes the socket.
    """

    def __init__(self, reader: asyncio.StreamReader, loop: asyncio.AbstractEventLoop):
        super().__init__(reader, loop=loop)
        self.reader = reader
        self.lost: BaseException | None = None  # the error the connection was lost to
        self.plain_socket: Any = None  # the transport's socket while no TLS is in between

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if transport.get_extra_info("sslcontext") is None:
            self.plain_socket = transport.get_extra_info("socket")

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self.lost = exc
            leftover = self._salvage()
            if leftover:
                self.reader.feed_data(leftover)
        super().connection_lost(None)  # EOF after the data, not an exception instead of it

    def _salvage(self) -> bytes:
        """What is left in the socket's receive buffer (the socket is still open here)."""
        sock, self.plain_socket = self.plain_socket, None
        if sock is None:
            return b""
        try:
            dup = socket.socket(fileno=os.dup(sock.fileno()))
        except (OSError, ValueError):
            return b""
        data = bytearray()
        with dup:
            dup.setblocking(False)
            while len(data) < _SALVAGE_MAX:
                try:
                    chunk = dup.recv(65536)
                except OSError:  # nothing more now (EAGAIN), or the reset itself
                    break
                if not chunk:
                    break
                data += chunk
        return bytes(data)


# ``run --capture``: an observer of every channel's cleartext, set for the run
# (conformance/replay/pcapwriter.py: CaptureRecorder); None: nothing is recorded.
CHANNEL_TAP: ContextVar[Any] = ContextVar("CHANNEL_TAP", default=None)


class Channel:
    """One TCP (and maybe TLS) connection to a target service."""

    def __init__(self, name: str, service: Service, target: Target, transcript: Transcript):
        self.name = name
        self.service = service
        self.target = target
        self.transcript = transcript
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._protocol: _Protocol | None = None
        self.tls = False
        self.eof = False
        self._tap: Any = None

    @property
    def is_open(self) -> bool:
        return self._writer is not None

    async def open(self, timeout: float | None = None) -> None:
        """Connect (and for implicit TLS, handshake) within ``timeout`` seconds.

        Raises:
            ConnectFailed: refused, unreachable, timed out or TLS failed; says which.
        """
        timeout = timeout or self.target.connect_timeout
        svc, target = self.service, self.target
        implicit = svc.tls is TlsMode.IMPLICIT
        ctx = target.ssl_context() if implicit else None
        where = f"{svc.host}:{svc.port}" if ":" not in svc.host else f"[{svc.host}]:{svc.port}"
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=1 << 20, loop=loop)
        protocol = _Protocol(reader, loop)
        try:
            transport, _ = await asyncio.wait_for(
                loop.create_connection(
                    lambda: protocol,
                    svc.host,
                    svc.port,
                    ssl=ctx,
                    server_hostname=(target.server_name or svc.host) if implicit else None,
                ),
                timeout=timeout,
            )
        except TimeoutError:
            raise ConnectFailed(
                f"{svc.name} at {where}: no connection within {timeout:g}s"
            ) from None
        except ssl.SSLError as exc:
            raise ConnectFailed(f"{svc.name} at {where}: TLS handshake failed: {exc}") from None
        except OSError as exc:
            raise ConnectFailed(f"{svc.name} at {where}: {exc.strerror or exc}") from None
        self._reader, self._protocol = reader, protocol
        self._writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        self.tls = implicit
        self.eof = False
        self._tap = CHANNEL_TAP.get()
        if self._tap is not None:
            sockname, peername = (transport.get_extra_info(k) for k in ("sockname", "peername"))
            self._tap.opened(self, sockname, peername, implicit)
        self.transcript.event(self.name, f"connected to {svc.name} at {where}" + self._tls_note())

    def _tls_note(self) -> str:
        if not self.tls or self._writer is None:
            return ""
        obj = self._writer.get_extra_info("ssl_object")
        if obj is None:
            return " (TLS)"
        return f" (TLS {obj.version()}, {obj.cipher()[0]})"

    async def start_tls(self) -> None:
        """Upgrade to TLS in place (STARTTLS / STLS), verifying as the target says.

        Raises:
            TlsHandshakeFailed: the handshake did not complete (its ``how`` says why).
        """
        assert self._writer is not None and self._protocol is not None
        target = self.target
        self._protocol.plain_socket = None  # from now on the socket carries TLS records
        if self._tap is not None:
            self._tap.tls_started(self)
        try:
            await asyncio.wait_for(
                self._writer.start_tls(
                    target.ssl_context(), server_hostname=target.server_name or self.service.host
                ),
                timeout=target.connect_timeout,
            )
        except (ssl.SSLError, OSError, TimeoutError) as exc:
            how, text = _handshake_failure(exc)
            self.transcript.event(self.name, f"TLS handshake failed: {text}")
            raise TlsHandshakeFailed(f"TLS handshake failed: {text}", how) from None
        except AttributeError:  # the connection was gone when the handshake ended
            if self._writer.transport is not None:
                raise
            text = "the connection closed during the handshake"
            self.transcript.event(self.name, f"TLS handshake failed: {text}")
            raise TlsHandshakeFailed(f"TLS handshake failed: {text}", "closed") from None
        self.tls = True
        self.transcript.event(
            self.name, "TLS established" + self._tls_note().replace(" (TLS ", " (", 1)
        )

    async def send(self, data: bytes) -> None:
        """Send bytes.

        Raises:
            ConnectionError: the connection was lost (closed or reset by the server)
                before all of them went out; what the server sent before that can still
                be read.
        """
        assert self._writer is not None and self._protocol is not None, "send on a closed channel"
        self.transcript.data(self.name, "C", data)
        if self._tap is not None:
            self._tap.data(self, "C", data)
        try:
            if self._protocol.lost is not None:
                raise ConnectionResetError(str(self._protocol.lost) or "connection lost")
            self._writer.write(data)
            await self._writer.drain()
            if self._protocol.lost is not None:  # lost while waiting for the buffer to drain
                raise ConnectionResetError(str(self._protocol.lost) or "connection lost")
        except (ConnectionError, OSError) as exc:
            lost = self._protocol.lost
            self.transcript.event(self.name, f"send failed: {lost or exc}")
            if isinstance(exc, ConnectionError):
                raise
            raise ConnectionResetError(exc.errno, exc.strerror or str(exc)) from exc

    async def read(self, timeout: float) -> bytes:
        """Next chunk of bytes; ``b""`` once the server has closed.

        Raises:
            ReadTimeout: nothing arrived within ``timeout`` seconds.
        """
        assert self._reader is not None, "read on a closed channel"
        if self.eof:
            return b""
        try:
            data = await asyncio.wait_for(self._reader.read(65536), timeout=timeout)
        except TimeoutError:
            raise ReadTimeout(f"no answer within {timeout:g}s") from None
        except (ConnectionError, OSError) as exc:  # reset by peer counts as closed
            self.transcript.event(self.name, f"connection lost: {exc}")
            data = b""
        if self._tap is not None and data:
            self._tap.data(self, "S", data)
        elif self._tap is not None:
            self._tap.closed(self, "S")
        if not data:
            self.eof = True
            lost = self._protocol.lost if self._protocol is not None else None
            if lost is not None:
                self.transcript.event(self.name, f"connection lost: {lost}")
            self.transcript.event(self.name, "server closed the connection")
        return data

    def record_received(self, raw: bytes) -> None:
        self.transcript.data(self.name, "S", raw)

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        self._protocol = None
        if writer is None:
            return
        self.transcript.event(self.name, "client closed the connection")
        if self._tap is not None:
            self._tap.closed(self, "C")
        writer.close()
        with contextlib.suppress(TimeoutError, ConnectionError, OSError, ssl.SSLError):
            await asyncio.wait_for(writer.wait_closed(), timeout=1.0)
