"""Sans-IO protocol cores shared by the harness and the reference server.

Everything here turns bytes into events (and back) and never touches a
socket, a clock, an event loop or a logger, so the asyncio runner, the
blocking Locust clients, the pcap replayer and the fuzzer all drive the same
code, and tests run it at memory speed. A layering test keeps it that way: no
module in this package may import ``socket``, ``asyncio``, ``ssl``, ``time``,
``select`` or ``logging``.

Every reader follows one contract: ``receive_data(bytes)`` (``b""`` for EOF),
``next_event()`` returning an event, :data:`NEED_DATA` or
:class:`ConnectionClosed`, ``pending`` for the bytes not yet consumed, and
:class:`RemoteProtocolError` for anything malformed the peer sent.
"""

from conformance.wire._buffer import ReceiveBuffer
from conformance.wire._errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from conformance.wire._events import NEED_DATA, ConnectionClosed, NeedData
from conformance.wire._lines import crlf_length, to_crlf
from conformance.wire.imap import (
    ContinuationRequest,
    ImapEvent,
    ImapResponseReader,
    ImapToken,
    TaggedResponse,
    UntaggedResponse,
)
from conformance.wire.pop3 import Pop3Continuation, Pop3Response, Pop3ResponseReader
from conformance.wire.smtp import Reply, SmtpReplyReader, parse_ehlo

__all__ = [
    "NEED_DATA",
    "ConnectionClosed",
    "ContinuationRequest",
    "ImapEvent",
    "ImapResponseReader",
    "ImapToken",
    "LocalProtocolError",
    "NeedData",
    "Pop3Continuation",
    "Pop3Response",
    "Pop3ResponseReader",
    "ProtocolError",
    "ReceiveBuffer",
    "RemoteProtocolError",
    "Reply",
    "SmtpReplyReader",
    "TaggedResponse",
    "UntaggedResponse",
    "crlf_length",
    "parse_ehlo",
    "to_crlf",
]
