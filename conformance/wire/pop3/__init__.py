"""POP3 without I/O (RFC 1939, RFC 2449, RFC 5034): the client's response reader and the
server's command reader."""

from conformance.wire.pop3._responses import Pop3Continuation, Pop3Response, Pop3ResponseReader
from conformance.wire.pop3._server import (
    Pop3BadLine,
    Pop3Command,
    Pop3CommandReader,
    byte_stuff,
    crlf_size,
)

__all__ = [
    "Pop3BadLine",
    "Pop3Command",
    "Pop3CommandReader",
    "Pop3Continuation",
    "Pop3Response",
    "Pop3ResponseReader",
    "byte_stuff",
    "crlf_size",
]
