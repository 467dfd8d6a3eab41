"""What the server-side readers of SMTP and POP3 share: the client's bytes, cut into lines.

Only CRLF ends a line (RFC 5321 §2.3.8, RFC 1939 §3): ``NOOP<LF>QUIT<CRLF>`` is one
line holding a bare LF, which the reader refuses whole, so nothing after a bare LF
runs as a command of its own (a peer that did split there would see another
command stream than we do).

A line longer than the reader's budget is never buffered whole: once the
unterminated tail is over the budget it is dropped (but for a possible CR)
and the rest of the line is drained up to its CRLF, so a client that never
sends LF cannot make the server hold more than the budget. The reader then
reports that line as too long and goes on with the next one.
"""

from __future__ import annotations

from conformance.wire._errors import LocalProtocolError

__all__ = ["ClientLineBuffer"]


class ClientLineBuffer:
    """Bytes from the client not yet turned into events, and the line cutter over them.

    Args:
        max_line: longest line taken whole, CRLF included.
    """

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self._buf = bytearray()
        self._scan = 0  # where to resume searching for LF
        self._draining = False  # an over-long line is being skipped
        self._eof = False

    @property
    def pending(self) -> bytes:
        """Bytes received and not yet turned into an event."""
        return bytes(self._buf)

    def discard_pending(self) -> bytes:
        """Drop and return unread bytes (STARTTLS/STLS: nothing sent before the handshake runs)."""
        dropped = bytes(self._buf)
        self._buf.clear()
        self._scan = 0
        self._draining = False
        return dropped

    def receive_data(self, data: bytes) -> None:
        """Add bytes from the client; ``b""`` means the client closed its side."""
        if self._eof and data:
            raise LocalProtocolError("receive_data() called with data after EOF (b'')")
        if data:
            self._buf += data
        else:
            self._eof = True

    def _take_line(self) -> tuple[bytes, bool] | None:
        """The next line (CRLF included) and whether it was over ``max_line``; None: need more.

        A too-long line comes back as what is left of it (its tail), once its CRLF arrived.
        """
        buf = self._buf
        end = buf.find(b"\r\n", self._scan)
        if end < 0:
            if len(buf) > self.max_line:  # too long: drop what we have, keep draining
                self._draining = True
                del buf[:-1]  # keep a possible CR
            self._scan = max(len(buf) - 1, 0)  # a CR at the end may start the CRLF
            return None
        line = bytes(buf[: end + 2])
        del buf[: end + 2]
        self._scan = 0
        too_long = self._draining or len(line) > self.max_line
        self._draining = False
        return line, too_long
