"""The server side of the POP3 core: command lines in, byte-stuffed bodies out (RFC 1939 §3,
RFC 2449 §4, RFC 5034 §4).

Everything here is sans-IO: bytes go into :class:`Pop3CommandReader` and events
come out, so no test opens a socket. Every framing test runs with the input fed
whole and one byte at a time: the events must not depend on how TCP cut the stream.
"""

from __future__ import annotations

import itertools
import re
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from wire_feed import FUZZ

from conformance.wire import NEED_DATA, ConnectionClosed
from conformance.wire.pop3 import (
    Pop3BadLine,
    Pop3Command,
    Pop3CommandReader,
    Pop3ResponseReader,
    byte_stuff,
    crlf_size,
)

CHUNKS = [None, 1, 2, 7]  # whole, byte by byte, and two odd sizes


def feed(data: bytes, chunk: int | None = None, *, max_line: int = 12288) -> list[Any]:
    """Every event from a fresh reader fed ``data`` (whole or in pieces), then EOF.

    NEED_DATA is not recorded; the list ends with the ConnectionClosed after EOF.
    """
    reader = Pop3CommandReader(max_line=max_line)
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
            if isinstance(event, ConnectionClosed):
                return events
    raise AssertionError(f"no ConnectionClosed after EOF; events {events!r}")


def normalise(message: bytes) -> bytes:
    """Bare LF -> CRLF, and a final CRLF when there is content without one."""
    message = re.sub(rb"(?<!\r)\n", b"\r\n", message)
    if message and not message.endswith(b"\r\n"):
        message += b"\r\n"
    return message


def unstuff(wire: bytes) -> bytes:
    """The body of ``+OK`` + ``wire`` read by the client's strict response reader."""
    reader = Pop3ResponseReader()
    reader.expect(multiline=True)
    reader.receive_data(b"+OK\r\n" + wire)
    reader.receive_data(b"")
    response = reader.next_event()
    assert reader.next_event() == ConnectionClosed(), "bytes left after the terminating '.'"
    assert response.ok and response.lines is not None, response  # type: ignore[union-attr]
    return b"".join(line + b"\r\n" for line in response.lines)  # type: ignore[union-attr]


# -- command lines ---------------------------------------------------------------------------

COMMANDS = [
    (b"STAT\r\n", "STAT", "", ()),
    (b"stat\r\n", "STAT", "", ()),
    (b"Capa\r\n", "CAPA", "", ()),
    (b"LiSt 1\r\n", "LIST", "1", ("1",)),
    (b"TOP 1 10\r\n", "TOP", "1 10", ("1", "10")),
    (b"USER Alice\r\n", "USER", "Alice", ("Alice",)),  # the argument keeps its case
    # RFC 1939 §7: PASS takes the rest of the line, spaces included
    (b"PASS my secret  pw\r\n", "PASS", "my secret  pw", ("my", "secret", "", "pw")),
    (b"PASS  lead\r\n", "PASS", " lead", ("", "lead")),  # split at the first space only
    (b"USER alice \r\n", "USER", "alice ", ("alice", "")),
    (b"NOOP \r\n", "NOOP", "", ()),
    (b"AUTH PLAIN AGFsaWNlAHB3\r\n", "AUTH", "PLAIN AGFsaWNlAHB3", ("PLAIN", "AGFsaWNlAHB3")),
    (b"AUTH PLAIN =\r\n", "AUTH", "PLAIN =", ("PLAIN", "=")),
    (b"PASS caf\xc3\xa9\r\n", "PASS", "caf\u00e9", ("caf\u00e9",)),
    (b"apop alice c4c9\r\n", "APOP", "alice c4c9", ("alice", "c4c9")),
    (b"XTND-X1 a\tb\r\n", "XTND-X1", "a\tb", ("a\tb",)),
]


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize(("line", "keyword", "arg", "args"), COMMANDS)
def test_command_keyword_upper_cased_and_arg_after_the_first_space(
    line: bytes, keyword: str, arg: str, args: tuple[str, ...], chunk: int | None
) -> None:
    command, closed = feed(line, chunk)
    assert command == Pop3Command(keyword=keyword, arg=arg, raw=line)
    assert command.args == args
    assert closed == ConnectionClosed()


@pytest.mark.parametrize("chunk", CHUNKS)
def test_several_commands_in_one_stream_come_out_in_order(chunk: int | None) -> None:
    data = b"USER alice\r\nPASS pw\r\nSTAT\r\nLIST\r\nRETR 1\r\nQUIT\r\n"
    *commands, closed = feed(data, chunk)
    assert [c.keyword for c in commands] == ["USER", "PASS", "STAT", "LIST", "RETR", "QUIT"]
    assert b"".join(c.raw for c in commands) == data
    assert closed == ConnectionClosed()


def test_need_data_until_the_crlf_arrives() -> None:
    reader = Pop3CommandReader()
    for piece in (b"ST", b"AT", b"\r"):
        reader.receive_data(piece)
        assert reader.next_event() is NEED_DATA
    reader.receive_data(b"\n")
    assert reader.next_event() == Pop3Command(keyword="STAT", arg="", raw=b"STAT\r\n")
    assert reader.next_event() is NEED_DATA
    reader.receive_data(b"")
    assert reader.next_event() == ConnectionClosed()
    assert reader.next_event() == ConnectionClosed()  # and it stays closed


@pytest.mark.parametrize("tail", [b"", b"QUI", b"QUIT\r", b"RETR 1"])
def test_an_unterminated_line_at_eof_is_never_a_command(tail: bytes) -> None:
    events = feed(b"NOOP\r\n" + tail)
    assert events[0] == Pop3Command(keyword="NOOP", arg="", raw=b"NOOP\r\n")
    assert events[-1] == ConnectionClosed()
    assert not any(isinstance(e, Pop3Command) for e in events[1:])


# -- bad lines ---------------------------------------------------------------------------------

# RFC 1939 §3: commands are terminated by CRLF. A bare LF or CR, or a NUL, makes a line bad;
# so does text that is not UTF-8.
BAD_LINES = [
    (b"STAT\nDELE 1\r\n", "lf"),  # what follows a bare LF is the same line, never a command
    (b"\n\r\n", "lf"),
    (b"ST\rAT\r\n", "cr"),
    (b"STAT\r\r\n", "cr"),
    (b"\rSTAT\r\n", "cr"),
    (b"STAT\rNOOP\r\n", "cr"),  # a bare CR does not end a line either
    (b"ST\x00AT\r\n", "nul"),
    (b"PASS pw\x00\r\n", "nul"),
    (b"PASS \xff\xfe\r\n", "utf-8"),
    (b"USER \xc3\r\n", "utf-8"),  # truncated two-byte sequence
    (b"USER ab\xc3(\r\n", "utf-8"),  # bad continuation byte
    (b"USER \xed\xa0\x80\r\n", "utf-8"),  # an encoded surrogate is not UTF-8
]


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize(("line", "what"), BAD_LINES)
def test_bare_lf_bare_cr_nul_and_non_utf8_lines_are_bad_and_the_next_line_parses(
    line: bytes, what: str, chunk: int | None
) -> None:
    bad, good, closed = feed(line + b"NOOP\r\n", chunk)
    assert isinstance(bad, Pop3BadLine), bad
    assert bad.raw == line
    assert what in bad.reason.lower(), bad.reason
    assert good == Pop3Command(keyword="NOOP", arg="", raw=b"NOOP\r\n")
    assert closed == ConnectionClosed()


@pytest.mark.parametrize("chunk", CHUNKS)
def test_a_line_longer_than_max_line_is_read_to_its_end_and_reported_once(
    chunk: int | None,
) -> None:
    long = b"USER " + b"x" * 600 + b"\r\n"
    bad, good, closed = feed(long + b"NOOP\r\n", chunk, max_line=255)
    assert isinstance(bad, Pop3BadLine), bad
    assert "long" in bad.reason.lower(), bad.reason
    # nothing of the long line's tail is taken for a command
    assert good == Pop3Command(keyword="NOOP", arg="", raw=b"NOOP\r\n")
    assert closed == ConnectionClosed()


def test_a_long_line_with_a_bare_lf_is_one_bad_line() -> None:
    bad, good, _ = feed(b"x" * 400 + b"\nSTAT\r\nNOOP\r\n", max_line=255)
    assert isinstance(bad, Pop3BadLine)
    assert good == Pop3Command(keyword="NOOP", arg="", raw=b"NOOP\r\n")


def test_a_huge_line_without_lf_is_not_buffered_and_yields_no_event_until_its_end() -> None:
    reader = Pop3CommandReader(max_line=1024)
    for _ in range(64):
        reader.receive_data(b"A" * 16384)
        assert reader.next_event() is NEED_DATA
    reader.receive_data(b"\r\nSTAT\r\n")
    bad = reader.next_event()
    assert isinstance(bad, Pop3BadLine), bad
    assert reader.next_event() == Pop3Command(keyword="STAT", arg="", raw=b"STAT\r\n")
    # the megabyte was dropped as it came, not kept
    assert len(reader.discard_pending()) == 0


@pytest.mark.parametrize("max_line", [255, 1024, 12288])
def test_max_line_boundary(max_line: int) -> None:
    # Whether max_line counts the CRLF or not, a line of max_line octets with its CRLF
    # fits, and one whose content alone is longer than max_line does not.
    fits = b"USER " + b"a" * (max_line - 7) + b"\r\n"
    assert len(fits) == max_line
    too_long = b"USER " + b"a" * (max_line - 4) + b"\r\n"
    assert len(too_long) - 2 == max_line + 1
    for chunk in (None, 1):
        first, second, third, _ = feed(fits + too_long + b"STAT\r\n", chunk, max_line=max_line)
        assert first == Pop3Command(keyword="USER", arg="a" * (max_line - 7), raw=fits)
        assert isinstance(second, Pop3BadLine), second
        assert third == Pop3Command(keyword="STAT", arg="", raw=b"STAT\r\n")


def test_default_max_line_takes_an_auth_line_of_12288_octets() -> None:
    # RFC 5034 §4 / the docs: AUTH responses may be up to 12288 octets.
    line = b"AUTH PLAIN " + b"A" * 12275 + b"\r\n"
    assert len(line) == 12288
    (command, _) = feed(line)
    assert command == Pop3Command(keyword="AUTH", arg="PLAIN " + "A" * 12275, raw=line)


def test_max_line_below_the_rfc_2449_minimum_is_refused() -> None:
    # RFC 2449 §4: servers accept command lines of at least 255 octets
    with pytest.raises(ValueError):
        Pop3CommandReader(max_line=254)


# -- SASL responses (RFC 5034 §4) ------------------------------------------------------------

SASL_LINES = [
    (b"AGFsaWNlAHB3\r\n", b"AGFsaWNlAHB3"),
    (b"+/8=\r\n", b"+/8="),  # base64 may start with "+" or "/" and end in "="
    (b"//+AAA==\r\n", b"//+AAA=="),
    (b"*\r\n", b"*"),  # the cancel
    (b"=\r\n", b"="),
    (b"\r\n", b""),
    (b"A" * 5000 + b"\r\n", b"A" * 5000),  # longer than any keyword
]


@pytest.mark.parametrize(("line", "text"), SASL_LINES)
def test_a_sasl_response_is_read_as_a_line_not_a_command(line: bytes, text: bytes) -> None:
    reader = Pop3CommandReader()
    reader.receive_data(line + b"STAT\r\n")
    assert reader.next_response_line() == text
    assert reader.next_event() == Pop3Command(keyword="STAT", arg="", raw=b"STAT\r\n")


@pytest.mark.parametrize(
    "line", [b"AGFs\nX\r\n", b"AG\rFs\r\n", b"AG\x00Fs\r\n", b"A" * 300 + b"\r\n"], ids=str
)
def test_a_bad_sasl_response_line_is_a_bad_line(line: bytes) -> None:
    reader = Pop3CommandReader(max_line=255)
    reader.receive_data(line + b"STAT\r\n")
    assert isinstance(reader.next_response_line(), Pop3BadLine)
    assert reader.next_event() == Pop3Command(keyword="STAT", arg="", raw=b"STAT\r\n")


def test_need_data_for_a_partial_sasl_response() -> None:
    reader = Pop3CommandReader()
    reader.receive_data(b"AGFs")
    assert reader.next_response_line() is NEED_DATA
    reader.receive_data(b"aWNl\r\n")
    assert reader.next_response_line() == b"AGFsaWNl"
    reader.receive_data(b"")
    assert reader.next_response_line() == ConnectionClosed()


# -- discard_pending (STLS) --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("after", "discarded"),
    [(b"", b""), (b"CAPA\r\n", b"CAPA\r\n"), (b"USER a\r\nPASS b\r\n", b"USER a\r\nPASS b\r\n")],
)
def test_discard_pending_returns_and_drops_what_follows_stls(
    after: bytes, discarded: bytes
) -> None:
    # RFC 2595 §4 / CVE-2011-0411: bytes pipelined after STLS must never be executed.
    reader = Pop3CommandReader()
    reader.receive_data(b"STLS\r\n" + after)
    assert reader.next_event() == Pop3Command(keyword="STLS", arg="", raw=b"STLS\r\n")
    assert reader.discard_pending() == discarded
    assert reader.next_event() is NEED_DATA
    reader.receive_data(b"NOOP\r\n")
    assert reader.next_event() == Pop3Command(keyword="NOOP", arg="", raw=b"NOOP\r\n")
    assert reader.next_event() is NEED_DATA


def test_discard_pending_drops_a_partial_line_too() -> None:
    reader = Pop3CommandReader()
    reader.receive_data(b"STLS\r\nUSER al")
    assert reader.next_event() == Pop3Command(keyword="STLS", arg="", raw=b"STLS\r\n")
    assert reader.discard_pending() == b"USER al"
    # what arrives next starts a fresh line: "ice" is not glued to "USER al"
    reader.receive_data(b"ice\r\n")
    event = reader.next_event()
    assert not (isinstance(event, Pop3Command) and event.keyword == "USER"), event


# -- chunking does not matter ----------------------------------------------------------------

_LINE = st.one_of(
    st.sampled_from(
        [b"STAT\r\n", b"list 1\r\n", b"TOP 1 2\r\n", b"PASS a  b \r\n", b"QUIT\r\n", b"\r\n"]
    ),
    st.binary(max_size=40).map(lambda b: b + b"\r\n"),
    st.binary(max_size=40),
    st.integers(250, 262).map(lambda n: b"x" * n + b"\r\n"),  # around max_line
)


def _comparable(event: Any) -> Any:
    if isinstance(event, Pop3BadLine) and "long" in event.reason:
        return ("too long", event.reason)
    return event


@FUZZ
@given(lines=st.lists(_LINE, max_size=12), cuts=st.lists(st.integers(0, 1200), max_size=20))
def test_events_do_not_depend_on_how_the_stream_is_cut(lines: list[bytes], cuts: list[int]) -> None:
    data = b"".join(lines)
    whole = feed(data, max_line=255)
    reader = Pop3CommandReader(max_line=255)
    bounds = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    events: list[Any] = []
    for piece in [*(data[a:b] for a, b in itertools.pairwise(bounds)), b""]:
        reader.receive_data(piece)
        while (event := reader.next_event()) is not NEED_DATA:
            events.append(event)
            if isinstance(event, ConnectionClosed):
                break
    # (the raw bytes kept of an over-long line are a matter of where the reader gave up)
    assert [_comparable(e) for e in events] == [_comparable(e) for e in whole]
    # every command's raw bytes are its line, CRLF included; commands are never invented
    for event in whole:
        if isinstance(event, Pop3Command):
            assert event.raw.endswith(b"\r\n")
            assert event.raw in data
            assert event.keyword == event.keyword.upper()


# -- byte_stuff ----------------------------------------------------------------------------

STUFFED = [
    (b"a\r\nb\r\n", b"a\r\nb\r\n.\r\n"),
    (b".a\r\n", b"..a\r\n.\r\n"),
    (b".\r\n", b"..\r\n.\r\n"),
    (b"..\r\n", b"...\r\n.\r\n"),
    (b"a\r\n.\r\nb\r\n", b"a\r\n..\r\nb\r\n.\r\n"),
    (b"a.\r\n .\r\n", b"a.\r\n .\r\n.\r\n"),  # only a dot at the start of a line counts
    (b"a\nb\n", b"a\r\nb\r\n.\r\n"),  # bare LF -> CRLF
    (b"a\n.\n", b"a\r\n..\r\n.\r\n"),
    (b"a\r\n\nb\r\n", b"a\r\n\r\nb\r\n.\r\n"),
    (b"a", b"a\r\n.\r\n"),  # a CRLF is added when missing
    (b"a\r\n.b", b"a\r\n..b\r\n.\r\n"),
    (b".", b"..\r\n.\r\n"),
    (b"\r\n", b"\r\n.\r\n"),
    (b"", b".\r\n"),  # an empty message is an empty body: 0 octets, as LIST says
]


@pytest.mark.parametrize(("message", "wire"), STUFFED)
def test_byte_stuff(message: bytes, wire: bytes) -> None:
    assert byte_stuff(message) == wire


@pytest.mark.parametrize(("message", "wire"), STUFFED)
def test_crlf_size_is_the_octet_count_the_client_receives(message: bytes, wire: bytes) -> None:
    # RFC 1939 §5 LIST / §11: the size is the exact octet count of the message as sent,
    # before byte-stuffing; so it must equal the unstuffed RETR body.
    assert crlf_size(message) == len(unstuff(wire))


_MESSAGE_BYTES = st.lists(
    st.sampled_from([b"a", b"b", b" ", b".", b"\r", b"\n", b"\r\n", b"\x00", b"\xff", b".."]),
    max_size=60,
).map(b"".join)


@FUZZ
@given(message=st.one_of(st.binary(max_size=200), _MESSAGE_BYTES))
@example(message=b".\r\n.")
@example(message=b"\r")
@example(message=b"a\r")
@example(message=b"\n.\n..\n")
def test_unstuffing_byte_stuff_gives_the_message_with_crlf_line_ends(message: bytes) -> None:
    wire = byte_stuff(message)
    assert wire.endswith(b".\r\n")
    assert re.search(rb"(?<!\r)\n", wire) is None, f"bare LF on the wire: {wire!r}"
    body = unstuff(wire)  # the strict reader also checks every "." line is stuffed
    assert body == normalise(message)


@FUZZ
@given(message=st.one_of(st.binary(max_size=200), _MESSAGE_BYTES))
def test_crlf_size_matches_the_unstuffed_body_for_any_message(message: bytes) -> None:
    # what LIST announces is what RETR delivers (issue 5: sizes consistent with RETR)
    assert crlf_size(message) == len(unstuff(byte_stuff(message)))
