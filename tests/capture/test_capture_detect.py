"""Protocol detection: by the server's port, then by the server's greeting; implicit TLS."""

from __future__ import annotations

import pytest

from conformance.capture import (
    Chunk,
    Direction,
    Endpoint,
    TcpStream,
    detect_protocol,
    looks_like_tls,
)


def stream(port: int, *chunks: tuple[Direction, bytes]) -> TcpStream:
    return TcpStream(
        index=0,
        client=Endpoint("192.0.2.1", 50000),
        server=Endpoint("192.0.2.2", port),
        chunks=[Chunk(d, data, i + 1, 0.0, i + 1) for i, (d, data) in enumerate(chunks)],
    )


@pytest.mark.parametrize(
    ("port", "protocol"),
    [
        *[(25, "smtp"), (465, "smtp"), (587, "smtp"), (2525, "smtp")],
        *[(110, "pop3"), (995, "pop3"), (143, "imap"), (993, "imap")],
    ],
)
def test_by_port_before_anything_else(port: int, protocol: str) -> None:
    assert detect_protocol(stream(port, ("server", b"* OK not what the port says\r\n"))) == protocol


@pytest.mark.parametrize(
    ("greeting", "protocol"),
    [
        (b"220 mx.example.test ESMTP\r\n", "smtp"),
        (b"220-mx.example.test first line\r\n220 second\r\n", "smtp"),
        (b"+OK POP3 ready\r\n", "pop3"),
        (b"* OK [CAPABILITY IMAP4rev2] ready\r\n", "imap"),
        (b"* PREAUTH logged in\r\n", "imap"),
        (b"* BYE too many connections\r\n", "imap"),
        (b"* ok lower case status\r\n", "imap"),
        (b"220mx no space\r\n", None),
        (b"2200 not a code\r\n", None),
        (b"HTTP/1.1 200 OK\r\n", None),
        (b"SSH-2.0-OpenSSH_9.6\r\n", None),
    ],
)
def test_by_greeting_on_other_ports(greeting: bytes, protocol: str | None) -> None:
    assert detect_protocol(stream(10025, ("server", greeting))) == protocol


def test_greeting_split_over_chunks_and_after_client_bytes() -> None:
    s = stream(
        10025, ("client", b"* OK from the client\r\n"), ("server", b"2"), ("server", b"20 x\r\n")
    )
    assert detect_protocol(s) == "smtp"


def test_nothing_from_the_server() -> None:
    assert detect_protocol(stream(10025, ("client", b"EHLO x\r\n"))) is None
    assert detect_protocol(stream(10025)) is None


def test_tls_records_from_either_side() -> None:
    assert looks_like_tls(stream(993, ("client", b"\x16\x03\x01\x02\x00\x01")))
    assert looks_like_tls(stream(10993, ("server", b"\x16\x03\x03\x00\x40\x02")))
    assert not looks_like_tls(
        stream(143, ("server", b"* OK ready\r\n"), ("client", b"a STARTTLS\r\n"))
    )
