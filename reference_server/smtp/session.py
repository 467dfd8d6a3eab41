"""One SMTP session: the read / dispatch / reply loop around the sans-IO core.

Theory of operation. Bytes from :class:`~reference_server.transport.Connection`
go into :class:`~conformance.wire.smtp.SmtpServerReader`; each event is
answered in order (so pipelined commands, RFC 2920, are answered in order
with no extra work). Whether a command may run now is the state table's
call (:func:`conformance.wire.smtp.allowed`, else 503); what it does is its
handler's, in :mod:`.handlers`. A handler returns the reply and may leave an
action for after the reply is flushed (start TLS, read message data, close).

Nothing a client sends can end the session except QUIT, EOF, a timeout, or
shutdown; every bad line gets an answer. A message is answered 250 only
after :mod:`reference_server.storage` said it is durably stored.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import logging
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from conformance.wire import NEED_DATA, ConnectionClosed
from conformance.wire.smtp import (
    AUTH_LINE_LIMIT,
    BadCommandLine,
    Command,
    DataRejected,
    MessageData,
    Reply,
    SmtpServerReader,
    SmtpState,
    allowed,
    next_state,
)

from ..responsetext import ascii_bytes
from ..transport import Connection, ConnectionTimeout

if TYPE_CHECKING:
    from ..auth import Account
    from .server import SmtpListener

__all__ = ["After", "Envelope", "Hangup", "SmtpSession"]

log = logging.getLogger("reference_server.smtp")


class Hangup(Exception):
    """The session is over (the client timed out); the reply, if any, was sent."""


class After(enum.Enum):
    """What to do once a reply has been sent."""

    NOTHING = "nothing"
    READ_DATA = "read_data"
    START_TLS = "start_tls"
    CLOSE = "close"


@dataclass
class Envelope:
    """The mail transaction in progress (RFC 5321 §3.3)."""

    sender: str | None = None
    local: dict[str, str] = field(default_factory=dict)  # address -> mailbox user
    remote: list[str] = field(default_factory=list)  # addresses for the outbound spool
    utf8: bool = False

    @property
    def recipients(self) -> list[str]:
        return [*self.local, *self.remote]


class SmtpSession:
    """State of one connection; handlers read and change it."""

    def __init__(self, listener: SmtpListener, conn: Connection) -> None:
        self.listener = listener
        self.server = listener.server
        self.conn = conn
        limits = self.server.config.limits
        self.reader = SmtpServerReader(
            max_command_line=max(limits.max_line_length.command_line, AUTH_LINE_LIMIT),
            max_message_size=limits.max_message_size,
        )
        self.state = SmtpState.GREETED
        self.helo: str | None = None
        self.esmtp = False
        self.user: Account | None = None
        self.envelope = Envelope()
        self.after = After.NOTHING
        self.commands_seen = 0
        self._out = bytearray()  # replies not yet written (RFC 2920: flush before waiting)
        self.session_id = f"{int(time.time() * 1000):x}{random.getrandbits(24):06x}"

    # -- used by handlers --------------------------------------------------------------

    @property
    def tls(self) -> bool:
        return self.conn.tls

    @property
    def greeted(self) -> bool:
        return self.helo is not None

    def reset_transaction(self) -> None:
        self.envelope = Envelope()

    async def ask(self, challenge: str) -> bytes | None:
        """Send a 334 challenge (RFC 4954 §4) and return the client's line, or None at EOF."""
        self.send(Reply.build(334, None, challenge))
        while True:
            event = self.reader.next_event()
            if event is NEED_DATA:
                await self._read_more()
                continue
            if isinstance(event, Command | BadCommandLine):
                return event.raw.rstrip(b"\r\n")
            return None

    def send(self, reply: Reply) -> None:
        """Queue a reply; it goes out when the session next waits (or with :meth:`flush`).

        Reply text stays ASCII (RFC 5321 §4.2 textstring): the "§" of the RFC
        references in our texts is spelt "section".
        """
        self._out += ascii_bytes(reply.raw)

    async def flush(self) -> None:
        if self._out:
            self.conn.write(bytes(self._out))
            self._out.clear()
            await self.conn.drain()

    async def _read_more(self) -> None:
        """Flush replies, then wait for input within the timeout RFC 5321 §4.5.3.2 gives.

        Raises:
            Hangup: the client was silent too long; it was told 421.
        """
        await self.flush()
        timeouts = self.server.config.limits.timeouts
        if self.reader.in_data:
            timeout = timeouts.data_block
        elif self.commands_seen == 0 and timeouts.initial is not None:
            timeout = timeouts.initial
        else:
            timeout = timeouts.command
        try:
            data = await self.conn.read(timeout)
        except ConnectionTimeout:
            self.send(Reply.build(421, "4.4.2", f"{self.server.config.hostname} timeout, closing"))
            await self.flush()
            raise Hangup from None
        self.reader.receive_data(data)

    # -- the loop --------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            await self._run()
        except Hangup:
            return
        await self.flush()

    async def _run(self) -> None:
        from .handlers import HANDLERS, data_rejected, message_received, unknown_command

        faults = self.listener.faults
        if faults.drop("CONNECT"):
            self.conn.abort()
            raise Hangup
        if faults:
            await faults.delay("CONNECT")
        self.send(_greeting(self.server.config.hostname))
        while True:
            event = self.reader.next_event()
            if event is NEED_DATA:
                await self._read_more()
                continue
            if isinstance(event, ConnectionClosed):
                if self.state is SmtpState.DATA:
                    log.info("%s: client vanished during DATA; nothing stored", self.session_id)
                return
            if isinstance(event, BadCommandLine):
                reply = Reply.build(event.code, event.enhanced, event.text)
            elif isinstance(event, Command):
                # RFC 5321 §4.1.1: white space before the CRLF is tolerated, not an argument
                arg = event.arg.rstrip(" \t")
                if arg != event.arg:
                    event = dataclasses.replace(event, arg=arg)
                self.commands_seen += 1
                verb = event.verb
                if faults and faults.drop(verb):
                    await self.flush()  # earlier answers still go out; this one never does
                    self.conn.abort()
                    raise Hangup
                injected = await faults.apply(verb) if faults else None
                handler = HANDLERS.get(verb)
                if injected is not None:
                    reply = injected
                elif handler is None:
                    reply = unknown_command(self, event)
                elif not allowed(self.state, verb):
                    reply = self._out_of_sequence(verb)
                else:
                    reply = await handler(self, event)
                    if reply.code < 400:
                        self.state = next_state(self.state, verb, greeted=self.greeted)
            elif isinstance(event, MessageData):
                injected = await faults.apply("DATA_END") if faults else None
                reply = injected if injected is not None else await message_received(self, event)
                self.state = SmtpState.READY
                self.reset_transaction()
            else:
                assert isinstance(event, DataRejected)
                reply = data_rejected(self, event)
                self.state = SmtpState.READY
                self.reset_transaction()
            self.send(reply)
            after, self.after = self.after, After.NOTHING
            if after is After.CLOSE:
                return
            if after is After.READ_DATA:
                self.state = SmtpState.DATA
                self.reader.start_data()
            elif after is After.START_TLS and not await self._start_tls():
                return

    def _out_of_sequence(self, verb: str) -> Reply:
        if not self.greeted and verb in ("MAIL", "STARTTLS", "AUTH"):
            return Reply.build(503, "5.5.1", "send EHLO or HELO first (RFC 5321 §4.1.4)")
        if verb == "RCPT":
            return Reply.build(503, "5.5.1", "need MAIL before RCPT (RFC 5321 §3.3)")
        if verb == "DATA":
            what = "MAIL" if self.state in (SmtpState.GREETED, SmtpState.READY) else "RCPT"
            return Reply.build(503, "5.5.1", f"need {what} before DATA (RFC 5321 §3.3)")
        if verb == "MAIL":
            return Reply.build(
                503, "5.5.1", "nested MAIL: a transaction is already open (RFC 5321 §4.1.4)"
            )
        if verb == "AUTH":
            return Reply.build(
                503, "5.5.1", "AUTH is not allowed during a mail transaction (RFC 4954 §4)"
            )
        return Reply.build(503, "5.5.1", f"{verb} is out of sequence (RFC 5321 §4.1.4)")

    async def _start_tls(self) -> bool:
        """Handshake after the 220; cleartext that followed STARTTLS is dropped, never run."""
        await self.flush()
        ctx = self.server.tls_context
        assert ctx is not None
        upgraded = await self.conn.upgrade(
            ctx,
            unread=self.reader.discard_pending(),
            timeout=self.server.config.limits.timeouts.command,
            who=self.session_id,
            after="STARTTLS (RFC 3207 §4.2)",
        )
        if not upgraded:
            return False
        # RFC 3207 §4.2: forget everything learnt before the handshake
        self.state = SmtpState.GREETED
        self.helo = None
        self.esmtp = False
        self.user = None
        self.reset_transaction()
        return True


@functools.lru_cache(maxsize=8)
def _greeting(hostname: str) -> Reply:
    return Reply.build(220, None, f"{hostname} ESMTP mailharness reference server")
