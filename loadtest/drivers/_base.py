"""What the three blocking drivers share: endpoints, the socket, step reporting, errors.

Theory of operation
-------------------
A driver is a thin blocking loop around one sans-IO reader of
:mod:`conformance.wire`: it writes command bytes with ``sendall``, and to read
one response it asks the reader for its next event, calling ``recv`` and
``receive_data`` while the answer is :data:`~conformance.wire.NEED_DATA`. The
reader does all the parsing; the driver only moves bytes and decides what a
reply means for the step (success, or a :class:`ReplyError`).

Plain ``socket`` and ``ssl`` only, no asyncio and no threads: under Locust,
gevent has monkey-patched ``socket`` and ``ssl`` before any driver is imported,
so every blocking call here yields to other greenlets. Outside Locust (tests,
the benchmark) the same code is ordinary blocking I/O.

Each protocol step (``connect``, ``EHLO``, ``STARTTLS``, ``MAIL``, ...) runs
inside ``recorder.step(protocol, name)``, a context manager that times it and
sees the exception if it fails (see :class:`StepRecorder`). The Locust layer
(``loadtest/clients.py``) plugs in a recorder that fires Locust request
events; :class:`CallbackRecorder` and :class:`ListRecorder` serve everyone
else. The drivers never import locust.

After a failed step the driver closes its connection (a half-finished
transaction leaves the dialogue in an unknown state); start a new session
with ``connect()`` or ``start()``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Self, TypeVar

from conformance.targets import Target, TlsMode
from conformance.wire import NEED_DATA, ConnectionClosed, RemoteProtocolError
from conformance.wire._reader import ReaderBase

__all__ = [
    "CallbackRecorder",
    "Channel",
    "ConnectError",
    "ConnectionLost",
    "DriverBase",
    "DriverError",
    "DriverTimeout",
    "Endpoint",
    "ListRecorder",
    "NullRecorder",
    "ProtocolViolation",
    "ReplyError",
    "StepMeta",
    "StepRecorder",
    "StepResult",
    "TimedRecorder",
    "TlsError",
]

E = TypeVar("E")

RECV_SIZE = 16384
"""Bytes asked of one ``recv``: a TLS record's worth, so an idle connection holds no big buffer."""


# -- errors ---------------------------------------------------------------------------


class DriverError(Exception):
    """A step failed. ``protocol`` and ``step`` say which (``"SMTP"``, ``"RCPT"``).

    ``repr()`` is ``ClassName: message``: Locust keys its failure table on
    ``repr(exception)``, so the table reads ``SmtpReplyError: 451 4.3.0 try later``.
    """

    def __init__(self, message: str, *, protocol: str = "", step: str = "") -> None:
        super().__init__(message)
        self.protocol = protocol
        self.step = step

    def __repr__(self) -> str:
        return f"{type(self).__name__}: {self}"


class ReplyError(DriverError):
    """The server answered, but not with success (SMTP 4xx/5xx, POP3 ``-ERR``, IMAP NO/BAD).

    ``code`` is the reply code as text (``"451"``, ``"-ERR"``, ``"NO"``); the
    message starts with it.
    """

    def __init__(self, message: str, *, code: str, protocol: str = "", step: str = "") -> None:
        super().__init__(message, protocol=protocol, step=step)
        self.code = code


class ConnectError(DriverError):
    """The TCP connection could not be opened (refused, unreachable, timed out)."""


class TlsError(DriverError):
    """The TLS handshake failed (certificate, name, protocol), or the server did
    not answer the upgrade command as it should."""


class ConnectionLost(DriverError):
    """The server closed the connection (or reset it) in the middle of a step."""


class DriverTimeout(DriverError):
    """No complete response within the read timeout."""


class ProtocolViolation(DriverError):
    """The server's bytes broke the protocol (the reader's RemoteProtocolError, with its rule)."""


# -- endpoints ------------------------------------------------------------------------

_CONTEXTS: dict[tuple[str | None, bool], ssl.SSLContext] = {}


def _client_context(ca_file: Path | None, verify: bool) -> ssl.SSLContext:
    """One shared client context per (CA file, verify): loading a CA per connection is slow."""
    key = (str(ca_file) if ca_file else None, verify)
    ctx = _CONTEXTS.get(key)
    if ctx is None:
        ctx = ssl.create_default_context(cafile=key[0])
        if not verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        _CONTEXTS[key] = ctx
    return ctx


@dataclass(frozen=True)
class Endpoint:
    """Where one service listens and how to reach it.

    Attributes:
        host: an IP literal (names work, but are resolved on every connect).
        port: the TCP port.
        tls: ``none``, ``starttls`` (the service offers an upgrade, which
            ``start()`` takes) or ``implicit`` (TLS from the first byte).
        ssl_context: the client context for TLS (``None``: a default verifying one).
        server_hostname: the name to send as SNI and to verify (default: ``host``).
        connect_timeout: seconds to wait for TCP connect and the TLS handshake.
        read_timeout: seconds to wait for any one response.
        service: the service's name in the target file, for messages.
        cooperate: called with no arguments before each read from the socket.
            Under gevent, ``gevent.sleep`` (a yield): the other users run while
            the server answers, and the read then usually finds the answer
            there, where reading at once after sending fails, arms a timer and
            waits (at loopback rates, about a third of the CPU per message).
    """

    host: str
    port: int
    tls: TlsMode = TlsMode.NONE
    ssl_context: ssl.SSLContext | None = field(default=None, compare=False)
    server_hostname: str | None = None
    connect_timeout: float = 5.0
    read_timeout: float = 10.0
    service: str = ""
    cooperate: Callable[[], object] | None = field(default=None, compare=False)

    @classmethod
    def from_target(cls, target: Target, service: str) -> Endpoint:
        """The endpoint of ``service`` in ``target``, with its TLS settings.

        Raises:
            KeyError: the target has no such service (the message lists those it has).
        """
        try:
            svc = target.services[service]
        except KeyError:
            have = ", ".join(sorted(target.services)) or "none"
            raise KeyError(
                f"the target has no service {service!r} (it has: {have}); "
                "add it under services: in the target file"
            ) from None
        return cls(
            host=svc.host,
            port=svc.port,
            tls=svc.tls,
            ssl_context=_client_context(target.ca_file, target.verify),
            server_hostname=target.server_name or svc.host,
            connect_timeout=target.connect_timeout,
            read_timeout=target.read_timeout,
            service=service,
        )

    @property
    def where(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.service + ' at ' if self.service else ''}{host}:{self.port}"

    def context(self) -> ssl.SSLContext:
        return self.ssl_context or _client_context(None, True)


# -- step reporting -------------------------------------------------------------------


@dataclass
class StepMeta:
    """Filled in by the driver while a step runs.

    Attributes:
        protocol: ``"SMTP"``, ``"POP3"`` or ``"IMAP"``.
        name: the step (``"connect"``, ``"RCPT"``, ``"FETCH"``).
        response_length: bytes of the server's answer; for DATA and APPEND the
            message bytes sent.
    """

    protocol: str
    name: str
    response_length: int = 0


@dataclass(frozen=True)
class StepResult:
    """One finished step, as :class:`CallbackRecorder` reports it.

    Attributes:
        start_time: wall-clock start (``time.time()``).
        response_time: milliseconds, from a monotonic clock.
        exception: why it failed, ``None`` on success.
    """

    protocol: str
    name: str
    start_time: float
    response_time: float
    response_length: int
    exception: Exception | None = None


class StepRecorder(Protocol):
    """Times steps. ``step()`` returns a context manager around one protocol step.

    The manager must let exceptions propagate (record, then re-raise): the
    driver relies on a failed step stopping the dialogue.
    """

    def step(self, protocol: str, name: str) -> contextlib.AbstractContextManager[StepMeta]: ...


class TimedRecorder(StepRecorder, Protocol):
    """A :class:`StepRecorder` that also takes steps the driver timed itself.

    ``record()`` reports one finished step at once. The SMTP driver uses it for
    transactions pipelined into each other
    (:meth:`~loadtest.drivers.SmtpDriver.send_messages`), whose times overlap
    so that no context manager could time them. A recorder without it still
    works; it just gets no cross-transaction pipelining.
    """

    def record(
        self,
        protocol: str,
        name: str,
        start_time: float,
        response_time: float,
        response_length: int,
        exception: Exception | None,
    ) -> None: ...


class NullRecorder:
    """Records nothing (setup traffic that is not part of the measured load)."""

    @contextlib.contextmanager
    def step(self, protocol: str, name: str) -> Iterator[StepMeta]:
        yield StepMeta(protocol, name)

    def record(
        self,
        protocol: str,
        name: str,
        start_time: float,
        response_time: float,
        response_length: int,
        exception: Exception | None,
    ) -> None:
        pass


class CallbackRecorder:
    """Calls ``callback(StepResult)`` after every step, failed or not.

    ``BaseException``\\ s that are not ``Exception`` (gevent's ``GreenletExit``
    when Locust stops a user, ``KeyboardInterrupt``) are not steps that failed
    and are not reported.
    """

    def __init__(self, callback: Callable[[StepResult], None]) -> None:
        self.callback = callback

    @contextlib.contextmanager
    def step(self, protocol: str, name: str) -> Iterator[StepMeta]:
        meta = StepMeta(protocol, name)
        start_time = time.time()
        start = time.perf_counter()
        try:
            yield meta
        except Exception as exc:
            elapsed = (time.perf_counter() - start) * 1000.0
            self.callback(
                StepResult(protocol, name, start_time, elapsed, meta.response_length, exc)
            )
            raise
        elapsed = (time.perf_counter() - start) * 1000.0
        self.callback(StepResult(protocol, name, start_time, elapsed, meta.response_length))

    def record(
        self,
        protocol: str,
        name: str,
        start_time: float,
        response_time: float,
        response_length: int,
        exception: Exception | None,
    ) -> None:
        """One step the driver timed itself (see :class:`TimedRecorder`)."""
        self.callback(
            StepResult(protocol, name, start_time, response_time, response_length, exception)
        )


class ListRecorder(CallbackRecorder):
    """Keeps every :class:`StepResult` in :attr:`results` (tests, the benchmark)."""

    def __init__(self) -> None:
        self.results: list[StepResult] = []
        super().__init__(self.results.append)

    def names(self) -> list[str]:
        """``["SMTP connect", "SMTP EHLO", ...]`` in order."""
        return [f"{r.protocol} {r.name}" for r in self.results]


# -- the socket -----------------------------------------------------------------------


class Channel:
    """One TCP connection, maybe upgraded to TLS; blocking, gevent-patchable.

    Errors come out as :class:`DriverError` subclasses carrying ``protocol``
    and the step in progress (set by the driver in :attr:`step`).
    """

    __slots__ = ("endpoint", "protocol", "sock", "step")

    def __init__(self, endpoint: Endpoint, protocol: str) -> None:
        self.endpoint = endpoint
        self.protocol = protocol
        self.sock: socket.socket | None = None
        self.step = ""

    @property
    def is_open(self) -> bool:
        return self.sock is not None

    @property
    def is_tls(self) -> bool:
        return isinstance(self.sock, ssl.SSLSocket)

    def _err(self, cls: type[DriverError], message: str) -> DriverError:
        return cls(message, protocol=self.protocol, step=self.step)

    def open(self) -> None:
        """Connect, and for an implicit-TLS endpoint, handshake.

        An IP literal is connected to directly (no resolver involved); a name
        goes through ``socket.create_connection``.
        """
        ep = self.endpoint
        try:
            try:
                family = (
                    socket.AF_INET6
                    if ipaddress.ip_address(ep.host).version == 6
                    else socket.AF_INET
                )
            except ValueError:
                sock = socket.create_connection((ep.host, ep.port), timeout=ep.connect_timeout)
            else:
                sock = socket.socket(family, socket.SOCK_STREAM)
                try:
                    sock.settimeout(ep.connect_timeout)
                    sock.connect((ep.host, ep.port))
                except BaseException:
                    sock.close()
                    raise
        except TimeoutError:
            raise self._err(
                ConnectError, f"{ep.where}: no connection within {ep.connect_timeout:g}s"
            ) from None
        except OSError as exc:
            raise self._err(ConnectError, f"{ep.where}: {exc.strerror or exc}") from None
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        if ep.tls is TlsMode.IMPLICIT:
            self.start_tls()
        else:
            sock.settimeout(ep.read_timeout)

    def start_tls(self) -> None:
        """Handshake on the open connection (implicit TLS, or after STARTTLS/STLS)."""
        assert self.sock is not None
        ep = self.endpoint
        plain = self.sock
        plain.settimeout(ep.connect_timeout)
        try:
            self.sock = ep.context().wrap_socket(
                plain, server_hostname=ep.server_hostname or ep.host
            )
        except ssl.SSLError as exc:
            self.close()
            plain.close()
            raise self._err(TlsError, f"{ep.where}: TLS handshake failed: {exc}") from None
        except TimeoutError:
            self.close()
            plain.close()
            raise self._err(
                TlsError, f"{ep.where}: no TLS handshake within {ep.connect_timeout:g}s"
            ) from None
        except OSError as exc:
            self.close()
            plain.close()
            raise self._err(
                TlsError, f"{ep.where}: connection lost during the TLS handshake: {exc}"
            ) from None
        self.sock.settimeout(ep.read_timeout)

    def send(self, data: bytes) -> None:
        if self.sock is None:
            raise self._err(ConnectionLost, f"{self.endpoint.where}: not connected")
        try:
            # one send() is the whole of it nearly always; sendall() only for a rest
            # (gevent's sendall with a timeout asks the kernel for SO_SNDBUF every call)
            sent = self.sock.send(data)
            if sent < len(data):
                self.sock.sendall(memoryview(data)[sent:])
        except TimeoutError:
            self.close()
            raise self._err(
                DriverTimeout, f"{self.endpoint.where}: could not send within the read timeout"
            ) from None
        except OSError as exc:
            self.close()
            raise self._err(
                ConnectionLost, f"{self.endpoint.where}: connection lost while sending: {exc}"
            ) from None

    def recv(self, timeout: float | None = None) -> bytes:
        """Some bytes (``b""`` when the server closed); waits ``timeout`` (default: read timeout).

        Raises:
            DriverTimeout: nothing arrived in time (the connection stays open).
            ConnectionLost: reset, or not connected.
        """
        sock = self.sock
        if sock is None:
            raise self._err(ConnectionLost, f"{self.endpoint.where}: not connected")
        cooperate = self.endpoint.cooperate
        if cooperate is not None:
            cooperate()
            if self.sock is not sock:  # closed meanwhile (the user stopped)
                raise self._err(ConnectionLost, f"{self.endpoint.where}: not connected")
        if timeout is not None:
            sock.settimeout(timeout)
        try:
            return sock.recv(RECV_SIZE)
        except TimeoutError:
            wait = self.endpoint.read_timeout if timeout is None else timeout
            raise self._err(
                DriverTimeout, f"{self.endpoint.where}: no complete response within {wait:g}s"
            ) from None
        except OSError as exc:
            self.close()
            raise self._err(
                ConnectionLost, f"{self.endpoint.where}: connection lost: {exc}"
            ) from None
        finally:
            if timeout is not None and self.sock is not None:
                self.sock.settimeout(self.endpoint.read_timeout)

    def read_event(self, reader: ReaderBase[E], timeout: float | None = None) -> E:
        """The reader's next event, receiving as needed.

        Raises:
            ConnectionLost: the server closed the connection first.
            ProtocolViolation: the server's bytes broke the protocol.
            DriverTimeout: no complete event within ``timeout`` (default: read timeout).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                event = reader.next_event()
            except RemoteProtocolError as exc:
                self.close()
                raise self._err(ProtocolViolation, f"malformed response: {exc}") from None
            if isinstance(event, ConnectionClosed):
                self.close()
                raise self._err(
                    ConnectionLost, f"{self.endpoint.where}: the server closed the connection"
                )
            if event is not NEED_DATA:
                return event
            wait = None
            if deadline is not None:
                wait = max(deadline - time.monotonic(), 0.0)
                if wait == 0.0:
                    raise self._err(
                        DriverTimeout,
                        f"{self.endpoint.where}: no complete response within {timeout:g}s",
                    )
            reader.receive_data(self.recv(wait))

    def close(self) -> None:
        sock, self.sock = self.sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()


class DriverBase:
    """What every protocol driver has: its endpoint, its recorder and its channel,
    whether it is connected, and closing it (also as a context manager)."""

    def __init__(self, endpoint: Endpoint, protocol: str, recorder: StepRecorder | None) -> None:
        self.endpoint = endpoint
        self.recorder: StepRecorder = recorder or NullRecorder()
        self._chan = Channel(endpoint, protocol)

    @property
    def is_connected(self) -> bool:
        return self._chan.is_open

    @property
    def is_tls(self) -> bool:
        return self._chan.is_tls

    def close(self) -> None:
        """Drop the connection without saying goodbye (safe to call at any time)."""
        self._chan.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
