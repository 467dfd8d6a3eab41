"""Pop3ResponseReader: RFC 1939 §3 status lines and bodies, RFC 2449 §8 codes, RFC 5034 §4."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from wire_feed import FUZZ, feed_all
from wire_feed import drain as drain_all

from conformance.wire import NEED_DATA, ConnectionClosed, LocalProtocolError, RemoteProtocolError
from conformance.wire.pop3 import Pop3Continuation, Pop3Response, Pop3ResponseReader


def drain(reader: Pop3ResponseReader, data: bytes, *expect: bool, eof: bool = True) -> list[Any]:
    """Queue ``expect`` shapes, then :func:`wire_feed.drain`."""
    for multiline in expect:
        reader.expect(multiline=multiline)
    return drain_all(reader, data, eof=eof)


def outcome(
    data: bytes, expect: list[bool], chunk: int | None, **options: Any
) -> tuple[list[Any], str | None]:
    """Events (and the error, if any) from feeding ``data`` whole or ``chunk`` bytes at a time."""
    reader = Pop3ResponseReader(**options)
    for multiline in expect:
        reader.expect(multiline=multiline)
    return feed_all(reader, data, chunk)


# -- good responses -------------------------------------------------------------

GOOD_SINGLE = [
    (b"+OK\r\n", True, None, ""),
    (b"+OK \r\n", True, None, ""),
    (
        b"+OK POP3 server ready <1896.697170952@dbc.mtview.ca.us>\r\n",
        True,
        None,
        "POP3 server ready <1896.697170952@dbc.mtview.ca.us>",
    ),
    (b"+OK  two spaces\r\n", True, None, " two spaces"),
    (b"-ERR\r\n", False, None, ""),
    (b"-ERR no such message\r\n", False, None, "no such message"),
    (
        b"-ERR [IN-USE] Do you have another POP session running?\r\n",
        False,
        "IN-USE",
        "Do you have another POP session running?",
    ),
    (b"-ERR [SYS/TEMP] try later\r\n", False, "SYS/TEMP", "try later"),
    (b"-ERR [auth]\r\n", False, "AUTH", ""),
    (b"+OK [LOGIN-DELAY/900]text\r\n", True, "LOGIN-DELAY/900", "text"),
    (b"+OK caf\xc3\xa9 \xff\r\n", True, None, "caf\u00e9 \udcff"),
]


@pytest.mark.parametrize(("data", "ok", "code", "text"), GOOD_SINGLE)
def test_single_line_response(data: bytes, ok: bool, code: str | None, text: str) -> None:
    response, closed = drain(Pop3ResponseReader(), data, False)
    assert response == Pop3Response(ok=ok, code=code, text=text, lines=None, raw=data)
    assert closed == ConnectionClosed()


GOOD_MULTI = [
    (b"+OK 2 messages\r\n1 120\r\n2 200\r\n.\r\n", [b"1 120", b"2 200"]),
    (b"+OK\r\n.\r\n", []),
    (b"+OK\r\n\r\n\r\n.\r\n", [b"", b""]),
    (b"+OK\r\n..\r\n...\r\n..hidden\r\n.\r\n", [b".", b"..", b".hidden"]),
    (b"+OK\r\nbinary \x00\x01\xff\r\n.\r\n", [b"binary \x00\x01\xff"]),
    (b"+OK\r\na.\r\n .\r\n.\r\n", [b"a.", b" ."]),
]


@pytest.mark.parametrize(("data", "lines"), GOOD_MULTI)
def test_multiline_response(data: bytes, lines: list[bytes]) -> None:
    response = drain(Pop3ResponseReader(), data, True)[0]
    assert response == Pop3Response(
        ok=True, code=None, text=response.text, lines=tuple(lines), raw=data
    )


def test_err_is_single_line_even_when_multiline_expected() -> None:
    events = drain(Pop3ResponseReader(), b"-ERR no such message\r\n+OK\r\nx\r\n.\r\n", True, True)
    assert events[0] == Pop3Response(
        ok=False, text="no such message", raw=b"-ERR no such message\r\n"
    )
    assert events[1].lines == (b"x",)


def test_pipelined_responses_follow_expectations_in_order() -> None:
    data = (
        b"+OK 2 320\r\n"  # STAT
        b"+OK scan listing\r\n1 120\r\n2 200\r\n.\r\n"  # LIST
        b"-ERR [SYS/PERM] no\r\n"  # RETR 3
        b"+OK\r\n1 whqtswO00WBw418f9t5JxYwZ\r\n.\r\n"  # UIDL
    )
    events = drain(Pop3ResponseReader(), data, False, True, True, True)
    assert [(e.ok, e.code, e.lines) for e in events[:-1]] == [
        (True, None, None),
        (True, None, (b"1 120", b"2 200")),
        (False, "SYS/PERM", None),
        (True, None, (b"1 whqtswO00WBw418f9t5JxYwZ",)),
    ]
    assert b"".join(e.raw for e in events[:-1]) == data


def test_no_expectation_means_single_line() -> None:
    events = drain(Pop3ResponseReader(), b"+OK\r\n+OK\r\n")
    assert [e.lines for e in events[:-1]] == [None, None]


def test_continuation_does_not_consume_expectation() -> None:
    reader = Pop3ResponseReader()
    data = b"+ \r\n+ dGVzdA==\r\n+\r\n+OK\r\nbody\r\n.\r\n"
    events = drain(reader, data, True)
    assert events[:3] == [
        Pop3Continuation(text="", raw=b"+ \r\n"),
        Pop3Continuation(text="dGVzdA==", raw=b"+ dGVzdA==\r\n"),
        Pop3Continuation(text="", raw=b"+\r\n"),
    ]
    assert events[3].lines == (b"body",)


def test_pending_after_stls_reply() -> None:
    reader = Pop3ResponseReader()
    reader.expect(multiline=False)
    reader.receive_data(b"+OK Begin TLS negotiation\r\n+OK injected\r\n")
    assert isinstance(reader.next_event(), Pop3Response)
    assert reader.pending == b"+OK injected\r\n"


def test_pending_includes_a_partial_body() -> None:
    reader = Pop3ResponseReader()
    assert drain(reader, b"+OK\r\nline\r\nhalf", True, eof=False) == [NEED_DATA]
    assert reader.pending == b"+OK\r\nline\r\nhalf"


def test_body_arrives_byte_by_byte() -> None:
    reader = Pop3ResponseReader()
    reader.expect(multiline=True)
    data = b"+OK\r\n..a\r\n.\r\n"
    for byte in data[:-1]:
        reader.receive_data(bytes([byte]))
        assert reader.next_event() is NEED_DATA
    reader.receive_data(data[-1:])
    assert reader.next_event() == Pop3Response(ok=True, lines=(b".a",), raw=data)


def test_bare_lf_and_unstuffed_dot_accepted_when_not_strict() -> None:
    data = b"+OK\n.hidden\r\n..x\n.\n"
    response = drain(Pop3ResponseReader(strict=False), data, True)[0]
    assert response.lines == (b"hidden", b".x")
    assert response.raw == data


def test_eof_is_connection_closed_every_time() -> None:
    reader = Pop3ResponseReader()
    assert drain(reader, b"+OK bye\r\n")[-1] == ConnectionClosed()
    assert reader.next_event() == ConnectionClosed()


def test_err_with_body_cannot_be_constructed() -> None:
    with pytest.raises(LocalProtocolError):
        Pop3Response(ok=False, lines=())


# -- malformed responses --------------------------------------------------------

BAD = [
    (b"+ok\r\n", False, "case-sensitive: +OK and -ERR in upper case", "RFC 1939 §3"),
    (b"-err nope\r\n", False, "case-sensitive", "RFC 1939 §3"),
    (b"OK\r\n", False, "not +OK, -ERR or a '+ ' challenge", "RFC 1939 §3"),
    (b"+Ok\r\n", False, "case-sensitive", "RFC 1939 §3"),
    (b"\r\n", False, "starts with b''", "RFC 1939 §3"),
    (b"+OKAY\r\n", False, "status +OK is followed by b'A' instead of SP", "RFC 1939 §3"),
    (b"-ERRor\r\n", False, "-ERR is followed by b'o'", "RFC 1939 §3"),
    (b"+OK\n", False, "bare LF", "RFC 1939 §3"),
    (b"-ERR [IN-USE busy\r\n", False, "opened with '[' but never closed", "RFC 2449 §8"),
    (
        b"-ERR [IN USE] busy\r\n",
        False,
        "response code b'[IN USE]' is not resp-level",
        "RFC 2449 §8",
    ),
    (b"-ERR []\r\n", False, "is not resp-level", "RFC 2449 §8"),
    (b"-ERR [SYS//TEMP]\r\n", False, "is not resp-level", "RFC 2449 §8"),
    (b"+OK\r\n1 120\r\n", True, "no terminating '.' line", "RFC 1939 §3"),
    (b"+OK\r\n1 120\r\n.", True, "no terminating '.' line", "RFC 1939 §3"),
    (b"+OK\r\n.hidden\r\n.\r\n", True, "must be byte-stuffed to '..'", "RFC 1939 §3"),
    (b"+OK\r\nx\n.\r\n", True, "bare LF", "RFC 1939 §3"),
    (b"+OK", False, "connection closed in the middle of a reply", "RFC 1939 §3"),
]


@pytest.mark.parametrize(("data", "multiline", "message", "rfc_ref"), BAD)
def test_malformed_response(data: bytes, multiline: bool, message: str, rfc_ref: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        drain(Pop3ResponseReader(), data, multiline)
    assert message in info.value.message
    assert info.value.rfc_ref == rfc_ref
    assert "\n" not in str(info.value)


def test_max_body() -> None:
    with pytest.raises(RemoteProtocolError, match="max_body=8"):
        drain(Pop3ResponseReader(max_body=8), b"+OK\r\n12345\r\n6789\r\n.\r\n", True)


def test_max_line() -> None:
    reader = Pop3ResponseReader(max_line=8)
    reader.expect(multiline=True)
    reader.receive_data(b"+OK\r\n" + b"x" * 10)
    with pytest.raises(RemoteProtocolError, match="max_line=8"):
        reader.next_event()


# -- properties -----------------------------------------------------------------

# Text that does not start with "[" (that would be an RFC 2449 response code).
TEXT = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20).map(
    lambda text: text.lstrip("[")
)
BODY_LINE = st.binary(max_size=12).filter(lambda line: b"\n" not in line and b"\r" not in line)


Exchange = tuple[list[bool], bytes, list[tuple[bool, tuple[bytes, ...] | None]]]


@st.composite
def exchanges(draw: st.DrawFn) -> Exchange:
    """Expectations, the server's bytes, and (ok, body) of each response."""
    expect: list[bool] = []
    data = b""
    shapes: list[tuple[bool, tuple[bytes, ...] | None]] = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["ok", "err", "multi", "challenge"]))
        text = draw(TEXT).encode()
        if kind == "challenge":
            data += b"+ " + text.replace(b" ", b"") + b"\r\n"
            continue
        multiline = kind == "multi" or draw(st.booleans())
        expect.append(multiline)
        if kind == "err":
            data += b"-ERR " + text + b"\r\n"
            shapes.append((False, None))
        elif multiline:
            body = draw(st.lists(BODY_LINE, max_size=4))
            stuffed = [b"." + line if line.startswith(b".") else line for line in body]
            data += (
                b"+OK " + text + b"\r\n" + b"".join(line + b"\r\n" for line in stuffed) + b".\r\n"
            )
            shapes.append((True, tuple(body)))
        else:
            data += b"+OK " + text + b"\r\n"
            shapes.append((True, None))
    return expect, data, shapes


@FUZZ
@given(exchanges(), st.integers(min_value=1, max_value=9))
def test_whole_equals_chunked_on_valid_streams(exchange: Exchange, chunk: int) -> None:
    expect, data, shapes = exchange
    events, error = outcome(data, expect, None)
    assert error is None
    responses = [e for e in events if isinstance(e, Pop3Response)]
    assert [(e.ok, e.lines) for e in responses] == shapes
    assert outcome(data, expect, 1) == (events, None)
    assert outcome(data, expect, chunk) == (events, None)


@FUZZ
@given(st.binary(max_size=300), st.lists(st.booleans(), max_size=4), st.booleans())
def test_arbitrary_bytes_only_events_or_remote_errors(
    data: bytes, expect: list[bool], strict: bool
) -> None:
    events, error = outcome(data, expect, None, strict=strict)
    assert all(isinstance(e, Pop3Response | Pop3Continuation | ConnectionClosed) for e in events)
    assert outcome(data, expect, 1, strict=strict) == (events, error)


@FUZZ
@given(exchanges(), st.data())
def test_mutated_streams_only_events_or_remote_errors(
    exchange: Exchange, data: st.DataObject
) -> None:
    expect, stream, _ = exchange
    mutated = bytearray(stream)
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(mutated)))
        mutated[at:at] = data.draw(st.sampled_from([b"\n", b"\r", b".", b"[", b"]", b"+", b"-ERR"]))
    events, error = outcome(bytes(mutated), expect, None)
    assert all(isinstance(e, Pop3Response | Pop3Continuation | ConnectionClosed) for e in events)
    assert outcome(bytes(mutated), expect, 1) == (events, error)
