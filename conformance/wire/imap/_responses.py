"""IMAP server responses as the client sees them: bytes in, typed responses out.

Why this exists: imaplib matches responses with regexes, concedes in a comment
that a ``]`` in the text is misparsed, and returns ``(typ, [data])`` tuples
mixing bytes and ``(header, literal)`` pairs. A conformance harness needs the
opposite: every response framed exactly (literals may hold any octet, CRLF and
NUL included), the responses whose syntax RFC 9051 fixes checked against the
ABNF, and each violation reported with the offset and the production expected.

Theory of operation
-------------------
Framing comes first and knows nothing of the grammar. A response is a line; if
the line ends with a literal marker ``{n}`` or ``~{n}`` (RFC 9051 §4.3, RFC
3516 §4.4), exactly *n* octets follow, and then the response continues with
another line, which may announce another literal, and so on. The framer
records where each literal's octets sit, and stops at the first line that
announces none. Framing errors (bare LF in strict mode, over-long lines,
literals over ``max_literal``, ``{n+}`` from a server, EOF inside a response)
always raise.

Then the complete response is parsed (:mod:`._grammar`, :mod:`._lexer`):

* ``+ text`` is a :class:`ContinuationRequest`;
* ``tag SP ("OK" / "NO" / "BAD") SP resp-text`` is a :class:`TaggedResponse`;
* ``* ...`` is an :class:`UntaggedResponse`: status responses get their code
  and text, responses with fixed syntax are parsed strictly, and extension
  responses are tokenized leniently (``data=None`` if even that fails, never
  an error: an unknown response is not a malformed one).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from conformance.wire._buffer import ReceiveBuffer
from conformance.wire._errors import LocalProtocolError, RemoteProtocolError
from conformance.wire._events import NEED_DATA, ConnectionClosed, NeedData
from conformance.wire._reader import ReaderBase
from conformance.wire.imap._grammar import NUMBERED, STATUS_KEYWORDS, UNNUMBERED, resp_text
from conformance.wire.imap._lexer import (
    TAG,
    Cursor,
    ImapSyntaxError,
    ImapToken,
    Literal,
    lenient_tokens,
)

__all__ = [
    "ContinuationRequest",
    "ImapResponseReader",
    "TaggedResponse",
    "UntaggedResponse",
]

_GRAMMAR = "RFC 9051 §9"
_EOL_RULE = "RFC 9051 §2.2"
_LITERAL_RULE = "RFC 9051 §4.3"

# RFC 9051 §9:
#   literal  = "{" number64 ["+"] "}" CRLF *CHAR8
#              ; <number64> represents the number of CHAR8s.
#              ; A non-synchronizing literal is distinguished from
#              ; a synchronizing literal by the presence of "+"
#              ; before the closing "}".
#              ; Non-synchronizing literals are not allowed when
#              ; sent from server to the client.
# RFC 3516 §4.4 (and RFC 9051 §9):
#   literal8 = "~{" number64 "}" CRLF *OCTET
_LITERAL_SIZE = re.compile(rb"([0-9]+)(\+?)")
# The response keyword is an atom; it stops before "[" too, so that "* OK[ALERT]"
# is reported as a missing SP rather than read as a keyword "OK[ALERT".
_KEYWORD = re.compile(rb'[^(){ %*"\\\[\]\x00-\x1f\x7f-\xff]+')

_MAX_DEPTH_LIMIT = 256
"""Parsing recurses once per list level; this keeps it far from Python's recursion limit."""


def _decode(data: bytes) -> str:
    return data.decode("utf-8", errors="surrogateescape")


@dataclass(frozen=True, kw_only=True)
class TaggedResponse:
    """The tagged completion of a command: ``a1 OK [READ-WRITE] SELECT completed``.

    Attributes:
        tag: the command's tag.
        status: ``"OK"``, ``"NO"`` or ``"BAD"``, upper-cased.
        code: the resp-text-code atom, upper-cased (``"TRYCREATE"``), or ``None``.
        code_args: the rest inside the brackets (``"3857529045"``), or ``None``.
        text: the human-readable text after the code.
        raw: the exact bytes parsed.

    Raises:
        LocalProtocolError: at construction, for a status other than OK/NO/BAD
            or a tag that is not ``1*<any ASTRING-CHAR except "+">``.
    """

    tag: str
    status: str
    code: str | None = None
    code_args: str | None = None
    text: str = ""
    raw: bytes = b""

    def __post_init__(self) -> None:
        # response-tagged = tag SP resp-cond-state CRLF
        # resp-cond-state = ("OK" / "NO" / "BAD") SP resp-text
        if self.status not in ("OK", "NO", "BAD"):
            raise LocalProtocolError(
                f"tagged status must be OK, NO or BAD, not {self.status!r}", rfc_ref=_GRAMMAR
            )
        if not TAG.fullmatch(self.tag.encode("utf-8", errors="surrogateescape")):
            raise LocalProtocolError(f"{self.tag!r} is not a valid tag", rfc_ref=_GRAMMAR)


@dataclass(frozen=True, kw_only=True)
class UntaggedResponse:
    """Server data or status: ``* 23 EXISTS``, ``* OK [UIDVALIDITY 1] ok``, ``* 1 FETCH (...)``.

    Attributes:
        keyword: upper-cased: ``"OK"``, ``"BYE"``, ``"CAPABILITY"``, ``"FETCH"``, ...
        number: the message number before the keyword (``* 23 EXISTS``), or ``None``.
        code: for status responses (OK/NO/BAD/BYE/PREAUTH), the resp-text-code
            atom upper-cased, or ``None``.
        code_args: the rest inside the brackets, or ``None``.
        text: for status responses, the text after the code; ``""`` otherwise.
        data: the values after the keyword (atoms ``str``, numbers ``int``,
            quoted strings and literals ``bytes``, NIL ``None``, lists ``tuple``);
            ``None`` for status responses and for extension responses that do
            not tokenize.
        line: the whole response as text, literals inlined, final CRLF removed
            (for regex matching).
        raw: the exact bytes parsed.
    """

    keyword: str
    number: int | None = None
    code: str | None = None
    code_args: str | None = None
    text: str = ""
    data: tuple[ImapToken, ...] | None = None
    line: str = ""
    raw: bytes = b""

    def __post_init__(self) -> None:
        if not self.keyword or self.keyword != self.keyword.upper():
            raise LocalProtocolError(
                f"untagged keyword {self.keyword!r} must be a non-empty upper-case atom",
                rfc_ref=_GRAMMAR,
            )


@dataclass(frozen=True, kw_only=True)
class ContinuationRequest:
    """``+ Ready for literal data``: the server waits for more from the client.

    RFC 9051 §9: ``continue-req = "+" SP (resp-text / base64) CRLF``.

    Attributes:
        text: what follows ``"+ "`` (``""`` for a lone ``+``).
        raw: the exact bytes parsed.
    """

    text: str
    raw: bytes = b""


ImapEvent = TaggedResponse | UntaggedResponse | ContinuationRequest


class ImapResponseReader(ReaderBase[ImapEvent]):
    """Reads IMAP responses from the bytes a server sends.

    Args:
        strict: only CRLF ends a line (RFC 9051 §2.2); ``strict=False`` accepts
            bare LF. The grammar checks do not depend on it.
        max_line: the longest line (between literals), terminator excluded.
        max_literal: the largest literal accepted; a larger announcement raises
            before any of its octets are buffered.
        max_depth: how deeply parenthesised lists may nest (at most 256).

    Raises:
        ValueError: ``max_depth`` is not between 1 and 256.
    """

    def __init__(
        self,
        *,
        strict: bool = True,
        max_line: int = 65536,
        max_literal: int = 128 * 1024 * 1024,
        max_depth: int = 100,
    ) -> None:
        if not 1 <= max_depth <= _MAX_DEPTH_LIMIT:
            raise ValueError(f"max_depth must be between 1 and {_MAX_DEPTH_LIMIT}, not {max_depth}")
        self._strict = strict
        self._max_line = max_line
        self._max_literal = max_literal
        self._max_depth = max_depth
        super().__init__(ReceiveBuffer(eol_ref=_EOL_RULE))
        # The response being framed: its bytes so far, its literals, the
        # literal being waited for (None between lines), where it started.
        self._literals: dict[int, Literal] = {}
        self._awaiting: Literal | None = None
        self._start = 0

    # -- framing -------------------------------------------------------------

    def _next_event(self) -> ImapEvent | NeedData | ConnectionClosed:
        while True:
            if self._awaiting is not None:
                wanted = self._awaiting.end - self._awaiting.start
                octets = self._buffer.take(wanted)
                if octets is None:
                    return self._starved(
                        f"inside a {wanted}-byte literal, {len(self._buffer)} byte(s) of it "
                        "received"
                    )
                self._raw += octets
                self._awaiting = None
                continue
            if not self._raw:
                self._start = self._buffer.offset
            line = self._buffer.next_line(self._max_line, self._strict)
            if line is None:
                if not self._raw and not len(self._buffer):
                    return self._starved(None)
                return self._starved(
                    f"{len(self._raw) + len(self._buffer)} byte(s) of it received, "
                    "the last line unterminated"
                )
            line_start = len(self._raw)
            self._raw += line + self._buffer.last_eol
            if not self._announce_literal(line, line_start):
                return self._finish(len(self._buffer.last_eol))

    def _starved(self, where: str | None) -> NeedData | ConnectionClosed:
        if not self._eof:
            return NEED_DATA
        if where is None:
            return ConnectionClosed()
        raise RemoteProtocolError(
            f"connection closed in the middle of a reply (the response starting at stream "
            f"byte {self._start}): {where}",
            rfc_ref=_GRAMMAR,
        )

    def _announce_literal(self, line: bytes, line_start: int) -> bool:
        """If ``line`` ends with a literal marker, record the literal and return True."""
        if not line.endswith(b"}"):
            return False
        brace = line.rfind(b"{")
        size = _LITERAL_SIZE.fullmatch(line, brace + 1, len(line) - 1) if brace >= 0 else None
        if size is None:
            return False
        binary = line[brace - 1 : brace] == b"~"
        marker = line_start + brace - binary
        if size.group(2):
            raise RemoteProtocolError(
                f"server sent a non-synchronizing literal {line[brace:]!r} at stream byte "
                f"{self._start + marker} (only clients may send {{n+}})",
                rfc_ref=_LITERAL_RULE,
            )
        digits = size.group(1)
        if len(digits) > 19 or int(digits) > self._max_literal:
            raise RemoteProtocolError(
                f"literal {line[brace:][:30]!r} at stream byte {self._start + marker} "
                f"announces more than max_literal={self._max_literal} bytes",
                rfc_ref=_LITERAL_RULE if len(digits) > 19 else None,
            )
        start = len(self._raw)
        self._awaiting = Literal(start, start + int(digits), binary)
        self._literals[marker] = self._awaiting
        return True

    def _finish(self, eol_size: int) -> ImapEvent:
        raw = bytes(self._raw)
        literals = self._literals
        self._raw = bytearray()
        self._literals = {}
        cur = Cursor(raw[: len(raw) - eol_size], literals, self._max_depth)
        what = "response"
        try:
            if cur.accept(b"+"):
                what = "continuation request"
                return self._continuation(cur, raw)
            if cur.accept(b"*"):
                what = "untagged response"
                cur.sp()
                return self._untagged(cur, raw)
            what = "tagged response"
            return self._tagged(cur, raw)
        except _Context as ctx:
            what = ctx.what
            error = ctx.error
        except ImapSyntaxError as exc:
            error = exc
        raise RemoteProtocolError(
            f"{what} at stream byte {self._start}, offset {error.pos}: {error.message} "
            f"(response begins {raw[:40]!r})",
            rfc_ref=_GRAMMAR,
        )

    # -- parsing -------------------------------------------------------------

    @staticmethod
    def _continuation(cur: Cursor, raw: bytes) -> ContinuationRequest:
        # continue-req = "+" SP (resp-text / base64) CRLF
        # A lone "+" is accepted as an empty continuation.
        if not cur.at_end():
            cur.sp()
        return ContinuationRequest(text=_decode(cur.buf[cur.pos :]), raw=raw)

    @staticmethod
    def _tagged(cur: Cursor, raw: bytes) -> TaggedResponse:
        # response-tagged = tag SP resp-cond-state CRLF
        # tag             = 1*<any ASTRING-CHAR except "+">
        tag = cur.match(TAG, "'*', '+' or a tag (1*<any ASTRING-CHAR except \"+\">)")
        cur.sp()
        start = cur.pos
        status = cur.atom().upper()
        if status not in ("OK", "NO", "BAD"):
            cur.fail("OK, NO or BAD after the tag", start)
        code, args, text = _status_text(cur)
        return TaggedResponse(
            tag=tag.decode("ascii"), status=status, code=code, code_args=args, text=text, raw=raw
        )

    def _untagged(self, cur: Cursor, raw: bytes) -> UntaggedResponse:
        # response-data = "*" SP (resp-cond-state / resp-cond-bye /
        #                 mailbox-data / message-data / capability-data /
        #                 enable-data) CRLF
        number: int | None = None
        if cur.at_digit():
            number = cur.number()
            cur.sp()
        start = cur.pos
        keyword = cur.match(_KEYWORD, "a response keyword (atom)").decode("ascii").upper()
        line = _decode(cur.buf)
        try:
            if keyword in STATUS_KEYWORDS:
                if number is not None:
                    cur.fail(f"no message number before {keyword}", 2)
                code, args, text = _status_text(cur)
                return UntaggedResponse(
                    keyword=keyword, code=code, code_args=args, text=text, line=line, raw=raw
                )
            if keyword in NUMBERED:
                nonzero, production = NUMBERED[keyword]
                if number is None:
                    cur.fail(f"a message number before {keyword} ('* 1 {keyword}')", start)
                if nonzero and number == 0:
                    cur.fail(f"a non-zero message number (nz-number) before {keyword}", 2)
                data: tuple[ImapToken, ...] | None = production(cur)
            elif keyword in UNNUMBERED:
                if number is not None:
                    cur.fail(f"no message number before {keyword}", 2)
                data = UNNUMBERED[keyword](cur)
            else:
                data = _lenient(cur)
        except ImapSyntaxError as exc:
            raise _Context(f"untagged {keyword} response", exc) from None
        return UntaggedResponse(keyword=keyword, number=number, data=data, line=line, raw=raw)


class _Context(Exception):
    """Carries which response a syntax error was found in up to the reader."""

    def __init__(self, what: str, error: ImapSyntaxError) -> None:
        super().__init__(what)
        self.what = what
        self.error = error


def _status_text(cur: Cursor) -> tuple[str | None, str | None, str]:
    # resp-cond-state = ("OK" / "NO" / "BAD") SP resp-text
    # The SP and text are optional in practice ("a1 OK" ends the line).
    if cur.at_end():
        return None, None, ""
    cur.sp()
    return resp_text(cur)


def _lenient(cur: Cursor) -> tuple[ImapToken, ...] | None:
    """Tokenize an extension response; ``None`` if it does not tokenize."""
    try:
        if cur.at_end():
            return ()
        cur.sp()
        return lenient_tokens(cur)
    except ImapSyntaxError:
        return None
