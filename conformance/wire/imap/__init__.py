"""IMAP without I/O: the client-side response reader and the server-side command reader.

Client side (RFC 9051, RFC 3501): framing and the event types live in
:mod:`._responses`, leaf productions in :mod:`._lexer`, response productions
in :mod:`._grammar`. Server side: command framing in :mod:`._server`, typed
command parsers in :mod:`._commands`. Modified UTF-7 mailbox names
(RFC 3501 §5.1.3), which both sides need, in :mod:`._mutf7`.
"""

from conformance.wire.imap._commands import (
    Append,
    Authenticate,
    CopyMove,
    Create,
    Enable,
    Expunge,
    Fetch,
    FetchAtt,
    Id,
    ListCommand,
    Login,
    MailboxCommand,
    NoArguments,
    ParsedCommand,
    Rename,
    Search,
    SearchKey,
    Section,
    Select,
    SequenceSet,
    Status,
    Store,
    parse_command,
)
from conformance.wire.imap._lexer import ImapToken
from conformance.wire.imap._mutf7 import decode_mutf7, encode_mutf7
from conformance.wire.imap._responses import (
    ContinuationRequest,
    ImapEvent,
    ImapResponseReader,
    TaggedResponse,
    UntaggedResponse,
)
from conformance.wire.imap._server import (
    COMMANDS,
    LITERAL_MINUS_MAX,
    UID_COMMANDS,
    ImapBadCommand,
    ImapCommand,
    ImapCommandReader,
    LiteralRequest,
    format_list,
    quote,
)

__all__ = [
    "COMMANDS",
    "LITERAL_MINUS_MAX",
    "UID_COMMANDS",
    "Append",
    "Authenticate",
    "ContinuationRequest",
    "CopyMove",
    "Create",
    "Enable",
    "Expunge",
    "Fetch",
    "FetchAtt",
    "Id",
    "ImapBadCommand",
    "ImapCommand",
    "ImapCommandReader",
    "ImapEvent",
    "ImapResponseReader",
    "ImapToken",
    "ListCommand",
    "LiteralRequest",
    "Login",
    "MailboxCommand",
    "NoArguments",
    "ParsedCommand",
    "Rename",
    "Search",
    "SearchKey",
    "Section",
    "Select",
    "SequenceSet",
    "Status",
    "Store",
    "TaggedResponse",
    "UntaggedResponse",
    "decode_mutf7",
    "encode_mutf7",
    "format_list",
    "parse_command",
    "quote",
]
