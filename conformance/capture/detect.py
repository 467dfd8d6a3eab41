"""Which mail protocol a stream speaks: by the server's port, else by its greeting.

Ports 465, 993 and 995 are implicit TLS: they are reported as the protocol the
port is for, and :func:`looks_like_tls` says whether the bytes are TLS records
(the replay side skips those; it cannot read them).
"""

from __future__ import annotations

from conformance.capture.model import Direction, TcpStream

__all__ = ["IMPLICIT_TLS_PORTS", "SERVER_PORTS", "detect_protocol", "looks_like_tls"]

#: Well-known server ports of the mail protocols (RFC 5321 §4.5.4 and RFC 6409
#: for 25 and 587, RFC 8314 for 465, 993 and 995; 2525 by common use).
SERVER_PORTS: dict[int, str] = {
    25: "smtp",
    465: "smtp",
    587: "smtp",
    2525: "smtp",
    110: "pop3",
    995: "pop3",
    143: "imap",
    993: "imap",
}

#: Ports where TLS starts with the connection (RFC 8314 §3.3).
IMPLICIT_TLS_PORTS = frozenset({465, 993, 995})

_PEEK = 16


def _first_bytes(stream: TcpStream, direction: Direction) -> bytes:
    """Up to 16 of the first bytes one side sent (a greeting may span segments)."""
    parts: list[bytes] = []
    size = 0
    for chunk in stream.chunks:
        if chunk.direction == direction:
            parts.append(chunk.data[:_PEEK])
            size += len(parts[-1])
            if size >= _PEEK:
                break
    return b"".join(parts)[:_PEEK]


def detect_protocol(stream: TcpStream) -> str | None:
    """``"smtp"``, ``"pop3"`` or ``"imap"``, or ``None`` when neither port nor greeting tells.

    The server's port decides first. Failing that, the server's first bytes:
    ``220`` and a space or hyphen is an SMTP greeting (RFC 5321 §4.2), ``+OK`` a
    POP3 one (RFC 1939 §4), and ``* OK``, ``* PREAUTH`` or ``* BYE`` an IMAP
    one (RFC 9051 §7.1).
    """
    by_port = SERVER_PORTS.get(stream.server.port)
    if by_port is not None:
        return by_port
    first = _first_bytes(stream, "server").upper()
    if first[:3] == b"220" and first[3:4] in (b" ", b"-"):
        return "smtp"
    if first.startswith(b"+OK"):
        return "pop3"
    if first.startswith((b"* OK", b"* PREAUTH", b"* BYE")):
        return "imap"
    return None


def looks_like_tls(stream: TcpStream) -> bool:
    """Either side's first bytes are a TLS handshake record (type 22, version 3.x).

    That is implicit TLS: STARTTLS streams begin in clear text and give False.
    """
    return any(_first_bytes(stream, d)[:2] == b"\x16\x03" for d in ("client", "server"))
