"""POP3 responses as the client sees them: bytes from the server in, events out.

Why this exists: a POP3 response does not say whether it is multiline. Only the
command it answers does (RETR and LIST yes, STAT and LIST n no; RFC 1939 §3),
so the reader must be told what to expect, in order, even when the harness
pipelines several commands (RFC 2449 §6.6). poplib hides this inside blocking
calls; here it is an explicit FIFO of expectations, and every malformed status
line, code or body becomes a :class:`RemoteProtocolError` naming the rule.

Theory of operation
-------------------
The caller calls :meth:`Pop3ResponseReader.expect` once per command it sends.
When a status line arrives:

* ``+ ...`` is a SASL challenge (RFC 5034 §4). It answers no command by
  itself, so it does not consume an expectation.
* ``-ERR`` consumes an expectation and is always a single line.
* ``+OK`` consumes an expectation; if that said ``multiline=True`` the lines up
  to a lone ``.`` are its body, dot-unstuffed. With no expectation queued the
  response is taken as single-line.
"""

from __future__ import annotations

import collections
import re
from dataclasses import dataclass

from conformance.wire._buffer import ReceiveBuffer
from conformance.wire._errors import LocalProtocolError, RemoteProtocolError
from conformance.wire._events import NEED_DATA, ConnectionClosed, NeedData
from conformance.wire._reader import ReaderBase

__all__ = ["Pop3Continuation", "Pop3Response", "Pop3ResponseReader"]

_STATUS_RULE = "RFC 1939 §3"
_CODE_RULE = "RFC 2449 §8"
_SASL_RULE = "RFC 5034 §4"

# RFC 2449 §8:
#   resp-code  = "[" resp-level *("/" resp-level) "]"
#   resp-level = 1*rchar
#   rchar      = %x21-2E / %x30-5C / %x5E-7F
#                ; printable ASCII, excluding "/" and "]"
_RESP_CODE = re.compile(rb"[\x21-\x2e\x30-\x5c\x5e-\x7f]+(?:/[\x21-\x2e\x30-\x5c\x5e-\x7f]+)*")


def _decode(data: bytes) -> str:
    return data.decode("utf-8", errors="surrogateescape")


@dataclass(frozen=True, kw_only=True)
class Pop3Response:
    """A ``+OK`` or ``-ERR`` response, with its body if it is multiline.

    Attributes:
        ok: ``True`` for ``+OK``, ``False`` for ``-ERR``.
        code: the RFC 2449 §8 response code in brackets at the start of the text,
            upper-cased (``"IN-USE"``, ``"SYS/TEMP"``), or ``None``.
        text: the rest of the status line, without the one SP that follows the
            status (or the code).
        lines: the body lines of a multiline response, without CRLF and
            dot-unstuffed (RFC 1939 §3); ``None`` for a single-line response.
        raw: the exact bytes parsed, terminators and stuffing dots included.

    Raises:
        LocalProtocolError: at construction, if a ``-ERR`` response has a body.
    """

    ok: bool
    code: str | None = None
    text: str = ""
    lines: tuple[bytes, ...] | None = None
    raw: bytes = b""

    def __post_init__(self) -> None:
        if not self.ok and self.lines is not None:
            raise LocalProtocolError("a -ERR response is always single-line", rfc_ref=_STATUS_RULE)


@dataclass(frozen=True, kw_only=True)
class Pop3Continuation:
    """A SASL challenge, ``+ base64`` (RFC 5034 §4).

    Attributes:
        text: what follows ``"+ "``, normally base64 (``""`` for an empty challenge).
        raw: the exact bytes parsed.
    """

    text: str
    raw: bytes = b""


class Pop3ResponseReader(ReaderBase[Pop3Response | Pop3Continuation]):
    """Reads POP3 responses from the bytes a server sends.

    Args:
        strict: only CRLF ends a line (RFC 1939 §3), and a body line starting with
            ``.`` must be stuffed (``..``) unless it is the terminator.
            ``strict=False`` accepts bare LF and strips the dot of an unstuffed line.
        max_line: the longest line, terminator excluded, that is accepted.
        max_body: the most body bytes (lines without terminators) one multiline
            response may have.
    """

    def __init__(
        self, *, strict: bool = True, max_line: int = 65536, max_body: int = 128 * 1024 * 1024
    ) -> None:
        self._strict = strict
        self._max_line = max_line
        self._max_body = max_body
        super().__init__(ReceiveBuffer(eol_ref=_STATUS_RULE))
        self._expected: collections.deque[bool] = collections.deque()
        # A multiline response being assembled: its status line, body, raw bytes.
        self._head: Pop3Response | None = None
        self._body: list[bytes] = []
        self._body_size = 0

    def expect(self, *, multiline: bool) -> None:
        """Declare the shape of the response to the next command sent.

        Call it once per command, in the order the commands are sent.

        Args:
            multiline: whether a ``+OK`` answer carries a body ending in ``.``
                (RETR, TOP, LIST and UIDL without argument, CAPA).
        """
        self._expected.append(multiline)

    def _next_event(self) -> Pop3Response | Pop3Continuation | NeedData | ConnectionClosed:
        while True:
            line = self._buffer.next_line(self._max_line, self._strict)
            if line is None:
                return self._no_line()
            if self._head is not None:
                done = self._body_line(self._head, line)
                if done is not None:
                    return done
                continue
            raw = line + self._buffer.last_eol
            event = self._status_line(line, raw)
            if isinstance(event, Pop3Continuation):
                return event
            multiline = self._expected.popleft() if self._expected else False
            if not (event.ok and multiline):
                return event
            self._head = event
            self._raw += raw

    def _no_line(self) -> NeedData | ConnectionClosed:
        if not self._eof:
            return NEED_DATA
        where = self._buffer.offset + len(self._buffer)
        if self._head is not None:
            raise RemoteProtocolError(
                f"connection closed in the middle of a reply, at byte {where}: no terminating "
                f"'.' line after {len(self._body)} body line(s) of a multiline response",
                rfc_ref=_STATUS_RULE,
            )
        if len(self._buffer):
            raise RemoteProtocolError(
                f"connection closed in the middle of a reply, at byte {where} "
                f"({len(self._buffer)} byte(s) of an unterminated status line received)",
                rfc_ref=_STATUS_RULE,
            )
        return ConnectionClosed()

    def _status_line(self, line: bytes, raw: bytes) -> Pop3Response | Pop3Continuation:
        # RFC 2449 §3:
        #   single-line = status [SP text] CRLF
        #   status      = "+OK" / "-ERR"
        # RFC 5034 §4:  a challenge is "+" SP, then base64 (possibly empty)
        if line.startswith(b"+OK"):
            ok, rest = True, line[3:]
        elif line.startswith(b"-ERR"):
            ok, rest = False, line[4:]
        elif line == b"+" or line.startswith(b"+ "):
            # A lone "+" (no SP) is accepted too: the text is empty either way,
            # and the raw bytes keep the difference for a scenario to judge.
            return Pop3Continuation(text=_decode(line[2:]), raw=raw)
        else:
            hint = ""
            if line[:3].upper() == b"+OK" or line[:4].upper() == b"-ERR":
                hint = " (status indicators are case-sensitive: +OK and -ERR in upper case)"
            raise RemoteProtocolError(
                f"status line at byte {self._buffer.offset - len(raw)} starts with "
                f"{line[:12]!r}, not +OK, -ERR or a '+ ' challenge{hint}",
                rfc_ref=_STATUS_RULE,
            )
        status = "+OK" if ok else "-ERR"
        if rest and not rest.startswith(b" "):
            raise RemoteProtocolError(
                f"status {status} is followed by {rest[:1]!r} instead of SP or end of line "
                f"(status line {line[:40]!r})",
                rfc_ref=_STATUS_RULE,
            )
        text = rest[1:]
        code: str | None = None
        if text.startswith(b"["):
            close = text.find(b"]")
            if close < 0:
                raise RemoteProtocolError(
                    f"{status} response code is opened with '[' but never closed with ']' "
                    f"(status line {line[:60]!r})",
                    rfc_ref=_CODE_RULE,
                )
            if not _RESP_CODE.fullmatch(text, 1, close):
                raise RemoteProtocolError(
                    f"{status} response code {text[: close + 1]!r} is not resp-level "
                    "*('/' resp-level) of printable characters other than '/' and ']'",
                    rfc_ref=_CODE_RULE,
                )
            code = _decode(text[1:close]).upper()
            text = text[close + 1 :]
            if text.startswith(b" "):
                text = text[1:]
        return Pop3Response(ok=ok, code=code, text=_decode(text), raw=raw)

    def _body_line(self, head: Pop3Response, line: bytes) -> Pop3Response | None:
        # RFC 2449 §3:
        #   multi-line  = single-line *dot-stuffed "." CRLF
        #   dot-stuffed = *CHAR CRLF   ; must be dot-stuffed
        self._raw += line + self._buffer.last_eol
        if line == b".":
            response = Pop3Response(
                ok=True,
                code=head.code,
                text=head.text,
                lines=tuple(self._body),
                raw=bytes(self._raw),
            )
            self._head = None
            self._body = []
            self._body_size = 0
            self._raw = bytearray()
            return response
        if line.startswith(b"."):
            if self._strict and not line.startswith(b".."):
                raise RemoteProtocolError(
                    f"body line {len(self._body) + 1} of a multiline response starts with a "
                    f"single '.' ({line[:40]!r}): a line beginning with the termination "
                    "octet must be byte-stuffed to '..'",
                    rfc_ref=_STATUS_RULE,
                )
            line = line[1:]
        self._body_size += len(line)
        if self._body_size > self._max_body:
            raise RemoteProtocolError(
                f"multiline response body exceeds max_body={self._max_body} bytes at body "
                f"line {len(self._body) + 1} without a terminating '.' line"
            )
        self._body.append(line)
        return None
