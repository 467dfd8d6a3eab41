"""Shared pieces of conformance.wire: ReceiveBuffer, NEED_DATA, ConnectionClosed, exports.

The no-I/O layering rule is enforced by tests/qa/test_layering.py.
"""

from __future__ import annotations

import copy
import dataclasses
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import conformance.wire
from conformance.wire import (
    NEED_DATA,
    ConnectionClosed,
    ImapResponseReader,
    LocalProtocolError,
    NeedData,
    Pop3ResponseReader,
    ReceiveBuffer,
    RemoteProtocolError,
    SmtpReplyReader,
)


def test_public_names_are_exported() -> None:
    for name in conformance.wire.__all__:
        assert getattr(conformance.wire, name) is not None


def test_need_data_is_a_singleton_sentinel() -> None:
    assert type(NEED_DATA) is NeedData
    assert repr(NEED_DATA) == "NEED_DATA"
    assert copy.deepcopy(NEED_DATA) is NEED_DATA
    assert pickle.loads(pickle.dumps(NEED_DATA)) is NEED_DATA


def test_connection_closed_is_a_frozen_event() -> None:
    assert ConnectionClosed() == ConnectionClosed()
    with pytest.raises(dataclasses.FrozenInstanceError):
        ConnectionClosed().x = 1  # type: ignore[attr-defined]


# -- ReceiveBuffer ------------------------------------------------------------


def test_lines_and_terminators() -> None:
    buffer = ReceiveBuffer()
    buffer.feed(b"one\r\ntwo\r")
    assert buffer.next_line(100, True) == b"one"
    assert buffer.last_eol == b"\r\n"
    assert buffer.next_line(100, True) is None
    assert (len(buffer), buffer.pending, buffer.offset, buffer.line_number) == (4, b"two\r", 5, 2)
    buffer.feed(b"\n")
    assert buffer.next_line(100, True) == b"two"
    assert buffer.next_line(100, True) is None
    assert (len(buffer), buffer.offset) == (0, 10)


def test_bare_lf_strict_and_not() -> None:
    strict = ReceiveBuffer(eol_ref="RFC 5321 §2.3.8")
    strict.feed(b"ok\r\nbad\n")
    assert strict.next_line(100, True) == b"ok"
    with pytest.raises(RemoteProtocolError) as info:
        strict.next_line(100, True)
    assert info.value.message.startswith("line 2 of the stream ends in a bare LF at byte 7")
    assert info.value.rfc_ref == "RFC 5321 §2.3.8"

    lenient = ReceiveBuffer()
    lenient.feed(b"bad\nx\r\r\n")
    assert lenient.next_line(100, False) == b"bad"
    assert lenient.last_eol == b"\n"
    assert lenient.next_line(100, False) == b"x\r"


def test_take_exact_blocks() -> None:
    buffer = ReceiveBuffer()
    buffer.feed(b"{5}\r\nab")
    assert buffer.next_line(100, True) == b"{5}"
    assert buffer.take(5) is None
    buffer.feed(b"\r\n\x00)\r\n")
    assert buffer.take(5) == b"ab\r\n\x00"
    assert buffer.take(0) == b""
    assert buffer.next_line(100, True) == b")"


def test_search_resumes_correctly_after_take() -> None:
    buffer = ReceiveBuffer()
    buffer.feed(b"abc")
    assert buffer.next_line(100, True) is None
    assert buffer.take(2) == b"ab"
    buffer.feed(b"\r\nz\r\n")
    assert buffer.next_line(100, True) == b"c"
    assert buffer.next_line(100, True) == b"z"


def test_max_line_boundaries() -> None:
    buffer = ReceiveBuffer(length_ref="RFC 5321 §4.5.3.1.5")
    buffer.feed(b"12345\r")  # 5 bytes of content, CR may still be followed by LF
    assert buffer.next_line(5, True) is None
    buffer.feed(b"\n")
    assert buffer.next_line(5, True) == b"12345"
    buffer.feed(b"123456")
    with pytest.raises(RemoteProtocolError, match="no line terminator within max_line=5") as info:
        buffer.next_line(5, True)
    assert info.value.rfc_ref == "RFC 5321 §4.5.3.1.5"


def test_over_long_terminated_line() -> None:
    buffer = ReceiveBuffer()
    buffer.feed(b"1234567\r\n")
    with pytest.raises(RemoteProtocolError, match="is longer than max_line=5"):
        buffer.next_line(5, True)


@settings(max_examples=100, deadline=None, database=None)
@given(
    st.lists(st.binary(max_size=8).map(lambda b: b.replace(b"\n", b"")), max_size=6),
    st.integers(1, 5),
)
def test_chunking_does_not_change_lines(lines: list[bytes], chunk: int) -> None:
    data = b"".join(line.replace(b"\r", b"") + b"\r\n" for line in lines)
    buffer = ReceiveBuffer()
    found = []
    for start in range(0, len(data), chunk):
        buffer.feed(data[start : start + chunk])
        while (line := buffer.next_line(100, True)) is not None:
            found.append(line)
    assert found == [line.replace(b"\r", b"") for line in lines]
    assert len(buffer) == 0


# -- the contract every reader shares (ReaderBase) --------------------------------

READERS = [
    (SmtpReplyReader, b"xyz\r\n250 ok\r\n"),
    (Pop3ResponseReader, b"+ok\r\n+OK\r\n"),
    (ImapResponseReader, b"* 0 FETCH (UID 1)\r\n* OK\r\n"),
]


@pytest.mark.parametrize(("reader_type", "bad"), READERS, ids=["smtp", "pop3", "imap"])
def test_error_is_sticky(reader_type: type, bad: bytes) -> None:
    reader = reader_type()
    reader.receive_data(bad)
    with pytest.raises(RemoteProtocolError) as first:
        reader.next_event()
    with pytest.raises(RemoteProtocolError) as second:
        reader.next_event()
    assert second.value is first.value


@pytest.mark.parametrize(("reader_type", "bad"), READERS, ids=["smtp", "pop3", "imap"])
def test_data_after_eof_is_a_local_error(reader_type: type, bad: bytes) -> None:
    reader = reader_type()
    reader.receive_data(b"")
    with pytest.raises(LocalProtocolError, match="after EOF"):
        reader.receive_data(bad)
