"""Sending from the web page: build the message, then the same steps as a submission session.

Theory of operation: a submission session, after the final dot, adds a
``Received:`` field (RFC 5321 §4.4), ``Date:`` and ``Message-ID:`` when the
client left them out (RFC 6409 §8.2, §8.3), and hands the message to
:meth:`MailServer.accept_message`: durable Maildir delivery for local
recipients (then IMAP sessions are woken), the outbound spool and queue
runner for remote ones. Sending from the page ends in the same method, with
the same policy applied first: the sender is the account's own address
(RFC 6409 §3.2; a submission session refuses other senders with 553), local
recipients must have a mailbox (550 at RCPT), the recipient and size limits
are the server's. Nothing goes over a socket to our own SMTP port.

The message is built by the email package (``policy.SMTP``: CRLF line ends,
RFC 2047 encoded words for non-ASCII header text, quoted-printable or base64
for long or 8-bit lines), so header injection through a subject or an
address is impossible: CR and LF in them are refused or replaced first.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import re
import time
from dataclasses import dataclass, field
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from ..app import MailServer
    from ..auth import Account

__all__ = ["ComposeError", "Draft", "Sent", "build_message", "parse_recipients", "submit"]

log = logging.getLogger("reference_server.web")

# addr-spec, dot-atom form only (RFC 5322 §3.4.1), ASCII: no SMTPUTF8 from the web form
_ATEXT: Final = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_ADDR_SPEC: Final = re.compile(
    rf"^{_ATEXT}(?:\.{_ATEXT})*@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$"
)
MAX_SUBJECT: Final = 998 - len("Subject: ")  # RFC 5322 §2.1.1: a line is at most 998 characters


class ComposeError(Exception):
    """The message cannot be sent as given; the text says what to change.

    Attributes:
        status: the HTTP status to answer (400 for the sender's mistake, 503 for ours).
    """

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Draft:
    """What the compose form or ``POST /api/send`` gave."""

    to: str = ""
    cc: str = ""
    bcc: str = ""
    subject: str = ""
    body: str = ""


@dataclass(frozen=True, slots=True)
class Sent:
    """The outcome of :func:`submit`."""

    message_id: str
    local: list[str] = field(default_factory=list)  # delivered into mailboxes here
    remote: list[str] = field(default_factory=list)  # queued for relay
    queue_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "message_id": self.message_id,
            "delivered": self.local,
            "queued": self.remote,
            "queue_id": self.queue_id,
        }


def parse_recipients(field_text: str, what: str) -> list[Address]:
    """Addresses from a To/Cc/Bcc field (comma separated, display names allowed).

    Raises:
        ComposeError: an address is not a plain ASCII ``local@domain``, or the field has
            a line break.
    """
    if any(c in field_text for c in "\r\n\x00"):
        raise ComposeError(f"{what}: line breaks are not allowed; separate addresses with commas")
    # empty items ("a@b.test, , c@d.test", a trailing comma) are dropped first: afterwards
    # ('', '') from getaddresses means an item it could not read
    field_text = ",".join(item for item in field_text.split(",") if item.strip())
    out: list[Address] = []
    for name, addr in email.utils.getaddresses([field_text]) if field_text else []:
        if not _ADDR_SPEC.match(addr):
            shown = addr or name or field_text.strip()
            raise ComposeError(
                f"{what}: {shown!r} is not an address like someone@example.test "
                "(ASCII only; separate several with commas)"
            )
        local, _, domain = addr.rpartition("@")
        out.append(Address(display_name=name, username=local, domain=domain))
    return out


def build_message(
    account: Account, draft: Draft, hostname: str, now: float
) -> tuple[EmailMessage, str, list[str]]:
    """The message (without trace fields), its Message-ID, and every envelope recipient.

    Raises:
        ComposeError: no sender address, no recipient, or a bad field.
    """
    if not account.addresses:
        raise ComposeError(f"account {account.username!r} has no address to send from")
    to = parse_recipients(draft.to, "To")
    cc = parse_recipients(draft.cc, "Cc")
    bcc = parse_recipients(draft.bcc, "Bcc")
    recipients: list[str] = []
    for address in [*to, *cc, *bcc]:
        if address.addr_spec.lower() not in (r.lower() for r in recipients):
            recipients.append(address.addr_spec)
    if not recipients:
        raise ComposeError("give at least one recipient in To, Cc or Bcc")
    subject = " ".join(draft.subject.split())  # no CR/LF: one line
    if len(subject) > MAX_SUBJECT:
        raise ComposeError(f"the subject is longer than {MAX_SUBJECT} characters")
    message_id = email.utils.make_msgid(domain=hostname)
    msg = EmailMessage(policy=policy.SMTP)
    msg["From"] = account.addresses[0]
    if to:
        msg["To"] = to
    if cc:
        msg["Cc"] = cc
    if subject:
        msg["Subject"] = subject
    msg["Date"] = email.utils.formatdate(now, localtime=False)
    msg["Message-ID"] = message_id
    body = draft.body.replace("\r\n", "\n").replace("\r", "\n")
    if body and not body.endswith("\n"):
        body += "\n"
    msg.set_content(body, charset="utf-8")
    return msg, message_id, recipients


def _received(server: MailServer, peer: str, secure: bool, queue_ref: str, now: float) -> bytes:
    """The trace field a submission session adds (RFC 5321 §4.4), naming HTTP as the protocol."""
    date = email.utils.formatdate(now, localtime=False)
    proto = "HTTPS" if secure else "HTTP"
    return (
        f"Received: from [{peer}]\r\n"
        f"\tby {server.config.hostname} with {proto} id {queue_ref};\r\n"
        f"\t{date}\r\n"
    ).encode()


async def submit(
    server: MailServer, account: Account, draft: Draft, *, peer: str, secure: bool
) -> tuple[Sent, bytes]:
    """Check, build and store a message like a submission session after DATA.

    Returns:
        What happened, and the message as sent (without the trace field), for Sent.

    Raises:
        ComposeError: refused (400) or not stored (503); nothing was delivered then.
    """
    now = time.time()
    config = server.config
    msg, message_id, recipients = build_message(account, draft, config.hostname, now)
    if len(recipients) > config.limits.max_recipients:
        raise ComposeError(f"too many recipients (at most {config.limits.max_recipients})")
    local: dict[str, str] = {}  # address -> mailbox user
    remote: list[str] = []
    for address in recipients:
        domain = address.rpartition("@")[2].lower()
        if config.is_local(domain):
            user = server.mailbox_for(address)
            if user is None:
                raise ComposeError(f"no mailbox here by that name: {address}")
            local[address] = user
        else:
            remote.append(address)
    content = msg.as_bytes()
    if len(content) > config.limits.max_message_size:
        raise ComposeError(
            f"the message is {len(content)} octets; the limit is {config.limits.max_message_size}"
        )
    ref = f"{int(now * 1000):x}{random.getrandbits(24):06x}"
    message = _received(server, peer, secure, ref, now) + content
    sender = account.addresses[0]
    queue_id: str | None = None
    try:
        async with asyncio.timeout(config.limits.timeouts.data_end):
            queue_id = await server.accept_message(
                sender, list(local.values()), remote, message, peer
            )
    except (OSError, TimeoutError) as exc:
        log.error("web %s: could not store message: %s", ref, exc or "timed out")
        raise ComposeError("could not store the message; try again later", 503) from None
    log.info(
        "web %s: %s sent %s to %d recipient(s)", ref, account.username, message_id, len(recipients)
    )
    return Sent(message_id, list(local), remote, queue_id), content
