"""Line ends of stored messages: bare LF made CRLF, and the size that would have.

Mail is CRLF on the wire (RFC 5322 §2.1), but a Maildir may hold files with
bare LFs (procmail, other servers). POP3 sizes (RFC 1939 §11), IMAP
RFC822.SIZE (RFC 9051 §2.3.4) and the bytes both protocols serve count the
CRLF form, so the server sides share these two functions.
"""

from __future__ import annotations

import re

__all__ = ["crlf_length", "to_crlf"]

_BARE_LF = re.compile(rb"(?<!\r)\n")


def to_crlf(data: bytes) -> bytes:
    """``data`` with every LF not preceded by CR made CRLF (bare CRs are left alone)."""
    return _BARE_LF.sub(b"\r\n", data) if b"\n" in data else data


def crlf_length(data: bytes) -> int:
    """``len(to_crlf(data))``, without building it."""
    return len(data) + data.count(b"\n") - data.count(b"\r\n")
