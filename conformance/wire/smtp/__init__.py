"""SMTP without I/O: client-side reply reading (RFC 5321 §4.2) and the server side's
command and message framing, envelope grammar and session state table."""

from conformance.wire.smtp._abnf import EnvelopeArgs, parse_mail_from, parse_rcpt_to
from conformance.wire.smtp._replies import Reply, SmtpReplyReader, parse_ehlo
from conformance.wire.smtp._server import (
    AUTH_LINE_LIMIT,
    BadCommandLine,
    Command,
    DataRejected,
    MessageData,
    SmtpServerReader,
)
from conformance.wire.smtp._state import ANYTIME, TRANSITIONS, SmtpState, allowed, next_state

__all__ = [
    "ANYTIME",
    "AUTH_LINE_LIMIT",
    "TRANSITIONS",
    "BadCommandLine",
    "Command",
    "DataRejected",
    "EnvelopeArgs",
    "MessageData",
    "Reply",
    "SmtpReplyReader",
    "SmtpServerReader",
    "SmtpState",
    "allowed",
    "next_state",
    "parse_ehlo",
    "parse_mail_from",
    "parse_rcpt_to",
]
