"""A blocking SMTP client over :class:`conformance.wire.SmtpReplyReader`, one step per command.

Public API (stable; ``loadtest.delivery`` and the benchmark build on it)::

    driver = SmtpDriver(Endpoint.from_target(target, "submission"), recorder=recorder)
    driver.start(username="alice", password="...")   # connect, EHLO, STARTTLS, EHLO, AUTH
    reply = driver.send_message("alice@example.test", ["bob@example.test"], message_bytes)
    driver.quit()

The building blocks ``connect()``, ``ehlo()``, ``starttls()``, ``auth()``,
``send_message()``, ``rset()``, ``noop()``, ``quit()`` and ``close()`` can be
used on their own. Steps reported to the recorder, with protocol ``"SMTP"``:

=============  ================================================================
``connect``    TCP connect, the implicit TLS handshake if any, the 220 greeting
``EHLO``       EHLO and its 250 (also after STARTTLS)
``STARTTLS``   the command, its 220, and the TLS handshake
``AUTH``       the whole SASL exchange (PLAIN or LOGIN) up to 235
``MAIL``       MAIL FROM up to its reply
``RCPT``       one per recipient, up to its reply
``DATA``       DATA, its 354, the message, and the reply after the final dot
``message``    MAIL to the reply after the final dot (``per_message=True`` only)
``RSET``       RSET
``NOOP``       NOOP
``QUIT``       QUIT and its 221
=============  ================================================================

With PIPELINING offered (RFC 2920) and ``pipelining=True``, MAIL, every RCPT
and DATA go out in one write; the replies are read in order, and each step
ends when its own reply arrives (so a step's time runs from the end of the
one before). Any reply other than the expected class raises
:class:`SmtpReplyError`, whose message starts with the code and enhanced code
(``451 4.3.0 try again later``), and closes the connection.

With ``per_message=True`` a transaction is one step instead, ``message``:
from MAIL to the reply after the final dot (MAIL, RCPT and DATA are not
reported separately; a failure in any of them fails ``message``). That is
for load at high message rates, where reporting three steps per message
costs the load generator more than the protocol does.

``send_messages(iterable)`` sends transactions back to back; with PIPELINING
it puts each transaction's MAIL, RCPT and DATA in the same write as the
message before it (RFC 2920 §3.1), so a step then starts at that write.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from types import TracebackType

from conformance.targets import TlsMode
from conformance.wire.pop3 import byte_stuff
from conformance.wire.smtp import Reply, SmtpReplyReader, parse_ehlo

from ._base import (
    DriverBase,
    DriverError,
    Endpoint,
    ReplyError,
    StepMeta,
    StepRecorder,
    TlsError,
)

__all__ = ["SmtpDriver", "SmtpReplyError"]

PROTOCOL = "SMTP"
DEFAULT_HELO = "loadtest.mailharness.invalid"  # RFC 2606 §2: never resolves

_SEEN_REPLIES: dict[bytes, Reply] = {}
"""Single-line replies the reader has made, by their exact bytes (``b"250 2.1.0 Ok\\r\\n"``).

A :class:`Reply` is immutable, and at a reply boundary the same bytes always
make the same reply (every driver's reader is ``strict=False`` with the same
limits), so the drivers of a process share them. Bounded by :data:`_SEEN_MAX`:
a server whose replies carry queue ids fills it and then is read as before."""
_SEEN_MAX = 256
_FAST_LINE = 1024  # an unfinished line longer than this goes to the reader (its limits)


class SmtpReplyError(ReplyError):
    """An SMTP reply other than the one expected; ``reply`` is the :class:`Reply`.

    The message is the reply's first line (``451 4.3.0 try again later``);
    ``expected`` says which codes would have been success (``"250/251"``).
    """

    def __init__(self, reply: Reply, *, step: str, expected: str) -> None:
        text = reply.lines[0] if reply.lines else ""
        more = f" (+{len(reply.lines) - 1} lines)" if len(reply.lines) > 1 else ""
        super().__init__(
            f"{reply.code} {text}{more}".rstrip(),
            code=str(reply.code),
            protocol=PROTOCOL,
            step=step,
        )
        self.reply = reply
        self.expected = expected


class _Step:
    """``driver._step(name)``: the recorder's step, plus ``chan.step`` and closing on failure.

    A class rather than a generator context manager: it runs once per
    protocol step, thousands of times a second in a load generator.
    """

    __slots__ = ("driver", "inner", "name")

    def __init__(self, driver: SmtpDriver, name: str) -> None:
        self.driver = driver
        self.name = name

    def __enter__(self) -> StepMeta:
        self.inner = self.driver.recorder.step(PROTOCOL, self.name)
        meta = self.inner.__enter__()
        self.driver._chan.step = self.name
        return meta

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        if exc_type is not None and issubclass(exc_type, DriverError):
            self.driver.close()
        return self.inner.__exit__(exc_type, exc, tb)


class SmtpDriver(DriverBase):
    """One SMTP client connection. Not thread-safe; one greenlet per driver.

    Args:
        endpoint: where to connect, and how (TLS mode, context, timeouts).
        recorder: times each step (default: records nothing).
        helo_name: the name sent with EHLO.
        pipelining: batch MAIL/RCPT/DATA when the server offers PIPELINING.
        per_message: report each transaction as one step ``message`` instead of
            the steps MAIL, RCPT and DATA.

    Attributes:
        capabilities: EHLO keywords of the last EHLO (``{"PIPELINING": (), "AUTH": ("PLAIN",)}``).
        greeting: the server's 220, once connected.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        recorder: StepRecorder | None = None,
        helo_name: str = DEFAULT_HELO,
        pipelining: bool = True,
        per_message: bool = False,
    ) -> None:
        super().__init__(endpoint, PROTOCOL, recorder)
        self.helo_name = helo_name
        self.pipelining = pipelining
        self.per_message = per_message
        self.capabilities: dict[str, tuple[str, ...]] = {}
        self.greeting: Reply | None = None
        self._new_reader()

    # -- state --------------------------------------------------------------------------

    @property
    def can_pipeline(self) -> bool:
        return self.pipelining and "PIPELINING" in self.capabilities

    # -- plumbing -----------------------------------------------------------------------

    def _step(self, name: str) -> _Step:
        """Time step ``name``; a failure in it closes the connection."""
        return _Step(self, name)

    def _new_reader(self) -> None:
        self._reader = SmtpReplyReader(strict=False)
        self._rx = b""
        self._in_reader = False

    def _read(self) -> Reply:
        """The next reply.

        A line seen before as a whole single-line reply (``250 2.1.0 Ok``) is
        answered from :data:`_SEEN_REPLIES` with the :class:`Reply` the reader
        made of it then; anything else (a new line, a multiline reply, a line
        still incomplete past :data:`_FAST_LINE` bytes, the server closing)
        goes to the reader with every byte not yet consumed, and the reader
        keeps the stream until it has handed out all it holds. Parsing stays
        the reader's: this only skips parsing the same few bytes again, which
        at load generator rates is a good part of a transaction's cost.
        """
        if not self._in_reader:
            rx = self._rx
            eof = False
            while True:
                end = rx.find(b"\n")
                if end >= 0:
                    reply = _SEEN_REPLIES.get(rx[: end + 1])
                    if reply is None:
                        break
                    self._rx = rx[end + 1 :]
                    return reply
                if len(rx) > _FAST_LINE:
                    break
                data = self._chan.recv()
                if not data:
                    eof = True
                    break
                rx = self._rx = rx + data
            self._rx = b""
            if rx:
                self._reader.receive_data(rx)
            if eof:
                self._reader.receive_data(b"")
        reply = self._chan.read_event(self._reader)
        self._in_reader = bool(self._reader.pending)
        # every reply the reader returns began at a reply boundary, as fast-path lookups do
        if len(reply.lines) == 1 and len(_SEEN_REPLIES) < _SEEN_MAX:
            _SEEN_REPLIES[reply.raw] = reply
        return reply

    def _check(self, reply: Reply, step: str, *codes: int) -> Reply:
        if reply.code not in codes:
            self.close()
            want = "/".join(map(str, codes))
            raise SmtpReplyError(reply, step=step, expected=want)
        return reply

    def _command(self, step: str, line: str, *codes: int) -> Reply:
        self._chan.send(line.encode("utf-8") + b"\r\n")
        return self._check(self._read(), step, *codes)

    # -- steps --------------------------------------------------------------------------

    def connect(self) -> Reply:
        """Open the connection (TLS first for implicit TLS) and read the 220 greeting."""
        self.close()
        self._new_reader()
        self.capabilities = {}
        with self._step("connect") as meta:
            self._chan.open()
            reply = self._check(self._read(), "connect", 220)
            meta.response_length = len(reply.raw)
        self.greeting = reply
        return reply

    def ehlo(self) -> dict[str, tuple[str, ...]]:
        """EHLO; returns (and keeps) the keywords the server offers."""
        with self._step("EHLO") as meta:
            reply = self._command("EHLO", f"EHLO {self.helo_name}", 250)
            meta.response_length = len(reply.raw)
        self.capabilities = parse_ehlo(reply, strict=False)
        return self.capabilities

    def starttls(self) -> None:
        """STARTTLS and the handshake (RFC 3207); call :meth:`ehlo` again afterwards."""
        with self._step("STARTTLS") as meta:
            reply = self._command("STARTTLS", "STARTTLS", 220)
            meta.response_length = len(reply.raw)
            if self._rx or self._in_reader:
                # RFC 3207 §5: bytes before the handshake would be read as if protected
                self.close()
                raise TlsError(
                    "the server sent bytes after its 220 to STARTTLS, before the handshake "
                    "(command injection risk, CVE-2011-0411)",
                    protocol=PROTOCOL,
                    step="STARTTLS",
                )
            self._chan.start_tls()
        self._new_reader()
        self.capabilities = {}

    def auth(self, username: str, password: str, *, mechanism: str | None = None) -> Reply:
        """Authenticate with SASL PLAIN (RFC 4616) or LOGIN.

        Args:
            mechanism: ``"PLAIN"`` or ``"LOGIN"``; ``None`` takes PLAIN if the
                server offers it, else LOGIN, else PLAIN.
        """
        offered = {m.upper() for m in self.capabilities.get("AUTH", ())}
        mech = (
            mechanism or ("PLAIN" if "PLAIN" in offered or "LOGIN" not in offered else "LOGIN")
        ).upper()
        if mech not in ("PLAIN", "LOGIN"):
            raise ValueError(f"AUTH mechanism {mech!r}: the driver speaks PLAIN and LOGIN")
        with self._step("AUTH") as meta:
            if mech == "PLAIN":
                token = _b64(f"\0{username}\0{password}")
                reply = self._command("AUTH", f"AUTH PLAIN {token}", 235)
                meta.response_length = len(reply.raw)
            else:
                first = self._command("AUTH", "AUTH LOGIN", 334)
                second = self._command("AUTH", _b64(username), 334)
                reply = self._command("AUTH", _b64(password), 235)
                meta.response_length = len(first.raw) + len(second.raw) + len(reply.raw)
        return reply

    def start(
        self,
        *,
        username: str | None = None,
        password: str | None = None,
        mechanism: str | None = None,
        starttls: bool | None = None,
    ) -> None:
        """connect, EHLO, then STARTTLS and EHLO again, then AUTH when a username is given.

        Args:
            starttls: upgrade with STARTTLS; ``None`` follows the endpoint (its
                TLS mode is ``starttls``).
        """
        self.connect()
        self.ehlo()
        if starttls is None:
            starttls = self.endpoint.tls is TlsMode.STARTTLS
        if starttls:
            self.starttls()
            self.ehlo()
        if username is not None:
            self.auth(username, password or "", mechanism=mechanism)

    def send_message(self, sender: str, recipients: Sequence[str], message: bytes) -> Reply:
        """One mail transaction: MAIL, RCPT per recipient, DATA; returns the final reply.

        ``message`` is the RFC 5322 message; line ends are made CRLF and lines
        starting with ``.`` are dot-stuffed here (RFC 5321 §4.5.2), unless it
        is a :class:`DataPayload`, which is sent as it is. The
        ``SIZE`` parameter is sent when the server offers SIZE (RFC 1870).

        Raises:
            SmtpReplyError: any reply not 250 (354 to DATA); the connection is closed.
        """
        if not recipients:
            raise ValueError("send_message() needs at least one recipient")
        data = _stuff(message)
        size = f" SIZE={len(data) - 3}" if "SIZE" in self.capabilities else ""
        mail = f"MAIL FROM:<{sender}>{size}\r\n".encode()
        rcpts = [f"RCPT TO:<{r}>\r\n".encode() for r in recipients]
        if self.per_message:
            with self._step("message") as meta:
                reply = self._transaction(mail, rcpts, data)
                meta.response_length = len(data)
            return reply
        if self.can_pipeline:
            with self._step("MAIL") as meta:
                self._chan.send(mail + b"".join(rcpts) + b"DATA\r\n")
                reply = self._check(self._read(), "MAIL", 250)
                meta.response_length = len(reply.raw)
            for _ in rcpts:
                with self._step("RCPT") as meta:
                    reply = self._check(self._read(), "RCPT", 250, 251)
                    meta.response_length = len(reply.raw)
            with self._step("DATA") as meta:
                self._check(self._read(), "DATA", 354)
                self._chan.send(data)
                reply = self._check(self._read(), "DATA", 250)
                meta.response_length = len(data)
            return reply
        with self._step("MAIL") as meta:
            self._chan.send(mail)
            reply = self._check(self._read(), "MAIL", 250)
            meta.response_length = len(reply.raw)
        for line in rcpts:
            with self._step("RCPT") as meta:
                self._chan.send(line)
                reply = self._check(self._read(), "RCPT", 250, 251)
                meta.response_length = len(reply.raw)
        with self._step("DATA") as meta:
            self._command("DATA", "DATA", 354)
            self._chan.send(data)
            reply = self._check(self._read(), "DATA", 250)
            meta.response_length = len(data)
        return reply

    def send_messages(self, messages: Iterable[tuple[str, Sequence[str], bytes]]) -> int:
        """Transactions back to back on this connection; returns how many were accepted.

        ``messages`` yields ``(sender, recipients, message)`` as
        :meth:`send_message` takes them; it is read one ahead (the next item is
        taken once the server has said 354 to the one before, just before that
        message is sent), so it can be a generator making messages on demand.

        When the server offers PIPELINING (and ``pipelining=True``) and the
        recorder has ``record()`` (:class:`~loadtest.drivers.TimedRecorder`;
        the stock recorders all do), the next transaction's MAIL, RCPTs and
        DATA go out in the same write as the message before it: RFC 2920 §3.1
        lets message content be followed by further commands in one group,
        which then ends with DATA. A transaction then costs one write and
        usually one read. Every reply is still read and checked in order; a
        transaction's step(s) start at the write that carried its MAIL, so
        ``message`` (or ``MAIL``) overlaps the end of the transaction before
        it. Otherwise this is :meth:`send_message` in a loop.

        Raises:
            SmtpReplyError: any reply not 250 (251 to RCPT, 354 to DATA); the
                connection is closed, and a transaction already sent behind the
                failed one is not reported (it never got its replies).
        """
        record = getattr(self.recorder, "record", None)
        if record is None or not self.can_pipeline:
            count = 0
            for sender, recipients, message in messages:
                self.send_message(sender, recipients, message)
                count += 1
            return count
        try:
            return self._pipelined(iter(messages), record)
        except BaseException:
            self.close()  # whatever went wrong, the dialogue's state is unknown
            raise

    def _envelope(
        self, sender: str, recipients: Sequence[str], message: bytes
    ) -> tuple[bytes, int, bytes]:
        """(MAIL, RCPTs and DATA as one group, the number of RCPTs, the DATA payload)."""
        if not recipients:
            raise ValueError("send_messages() needs at least one recipient per message")
        data = _stuff(message)
        size = f" SIZE={len(data) - 3}" if "SIZE" in self.capabilities else ""
        rcpts = "".join([f"RCPT TO:<{r}>\r\n" for r in recipients])
        return f"MAIL FROM:<{sender}>{size}\r\n{rcpts}DATA\r\n".encode(), len(recipients), data

    def _pipelined(
        self,
        it: Iterator[tuple[str, Sequence[str], bytes]],
        record: Callable[[str, str, float, float, int, Exception | None], None],
    ) -> int:
        """:meth:`send_messages` with each transaction's commands sent with the message before.

        Steps are timed here (one clock read per write, and one per reply that
        ends a step; a step's wall-clock start is derived from the monotonic
        clock) and reported through ``record``. A step that succeeded is
        reported just after the next write rather than before it, so the
        bookkeeping does not hold back the server; every step is reported, in
        order, before this returns or raises (also when the user is stopped).
        """
        item = next(it, None)
        if item is None:
            return 0
        chan, read, check = self._chan, self._read, self._check
        per_message = self.per_message
        clock, wall_clock = time.perf_counter, time.time
        done: list[tuple[str, float, float, int]] = []  # succeeded, not reported yet

        def flush() -> None:
            for name, wall, ms, length in done:
                record(PROTOCOL, name, wall, ms, length, None)
            done.clear()

        head, nrcpt, data = self._envelope(*item)
        chan.step = "MAIL"
        chan.send(head)
        sent, sent_wall = clock(), wall_clock()
        count = 0
        try:
            while True:
                name = "message" if per_message else "MAIL"
                start, start_wall = sent, sent_wall
                try:
                    chan.step = "MAIL"
                    reply = check(read(), "MAIL", 250)
                    if not per_message:
                        now = clock()
                        done.append(("MAIL", start_wall, (now - start) * 1000.0, len(reply.raw)))
                        name, start, start_wall = "RCPT", now, start_wall + (now - start)
                    chan.step = "RCPT"
                    for _ in range(nrcpt):
                        reply = check(read(), "RCPT", 250, 251)
                        if not per_message:
                            now = clock()
                            done.append(
                                ("RCPT", start_wall, (now - start) * 1000.0, len(reply.raw))
                            )
                            start, start_wall = now, start_wall + (now - start)
                    if not per_message:
                        name = "DATA"
                    chan.step = "DATA"
                    check(read(), "DATA", 354)
                    item = next(it, None)
                    if item is None:
                        chan.send(data)
                    else:
                        head, next_nrcpt, next_data = self._envelope(*item)
                        chan.send(data + head)
                        sent, sent_wall = clock(), wall_clock()
                    flush()
                    check(read(), "DATA", 250)
                except Exception as exc:
                    flush()
                    record(PROTOCOL, name, start_wall, (clock() - start) * 1000.0, 0, exc)
                    raise
                done.append((name, start_wall, (clock() - start) * 1000.0, len(data)))
                count += 1
                if item is None:
                    return count
                nrcpt, data = next_nrcpt, next_data
        finally:
            flush()  # the last message's step; or, the user stopped, those already answered

    def _transaction(self, mail: bytes, rcpts: list[bytes], data: bytes) -> Reply:
        """MAIL, RCPTs and DATA inside one step (``per_message``); the channel's
        ``step`` still names the command in progress, for error messages."""
        chan = self._chan
        chan.step = "MAIL"
        if self.can_pipeline:
            chan.send(mail + b"".join(rcpts) + b"DATA\r\n")
            self._check(self._read(), "MAIL", 250)
            chan.step = "RCPT"
            for _ in rcpts:
                self._check(self._read(), "RCPT", 250, 251)
            chan.step = "DATA"
            self._check(self._read(), "DATA", 354)
        else:
            chan.send(mail)
            self._check(self._read(), "MAIL", 250)
            chan.step = "RCPT"
            for line in rcpts:
                chan.send(line)
                self._check(self._read(), "RCPT", 250, 251)
            chan.step = "DATA"
            self._command("DATA", "DATA", 354)
        chan.send(data)
        return self._check(self._read(), "DATA", 250)

    def rset(self) -> Reply:
        """RSET (abandon the transaction in progress)."""
        with self._step("RSET") as meta:
            reply = self._command("RSET", "RSET", 250)
            meta.response_length = len(reply.raw)
        return reply

    def noop(self) -> Reply:
        """NOOP."""
        with self._step("NOOP") as meta:
            reply = self._command("NOOP", "NOOP", 250)
            meta.response_length = len(reply.raw)
        return reply

    def quit(self) -> None:
        """QUIT, its 221, and close. Does nothing if not connected."""
        if not self.is_connected:
            return
        try:
            with self._step("QUIT") as meta:
                reply = self._command("QUIT", "QUIT", 221)
                meta.response_length = len(reply.raw)
        finally:
            self.close()


class DataPayload(bytes):
    """A DATA payload already in wire form: CRLF line ends, dot-stuffed, ending
    with the ``.`` line (RFC 5321 §4.5.2). The driver sends it as it is.

    A producer that knows its messages need no stuffing (the load corpus: no
    line starts with ``.``) wraps ``message + b".\r\n"`` directly, so the driver
    does not scan every message to find that out again; anything else goes
    through :meth:`of`, which stuffs it.
    """

    __slots__ = ()

    @classmethod
    def of(cls, message: bytes) -> DataPayload:
        """``message`` (an RFC 5322 message, any line ends) as a payload."""
        return cls(_stuff(message))


def _stuff(message: bytes) -> bytes:
    """``byte_stuff(message)``: the DATA payload with its final dot.

    A :class:`DataPayload` is that already.

    A message already in wire form (CRLF line ends only, ending in CRLF, no
    line starting with ".") just gets the final "." line; that check is a few
    scans in C, where ``byte_stuff``'s regular expressions cost about ten
    times as much on a 1 KB message.
    """
    if type(message) is DataPayload:
        return message
    if (
        message.endswith(b"\r\n")
        and not message.startswith(b".")
        and b"\n." not in message
        and message.count(b"\n") == message.count(b"\r\n")
    ):
        return message + b".\r\n"
    return byte_stuff(message)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")
