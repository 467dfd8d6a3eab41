"""One function per SMTP verb, and the registry that maps verbs to them.

Each handler gets the session and the command and returns the reply; the
state table has already said the command may run now. Policy lives here:
which listener accepts what (MX: local domains only; submission: AUTH after
TLS, senders limited to the user's own addresses), and durable storage
before any 250 to the end of data.
"""

from __future__ import annotations

import asyncio
import binascii
import email.utils
import functools
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Final

from conformance.wire import RemoteProtocolError
from conformance.wire.smtp import (
    Command,
    DataRejected,
    MessageData,
    Reply,
    parse_mail_from,
    parse_rcpt_to,
)

from ..auth import decode_b64_text, decode_plain
from .session import After, SmtpSession

__all__ = ["HANDLERS", "data_rejected", "message_received", "unknown_command"]

log = logging.getLogger("reference_server.smtp")

Handler = Callable[[SmtpSession, Command], Awaitable[Reply]]

# Domain = sub-domain *("." sub-domain) / address-literal (RFC 5321 §4.1.1.1, §4.1.3)
_HELO_ARG = re.compile(
    r"(?:[A-Za-z0-9\u0080-\U0010ffff](?:[A-Za-z0-9\-\u0080-\U0010ffff]*[A-Za-z0-9\u0080-\U0010ffff])?"
    r"(?:\.[A-Za-z0-9\u0080-\U0010ffff](?:[A-Za-z0-9\-\u0080-\U0010ffff]*[A-Za-z0-9\u0080-\U0010ffff])?)*"
    r"|\[[A-Za-z0-9.:\-]+\])"
)


# Replies are immutable; most are the same few texts, so build each once.
_reply = functools.lru_cache(maxsize=512)(Reply.build)


def _ok(text: str = "OK", enhanced: str = "2.0.0") -> Reply:
    return _reply(250, enhanced, text)


def _helo_name(cmd: Command) -> str | None:
    name = cmd.arg.split(" ", 1)[0]
    return name if name and _HELO_ARG.fullmatch(name) else None


async def ehlo(session: SmtpSession, cmd: Command) -> Reply:
    """RFC 5321 §4.1.1.1; the keyword list is what this listener offers right now."""
    name = _helo_name(cmd)
    if name is None:
        return _reply(501, "5.5.4", "EHLO needs a domain or address literal (RFC 5321 §4.1.1.1)")
    session.helo, session.esmtp = name, True
    session.reset_transaction()
    server = session.server
    return _ehlo_reply(
        server.config.hostname,
        name,
        server.config.limits.max_message_size,
        server.tls_context is not None and not session.tls and session.conn.can_start_tls,
        session.listener.offers_auth and session.tls,
    )


@functools.lru_cache(maxsize=256)
def _ehlo_reply(hostname: str, name: str, max_size: int, starttls: bool, auth: bool) -> Reply:
    """The EHLO reply, built once per client name and offer (what the listener and TLS allow)."""
    lines = [
        f"{hostname} greets {name}",
        "PIPELINING",
        f"SIZE {max_size}",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
    ]
    if starttls:
        lines.append("STARTTLS")
    if auth:
        lines.append("AUTH PLAIN LOGIN")
    lines.append("HELP")
    return Reply.build(250, None, *lines)  # RFC 2034 §4: no enhanced codes on EHLO


async def helo(session: SmtpSession, cmd: Command) -> Reply:
    name = _helo_name(cmd)
    if name is None:
        return _reply(501, "5.5.4", "HELO needs a domain or address literal (RFC 5321 §4.1.1.1)")
    session.helo, session.esmtp = name, False
    session.reset_transaction()
    return _reply(250, None, session.server.config.hostname)


async def starttls(session: SmtpSession, cmd: Command) -> Reply:
    if cmd.arg:
        return _reply(501, "5.5.4", "STARTTLS takes no parameters (RFC 3207 §4)")
    if session.tls:
        return _reply(503, "5.5.1", "TLS is already active (RFC 3207 §4.2)")
    if session.server.tls_context is None or not session.conn.can_start_tls:
        return _reply(502, "5.5.1", "STARTTLS is not offered here")
    session.after = After.START_TLS
    return _reply(220, "2.0.0", "ready to start TLS")


async def auth(session: SmtpSession, cmd: Command) -> Reply:
    """RFC 4954 §4: AUTH mechanism [initial-response]; PLAIN (RFC 4616) and LOGIN."""
    if not session.listener.offers_auth:
        return _reply(502, "5.5.1", "AUTH is offered on the submission ports only")
    if not session.tls:
        return _reply(538, "5.7.11", "encryption required: use STARTTLS first (RFC 4954 §4)")
    if session.user is not None:
        return _reply(503, "5.5.1", "already authenticated (RFC 4954 §4)")
    mech, _, initial = cmd.arg.partition(" ")
    mech = mech.upper()
    try:
        if mech == "PLAIN":
            token = initial or (await session.ask("") or b"").decode("ascii", "replace")
            if token == "*":
                return _reply(501, "5.7.0", "authentication cancelled")
            authzid, username, password = decode_plain("" if token == "=" else token)
            if authzid and authzid != username:
                return _reply(535, "5.7.8", "authorization identity must match (RFC 4616 §2)")
        elif mech == "LOGIN":
            if initial:
                username = decode_b64_text(initial)
            else:
                line = await session.ask("VXNlcm5hbWU6")  # "Username:"
                if line is None or line == b"*":
                    return _reply(501, "5.7.0", "authentication cancelled")
                username = decode_b64_text(line.decode("ascii", "replace"))
            line = await session.ask("UGFzc3dvcmQ6")  # "Password:"
            if line is None or line == b"*":
                return _reply(501, "5.7.0", "authentication cancelled")
            password = decode_b64_text(line.decode("ascii", "replace"))
        else:
            return _reply(504, "5.5.4", f"unrecognized authentication mechanism {mech or '(none)'}")
    except (ValueError, binascii.Error) as exc:
        return _reply(501, "5.5.2", f"cannot decode the response: {exc}")
    account = await session.server.offload(session.server.accounts.authenticate, username, password)
    if account is None:
        log.info("%s: AUTH %s failed for %r", session.session_id, mech, username)
        await asyncio.sleep(session.server.config.limits.auth_failure_delay)
        return _reply(535, "5.7.8", "authentication credentials invalid")
    session.user = account
    return _reply(235, "2.7.0", "authentication successful")


def _check_params(
    session: SmtpSession, params: dict[str, str | None], allowed: set[str]
) -> Reply | None:
    for key in params:
        if key not in allowed:
            return _reply(555, "5.5.4", f"parameter {key} not recognized")
    return None


async def mail(session: SmtpSession, cmd: Command) -> Reply:
    try:
        args = parse_mail_from(cmd.arg)
    except RemoteProtocolError as exc:
        code, _, enhanced = (exc.reply_hint or "501 5.5.4").partition(" ")
        return _reply(int(code), enhanced or None, str(exc))
    allowed = {"SIZE", "BODY", "SMTPUTF8", "AUTH"} if session.esmtp else set()
    bad = _check_params(session, args.params, allowed)
    if bad is not None:
        return bad
    limits = session.server.config.limits
    size = args.params.get("SIZE")
    if "SIZE" in args.params:
        # size-value ::= 1*20DIGIT (RFC 1870 §3): ASCII digits, at most 20, and present
        if size is None or not (size.isascii() and size.isdigit()) or len(size) > 20:
            return _reply(501, "5.5.4", "SIZE needs a number of 1 to 20 digits (RFC 1870 §3)")
        if int(size) > limits.max_message_size:
            return _reply(
                552, "5.3.4", f"message size exceeds fixed limit of {limits.max_message_size}"
            )
    body = args.params.get("BODY")
    if "BODY" in args.params and (body is None or body.upper() not in ("7BIT", "8BITMIME")):
        return _reply(501, "5.5.4", "BODY must be 7BIT or 8BITMIME (RFC 6152 §3)")
    utf8 = "SMTPUTF8" in args.params
    if args.params.get("SMTPUTF8") is not None:
        return _reply(501, "5.5.4", "SMTPUTF8 takes no value (RFC 6531 §3.4)")
    if not utf8 and not args.address.isascii():
        if not session.esmtp:  # no extension can be in effect after HELO
            return _reply(501, "5.5.2", "non-ASCII characters in the address (RFC 5321 §4.1.2)")
        # RFC 6531 §3.5: 550 when MAIL needs an ASCII address (553 is for RCPT)
        return _reply(
            550, "5.6.7", "non-ASCII address needs the SMTPUTF8 parameter (RFC 6531 §3.4)"
        )
    if session.listener.requires_auth:
        if session.user is None:
            return _reply(530, "5.7.0", "authentication required (RFC 4954 §6)")
        owned = {a.lower() for a in session.user.addresses}
        # RFC 6409 §3.2: the null path (MDNs, RFC 8098) is not refused for being null
        if args.address and args.address.lower() not in owned:
            return _reply(553, "5.7.1", f"sender <{args.address}> is not yours to use")
    session.reset_transaction()
    session.envelope.sender = args.address
    session.envelope.utf8 = utf8
    return _ok("sender OK", "2.1.0")


async def rcpt(session: SmtpSession, cmd: Command) -> Reply:
    try:
        args = parse_rcpt_to(cmd.arg)
    except RemoteProtocolError as exc:
        code, _, enhanced = (exc.reply_hint or "501 5.5.4").partition(" ")
        return _reply(int(code), enhanced or None, str(exc))
    bad = _check_params(session, args.params, set())
    if bad is not None:
        return bad
    env = session.envelope
    if not env.utf8 and not args.address.isascii():
        return _reply(553, "5.6.7", "non-ASCII address needs SMTPUTF8 on MAIL (RFC 6531 §3.4)")
    if len(env.recipients) >= session.server.config.limits.max_recipients:
        return _reply(452, "4.5.3", "too many recipients (RFC 5321 §4.5.3.1.8)")
    address = args.address
    config = session.server.config
    domain = address.rpartition("@")[2].lower() if "@" in address else None
    if address == "postmaster" or domain in config.domains:
        user = session.server.mailbox_for(address)  # postmaster always has one (§4.5.1)
        if user is None:
            return _reply(550, "5.1.1", f"no mailbox here by that name: <{address}>")
        env.local[address] = user
        return _ok("recipient OK", "2.1.5")
    if session.user is None:
        return _reply(550, "5.7.1", f"relaying denied: <{address}> is not local")
    env.remote.append(address)
    return _ok("recipient OK, will relay", "2.1.5")


async def data(session: SmtpSession, cmd: Command) -> Reply:
    if cmd.arg:
        return _reply(501, "5.5.4", "DATA takes no parameters (RFC 5321 §4.1.1.4)")
    session.after = After.READ_DATA
    return _reply(354, None, "end data with <CR><LF>.<CR><LF>")


async def rset(session: SmtpSession, cmd: Command) -> Reply:
    if cmd.arg:  # RFC 5321 §4.3.2: RSET takes no arguments
        return _reply(501, "5.5.4", "RSET takes no parameters (RFC 5321 §4.1.1.5)")
    session.reset_transaction()
    return _ok()


async def noop(session: SmtpSession, cmd: Command) -> Reply:
    return _ok()  # RFC 5321 §4.1.1.9: any argument is ignored


async def vrfy(session: SmtpSession, cmd: Command) -> Reply:
    # RFC 5321 §3.5.3: 252 when we will not confirm; no user enumeration
    return _reply(252, "2.5.0", "cannot VRFY user, but will accept message for local recipients")


async def expn(session: SmtpSession, cmd: Command) -> Reply:
    return _reply(502, "5.5.1", "EXPN is not offered (RFC 5321 §3.5.2)")


async def help_(session: SmtpSession, cmd: Command) -> Reply:
    verbs = " ".join(sorted(HANDLERS))
    return _reply(214, "2.0.0", f"commands: {verbs}", "see RFC 5321")


async def quit_(session: SmtpSession, cmd: Command) -> Reply:
    if cmd.arg:  # RFC 5321 §4.3.2; the connection stays open, as after any error
        return _reply(501, "5.5.4", "QUIT takes no parameters (RFC 5321 §4.1.1.10)")
    session.after = After.CLOSE
    return _reply(221, "2.0.0", f"{session.server.config.hostname} closing connection")


def unknown_command(session: SmtpSession, cmd: Command) -> Reply:
    return _reply(500, "5.5.2", f"command {cmd.verb} unrecognized")


def data_rejected(session: SmtpSession, event: DataRejected) -> Reply:
    return _reply(event.code, event.enhanced, event.text)


def _has_header(head: bytes, name: bytes) -> bool:
    return re.search(rb"(?im)^" + re.escape(name) + rb"[ \t]*:", head) is not None


async def message_received(session: SmtpSession, event: MessageData) -> Reply:
    """Add trace and submission fix-ups, store durably, and only then say 250."""
    server = session.server
    content = event.content
    now = time.time()
    head_end = content.find(b"\r\n\r\n")
    head = content[: head_end + 2] if head_end >= 0 else content
    added: list[bytes] = []
    if session.listener.requires_auth:  # RFC 6409 §8.2, §8.3
        if not _has_header(head, b"Date"):
            added.append(
                b"Date: " + email.utils.formatdate(now, localtime=False).encode() + b"\r\n"
            )
        if not _has_header(head, b"Message-ID"):
            mid = f"<{session.session_id}.{int(now * 1e6):x}@{server.config.hostname}>"
            added.append(b"Message-ID: " + mid.encode() + b"\r\n")
    message = _received(session, now) + b"".join(added) + content
    try:
        env = session.envelope
        # asyncio.timeout, not wait_for: no extra task (and its hand-offs) per message
        async with asyncio.timeout(server.config.limits.timeouts.data_end):
            await server.accept_message(
                env.sender or "",
                list(env.local.values()),
                env.remote,
                message,
                session.conn.peer[0],
            )
    except (OSError, TimeoutError) as exc:
        log.error("%s: could not store message: %s", session.session_id, exc or "timed out")
        return _reply(451, "4.3.0", "could not store the message; try again later")
    return _ok(f"message accepted as {session.session_id}", "2.6.0")


def _received(session: SmtpSession, now: float) -> bytes:
    """RFC 5321 §4.4 trace header; the protocol name per RFC 3848."""
    proto = (
        ("ESMTP" if session.esmtp else "SMTP")
        + ("S" if session.tls else "")
        + ("A" if session.user is not None else "")
    )
    if proto == "SMTPS":
        proto = "SMTP"  # RFC 3848 names no TLS variant for plain SMTP
    env = session.envelope
    rcpt = f"\r\n\tfor <{env.recipients[0]}>" if len(env.recipients) == 1 else ""
    date = _date_header(int(now))
    text = (
        f"Received: from {session.helo} ([{session.conn.peer[0]}])\r\n"
        f"\tby {session.server.config.hostname} with {proto} id {session.session_id}{rcpt};\r\n"
        f"\t{date}\r\n"
    )
    return text.encode("utf-8", "surrogateescape")


@functools.lru_cache(maxsize=4)
def _date_header(seconds: int) -> str:
    """RFC 5322 date-time of a whole second, formatted once per second under load."""
    return email.utils.formatdate(seconds, localtime=False)


HANDLERS: Final[dict[str, Handler]] = {
    "EHLO": ehlo,
    "HELO": helo,
    "STARTTLS": starttls,
    "AUTH": auth,
    "MAIL": mail,
    "RCPT": rcpt,
    "DATA": data,
    "RSET": rset,
    "NOOP": noop,
    "VRFY": vrfy,
    "EXPN": expn,
    "HELP": help_,
    "QUIT": quit_,
}
