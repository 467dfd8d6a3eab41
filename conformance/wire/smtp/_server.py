"""The server side of SMTP framing: command lines and message data, without I/O.

Theory of operation
-------------------
A server reads two kinds of input. Between commands it reads *command
lines*; after it has answered DATA with 354 it reads *message data* up to
the end-of-data mark. :class:`SmtpServerReader` turns bytes into
:class:`Command` events in the first mode and one :class:`MessageData` (or
:class:`DataRejected`) event in the second; the server calls
:meth:`~SmtpServerReader.start_data` after sending 354.

Bad input never stops the reader. Each problem becomes an event the server
answers and then goes on:

* a command line longer than the budget is drained to its end and reported as
  :class:`BadCommandLine` (RFC 5321 §4.5.3.1.4: 512 octets is the minimum a
  server must accept; RFC 4954 §4 lets AUTH lines reach 12288, so that is
  the default budget);
* a command line ending in a bare LF, or holding NUL or a bare CR, is a
  :class:`BadCommandLine` (RFC 5321 §2.3.8: servers must not treat a bare LF
  as a line end);
* message data ends only at CRLF "." CRLF (RFC 5321 §4.1.1.4). A bare LF or
  bare CR anywhere in the data makes the whole message a
  :class:`DataRejected` once the real end arrives, so no "SMTP smuggling"
  variant (``LF.LF``, ``CR.CR``, ``LF.CRLF``, ``CRLF.LF``, ...) can end a
  message early here *or* pass an ambiguous message on to a server that
  would read it differently (the rule current Postfix and Exim apply);
* data over ``max_message_size`` is read to its end and discarded, then
  rejected (RFC 1870 §6.3: 552 after the data, not a dropped connection).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from conformance.wire._client_lines import ClientLineBuffer
from conformance.wire._errors import LocalProtocolError
from conformance.wire._events import NEED_DATA, ConnectionClosed, NeedData

__all__ = [
    "AUTH_LINE_LIMIT",
    "BadCommandLine",
    "Command",
    "DataRejected",
    "MessageData",
    "SmtpServerReader",
]

#: RFC 4954 §4: "the AUTH command ... line length ... 12288 octets".
AUTH_LINE_LIMIT = 12288
_END = b"\r\n.\r\n"
_VERB = re.compile(rb"[A-Za-z][A-Za-z0-9]{0,19}")


def _has_bare_eol(body: bytes) -> bool:
    """Whether ``body`` holds a bare LF, a bare CR or a NUL (RFC 5322 §3.5 text
    excludes NUL; a receiver that drops NUL would see CRLF NUL "." CRLF as the
    end of data). Told by counts: every LF and every CR must be in a CRLF.

    Each CRLF holds one CR and one LF (two never overlap), so a LF outside one
    makes more LFs than CRLFs, and likewise a CR. Three scans in C cost a
    seventh of the regular expression on a 1 KB message, which every message
    pays (the server reads data on its event loop).
    """
    pairs = body.count(b"\r\n")
    return body.count(b"\n") != pairs or body.count(b"\r") != pairs or b"\0" in body


@dataclass(frozen=True, kw_only=True)
class Command:
    """One command line: ``verb`` upper-cased, ``arg`` the text after the first space."""

    verb: str
    arg: str
    raw: bytes


@dataclass(frozen=True, kw_only=True)
class BadCommandLine:
    """A line that is not a command; the server answers ``code enhanced text`` and goes on."""

    code: int
    enhanced: str
    text: str
    raw: bytes


@dataclass(frozen=True, kw_only=True)
class MessageData:
    """The message, dot-unstuffed, with CRLF line ends, without the final ``.`` line."""

    content: bytes


@dataclass(frozen=True, kw_only=True)
class DataRejected:
    """Message data that was read to its end but must not be accepted."""

    code: int
    enhanced: str
    text: str
    size: int


ServerEvent = Command | BadCommandLine | MessageData | DataRejected


class SmtpServerReader(ClientLineBuffer):
    """Reads what an SMTP client sends, for a server.

    Args:
        max_command_line: longest command line accepted, CRLF included.
        max_message_size: largest message accepted (bytes on the wire, before
            unstuffing); larger ones are drained and rejected with 552.
    """

    def __init__(
        self, *, max_command_line: int = AUTH_LINE_LIMIT, max_message_size: int = 25 * 1024 * 1024
    ) -> None:
        if max_command_line < 512:
            raise ValueError("max_command_line below 512 breaks RFC 5321 §4.5.3.1.4")
        super().__init__(max_command_line)
        self.max_message_size = max_message_size
        self._in_data = False
        self._data_size = 0  # DATA bytes seen, including those discarded
        self._data_overflow = False

    @property
    def in_data(self) -> bool:
        return self._in_data

    @property
    def max_command_line(self) -> int:
        """Longest command line accepted, CRLF included."""
        return self.max_line

    def start_data(self) -> None:
        """Switch to message data (call after sending the 354 reply)."""
        if self._in_data:
            raise LocalProtocolError("start_data() while already reading message data")
        self._in_data = True
        self._scan = 0
        self._data_size = 0
        self._data_overflow = False

    def next_event(self) -> ServerEvent | NeedData | ConnectionClosed:
        """The next command, bad line or message; NEED_DATA; or ConnectionClosed after EOF."""
        event = self._next_data() if self._in_data else self._next_command()
        if event is NEED_DATA and self._eof:
            return ConnectionClosed()  # a partial line or message at EOF is simply lost
        return event

    # -- commands ------------------------------------------------------------------

    def _next_command(self) -> Command | BadCommandLine | NeedData:
        taken = self._take_line()
        if taken is None:
            return NEED_DATA
        line, too_long = taken
        if too_long:
            return BadCommandLine(
                code=500,
                enhanced="5.5.2",
                text=f"line too long (the limit is {self.max_command_line} octets, "
                "RFC 5321 §4.5.3.1.4)",
                raw=line,
            )
        return self._parse_command(line)

    def _parse_command(self, line: bytes) -> Command | BadCommandLine:
        if b"\n" in line[:-2] or not line.endswith(b"\r\n"):
            return BadCommandLine(
                code=500,
                enhanced="5.5.2",
                text="bare LF in command line; end lines with CRLF (RFC 5321 §2.3.8)",
                raw=line,
            )
        body = line[:-2]
        if b"\r" in body or b"\0" in body:
            what = "NUL" if b"\0" in body else "bare CR"
            return BadCommandLine(
                code=500,
                enhanced="5.5.2",
                text=f"{what} in command line (RFC 5321 §2.3.8, §4.1.1)",
                raw=line,
            )
        verb, _, arg = body.partition(b" ")
        try:
            text = arg.decode("utf-8")
        except UnicodeDecodeError as exc:
            return BadCommandLine(
                code=500,
                enhanced="5.5.2",
                text=f"command has a byte that is not UTF-8 at offset {len(verb) + 1 + exc.start} "
                "(RFC 5321 §4.1.2, RFC 6531 §3.3)",
                raw=line,
            )
        if not _VERB.fullmatch(verb):
            return BadCommandLine(
                code=500,
                enhanced="5.5.2",
                text="syntax error: a command starts with a verb of letters (RFC 5321 §4.1.1)",
                raw=line,
            )
        return Command(
            verb=verb.decode("ascii").upper(),
            arg=text,
            raw=line,
        )

    # -- message data ----------------------------------------------------------------

    def _next_data(self) -> MessageData | DataRejected | NeedData:
        buf = self._buf
        if not self._data_overflow and buf.startswith(b".\r\n"):  # empty message: "." at once
            end = -2
        else:
            end = buf.find(_END, max(0, self._scan - 4))
        if end == -1:
            self._scan = len(buf)
            if len(buf) > self.max_message_size + 5:
                # over the limit: count it, keep only a tail that may start the end mark
                self._data_overflow = True
                self._data_size += len(buf) - 4
                del buf[:-4]
                self._scan = 4
            return NEED_DATA
        body = bytes(buf[: end + 2])  # up to and including the CRLF before "."
        del buf[: end + 5]
        self._in_data = False
        self._scan = 0
        size = self._data_size + len(body)
        if self._data_overflow or size > self.max_message_size:
            return DataRejected(
                code=552,
                enhanced="5.3.4",
                text=f"message exceeds the maximum size of {self.max_message_size} octets "
                "(RFC 1870 §6.3)",
                size=size,
            )
        if _has_bare_eol(body):
            return DataRejected(
                code=554,
                enhanced="5.6.0",
                text="message contains a bare CR, bare LF or NUL; lines must end with CRLF "
                "(RFC 5321 §2.3.8, RFC 5322 §3.5); see docs/decisions.md on SMTP smuggling",
                size=size,
            )
        if body.startswith(b"."):
            body = body[1:]
        return MessageData(content=body.replace(b"\r\n.", b"\r\n"))
