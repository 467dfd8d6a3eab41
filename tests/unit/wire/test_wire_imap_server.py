"""The server side of the IMAP core: command framing, literals, typed command parsers.

Everything is sans-IO: bytes go into :class:`ImapCommandReader`, events come
out, and :func:`parse_command` turns a framed command into a typed one. Every
framing test runs fed whole and in pieces: the events must not depend on how
TCP cut the stream. Examples are taken from the RFC text where there is one.
"""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from wire_feed import FUZZ

from conformance.wire import NEED_DATA, ConnectionClosed, LocalProtocolError
from conformance.wire.imap import (
    COMMANDS,
    Append,
    Authenticate,
    CopyMove,
    Create,
    Enable,
    Expunge,
    Fetch,
    FetchAtt,
    Id,
    ImapBadCommand,
    ImapCommand,
    ImapCommandReader,
    ListCommand,
    LiteralRequest,
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
    format_list,
    parse_command,
    quote,
)
from conformance.wire.imap._commands import _PARSERS

CHUNKS = [None, 1, 2, 7]  # whole, byte by byte, and two odd sizes


def answer(request: LiteralRequest) -> bool:
    """The tests' server: accept every literal it may accept."""
    return not request.too_big


def feed(
    data: bytes,
    chunk: int | None = None,
    *,
    decide: Any = answer,
    **options: Any,
) -> list[Any]:
    """Every event from a fresh reader fed ``data`` (whole or in pieces), then EOF.

    LiteralRequests are answered with ``decide(request)`` (True accepts) and
    recorded; NEED_DATA is not. The list ends with the ConnectionClosed after EOF.
    """
    reader = ImapCommandReader(**options)
    pieces = [data] if chunk is None else [data[i : i + chunk] for i in range(0, len(data), chunk)]
    events: list[Any] = []
    for piece in [*pieces, b""]:
        reader.receive_data(piece)
        while True:
            event = reader.next_event()
            if event is NEED_DATA:
                assert piece != b"", "NEED_DATA after EOF: the reader must end the stream"
                break
            events.append(event)
            if isinstance(event, LiteralRequest):
                if decide(event):
                    reader.accept_literal()
                else:
                    reader.reject_literal()
            if isinstance(event, ConnectionClosed):
                return events
    raise AssertionError(f"no ConnectionClosed after EOF; events {events!r}")


def one(line: bytes, **options: Any) -> ParsedCommand | ImapBadCommand:
    """The typed form of the single command ``line`` (CRLF added)."""
    events = feed(line + b"\r\n", **options)
    commands = [e for e in events if isinstance(e, ImapCommand | ImapBadCommand)]
    assert len(commands) == 1, events
    command = commands[0]
    return command if isinstance(command, ImapBadCommand) else parse_command(command)


def bad(line: bytes, **options: Any) -> ImapBadCommand:
    result = one(line, **options)
    assert isinstance(result, ImapBadCommand), result
    return result


def seq(text: str) -> SequenceSet:
    return SequenceSet.parse(text)


# -- framing ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", CHUNKS)
def test_a_command_line_is_framed_with_its_tag_and_upper_cased_name(chunk: int | None) -> None:
    command, closed = feed(b"a001 noop\r\n", chunk)
    assert command == ImapCommand(tag="a001", name="NOOP", line=b"a001 noop", args_at=9)
    assert command.args == b""
    assert command.raw == b"a001 noop\r\n"
    assert closed == ConnectionClosed()


@pytest.mark.parametrize("chunk", CHUNKS)
def test_uid_prefix_sets_uid_and_names_the_real_command(chunk: int | None) -> None:
    command, _ = feed(b"A999 uid fetch 4827313:4828442 FLAGS\r\n", chunk)
    assert isinstance(command, ImapCommand)
    assert (command.name, command.uid) == ("FETCH", True)
    assert command.args == b" 4827313:4828442 FLAGS"


def test_several_pipelined_commands_come_out_in_order() -> None:
    data = b"a1 NOOP\r\na2 CAPABILITY\r\na3 LOGOUT\r\n"
    *commands, _ = feed(data)
    assert [c.tag for c in commands] == ["a1", "a2", "a3"]
    assert b"".join(c.raw for c in commands) == data


@pytest.mark.parametrize(
    ("line", "tag", "words"),
    [
        (b"", None, "empty line"),
        (b"+ NOOP", None, "tag"),  # "+" is no tag character (RFC 9051 §9 tag)
        (b"* NOOP", None, "tag"),
        (b"a{1 NOOP", None, "tag"),
        (b'"a" NOOP', None, "tag"),
        (b"a1", "a1", "command name"),
        (b"a1 ", "a1", "command name"),
        (b"a1  NOOP", "a1", "command name"),
        (b"a1 (NOOP)", "a1", "command name"),
        (b"a1 BOGUS", "a1", "unknown command BOGUS"),
        (b"a1 UID", "a1", "UID must be followed"),
        (b"a1 UID LOGIN x y", "a1", "UID must be followed"),
        (b"a1 XLIST", "a1", "unknown command"),
    ],
)
def test_lines_without_tag_and_known_command_are_bad(
    line: bytes, tag: str | None, words: str
) -> None:
    first, nxt, _ = feed(line + b"\r\nb NOOP\r\n")
    assert isinstance(first, ImapBadCommand), first
    assert first.tag == tag
    assert words in first.reason, first.reason
    assert nxt == ImapCommand(tag="b", name="NOOP", line=b"b NOOP", args_at=6)


def test_a_tag_may_hold_any_astring_char_but_plus() -> None:
    command, _ = feed(b"A]1.x-y NOOP\r\n")
    assert isinstance(command, ImapCommand) and command.tag == "A]1.x-y"


def test_the_reader_accepts_only_the_commands_it_is_given() -> None:
    first, second, _ = feed(b"a XYZZY\r\nb NOOP\r\n", commands={"xyzzy"})
    assert isinstance(first, ImapCommand) and first.name == "XYZZY"
    assert isinstance(second, ImapBadCommand) and "unknown command NOOP" in second.reason
    assert isinstance(parse_command(first), ImapBadCommand)


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize(
    ("line", "words"),
    [
        (b"a NOOP\n", "bare LF"),
        (b"\n", "bare LF"),
        (b"a NO\x00OP\r\n", "NUL at column 5"),
        (b"a LOGIN x\ry\r\n", "bare CR at column 10"),
        (b"a NOOP\r\r\n", "bare CR"),
    ],
)
def test_bare_lf_bare_cr_and_nul_outside_literals_are_bad_and_the_next_line_parses(
    line: bytes, words: str, chunk: int | None
) -> None:
    first, nxt, _ = feed(line + b"b NOOP\r\n", chunk)
    assert isinstance(first, ImapBadCommand), first
    assert words in first.reason, first.reason
    assert first.tag == (None if line == b"\n" else "a")
    assert isinstance(nxt, ImapCommand) and nxt.tag == "b"


@pytest.mark.parametrize("chunk", CHUNKS)
def test_a_line_over_max_line_is_read_to_its_end_and_reported_with_its_tag(
    chunk: int | None,
) -> None:
    long = b"t1 LOGIN " + b"x" * 300 + b"\r\n"
    first, nxt, _ = feed(long + b"t2 NOOP\r\n", chunk, max_line=200)
    assert first == ImapBadCommand(tag="t1", reason=first.reason)
    assert "max_line=200" in first.reason and "RFC 7162 §4" in first.reason
    assert isinstance(nxt, ImapCommand) and nxt.tag == "t2"


def test_a_line_of_exactly_max_line_is_fine() -> None:
    line = b"t1 LOGIN a " + b"x" * (200 - 11)
    assert len(line) == 200
    command, _ = feed(line + b"\r\n", max_line=200)
    assert isinstance(command, ImapCommand)


def test_a_huge_line_without_lf_is_not_buffered() -> None:
    reader = ImapCommandReader(max_line=1024)
    reader.receive_data(b"t1 NOOP ")
    for _ in range(64):
        reader.receive_data(b"A" * 16384)
        assert reader.next_event() is NEED_DATA
        assert len(reader.pending) < 200
    reader.receive_data(b"\r\nt2 NOOP\r\n")
    first = reader.next_event()
    assert isinstance(first, ImapBadCommand) and first.tag == "t1"
    assert isinstance(reader.next_event(), ImapCommand)


@pytest.mark.parametrize("chunk", CHUNKS)
def test_an_over_long_line_announcing_a_non_sync_literal_drains_the_literal(
    chunk: int | None,
) -> None:
    # The literal looks like a command; it must never be read as one.
    data = b"t1 APPEND x" + b"y" * 300 + b" {9+}\r\nt9 LOGOUT" + b"\r\nt2 NOOP\r\n"
    first, nxt, _ = feed(data, chunk, max_line=200)
    assert isinstance(first, ImapBadCommand) and first.tag == "t1"
    assert isinstance(nxt, ImapCommand) and nxt.tag == "t2"


@pytest.mark.parametrize("tail", [b"", b"a2 NOO", b"a2 NOOP\r", b"a2 LOGIN {5}\r\nali"])
def test_a_command_cut_off_by_eof_is_never_a_command(tail: bytes) -> None:
    events = feed(b"a1 NOOP\r\n" + tail, decide=lambda r: True)
    assert isinstance(events[0], ImapCommand)
    assert events[-1] == ConnectionClosed()
    assert not any(isinstance(e, ImapCommand) for e in events[1:])


def test_eof_is_sticky_and_data_after_it_is_a_local_error() -> None:
    reader = ImapCommandReader()
    reader.receive_data(b"")
    assert reader.next_event() == ConnectionClosed()
    assert reader.next_event() == ConnectionClosed()
    with pytest.raises(LocalProtocolError):
        reader.receive_data(b"a NOOP\r\n")


def test_discard_pending_drops_what_came_with_starttls() -> None:
    reader = ImapCommandReader()
    reader.receive_data(b"a STARTTLS\r\nb LOGIN alice secret\r\n")
    command = reader.next_event()
    assert isinstance(command, ImapCommand) and command.name == "STARTTLS"
    assert reader.pending == b"b LOGIN alice secret\r\n"
    assert reader.discard_pending() == b"b LOGIN alice secret\r\n"
    assert reader.next_event() is NEED_DATA


def test_reader_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="max_line"):
        ImapCommandReader(max_line=10)
    with pytest.raises(ValueError, match="max_literal"):
        ImapCommandReader(max_literal=-1)


def test_a_bad_command_reason_is_one_line() -> None:
    with pytest.raises(LocalProtocolError):
        ImapBadCommand(tag="a", reason="two\r\nlines")


# -- literals -------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", CHUNKS)
def test_login_with_two_synchronising_literals(chunk: int | None) -> None:
    data = b"A001 LOGIN {5}\r\nalice {6}\r\nsecret\r\n"
    first, second, command, _ = feed(data, chunk)
    assert first == LiteralRequest(tag="A001", name="LOGIN", size=5)
    assert second == LiteralRequest(tag="A001", name="LOGIN", size=6)
    assert isinstance(command, ImapCommand)
    assert command.raw == data
    assert parse_command(command) == Login(
        tag="A001", name="LOGIN", username="alice", password="secret"
    )


def test_the_reader_waits_for_the_server_to_answer_a_literal_request() -> None:
    reader = ImapCommandReader()
    reader.receive_data(b"a LOGIN {5}\r\n")
    request = reader.next_event()
    assert isinstance(request, LiteralRequest)
    assert reader.awaiting_decision == request
    with pytest.raises(LocalProtocolError, match="accept_literal"):
        reader.next_event()
    with pytest.raises(LocalProtocolError):
        reader.next_line()
    reader.accept_literal()
    assert reader.awaiting_decision is None
    assert reader.next_event() is NEED_DATA
    reader.receive_data(b"alice pw\r\n")
    command = reader.next_event()
    assert isinstance(command, ImapCommand)
    assert parse_command(command) == Login(tag="a", name="LOGIN", username="alice", password="pw")


def test_accept_or_reject_without_a_request_is_a_local_error() -> None:
    reader = ImapCommandReader()
    with pytest.raises(LocalProtocolError):
        reader.accept_literal()
    with pytest.raises(LocalProtocolError):
        reader.reject_literal()


@pytest.mark.parametrize("chunk", CHUNKS)
def test_a_rejected_literal_drops_the_command_and_the_next_line_is_a_new_command(
    chunk: int | None,
) -> None:
    data = b"a APPEND INBOX {500}\r\nb NOOP\r\n"
    request, nxt, _ = feed(data, chunk, decide=lambda r: False)
    assert request == LiteralRequest(tag="a", name="APPEND", size=500)
    assert nxt == ImapCommand(tag="b", name="NOOP", line=b"b NOOP", args_at=6)


def test_a_literal_over_max_literal_is_asked_about_but_cannot_be_accepted() -> None:
    reader = ImapCommandReader(max_literal=100)
    reader.receive_data(b"a APPEND INBOX {101}\r\n")
    request = reader.next_event()
    assert request == LiteralRequest(tag="a", name="APPEND", size=101, too_big=True)
    with pytest.raises(LocalProtocolError, match="reject"):
        reader.accept_literal()
    reader.reject_literal()
    reader.receive_data(b"b NOOP\r\n")
    assert isinstance(reader.next_event(), ImapCommand)


@pytest.mark.parametrize("chunk", CHUNKS)
def test_literal_plus_needs_no_continuation(chunk: int | None) -> None:
    data = b"a LOGIN {5+}\r\nalice {6+}\r\nsecret\r\n"
    command, _ = feed(data, chunk)
    assert isinstance(command, ImapCommand)
    assert parse_command(command) == Login(
        tag="a", name="LOGIN", username="alice", password="secret"
    )


@pytest.mark.parametrize("chunk", CHUNKS)
def test_a_literal_may_hold_crlf_nul_and_8bit_octets(chunk: int | None) -> None:
    message = b"Subject: x\r\n\r\n\x00\xff{3}\r\na NOOP\r\n"
    data = b"A003 APPEND saved-messages (\\Seen) {%d}\r\n" % len(message) + message + b"\r\n"
    request, command, _ = feed(data, chunk)
    assert request == LiteralRequest(tag="A003", name="APPEND", size=len(message))
    assert parse_command(command) == Append(
        tag="A003",
        name="APPEND",
        mailbox="saved-messages",
        flags=("\\Seen",),
        message=message,
    )


@pytest.mark.parametrize("chunk", CHUNKS)
def test_non_sync_literal_without_literal_plus_is_drained_and_bad(chunk: int | None) -> None:
    data = b"a LOGIN {9+}\r\nb LOGOUT {2}\r\nc NOOP\r\n"
    first, nxt, _ = feed(data, chunk, literal_plus=False)
    assert isinstance(first, ImapBadCommand)
    assert first.tag == "a" and "LITERAL+" in first.reason and first.code is None
    assert nxt == ImapCommand(tag="c", name="NOOP", line=b"c NOOP", args_at=6)


def test_literal_minus_takes_non_sync_literals_up_to_4096_octets() -> None:
    small = b"a APPEND x {4096+}\r\n" + b"m" * 4096 + b"\r\n"
    big = b"b APPEND x {4097+}\r\n" + b"m" * 4097 + b"\r\nc NOOP\r\n"
    first, second, third, _ = feed(small + big, literal_plus=False, literal_minus=True)
    assert isinstance(first, ImapCommand)
    assert isinstance(second, ImapBadCommand)
    assert second.tag == "b" and second.code == "TOOBIG" and "RFC 7888 §5" in second.reason
    assert isinstance(third, ImapCommand) and third.tag == "c"


@pytest.mark.parametrize("chunk", CHUNKS)
def test_a_non_sync_literal_over_max_literal_is_drained_then_reported_toobig(
    chunk: int | None,
) -> None:
    # the whole rest of the command is drained, other non-sync literals included
    data = b"a APPEND x {20+}\r\n" + b"b LOGOUT\r\n" * 2 + b" {3+}\r\nxyz\r\nc NOOP\r\n"
    first, nxt, _ = feed(data, chunk, max_literal=10)
    assert first == ImapBadCommand(tag="a", reason=first.reason, code="TOOBIG", name="APPEND")
    assert "RFC 7888 §4" in first.reason
    assert nxt == ImapCommand(tag="c", name="NOOP", line=b"c NOOP", args_at=6)


def test_an_unknown_command_with_a_non_sync_literal_is_drained() -> None:
    first, nxt, _ = feed(b"a BOGUS {8+}\r\nb LOGOUT\r\nc NOOP\r\n")
    assert isinstance(first, ImapBadCommand) and first.tag == "a"
    assert isinstance(nxt, ImapCommand) and nxt.tag == "c"


def test_an_unknown_command_with_a_sync_literal_is_refused_without_asking() -> None:
    first, nxt, _ = feed(b"a BOGUS {8}\r\nc NOOP\r\n")
    assert isinstance(first, ImapBadCommand) and first.tag == "a"
    assert isinstance(nxt, ImapCommand) and nxt.tag == "c"


def test_a_bad_line_after_a_literal_ends_the_command() -> None:
    first, second, nxt, _ = feed(b"a LOGIN {5}\r\nalice x\x00y\r\nb NOOP\r\n")
    assert isinstance(first, LiteralRequest)
    assert isinstance(second, ImapBadCommand) and second.tag == "a" and "NUL" in second.reason
    assert isinstance(nxt, ImapCommand)


def test_max_command_bounds_lines_and_literals_together() -> None:
    data = b"a LOGIN {60+}\r\n" + b"u" * 60 + b" {60+}\r\n" + b"p" * 60 + b"\r\nb NOOP\r\n"
    first, nxt, _ = feed(data, max_command=120)
    assert isinstance(first, ImapBadCommand) and first.code == "TOOBIG"
    assert isinstance(nxt, ImapCommand) and nxt.tag == "b"
    request, _ = feed(b"a LOGIN {60}\r\n" + b"u" * 60 + b" {60}\r\n", max_command=120)[1:]
    assert isinstance(request, LiteralRequest) and request.too_big


def test_literal8_is_framed_and_marked_binary() -> None:
    request, command, _ = feed(b"a APPEND x ~{3}\r\n\x00\x01\x02\r\n")
    assert request == LiteralRequest(tag="a", name="APPEND", size=3, binary=True)
    parsed = parse_command(command)
    assert isinstance(parsed, Append) and parsed.binary and parsed.message == b"\x00\x01\x02"
    assert isinstance(one(b"a LOGIN ~{1+}\r\nx y"), ImapBadCommand)


def test_a_literal_only_counts_at_the_end_of_a_line() -> None:
    result = one(b'a LOGIN "{5}" x')
    assert result == Login(tag="a", name="LOGIN", username="{5}", password="x")


# -- next_line: SASL responses and IDLE's DONE ---------------------------------------------------


def test_authenticate_then_the_sasl_response_and_idle_then_done_are_raw_lines() -> None:
    reader = ImapCommandReader()
    reader.receive_data(b"a AUTHENTICATE PLAIN\r\nAGFsaWNlAHB3\r\nb IDLE\r\nDONE\r\n")
    command = reader.next_event()
    assert parse_command(command) == Authenticate(  # type: ignore[arg-type]
        tag="a", name="AUTHENTICATE", mechanism="PLAIN"
    )
    assert reader.next_line() == b"AGFsaWNlAHB3"
    command = reader.next_event()
    assert isinstance(command, ImapCommand) and command.name == "IDLE"
    assert reader.next_line() == b"DONE"
    assert reader.next_line() is NEED_DATA
    reader.receive_data(b"")
    assert reader.next_line() == ConnectionClosed()


@pytest.mark.parametrize(
    ("line", "words"),
    [(b"DONE\n", "bare LF"), (b"DO\x00NE\r\n", "NUL"), (b"x" * 300 + b"\r\n", "max_line")],
)
def test_a_bad_raw_line_is_an_untagged_bad(line: bytes, words: str) -> None:
    reader = ImapCommandReader(max_line=200)
    reader.receive_data(line)
    result = reader.next_line()
    assert isinstance(result, ImapBadCommand) and result.tag is None
    assert words in result.reason


# -- typed commands: RFC examples ------------------------------------------------------------------

T = "t"

PARSED: list[tuple[bytes, ParsedCommand]] = [
    # RFC 9051 §6.1, §6.2
    (b"t CAPABILITY", NoArguments(tag=T, name="CAPABILITY")),
    (b"t noop", NoArguments(tag=T, name="NOOP")),
    (b"t LOGOUT", NoArguments(tag=T, name="LOGOUT")),
    (b"t STARTTLS", NoArguments(tag=T, name="STARTTLS")),
    (b"t AUTHENTICATE GSSAPI", Authenticate(tag=T, name="AUTHENTICATE", mechanism="GSSAPI")),
    # RFC 4959 §3 (SASL-IR)
    (
        b"t AUTHENTICATE plain dGVzdAB0ZXN0AHRlc3Q=",
        Authenticate(
            tag=T, name="AUTHENTICATE", mechanism="PLAIN", initial_response="dGVzdAB0ZXN0AHRlc3Q="
        ),
    ),
    (
        b"t AUTHENTICATE PLAIN =",
        Authenticate(tag=T, name="AUTHENTICATE", mechanism="PLAIN", initial_response=""),
    ),
    (b"t LOGIN SMITH SESAME", Login(tag=T, name="LOGIN", username="SMITH", password="SESAME")),
    (
        b't LOGIN "fred foobar" "pa\\"ss\\\\"',
        Login(tag=T, name="LOGIN", username="fred foobar", password='pa"ss\\'),
    ),
    # RFC 5161 §3.1
    (
        b"t ENABLE CONDSTORE X-GOOD-IDEA utf8=accept",
        Enable(tag=T, name="ENABLE", capabilities=("CONDSTORE", "X-GOOD-IDEA", "UTF8=ACCEPT")),
    ),
    # RFC 9051 §6.3
    (b"t SELECT INBOX", Select(tag=T, name="SELECT", mailbox="INBOX")),
    (b"t SELECT inbox", Select(tag=T, name="SELECT", mailbox="INBOX")),
    (b't SELECT "InBoX"', Select(tag=T, name="SELECT", mailbox="INBOX")),
    (b"t EXAMINE blurdybloop", Select(tag=T, name="EXAMINE", mailbox="blurdybloop")),
    (b"t SELECT INBOX (CONDSTORE)", Select(tag=T, name="SELECT", mailbox="INBOX", condstore=True)),
    (b"t SELECT Inbox/sub", Select(tag=T, name="SELECT", mailbox="Inbox/sub")),
    (b"t CREATE owatagusiam/", Create(tag=T, name="CREATE", mailbox="owatagusiam/")),
    # RFC 6154 §5.2
    (
        b"t CREATE MySpecialArchive (USE (\\archive \\Sent))",
        Create(
            tag=T, name="CREATE", mailbox="MySpecialArchive", special_use=("\\Archive", "\\Sent")
        ),
    ),
    (b"t DELETE blurdybloop", MailboxCommand(tag=T, name="DELETE", mailbox="blurdybloop")),
    (
        b"t RENAME blurdybloop sarasoop",
        Rename(tag=T, name="RENAME", source="blurdybloop", destination="sarasoop"),
    ),
    (
        b"t SUBSCRIBE #news.comp.mail.mime",
        MailboxCommand(tag=T, name="SUBSCRIBE", mailbox="#news.comp.mail.mime"),
    ),
    (
        b"t UNSUBSCRIBE #news.comp.mail.mime",
        MailboxCommand(tag=T, name="UNSUBSCRIBE", mailbox="#news.comp.mail.mime"),
    ),
    (b't LIST "" ""', ListCommand(tag=T, name="LIST", reference="", patterns=("",))),
    (
        b"t LIST #news.comp.mail.misc %",
        ListCommand(tag=T, name="LIST", reference="#news.comp.mail.misc", patterns=("%",)),
    ),
    (
        b"t LIST ~/Mail/ foo*bar]",
        ListCommand(tag=T, name="LIST", reference="~/Mail/", patterns=("foo*bar]",)),
    ),
    # RFC 5258 §5
    (
        b't LIST (SUBSCRIBED) "" "*"',
        ListCommand(
            tag=T,
            name="LIST",
            reference="",
            patterns=("*",),
            selection=("SUBSCRIBED",),
            extended=True,
        ),
    ),
    (
        b't LIST () "" "%" RETURN (CHILDREN)',
        ListCommand(
            tag=T,
            name="LIST",
            reference="",
            patterns=("%",),
            return_options=("CHILDREN",),
            extended=True,
        ),
    ),
    (
        b't LIST (subscribed recursivematch) "" "%" RETURN (subscribed)',
        ListCommand(
            tag=T,
            name="LIST",
            reference="",
            patterns=("%",),
            selection=("SUBSCRIBED", "RECURSIVEMATCH"),
            return_options=("SUBSCRIBED",),
            extended=True,
        ),
    ),
    (
        b't LIST "" ("INBOX" "Drafts" Sent/%)',
        ListCommand(
            tag=T, name="LIST", reference="", patterns=("INBOX", "Drafts", "Sent/%"), extended=True
        ),
    ),
    # RFC 6154 §5.1, RFC 5819 §2
    (
        b't LIST "" "*" RETURN (SPECIAL-USE STATUS (MESSAGES UNSEEN))',
        ListCommand(
            tag=T,
            name="LIST",
            reference="",
            patterns=("*",),
            return_options=("SPECIAL-USE",),
            status_items=("MESSAGES", "UNSEEN"),
            extended=True,
        ),
    ),
    (
        b't LSUB "#news." "comp.mail.*"',
        ListCommand(tag=T, name="LSUB", reference="#news.", patterns=("comp.mail.*",)),
    ),
    (b"t NAMESPACE", NoArguments(tag=T, name="NAMESPACE")),
    (
        b"t STATUS blurdybloop (UIDNEXT MESSAGES size highestmodseq)",
        Status(
            tag=T,
            name="STATUS",
            mailbox="blurdybloop",
            items=("UIDNEXT", "MESSAGES", "SIZE", "HIGHESTMODSEQ"),
        ),
    ),
    (
        b't APPEND saved-messages (\\Seen $Forwarded) "17-Jul-1996 02:44:25 -0700" {2+}\r\nhi',
        Append(
            tag=T,
            name="APPEND",
            mailbox="saved-messages",
            flags=("\\Seen", "$Forwarded"),
            internal_date=datetime.datetime(
                1996, 7, 17, 2, 44, 25, tzinfo=datetime.timezone(datetime.timedelta(hours=-7))
            ),
            message=b"hi",
        ),
    ),
    (
        b't APPEND x " 7-Jul-1996 23:59:59 +0530" {0+}\r\n',
        Append(
            tag=T,
            name="APPEND",
            mailbox="x",
            internal_date=datetime.datetime(
                1996,
                7,
                7,
                23,
                59,
                59,
                tzinfo=datetime.timezone(datetime.timedelta(hours=5, minutes=30)),
            ),
            message=b"",
        ),
    ),
    (b"t IDLE", NoArguments(tag=T, name="IDLE")),
    # RFC 9051 §6.4
    (b"t CHECK", NoArguments(tag=T, name="CHECK")),
    (b"t CLOSE", NoArguments(tag=T, name="CLOSE")),
    (b"t UNSELECT", NoArguments(tag=T, name="UNSELECT")),
    (b"t EXPUNGE", Expunge(tag=T, name="EXPUNGE")),
    # RFC 4315 §2.1
    (
        b"t UID EXPUNGE 3000:3002",
        Expunge(tag=T, name="EXPUNGE", uid=True, sequence=seq("3000:3002")),
    ),
    (
        b'A282 SEARCH RETURN (MIN COUNT) FLAGGED SINCE 1-Feb-1994 NOT FROM "Smith"',
        Search(
            tag="A282",
            name="SEARCH",
            criteria=SearchKey(
                "AND",
                children=(
                    SearchKey("FLAGGED"),
                    SearchKey("SINCE", value=datetime.date(1994, 2, 1)),
                    SearchKey("NOT", children=(SearchKey("FROM", value="Smith"),)),
                ),
            ),
            return_options=("MIN", "COUNT"),
        ),
    ),
    (
        b"t SEARCH RETURN () DELETED",
        Search(tag=T, name="SEARCH", criteria=SearchKey("DELETED"), return_options=()),
    ),
    (
        b"t SEARCH CHARSET UTF-8 TEXT {6+}\r\nXXXXXX",
        Search(tag=T, name="SEARCH", criteria=SearchKey("TEXT", value="XXXXXX"), charset="UTF-8"),
    ),
    (
        b't UID SEARCH 1:100 UID 443:557 OR SEEN (UNDELETED LARGER 10) BEFORE "2-Mar-2020"',
        Search(
            tag=T,
            name="SEARCH",
            uid=True,
            criteria=SearchKey(
                "AND",
                children=(
                    SearchKey("SEQUENCE", value=seq("1:100")),
                    SearchKey("UID", value=seq("443:557")),
                    SearchKey(
                        "OR",
                        children=(
                            SearchKey("SEEN"),
                            SearchKey(
                                "AND",
                                children=(SearchKey("UNDELETED"), SearchKey("LARGER", value=10)),
                            ),
                        ),
                    ),
                    SearchKey("BEFORE", value=datetime.date(2020, 3, 2)),
                ),
            ),
        ),
    ),
    (
        b"t SEARCH HEADER X-Spam yes KEYWORD $Junk UNKEYWORD foo SMALLER 5 NEW OLD RECENT",
        Search(
            tag=T,
            name="SEARCH",
            criteria=SearchKey(
                "AND",
                children=(
                    SearchKey("HEADER", value="yes", field="X-Spam"),
                    SearchKey("KEYWORD", value="$Junk"),
                    SearchKey("UNKEYWORD", value="foo"),
                    SearchKey("SMALLER", value=5),
                    SearchKey("NEW"),
                    SearchKey("OLD"),
                    SearchKey("RECENT"),
                ),
            ),
        ),
    ),
    # RFC 7162 §3.1.5
    (
        b't SEARCH MODSEQ "/flags/\\\\draft" all 620162338',
        Search(
            tag=T,
            name="SEARCH",
            criteria=SearchKey("MODSEQ", value=620162338, field="/flags/\\draft"),
        ),
    ),
    (b"t SEARCH $", Search(tag=T, name="SEARCH", criteria=SearchKey("SEQUENCE", value=seq("$")))),
    (
        b"A654 FETCH 2:4 (FLAGS BODY[HEADER.FIELDS (DATE FROM)])",
        Fetch(
            tag="A654",
            name="FETCH",
            sequence=seq("2:4"),
            items=(
                FetchAtt("FLAGS"),
                FetchAtt("BODY", section=Section((), "HEADER.FIELDS", ("DATE", "FROM"))),
            ),
        ),
    ),
    (
        b"t FETCH 12 fast",
        Fetch(
            tag=T,
            name="FETCH",
            sequence=seq("12"),
            items=(FetchAtt("FLAGS"), FetchAtt("INTERNALDATE"), FetchAtt("RFC822.SIZE")),
            macro="FAST",
        ),
    ),
    (
        b"t FETCH * body.peek[1.2.MIME]<0.2048>",
        Fetch(
            tag=T,
            name="FETCH",
            sequence=seq("*"),
            items=(
                FetchAtt("BODY", section=Section((1, 2), "MIME"), partial=(0, 2048), peek=True),
            ),
        ),
    ),
    (
        b"t FETCH 1 (BODY[] BODY[3.HEADER.FIELDS.NOT (X-A)] BINARY.PEEK[1]<5.10> BINARY.SIZE[] "
        b"BODYSTRUCTURE BODY ENVELOPE RFC822 RFC822.HEADER RFC822.TEXT UID MODSEQ)",
        Fetch(
            tag=T,
            name="FETCH",
            sequence=seq("1"),
            items=(
                FetchAtt("BODY", section=Section()),
                FetchAtt("BODY", section=Section((3,), "HEADER.FIELDS.NOT", ("X-A",))),
                FetchAtt("BINARY", section=Section((1,)), partial=(5, 10), peek=True),
                FetchAtt("BINARY.SIZE", section=Section()),
                FetchAtt("BODYSTRUCTURE"),
                FetchAtt("BODY"),
                FetchAtt("ENVELOPE"),
                FetchAtt("RFC822"),
                FetchAtt("RFC822.HEADER"),
                FetchAtt("RFC822.TEXT"),
                FetchAtt("UID"),
                FetchAtt("MODSEQ"),
            ),
        ),
    ),
    # RFC 7162 §3.1.4.1
    (
        b"s100 UID FETCH 1:* (FLAGS) (CHANGEDSINCE 12345)",
        Fetch(
            tag="s100",
            name="FETCH",
            uid=True,
            sequence=seq("1:*"),
            items=(FetchAtt("FLAGS"),),
            changedsince=12345,
        ),
    ),
    (
        b"A003 STORE 2:4 +FLAGS (\\Deleted)",
        Store(tag="A003", name="STORE", sequence=seq("2:4"), action="add", flags=("\\Deleted",)),
    ),
    # RFC 7162 §3.1.3
    (
        b"d105 STORE 7,5,9 (UNCHANGEDSINCE 320162338) +FLAGS.SILENT (\\Deleted)",
        Store(
            tag="d105",
            name="STORE",
            sequence=seq("7,5,9"),
            action="add",
            silent=True,
            flags=("\\Deleted",),
            unchangedsince=320162338,
        ),
    ),
    (
        b"t UID STORE 1 -flags \\SEEN \\flagged $MDNSent",
        Store(
            tag=T,
            name="STORE",
            uid=True,
            sequence=seq("1"),
            action="remove",
            flags=("\\Seen", "\\Flagged", "$MDNSent"),
        ),
    ),
    (
        b"t STORE 1 FLAGS ()",
        Store(tag=T, name="STORE", sequence=seq("1"), action="set"),
    ),
    (
        b"A003 COPY 2:4 MEETING",
        CopyMove(tag="A003", name="COPY", sequence=seq("2:4"), mailbox="MEETING"),
    ),
    # RFC 6851 §4.1
    (
        b"a UID MOVE 42:69 foo",
        CopyMove(tag="a", name="MOVE", uid=True, sequence=seq("42:69"), mailbox="foo"),
    ),
    # RFC 2971 §3.1
    (
        b'a023 ID ("name" "sodr" "version" "19.34" "vendor" "Pink Floyd Music Limited")',
        Id(
            tag="a023",
            name="ID",
            parameters=(
                ("name", "sodr"),
                ("version", "19.34"),
                ("vendor", "Pink Floyd Music Limited"),
            ),
        ),
    ),
    (b"a ID NIL", Id(tag="a", name="ID", parameters=None)),
    (b'a ID ("os" NIL)', Id(tag="a", name="ID", parameters=(("os", None),))),
]


@pytest.mark.parametrize(("line", "expected"), PARSED, ids=[p[0][:40].decode() for p in PARSED])
def test_commands_parse_to_their_typed_form(line: bytes, expected: ParsedCommand) -> None:
    assert one(line) == expected


def test_every_command_the_reader_accepts_has_a_parser() -> None:
    assert {name for name, _ in _PARSERS} == COMMANDS
    assert {name for name, uid in _PARSERS if uid} == {
        "COPY",
        "MOVE",
        "FETCH",
        "SEARCH",
        "STORE",
        "EXPUNGE",
    }


def test_examine_is_readonly() -> None:
    result = one(b"t EXAMINE x")
    assert isinstance(result, Select) and result.readonly
    result = one(b"t SELECT x")
    assert isinstance(result, Select) and not result.readonly


def test_an_8bit_mailbox_name_is_utf8_text() -> None:
    name = "Entwürfe".encode()
    assert one(b't SELECT "' + name + b'"') == Select(tag=T, name="SELECT", mailbox="Entwürfe")


def test_fetch_response_names() -> None:
    parsed = one(b't FETCH 1 (BODY.PEEK[1.HEADER.FIELDS (From "X Y")]<10.20> BINARY[2] UID)')
    assert isinstance(parsed, Fetch)
    assert [item.response_name for item in parsed.items] == [
        'BODY[1.HEADER.FIELDS (From "X Y")]<10>',
        "BINARY[2]",
        "UID",
    ]


# -- typed commands: bad syntax --------------------------------------------------------------------

BAD: list[tuple[bytes, str]] = [
    (b"t FETCH x FLAGS", "(RFC 9051 §9 sequence-set)"),
    (b"t FETCH 0 FLAGS", "sequence-set"),
    (b"t FETCH 1:0 FLAGS", "sequence-set"),
    (b"t FETCH 01 FLAGS", "sequence-set"),
    (b"t FETCH 1,,2 FLAGS", "sequence-set"),
    (b"t FETCH 4294967296 FLAGS", "sequence-set"),
    (b"t FETCH 1 (FLAGS", "')'"),
    (b"t FETCH 1 ()", "fetch-att"),
    (b"t FETCH 1 FOO", "expected a fetch attribute, found b'FOO'"),
    (b"t FETCH 1 BODY[FOO]", "section-text"),
    (b"t FETCH 1 BODY[1.FOO]", "section-text"),
    (b"t FETCH 1 BODY[0]", "section-part"),
    (b"t FETCH 1 BODY.PEEK", "'[' and a section"),
    (b"t FETCH 1 BINARY[TEXT]", "section-part"),
    (b"t FETCH 1 BODY[]<5>", "partial"),
    (b"t FETCH 1 BODY[]<5.0>", "nz-number64"),
    (b"t FETCH 1 (ALL)", "fetch-att"),
    (b"t FETCH 1 FLAGS (CHANGEDSINCE 0)", "RFC 7162 §7 fetch-modifiers"),
    (b"t FETCH 1 FLAGS (VANISHED)", "CHANGEDSINCE"),
    (b"t FETCH 1 FLAGS extra", "fetch-modifiers"),
    (b"t FETCH 1 FLAGS (CHANGEDSINCE 1) x", "end of command (CRLF)"),
    (b"t STORE 1 FLAGS \\Recent", "(RFC 3501 §2.3.2)"),
    (b"t STORE 1 +FLAGS (\\Seen \\recent)", "RFC 3501 §2.3.2"),
    (b"t STORE 1 FLAGS.NOISY (\\Seen)", "store-att-flags"),
    (b"t STORE 1 FLAGS \\*", "flag"),
    (b"t STORE 1 (FOO 1) FLAGS \\Seen", "RFC 7162 §7 store-modifiers"),
    (b"t APPEND INBOX (\\Recent) {1+}\r\nx", "RFC 3501 §2.3.2"),
    (b't APPEND INBOX "hello"', "date-time"),
    (b"t APPEND INBOX hello", "literal"),
    (b't APPEND INBOX "32-Jul-1996 02:44:25 -0700" {1+}\r\nx', "date-time"),
    (b't APPEND INBOX "17-Jul-1996 24:44:25 -0700" {1+}\r\nx', "date-time"),
    (b't APPEND INBOX "17-Jul-1996 02:44:25 -0760" {1+}\r\nx', "date-time"),
    (b"t APPEND INBOX {1+}\r\nx {1+}\r\ny", "MULTIAPPEND"),
    (b"t SEARCH FOO", "expected a search key, found b'FOO'"),
    (b"t SEARCH", "SP"),
    (b"t SEARCH BEFORE 30-Feb-2020", "(RFC 9051 §9 date)"),
    (b"t SEARCH SINCE 1-Foo-2020", "date"),
    (b"t SEARCH SINCE 1-Feb-20", "date"),
    (b"t SEARCH OR SEEN", "SP"),
    (b"t SEARCH (SEEN", "')'"),
    (b"t SEARCH RETURN (BOGUS) ALL", "search-return-opts"),
    (b't SEARCH MODSEQ "/flags/x" mine 5', "RFC 7162 §7 search-modsequence"),
    (b"t SEARCH " + b"NOT " * 200 + b"ALL", "nested deeper than 64"),
    (b"t SEARCH " + b"(" * 200 + b"ALL" + b")" * 200, "max_depth=64"),
    (b"t STATUS INBOX (BOGUS)", "status-att"),
    (b"t STATUS INBOX ()", "status-att"),
    (b't LIST (BOGUS) "" *', "RFC 5258 §6 list-select-opts"),
    (b't LIST (RECURSIVEMATCH) "" *', "list-select-opts"),
    (b't LIST "" * RETURN (BOGUS)', "RFC 5258 §6 list-return-opts"),
    (b't LIST "" * EXTRA (X)', "RETURN"),
    (b"t SELECT INBOX (QRESYNC (1 2))", "RFC 4466 §2.1 select-params"),
    (b"t SELECT INBOX ()", "a select parameter this server knows: CONDSTORE"),
    (b"t SELECT {2+}\r\n\xff\xfe", "UTF-8"),
    (b"t SELECT {3+}\r\na\x01b", "control characters"),
    (b"t CREATE foo (BOGUS)", "RFC 6154 §6 create-param"),
    (b"t RENAME a", "SP"),
    (b"t NOOP extra", "NOOP takes no arguments"),
    (b"t LOGIN alice", "SP"),
    (b"t AUTHENTICATE PLAIN !!!", "RFC 4959 §7 initial-resp"),
    (b"t AUTHENTICATE PLAIN abc", "initial-resp"),
    (b"t ENABLE", "SP"),
    (b't ID ("a")', "RFC 2971 §4 id"),
    (b"t COPY 1", "SP"),
    (b"t UID EXPUNGE", "SP"),
    (b"t EXPUNGE 1", "end of command"),
]


@pytest.mark.parametrize(("line", "words"), BAD, ids=[b[0][:40].decode("latin-1") for b in BAD])
def test_bad_arguments_are_bad_commands_naming_the_rule(line: bytes, words: str) -> None:
    result = bad(line)
    assert words in result.reason, result.reason
    assert result.tag == "t"


def test_a_syntax_error_reason_gives_command_expectation_column_and_rule() -> None:
    result = bad(b"t UID FETCH x (FLAGS)")
    assert result == ImapBadCommand(
        tag="t",
        reason="UID FETCH: expected nz-number or '*', found b'x (FLAGS)' at column 13 "
        "(RFC 9051 §9 sequence-set)",
        name="FETCH",
    )


def test_parse_command_refuses_a_command_without_a_parser() -> None:
    command = ImapCommand(tag="a", name="XYZZY", line=b"a XYZZY", args_at=7)
    result = parse_command(command)
    assert isinstance(result, ImapBadCommand) and "no parser" in result.reason


# -- sequence sets ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ranges", "formatted"),
    [
        ("1", ((1, 1),), "1"),
        ("4:2", ((2, 4),), "2:4"),
        ("*:4", ((4, None),), "4:*"),
        ("*", ((None, None),), "*"),
        ("*:*", ((None, None),), "*"),
        ("2,4:7,9,12:*", ((2, 2), (4, 7), (9, 9), (12, None)), "2,4:7,9,12:*"),
    ],
)
def test_sequence_sets_are_normalised(
    text: str, ranges: tuple[tuple[int | None, int | None], ...], formatted: str
) -> None:
    parsed = SequenceSet.parse(text)
    assert parsed.ranges == ranges
    assert str(parsed) == formatted


def test_sequence_set_resolution_against_the_largest_number_in_use() -> None:
    s = seq("2,4:7,9,12:*")
    assert list(s.resolve(15)) == [2, 4, 5, 6, 7, 9, 12, 13, 14, 15]
    assert list(s.resolve(10)) == [2, 4, 5, 6, 7, 9, 10]  # 12:* is 10:12 when * is 10
    assert s.ranges_for(15) == [(2, 2), (4, 7), (9, 9), (12, 15)]
    assert s.contains(5, 15) and not s.contains(8, 15) and not s.contains(16, 15)
    assert seq("5:*").ranges_for(3) == [(3, 3)]  # RFC 9051 §9: includes 3
    assert seq("1:*").ranges_for(0) == []
    assert seq("3,1:2,2:5").ranges_for(9) == [(1, 5)]


def test_the_saved_result_must_be_substituted_before_resolving() -> None:
    saved = seq("$")
    assert saved.saved and str(saved) == "$"
    with pytest.raises(LocalProtocolError, match="RFC 5182"):
        saved.ranges_for(5)


@pytest.mark.parametrize("text", ["", "0", "1:", ":1", "1,", "a", "1 2", "$,1", "-1"])
def test_invalid_sequence_sets_raise_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        SequenceSet.parse(text)


@pytest.mark.parametrize("ranges", [((0, 1),), ((3, 2),), ((None, 2),), ((1, 2**32),), ()])
def test_sequence_sets_are_validated_at_construction(
    ranges: tuple[tuple[int | None, int | None], ...],
) -> None:
    with pytest.raises(LocalProtocolError):
        SequenceSet(ranges)
    with pytest.raises(LocalProtocolError):
        SequenceSet(((1, 1),), saved=True)


_NUMBER = st.integers(min_value=1, max_value=2**32 - 1)
_RANGE = st.one_of(
    _NUMBER.map(lambda n: (n, n)),
    st.tuples(_NUMBER, _NUMBER).map(lambda p: (min(p), max(p))),
    _NUMBER.map(lambda n: (n, None)),
    st.just((None, None)),
)
SEQUENCE_SETS = st.one_of(
    st.lists(_RANGE, min_size=1, max_size=8).map(lambda r: SequenceSet(tuple(r))),
    st.just(SequenceSet(saved=True)),
)


@FUZZ
@given(SEQUENCE_SETS)
def test_sequence_set_format_parse_round_trip(sequence: SequenceSet) -> None:
    assert SequenceSet.parse(str(sequence)) == sequence


@FUZZ
@given(
    st.lists(_RANGE.map(lambda r: (r[0] and r[0] % 50 + 1, r[1] and r[1] % 50 + 1)), min_size=1),
    st.integers(min_value=0, max_value=60),
)
def test_sequence_set_resolution_matches_a_naive_model(
    ranges: list[tuple[int | None, int | None]], largest: int
) -> None:
    normalised = []
    for low, high in ranges:
        if low is None or (high is not None and high < low):
            low, high = high, low
        normalised.append((low, high))
    sequence = SequenceSet(tuple(normalised))
    expected: set[int] = set()
    for low, high in normalised:
        a = largest if low is None else low
        b = largest if high is None else high
        expected |= set(range(min(a, b), max(a, b) + 1))
    expected = {n for n in expected if 1 <= n <= largest}
    assert list(sequence.resolve(largest)) == sorted(expected)
    assert all(sequence.contains(n, largest) == (n in expected) for n in range(62))


# -- responses -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "utf8", "wire"),
    [
        ("INBOX", False, b'"INBOX"'),
        ("", False, b'""'),
        ('say "hi" \\o/', False, b'"say \\"hi\\" \\\\o/"'),
        ("Entwürfe", False, b"{9}\r\nEntw\xc3\xbcrfe"),
        ("Entwürfe", True, b'"Entw\xc3\xbcrfe"'),
        (b"two\r\nlines", True, b"{10}\r\ntwo\r\nlines"),
        (b"nul\x00", True, b"{4}\r\nnul\x00"),
    ],
)
def test_quote_uses_a_quoted_string_when_it_can_and_a_literal_otherwise(
    value: str | bytes, utf8: bool, wire: bytes
) -> None:
    assert quote(value, utf8=utf8) == wire


def test_format_list_writes_tokens_strings_numbers_nil_and_nested_lists() -> None:
    assert format_list(["\\Seen", b"a b", 12, None, ("X", [])]) == b'(\\Seen "a b" 12 NIL (X ()))'
    assert format_list([]) == b"()"
    for token in ("", "a b", "(x", "caf\u00e9"):
        with pytest.raises(ValueError):
            format_list([token])
    with pytest.raises(ValueError):
        format_list([True])


# -- fuzzing ---------------------------------------------------------------------------------------

TOKENS = st.sampled_from(
    [
        b"a1 ",
        b"t ",
        b"UID ",
        b"FETCH ",
        b"STORE ",
        b"SEARCH ",
        b"APPEND ",
        b"LOGIN ",
        b"LIST ",
        b"SELECT ",
        b"NOOP",
        b"1:*",
        b"4,2:3",
        b"(",
        b")",
        b"[",
        b"]",
        b"<0.5>",
        b'"',
        b"\\",
        b"\\Seen",
        b"BODY",
        b"FLAGS",
        b"NOT ",
        b"OR ",
        b"INBOX",
        b" ",
        b"{3}\r\n",
        b"{2+}\r\n",
        b"~{1}\r\n",
        b"{999999999999999999999}\r\n",
        b"\r\n",
        b"\n",
        b"\r",
        b"\x00",
        b"\xff",
        b"x" * 150,
    ]
)
STREAMS = st.one_of(st.binary(max_size=300), st.lists(TOKENS, max_size=40).map(b"".join))


def decide(request: LiteralRequest) -> bool:
    """A deterministic server: accept even sizes it can take, reject the rest."""
    return not request.too_big and request.size % 2 == 0


@FUZZ
@given(STREAMS, st.booleans(), st.booleans())
@example(b"a1 LOGIN {2}\r\nab {3}\r\n", True, False)
@example(b"t SEARCH " + b"NOT " * 600 + b"ALL\r\n", True, True)
def test_any_bytes_give_events_and_parse_command_never_raises(
    data: bytes, literal_plus: bool, literal_minus: bool
) -> None:
    events = feed(
        data,
        decide=decide,
        max_line=120,
        max_literal=50,
        literal_plus=literal_plus,
        literal_minus=literal_minus,
    )
    assert events[-1] == ConnectionClosed()
    for event in events[:-1]:
        assert isinstance(event, ImapCommand | ImapBadCommand | LiteralRequest), event
        if isinstance(event, ImapCommand):
            result = parse_command(event)
            assert isinstance(result, ParsedCommand | ImapBadCommand)
            if isinstance(result, ParsedCommand):
                assert (result.tag, result.name, result.uid) == (event.tag, event.name, event.uid)


@FUZZ
@given(STREAMS, st.integers(min_value=1, max_value=9))
@example(b"t1 APPEND x" + b"y" * 300 + b" {9+}\r\nt9 LOGOUT\r\nt2 NOOP\r\n", 1)
def test_events_do_not_depend_on_how_the_stream_is_cut(data: bytes, chunk: int) -> None:
    whole = feed(data, decide=decide, max_line=120, max_literal=50)
    assert feed(data, chunk, decide=decide, max_line=120, max_literal=50) == whole


@st.composite
def mutated_commands(draw: st.DrawFn) -> bytes:
    """An RFC example with a few slices cut out, repeated or replaced by tokens."""
    data = draw(st.sampled_from([line for line, _ in PARSED]))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        start = draw(st.integers(min_value=0, max_value=len(data)))
        end = draw(st.integers(min_value=start, max_value=min(len(data), start + 8)))
        how = draw(st.sampled_from(["cut", "repeat", "replace"]))
        if how == "cut":
            data = data[:start] + data[end:]
        elif how == "repeat":
            data = data[:end] + data[start:end] + data[end:]
        else:
            data = data[:start] + draw(TOKENS) + data[end:]
    return data + b"\r\n"


@FUZZ
@given(mutated_commands())
def test_mutated_rfc_examples_parse_or_are_bad_never_raise(data: bytes) -> None:
    for event in feed(data, decide=lambda r: not r.too_big)[:-1]:
        if isinstance(event, ImapCommand):
            assert isinstance(parse_command(event), ParsedCommand | ImapBadCommand)
