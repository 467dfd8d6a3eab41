"""SMTP replies as the client sees them: bytes from the server in, :class:`Reply` out.

Why this exists: the harness must tell "the server sent a malformed reply" (a
finding, reported with the rule it broke) from "the harness misread a valid
reply" (a bug). smtplib cannot: it returns ``-1`` for a non-numeric code and
never checks that the lines of a multiline reply agree. This reader follows the
RFC 5321 §4.2 grammar line by line and raises :class:`RemoteProtocolError`
naming the line, the byte and the rule.

Theory of operation
-------------------
Framing (CRLF lines, ``max_line``) is done by :class:`ReceiveBuffer`. Each line
is checked on its own (code, separator, text); lines with the ``-`` separator
are collected until a line with SP or nothing after the code ends the reply.
Lines of one reply must repeat the code of the first. Nothing is parsed before
``next_event()`` asks for it, and bytes after a complete reply stay in
:attr:`SmtpReplyReader.pending` (a server that sends data right after its
``220`` to STARTTLS is vulnerable to command injection, CVE-2011-0411).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from conformance.wire._buffer import ReceiveBuffer
from conformance.wire._errors import LocalProtocolError, RemoteProtocolError
from conformance.wire._events import NEED_DATA, ConnectionClosed, NeedData
from conformance.wire._reader import ReaderBase

__all__ = ["Reply", "SmtpReplyReader", "parse_ehlo"]

_GRAMMAR = "RFC 5321 §4.2"
_EOL_RULE = "RFC 5321 §2.3.8"
# RFC 5321 §4.5.3.1.5: "The maximum total length of a reply line including the
# reply code and the <CRLF> is 512 octets." Our max_line budget is larger on
# purpose (over-long lines are a finding for a scenario, not a framing failure),
# but when even the budget is exceeded this is the rule broken.
_LENGTH_RULE = "RFC 5321 §4.5.3.1.5"
_EHLO_RULE = "RFC 5321 §4.1.1.1"

# RFC 5321 §4.2:
#   Reply-code = %x32-35 %x30-35 %x30-39
_FIRST_DIGITS = b"2345"
_SECOND_DIGITS = b"012345"

# RFC 3463 §2:
#   status-code = class "." subject "." detail
#   class       = "2" / "4" / "5"
#   subject     = 1*3digit
#   detail      = 1*3digit
# RFC 2034 §4 puts it first in the text, followed by SP (or ending the text).
_ENHANCED = re.compile(r"([245]\.[0-9]{1,3}\.[0-9]{1,3})(?: |$)")

# RFC 5321 §4.1.1.1:
#   ehlo-line    = ehlo-keyword *( SP ehlo-param )
#   ehlo-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")
#   ehlo-param   = 1*(%d33-126)
_EHLO_LINE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*(?: [\x21-\x7e]+)*", re.ASCII)


_TEXT_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _code_is_valid(code: int) -> bool:
    text = b"%d" % code
    return len(text) == 3 and text[0] in _FIRST_DIGITS and text[1] in _SECOND_DIGITS


@dataclass(frozen=True, kw_only=True)
class Reply:
    """One complete SMTP reply, single- or multiline.

    Attributes:
        code: the reply code, 200..599 with a second digit of 0..5 (RFC 5321 §4.2).
        lines: the text of each line after its ``250-``/``250 `` separator, ``""``
            when a line has none; at least one line.
        enhanced: the RFC 3463 status code (``"2.1.0"``) the first line starts
            with, if any.
        raw: the exact bytes the reply was parsed from, terminators included.

    Raises:
        LocalProtocolError: at construction, if ``code`` is not a valid reply code
            or ``lines`` is empty.
    """

    code: int
    lines: tuple[str, ...]
    enhanced: str | None = None
    raw: bytes = b""

    def __post_init__(self) -> None:
        if not _code_is_valid(self.code):
            raise LocalProtocolError(
                f"reply code {self.code} is not a valid SMTP reply code "
                "(first digit 2-5, second 0-5, third 0-9)",
                rfc_ref=_GRAMMAR,
            )
        if not self.lines:
            raise LocalProtocolError("a reply has at least one line", rfc_ref=_GRAMMAR)
        if self.enhanced is not None and not _ENHANCED.fullmatch(self.enhanced):
            raise LocalProtocolError(
                f"enhanced status code {self.enhanced!r} is not class.subject.detail",
                rfc_ref="RFC 3463 §2",
            )

    @classmethod
    def build(cls, code: int, enhanced: str | None, *texts: str) -> Reply:
        """A reply to send: ``enhanced`` (RFC 2034 §4: on every line) then each text.

        No text gives a bare ``250`` line. Text follows RFC 5321 §4.2
        ``textstring`` (HT and printable characters; RFC 6531 adds UTF-8).

        Raises:
            LocalProtocolError: invalid code or enhanced code, or a control
                character (other than HT) in a text.
        """
        if not texts:
            texts = ("",)
        for t in texts:
            bad = _TEXT_CONTROL.search(t)
            if bad and bad.group() in "\r\n":
                raise LocalProtocolError(
                    "reply text cannot contain CR or LF (it would start another reply line)",
                    rfc_ref=_GRAMMAR,
                )
            if bad:
                raise LocalProtocolError(
                    f"reply text cannot contain {bad.group()!r}: textstring is HT and "
                    "printable characters",
                    rfc_ref=_GRAMMAR,
                )
        prefix = f"{enhanced} " if enhanced else ""
        lines = tuple(f"{prefix}{t}".rstrip(" ") for t in texts)
        last = len(lines) - 1
        # Reply-line: *( Reply-code "-" [ textstring ] CRLF ) Reply-code [ SP textstring ] CRLF
        raw = "".join(
            f"{code}-{line}\r\n" if i < last else (f"{code} {line}\r\n" if line else f"{code}\r\n")
            for i, line in enumerate(lines)
        ).encode("utf-8")
        return cls(code=code, lines=lines, enhanced=enhanced, raw=raw)

    @property
    def text(self) -> str:
        """The text of all lines joined with ``"\\n"``."""
        return "\n".join(self.lines)

    @property
    def is_multiline(self) -> bool:
        """Whether the reply has more than one line."""
        return len(self.lines) > 1


_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")  # what textstring leaves out, but 8-bit


def _decode(data: bytes) -> str:
    return data.decode("utf-8", errors="surrogateescape")


class SmtpReplyReader(ReaderBase[Reply]):
    """Reads SMTP replies from the bytes a server sends.

    Args:
        strict: only CRLF ends a line (RFC 5321 §2.3.8), and reply text may hold
            no control characters other than HT (``textstring``, RFC 5321 §4.2).
            ``strict=False`` accepts bare LF and any text bytes.
        max_line: the longest line, terminator excluded, that is accepted.
        max_lines: the most lines one reply may have.
    """

    def __init__(self, *, strict: bool = True, max_line: int = 65536, max_lines: int = 10000):
        self._strict = strict
        self._max_line = max_line
        self._max_lines = max_lines
        super().__init__(ReceiveBuffer(eol_ref=_EOL_RULE, length_ref=_LENGTH_RULE))
        # The reply being assembled: its code, the text of each line, its raw bytes.
        self._code = 0
        self._lines: list[str] = []

    def _next_event(self) -> Reply | NeedData | ConnectionClosed:
        while True:
            line = self._buffer.next_line(self._max_line, self._strict)
            if line is None:
                if not self._eof:
                    return NEED_DATA
                if self._lines or len(self._buffer):
                    raise RemoteProtocolError(
                        f"connection closed in the middle of a reply, at byte "
                        f"{self._buffer.offset + len(self._buffer)} "
                        f"({len(self._lines)} complete line(s) and "
                        f"{len(self._buffer)} byte(s) of an unterminated one received)",
                        rfc_ref=_GRAMMAR,
                    )
                return ConnectionClosed()
            number = len(self._lines) + 1
            code, final, text = self._parse_line(line, number)
            if number > 1 and code != self._code:
                raise RemoteProtocolError(
                    f"reply line {number} has code {code} but line 1 has {self._code} "
                    "(all lines of a multiline reply carry the same code)",
                    rfc_ref=_GRAMMAR,
                )
            if number > self._max_lines:
                raise RemoteProtocolError(
                    f"reply has more than max_lines={self._max_lines} lines "
                    f"(still going at line {number} with code {code})"
                )
            self._code = code
            self._lines.append(_decode(text))
            self._raw += line + self._buffer.last_eol
            if final:
                return self._finish()

    def _parse_line(self, line: bytes, number: int) -> tuple[int, bool, bytes]:
        """Check one reply line; return (code, is-last-line, text)."""
        # RFC 5321 §4.2:
        #   Reply-line = *( Reply-code "-" [ textstring ] CRLF )
        #                Reply-code [ SP textstring ] CRLF
        head = line[:3]
        if len(head) < 3 or not head.isdigit():
            raise RemoteProtocolError(
                f"reply line {number} does not start with a three-digit reply code: {line[:40]!r}",
                rfc_ref=_GRAMMAR,
            )
        code = int(head)
        if not _code_is_valid(code):
            raise RemoteProtocolError(
                f"reply line {number} has code {code}, outside Reply-code "
                "(first digit 2-5, second 0-5, third 0-9)",
                rfc_ref=_GRAMMAR,
            )
        separator = line[3:4]
        if separator not in (b"-", b" ", b""):
            raise RemoteProtocolError(
                f"reply line {number}: after code {code} expected '-', SP or end of line, "
                f"found {separator!r} at byte 4",
                rfc_ref=_GRAMMAR,
            )
        text = line[4:]
        if self._strict:
            self._check_textstring(text, number)
        return code, separator != b"-", text

    @staticmethod
    def _check_textstring(text: bytes, number: int) -> None:
        # RFC 5321 §4.2:
        #   textstring = 1*(%d09 / %d32-126) ; HT, SP, Printable US-ASCII
        # Bytes >= 0x80 are let through: SMTPUTF8 servers (RFC 6531) put UTF-8
        # in reply text, and a reader that failed on them would hide every other
        # finding in the session. Control characters have no such excuse.
        bad = _CONTROL.search(text)
        if bad is not None:
            raise RemoteProtocolError(
                f"reply line {number} has control character {bad.group()!r} at byte "
                f"{bad.start() + 5} (textstring allows HT, SP and printable characters only)",
                rfc_ref=_GRAMMAR,
            )

    def _finish(self) -> Reply:
        match = _ENHANCED.match(self._lines[0])
        reply = Reply(
            code=self._code,
            lines=tuple(self._lines),
            enhanced=match.group(1) if match else None,
            raw=bytes(self._raw),
        )
        self._code = 0
        self._lines = []
        self._raw = bytearray()
        return reply


def parse_ehlo(reply: Reply, *, strict: bool = True) -> dict[str, tuple[str, ...]]:
    """Map the keywords of an EHLO reply to their parameters.

    Line 1 is the greeting (``Domain [SP ehlo-greet]``) and is skipped; every
    later line is an ``ehlo-line``. Keywords are upper-cased (they are
    case-insensitive). A keyword listed twice gets the parameters of both
    listings, in order, without repeats.

    Strict by default, like the readers: a line that breaks ``ehlo-line`` is a
    finding. The common one is ``AUTH=PLAIN LOGIN`` (the form of a pre-RFC 2554
    draft), which Postfix and others add for old clients; ``strict=False``
    reads it as ``AUTH`` with ``PLAIN LOGIN``, for callers that want the
    capabilities whatever the syntax.

    Args:
        reply: the 250 reply to EHLO.
        strict: if true, every line must match ``ehlo-line`` (RFC 5321 §4.1.1.1)
            and the first offender raises. If false, each line is split on
            white space, empty lines are skipped and ``KEYWORD=param`` is
            split at the ``=``.

    Returns:
        ``{"SIZE": ("35882577",), "PIPELINING": (), "AUTH": ("PLAIN", "LOGIN")}``.

    Raises:
        LocalProtocolError: ``reply`` is not a 250 reply.
        RemoteProtocolError: a keyword line breaks ``ehlo-line`` (strict only).
    """
    if reply.code != 250:
        raise LocalProtocolError(
            f"parse_ehlo() needs the 250 reply to EHLO, got a {reply.code} reply"
        )
    keywords: dict[str, tuple[str, ...]] = {}
    for number, line in enumerate(reply.lines[1:], start=2):
        if strict and not _EHLO_LINE.fullmatch(line):
            raise RemoteProtocolError(
                f"EHLO reply line {number} {line[:60]!r} is not an ehlo-line: a keyword of "
                "letters, digits and '-' (not starting with '-'), then SP-separated "
                "parameters of printable characters",
                rfc_ref=_EHLO_RULE,
            )
        tokens = line.split()
        if not tokens:
            continue
        keyword, params = tokens[0], tokens[1:]
        if "=" in keyword:
            keyword, _, first = keyword.partition("=")
            params = [first, *params] if first else params
        known = keywords.get(keyword.upper(), ())
        keywords[keyword.upper()] = known + tuple(
            p for p in dict.fromkeys(params) if p not in known
        )
    return keywords
