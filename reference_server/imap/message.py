"""What IMAP FETCH and SEARCH need from a stored message (RFC 3501, RFC 9051).

Theory of operation
-------------------
A message is kept as the bytes stored (RFC 5322, CRLF line ends). Everything
here works on those bytes by offsets, so sizes and line counts are exact and
section contents are slices, never re-serialisations.

:meth:`ParsedMessage.parse` does the cheap part only: the top-level header
block is scanned once into a list of fields (name, offsets). ENVELOPE,
``BODY[HEADER]``, ``BODY[HEADER.FIELDS ...]``, SEARCH on header fields and
the sent date read nothing else. Bare LF line ends become CRLF (every one, as
the POP3 side counts them; IMAP serves messages with CRLF): at once when the
header has one, else when something first needs the body, so that the
header-only paths above never scan it. The MIME tree is built on first use
(BODY, BODYSTRUCTURE, part sections, SEARCH BODY and TEXT), again as offsets:
each entity has its header block, the offsets of its body, its Content-*
fields parsed, and either children (multipart), an encapsulated message
(message/rfc822, message/global) or nothing (a leaf).

Robustness: nothing here raises on any input. A header line that is neither a
field nor a continuation ends the header (the body starts there); an invalid
or missing Content-Type is ``text/plain; charset=us-ascii`` (RFC 2045 §5.2),
and so is a multipart without a boundary parameter; a multipart without any
part (no delimiter line) has one, its whole body with an empty MIME header;
a missing close delimiter ends the last part at the end of the enclosing body;
an encapsulated message is read as it stands even under a base64 or
quoted-printable Content-Transfer-Encoding (which RFC 2046 §5.2.1 forbids).
Nesting deeper than :data:`MAX_DEPTH` or more than :data:`MAX_PARTS` entities
make the multipart or message entity where a limit is hit a leaf of type
application/octet-stream, which keeps responses and recursion bounded (and
within the nesting a client parser accepts). Addresses are parsed by a tolerant tokenizer (see
:func:`_parse_addresses`), never by rejecting the header.

Output conventions (RFC 3501 §7.4.2 / RFC 9051 §7.5.2, and the ABNF of §9)
-------------------------------------------------------------------------
* Strings are quoted when every octet is 7-bit and neither CR, LF nor NUL
  (``"`` and ``\\`` are escaped) and the string is at most 1024 octets;
  otherwise a literal ``{n}CRLF...``. NUL octets (which no IMAP string may
  hold) are dropped from ENVELOPE and BODYSTRUCTURE strings.
* BODYSTRUCTURE spells media type, subtype, parameter names, transfer
  encoding, disposition type and disposition parameter names in upper case,
  as the RFC examples do; parameter values, ids, descriptions, languages and
  locations are as given in the message.
* ENVELOPE strings are the header values as stored: unfolded, leading and
  trailing white space removed, encoded-words not decoded. Names, group names
  and local parts are unquoted (``"Gray, Terry"`` gives ``Gray, Terry``); a
  name missing in front of an address is taken from a comment after it
  (``gray@example.org (Terry Gray)``). A mailbox without ``@`` has host ``""``
  (never NIL, which would mark a group).
* ``body-fld-lines`` counts the part's lines: its LFs, plus one for a last
  line with no line end (the CRLF before a boundary belongs to the boundary,
  RFC 2046 §5.1.1, so a part's last line usually has none).
* ``body-fld-md5`` is the Content-MD5 field when present, else NIL;
  ``body-fld-lang`` is a list (``("en" "de")``) or NIL.
* message/rfc822 and message/global (RFC 6532) are encapsulated messages:
  their structure has ``envelope body lines`` and their part numbers go on
  into the message, as RFC 9051 §6.4.5 and §9 (``media-message``) have it.
  (RFC 3501 knew only message/rfc822; a message/global part written as a
  basic part would break RFC 9051 parsers, this harness's included.)
"""

from __future__ import annotations

import binascii
import codecs
import re
from dataclasses import dataclass
from datetime import date
from email.utils import parsedate_tz

from conformance.wire import to_crlf

__all__ = ["MAX_DEPTH", "MAX_PARTS", "SECTION_TEXTS", "ParsedMessage", "Section", "partial"]

MAX_DEPTH = 40
"""Multipart and encapsulated-message nesting beyond this depth is not parsed (a leaf)."""

MAX_PARTS = 5000
"""A multipart that would take the message past this many MIME entities is a leaf."""

SECTION_TEXTS = frozenset({"HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT", "MIME"})
"""The values :attr:`Section.text` may take besides ``None`` (RFC 3501 §6.4.5)."""

_MAX_QUOTED = 1024
_NIL = b"NIL"


# -- the section spec --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Section:
    """A ``section-spec`` of ``BODY[<section>]`` (RFC 3501 §6.4.5, RFC 9051 §6.4.5).

    Attributes:
        part: the part numbers, each >= 1: ``()`` for the whole message,
            ``(1, 2)`` for ``1.2``.
        text: ``None`` (the part's content, or the whole message when ``part``
            is empty), or one of :data:`SECTION_TEXTS`: ``"HEADER"``,
            ``"HEADER.FIELDS"``, ``"HEADER.FIELDS.NOT"``, ``"TEXT"``, ``"MIME"``
            (case-insensitive; ``"MIME"`` needs a part number).
        fields: the header field names of HEADER.FIELDS and HEADER.FIELDS.NOT
            (matched case-insensitively); ignored otherwise.

    Examples: ``BODY[]`` is ``Section()``, ``BODY[HEADER.FIELDS (From To)]`` is
    ``Section(text="HEADER.FIELDS", fields=("From", "To"))``, ``BODY[1.2.MIME]``
    is ``Section((1, 2), "MIME")``, ``BODY[3.TEXT]`` is ``Section((3,), "TEXT")``.
    """

    part: tuple[int, ...] = ()
    text: str | None = None
    fields: tuple[str, ...] = ()


def partial(data: bytes, origin: int, count: int) -> bytes:
    """The ``<origin.count>`` substring of a section (RFC 3501 §6.4.5).

    Octets from ``origin`` on, at most ``count`` of them: empty when ``origin``
    is at or beyond the end, truncated when the range runs past it. Negative
    arguments count as 0.
    """
    origin = max(origin, 0)
    return data[origin : origin + max(count, 0)]


# -- IMAP strings -----------------------------------------------------------

# TEXT-CHAR of RFC 3501 §9 (CHAR except CR and LF), without NUL; and without
# the quoted-specials, which need no escaping.
_QUOTABLE = re.compile(rb"[\x01-\x09\x0b\x0c\x0e-\x7f]*")
_PLAIN = re.compile(rb"[\x01-\x09\x0b\x0c\x0e-\x21\x23-\x5b\x5d-\x7f]*")


def _string(value: bytes) -> bytes:
    """``string``: quoted when it can be (escaping ``"`` and ``\\``), else a literal."""
    if len(value) <= _MAX_QUOTED and _PLAIN.fullmatch(value) is not None:
        return b'"' + value + b'"'
    if b"\x00" in value:
        value = value.replace(b"\x00", b"")
    if len(value) <= _MAX_QUOTED and _QUOTABLE.fullmatch(value) is not None:
        if b"\\" in value or b'"' in value:
            value = value.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
        return b'"' + value + b'"'
    return b"{%d}\r\n" % len(value) + value


def _nstring(value: bytes | None) -> bytes:
    return _NIL if value is None else _string(value)


# -- header blocks ----------------------------------------------------------

# One field: a name (RFC 5322 ftext, obsolete white space before the colon
# allowed), the colon, the value with its continuation lines, the line end.
_FIELD = re.compile(rb"([!-9;-~]+)[ \t]*:([^\n]*(?:\n[ \t][^\n]*)*)(?:\n|\Z)")
_Field = tuple[bytes, int, int, int]  # lower-case name, field start, value start, field end


class _Header:
    """A header block at ``data[start:body_start]``, scanned into fields.

    Attributes:
        fields: (lower-case name, field start, value start, field end) in order;
            a field's bytes run from its start to its end (line end included).
        body_start: where the body begins (after the blank line, if any).
        blank: whether the header ended with a blank line.
    """

    __slots__ = ("_first", "blank", "body_start", "data", "fields", "start")

    def __init__(self, data: bytes, start: int, end: int) -> None:
        self.data = data
        self.start = start
        pos = start
        fields: list[_Field] = []
        match = _FIELD.match
        while (found := match(data, pos, end)) is not None:
            fields.append((found.group(1).lower(), pos, found.start(2), found.end()))
            pos = found.end()
        self.fields = fields
        if data.startswith(b"\r\n", pos, end):
            self.body_start, self.blank = pos + 2, True
        elif data.startswith(b"\n", pos, end):
            self.body_start, self.blank = pos + 1, True
        else:
            # The end, or a line that is no field (nor the continuation of
            # one): the body starts right there.
            self.body_start, self.blank = min(pos, end), False
        self._first: dict[bytes, _Field] | None = None

    def first(self, name: bytes) -> bytes | None:
        """The first ``name`` field's value, unfolded and stripped; ``None`` if absent."""
        index = self._first
        if index is None:
            index = {}
            for entry in self.fields:
                if entry[0] not in index:
                    index[entry[0]] = entry
            self._first = index
        field = index.get(name)
        if field is None:
            return None
        return _unfold(self.data[field[2] : field[3]])

    def values(self, name: bytes) -> list[bytes]:
        """Every ``name`` field's value, unfolded and stripped, in order."""
        return [_unfold(self.data[f[2] : f[3]]) for f in self.fields if f[0] == name]

    def block(self) -> bytes:
        """The header block as stored, blank line included when there is one."""
        return self.data[self.start : self.body_start]


def _unfold(value: bytes) -> bytes:
    # RFC 5322 §2.2.3: unfolding removes each CRLF that precedes white space.
    if b"\n" in value:
        value = value.replace(b"\r\n", b"").replace(b"\n", b"")
    return value.strip(b" \t\r")


# -- addresses (ENVELOPE) ------------------------------------------------------

_WORD, _QUOTED, _DOMAIN_LITERAL, _SPECIAL, _COMMENT = range(5)
_ADDRESS_TOKEN = re.compile(
    rb"""
      (?P<ws>[ \t\r\n]+)
    | "(?P<quoted>(?:[^"\\]|\\.)*)(?:"|\\?\Z)
    | (?P<literal>\[(?:[^\[\]\\]|\\.)*(?:\]|\\?\Z))
    | (?P<special>[<>@,;:.])
    | (?P<comment>\()
    | (?P<atom>[^ \t\r\n"\[()<>@,;:.\\]+)
    | (?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)
_ESCAPE = re.compile(rb"\\(.)", re.DOTALL)
_ROUTE_UNKNOWN, _ROUTE_OPEN, _ROUTE_NONE = range(3)
_Token = tuple[int, bytes, bool]  # kind, text (unquoted), white space or comment before it
_Address = tuple[bytes | None, bytes | None, bytes | None, bytes | None]


def _unescape(text: bytes) -> bytes:
    return _ESCAPE.sub(rb"\1", text) if b"\\" in text else text


def _tokenize_addresses(raw: bytes) -> list[_Token]:
    """RFC 5322 §3.2 lexical tokens; unterminated quotes and comments run to the end."""
    tokens: list[_Token] = []
    space = False
    pos = 0
    end = len(raw)
    match = _ADDRESS_TOKEN.match
    while pos < end:
        found = match(raw, pos)
        if found is None:  # pragma: no cover - "other" matches any octet
            break
        kind = found.lastgroup
        text = found.group()
        pos = found.end()
        if kind == "ws":
            space = True
        elif kind == "quoted":
            tokens.append((_QUOTED, _unescape(found.group("quoted")), space))
            space = False
        elif kind == "literal":
            tokens.append((_DOMAIN_LITERAL, text, space))
            space = False
        elif kind == "special":
            tokens.append((_SPECIAL, text, space))
            space = False
        elif kind == "comment":
            depth = 1
            start = pos
            while pos < end and depth:
                byte = raw[pos]
                if byte == 0x5C:
                    pos += 1
                elif byte == 0x28:
                    depth += 1
                elif byte == 0x29:
                    depth -= 1
                pos += 1
            inner = raw[start : pos - 1] if depth == 0 else raw[start:pos]
            tokens.append((_COMMENT, _unescape(inner).strip(b" \t\r\n"), space))
            space = True
        else:
            tokens.append((_WORD, text, space))
            space = False
    return tokens


def _is_word(token: _Token) -> bool:
    return token[0] in (_WORD, _QUOTED, _DOMAIN_LITERAL)


def _phrase(tokens: list[_Token]) -> bytes | None:
    """A display name: its words unquoted, one space where the header had white space."""
    out = bytearray()
    for kind, text, space in tokens:
        if kind == _COMMENT:
            continue
        if space and out:
            out += b" "
        out += text
    return bytes(out) if out else None


def _compact(tokens: list[_Token]) -> bytes:
    """A local part or domain: its words unquoted and joined, white space dropped."""
    return b"".join(text for kind, text, _ in tokens if kind != _COMMENT)


def _dot_run(tokens: list[_Token], start: int, stop: int, step: int) -> int:
    """How far a run of dot-separated words goes from ``start`` (exclusive end index)."""
    pos = start
    previous: _Token | None = None
    while pos != stop:
        token = tokens[pos]
        if token[0] == _COMMENT:
            pos += step
            continue
        if not (_is_word(token) or token[1] == b"."):
            break
        if previous is not None and _is_word(token) and _is_word(previous):
            break  # two words in a row: the run ends between them
        previous = token
        pos += step
    return pos


def _addr_spec(tokens: list[_Token]) -> tuple[bytes, bytes, list[_Token]]:
    """Split ``local@domain`` out of ``tokens``: (mailbox, host, the tokens before it).

    The local part and the domain are the dot-separated runs of words on
    either side of the last ``@``; words beyond them are not part of the address.
    """
    at = -1
    for index in range(len(tokens) - 1, -1, -1):
        if tokens[index][:2] == (_SPECIAL, b"@"):
            at = index
            break
    if at < 0:
        return _phrase(tokens) or b"", b"", []
    local_start = _dot_run(tokens, at - 1, -1, -1) + 1
    domain_end = _dot_run(tokens, at + 1, len(tokens), 1)
    return (
        _compact(tokens[local_start:at]),
        _compact(tokens[at + 1 : domain_end]),
        tokens[:local_start],
    )


def _first_comment(tokens: list[_Token]) -> bytes | None:
    for kind, text, _ in tokens:
        if kind == _COMMENT and text:
            return text
    return None


def _angle_address(
    name_tokens: list[_Token], inside: list[_Token], after: list[_Token]
) -> _Address | None:
    adl: bytes | None = None
    words = [t for t in inside if t[0] != _COMMENT]
    if words and words[0][1] == b"@" and words[0][0] == _SPECIAL:
        # obs-route: "@a.example,@b.example:" before the addr-spec.
        for index, token in enumerate(words):
            if token[:2] == (_SPECIAL, b":"):
                adl = _compact(words[:index]) or None
                words = words[index + 1 :]
                break
    mailbox, host, _ = _addr_spec(words)
    name = _phrase(name_tokens) or _first_comment(inside + after)
    if name is None and not mailbox and not host:
        return None
    return (name, adl, mailbox, host)


def _plain_address(tokens: list[_Token]) -> _Address | None:
    mailbox, host, before = _addr_spec(tokens)
    name = _phrase(before) or _first_comment(tokens)
    if not mailbox and not host:
        return None if name is None else (name, None, b"", b"")
    return (name, None, mailbox, host)


# The usual shapes, ``local@domain``, ``Name Words <local@domain>`` and
# ``"Quoted Name" <local@domain>``, read by one expression; with the same
# results as the general parser below, which takes everything else.
_ATEXT = rb'[^\x00-\x20\x7f()<>\[\]:;@\\,."]+'
_DOT_ATOM = _ATEXT + rb"(?:\." + _ATEXT + rb")*"
_SIMPLE_ADDRESS = re.compile(
    rb"[ \t]*(?:"
    rb'(?:"((?:[^"\\\r\n]|\\[^\r\n])*)"[ \t]*|(' + _ATEXT + rb"(?:[ \t]+" + _ATEXT + rb")*)[ \t]*)?"
    rb"<(" + _DOT_ATOM + rb")@(" + _DOT_ATOM + rb")>"
    rb"|(" + _DOT_ATOM + rb")@(" + _DOT_ATOM + rb"))"
    rb"[ \t]*(?:,|\Z)"
)
_BLANKS = re.compile(rb"[ \t]+")


def _parse_addresses(raw: bytes) -> list[_Address]:
    """An address-list (RFC 5322 §3.4) as IMAP address structures, group markers included.

    Common shapes take a fast path; see :func:`_parse_addresses_general`.
    """
    out: list[_Address] = []
    pos = 0
    end = len(raw)
    match = _SIMPLE_ADDRESS.match
    while pos < end:
        found = match(raw, pos)
        if found is None:
            return _parse_addresses_general(raw)
        quoted, words, local, domain, bare_local, bare_domain = found.groups()
        if local is None:
            out.append((None, None, bare_local, bare_domain))
        else:
            if quoted is not None:
                name: bytes | None = _unescape(quoted) or None
            elif words is not None:
                name = _BLANKS.sub(b" ", words)
            else:
                name = None
            out.append((name, None, local, domain))
        pos = found.end()
    return out


def _parse_addresses_general(raw: bytes) -> list[_Address]:
    """An address-list (RFC 5322 §3.4) as IMAP address structures, group markers included.

    Tolerant: what is between commas becomes one address, however malformed:
    ``Name <addr>`` (``>`` optional), ``addr (comment)``, a bare word (a
    mailbox with host ``""``), a group ``name: ...;`` (``;`` optional). Junk
    that yields neither name nor mailbox is dropped.
    """
    tokens = _tokenize_addresses(raw)
    out: list[_Address] = []
    in_group = False
    current: list[_Token] = []  # outside the angle brackets
    inside: list[_Token] | None = None  # the angle brackets' contents, once seen
    after: list[_Token] = []  # after the closing ">"

    def finish() -> None:
        nonlocal inside, current, after
        address = (
            _plain_address(current) if inside is None else _angle_address(current, inside, after)
        )
        if address is not None:
            out.append(address)
        current, inside, after = [], None, []

    index = 0
    count = len(tokens)
    while index < count:
        token = tokens[index]
        index += 1
        kind, text, _ = token
        if kind != _SPECIAL:
            (current if inside is None else after).append(token)
            continue
        if text == b"<":
            if inside is not None:
                finish()
            inside = []
            # A "," inside the brackets belongs to an obs-route ("@a,@b:") while
            # one is open; anywhere else it means the ">" is missing.
            route = _ROUTE_UNKNOWN
            while index < count:
                token = tokens[index]
                kind, text = token[0], token[1]
                if kind == _SPECIAL:
                    if text == b">":
                        index += 1
                        break
                    if text in (b";", b"<") or (text == b"," and route != _ROUTE_OPEN):
                        break
                    if route == _ROUTE_UNKNOWN:
                        route = _ROUTE_OPEN if text == b"@" else _ROUTE_NONE
                    elif route == _ROUTE_OPEN and text == b":":
                        route = _ROUTE_NONE
                elif kind != _COMMENT and route == _ROUTE_UNKNOWN:
                    route = _ROUTE_NONE
                inside.append(token)
                index += 1
        elif text == b",":
            finish()
        elif text == b";":
            finish()
            if in_group:
                out.append((None, None, None, None))
                in_group = False
        elif text == b":" and not in_group and inside is None:
            out.append((None, None, _phrase(current) or b"", None))
            current = []
            in_group = True
        elif text != b">":
            (current if inside is None else after).append(token)
    finish()
    if in_group:
        out.append((None, None, None, None))
    return out


def _address_list(raw: bytes | None) -> bytes | None:
    """``"(" 1*address ")"``, or ``None`` when the field is absent or holds no address."""
    if raw is None:
        return None
    addresses = _parse_addresses(raw)
    if not addresses:
        return None
    return (
        b"("
        + b"".join(
            b"(%b %b %b %b)" % (_nstring(n), _nstring(a), _nstring(m), _nstring(h))
            for n, a, m, h in addresses
        )
        + b")"
    )


def _envelope(header: _Header) -> bytes:
    """The ENVELOPE structure of a header block (RFC 3501 §7.4.2)."""
    get = header.first
    from_ = _address_list(get(b"from"))
    return b"(%b %b %b %b %b %b %b %b %b %b)" % (
        _nstring(get(b"date")),
        _nstring(get(b"subject")),
        from_ or _NIL,
        _address_list(get(b"sender")) or from_ or _NIL,
        _address_list(get(b"reply-to")) or from_ or _NIL,
        _address_list(get(b"to")) or _NIL,
        _address_list(get(b"cc")) or _NIL,
        _address_list(get(b"bcc")) or _NIL,
        _nstring(get(b"in-reply-to")),
        _nstring(get(b"message-id")),
    )


# -- MIME fields -------------------------------------------------------------

# RFC 2045 §5.1 token: CHAR except SPACE, CTLs and tspecials.
_TOKEN = rb"[^\x00-\x20()<>@,;:\\\"/\[\]?=\x7f-\xff]+"
_MEDIA_TYPE = re.compile(rb"[ \t]*(" + _TOKEN + rb")[ \t]*/[ \t]*(" + _TOKEN + rb")")
_LEADING_TOKEN = re.compile(rb"[ \t]*(" + _TOKEN + rb")")
_PARAMETER = re.compile(
    rb';[ \t]*([^\s=;"]+)[ \t]*=[ \t]*(?:"((?:[^"\\]|\\.)*)(?:"|\\?\Z)|([^;]*))', re.DOTALL
)
_LANGUAGE_TAG = re.compile(rb"[^\s,]+")
_Params = list[tuple[bytes, bytes]]  # upper-case name, value
_DEFAULT_PARAMS: _Params = [(b"CHARSET", b"US-ASCII")]


def _strip_comments(value: bytes) -> bytes:
    """Remove RFC 822 comments (outside quoted strings) from a MIME field value."""
    if b"(" not in value:
        return value
    out = bytearray()
    depth = 0
    quoted = False
    pos = 0
    while pos < len(value):
        byte = value[pos]
        if byte == 0x5C and (quoted or depth):
            if not depth:
                out += value[pos : pos + 2]
            pos += 2
            continue
        if depth:
            depth += (byte == 0x28) - (byte == 0x29)
        elif byte == 0x22:
            quoted = not quoted
            out.append(byte)
        elif byte == 0x28 and not quoted:
            depth = 1
        else:
            out.append(byte)
        pos += 1
    return bytes(out)


def _parameters(value: bytes) -> _Params:
    params: _Params = []
    seen: set[bytes] = set()
    for found in _PARAMETER.finditer(value):
        name = found.group(1).upper()
        quoted = found.group(2)
        raw = _unescape(quoted) if quoted is not None else found.group(3).strip(b" \t\r\n")
        if name not in seen:
            seen.add(name)
            params.append((name, raw))
    return params


def _params_field(params: _Params) -> bytes:
    if not params:
        return _NIL
    return b"(" + b" ".join(_string(n) + b" " + _string(v) for n, v in params) + b")"


def _param(params: _Params, name: bytes) -> bytes | None:
    for key, value in params:
        if key == name:
            return value
    return None


# -- the MIME tree -----------------------------------------------------------


class _Budget:
    __slots__ = ("left",)

    def __init__(self) -> None:
        self.left = MAX_PARTS


class _Entity:
    """One MIME entity: its header block, its body, and what it contains.

    Attributes:
        header: the entity's header (the MIME header of a part; the message
            header of a message).
        start, end: the body's offsets.
        media_type, subtype, params: from Content-Type, upper-case names.
        children: the parts of a multipart, else ``None``.
        message: the encapsulated message of a message/rfc822 or message/global,
            else ``None``.
    """

    __slots__ = ("children", "end", "header", "media_type", "message", "params", "start", "subtype")

    def __init__(
        self,
        data: bytes,
        header: _Header,
        end: int,
        depth: int,
        budget: _Budget,
        in_digest: bool = False,
    ) -> None:
        self.header = header
        self.start = header.body_start
        self.end = end
        self.children: list[_Entity] | None = None
        self.message: _Entity | None = None
        budget.left -= 1
        self.media_type, self.subtype, self.params = _content_type(header, in_digest)
        if self.media_type == b"MULTIPART":
            boundary = _param(self.params, b"BOUNDARY")
            if not boundary:  # RFC 2046 §5.1.1: required; without it the field is invalid
                self.media_type, self.subtype, self.params = b"TEXT", b"PLAIN", _DEFAULT_PARAMS
                return
            if depth >= MAX_DEPTH or budget.left <= 0:
                self._overflow()
                return
            ranges = _split_multipart(data, self.start, end, boundary)
            if len(ranges) > budget.left:
                self._overflow()
                return
            digest = self.subtype == b"DIGEST"
            self.children = [
                _Entity(data, _Header(data, s, e), e, depth + 1, budget, digest) for s, e in ranges
            ]
        elif self.media_type == b"MESSAGE" and self.subtype in (b"RFC822", b"GLOBAL"):
            if depth >= MAX_DEPTH or budget.left <= 0:
                self._overflow()
                return
            self.message = _Entity(data, _Header(data, self.start, end), end, depth + 1, budget)

    def _overflow(self) -> None:
        self.media_type, self.subtype, self.params = b"APPLICATION", b"OCTET-STREAM", []

    def encoding(self) -> bytes:
        value = self.header.first(b"content-transfer-encoding")
        found = _LEADING_TOKEN.match(value) if value is not None else None
        return found.group(1).upper() if found is not None else b"7BIT"


def _content_type(header: _Header, in_digest: bool) -> tuple[bytes, bytes, _Params]:
    value = header.first(b"content-type")
    if value is None:
        if in_digest:  # RFC 2046 §5.1.5
            return b"MESSAGE", b"RFC822", []
        return b"TEXT", b"PLAIN", _DEFAULT_PARAMS
    value = _strip_comments(value)
    found = _MEDIA_TYPE.match(value)
    if found is None:  # RFC 2045 §5.2: an invalid Content-Type means the default
        return b"TEXT", b"PLAIN", _DEFAULT_PARAMS
    return found.group(1).upper(), found.group(2).upper(), _parameters(value[found.end() :])


def _split_multipart(data: bytes, start: int, end: int, boundary: bytes) -> list[tuple[int, int]]:
    """The (start, end) of each body part between the delimiter lines (RFC 2046 §5.1.1).

    A delimiter line is ``--boundary`` (``--boundary--`` for the last) at the
    start of a line, followed by nothing but white space. The line end before
    it belongs to it, not to the part. A body without parts (no delimiter,
    or a close delimiter first) is taken as one part: the whole body, with an
    empty header, so that BODYSTRUCTURE keeps its ``1*body``.
    """
    delimiter = b"--" + boundary
    parts: list[tuple[int, int]] = []
    part_start: int | None = None
    pos = start
    while True:
        at = data.find(delimiter, pos, end)
        if at < 0:
            break
        pos = at + 1
        if at != start and data[at - 1] != 0x0A:
            continue
        after = at + len(delimiter)
        close = data.startswith(b"--", after, end)
        if close:
            after += 2
        while after < end and data[after] in (0x20, 0x09):
            after += 1
        if after < end:
            if data.startswith(b"\r\n", after, end):
                after += 2
            elif data[after] == 0x0A:
                after += 1
            else:
                continue  # "--boundary" followed by more text: not a delimiter
        if part_start is not None:
            part_end = at
            if at - 2 >= part_start and data.startswith(b"\r\n", at - 2):
                part_end = at - 2
            elif at - 1 >= part_start and data[at - 1] == 0x0A:
                part_end = at - 1
            parts.append((part_start, part_end))
        if close:
            part_start = None
            break
        part_start = pos = after
    if part_start is not None:
        parts.append((part_start, end))
    return parts or [(start, end)]


def _count_lines(data: bytes, start: int, end: int) -> int:
    lines = data.count(b"\n", start, end)
    if end > start and data[end - 1] != 0x0A:
        lines += 1
    return lines


def _body_structure(data: bytes, entity: _Entity, extended: bool) -> bytes:
    """``body`` (RFC 3501 §9): the BODY (basic) or BODYSTRUCTURE (extended) of an entity."""
    header = entity.header
    if entity.children is not None:
        out = (
            b"("
            + b"".join(_body_structure(data, child, extended) for child in entity.children)
            + b" "
            + _string(entity.subtype)
        )
        if extended:
            out += b" " + _params_field(entity.params) + b" " + _extension_tail(header)
        return out + b")"
    fields = [
        _string(entity.media_type),
        _string(entity.subtype),
        _params_field(entity.params),
        _nstring(header.first(b"content-id")),
        _nstring(header.first(b"content-description")),
        _string(entity.encoding()),
        b"%d" % (entity.end - entity.start),
    ]
    if entity.message is not None:
        fields.append(_envelope(entity.message.header))
        fields.append(_body_structure(data, entity.message, extended))
        fields.append(b"%d" % _count_lines(data, entity.start, entity.end))
    elif entity.media_type == b"TEXT":
        fields.append(b"%d" % _count_lines(data, entity.start, entity.end))
    if extended:
        fields.append(_nstring(header.first(b"content-md5")))
        fields.append(_extension_tail(header))
    return b"(" + b" ".join(fields) + b")"


def _extension_tail(header: _Header) -> bytes:
    """``body-fld-dsp SP body-fld-lang SP body-fld-loc``."""
    disposition = _NIL
    value = header.first(b"content-disposition")
    if value is not None:
        value = _strip_comments(value)
        found = _LEADING_TOKEN.match(value)
        if found is not None:
            params = _parameters(value[found.end() :])
            disposition = (
                b"(" + _string(found.group(1).upper()) + b" " + _params_field(params) + b")"
            )
    language = _NIL
    value = header.first(b"content-language")
    if value is not None:
        tags = _LANGUAGE_TAG.findall(_strip_comments(value))
        if tags:
            language = b"(" + b" ".join(_string(tag) for tag in tags) + b")"
    return disposition + b" " + language + b" " + _nstring(header.first(b"content-location"))


# -- decoding, for SEARCH ------------------------------------------------------

_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")
_SPACE_ONLY = re.compile(r"[ \t\r\n]*")
_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/]")
_BASE64_WORD = re.compile(rb"[A-Za-z0-9+/]*={0,2}")
_FOLD = re.compile(rb"\r?\n(?=[ \t])")
_ASCII_NAMES = frozenset({"us-ascii", "ascii", "ansi_x3.4-1968", "iso646-us", "us"})


def _text(data: bytes) -> str:
    """Raw octets as text: UTF-8 if they are, else Latin-1 (which never fails)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _decode_charset(data: bytes, charset: str | None) -> str:
    """``data`` in ``charset``, or as :func:`_text` when that is unknown or plain ASCII."""
    if charset is not None and charset.strip().lower() not in _ASCII_NAMES:
        try:
            return data.decode(charset.strip(), errors="replace")
        except Exception:  # unknown or non-text codecs raise LookupError, ValueError, ...
            pass
    return _text(data)


def _decode_word(found: re.Match[str]) -> str | None:
    charset = found.group(1).split("*", 1)[0]  # RFC 2231 §5: charset*language
    try:
        payload = found.group(3).encode("ascii")
    except UnicodeEncodeError:
        return None
    if found.group(2) in "bB":
        if _BASE64_WORD.fullmatch(payload) is None:
            return None
        raw = _base64(payload)
        if raw is None:
            return None
    else:
        raw = binascii.a2b_qp(payload, header=True)
    try:
        codecs.lookup(charset)
    except Exception:
        return None
    return _decode_charset(raw, charset)


def _decode_words(text: str) -> str:
    """Decode RFC 2047 encoded-words; white space between two of them goes (§6.2)."""
    if "=?" not in text:
        return text
    out: list[str] = []
    pos = 0
    after_word = False
    for found in _ENCODED_WORD.finditer(text):
        between = text[pos : found.start()]
        if not (after_word and _SPACE_ONLY.fullmatch(between)):
            out.append(between)
        decoded = _decode_word(found)
        after_word = decoded is not None
        out.append(found.group() if decoded is None else decoded)
        pos = found.end()
    out.append(text[pos:])
    return "".join(out)


def _base64(data: bytes) -> bytes | None:
    try:
        return binascii.a2b_base64(data)
    except binascii.Error:
        pass
    cleaned = _NOT_BASE64.sub(b"", data)
    if len(cleaned) % 4 == 1:  # one stray character can never decode
        cleaned = cleaned[:-1]
    cleaned += b"=" * (-len(cleaned) % 4)
    try:
        return binascii.a2b_base64(cleaned)
    except binascii.Error:
        return None


def _decoded_body(data: bytes, entity: _Entity) -> str:
    """A leaf's content: transfer encoding and (for text) charset decoded, best effort."""
    body = data[entity.start : entity.end]
    encoding = entity.encoding()
    if encoding == b"BASE64":
        body = _base64(body) or body
    elif encoding == b"QUOTED-PRINTABLE":
        body = binascii.a2b_qp(body)
    charset: str | None = None
    if entity.media_type == b"TEXT":
        value = _param(entity.params, b"CHARSET")
        if value is not None:
            charset = value.decode("ascii", errors="replace")
    return _decode_charset(body, charset)


def _header_text(header: _Header) -> str:
    """A header block as searchable text: unfolded, encoded-words decoded."""
    return _decode_words(_text(_FOLD.sub(b"", header.block())))


def _contains(data: bytes, entity: _Entity, needle: str) -> bool:
    if entity.children is not None:
        return any(_contains(data, child, needle) for child in entity.children)
    if entity.message is not None:
        inner = entity.message
        return needle in _header_text(inner.header).casefold() or _contains(data, inner, needle)
    return needle in _decoded_body(data, entity).casefold()


# -- dates ---------------------------------------------------------------------

_MONTHS = {
    m: i
    for i, m in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1
    )
}
_DATE = re.compile(
    rb"(?<![0-9])([0-9]{1,2})[ \t-]+([A-Za-z]{3})[A-Za-z]*\.?[ \t-]+([0-9]{2,4})(?![0-9])"
)


def _sent_date(value: bytes) -> date | None:
    found = _DATE.search(value)
    if found is not None:
        day = int(found.group(1))
        month = _MONTHS.get(found.group(2).lower().decode("ascii"))
        year = int(found.group(3))
        if len(found.group(3)) == 2:  # RFC 5322 §4.3
            year += 2000 if year < 50 else 1900
        elif len(found.group(3)) == 3:
            year += 1900
    else:
        try:
            parsed = parsedate_tz(value.decode("latin-1"))
        except Exception:  # the obsolete-syntax parser has raised on odd input before
            parsed = None
        if parsed is None:
            return None
        year, month, day = parsed[0], parsed[1], parsed[2]
    if month is None:
        return None
    try:
        return date(year, month, day)
    except (ValueError, OverflowError):
        return None


# -- the message -------------------------------------------------------------


def _has_bare_lf(data: bytes, start: int, end: int) -> bool:
    return data.count(b"\n", start, end) != data.count(b"\r\n", start, end)


def _name(name: str) -> bytes:
    return name.encode("utf-8", errors="replace").lower()


class ParsedMessage:
    """A stored message, parsed lazily for FETCH and SEARCH.

    Build it with :meth:`parse`. Nothing raises, whatever the bytes; results are
    cached, so one object can serve several FETCH items.
    """

    __slots__ = ("_body", "_bodystructure", "_data", "_envelope", "_header", "_lf_checked", "_tree")

    def __init__(self, data: bytes, *, crlf: bool = False) -> None:
        # Line ends: a header with a bare LF makes the whole message CRLF now;
        # otherwise the body is checked only when something needs it (see
        # _full), so that ENVELOPE and header fetches read the header only.
        # ``crlf``: the caller knows there is no bare LF (no scan at all).
        data = bytes(data)
        header = _Header(data, 0, len(data))
        self._lf_checked = crlf or _has_bare_lf(data, 0, header.body_start)
        if self._lf_checked and not crlf:
            data = to_crlf(data)
            header = _Header(data, 0, len(data))
        self._data = data
        self._header = header
        self._tree: _Entity | None = None
        self._envelope: bytes | None = None
        self._body: bytes | None = None
        self._bodystructure: bytes | None = None

    @classmethod
    def parse(cls, data: bytes, *, crlf: bool = False) -> ParsedMessage:
        """Parse ``data`` (the message as stored): line ends and the header block only.

        ``crlf=True`` says the caller knows the message has no bare LF (its
        length equals its RFC822.SIZE, say), which saves two scans of it.
        """
        return cls(data, crlf=crlf)

    @property
    def data(self) -> bytes:
        """The message as IMAP serves it (``BODY[]``): the stored bytes, bare LFs made CRLF."""
        return self._full()

    @property
    def size(self) -> int:
        """``RFC822.SIZE``: the octets of :attr:`data`."""
        return len(self._full())

    def _full(self) -> bytes:
        """The whole message with CRLF line ends (the header is CRLF already)."""
        if not self._lf_checked:
            self._lf_checked = True
            data = self._data
            start = self._header.body_start
            if _has_bare_lf(data, start, len(data)):
                self._data = self._header.data = data[:start] + to_crlf(data[start:])
        return self._data

    def _root(self) -> _Entity:
        if self._tree is None:
            data = self._full()
            self._tree = _Entity(data, self._header, len(data), 0, _Budget())
        return self._tree

    # -- FETCH -------------------------------------------------------------

    def envelope(self) -> bytes:
        """The ``envelope`` of FETCH ENVELOPE: ``(date subject from ... message-id)``."""
        if self._envelope is None:
            self._envelope = _envelope(self._header)
        return self._envelope

    def bodystructure(self, extended: bool) -> bytes:
        """The ``body`` of FETCH BODY (``extended=False``) or BODYSTRUCTURE (``True``)."""
        cached = self._bodystructure if extended else self._body
        if cached is None:
            cached = _body_structure(self._full(), self._root(), extended)
            if extended:
                self._bodystructure = cached
            else:
                self._body = cached
        return cached

    def section(self, spec: Section) -> bytes | None:
        """The contents of ``BODY[<spec>]`` (RFC 3501 §6.4.5), before any ``<partial>``.

        Part numbers follow RFC 3501 §6.4.5: the parts of a multipart are
        numbered from 1; a non-multipart message (or encapsulated message) has
        only part 1, its body; a message/rfc822 part's numbers continue into
        the encapsulated message. ``n`` is a part's body (for message/rfc822,
        the whole encapsulated message), ``n.MIME`` its MIME header, ``n.HEADER``,
        ``n.HEADER.FIELDS``, ``n.TEXT`` the header and body of the message a
        message/rfc822 part encapsulates. Part 1 of a non-multipart message
        is its body, so ``1.MIME`` there is the message header (the fields
        that describe that body). HEADER.FIELDS keeps the matching
        fields as stored (folding included), in message order, then the blank
        line (which is left out only when the header had none and there is no
        body, as for HEADER).

        Returns:
            The octets; ``b""`` for a part that does not exist (or HEADER/TEXT
            of a part that is not message/rfc822); ``None`` when ``spec`` itself
            is invalid (an unknown text, MIME without a part number, a part
            number below 1), which the caller answers with BAD.
        """
        text = spec.text.upper() if spec.text is not None else None
        if text is not None and text not in SECTION_TEXTS:
            return None
        if any(number < 1 for number in spec.part):
            return None
        if not spec.part:
            if text == "MIME":
                return None
            if text is None:
                return self._full()
            if text == "TEXT":
                return self._full()[self._header.body_start :]
            # The header alone: no need to look at the body's line ends.
            return self._message_text(self._header, len(self._data), text, spec.fields)
        data = self._full()
        entity = self._resolve(spec.part)
        if entity is None:
            return b""
        if text is None:
            return data[entity.start : entity.end]
        if text == "MIME":
            return entity.header.block()
        if entity.message is None:
            return b""
        return self._message_text(entity.message.header, entity.end, text, spec.fields)

    def _resolve(self, part: tuple[int, ...]) -> _Entity | None:
        entity = _enter(self._root(), part[0])
        for number in part[1:]:
            if entity is None:
                return None
            if entity.children is not None:
                entity = _child(entity.children, number)
            elif entity.message is not None:
                entity = _enter(entity.message, number)
            else:
                return None
        return entity

    @staticmethod
    def _message_text(header: _Header, end: int, text: str, fields: tuple[str, ...]) -> bytes:
        """HEADER, HEADER.FIELDS[.NOT] or TEXT of the message whose header is ``header``."""
        data = header.data
        if text == "HEADER":
            return header.block()
        if text == "TEXT":
            return data[header.body_start : end]
        names = {_name(name) for name in fields}
        keep = text == "HEADER.FIELDS"
        out = bytearray()
        for name, start, _, stop in header.fields:
            if (name in names) == keep:
                out += data[start:stop]
                if not data.endswith(b"\n", start, stop):
                    out += b"\r\n"
        if header.blank or header.body_start < end:
            out += b"\r\n"
        return bytes(out)

    # -- SEARCH ------------------------------------------------------------

    def header_value(self, name: str) -> list[str]:
        """Every ``name`` field of the message header (any case), decoded for SEARCH.

        Each value is unfolded and stripped, its octets read as UTF-8 (else
        Latin-1) and its RFC 2047 encoded-words decoded. ``[]`` if absent.
        """
        return [_decode_words(_text(v)) for v in self._header.values(_name(name))]

    def header_contains(self, name: str, needle: str) -> bool:
        """SEARCH HEADER/FROM/SUBJECT/...: does a ``name`` field contain ``needle``?

        Case-insensitive (Unicode casefold) substring match on
        :meth:`header_value`; an empty ``needle`` matches any message that has
        the field (RFC 3501 §6.4.4).
        """
        key = needle.casefold()
        return any(key in value.casefold() for value in self.header_value(name))

    def text_contains(self, needle: str, body_only: bool) -> bool:
        """SEARCH BODY (``body_only``) or TEXT: does the message contain ``needle``?

        Case-insensitive (Unicode casefold). The body is searched part by part:
        each leaf with its transfer encoding (base64, quoted-printable) undone
        and, for text/*, decoded from its declared charset (undeclared or
        unknown: UTF-8, else Latin-1, i.e. the raw octets); encapsulated
        messages with their headers. TEXT adds the message header (encoded-words
        decoded). Preambles and epilogues are not searched.
        """
        key = needle.casefold()
        if not key:
            return True
        if not body_only and key in _header_text(self._header).casefold():
            return True
        return _contains(self._full(), self._root(), key)

    def sent_date(self) -> date | None:
        """The Date field's calendar date in its own time zone (SENTBEFORE/ON/SINCE).

        RFC 3501 §6.4.4 disregards time and time zone. ``None`` when the field
        is absent or holds no recognisable date.
        """
        value = self._header.first(b"date")
        return None if value is None else _sent_date(value)


def _child(children: list[_Entity], number: int) -> _Entity | None:
    return children[number - 1] if number <= len(children) else None


def _enter(message: _Entity, number: int) -> _Entity | None:
    """Part ``number`` of a message: a part of its multipart body, or 1 for its only body."""
    if message.children is not None:
        return _child(message.children, number)
    return message if number == 1 else None
