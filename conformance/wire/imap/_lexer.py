"""IMAP tokens: the leaf productions of RFC 9051 §9, over one framed response.

Theory of operation
-------------------
The reader frames a response first (lines plus the literals they announce),
then hands this module the response's bytes with the terminator of its last
line removed, together with where each literal sits. A :class:`Cursor` walks
those bytes; each method is one ABNF production (``atom``, ``number``,
``quoted``, ``literal``, ``string``, ``nstring``, ``astring``, ...), consumes
exactly what the production matches, and raises :class:`ImapSyntaxError` with
the offset and the production expected otherwise. Higher productions live in
:mod:`conformance.wire.imap._grammar`.

A ``{`` is a literal only where framing found one: the cursor looks its offset
up in the literal map, so the two can never disagree about where a literal's
octets start and end, and binary octets inside a literal are never scanned.

Lists nest through :meth:`Cursor.open_list`, which enforces ``max_depth``
(go-imap's ``maxListDepth`` idea): a hostile ``((((...`` costs a bounded
amount of stack. Numbers longer than 20 digits are rejected before ``int()``
sees them.

The ``lenient_*`` functions tokenize responses whose grammar we do not know
(extensions): they accept more and never raise anything but
:class:`ImapSyntaxError`, which the caller turns into ``data=None``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NoReturn, TypeAlias

__all__ = ["Cursor", "ImapSyntaxError", "ImapToken", "Literal"]

ImapToken: TypeAlias = str | int | bytes | tuple["ImapToken", ...] | None
"""A parsed value: atom, number, string (quoted or literal), NIL, or parenthesised list."""

MAX_NUMBER = 2**32 - 1
"""RFC 9051 §9: ``number = 1*DIGIT ; Unsigned 32-bit integer (0 <= n < 4,294,967,296)``."""

MAX_NUMBER64 = 2**63 - 1
"""RFC 9051 §9: ``number64 = 1*DIGIT ; Unsigned 63-bit integer (0 <= n <= 9,223,372,...)``."""

# RFC 9051 §9:
#   atom            = 1*ATOM-CHAR
#   ATOM-CHAR       = <any CHAR except atom-specials>
#   atom-specials   = "(" / ")" / "{" / SP / CTL / list-wildcards /
#                     quoted-specials / resp-specials
#   list-wildcards  = "%" / "*"
#   quoted-specials = DQUOTE / "\"
#   resp-specials   = "]"
#   CHAR            = %x01-7F        (RFC 5234)
#   CTL             = %x00-1F / %x7F (RFC 5234)
_ATOM = re.compile(rb'[^(){ %*"\\\]\x00-\x1f\x7f-\xff]+')
#   ASTRING-CHAR    = ATOM-CHAR / resp-specials
_ASTRING_ATOM = re.compile(rb'[^(){ %*"\\\x00-\x1f\x7f-\xff]+')
#   tag             = 1*<any ASTRING-CHAR except "+">
TAG = re.compile(rb'[^(){ %*"\\+\x00-\x1f\x7f-\xff]+')
# An atom that stops at "[", so "BODY[1]" splits into name and section.
_ATOM_BEFORE_BRACKET = re.compile(rb'[^(){ %*"\\\[\]\x00-\x1f\x7f-\xff]+')
_DIGITS = re.compile(rb"[0-9]+")
# RFC 9051 §9:
#   quoted          = DQUOTE *QUOTED-CHAR DQUOTE
#   QUOTED-CHAR     = <any TEXT-CHAR except quoted-specials> /
#                     "\" quoted-specials / UTF8-2 / UTF8-3 / UTF8-4
#   TEXT-CHAR       = <any CHAR except CR and LF>
# Octets >= 0x80 pass unchecked (RFC 3501 allowed none, RFC 9051 allows UTF-8):
# text fields are decoded with surrogateescape, so nothing is lost.
_QUOTED = re.compile(rb'"((?:[^"\\\r\n\x00]|\\["\\])*)"')
_QUOTED_ESCAPE = re.compile(rb'\\(["\\])')
# Lenient atoms: anything up to a delimiter; "[...]" is kept whole so
# "BODY[HEADER.FIELDS (TO)]" stays one token in unknown responses.
_LENIENT_ATOM = re.compile(rb'(?:\[[^\]\r\n]*\]|[^ ()"\[\x00\r\n])+|\[')


class ImapSyntaxError(Exception):
    """A production did not match. Internal: the reader turns it into RemoteProtocolError.

    Args:
        pos: offset in the response where matching failed.
        message: what was expected (and found), without the offset.

    Attributes:
        rule: the ABNF rule being matched, with its RFC (``"RFC 9051 §9 sequence-set"``),
            when the caller knows it; the command parsers fill it in on the way up.
    """

    def __init__(self, pos: int, message: str) -> None:
        super().__init__(message)
        self.pos = pos
        self.message = message
        self.rule: str | None = None


@dataclass(frozen=True, slots=True)
class Literal:
    """Where a literal's octets sit inside the response (or command) bytes.

    A value, so events holding literal maps compare equal when their bytes do.

    Args:
        start: offset of the first octet.
        end: offset just past the last octet.
        binary: whether it was announced as literal8 (``~{n}``, RFC 3516).
    """

    start: int
    end: int
    binary: bool


class Cursor:
    """A position in one framed IMAP response, with a method per leaf production.

    Args:
        buf: the response bytes, literals inlined, without the final line terminator.
        literals: offset of each literal marker (its ``{``, or ``~`` for literal8)
            mapped to where its octets are.
        max_depth: how deeply parenthesised lists may nest.
        pos: where to start.
        noun: what ``buf`` holds, for messages (``"response"``, or ``"command"`` on
            the server side).
    """

    def __init__(
        self,
        buf: bytes,
        literals: Mapping[int, Literal],
        max_depth: int,
        pos: int = 0,
        *,
        noun: str = "response",
    ) -> None:
        self.buf = buf
        self.literals = literals
        self.max_depth = max_depth
        self.pos = pos
        self.depth = 0
        self.noun = noun

    # -- positioning -------------------------------------------------------

    def peek(self) -> int | None:
        """The next byte, or ``None`` at the end of the response."""
        return self.buf[self.pos] if self.pos < len(self.buf) else None

    def at_digit(self) -> bool:
        """Whether a DIGIT is next."""
        return 0x30 <= (self.peek() or 0) <= 0x39

    def at_end(self) -> bool:
        return self.pos >= len(self.buf)

    def fail(self, expected: str, pos: int | None = None) -> NoReturn:
        """Raise :class:`ImapSyntaxError`: ``expected`` was not found at ``pos``."""
        where = self.pos if pos is None else pos
        raise ImapSyntaxError(where, f"expected {expected}, found {self.describe(where)}")

    def describe(self, pos: int) -> str:
        if pos >= len(self.buf):
            return f"end of {self.noun}"
        return repr(self.buf[pos : pos + 12])

    def accept(self, byte: bytes) -> bool:
        """Consume ``byte`` (one byte) if it is next; say whether it was."""
        if self.buf.startswith(byte, self.pos):
            self.pos += 1
            return True
        return False

    def expect(self, byte: bytes, production: str | None = None) -> None:
        """Consume ``byte`` (one byte) or fail."""
        if not self.accept(byte):
            self.fail(production or repr(byte.decode("ascii")))

    def sp(self) -> None:
        """``SP``: exactly one space."""
        self.expect(b" ", "SP")

    def end(self) -> None:
        """The response (or command) must end here (``CRLF`` follows)."""
        if not self.at_end():
            self.fail(f"end of {self.noun} (CRLF)")

    def open_list(self) -> None:
        """``"("``, counting nesting depth against ``max_depth``."""
        self.expect(b"(", "'('")
        self.depth += 1
        if self.depth > self.max_depth:
            raise ImapSyntaxError(
                self.pos - 1, f"parenthesised lists nested deeper than max_depth={self.max_depth}"
            )

    def close_list(self) -> None:
        """``")"``, closing what :meth:`open_list` opened."""
        self.expect(b")", "')'")
        self.depth -= 1

    def match(self, pattern: re.Pattern[bytes], production: str) -> bytes:
        """Consume what ``pattern`` matches here (must be non-empty) or fail."""
        found = pattern.match(self.buf, self.pos)
        if found is None or found.end() == self.pos:
            self.fail(production)
        self.pos = found.end()
        return found.group()

    # -- leaf productions --------------------------------------------------

    def atom(self) -> str:
        """``atom = 1*ATOM-CHAR``."""
        return self.match(_ATOM, "atom").decode("ascii")

    def atom_before_bracket(self) -> str:
        """An ``atom`` that stops at ``[`` (a fetch attribute name before its section)."""
        return self.match(_ATOM_BEFORE_BRACKET, "atom").decode("ascii")

    def number(self, *, limit: int = MAX_NUMBER, nonzero: bool = False) -> int:
        """``number = 1*DIGIT`` (``nz-number`` with ``nonzero``; ``number64`` with its limit).

        RFC 9051 §9:
            nz-number = digit-nz *DIGIT ; Non-zero unsigned 32-bit integer
        """
        start = self.pos
        name = "nz-number" if nonzero else ("number64" if limit == MAX_NUMBER64 else "number")
        digits = self.match(_DIGITS, name)
        if nonzero and digits[0] == 0x30:
            self.fail(f"{name} (no leading zero, not 0)", start)
        if len(digits) > 20 or int(digits) > limit:
            raise ImapSyntaxError(start, f"{name} {digits[:25].decode()} is larger than {limit}")
        return int(digits)

    def nz_number(self) -> int:
        return self.number(nonzero=True)

    def number64(self) -> int:
        return self.number(limit=MAX_NUMBER64)

    def nil(self) -> None:
        """``nil = "NIL"`` (case-insensitive, as all ABNF literals)."""
        if self.buf[self.pos : self.pos + 3].upper() != b"NIL":
            self.fail("NIL")
        self.pos += 3

    def at_nil(self) -> bool:
        """Whether ``NIL`` (and not an atom that merely starts with it) is next."""
        if self.buf[self.pos : self.pos + 3].upper() != b"NIL":
            return False
        after = self.buf[self.pos + 3 : self.pos + 4]
        return not after or _ASTRING_ATOM.match(after) is None

    def quoted(self) -> bytes:
        """``quoted = DQUOTE *QUOTED-CHAR DQUOTE``, unescaped."""
        if self.peek() != 0x22:
            self.fail("quoted string")
        found = _QUOTED.match(self.buf, self.pos)
        if found is None:
            self._explain_bad_quoted()
        self.pos = found.end()
        return _QUOTED_ESCAPE.sub(rb"\1", found.group(1))

    def _explain_bad_quoted(self) -> NoReturn:
        pos = self.pos + 1
        while pos < len(self.buf):
            byte = self.buf[pos]
            if byte == 0x5C:
                if self.buf[pos + 1 : pos + 2] not in (b'"', b"\\"):
                    raise ImapSyntaxError(
                        pos,
                        "quoted string has '\\' before "
                        f"{self.describe(pos + 1)}; only '\\\"' and '\\\\' are escapes "
                        "(quoted-specials)",
                    )
                pos += 2
                continue
            if byte in (0x00, 0x0D, 0x0A):
                raise ImapSyntaxError(
                    pos, f"quoted string contains {bytes([byte])!r} (QUOTED-CHAR excludes it)"
                )
            pos += 1
        raise ImapSyntaxError(self.pos, "quoted string is not closed with '\"'")

    def literal(self, *, allow_literal8: bool = False) -> bytes:
        """``literal = "{" number64 "}" CRLF *CHAR8`` (and RFC 3516 ``literal8``).

        The octets were framed already; this checks the marker is one framing found.
        """
        found = self.literals.get(self.pos)
        if found is None:
            self.fail("a literal {n} at the end of a line")
        if found.binary and not allow_literal8:
            self.fail("literal or quoted string (literal8 ~{n} is only for BINARY[])")
        self.pos = found.end
        return self.buf[found.start : found.end]

    def string(self, *, allow_literal8: bool = False) -> bytes:
        """``string = quoted / literal``."""
        if self.peek() == 0x22:
            return self.quoted()
        if self.pos in self.literals:
            return self.literal(allow_literal8=allow_literal8)
        self.fail("string (quoted or literal)")

    def nstring(self, *, allow_literal8: bool = False) -> bytes | None:
        """``nstring = string / nil``."""
        if self.at_nil():
            self.nil()
            return None
        if self.peek() == 0x22 or self.pos in self.literals:
            return self.string(allow_literal8=allow_literal8)
        self.fail("nstring (quoted, literal or NIL)")

    def astring(self) -> str | bytes:
        """``astring = 1*ASTRING-CHAR / string``: str if bare, bytes if a string."""
        if self.peek() == 0x22 or self.pos in self.literals:
            return self.string()
        return self.match(_ASTRING_ATOM, "astring").decode("ascii")

    def flag(self) -> str:
        """``flag = flag-keyword / flag-extension`` (``"\\" atom`` or ``atom``).

        RFC 9051 §9:
            flag           = "\\Answered" / "\\Flagged" / "\\Deleted" /
                             "\\Seen" / "\\Draft" / flag-keyword / flag-extension
            flag-extension = "\\" atom
            flag-keyword   = "$MDNSent" / "$Forwarded" / "$Junk" /
                             "$NotJunk" / "$Phishing" / atom
        """
        if self.accept(b"\\"):
            return "\\" + self.atom()
        return self.atom()

    def value(self) -> ImapToken:
        """One generic value in a response whose shape RFC 9051 leaves open.

        Used for extension data inside strictly parsed responses
        (``tagged-ext-val``, ``body-extension``, unknown FETCH items): a list,
        string, NIL, number, flag or atom. Adjacent values need one SP.
        """
        byte = self.peek()
        if byte == 0x28:
            self.open_list()
            items: list[ImapToken] = []
            if self.peek() != 0x29:
                items.append(self.value())
                while self.accept(b" "):
                    items.append(self.value())
            self.close_list()
            return tuple(items)
        if byte == 0x22 or self.pos in self.literals:
            return self.string(allow_literal8=True)
        if self.at_nil():
            self.nil()
            return None
        if byte == 0x5C:
            self.pos += 1
            if self.accept(b"*"):
                return "\\*"
            return "\\" + self.atom()
        word = self.match(_ASTRING_ATOM, "a value (list, string, number or atom)")
        if word.isdigit() and len(word) <= 19:
            return int(word)
        return word.decode("ascii")


# -- lenient tokenizing, for responses whose grammar we do not know ------------


def lenient_tokens(cur: Cursor) -> tuple[ImapToken, ...]:
    """Tokenize the rest of the response without knowing its grammar.

    Values may be separated by any number of spaces, or by none next to
    parentheses (``* THREAD (2)(3 6)``). Raises :class:`ImapSyntaxError` only.
    """
    items: list[ImapToken] = []
    while True:
        while cur.accept(b" "):
            pass
        if cur.at_end():
            return tuple(items)
        items.append(_lenient_value(cur))


def _lenient_value(cur: Cursor) -> ImapToken:
    byte = cur.peek()
    if byte == 0x28:
        cur.open_list()
        items: list[ImapToken] = []
        while True:
            while cur.accept(b" "):
                pass
            if cur.accept(b")"):
                cur.depth -= 1
                return tuple(items)
            if cur.at_end():
                cur.fail("')'")
            items.append(_lenient_value(cur))
    if byte == 0x22:
        return _lenient_quoted(cur)
    if cur.pos in cur.literals:
        return cur.literal(allow_literal8=True)
    start = cur.pos
    found = _LENIENT_ATOM.match(cur.buf, start)
    if found is None:
        cur.fail("a value")
    end = found.end()
    # Stop before a literal marker that framing found inside the run.
    for offset in cur.literals:
        if start < offset < end:
            end = offset
    word = cur.buf[start:end]
    cur.pos = end
    if word.isdigit() and len(word) <= 19:
        return int(word)
    if word.upper() == b"NIL":
        return None
    return word.decode("utf-8", errors="surrogateescape")


def _lenient_quoted(cur: Cursor) -> bytes:
    out = bytearray()
    pos = cur.pos + 1
    buf = cur.buf
    while pos < len(buf):
        byte = buf[pos]
        if byte == 0x22:
            cur.pos = pos + 1
            return bytes(out)
        if byte == 0x5C and pos + 1 < len(buf):
            pos += 1
            byte = buf[pos]
        elif byte in (0x0D, 0x0A):
            break
        out.append(byte)
        pos += 1
    raise ImapSyntaxError(cur.pos, "quoted string is not closed with '\"'")
