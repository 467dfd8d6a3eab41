"""POP3 client-side response reader (RFC 1939, RFC 2449, RFC 5034), without I/O."""

from conformance.wire.pop3._responses import Pop3Continuation, Pop3Response, Pop3ResponseReader

__all__ = ["Pop3Continuation", "Pop3Response", "Pop3ResponseReader"]
