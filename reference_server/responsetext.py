"""Response text the server sends stays 7-bit ASCII, in every protocol.

SMTP reply text (RFC 5321 §4.2 textstring), POP3 responses (RFC 1939 gives
them no charset) and IMAP resp-text (RFC 3501 §9 TEXT-CHAR) are ASCII. Our
texts cite RFC sections, so their "§" is spelt "section".
"""

from __future__ import annotations

__all__ = ["ascii_bytes", "ascii_text"]

_SECTION = "§".encode()


def ascii_text(text: str) -> bytes:
    """``text`` as ASCII: "§" spelt "section", any other non-ASCII character "?"."""
    return text.replace("§", "section ").encode("ascii", "replace")


def ascii_bytes(raw: bytes) -> bytes:
    """Encoded text (an SMTP reply built elsewhere) with its "§" spelt "section"."""
    return raw.replace(_SECTION, b"section ") if _SECTION in raw else raw
