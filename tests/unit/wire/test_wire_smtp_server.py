"""The server side of the SMTP core: command and message framing, envelope grammar,
session state table and reply building (RFC 5321, RFC 1870, RFC 6531, RFC 2034).

Everything here is sans-IO: bytes go into :class:`SmtpServerReader` and events
come out, so no test opens a socket.
"""

from __future__ import annotations

import re
from itertools import cycle

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from wire_feed import FUZZ, drain

from conformance.wire import (
    NEED_DATA,
    ConnectionClosed,
    LocalProtocolError,
    NeedData,
    RemoteProtocolError,
)
from conformance.wire.smtp import (
    ANYTIME,
    AUTH_LINE_LIMIT,
    TRANSITIONS,
    BadCommandLine,
    Command,
    DataRejected,
    EnvelopeArgs,
    MessageData,
    Reply,
    SmtpReplyReader,
    SmtpServerReader,
    SmtpState,
    allowed,
    next_state,
    parse_mail_from,
    parse_rcpt_to,
)
from conformance.wire.smtp._server import _has_bare_eol

Event = Command | BadCommandLine | MessageData | DataRejected | NeedData | ConnectionClosed
SERVER_EVENTS = (Command, BadCommandLine, MessageData, DataRejected)

BAD_LINE = (500, "5.5.2")
SMUGGLED = (554, "5.6.0")
TOO_BIG = (552, "5.3.4")


def events_of(reader: SmtpServerReader, data: bytes) -> list[Event]:
    """Feed ``data`` (no EOF) and collect events up to and including NEED_DATA."""
    reader.receive_data(data)
    events: list[Event] = []
    while True:
        event = reader.next_event()
        events.append(event)
        if event is NEED_DATA or isinstance(event, ConnectionClosed):
            return events


def one_event(data: bytes) -> Event:
    """The first event from a fresh reader fed ``data`` (then EOF)."""
    first: Event = drain(SmtpServerReader(), data)[0]
    return first


def drain_data(data: bytes, **options: int) -> list[Event]:
    """All events from a fresh reader in data mode fed ``data`` (then EOF)."""
    reader = SmtpServerReader(**options)
    reader.start_data()
    return drain(reader, data)


def fixed_pieces(data: bytes, size: int | None) -> list[bytes]:
    """``data`` whole (``size`` None) or cut into ``size``-byte pieces."""
    if size is None:
        return [data]
    return [data[i : i + size] for i in range(0, len(data), size)]


def session(
    data: bytes,
    sizes: list[int] | None = None,
    *,
    in_data: bool = False,
    max_command_line: int = AUTH_LINE_LIMIT,
    max_message_size: int = 25 * 1024 * 1024,
) -> list[Event]:
    """Events from feeding ``data`` whole (``sizes`` None) or in pieces of the given sizes
    (cycled), then EOF, the way a server loop would: ``start_data()`` after each DATA."""
    reader = SmtpServerReader(max_command_line=max_command_line, max_message_size=max_message_size)
    if in_data:
        reader.start_data()
    pieces = [data]
    if sizes is not None:
        pieces, at = [], 0
        for size in cycle(sizes):
            if at >= len(data):
                break
            pieces.append(data[at : at + size])
            at += size
    events: list[Event] = []
    for piece in [*pieces, b""]:
        reader.receive_data(piece)
        while True:
            event = reader.next_event()
            if event is NEED_DATA:
                break
            events.append(event)
            if isinstance(event, ConnectionClosed):
                return events
            if isinstance(event, Command) and event.verb == "DATA":
                reader.start_data()
    raise AssertionError("no ConnectionClosed after EOF")


def code_of(event: Event) -> tuple[int, str]:
    assert isinstance(event, BadCommandLine | DataRejected), event
    return event.code, event.enhanced


# -- command lines ------------------------------------------------------------------

COMMANDS = [
    (b"NOOP\r\n", "NOOP", ""),
    (b"noop\r\n", "NOOP", ""),
    (b"eHlO client.example\r\n", "EHLO", "client.example"),
    (b"mail FROM:<a@b.example> SIZE=10\r\n", "MAIL", "FROM:<a@b.example> SIZE=10"),
    (b"RCPT to:<Postmaster>\r\n", "RCPT", "to:<Postmaster>"),  # the argument keeps its case
    (b"AUTH PLAIN AGFsaWNlAHB3\r\n", "AUTH", "PLAIN AGFsaWNlAHB3"),
    (b"NOOP \r\n", "NOOP", ""),
    (b"HELO  two spaces\r\n", "HELO", " two spaces"),  # split at the *first* space only
    (b"VRFY a\tb \r\n", "VRFY", "a\tb "),
    (b"X1 y\r\n", "X1", "y"),
    (b"x" * 20 + b"\r\n", "X" * 20, ""),
    ("MAIL FROM:<用户@例子.广告>\r\n".encode(), "MAIL", "FROM:<用户@例子.广告>"),  # RFC 6531
]


@pytest.mark.parametrize(("line", "verb", "arg"), COMMANDS)
def test_command_verb_upper_cased_and_arg_split_at_first_space(
    line: bytes, verb: str, arg: str
) -> None:
    assert one_event(line) == Command(verb=verb, arg=arg, raw=line)


# RFC 5321 §2.3.8: only CRLF ends a line; bare CR / LF and NUL make a line bad. What follows
# a bare LF belongs to the same line, so it never runs as a command of its own.
BAD_LINES = [
    (b"NOOP\nMAIL FROM:<a@b>\r\n", "bare LF"),
    (b"NO\rOP\r\n", "bare CR"),
    (b"NOOP\r\r\n", "bare CR"),
    (b"\rNOOP\r\n", "bare CR"),
    (b"NO\x00OP\r\n", "NUL"),
    (b"MAIL FROM:<a@b>\x00\r\n", "NUL"),
    (b"MAIL FROM:<a@b>\r\x00\r\n", "NUL"),
    (b"\n\r\n", "bare LF"),
    (b"QUIT\r\x00\nX\r\n", "bare LF"),
]


@pytest.mark.parametrize(("line", "what"), BAD_LINES)
def test_nul_bare_cr_bare_lf_lines_are_bad_and_next_line_parses(line: bytes, what: str) -> None:
    bad, good, closed = drain(SmtpServerReader(), line + b"NOOP\r\n")
    assert isinstance(bad, BadCommandLine)
    assert (bad.code, bad.enhanced, bad.raw) == (500, "5.5.2", line)
    assert what in bad.text
    assert "RFC 5321 §2.3.8" in bad.text
    assert good == Command(verb="NOOP", arg="", raw=b"NOOP\r\n")
    assert closed == ConnectionClosed()


# RFC 5321 §4.1.1: a command is a verb of letters (and digits), then SP and arguments.
NOT_A_VERB = [
    b"\r\n",
    b" NOOP\r\n",
    b"1NOOP\r\n",
    b"-X\r\n",
    b"NO-OP\r\n",
    b"NO_OP x\r\n",
    b"NOOP\tx\r\n",
    b".\r\n",
    "NÖOP\r\n".encode(),
    b"\xffNOOP x\r\n",
]


@pytest.mark.parametrize("line", NOT_A_VERB)
def test_verb_must_start_with_a_letter(line: bytes) -> None:
    bad, good, _ = drain(SmtpServerReader(), line + b"RSET\r\n")
    assert isinstance(bad, BadCommandLine)
    assert (bad.code, bad.enhanced, bad.raw) == (500, "5.5.2", line)
    assert "verb" in bad.text
    assert good == Command(verb="RSET", arg="", raw=b"RSET\r\n")


NOT_UTF8 = [
    (b"MAIL FROM:<\xff@b.example>\r\n", 11),
    (b"X \xc3\r\n", 2),  # truncated two-byte sequence
    (b"X ab\xc3(\r\n", 4),  # bad continuation byte
    (b"X a\xed\xa0\x80\r\n", 3),  # an encoded surrogate is not UTF-8
    (b"X \xc0\xaf\r\n", 2),  # over-long encoding of "/"
    (b"X \xf4\x90\x80\x80\r\n", 2),  # beyond U+10FFFF
    (b"VRFY \xe4\xbd\xa0 \x80\r\n", 9),
]


@pytest.mark.parametrize(("line", "offset"), NOT_UTF8)
def test_non_utf8_argument_names_the_offset(line: bytes, offset: int) -> None:
    """RFC 6531 §3.3: non-ASCII in SMTP commands is UTF-8; the offset is into the line."""
    bad, good, _ = drain(SmtpServerReader(), line + b"NOOP\r\n")
    assert isinstance(bad, BadCommandLine)
    assert (bad.code, bad.enhanced, bad.raw) == (500, "5.5.2", line)
    assert f"at offset {offset} " in bad.text
    assert line[offset] >= 0x80
    assert line[:offset].decode("utf-8")  # everything before the offset is fine
    assert isinstance(good, Command)


@pytest.mark.parametrize("limit", [512, 1000, AUTH_LINE_LIMIT])
def test_line_of_exactly_max_command_line_accepted_one_more_rejected(limit: int) -> None:
    """RFC 5321 §4.5.3.1.4: the limit counts the CRLF."""
    exact = b"AUTH " + b"A" * (limit - 7) + b"\r\n"
    longer = b"AUTH " + b"A" * (limit - 6) + b"\r\n"
    assert len(exact) == limit
    for sizes in (None, [1], [limit - 1]):
        ok, bad, after, _ = session(exact + longer + b"QUIT\r\n", sizes, max_command_line=limit)
        assert ok == Command(verb="AUTH", arg="A" * (limit - 7), raw=exact)
        assert isinstance(bad, BadCommandLine)
        assert code_of(bad) == BAD_LINE
        assert "line too long" in bad.text
        assert str(limit) in bad.text
        assert after == Command(verb="QUIT", arg="", raw=b"QUIT\r\n")


def test_default_limit_is_the_auth_line_limit() -> None:
    """RFC 4954 §4: AUTH lines may reach 12288 octets."""
    assert AUTH_LINE_LIMIT == 12288
    assert SmtpServerReader().max_command_line == AUTH_LINE_LIMIT


@pytest.mark.parametrize("limit", [0, 100, 511])
def test_limit_below_512_refused(limit: int) -> None:
    """RFC 5321 §4.5.3.1.4: a server must accept command lines of 512 octets."""
    with pytest.raises(ValueError, match="512"):
        SmtpServerReader(max_command_line=limit)


def test_100k_line_in_1k_chunks_is_one_bad_line_and_memory_stays_bounded() -> None:
    reader = SmtpServerReader()
    line = b"MAIL FROM:<" + b"a" * (100 * 1024) + b"@b.example>\r\n"
    events: list[Event] = []
    for at in range(0, len(line), 1024):
        events += [e for e in events_of(reader, line[at : at + 1024]) if e is not NEED_DATA]
        assert len(reader.pending) <= reader.max_command_line + 1024
    events += events_of(reader, b"NOOP\r\n")
    bad, good, need = events
    assert isinstance(bad, BadCommandLine)
    assert code_of(bad) == BAD_LINE
    assert bad.text.startswith("line too long")
    assert line.endswith(bad.raw)
    assert good == Command(verb="NOOP", arg="", raw=b"NOOP\r\n")
    assert need is NEED_DATA
    assert reader.pending == b""


def test_long_line_drained_when_its_crlf_is_split_across_chunks() -> None:
    reader = SmtpServerReader(max_command_line=512)
    assert events_of(reader, b"A" * 600 + b"\r") == [NEED_DATA]
    bad, good, _ = events_of(reader, b"\nNOOP\r\n")
    assert isinstance(bad, BadCommandLine)
    assert bad.text.startswith("line too long")
    assert good == Command(verb="NOOP", arg="", raw=b"NOOP\r\n")


def test_pipelined_commands_come_out_one_at_a_time() -> None:
    reader = SmtpServerReader()
    data = b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\nNO"
    reader.receive_data(data)
    assert reader.next_event() == Command(verb="MAIL", arg="FROM:<a@b>", raw=b"MAIL FROM:<a@b>\r\n")
    assert reader.pending == b"RCPT TO:<c@d>\r\nDATA\r\nNO"
    assert reader.next_event() == Command(verb="RCPT", arg="TO:<c@d>", raw=b"RCPT TO:<c@d>\r\n")
    assert reader.next_event() == Command(verb="DATA", arg="", raw=b"DATA\r\n")
    assert reader.next_event() is NEED_DATA
    assert reader.pending == b"NO"
    assert events_of(reader, b"OP\r\n")[0] == Command(verb="NOOP", arg="", raw=b"NOOP\r\n")


# -- message data -------------------------------------------------------------------


def test_in_data_follows_start_data_and_the_end_mark() -> None:
    reader = SmtpServerReader()
    assert not reader.in_data
    reader.start_data()
    assert reader.in_data
    with pytest.raises(LocalProtocolError):
        reader.start_data()
    assert events_of(reader, b"x\r\n.\r\n")[0] == MessageData(content=b"x\r\n")
    assert not reader.in_data


MESSAGES = [
    (b"Subject: hi\r\n\r\nbody\r\n.\r\n", b"Subject: hi\r\n\r\nbody\r\n"),
    (b".\r\n", b""),  # empty message: the end mark right after 354
    (b"\r\n.\r\n", b"\r\n"),
    (b"..\r\n.\r\n", b".\r\n"),  # RFC 5321 §4.5.2: a stuffed first line
    (b"a\r\n..\r\n..x\r\n...\r\nb\r\n.\r\n", b"a\r\n.\r\n.x\r\n..\r\nb\r\n"),
    (b"a\r\n.x\r\n.\r\n", b"a\r\nx\r\n"),  # a leading dot is always removed
    (b"a\r\nb.\r\n.\r\n", b"a\r\nb.\r\n"),  # dots not at a line start stay
    (b"\xff\xfe\x80 binary-ish 8bit\r\n.\r\n", b"\xff\xfe\x80 binary-ish 8bit\r\n"),
    (b"x" * 5000 + b"\r\n.\r\n", b"x" * 5000 + b"\r\n"),  # no text line limit
]


@pytest.mark.parametrize(("wire", "content"), MESSAGES)
def test_message_dot_unstuffed(wire: bytes, content: bytes) -> None:
    """RFC 5321 §4.1.1.4 (end mark) and §4.5.2 (transparency)."""
    for sizes in (None, [1], [2], [3, 5, 7]):
        events = session(wire + b"QUIT\r\n", sizes, in_data=True)
        assert events == [
            MessageData(content=content),
            Command(verb="QUIT", arg="", raw=b"QUIT\r\n"),
            ConnectionClosed(),
        ]


def test_message_byte_by_byte_needs_data_until_the_last_byte() -> None:
    wire = b"From: a@b\r\n\r\n..dot\r\n.\r\nRSET\r\n"
    reader = SmtpServerReader()
    reader.start_data()
    end = wire.index(b"\r\n.\r\n") + 5
    for byte in wire[: end - 1]:
        assert events_of(reader, bytes([byte])) == [NEED_DATA]
        assert reader.in_data
    assert events_of(reader, wire[end - 1 : end]) == [
        MessageData(content=b"From: a@b\r\n\r\n.dot\r\n"),
        NEED_DATA,
    ]
    for byte in wire[end:-1]:
        assert events_of(reader, bytes([byte])) == [NEED_DATA]
    assert events_of(reader, b"\n") == [Command(verb="RSET", arg="", raw=b"RSET\r\n"), NEED_DATA]


def test_pipelined_command_after_the_end_of_data_is_a_command() -> None:
    """RFC 2920 §3.1: the client may pipeline after the end of data."""
    reader = SmtpServerReader()
    reader.start_data()
    assert events_of(reader, b"hello\r\n.\r\nMAIL FROM:<x@y>\r\nRCPT TO:<z@w>\r\n") == [
        MessageData(content=b"hello\r\n"),
        Command(verb="MAIL", arg="FROM:<x@y>", raw=b"MAIL FROM:<x@y>\r\n"),
        Command(verb="RCPT", arg="TO:<z@w>", raw=b"RCPT TO:<z@w>\r\n"),
        NEED_DATA,
    ]


def test_data_already_buffered_when_start_data_is_called() -> None:
    """A pipelining client's message can arrive with the DATA command."""
    reader = SmtpServerReader()
    reader.receive_data(b"DATA\r\nbody\r\n.\r\nQUIT\r\n")
    assert reader.next_event() == Command(verb="DATA", arg="", raw=b"DATA\r\n")
    reader.start_data()
    assert [reader.next_event(), reader.next_event(), reader.next_event()] == [
        MessageData(content=b"body\r\n"),
        Command(verb="QUIT", arg="", raw=b"QUIT\r\n"),
        NEED_DATA,
    ]


# SMTP smuggling: ends of data that some receivers accept and RFC 5321 §4.1.1.4 does not.
SMUGGLING = [
    b"\n.\n",
    b"\r.\r",
    b"\n.\r\n",
    b"\r\n.\n",
    b"\r.\r\n",
    b"\r\n.\r",
    b"\n..\n",
    b"\r\n.\r\r\n",
]


def _smuggle(variant: bytes, size: int | None) -> None:
    """A message holding ``variant`` then commands, fed whole or ``size`` bytes at a time,
    must stay one message and be refused once at the real end."""
    reader = SmtpServerReader()
    reader.start_data()
    first = b"From: a@b\r\n\r\nhi" + variant + b"MAIL FROM:<evil@x>\r\nRCPT TO:<v@y>\r\nDATA\r\n"
    seen: list[Event] = []
    for piece in fixed_pieces(first, size):
        seen += events_of(reader, piece)
    assert set(map(type, seen)) == {NeedData}, "a smuggled end mark ended the message"
    assert reader.in_data
    rest: list[Event] = []
    for piece in fixed_pieces(b"evil\r\n.\r\nNOOP\r\n", size):
        rest += [e for e in events_of(reader, piece) if e is not NEED_DATA]
    rejected, noop = rest
    assert isinstance(rejected, DataRejected)
    assert code_of(rejected) == SMUGGLED
    assert rejected.size == len(first) + len(b"evil\r\n")
    assert noop == Command(verb="NOOP", arg="", raw=b"NOOP\r\n")


@pytest.mark.parametrize("size", [None, 1, 2, 4])
@pytest.mark.parametrize("variant", SMUGGLING)
def test_smuggled_end_marks_never_end_the_message_and_it_is_rejected_once(
    variant: bytes, size: int | None
) -> None:
    """RFC 5321 §4.1.1.4: data ends only at CRLF "." CRLF; RFC 5321 §2.3.8: no bare CR or
    LF. The whole message is refused with 554 5.6.0 at the real end (docs/decisions.md)."""
    _smuggle(variant, size)


@pytest.mark.parametrize("size", [None, 1])
def test_nul_before_the_dot_is_a_smuggling_variant_too(size: int | None) -> None:
    """BUG: CRLF NUL "." CRLF (a receiver that strips NUL sees the end of data) is passed
    on as part of the message. RFC 5322 §3.5: body text is %d1-9 / %d11 / %d12 / %d14-127,
    no NUL (RFC 3030 §3: binary data only with BDAT, never DATA); with no rejection, this
    message is exactly the ambiguous one the smuggling rule must refuse (554 5.6.0)."""
    _smuggle(b"\r\n\x00.\r\n", size)


@pytest.mark.parametrize("start", [b".\n", b".\r", b"\n.\r\n", b".\r\r\n"])
def test_smuggling_forms_at_the_very_start_of_data(start: bytes) -> None:
    rejected, noop, _ = drain_data(start + b"x\r\n.\r\nNOOP\r\n")
    assert code_of(rejected) == SMUGGLED
    assert noop == Command(verb="NOOP", arg="", raw=b"NOOP\r\n")


@pytest.mark.parametrize("bare", [b"\n", b"\r"])
@pytest.mark.parametrize("where", ["start", "middle", "just before the end"])
def test_any_bare_cr_or_lf_rejects_the_message(bare: bytes, where: str) -> None:
    """RFC 5321 §2.3.8: CR and LF only as CRLF, in message data too."""
    body = {
        "start": bare + b"a\r\nb\r\n",
        "middle": b"a\r\nb" + bare + b"c\r\n",
        "just before the end": b"a\r\nb" + bare + b"\r\n",
    }[where]
    rejected, _ = drain_data(body + b".\r\n")
    assert isinstance(rejected, DataRejected)
    assert code_of(rejected) == SMUGGLED
    assert rejected.size == len(body)


@pytest.mark.parametrize("sizes", [None, [1], [7]])
def test_message_at_the_size_limit_accepted_one_more_rejected(sizes: list[int] | None) -> None:
    """RFC 1870 §6.3: a message over the limit gets 552 after the data."""
    limit = 100
    exact = b"x" * (limit - 2) + b"\r\n"
    over = b"y" * (limit - 1) + b"\r\n"
    events = session(exact + b".\r\n", sizes, in_data=True, max_message_size=limit)
    assert events == [MessageData(content=exact), ConnectionClosed()]
    rejected, closed = session(over + b".\r\n", sizes, in_data=True, max_message_size=limit)
    assert isinstance(rejected, DataRejected)
    assert code_of(rejected) == TOO_BIG
    assert rejected.size == limit + 1
    assert str(limit) in rejected.text
    assert closed == ConnectionClosed()


def test_oversized_message_is_drained_in_bounded_memory_then_rejected_once() -> None:
    """RFC 1870 §6.3: read the data to its end, then answer 552 (no dropped connection)."""
    limit, chunk = 10_000, 1024
    reader = SmtpServerReader(max_message_size=limit)
    reader.start_data()
    line = b"0123456789" * 7 + b"\r\n"
    body = line * (10 * limit // len(line) + 1)
    assert len(body) > 10 * limit
    peak = 0
    for at in range(0, len(body), chunk):
        assert events_of(reader, body[at : at + chunk]) == [NEED_DATA]
        peak = max(peak, len(reader.pending))
    assert peak <= limit + 5 + chunk
    rejected, command, need = events_of(reader, b".\r\nMAIL FROM:<a@b>\r\n")
    assert isinstance(rejected, DataRejected)
    assert code_of(rejected) == TOO_BIG
    assert rejected.size == len(body)
    assert command == Command(verb="MAIL", arg="FROM:<a@b>", raw=b"MAIL FROM:<a@b>\r\n")
    assert need is NEED_DATA
    # the next transaction starts clean: a small message is accepted
    reader.start_data()
    assert events_of(reader, b"ok\r\n.\r\n")[0] == MessageData(content=b"ok\r\n")


def test_oversized_message_end_mark_split_across_the_drained_tail() -> None:
    """The end mark may straddle what was discarded and what was kept (RFC 5321 §4.1.1.4)."""
    limit = 50
    for cut in range(1, 5):
        reader = SmtpServerReader(max_message_size=limit)
        reader.start_data()
        wire = b"z" * (4 * limit) + b"\r\n.\r\nQUIT\r\n"
        end = 4 * limit + cut
        assert events_of(reader, wire[:end]) == [NEED_DATA]
        rejected, quit_, _ = events_of(reader, wire[end:])
        assert code_of(rejected) == TOO_BIG
        assert quit_ == Command(verb="QUIT", arg="", raw=b"QUIT\r\n")


def test_drained_tail_that_looks_like_an_empty_message_does_not_end_the_data() -> None:
    """RFC 5321 §4.1.1.4: only CRLF "." CRLF ends the data. After draining, the bytes kept
    are ".\\r\\nb" (a dot that ends a line, not one that starts it)."""
    reader = SmtpServerReader(max_message_size=50)
    reader.start_data()
    assert events_of(reader, b"z" * 200 + b"a.\r\nb") == [NEED_DATA]
    assert reader.pending == b".\r\nb"
    assert events_of(reader, b"c\r\nRSET\r\n") == [NEED_DATA]
    rejected, quit_, _ = events_of(reader, b".\r\nQUIT\r\n")
    assert isinstance(rejected, DataRejected)
    assert code_of(rejected) == TOO_BIG
    assert rejected.size == 200 + len(b"a.\r\nbc\r\nRSET\r\n")
    assert quit_ == Command(verb="QUIT", arg="", raw=b"QUIT\r\n")


# -- STARTTLS and EOF ---------------------------------------------------------------


def test_discard_pending_drops_bytes_pipelined_after_starttls() -> None:
    """RFC 3207 §4.2 (CVE-2011-0411): nothing sent before the handshake may run after it."""
    reader = SmtpServerReader()
    injected = b"MAIL FROM:<evil@x>\r\nRCPT TO:<v@y>\r\nNO"
    reader.receive_data(b"STARTTLS\r\n" + injected)
    assert reader.next_event() == Command(verb="STARTTLS", arg="", raw=b"STARTTLS\r\n")
    assert reader.pending == injected
    assert reader.discard_pending() == injected
    assert reader.pending == b""
    assert reader.next_event() is NEED_DATA
    assert events_of(reader, b"EHLO c\r\n")[0] == Command(verb="EHLO", arg="c", raw=b"EHLO c\r\n")


def test_discard_pending_ends_the_draining_of_a_long_line() -> None:
    reader = SmtpServerReader(max_command_line=512)
    assert events_of(reader, b"A" * 2000) == [NEED_DATA]
    reader.discard_pending()
    assert events_of(reader, b"NOOP\r\n")[0] == Command(verb="NOOP", arg="", raw=b"NOOP\r\n")


def test_discard_pending_with_nothing_buffered() -> None:
    reader = SmtpServerReader()
    assert reader.discard_pending() == b""
    assert reader.next_event() is NEED_DATA


@pytest.mark.parametrize(
    ("in_data", "partial"),
    [
        (False, b""),
        (False, b"NOO"),
        (False, b"NOOP\r"),
        (True, b""),
        (True, b"body"),
        (True, b"body\r\n.\r"),
    ],
)
def test_eof_is_connection_closed_and_a_partial_unit_is_lost(in_data: bool, partial: bytes) -> None:
    reader = SmtpServerReader()
    if in_data:
        reader.start_data()
    if partial:
        assert events_of(reader, partial) == [NEED_DATA]
    else:
        assert reader.next_event() is NEED_DATA
    assert events_of(reader, b"") == [ConnectionClosed()]
    assert reader.next_event() == ConnectionClosed()
    with pytest.raises(LocalProtocolError):
        reader.receive_data(b"x")


def test_complete_units_before_eof_are_still_delivered() -> None:
    reader = SmtpServerReader()
    reader.receive_data(b"NOOP\r\nDATA\r\n")
    reader.receive_data(b"")
    assert reader.next_event() == Command(verb="NOOP", arg="", raw=b"NOOP\r\n")
    assert reader.next_event() == Command(verb="DATA", arg="", raw=b"DATA\r\n")
    assert reader.next_event() == ConnectionClosed()


# -- properties ---------------------------------------------------------------------

TOKENS = [
    b"\r\n",
    b"\n",
    b"\r",
    b"\x00",
    b".",
    b"..",
    b"\r\n.\r\n",
    b".\r\n",
    b"\xff",
    b"\xc3\xa9",
    b"DATA\r\n",
    b"NOOP x\r\n",
    b"MAIL FROM:<a@b>\r\n",
    b"A" * 300,
    b"B" * 700,  # longer than max_command_line=512 and max_message_size=100 below
]
STREAM = st.lists(st.one_of(st.binary(max_size=12), st.sampled_from(TOKENS)), max_size=30).map(
    b"".join
)
SIZES = st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=8)


def comparable(event: Event) -> object:
    """An event as compared across chunkings: the raw bytes of a drained long line are the
    part the reader still held, which depends on where the chunks fell."""
    if isinstance(event, BadCommandLine) and event.text.startswith("line too long"):
        return (BadCommandLine, event.code, event.enhanced, event.text)
    return event


@FUZZ
@given(STREAM, st.booleans())
def test_any_bytes_give_only_events(data: bytes, in_data: bool) -> None:
    events = session(data, in_data=in_data, max_command_line=512, max_message_size=100)
    assert all(isinstance(e, SERVER_EVENTS) for e in events[:-1])
    assert events[-1] == ConnectionClosed()
    for event in events:
        if isinstance(event, BadCommandLine | DataRejected):
            assert event.code in (500, 552, 554)
            assert event.enhanced in ("5.5.2", "5.3.4", "5.6.0")


@FUZZ
@given(st.binary(max_size=400), st.booleans())
def test_any_random_binary_gives_only_events(data: bytes, in_data: bool) -> None:
    events = session(data, in_data=in_data, max_command_line=512, max_message_size=100)
    assert all(isinstance(e, SERVER_EVENTS) for e in events[:-1])
    assert events[-1] == ConnectionClosed()


@FUZZ
@given(STREAM, SIZES, st.booleans())
@example(b"A" * 600 + b"\r\nNOOP\r\n", [7], False)
@example(b"x" * 300 + b"\r\n.\r\nNOOP\r\n", [7], True)
@example(b"x" * 300 + b"\n\r\n.\r\nDATA\r\n.\r\n", [33, 5], True)
def test_whole_or_chunked_gives_the_same_events(
    data: bytes, sizes: list[int], in_data: bool
) -> None:
    whole = session(data, in_data=in_data, max_command_line=512, max_message_size=100)
    chunked = session(data, sizes, in_data=in_data, max_command_line=512, max_message_size=100)
    assert list(map(comparable, chunked)) == list(map(comparable, whole))
    bytewise = session(data, [1], in_data=in_data, max_command_line=512, max_message_size=100)
    assert list(map(comparable, bytewise)) == list(map(comparable, whole))
    for a, b, c in zip(whole, chunked, bytewise, strict=True):
        if isinstance(a, BadCommandLine):
            assert isinstance(b, BadCommandLine)
            assert isinstance(c, BadCommandLine)
            assert a.raw.endswith(b.raw)
            assert a.raw.endswith(c.raw)


# a text line: no CR or LF (RFC 5321 §2.3.8) and no NUL (RFC 5322 §3.5; see the NUL test above)
LINE = st.binary(max_size=30).map(
    lambda b: b.replace(b"\r", b"").replace(b"\n", b"").replace(b"\x00", b"")
)


@FUZZ
@given(st.lists(LINE, max_size=8), SIZES)
def test_dot_stuffing_round_trip(lines: list[bytes], sizes: list[int]) -> None:
    """RFC 5321 §4.5.2: the sender doubles a leading dot, the receiver removes it."""
    content = b"".join(line + b"\r\n" for line in lines)
    wire = b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines)
    expected = [MessageData(content=content), Command(verb="QUIT", arg="", raw=b"QUIT\r\n")]
    for chunking in (None, sizes):
        assert session(wire + b".\r\nQUIT\r\n", chunking, in_data=True)[:2] == expected


VERB = st.from_regex(r"[A-Za-z][A-Za-z0-9]{0,19}", fullmatch=True)
ARG = st.text(
    st.characters(blacklist_categories=["Cs"], blacklist_characters="\r\n\x00"), max_size=40
)


@FUZZ
@given(VERB, ARG, SIZES)
def test_command_round_trip(verb: str, arg: str, sizes: list[int]) -> None:
    line = f"{verb} {arg}\r\n".encode()
    expected = Command(verb=verb.upper(), arg=arg, raw=line)
    assert session(line, sizes) == [expected, ConnectionClosed()]


# -- envelope grammar (RFC 5321 §4.1.2, RFC 6531 §3.3) -----------------------------

GOOD_MAIL = [
    ("FROM:<>", "", {}),  # the null reverse-path (RFC 5321 §4.5.5)
    ("FROM:<a@b.example>", "a@b.example", {}),
    ("from:<a@b.example>", "a@b.example", {}),
    ("From:<A.B+tag@Sub-Domain.Example>", "A.B+tag@Sub-Domain.Example", {}),
    ("FROM:<!#$%&'*+-/=?^_`{|}~@x1.example>", "!#$%&'*+-/=?^_`{|}~@x1.example", {}),
    ("FROM:<a@b>", "a@b", {}),
    ("FROM:<a@1-2.example>", "a@1-2.example", {}),
    # source routes: A-d-l is accepted and ignored (RFC 5321 §4.1.1.3, §C)
    ("FROM:<@a.b,@c.d:x@y.z>", "x@y.z", {}),
    ("FROM:<@a.b:x@y.z>", "x@y.z", {}),
    # quoted local parts
    ('FROM:<"a>b"@c.d>', '"a>b"@c.d', {}),
    ('FROM:<"a b"@c.d>', '"a b"@c.d', {}),
    ('FROM:<"a\\"b"@c.d>', '"a\\"b"@c.d', {}),
    ('FROM:<"a\\\\b"@c.d>', '"a\\\\b"@c.d', {}),
    ('FROM:<"@"@c.d>', '"@"@c.d', {}),
    ('FROM:<""@c.d>', '""@c.d', {}),
    # address literals (RFC 5321 §4.1.3)
    ("FROM:<a@[192.0.2.1]>", "a@[192.0.2.1]", {}),
    ("FROM:<a@[IPv6:2001:db8::1]>", "a@[IPv6:2001:db8::1]", {}),
    ("FROM:<a@[tag:content]>", "a@[tag:content]", {}),
    # RFC 6531 §3.3: UTF-8 local parts and U-labels
    ("FROM:<用户@例子.广告>", "用户@例子.广告", {}),
    ("FROM:<δοκιμή@παράδειγμα.δοκιμή>", "δοκιμή@παράδειγμα.δοκιμή", {}),
    ('FROM:<"ü ü"@b.example>', '"ü ü"@b.example', {}),
    # parameters: esmtp-keyword ["=" esmtp-value], keywords are case-insensitive
    ("FROM:<a@b> SIZE=1000", "a@b", {"SIZE": "1000"}),
    ("FROM:<a@b> size=1000", "a@b", {"SIZE": "1000"}),
    ("FROM:<a@b> BODY=8BITMIME SMTPUTF8", "a@b", {"BODY": "8BITMIME", "SMTPUTF8": None}),
    ("FROM:<> RET=HDRS ENVID=QQ314159", "", {"RET": "HDRS", "ENVID": "QQ314159"}),
    ("FROM:<a@b> AUTH=<>", "a@b", {"AUTH": "<>"}),  # RFC 4954 §5
    ("FROM:<a@b> X-1=a+b/c", "a@b", {"X-1": "a+b/c"}),
    ("FROM:<a@b> ENVID=é", "a@b", {"ENVID": "é"}),
    ("FROM:<a@b> 8=x", "a@b", {"8": "x"}),
    # trailing spaces are tolerated (docs/decisions.md)
    ("FROM:<a@b> ", "a@b", {}),
    ("FROM:<a@b>   ", "a@b", {}),
    ("FROM:<a@b> SIZE=1  ", "a@b", {"SIZE": "1"}),
    ("FROM:<> ", "", {}),
]


@pytest.mark.parametrize(("arg", "address", "params"), GOOD_MAIL)
def test_good_mail_from(arg: str, address: str, params: dict[str, str | None]) -> None:
    assert parse_mail_from(arg) == EnvelopeArgs(address, params)


BAD_MAIL = [
    ("FROM: <a@b>", "501 5.5.4"),  # RFC 5321 §4.1.2: no space after the colon
    ("FROM:  <a@b>", "501 5.5.4"),
    ("FROM :<a@b>", "501 5.5.4"),
    ("", "501 5.5.4"),
    ("FROM", "501 5.5.4"),
    ("TO:<a@b>", "501 5.5.4"),
    ("FROM:", "501 5.1.3"),
    ("FROM:a@b", "501 5.1.3"),
    ("FROM:<a@b", "501 5.1.3"),
    ("FROM:a@b>", "501 5.1.3"),
    ("FROM:<<a@b>>", "501 5.1.3"),
    ("FROM:<a>", "501 5.1.3"),
    ("FROM:<a@>", "501 5.1.3"),
    ("FROM:<@b>", "501 5.1.3"),
    ("FROM:<a..b@c>", "501 5.1.3"),
    ("FROM:<.a@c>", "501 5.1.3"),
    ("FROM:<a.@c>", "501 5.1.3"),
    ("FROM:<a b@c>", "501 5.1.3"),
    ("FROM:<a@b..c>", "501 5.1.3"),
    ("FROM:<a@.b>", "501 5.1.3"),
    ("FROM:<a@b.>", "501 5.1.3"),
    ("FROM:<a@-b>", "501 5.1.3"),
    ("FROM:<a@b->", "501 5.1.3"),
    ("FROM:<a@b_c>", "501 5.1.3"),
    ("FROM:<a@[]>", "501 5.1.3"),
    ("FROM:<a@[1.2.3.4>", "501 5.1.3"),
    ("FROM:<a(b)@c>", "501 5.1.3"),
    ("FROM:<a\tb@c>", "501 5.1.3"),
    ('FROM:<"a@b>', "501 5.1.3"),
    ('FROM:<"a"b@c>', "501 5.1.3"),
    ('FROM:<"a\\\x01"@c>', "501 5.1.3"),  # quoted-pairSMTP is %d92 %d32-126
    ('FROM:<"a\x7f"@c>', "501 5.1.3"),
    ("FROM:<@a.b:>", "501 5.1.3"),
    ("FROM:<@a.b,x@y.z>", "501 5.1.3"),
    ("FROM:<@a.b;@c.d:x@y.z>", "501 5.1.3"),
    ("FROM:<a@b>>", "501 5.5.4"),
    ("FROM:<a@b>SIZE=1", "501 5.5.4"),  # a space must separate path and parameters
    ("FROM:<>SIZE=1", "501 5.5.4"),
    ("FROM:<a@b>  SIZE=1", "501 5.5.4"),  # double space
    ("FROM:<a@b> SIZE=1  BODY=7BIT", "501 5.5.4"),
    ("FROM:<a@b> SIZE=1 SIZE=2", "501 5.5.4"),  # duplicate
    ("FROM:<a@b> SIZE=1 size=1", "501 5.5.4"),  # duplicate, keywords are case-insensitive
    ("FROM:<a@b> SIZE=", "501 5.5.4"),  # esmtp-value = 1*(...)
    ("FROM:<a@b> =1", "501 5.5.4"),
    ("FROM:<a@b> -X=1", "501 5.5.4"),
    ("FROM:<a@b> X_Y=1", "501 5.5.4"),
    ("FROM:<a@b> X=a=b", "501 5.5.4"),  # "=" is not in esmtp-value
    ("FROM:<a@b> X=a\tb", "501 5.5.4"),
    ("FROM:<a@b>\tSIZE=1", "501 5.5.4"),
]


@pytest.mark.parametrize(("arg", "hint"), BAD_MAIL)
def test_bad_mail_from(arg: str, hint: str) -> None:
    with pytest.raises(RemoteProtocolError) as caught:
        parse_mail_from(arg)
    assert caught.value.reply_hint == hint
    assert caught.value.rfc_ref is not None
    assert caught.value.rfc_ref.startswith("RFC 5321 §4.1.")


GOOD_RCPT = [
    ("TO:<b@c.example>", "b@c.example", {}),
    ("to:<b@c.example>", "b@c.example", {}),
    # RFC 5321 §4.1.1.3: "<Postmaster>" without a domain, case-insensitive
    ("TO:<Postmaster>", "postmaster", {}),
    ("TO:<postmaster>", "postmaster", {}),
    ("To:<POSTMASTER>", "postmaster", {}),
    ("TO:<Postmaster> NOTIFY=NEVER", "postmaster", {"NOTIFY": "NEVER"}),
    ("TO:<Postmaster> ", "postmaster", {}),
    ("TO:<postmaster@c.example>", "postmaster@c.example", {}),
    ("TO:<@a.b,@c.d:x@y.z>", "x@y.z", {}),
    ('TO:<"a>b"@c.d>', '"a>b"@c.d', {}),
    ("TO:<用户@例子.广告>", "用户@例子.广告", {}),
    (
        "TO:<b@c> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b@c",
        "b@c",
        {"NOTIFY": "SUCCESS,FAILURE", "ORCPT": "rfc822;b@c"},
    ),
]


@pytest.mark.parametrize(("arg", "address", "params"), GOOD_RCPT)
def test_good_rcpt_to(arg: str, address: str, params: dict[str, str | None]) -> None:
    assert parse_rcpt_to(arg) == EnvelopeArgs(address, params)


BAD_RCPT = [
    ("TO:<>", "501 5.1.3"),  # the null path is a reverse-path only (RFC 5321 §4.1.2)
    ("TO:<> NOTIFY=NEVER", "501 5.1.3"),
    ("TO: <b@c>", "501 5.5.4"),
    ("FROM:<b@c>", "501 5.5.4"),
    ("TO:<Postmaster>x", "501 5.5.4"),
    ("TO:<Postmasterx>", "501 5.1.3"),
    ("TO:<Postmaster", "501 5.1.3"),
    ("TO:Postmaster", "501 5.1.3"),
    ("TO:<b@c> NOTIFY=NEVER NOTIFY=NEVER", "501 5.5.4"),
    ("TO:<b@c>  NOTIFY=NEVER", "501 5.5.4"),
]


@pytest.mark.parametrize(("arg", "hint"), BAD_RCPT)
def test_bad_rcpt_to(arg: str, hint: str) -> None:
    with pytest.raises(RemoteProtocolError) as caught:
        parse_rcpt_to(arg)
    assert caught.value.reply_hint == hint


def test_envelope_error_says_what_was_wrong() -> None:
    with pytest.raises(RemoteProtocolError, match="no space is allowed after FROM:"):
        parse_mail_from("FROM: <a@b>")
    with pytest.raises(RemoteProtocolError, match="only valid in MAIL FROM"):
        parse_rcpt_to("TO:<>")
    with pytest.raises(RemoteProtocolError, match="SIZE given twice"):
        parse_mail_from("FROM:<a@b> SIZE=1 size=2")


ATOM = st.text("abcXYZ019!#$%&'*+-/=?^_`{|}~é", min_size=1, max_size=6)
LABEL = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
MAILBOX = st.tuples(
    st.lists(ATOM, min_size=1, max_size=3).map(".".join),
    st.lists(LABEL, min_size=1, max_size=3).map(".".join),
).map("@".join)


@FUZZ
@given(
    MAILBOX,
    st.dictionaries(
        st.from_regex(r"[A-Z][A-Z0-9-]{0,6}", fullmatch=True),
        st.none() | st.from_regex(r"[!-<>-~]{1,8}", fullmatch=True),
        max_size=3,
    ),
)
def test_envelope_round_trip(mailbox: str, params: dict[str, str | None]) -> None:
    words = " ".join(k if v is None else f"{k}={v}" for k, v in params.items())
    suffix = f" {words}" if words else ""
    assert parse_mail_from(f"FROM:<{mailbox}>{suffix}") == EnvelopeArgs(mailbox, params)
    assert parse_rcpt_to(f"TO:<{mailbox}>{suffix}") == EnvelopeArgs(mailbox, params)


@FUZZ
@given(st.text(max_size=60), st.booleans())
def test_envelope_parsers_return_or_raise_remote_protocol_error(text: str, rcpt: bool) -> None:
    parse = parse_rcpt_to if rcpt else parse_mail_from
    try:
        result = parse(text)
    except RemoteProtocolError as exc:
        assert exc.reply_hint in ("501 5.5.4", "501 5.1.3")
    else:
        assert isinstance(result, EnvelopeArgs)


# -- session state (RFC 5321 §4.1.4, §3.3; RFC 3207 §4.2; RFC 4954 §4) -------------

NOT_DATA = [s for s in SmtpState if s is not SmtpState.DATA]
ALL_VERBS = sorted(ANYTIME | {verb for _, verb in TRANSITIONS} | {"BDAT", "XYZZY", ""})


@pytest.mark.parametrize(("state", "verb"), list(TRANSITIONS))
def test_every_transition_leads_where_the_table_says(state: SmtpState, verb: str) -> None:
    assert allowed(state, verb)
    for greeted in (False, True):
        assert next_state(state, verb, greeted=greeted) is TRANSITIONS[(state, verb)]


def test_transition_table_spot_checks() -> None:
    assert TRANSITIONS[(SmtpState.GREETED, "EHLO")] is SmtpState.READY
    assert TRANSITIONS[(SmtpState.READY, "STARTTLS")] is SmtpState.GREETED  # RFC 3207 §4.2
    assert TRANSITIONS[(SmtpState.RCPT, "DATA")] is SmtpState.DATA
    assert TRANSITIONS[(SmtpState.MAIL, "EHLO")] is SmtpState.READY  # resets the transaction


@pytest.mark.parametrize("state", NOT_DATA)
@pytest.mark.parametrize("verb", sorted(ANYTIME))
def test_anytime_verbs_allowed_in_every_state_but_data(state: SmtpState, verb: str) -> None:
    """RFC 5321 §4.1.4: these commands "may be issued at any time"."""
    assert allowed(state, verb)
    assert not allowed(SmtpState.DATA, verb)


@pytest.mark.parametrize("verb", ALL_VERBS)
def test_nothing_is_allowed_in_data(verb: str) -> None:
    """While reading message data there are no commands, only the end mark."""
    assert not allowed(SmtpState.DATA, verb)


@pytest.mark.parametrize(
    ("state", "verb"),
    [
        (SmtpState.GREETED, "MAIL"),  # RFC 5321 §4.1.4: EHLO/HELO first
        (SmtpState.GREETED, "RCPT"),
        (SmtpState.GREETED, "DATA"),
        (SmtpState.READY, "RCPT"),  # RFC 5321 §3.3: MAIL first
        (SmtpState.READY, "DATA"),
        (SmtpState.MAIL, "MAIL"),  # one transaction at a time
        (SmtpState.MAIL, "DATA"),  # RFC 5321 §3.3: no recipient yet
        (SmtpState.RCPT, "MAIL"),
        (SmtpState.MAIL, "AUTH"),  # RFC 4954 §4: not during a mail transaction
        (SmtpState.RCPT, "AUTH"),
        (SmtpState.MAIL, "STARTTLS"),
        (SmtpState.READY, "XYZZY"),
    ],
)
def test_out_of_sequence_commands_not_allowed(state: SmtpState, verb: str) -> None:
    assert not allowed(state, verb)


@pytest.mark.parametrize("state", NOT_DATA)
def test_rset_goes_to_ready_if_greeted_else_greeted(state: SmtpState) -> None:
    """RFC 5321 §4.1.1.5: RSET clears the transaction, not the greeting."""
    assert next_state(state, "RSET", greeted=True) is SmtpState.READY
    assert next_state(state, "RSET", greeted=False) is SmtpState.GREETED


@pytest.mark.parametrize("state", NOT_DATA)
@pytest.mark.parametrize("verb", ["NOOP", "HELP", "VRFY", "EXPN", "QUIT"])
def test_other_anytime_verbs_keep_the_state(state: SmtpState, verb: str) -> None:
    for greeted in (False, True):
        assert next_state(state, verb, greeted=greeted) is state


# -- building replies (RFC 5321 §4.2, RFC 2034 §4) ---------------------------------

BUILT = [
    (250, "2.1.0", ["Sender ok"], b"250 2.1.0 Sender ok\r\n", ["2.1.0 Sender ok"]),
    (220, None, ["mx.example ESMTP"], b"220 mx.example ESMTP\r\n", ["mx.example ESMTP"]),
    (250, "2.0.0", [], b"250 2.0.0\r\n", ["2.0.0"]),
    (250, "2.0.0", [""], b"250 2.0.0\r\n", ["2.0.0"]),
    (354, None, ["Go ahead"], b"354 Go ahead\r\n", ["Go ahead"]),
    (
        250,
        None,
        ["mx.example", "PIPELINING", "SIZE 1000"],
        b"250-mx.example\r\n250-PIPELINING\r\n250 SIZE 1000\r\n",
        ["mx.example", "PIPELINING", "SIZE 1000"],
    ),
    (
        550,
        "5.1.1",
        ["no such user", "try again"],
        b"550-5.1.1 no such user\r\n550 5.1.1 try again\r\n",
        ["5.1.1 no such user", "5.1.1 try again"],
    ),
    (
        451,
        "4.3.0",
        ["a", "", "c"],
        b"451-4.3.0 a\r\n451-4.3.0\r\n451 4.3.0 c\r\n",
        ["4.3.0 a", "4.3.0", "4.3.0 c"],
    ),
    (250, None, ["café"], "250 café\r\n".encode(), ["café"]),
    (250, None, ["trailing  "], b"250 trailing\r\n", ["trailing"]),
]


@pytest.mark.parametrize(("code", "enhanced", "texts", "raw", "lines"), BUILT)
def test_reply_build(
    code: int, enhanced: str | None, texts: list[str], raw: bytes, lines: list[str]
) -> None:
    """RFC 5321 §4.2: "code-" on every line but the last, "code SP" on the last;
    RFC 2034 §4: the enhanced status code starts the text of every line."""
    reply = Reply.build(code, enhanced, *texts)
    assert (reply.code, reply.enhanced, reply.lines, reply.raw) == (
        code,
        enhanced,
        tuple(lines),
        raw,
    )
    if enhanced is not None:
        assert all(line.startswith(enhanced) for line in reply.lines)
    assert drain(SmtpReplyReader(), raw)[0] == reply


@pytest.mark.parametrize(
    ("texts", "raw"),
    [([], b"250\r\n"), ([""], b"250\r\n"), (["  "], b"250\r\n"), (["a", ""], b"250-a\r\n250\r\n")],
)
def test_reply_build_empty_last_line_has_no_trailing_space(texts: list[str], raw: bytes) -> None:
    """BUG: RFC 5321 §4.2: the last line is Reply-code [ SP textstring ] CRLF with
    textstring = 1*(%d09 / %d32-126), so an SP must be followed by text; Reply.build
    sends "250 " CRLF for an empty last line."""
    reply = Reply.build(250, None, *texts)
    assert reply.raw == raw


@pytest.mark.parametrize("text", ["a\rb", "a\nb", "a\r\nb", "\r\n", "ok\n"])
def test_reply_build_refuses_cr_lf(text: str) -> None:
    """RFC 5321 §4.2: a reply line is textstring CRLF; text holding CR or LF would inject
    another reply line."""
    with pytest.raises(LocalProtocolError, match="CR or LF"):
        Reply.build(250, "2.0.0", "fine", text)


@pytest.mark.parametrize("text", ["a\x00b", "\x1b[31m", "del\x7f", "bell\x07"])
def test_reply_build_refuses_other_control_characters(text: str) -> None:
    """BUG: RFC 5321 §4.2: textstring = 1*(%d09 / %d32-126); Reply.build refuses only CR
    and LF, so it builds replies its own strict SmtpReplyReader rejects."""
    with pytest.raises(LocalProtocolError):
        Reply.build(250, None, text)


@pytest.mark.parametrize(
    ("code", "enhanced"),
    [
        (199, None),
        (600, None),
        (260, None),
        (25, None),
        (250, "2.1"),
        (250, "3.1.0"),
        (250, "2.1.0.0"),
        (250, "x"),
    ],
)
def test_reply_build_refuses_bad_codes(code: int, enhanced: str | None) -> None:
    with pytest.raises(LocalProtocolError):
        Reply.build(code, enhanced, "text")


TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E) | st.just("\t"), max_size=20)


@FUZZ
@given(
    st.sampled_from([220, 221, 250, 251, 421, 450, 451, 500, 501, 550, 554]),
    st.lists(TEXT, min_size=1, max_size=5),
)
def test_reply_build_round_trips_through_the_reader(code: int, texts: list[str]) -> None:
    enhanced = f"{code // 100}.0.0"
    reply = Reply.build(code, enhanced, *texts)
    assert reply.raw.count(b"\r\n") == len(texts)
    *firsts, last, _ = reply.raw.split(b"\r\n")
    assert all(line.startswith(b"%d-%s" % (code, enhanced.encode())) for line in firsts)
    assert last.startswith(b"%d %s" % (code, enhanced.encode()))
    assert drain(SmtpReplyReader(), reply.raw)[0] == reply


# -- the bare-CR/LF/NUL check on message data, by counts ------------------------------

_BARE_EOL_REGEX = re.compile(rb"(?<!\r)\n|\r(?!\n)|\x00")


@FUZZ
@given(
    st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b"\0", b"a", b".", b"\r\r\n"])).map(b"".join)
)
@example(b"\r\n\r\n")
@example(b"\n\r")
@example(b"a\r\r\n")
def test_bare_eol_counts_agree_with_the_regular_expression(body: bytes):
    assert _has_bare_eol(body) == bool(_BARE_EOL_REGEX.search(body))
