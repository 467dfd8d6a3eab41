"""Delivery status notifications: the bounces and delay warnings the queue runner sends.

Theory of operation
-------------------
:func:`build_dsn` turns what the queue runner knows about one queued message (its
header section, queue id, arrival time) and about the recipients it failed or is
still trying (:class:`RecipientReport`) into a complete message, ready to be
queued with the null reverse-path (RFC 5321 §4.5.5, so it can never bounce in
turn). The message is a ``multipart/report`` (RFC 6522) of three parts:

1. ``text/plain`` for the human: which recipients, what the remote server said,
   and for a delay how long we keep trying;
2. ``message/delivery-status`` (RFC 3464) for the machine: one per-message block
   (``Reporting-MTA``, ``Arrival-Date``) and one block per recipient
   (``Final-Recipient``, ``Action``, ``Status`` with an RFC 3463 code, and, when
   known, ``Remote-MTA``, ``Diagnostic-Code``, ``Last-Attempt-Date``,
   ``Will-Retry-Until``);
3. the original's header section only (never its body: a bounce should not carry
   the content back, nor double the size of whatever was too big).

Everything that comes from outside (above all the remote server's reply in a
diagnostic) goes through :func:`_clean` first: control characters, CR and LF
included, become spaces, so a hostile reply cannot add fields or blocks. Fields
are folded at spaces and no line is longer than 998 octets (RFC 5322 §2.1.1);
diagnostics are cut at :data:`MAX_DIAGNOSTIC_OCTETS`. The boundary is random and
checked against every part, so text planted in the original cannot end a part.

Non-ASCII (RFC 6533) is handled by the simplest rule that is correct:

* if the sender or any recipient address is non-ASCII, the message is for an
  SMTPUTF8 world anyway: part 2 is ``message/global-delivery-status`` (and the
  ``report-type`` says so, RFC 6522 §3), non-ASCII addresses use the ``utf-8``
  address type in its plain ``utf-8-address`` form, ASCII ones keep ``rfc822``,
  and diagnostics keep their UTF-8;
* otherwise part 2 is plain ``message/delivery-status`` and any non-ASCII
  character in a diagnostic or host name is written as ``\\x{HEX}`` (the
  notation of RFC 6533's EmbeddedUnicodeChar), so parts 1 and 2 stay ASCII;
* part 3 is ``text/rfc822-headers`` when the original's header section is
  ASCII, ``message/global-headers`` (8bit) when it is valid UTF-8; header bytes
  that are neither (raw Latin-1, NUL, bare CR, lines over 998 octets) are sent
  quoted-printable, which both types allow, rather than altered.

The result is 7-bit ASCII unless an address is non-ASCII or the original's
headers are UTF-8; the caller can tell with ``dsn.isascii()`` (then it needs
8BITMIME, or SMTPUTF8 when the sender address itself is non-ASCII).
"""

from __future__ import annotations

import binascii
import re
import secrets
import textwrap
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from email.utils import formatdate
from typing import Final, Literal

__all__ = ["MAX_DIAGNOSTIC_OCTETS", "RecipientReport", "build_dsn"]

# RFC 5322 §2.1.1: a line is at most 998 octets before its CRLF
MAX_LINE_OCTETS: Final = 998
# where fields are folded when a space allows it (RFC 5322 §2.1.1's "SHOULD be 78")
FOLD_OCTETS: Final = 78
# a remote reply longer than this (a few multi-line replies' worth) is cut
MAX_DIAGNOSTIC_OCTETS: Final = 4096
TEXT_WIDTH: Final = 72

_STATUS_RE: Final = re.compile(r"[45]\.[0-9]{1,3}\.[0-9]{1,3}")
_HOST_BAD_RE: Final = re.compile(r"[\s<>@()\[\],;:\"\\]")
_LINE_END_RE: Final = re.compile(rb"\r\n|\r|\n")
_CONTROL_BYTE_RE: Final = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_SUBJECTS: Final = {
    "failed": "Undelivered Mail Returned to Sender",
    "delayed": "Delayed Mail (still being retried)",
}


@dataclass(frozen=True, kw_only=True)
class RecipientReport:
    """What happened to one recipient, as far as the DSN tells it.

    Attributes:
        address: the recipient as given in RCPT TO, without angle brackets.
        action: ``"failed"`` (given up) or ``"delayed"`` (still being retried).
        status: the RFC 3463 code, class 4 or 5, e.g. ``"5.1.1"`` or ``"4.4.7"``.
        diagnostic: the remote server's reply, e.g. ``"550 5.1.1 no such user"``
            (multi-line replies joined with spaces), if there was one.
        remote_mta: the host name of the server that answered, if any did.
        last_attempt: when delivery was last tried, seconds since the epoch.
        will_retry_until: for ``"delayed"``, when the queue gives up.
    """

    address: str
    action: Literal["failed", "delayed"]
    status: str
    diagnostic: str | None = None
    remote_mta: str | None = None
    last_attempt: float | None = None
    will_retry_until: float | None = None


def build_dsn(
    *,
    reporting_mta: str,
    original_sender: str,
    original: bytes,
    queue_id: str,
    arrival: float,
    recipients: Sequence[RecipientReport],
    now: float,
) -> bytes:
    """The whole DSN for ``recipients`` of one queued message, CRLF line ends.

    Args:
        reporting_mta: our host name (``Reporting-MTA``, ``From``, ``Message-ID``).
        original_sender: the original's reverse-path; the DSN goes to it.
        original: the original message as queued; only its header section is used.
        queue_id: the original's queue id (in the text and the ``Message-ID``).
        arrival: when the original was queued, seconds since the epoch.
        recipients: one report per recipient, all with the same action.
        now: the current time, seconds since the epoch.

    Returns:
        The message, to be queued with the null reverse-path.

    Raises:
        ValueError: no recipients, mixed actions, an empty ``original_sender``
            (never bounce a bounce), a status that is not a class 4 or 5 RFC 3463
            code, or a ``reporting_mta`` that is not a plain host name.
    """
    if not recipients:
        raise ValueError("a DSN needs at least one recipient")
    action = recipients[0].action
    if action not in _SUBJECTS:
        raise ValueError(f"unknown DSN action {action!r}")
    if any(r.action != action for r in recipients):
        raise ValueError("all recipients of one DSN must have the same action")
    if not original_sender:
        raise ValueError("no DSN for a message with the null reverse-path")
    if not reporting_mta or _HOST_BAD_RE.search(reporting_mta) or not reporting_mta.isprintable():
        raise ValueError(f"reporting_mta {reporting_mta!r} is not a host name")
    for r in recipients:
        if not _STATUS_RE.fullmatch(r.status):
            raise ValueError(f"status {r.status!r} is not a class 4 or 5 RFC 3463 code")

    utf8 = not all(a.isascii() for a in (original_sender, *(r.address for r in recipients)))
    text = _human_part(reporting_mta, queue_id, arrival, recipients, utf8)
    status = _status_part(reporting_mta, arrival, recipients, utf8)
    headers = _headers_part(original)
    parts = [text, status, headers]

    boundary = _boundary(parts)
    report_type = "global-delivery-status" if utf8 else "delivery-status"
    eight_bit = not all(p.isascii() for p in parts)
    top = [
        f"From: Mail Delivery System <MAILER-DAEMON@{reporting_mta}>",
        *_fold("To", f"<{_clean(original_sender)}>"),
        f"Subject: {_SUBJECTS[action]}",
        f"Date: {formatdate(now)}",
        f"Message-ID: {_message_id(queue_id, now, reporting_mta)}",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f"Content-Type: multipart/report; report-type={report_type};",
        f' boundary="{boundary}"',
    ]
    if eight_bit:
        top.append("Content-Transfer-Encoding: 8bit")
    out = bytearray(_lines(top))
    out += b"\r\nThis is a MIME-encapsulated delivery status notification.\r\n"
    for part in parts:
        out += b"\r\n--" + boundary.encode() + b"\r\n" + part
    out += b"\r\n--" + boundary.encode() + b"--\r\n"
    return bytes(out)


def _human_part(
    reporting_mta: str,
    queue_id: str,
    arrival: float,
    recipients: Sequence[RecipientReport],
    utf8: bool,
) -> bytes:
    """Part 1: a plain-text explanation for the person who sent the message."""
    delayed = recipients[0].action == "delayed"
    paras = [f"This is the mail delivery system at {reporting_mta}."]
    if delayed:
        limits = [r.will_retry_until for r in recipients if r.will_retry_until is not None]
        until = f"until {formatdate(max(limits))}" if limits else "for a while"
        paras.append(
            "Your message has not been delivered yet to the recipients listed below."
            f" The mail system will keep trying {until}; you do not need to send it"
            " again."
        )
    else:
        paras.append(
            "Your message could not be delivered to the recipients listed below,"
            " and the mail system has given up on them. The header section of your"
            " message is attached."
        )
    paras.append(f"The message was queued as {_text(queue_id, utf8)} on {formatdate(arrival)}.")
    lines: list[str] = []
    for para in paras:
        lines += textwrap.wrap(para, TEXT_WIDTH, break_on_hyphens=False)
        lines.append("")
    for r in recipients:
        lines.append(f"<{_clean(r.address)}>")
        said = [f"status {r.status}"]
        if r.remote_mta:
            said.append(f"reported by {_text(r.remote_mta, utf8)}")
        if delayed and r.will_retry_until is not None:
            said.append(f"retried until {formatdate(r.will_retry_until)}")
        details = "; ".join(said)
        if r.diagnostic:
            details = f"{_diagnostic(r.diagnostic, utf8)} ({details})"
        lines += textwrap.wrap(
            details,
            TEXT_WIDTH,
            initial_indent="    ",
            subsequent_indent="    ",
            break_on_hyphens=False,
        )
        lines.append("")
    body = _lines(lines[:-1])  # no blank line at the end
    head = [
        "Content-Type: text/plain; charset=utf-8",
        _cte(body),
        "Content-Description: Notification",
    ]
    return _lines(head) + b"\r\n" + body


def _status_part(
    reporting_mta: str,
    arrival: float,
    recipients: Sequence[RecipientReport],
    utf8: bool,
) -> bytes:
    """Part 2: the RFC 3464 fields (RFC 6533's global variant for UTF-8 addresses)."""
    lines = [
        f"Reporting-MTA: dns; {reporting_mta}",
        f"Arrival-Date: {formatdate(arrival)}",
    ]
    for r in recipients:
        address = _clean(r.address)
        addr_type = "rfc822" if address.isascii() else "utf-8"
        lines.append("")
        lines += _fold("Final-Recipient", f"{addr_type}; {address}")
        lines.append(f"Action: {r.action}")
        lines.append(f"Status: {r.status}")
        if r.remote_mta:
            lines += _fold("Remote-MTA", f"dns; {_text(r.remote_mta, utf8)}")
        if r.diagnostic:
            lines += _fold("Diagnostic-Code", f"smtp; {_diagnostic(r.diagnostic, utf8)}")
        if r.last_attempt is not None:
            lines.append(f"Last-Attempt-Date: {formatdate(r.last_attempt)}")
        if r.action == "delayed" and r.will_retry_until is not None:
            lines.append(f"Will-Retry-Until: {formatdate(r.will_retry_until)}")
    body = _lines(lines)
    ctype = "message/global-delivery-status" if utf8 else "message/delivery-status"
    head = [f"Content-Type: {ctype}", _cte(body), "Content-Description: Delivery report"]
    return _lines(head) + b"\r\n" + body


def _headers_part(original: bytes) -> bytes:
    """Part 3: the original's header section, as it was wherever the rules allow."""
    section: list[bytes] = []
    for line in _LINE_END_RE.split(original):
        if not line:
            break
        section.append(line)
    if section and all(_plain_line(line) for line in section):
        body = b"".join(line + b"\r\n" for line in section)
        try:
            body.decode("utf-8")
        except UnicodeDecodeError:
            pass
        else:
            if body.isascii():
                ctype, cte = "text/rfc822-headers", "7bit"
            else:
                ctype, cte = "message/global-headers", "8bit"
            return _part_head(ctype, cte) + body
    # broken headers: RFC 6522 allows quoted-printable for text/rfc822-headers; the
    # bytes go back unchanged instead of being guessed at (raw Latin-1, say)
    ctype = "text/rfc822-headers"
    if not section:
        return _part_head(ctype, "7bit")
    qp = bytearray()
    for line in section:
        qp += binascii.b2a_qp(line, quotetabs=False, istext=False).replace(b"=\n", b"=\r\n")
        qp += b"\r\n"
    return _part_head(ctype, "quoted-printable") + bytes(qp)


def _plain_line(line: bytes) -> bool:
    """Whether a header line can go out as it is (no controls but TAB, not too long)."""
    return len(line) <= MAX_LINE_OCTETS and not _CONTROL_BYTE_RE.search(line)


def _part_head(ctype: str, cte: str) -> bytes:
    """A part's header for the returned header section, with the blank line after it."""
    return (
        _lines(
            [
                f"Content-Type: {ctype}",
                f"Content-Transfer-Encoding: {cte}",
                "Content-Description: Header section of the undelivered message",
            ]
        )
        + b"\r\n"
    )


def _cte(body: bytes) -> str:
    """The Content-Transfer-Encoding field for a part we wrote ourselves."""
    return "Content-Transfer-Encoding: " + ("7bit" if body.isascii() else "8bit")


def _boundary(parts: Iterable[bytes]) -> str:
    """A random boundary that occurs in none of the parts."""
    parts = list(parts)
    while True:
        boundary = f"=_dsn_{secrets.token_hex(16)}"
        needle = boundary.encode()
        if not any(needle in part for part in parts):
            return boundary


def _message_id(queue_id: str, now: float, host: str) -> str:
    """A ``Message-ID`` unique by queue id, time and a random part."""
    qid = re.sub(r"[^A-Za-z0-9_-]", "_", queue_id)[:64] or "dsn"
    return f"<dsn.{qid}.{int(now * 1000):x}.{secrets.token_hex(6)}@{host}>"


def _clean(value: str) -> str:
    """``value`` with every control or line-separator character turned into a space.

    The one defence against a hostile remote reply (or address) adding fields.
    """
    return "".join(
        " " if unicodedata.category(c) in ("Cc", "Zl", "Zp") else c for c in value
    ).strip()


def _text(value: str, utf8: bool) -> str:
    """:func:`_clean`, with non-ASCII as ``\\x{HEX}`` unless the DSN is UTF-8 anyway."""
    value = _clean(value)
    if utf8 or value.isascii():
        return value
    return "".join(c if c.isascii() else f"\\x{{{ord(c):X}}}" for c in value)


def _diagnostic(value: str, utf8: bool) -> str:
    """A remote reply made safe: one line, single spaces, at most MAX_DIAGNOSTIC_OCTETS."""
    value = " ".join(_text(value, utf8).split())
    if len(value.encode()) > MAX_DIAGNOSTIC_OCTETS:
        value = _cut(value, MAX_DIAGNOSTIC_OCTETS - 4) + " ..."
    return value


def _fold(name: str, value: str) -> list[str]:
    """``name: value`` folded before spaces near FOLD_OCTETS, each line at most 998 octets.

    Unfolding (removing the CRLFs) gives back ``value`` exactly; a word too long
    for a line on its own is cut, the only case where text is lost.
    """
    lines: list[str] = []
    line = f"{name}:"
    has_word = False  # never fold right after the name: the first line would be empty
    for word in value.split(" "):
        piece = " " + word
        if word and has_word and len((line + piece).encode()) > FOLD_OCTETS:
            lines.append(line)
            line = piece
        else:
            line += piece
        has_word = has_word or bool(word)
    lines.append(line)
    return [_cut(line, MAX_LINE_OCTETS) for line in lines]


def _cut(value: str, octets: int) -> str:
    """The longest prefix of ``value`` that is at most ``octets`` octets of UTF-8."""
    raw = value.encode()
    if len(raw) <= octets:
        return value
    return raw[:octets].decode("utf-8", errors="ignore")


def _lines(lines: Iterable[str]) -> bytes:
    """``lines`` as UTF-8, each cut to 998 octets and ended with CRLF."""
    return b"".join(_cut(line, MAX_LINE_OCTETS).encode() + b"\r\n" for line in lines)
