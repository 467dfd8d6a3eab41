"""IMAP client-side response reader (RFC 9051, RFC 3501), without I/O.

Framing and the event types live in :mod:`._responses`, leaf productions in
:mod:`._lexer`, response productions in :mod:`._grammar`.
"""

from conformance.wire.imap._lexer import ImapToken
from conformance.wire.imap._responses import (
    ContinuationRequest,
    ImapEvent,
    ImapResponseReader,
    TaggedResponse,
    UntaggedResponse,
)

__all__ = [
    "ContinuationRequest",
    "ImapEvent",
    "ImapResponseReader",
    "ImapToken",
    "TaggedResponse",
    "UntaggedResponse",
]
