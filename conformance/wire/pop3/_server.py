"""POP3 as the server sees it: command lines in, events out; multi-line bodies out.

Why this exists: the reference server, the fuzzer and scripted test servers
all need the same answer to "what did the client send": one command per
CRLF-terminated line (RFC 1939 §3), a keyword and arguments separated by
single spaces. Bad lines are events, not exceptions: a server answers
``-ERR`` and goes on, so nothing a client sends can end the session.

:func:`byte_stuff` is the other direction: a stored message as the body of
a multi-line response (RETR, TOP), with CRLF line ends, every line that
starts with "." given one more, and the "." CRLF terminator (RFC 1939 §3).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from conformance.wire._client_lines import ClientLineBuffer
from conformance.wire._events import NEED_DATA, ConnectionClosed, NeedData
from conformance.wire._lines import crlf_length, to_crlf

__all__ = ["Pop3BadLine", "Pop3Command", "Pop3CommandReader", "byte_stuff", "crlf_size"]

# RFC 1939 §3: "Keywords are three or four characters long"; RFC 2449 allows
# longer ones (e.g. for extensions), RFC 5034 AUTH; be generous but bounded.
_KEYWORD = re.compile(rb"[A-Za-z][A-Za-z0-9-]{0,39}")
_DOT_LINE = re.compile(rb"^\.", re.MULTILINE)


@dataclass(frozen=True, kw_only=True)
class Pop3Command:
    """One command line: ``keyword`` upper-cased, ``arg`` the text after the first space."""

    keyword: str
    arg: str
    raw: bytes

    @property
    def args(self) -> tuple[str, ...]:
        """The arguments, split on single spaces (RFC 1939 §3); ``()`` without any."""
        return tuple(self.arg.split(" ")) if self.arg else ()

    @property
    def line(self) -> str:
        """The whole line without its CRLF (a SASL response is a line, not a command)."""
        return self.raw[:-2].decode("utf-8", errors="replace")


@dataclass(frozen=True, kw_only=True)
class Pop3BadLine:
    """A line that is no command; the server answers ``-ERR reason`` and goes on."""

    reason: str
    raw: bytes


class Pop3CommandReader(ClientLineBuffer):
    """Reads what a POP3 client sends, for a server.

    Args:
        max_line: longest line accepted, CRLF included. A longer line is read
            to its end (so the next command is found) and becomes a
            :class:`Pop3BadLine`; what is buffered never exceeds this.
    """

    def __init__(self, *, max_line: int = 12288) -> None:
        if max_line < 255:
            raise ValueError("max_line below 255 breaks RFC 2449 §4")
        super().__init__(max_line)

    def next_event(self) -> Pop3Command | Pop3BadLine | NeedData | ConnectionClosed:
        """The next command or bad line; NEED_DATA; or ConnectionClosed after EOF."""
        line = self._next_line()
        return _parse(line) if isinstance(line, bytes) else line

    def next_response_line(self) -> bytes | Pop3BadLine | NeedData | ConnectionClosed:
        """The next line as text, not a command: a SASL response (RFC 5034 §4), CRLF cut off.

        Base64 is no keyword, so it must not go through the command syntax; the
        line-level rules (CRLF, no NUL or bare CR, the length limit) still hold.
        """
        line = self._next_line()
        if not isinstance(line, bytes):
            return line
        bad = _bad_line(line)
        return bad if bad is not None else line[:-2]

    def _next_line(self) -> bytes | Pop3BadLine | NeedData | ConnectionClosed:
        taken = self._take_line()
        if taken is None:
            return ConnectionClosed() if self._eof else NEED_DATA
        line, too_long = taken
        if too_long:
            return Pop3BadLine(
                reason=f"line too long (the limit is {self.max_line} octets)", raw=line
            )
        return line


def _bad_line(line: bytes) -> Pop3BadLine | None:
    if b"\n" in line[:-2] or not line.endswith(b"\r\n"):
        return Pop3BadLine(reason="bare LF; end lines with CRLF (RFC 1939 §3)", raw=line)
    body = line[:-2]
    if b"\r" in body or b"\0" in body:
        what = "NUL" if b"\0" in body else "bare CR"
        return Pop3BadLine(reason=f"{what} in command line (RFC 1939 §3)", raw=line)
    return None


def _parse(line: bytes) -> Pop3Command | Pop3BadLine:
    bad = _bad_line(line)
    if bad is not None:
        return bad
    body = line[:-2]
    keyword, _, arg = body.partition(b" ")
    if not _KEYWORD.fullmatch(keyword):
        return Pop3BadLine(
            reason="syntax error: a command starts with a keyword (RFC 1939 §3)", raw=line
        )
    try:
        text = arg.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Pop3BadLine(
            reason=f"argument is not UTF-8 at offset {len(keyword) + 1 + exc.start}", raw=line
        )
    return Pop3Command(keyword=keyword.decode("ascii").upper(), arg=text, raw=line)


def crlf_size(message: bytes) -> int:
    """Octets :func:`byte_stuff` sends for ``message`` before stuffing (RFC 1939 §11: LIST sizes).

    That is the message with CRLF line ends, and with the CRLF that ends an
    unterminated last line (RETR has to send one before the "." line).
    """
    size = crlf_length(message)
    return size + 2 if message and not message.endswith(b"\n") else size


def byte_stuff(message: bytes) -> bytes:
    """The body of a multi-line response: CRLF line ends, "." lines stuffed, "." CRLF ended."""
    text = to_crlf(message)
    if text and not text.endswith(b"\r\n"):
        text += b"\r\n"
    if text.startswith(b".") or b"\n." in text:
        text = _DOT_LINE.sub(b"..", text)
    return text + b".\r\n"
