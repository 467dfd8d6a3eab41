"""Framing: cut a byte stream into lines and exact-length blocks, within budgets.

Theory of operation
-------------------
All three mail protocols are line-based, and IMAP adds literals: ``{n}CRLF``
followed by exactly *n* octets of anything. Framing is done here, before any
parsing, so each reader only ever parses complete units and the budgets are
enforced in one place.

* Bytes arrive in arbitrary chunks (one byte at a time in the fuzz tests), so the
  search for LF resumes where the previous search stopped: feeding *n* bytes one
  by one costs O(n), not O(n^2). Consumed bytes are deleted from the front of a
  ``bytearray``, which CPython does without copying the tail.
* A line is terminated by LF. In strict mode the LF must be preceded by CR
  (RFC 5321 §2.3.8, RFC 1939 §3, RFC 9051 §2.2); the caller says which rule it
  is enforcing so the error cites the right RFC.
* ``max_line`` bounds the line *content* (terminator excluded). It is checked as
  soon as the unterminated tail is provably too long, so a peer that never sends
  LF cannot make us buffer without limit, and the same stream fed whole or byte
  by byte hits the limit on the same line.
"""

from __future__ import annotations

from conformance.wire._errors import RemoteProtocolError

__all__ = ["ReceiveBuffer"]

_CR = 0x0D
_LF = b"\n"


class ReceiveBuffer:
    """Bytes received from the peer and not yet consumed by a reader.

    Args:
        eol_ref: the RFC rule cited when a line ends in a bare LF in strict mode,
            for example ``"RFC 5321 §2.3.8"``.
        length_ref: the RFC rule cited when a line exceeds ``max_line``, if the
            protocol has one (the budget itself is ours, the RFC limit is smaller).
    """

    def __init__(self, *, eol_ref: str | None = None, length_ref: str | None = None) -> None:
        self._data = bytearray()
        # Bytes of self._data already searched for LF without finding one.
        self._scanned = 0
        # Stream offset of self._data[0], and the number of lines taken so far:
        # both only feed error messages.
        self._offset = 0
        self._lines = 0
        self._eol_ref = eol_ref
        self._length_ref = length_ref
        self.last_eol = b""
        """Terminator of the line :meth:`next_line` returned last: CRLF or LF."""

    def __len__(self) -> int:
        return len(self._data)

    @property
    def pending(self) -> bytes:
        """A copy of the bytes received and not yet consumed."""
        return bytes(self._data)

    @property
    def offset(self) -> int:
        """Stream offset (bytes since the start) of the first unconsumed byte."""
        return self._offset

    @property
    def line_number(self) -> int:
        """1-based number, in the whole stream, of the line that would be returned next."""
        return self._lines + 1

    def feed(self, data: bytes) -> None:
        """Append bytes received from the peer."""
        self._data += data

    def next_line(self, max_line: int, strict: bool) -> bytes | None:
        """Take one line off the front of the buffer.

        Args:
            max_line: the largest line content, in bytes, accepted.
            strict: if true, only CRLF ends a line; a bare LF is an error.

        Returns:
            The line without its terminator (see :attr:`last_eol`), or ``None`` if
            no complete line is buffered yet.

        Raises:
            RemoteProtocolError: the line ends in a bare LF in strict mode, or is
                longer than ``max_line``.
        """
        end = self._data.find(_LF, self._scanned)
        if end < 0:
            self._scanned = len(self._data)
            self._check_unterminated(max_line)
            return None
        content_end = end
        if end > 0 and self._data[end - 1] == _CR:
            content_end = end - 1
        elif strict:
            raise RemoteProtocolError(
                f"line {self.line_number} of the stream ends in a bare LF at byte "
                f"{self._offset + end} (only CRLF ends a line; strict=False accepts bare LF)",
                rfc_ref=self._eol_ref,
            )
        if content_end > max_line:
            self._raise_too_long(max_line, terminated=True)
        line = bytes(self._data[:content_end])
        self.last_eol = bytes(self._data[content_end : end + 1])
        self._consume(end + 1)
        self._lines += 1
        return line

    def take(self, n: int) -> bytes | None:
        """Take exactly ``n`` bytes (an IMAP literal), or ``None`` if fewer are buffered."""
        if len(self._data) < n:
            return None
        block = bytes(self._data[:n])
        self._consume(n)
        return block

    def _consume(self, n: int) -> None:
        del self._data[:n]
        self._offset += n
        self._scanned = max(0, self._scanned - n)

    def _check_unterminated(self, max_line: int) -> None:
        # Content of at most max_line bytes may still be followed by a CR before
        # the LF arrives, so max_line + 1 buffered bytes are legal if the last is CR.
        size = len(self._data)
        if size > max_line + 1 or (size == max_line + 1 and self._data[-1] != _CR):
            self._raise_too_long(max_line, terminated=False)

    def _raise_too_long(self, max_line: int, *, terminated: bool) -> None:
        how = "is longer than" if terminated else "has no line terminator within"
        head = bytes(self._data[:20])
        raise RemoteProtocolError(
            f"line {self.line_number} of the stream (at byte {self._offset}, starting {head!r}) "
            f"{how} max_line={max_line} bytes",
            rfc_ref=self._length_ref,
        )
