"""The relay client: hands one queued message to one next hop over SMTP.

Theory of operation
-------------------
:func:`relay` speaks RFC 5321 as a client, reading replies with the sans-IO
:class:`~conformance.wire.smtp.SmtpReplyReader` (lenient: a relay takes what real
servers send). One call is one connection and at most one mail transaction:

greeting, EHLO (HELO if EHLO is refused), STARTTLS per the hop's policy (RFC
3207; EHLO again after it, and whatever the server pipelined before the TLS
handshake is dropped), then MAIL with SIZE, BODY=8BITMIME and SMTPUTF8 when the
message needs them and the server offers them, RCPT for each recipient (all in
one write when PIPELINING is offered, RFC 2920), DATA with dot-stuffing, QUIT.

Trouble before the transaction starts (no connection, a greeting or EHLO that
is not 2xx, TLS required but not offered or failing, a timeout, a protocol
error) raises :class:`HopFailure`: the caller tries the next hop or defers.
Once MAIL is answered each recipient gets an :class:`Outcome`: 2xx delivered,
4xx deferred, 5xx failed. A connection lost after the final dot but before the
reply defers the recipients: the far side may have the message, and RFC 5321
§6.1 prefers a duplicate to a loss.

A message that needs 8BITMIME or SMTPUTF8 from a hop that does not offer it
fails with 5.6.3 or 5.6.7 (RFC 6152 §3, RFC 6531 §3.2): the reference server
does not downgrade content.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from conformance.wire import ConnectionClosed, NeedData, RemoteProtocolError
from conformance.wire.smtp import Reply, SmtpReplyReader, parse_ehlo
from reference_server.configreader import is_ip

from .routing import Hop
from .settings import RelayTimeouts, TlsPolicy

__all__ = ["HopFailure", "Outcome", "dot_stuff", "needs_smtputf8", "relay"]

_READ_CHUNK = 65536
_DOT_AT_LINE_START = re.compile(rb"(?m)^\.")


class _TlsFallback(Exception):
    """The TLS handshake failed under policy ``may``: try again in cleartext (as Postfix does)."""


class HopFailure(Exception):
    """The hop could not take the message now; try the next one, or later.

    Attributes:
        status: an RFC 3463 code, ``4.x.x`` (the hop as such is not a verdict on the mail).
        diagnostic: what happened, for the queue listing and a DSN.
    """

    def __init__(self, status: str, diagnostic: str) -> None:
        super().__init__(diagnostic)
        self.status = status
        self.diagnostic = diagnostic


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """What became of one recipient in one attempt.

    Attributes:
        status: ``delivered`` (2xx), ``deferred`` (4xx, try again) or ``failed`` (5xx).
        code: the RFC 3463 status: the reply's own, or one derived from the reply code.
        diagnostic: the reply, ``"550 5.1.1 no such user"``, or what went wrong.
        remote_mta: the hop that answered.
    """

    status: Literal["delivered", "deferred", "failed"]
    code: str
    diagnostic: str
    remote_mta: str | None


def _outcome(reply: Reply, remote: str) -> Outcome:
    status: Literal["delivered", "deferred", "failed"] = (
        "delivered" if reply.code < 400 else "deferred" if reply.code < 500 else "failed"
    )
    code = reply.enhanced or f"{reply.code // 100}.0.0"
    return Outcome(status=status, code=code, diagnostic=_show(reply), remote_mta=remote)


def _show(reply: Reply) -> str:
    text = " ".join(line for line in reply.lines if line)
    return f"{reply.code} {text}".rstrip()


def _all(recipients: Sequence[str], outcome: Outcome) -> dict[str, Outcome]:
    return dict.fromkeys(recipients, outcome)


def needs_smtputf8(sender: str, recipients: Sequence[str], message: bytes) -> bool:
    """Non-ASCII addresses or header fields need SMTPUTF8 (RFC 6531 §3.2, RFC 6532 §3)."""
    head_end = message.find(b"\r\n\r\n")
    head = message if head_end < 0 else message[:head_end]
    return not (sender.isascii() and all(r.isascii() for r in recipients) and head.isascii())


def dot_stuff(message: bytes) -> bytes:
    """The DATA text: a line starting with "." gets another (RFC 5321 §4.5.2), CRLF at the end."""
    if not message.endswith(b"\r\n"):
        message += b"\r\n"
    return _DOT_AT_LINE_START.sub(b"..", message) + b".\r\n"


class _Connection:
    """One SMTP client connection: write commands, read replies, with timeouts."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, hop: Hop
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.hop = hop
        self.replies = SmtpReplyReader(strict=False)
        self.usable = True  # false once a TLS handshake failed half-way

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def reply(self, timeout: float) -> Reply:
        """The next reply; ConnectionError if the server closes instead."""
        async with asyncio.timeout(timeout):
            while True:
                event = self.replies.next_event()
                if isinstance(event, Reply):
                    return event
                if isinstance(event, ConnectionClosed):
                    raise ConnectionError("the server closed the connection")
                assert isinstance(event, NeedData)
                self.replies.receive_data(await self.reader.read(_READ_CHUNK))

    async def command(self, line: str, timeout: float) -> Reply:
        await self.send(line.encode("utf-8") + b"\r\n")
        return await self.reply(timeout)

    async def starttls(self, context: ssl.SSLContext, server_hostname: str | None) -> None:
        """Upgrade in place; bytes the server sent before the handshake are dropped (RFC 3207)."""
        await self.writer.start_tls(context, server_hostname=server_hostname)
        self.replies = SmtpReplyReader(strict=False)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
            async with asyncio.timeout(1.0):
                await self.writer.wait_closed()


def _tls_context(hop: Hop) -> tuple[ssl.SSLContext, str | None]:
    """The client context for the hop's policy, and the name to send (SNI) and check."""
    if hop.tls is TlsPolicy.VERIFY:
        context = ssl.create_default_context(
            cafile=str(hop.ca_file) if hop.ca_file is not None else None
        )
        return context, hop.tls_name
    # opportunistic or encrypt-only: encryption against passive listeners, no identity check
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context, None if is_ip(hop.host) else hop.host


async def relay(
    hop: Hop,
    *,
    helo: str,
    sender: str,
    recipients: Sequence[str],
    message: bytes,
    timeouts: RelayTimeouts,
) -> dict[str, Outcome]:
    """Offer ``message`` to ``hop`` for ``recipients``.

    Args:
        hop: where to connect and with which TLS policy.
        helo: our name for EHLO/HELO.
        sender: the reverse-path without brackets (``""``: null, RFC 5321 §4.5.5).
        recipients: the forward-paths, at least one, without repeats.
        message: the message as queued (CRLF line ends, not dot-stuffed).
        timeouts: the client waits of RFC 5321 §4.5.3.2.

    Returns:
        An outcome for every recipient.

    Raises:
        HopFailure: this hop could not take the message now.
    """
    try:
        return await _attempt(hop, helo, sender, recipients, message, timeouts)
    except _TlsFallback:
        cleartext = dataclasses.replace(hop, tls=TlsPolicy.NONE)
        return await _attempt(cleartext, helo, sender, recipients, message, timeouts)


async def _attempt(
    hop: Hop,
    helo: str,
    sender: str,
    recipients: Sequence[str],
    message: bytes,
    timeouts: RelayTimeouts,
) -> dict[str, Outcome]:
    """One connection to ``hop``: :func:`relay` without the cleartext fallback."""
    remote = hop.host
    try:
        async with asyncio.timeout(timeouts.connect):
            reader, writer = await asyncio.open_connection(hop.address, hop.port)
    except (OSError, TimeoutError) as exc:
        if isinstance(exc, TimeoutError):
            reason = "timed out"
        else:  # asyncio's own text repeats the address and omits the reason
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise HopFailure(
            "4.4.1", f"connect to {remote}[{hop.address}]:{hop.port}: {reason}"
        ) from None
    conn = _Connection(reader, writer, hop)
    try:
        return await _converse(conn, helo, sender, recipients, message, timeouts)
    except HopFailure:
        if conn.usable:  # RFC 5321 §4.1.1.10 (and §3.1: a 554 greeter waits for QUIT)
            await _quit(conn, timeouts)
        raise
    except (OSError, ssl.SSLError, TimeoutError, RemoteProtocolError) as exc:
        what = "timed out" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
        raise HopFailure("4.4.2", f"conversation with {remote}[{hop.address}]: {what}") from None
    finally:
        await conn.close()


async def _greet(
    conn: _Connection, helo: str, timeouts: RelayTimeouts
) -> dict[str, tuple[str, ...]]:
    """EHLO, or HELO when EHLO is refused with 5xx (RFC 5321 §3.2); the extensions offered."""
    reply = await conn.command(f"EHLO {helo}", timeouts.command)
    if reply.code == 250:
        return parse_ehlo(reply, strict=False)
    if reply.code >= 500:
        reply = await conn.command(f"HELO {helo}", timeouts.command)
        if reply.code == 250:
            return {}
    raise HopFailure(_transient(reply), f"{conn.hop.host} refused our greeting: {_show(reply)}")


def _transient(reply: Reply) -> str:
    """A 4.x.x status for a hop-level refusal, keeping the reply's detail when it has one."""
    if reply.enhanced:
        return "4" + reply.enhanced[1:]
    return "4.0.0"


async def _converse(
    conn: _Connection,
    helo: str,
    sender: str,
    recipients: Sequence[str],
    message: bytes,
    timeouts: RelayTimeouts,
) -> dict[str, Outcome]:
    hop = conn.hop
    greeting = await conn.reply(timeouts.greeting)
    if greeting.code != 220:
        # RFC 5321 §3.1: 554 here means no service; another hop may give it
        raise HopFailure(_transient(greeting), f"{hop.host} greeted with {_show(greeting)}")
    ext = await _greet(conn, helo, timeouts)
    if hop.tls is not TlsPolicy.NONE:
        if "STARTTLS" in ext:
            reply = await conn.command("STARTTLS", timeouts.command)
            if reply.code != 220:
                if hop.tls is not TlsPolicy.MAY:
                    raise HopFailure("4.7.4", f"{hop.host} refused STARTTLS: {_show(reply)}")
            else:
                context, name = _tls_context(hop)
                conn.usable = False
                try:
                    async with asyncio.timeout(timeouts.command):
                        await conn.starttls(context, name)
                except ssl.SSLCertVerificationError as exc:
                    raise HopFailure(
                        "4.7.5", f"{hop.host}: certificate not trusted: {exc.verify_message}"
                    ) from None
                except (ssl.SSLError, ConnectionError) as exc:
                    if hop.tls is TlsPolicy.MAY:
                        raise _TlsFallback(str(exc)) from None
                    raise HopFailure("4.7.5", f"{hop.host}: TLS handshake failed: {exc}") from None
                conn.usable = True
                ext = await _greet(conn, helo, timeouts)  # RFC 3207 §4.2: forget what we knew
        elif hop.tls is not TlsPolicy.MAY:
            raise HopFailure("4.7.4", f"{hop.host} does not offer STARTTLS, and TLS is required")

    body_8bit = not message.isascii()
    utf8 = needs_smtputf8(sender, recipients, message)
    refusal = None
    size_limit = ext.get("SIZE", ())
    if utf8 and "SMTPUTF8" not in ext:
        refusal = _local_failure("5.6.7", f"{hop.host} does not offer SMTPUTF8")
    elif body_8bit and "8BITMIME" not in ext and "SMTPUTF8" not in ext:
        refusal = _local_failure("5.6.3", f"{hop.host} does not offer 8BITMIME")
    elif (
        size_limit
        and size_limit[0].isascii()
        and size_limit[0].isdigit()
        and 0 < int(size_limit[0]) < len(message)
    ):
        refusal = _local_failure("5.3.4", f"{hop.host} takes at most {size_limit[0]} octets (SIZE)")
    if refusal is not None:
        await _quit(conn, timeouts)
        return _all(recipients, refusal)

    params = ""
    if "SIZE" in ext:
        params += f" SIZE={len(message)}"  # RFC 1870 §6
    if body_8bit and "8BITMIME" in ext:
        params += " BODY=8BITMIME"  # RFC 6152 §2
    if utf8:
        params += " SMTPUTF8"  # RFC 6531 §3.4
    commands = [f"MAIL FROM:<{sender}>{params}"] + [f"RCPT TO:<{r}>" for r in recipients]
    if "PIPELINING" in ext:
        await conn.send("".join(c + "\r\n" for c in commands).encode("utf-8"))
        replies = [await conn.reply(timeouts.command) for _ in commands]
    else:
        replies = [await conn.command(commands[0], timeouts.command)]
        if replies[0].code == 250:
            replies += [await conn.command(c, timeouts.command) for c in commands[1:]]
    mail_reply = replies[0]
    if mail_reply.code != 250:
        await _quit(conn, timeouts)
        return _all(recipients, _outcome(mail_reply, hop.host))
    results = {
        r: _outcome(reply, hop.host) for r, reply in zip(recipients, replies[1:], strict=True)
    }
    accepted = [r for r, reply in zip(recipients, replies[1:], strict=True) if reply.code < 300]
    if not accepted:
        await _quit(conn, timeouts)
        return results
    reply = await conn.command("DATA", timeouts.data_start)
    if reply.code != 354:
        await _quit(conn, timeouts)
        outcome = _outcome(reply, hop.host) if reply.code >= 400 else _protocol_deferral(reply, hop)
        return results | _all(accepted, outcome)
    data = dot_stuff(message)
    async with asyncio.timeout(timeouts.data_block + len(data) / 10_000):
        await conn.send(data)
    try:
        final = await conn.reply(timeouts.data_end)
    except (OSError, TimeoutError, RemoteProtocolError) as exc:
        what = "timed out" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
        lost = Outcome(
            status="deferred",
            code="4.4.2",
            diagnostic=f"no answer from {hop.host} after the message was sent ({what})",
            remote_mta=hop.host,
        )
        return results | _all(accepted, lost)
    await _quit(conn, timeouts)
    return results | _all(accepted, _outcome(final, hop.host))


def _local_failure(code: str, diagnostic: str) -> Outcome:
    return Outcome(status="failed", code=code, diagnostic=diagnostic, remote_mta=None)


def _protocol_deferral(reply: Reply, hop: Hop) -> Outcome:
    """DATA answered with neither 354 nor an error: the hop broke the protocol; try later."""
    return Outcome(
        status="deferred",
        code="4.5.0",
        diagnostic=f"{hop.host} answered DATA with {_show(reply)}",
        remote_mta=hop.host,
    )


async def _quit(conn: _Connection, timeouts: RelayTimeouts) -> None:
    """QUIT politely; the transaction's outcome no longer depends on it."""
    with contextlib.suppress(OSError, TimeoutError, RemoteProtocolError, ssl.SSLError):
        await conn.command("QUIT", min(timeouts.command, 10.0))
