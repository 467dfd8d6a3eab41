"""The outbound sink: an SMTP server the harness runs, for the server under test to relay to.

Theory of operation
-------------------
Scenarios about what a server *sends* (trace headers, bounces, retries) need
the next hop under the harness's control. The operator routes one domain (by
default ``sink.test``) from the server under test to the sink's address; the
sink accepts that mail and records every attempt, with the envelope, the
message, the client's EHLO name and the reply it gave.

How the sink answers is chosen by the recipient's local part, so scenarios
running side by side never share state and need no configuration:

* ``reject...`` (``reject.x7@sink.test``): RCPT gets ``550 5.1.1``;
* ``defer<N>...`` (``defer2.x7@sink.test``): the first N transactions with this
  recipient end with ``451 4.3.0`` after the data, later ones with 250
  (``defer...`` without a number: N = 1);
* anything else: accepted.

An *attempt* is recorded for each recipient refused at RCPT (with that reply)
and for each end of data (accepted or not, with all the recipients RCPT took),
so a scenario can wait for "the relay tried, and was refused" as well as for
"the message arrived".

It speaks RFC 5321 through the sans-IO :class:`~conformance.wire.smtp.SmtpServerReader`
(PIPELINING, 8BITMIME, SMTPUTF8 and SIZE offered; no STARTTLS, so a relay with
opportunistic TLS sends in cleartext), and only CRLF.CRLF ends data. The
listening socket is bound when the sink is made, so its port is known before
anything starts (the embedded reference server's route needs it); it serves on
whichever event loop calls :meth:`Sink.start`.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from conformance.wire import ConnectionClosed, NeedData, RemoteProtocolError
from conformance.wire.smtp import (
    BadCommandLine,
    Command,
    DataRejected,
    MessageData,
    SmtpServerReader,
    parse_mail_from,
    parse_rcpt_to,
)

__all__ = ["DEFAULT_SINK_DOMAIN", "Sink", "SinkAttempt", "SinkMessage"]

DEFAULT_SINK_DOMAIN = "sink.test"  # RFC 2606 §2: .test never resolves
_DEFER = re.compile(r"^defer(\d*)", re.IGNORECASE)
_IDLE_TIMEOUT = 60.0  # seconds a client may stay silent


@dataclass(frozen=True)
class SinkMessage:
    """One message the sink accepted (answered 250 after the data)."""

    sender: str
    recipients: tuple[str, ...]
    data: bytes  # unstuffed, CRLF line ends, without the final dot
    ehlo: str
    peer: str
    received_at: float  # time.time()


@dataclass(frozen=True)
class SinkAttempt:
    """One delivery attempt that ended: a refused RCPT, or an end of data (accepted or not)."""

    recipients: tuple[str, ...]
    code: int
    at: float  # time.time()
    stage: str = "data"  # "rcpt": refused at RCPT; "data": answered after the data
    sender: str = ""  # the transaction's reverse-path ("" is the null path)


@dataclass
class _Transaction:
    sender: str | None = None
    recipients: list[str] = field(default_factory=list)


class Sink:
    """The sink server; ``port=0`` picks a free one (see :attr:`port`)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        domain: str = DEFAULT_SINK_DOMAIN,
        hostname: str = "sink.mailharness.test",
    ) -> None:
        self.domain = domain
        self.hostname = hostname
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._sock.bind((host, port))
            self._sock.listen(64)
            self._sock.setblocking(False)
        except OSError:
            self._sock.close()
            raise
        self.host, self.port = self._sock.getsockname()[:2]
        self.messages: list[SinkMessage] = []
        self.attempts: list[SinkAttempt] = []
        self._tries: defaultdict[str, int] = defaultdict(int)
        self._server: asyncio.AbstractServer | None = None
        self._changed: asyncio.Condition | None = None

    async def start(self) -> None:
        """Serve on the running event loop."""
        self._changed = asyncio.Condition()
        self._server = await asyncio.start_server(self._serve, sock=self._sock)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await self._server.wait_closed()
            self._server = None
        else:
            self._sock.close()

    def close(self) -> None:
        """Close the listening socket of a sink that was never started."""
        self._sock.close()

    async def wait_for(self, check: Callable[[Sink], object], timeout: float) -> object:
        """Wait until ``check(self)`` is true (returned), or raise TimeoutError."""
        assert self._changed is not None, "start() the sink first"
        async with asyncio.timeout(timeout):
            async with self._changed:
                while True:
                    result = check(self)
                    if result:
                        return result
                    await self._changed.wait()

    def for_recipient(self, address: str) -> list[SinkMessage]:
        """Accepted messages with ``address`` among their recipients (case-insensitive)."""
        wanted = address.lower()
        return [m for m in self.messages if wanted in (r.lower() for r in m.recipients)]

    def attempts_for(self, address: str) -> list[SinkAttempt]:
        wanted = address.lower()
        return [a for a in self.attempts if wanted in (r.lower() for r in a.recipients)]

    # -- the SMTP side -------------------------------------------------------------------

    async def _notify(self) -> None:
        assert self._changed is not None
        async with self._changed:
            self._changed.notify_all()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = str(writer.get_extra_info("peername", ("?",))[0])
        smtp = SmtpServerReader()
        state = _Transaction()
        ehlo = ""

        def reply(line: str) -> None:
            writer.write(line.encode("utf-8") + b"\r\n")

        reply(f"220 {self.hostname} ESMTP mailharness sink")
        try:
            while True:
                event = smtp.next_event()
                if isinstance(event, NeedData):
                    await writer.drain()
                    async with asyncio.timeout(_IDLE_TIMEOUT):
                        smtp.receive_data(await reader.read(65536))
                    continue
                if isinstance(event, ConnectionClosed):
                    return
                if isinstance(event, BadCommandLine):
                    reply(f"{event.code} {event.enhanced} {event.text}")
                elif isinstance(event, DataRejected):
                    reply(f"{event.code} {event.enhanced} {event.text}")
                    state = _Transaction()
                elif isinstance(event, MessageData):
                    reply(await self._end_of_data(state, event.content, ehlo, peer))
                    state = _Transaction()
                elif isinstance(event, Command):
                    verb = event.verb
                    if verb in ("EHLO", "HELO"):
                        ehlo, state = event.arg, _Transaction()
                        if verb == "HELO":
                            reply(f"250 {self.hostname}")
                        else:
                            writer.write(
                                (
                                    f"250-{self.hostname}\r\n250-PIPELINING\r\n250-8BITMIME\r\n"
                                    "250-SMTPUTF8\r\n250-SIZE 52428800\r\n"
                                    "250 ENHANCEDSTATUSCODES\r\n"
                                ).encode()
                            )
                    elif verb == "MAIL":
                        try:
                            state = _Transaction(sender=parse_mail_from(event.arg).address)
                        except RemoteProtocolError as exc:
                            reply(f"501 5.5.4 {exc}")
                        else:
                            reply("250 2.1.0 sender ok")
                    elif verb == "RCPT":
                        answer = self._rcpt(state, event.arg)
                        reply(answer)
                        if answer.startswith("550"):
                            await self._notify()
                    elif verb == "DATA":
                        if state.sender is None or not state.recipients:
                            reply("503 5.5.1 MAIL and RCPT first")
                        else:
                            reply("354 end with <CRLF>.<CRLF>")
                            smtp.start_data()
                    elif verb == "RSET":
                        state = _Transaction()
                        reply("250 2.0.0 ok")
                    elif verb == "NOOP":
                        reply("250 2.0.0 ok")
                    elif verb == "QUIT":
                        reply("221 2.0.0 bye")
                        await writer.drain()
                        return
                    else:
                        reply("502 5.5.1 not implemented in the sink")
        except (OSError, TimeoutError, ValueError):
            return
        finally:
            writer.close()

    def _rcpt(self, state: _Transaction, arg: str) -> str:
        if state.sender is None:
            return "503 5.5.1 MAIL first"
        try:
            address = parse_rcpt_to(arg).address
        except RemoteProtocolError as exc:
            return f"501 5.5.4 {exc}"
        local = address.rpartition("@")[0]
        if local.lower().startswith("reject"):
            self.attempts.append(
                SinkAttempt((address,), 550, time.time(), stage="rcpt", sender=state.sender)
            )
            return "550 5.1.1 no such user here (sink: reject)"
        state.recipients.append(address)
        return "250 2.1.5 recipient ok"

    async def _end_of_data(self, state: _Transaction, content: bytes, ehlo: str, peer: str) -> str:
        code, text = 250, "2.0.0 accepted by the sink"
        for address in state.recipients:
            deferred = _DEFER.match(address.rpartition("@")[0])
            if deferred:
                times = int(deferred[1] or 1)
                self._tries[address.lower()] += 1
                if self._tries[address.lower()] <= times:
                    code, text = 451, "4.3.0 try again later (sink: defer)"
        now = time.time()
        recipients = tuple(state.recipients)
        self.attempts.append(SinkAttempt(recipients, code, now, sender=state.sender or ""))
        if code == 250:
            self.messages.append(
                SinkMessage(
                    sender=state.sender or "",
                    recipients=recipients,
                    data=content,
                    ehlo=ehlo,
                    peer=peer,
                    received_at=now,
                )
            )
        await self._notify()
        return f"{code} {text}"
