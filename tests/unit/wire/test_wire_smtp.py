"""SmtpReplyReader and parse_ehlo: RFC 5321 §4.2 replies, good and malformed."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from wire_feed import FUZZ, drain, feed_all

from conformance.wire import (
    NEED_DATA,
    ConnectionClosed,
    LocalProtocolError,
    RemoteProtocolError,
)
from conformance.wire.smtp import Reply, SmtpReplyReader, parse_ehlo


def outcome(data: bytes, chunk: int | None, **options: Any) -> tuple[list[Any], str | None]:
    """Events (and the error, if any) from feeding ``data`` whole or ``chunk`` bytes at a time."""
    return feed_all(SmtpReplyReader(**options), data, chunk)


# -- good replies ---------------------------------------------------------------

GOOD = [
    (b"220 mx.example ESMTP\r\n", 220, ("mx.example ESMTP",), None),
    (b"250 2.1.0 Sender ok\r\n", 250, ("2.1.0 Sender ok",), "2.1.0"),
    (b"550 5.7.1\r\n", 550, ("5.7.1",), "5.7.1"),
    (b"250\r\n", 250, ("",), None),
    (b"354 \r\n", 354, ("",), None),
    (b"250-\r\n250 done\r\n", 250, ("", "done"), None),
    (b"250-a\r\n250-b\r\n250 c\r\n", 250, ("a", "b", "c"), None),
    (b"421 4.4.2 Timeout\tnow\r\n", 421, ("4.4.2 Timeout\tnow",), "4.4.2"),
    (b"250 2.1.0x\r\n", 250, ("2.1.0x",), None),
    (b"250 2.1234.0 x\r\n", 250, ("2.1234.0 x",), None),
    (b"250 3.1.0 x\r\n", 250, ("3.1.0 x",), None),
    (b"250 caf\xc3\xa9\r\n", 250, ("caf\u00e9",), None),
    (b"250 \xff\r\n", 250, ("\udcff",), None),
    (b"559 x\r\n", 559, ("x",), None),
]


@pytest.mark.parametrize(("data", "code", "lines", "enhanced"), GOOD)
def test_good_reply(data: bytes, code: int, lines: tuple[str, ...], enhanced: str | None) -> None:
    reply, closed = drain(SmtpReplyReader(), data)
    assert reply == Reply(code=code, lines=lines, enhanced=enhanced, raw=data)
    assert closed == ConnectionClosed()


def test_reply_properties() -> None:
    single, multi = drain(SmtpReplyReader(), b"250 ok\r\n250-a\r\n250 b\r\n")[:2]
    assert isinstance(single, Reply)
    assert isinstance(multi, Reply)
    assert (single.text, single.is_multiline) == ("ok", False)
    assert (multi.text, multi.is_multiline) == ("a\nb", True)


def test_pipelined_replies_in_one_chunk() -> None:
    data = b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n550-5.1.1 no\r\n550 5.1.1 such user\r\n354 go\r\n"
    events = drain(SmtpReplyReader(), data)
    assert [(e.code, e.lines) for e in events[:-1]] == [
        (250, ("2.1.0 ok",)),
        (250, ("2.1.5 ok",)),
        (550, ("5.1.1 no", "5.1.1 such user")),
        (354, ("go",)),
    ]
    assert b"".join(e.raw for e in events[:-1]) == data


def test_need_data_until_final_line() -> None:
    reader = SmtpReplyReader()
    assert drain(reader, b"250-a\r\n250-b", eof=False) == [NEED_DATA]
    assert reader.pending == b"250-a\r\n250-b"
    reader.receive_data(b"\r\n250 c\r")
    assert reader.next_event() is NEED_DATA
    reader.receive_data(b"\n")
    reply = reader.next_event()
    assert isinstance(reply, Reply)
    assert reply.lines == ("a", "b", "c")
    assert reader.pending == b""


def test_pending_shows_bytes_sent_after_starttls_reply() -> None:
    reader = SmtpReplyReader()
    reader.receive_data(b"220 2.0.0 Ready to start TLS\r\n250 injected\r\n")
    assert isinstance(reader.next_event(), Reply)
    assert reader.pending == b"250 injected\r\n"


def test_eof_is_connection_closed_every_time() -> None:
    reader = SmtpReplyReader()
    assert drain(reader, b"221 bye\r\n")[-1] == ConnectionClosed()
    assert reader.next_event() == ConnectionClosed()


def test_bare_lf_accepted_when_not_strict() -> None:
    reply = drain(SmtpReplyReader(strict=False), b"250-a\n250 b\r\n")[0]
    assert isinstance(reply, Reply)
    assert reply.lines == ("a", "b")
    assert reply.raw == b"250-a\n250 b\r\n"


def test_control_characters_accepted_when_not_strict() -> None:
    reply = drain(SmtpReplyReader(strict=False), b"250 a\x00b\rc\r\n")[0]
    assert isinstance(reply, Reply)
    assert reply.lines == ("a\x00b\rc",)


# -- malformed replies ----------------------------------------------------------

BAD = [
    (b"250 a\n", "bare LF", "RFC 5321 §2.3.8"),
    (b"hello\r\n", "does not start with a three-digit reply code", "RFC 5321 §4.2"),
    (b"25\r\n", "three-digit reply code", "RFC 5321 §4.2"),
    (b"2x0 ok\r\n", "three-digit reply code", "RFC 5321 §4.2"),
    (b"\r\n", "reply line 1 does not start", "RFC 5321 §4.2"),
    (b"150 ok\r\n", "code 150, outside Reply-code", "RFC 5321 §4.2"),
    (b"600 ok\r\n", "code 600", "RFC 5321 §4.2"),
    (b"260 ok\r\n", "second 0-5", "RFC 5321 §4.2"),
    (b"599 ok\r\n", "code 599", "RFC 5321 §4.2"),
    (b"2500 ok\r\n", "found b'0' at byte 4", "RFC 5321 §4.2"),
    (b"250_ok\r\n", "expected '-', SP or end of line", "RFC 5321 §4.2"),
    (
        b"250-a\r\n251 b\r\n",
        "reply line 2 has code 251 but line 1 has 250 "
        "(all lines of a multiline reply carry the same code)",
        "RFC 5321 §4.2",
    ),
    (b"250-a\r\n250-b\r\nxyz\r\n", "reply line 3 does not start", "RFC 5321 §4.2"),
    (b"250 a\x00b\r\n", "control character b'\\x00' at byte 6", "RFC 5321 §4.2"),
    (b"250 a\rb\r\n", "control character b'\\r'", "RFC 5321 §4.2"),
    (b"250-a\r\n", "connection closed in the middle of a reply", "RFC 5321 §4.2"),
    (b"250 ok", "connection closed in the middle of a reply", "RFC 5321 §4.2"),
]


@pytest.mark.parametrize(("data", "message", "rfc_ref"), BAD)
def test_malformed_reply(data: bytes, message: str, rfc_ref: str) -> None:
    reader = SmtpReplyReader()
    with pytest.raises(RemoteProtocolError) as info:
        drain(reader, data)
    assert message in info.value.message
    assert info.value.rfc_ref == rfc_ref
    assert "\n" not in str(info.value)


def test_too_many_lines() -> None:
    reader = SmtpReplyReader(max_lines=3)
    with pytest.raises(RemoteProtocolError, match="more than max_lines=3 lines"):
        drain(reader, b"250-a\r\n" * 3 + b"250 b\r\n")


def test_over_long_line_fails_before_its_terminator_arrives() -> None:
    reader = SmtpReplyReader(max_line=10)
    reader.receive_data(b"250 " + b"x" * 6)
    assert reader.next_event() is NEED_DATA
    reader.receive_data(b"\r")
    assert reader.next_event() is NEED_DATA
    reader.receive_data(b"x")
    with pytest.raises(RemoteProtocolError, match="max_line=10") as info:
        reader.next_event()
    assert info.value.rfc_ref == "RFC 5321 §4.5.3.1.5"


def test_line_of_exactly_max_line_is_accepted() -> None:
    reply = drain(SmtpReplyReader(max_line=10), b"250 " + b"x" * 6 + b"\r\n")[0]
    assert isinstance(reply, Reply)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"code": 600, "lines": ("x",)},
        {"code": 260, "lines": ("x",)},
        {"code": 250, "lines": ()},
        {"code": 250, "lines": ("x",), "enhanced": "2.1"},
    ],
)
def test_reply_validates_at_construction(kwargs: dict[str, Any]) -> None:
    with pytest.raises(LocalProtocolError):
        Reply(**kwargs)


# -- EHLO -----------------------------------------------------------------------


def test_parse_ehlo() -> None:
    reply = Reply(
        code=250,
        lines=(
            "mx.example greets you",
            "size 35882577",
            "PIPELINING",
            "AUTH PLAIN LOGIN",
            "8BITMIME",
        ),
    )
    assert parse_ehlo(reply) == {
        "SIZE": ("35882577",),
        "PIPELINING": (),
        "AUTH": ("PLAIN", "LOGIN"),
        "8BITMIME": (),
    }


def test_parse_ehlo_single_line_has_no_keywords() -> None:
    assert parse_ehlo(Reply(code=250, lines=("mx.example",))) == {}


def test_parse_ehlo_merges_repeated_keywords() -> None:
    reply = Reply(code=250, lines=("mx", "AUTH PLAIN", "AUTH LOGIN PLAIN"))
    assert parse_ehlo(reply) == {"AUTH": ("PLAIN", "LOGIN")}


def test_parse_ehlo_reads_legacy_auth_equals_form() -> None:
    reply = Reply(code=250, lines=("mx", "AUTH PLAIN LOGIN", "AUTH=PLAIN LOGIN XOAUTH2"))
    assert parse_ehlo(reply, strict=False) == {"AUTH": ("PLAIN", "LOGIN", "XOAUTH2")}


@pytest.mark.parametrize("line", ["AUTH=PLAIN LOGIN", "-X", "", "SIZE  10", "X_Y"])
def test_parse_ehlo_strict_rejects_bad_ehlo_line(line: str) -> None:
    reply = Reply(code=250, lines=("mx", "SIZE 10", line))
    with pytest.raises(RemoteProtocolError, match="EHLO reply line 3") as info:
        parse_ehlo(reply)
    assert info.value.rfc_ref == "RFC 5321 §4.1.1.1"


def test_parse_ehlo_lenient_keeps_odd_lines() -> None:
    reply = Reply(code=250, lines=("mx", "", "SIZE  10", "X_Y z", "auth="))
    assert parse_ehlo(reply, strict=False) == {"SIZE": ("10",), "X_Y": ("z",), "AUTH": ()}


def test_parse_ehlo_needs_a_250() -> None:
    with pytest.raises(LocalProtocolError, match="got a 550 reply"):
        parse_ehlo(Reply(code=550, lines=("no",)))


# -- properties -----------------------------------------------------------------

TEXT = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E) | st.just("\t"))
REPLY = st.tuples(
    st.sampled_from("2345"), st.sampled_from("012345"), st.sampled_from("0123456789")
).flatmap(
    lambda digits: st.tuples(st.just(int("".join(digits))), st.lists(TEXT, min_size=1, max_size=4))
)


def encode(code: int, lines: list[str]) -> bytes:
    out = b""
    for index, line in enumerate(lines):
        separator = b" " if index == len(lines) - 1 else b"-"
        out += b"%d" % code + (separator + line.encode() if line else separator) + b"\r\n"
    return out


@FUZZ
@given(st.lists(REPLY, min_size=1, max_size=4), st.integers(min_value=1, max_value=7))
def test_whole_equals_chunked_on_valid_streams(
    replies: list[tuple[int, list[str]]], chunk: int
) -> None:
    data = b"".join(encode(code, lines) for code, lines in replies)
    events, error = outcome(data, None)
    assert error is None
    assert [(e.code, list(e.lines)) for e in events[:-1]] == [
        (code, lines) for code, lines in replies
    ]
    assert outcome(data, 1) == (events, None)
    assert outcome(data, chunk) == (events, None)


@FUZZ
@given(st.binary(max_size=300), st.booleans())
def test_arbitrary_bytes_only_events_or_remote_errors(data: bytes, strict: bool) -> None:
    events, error = outcome(data, None, strict=strict)
    assert all(isinstance(e, Reply | ConnectionClosed) for e in events)
    assert outcome(data, 1, strict=strict) == (events, error)


@FUZZ
@given(st.lists(REPLY, min_size=1, max_size=3), st.data())
def test_mutated_streams_only_events_or_remote_errors(
    replies: list[tuple[int, list[str]]], data: st.DataObject
) -> None:
    stream = bytearray(b"".join(encode(code, lines) for code, lines in replies))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(stream)))
        stream[at:at] = data.draw(
            st.sampled_from([b"\n", b"\r", b"-", b" ", b"\x00", b"9", b"250-"])
        )
    events, error = outcome(bytes(stream), None)
    assert all(isinstance(e, Reply | ConnectionClosed) for e in events)
    assert outcome(bytes(stream), 1) == (events, error)
