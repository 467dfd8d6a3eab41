"""SMTP client-side reply reader (RFC 5321 §4.2), without I/O."""

from conformance.wire.smtp._replies import Reply, SmtpReplyReader, parse_ehlo

__all__ = ["Reply", "SmtpReplyReader", "parse_ehlo"]
