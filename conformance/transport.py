"""Byte channels to a service: TCP over IPv4/IPv6, implicit TLS, STARTTLS upgrade.

A :class:`Channel` only moves bytes and writes them to the transcript; what
the bytes mean is the business of the sans-IO readers in
:mod:`conformance.wire`. Every read has a deadline, so a silent server turns
into a clear timeout rather than a hung run.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from dataclasses import dataclass, field

from .targets import Service, Target, TlsMode

__all__ = ["Channel", "ConnectFailed", "ReadTimeout", "Transcript", "TranscriptEntry"]

_SHOW_MAX = 400  # characters of one line shown in a transcript before eliding


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
    text = data.decode("utf-8", errors="backslashreplace")
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


class Channel:
    """One TCP (and maybe TLS) connection to a target service."""

    def __init__(self, name: str, service: Service, target: Target, transcript: Transcript):
        self.name = name
        self.service = service
        self.target = target
        self.transcript = transcript
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.tls = False
        self.eof = False

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
        try:
            self._reader, self._writer = await asyncio.wait_for(
                asyncio.open_connection(
                    svc.host,
                    svc.port,
                    ssl=ctx,
                    server_hostname=(target.server_name or svc.host) if implicit else None,
                    limit=1 << 20,
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
        self.tls = implicit
        self.eof = False
        self.transcript.event(self.name, f"connected to {svc.name} at {where}" + self._tls_note())

    def _tls_note(self) -> str:
        if not self.tls or self._writer is None:
            return ""
        obj = self._writer.get_extra_info("ssl_object")
        if obj is None:
            return " (TLS)"
        return f" (TLS {obj.version()}, {obj.cipher()[0]})"

    async def start_tls(self) -> None:
        """Upgrade to TLS in place (STARTTLS / STLS), verifying as the target says."""
        assert self._writer is not None
        target = self.target
        try:
            await asyncio.wait_for(
                self._writer.start_tls(
                    target.ssl_context(), server_hostname=target.server_name or self.service.host
                ),
                timeout=target.connect_timeout,
            )
        except (ssl.SSLError, OSError, TimeoutError) as exc:
            self.transcript.event(self.name, f"TLS handshake failed: {exc or type(exc).__name__}")
            raise ConnectFailed(f"TLS handshake failed: {exc or type(exc).__name__}") from None
        self.tls = True
        self.transcript.event(
            self.name, "TLS established" + self._tls_note().replace(" (TLS ", " (", 1)
        )

    async def send(self, data: bytes) -> None:
        assert self._writer is not None, "send on a closed channel"
        self.transcript.data(self.name, "C", data)
        self._writer.write(data)
        try:
            await self._writer.drain()
        except (ConnectionError, OSError) as exc:
            self.transcript.event(self.name, f"send failed: {exc}")
            raise

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
        if not data:
            self.eof = True
            self.transcript.event(self.name, "server closed the connection")
        return data

    def record_received(self, raw: bytes) -> None:
        self.transcript.data(self.name, "S", raw)

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is None:
            return
        self.transcript.event(self.name, "client closed the connection")
        writer.close()
        with contextlib.suppress(TimeoutError, ConnectionError, OSError, ssl.SSLError):
            await asyncio.wait_for(writer.wait_closed(), timeout=1.0)
