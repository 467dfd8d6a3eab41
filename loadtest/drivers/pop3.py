"""A blocking POP3 client over :class:`conformance.wire.Pop3ResponseReader`, one step per command.

Public API::

    pop = Pop3Driver(Endpoint.from_target(target, "pop3"), recorder=recorder)
    pop.start(username="alice", password="...")   # connect, STLS, USER, PASS
    count, size = pop.stat()
    sizes = pop.list()                            # {1: 4211, 2: 70312}
    uids = pop.uidl()                             # {1: "1700000000.M1P2.host", ...}
    message = pop.retr(1)                         # bytes, dot-unstuffed, CRLF line ends
    pop.dele(1)
    pop.quit()                                    # UPDATE state: deletions happen now

Steps reported to the recorder, with protocol ``"POP3"``: ``connect`` (TCP,
implicit TLS, greeting), ``CAPA``, ``STLS`` (command and handshake),
``USER``, ``PASS``, ``AUTH`` (SASL PLAIN, RFC 5034), ``STAT``, ``LIST``,
``UIDL``, ``RETR``, ``TOP``, ``DELE``, ``NOOP``, ``RSET``, ``QUIT``.

The reader is told before each command whether its ``+OK`` carries a body
(RFC 1939 §3), since a POP3 response does not say. ``-ERR`` raises
:class:`Pop3ReplyError` (``-ERR [IN-USE] maildrop locked``) and closes the
connection.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Iterator

from conformance.targets import TlsMode
from conformance.wire.pop3 import Pop3Continuation, Pop3Response, Pop3ResponseReader

from ._base import (
    DriverBase,
    DriverError,
    Endpoint,
    ProtocolViolation,
    ReplyError,
    StepMeta,
    StepRecorder,
    TlsError,
)

__all__ = ["Pop3Driver", "Pop3ReplyError"]

PROTOCOL = "POP3"


class Pop3ReplyError(ReplyError):
    """A ``-ERR`` response; ``response`` is the :class:`Pop3Response`."""

    def __init__(self, response: Pop3Response, *, step: str) -> None:
        code = f"[{response.code}] " if response.code else ""
        super().__init__(
            f"-ERR {code}{response.text}".rstrip(), code="-ERR", protocol=PROTOCOL, step=step
        )
        self.response = response


class Pop3Driver(DriverBase):
    """One POP3 client connection. Not thread-safe; one greenlet per driver.

    Args:
        endpoint: where to connect, and how.
        recorder: times each step (default: records nothing).

    Attributes:
        capabilities: from the last CAPA (``{"UIDL": (), "SASL": ("PLAIN",)}``).
    """

    def __init__(self, endpoint: Endpoint, *, recorder: StepRecorder | None = None) -> None:
        super().__init__(endpoint, PROTOCOL, recorder)
        self.capabilities: dict[str, tuple[str, ...]] = {}
        self._reader = Pop3ResponseReader(strict=False)

    # -- plumbing -----------------------------------------------------------------------

    @contextlib.contextmanager
    def _step(self, name: str) -> Iterator[StepMeta]:
        with self.recorder.step(PROTOCOL, name) as meta:
            self._chan.step = name
            try:
                yield meta
            except DriverError:
                self.close()
                raise

    def _read(self, step: str, meta: StepMeta) -> Pop3Response:
        event = self._chan.read_event(self._reader)
        meta.response_length += len(event.raw)
        if isinstance(event, Pop3Continuation):
            raise ProtocolViolation(
                f"a '+ ' SASL challenge in answer to {step}", protocol=PROTOCOL, step=step
            )
        if not event.ok:
            raise Pop3ReplyError(event, step=step)
        return event

    def _command(self, step: str, line: str, *, multiline: bool = False) -> Pop3Response:
        with self._step(step) as meta:
            self._reader.expect(multiline=multiline)
            self._chan.send(line.encode("utf-8") + b"\r\n")
            return self._read(step, meta)

    # -- steps --------------------------------------------------------------------------

    def connect(self) -> Pop3Response:
        """Open the connection and read the ``+OK`` greeting."""
        self.close()
        self._reader = Pop3ResponseReader(strict=False)
        self.capabilities = {}
        with self._step("connect") as meta:
            self._chan.open()
            self._reader.expect(multiline=False)
            return self._read("connect", meta)

    def capa(self) -> dict[str, tuple[str, ...]]:
        """CAPA (RFC 2449 §5); returns (and keeps) the capabilities, names upper-cased."""
        resp = self._command("CAPA", "CAPA", multiline=True)
        caps: dict[str, tuple[str, ...]] = {}
        for line in resp.lines or ():
            words = line.decode("utf-8", "replace").split()
            if words:
                caps[words[0].upper()] = tuple(words[1:])
        self.capabilities = caps
        return caps

    def stls(self) -> None:
        """STLS (RFC 2595 §4) and the handshake; capabilities are forgotten."""
        with self._step("STLS") as meta:
            self._reader.expect(multiline=False)
            self._chan.send(b"STLS\r\n")
            self._read("STLS", meta)
            if self._reader.pending:
                raise TlsError(
                    "the server sent bytes after its +OK to STLS, before the handshake "
                    "(command injection risk)",
                    protocol=PROTOCOL,
                    step="STLS",
                )
            self._chan.start_tls()
        self._reader = Pop3ResponseReader(strict=False)
        self.capabilities = {}

    def login(self, username: str, password: str) -> Pop3Response:
        """USER and PASS (RFC 1939 §7), two steps."""
        self._command("USER", f"USER {username}")
        return self._command("PASS", f"PASS {password}")

    def auth_plain(self, username: str, password: str) -> Pop3Response:
        """AUTH PLAIN with an initial response (RFC 5034, RFC 4616)."""
        token = base64.b64encode(f"\0{username}\0{password}".encode()).decode("ascii")
        return self._command("AUTH", f"AUTH PLAIN {token}")

    def start(
        self,
        *,
        username: str | None = None,
        password: str | None = None,
        stls: bool | None = None,
    ) -> None:
        """connect, STLS when the endpoint says so (or ``stls``), USER/PASS if a username."""
        self.connect()
        if stls is None:
            stls = self.endpoint.tls is TlsMode.STARTTLS
        if stls:
            self.stls()
        if username is not None:
            self.login(username, password or "")

    def stat(self) -> tuple[int, int]:
        """STAT: (message count, total octets)."""
        resp = self._command("STAT", "STAT")
        words = resp.text.split()
        if len(words) < 2 or not (words[0].isdigit() and words[1].isdigit()):
            self.close()
            raise ProtocolViolation(
                f"STAT answer {resp.text!r} is not '+OK count size' (RFC 1939 §5)",
                protocol=PROTOCOL,
                step="STAT",
            )
        return int(words[0]), int(words[1])

    def _listing(self, step: str) -> dict[int, str]:
        resp = self._command(step, step, multiline=True)
        out: dict[int, str] = {}
        for line in resp.lines or ():
            num, _, value = line.decode("utf-8", "replace").partition(" ")
            if num.isdigit():
                out[int(num)] = value.strip()
        return out

    def list(self) -> dict[int, int]:
        """LIST: message number -> size in octets."""
        return {n: int(v) if v.isdigit() else 0 for n, v in self._listing("LIST").items()}

    def uidl(self) -> dict[int, str]:
        """UIDL (RFC 1939 §7): message number -> unique id."""
        return self._listing("UIDL")

    def retr(self, number: int) -> bytes:
        """RETR: the whole message, CRLF line ends, dot-unstuffed."""
        resp = self._command("RETR", f"RETR {number}", multiline=True)
        return b"".join(line + b"\r\n" for line in resp.lines or ())

    def top(self, number: int, lines: int = 0) -> bytes:
        """TOP: the header and the first ``lines`` lines of the body."""
        resp = self._command("TOP", f"TOP {number} {lines}", multiline=True)
        return b"".join(line + b"\r\n" for line in resp.lines or ())

    def dele(self, number: int) -> None:
        """DELE: mark for deletion (done at QUIT)."""
        self._command("DELE", f"DELE {number}")

    def noop(self) -> None:
        self._command("NOOP", "NOOP")

    def rset(self) -> None:
        """RSET: unmark deletions."""
        self._command("RSET", "RSET")

    def quit(self) -> None:
        """QUIT (the UPDATE state commits deletions) and close. Nothing if not connected."""
        if not self.is_connected:
            return
        try:
            self._command("QUIT", "QUIT")
        finally:
            self.close()

    def close(self) -> None:
        """Drop the connection without QUIT: deletions are not committed."""
        super().close()
