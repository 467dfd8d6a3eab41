"""FETCH response data: a parsed FETCH command and a message in, ``* n FETCH (...)`` out.

Theory of operation
-------------------
The session asks three questions of the items before touching any message:
:func:`check_items` (anything to answer BAD?), :func:`needs_body` (must the
message file be read, or do :class:`MessageInfo` fields suffice?) and
:func:`sets_seen` (does fetching set ``\\Seen`` implicitly, RFC 3501 §6.4.5?).
Then it builds one response per message with :func:`fetch_response`.

The items are compiled once into a :class:`FetchPlan`: a list of small
functions, one per response item, with everything that does not depend on
the message (response names, converted sections, the order, the implicit
UID/FLAGS/MODSEQ) worked out in advance. :func:`fetch_response` keeps the
plans of the last items tuple it saw (by identity, so a FETCH over 10,000
messages compiles once and never hashes the items); a session may also hold
a plan itself (:func:`compile_plan`). FLAGS lists are cached per flag set,
which a mailbox has few of. Pure: no I/O, and no message content makes
anything raise but :class:`UnknownCte` (BINARY of an unknown encoding).

Decisions
---------
* Order: the items in the order asked, duplicates (the same item, ``.PEEK``
  or not) once; ``UID`` first when the session adds it (UID FETCH always
  returns UID, RFC 9051 §6.4.9); an implicit ``FLAGS`` (after an implicit
  ``\\Seen``) and an implicit ``MODSEQ`` (CONDSTORE enabled, RFC 7162 §3.2)
  at the end.
* ``FLAGS``: ``\\Seen \\Answered \\Flagged \\Deleted \\Draft`` in that order,
  then ``\\Recent`` (when the session says so), then keywords sorted;
  keywords that are not RFC 9051 atoms (8-bit, specials) are left out.
* ``INTERNALDATE``: ``"dd-Mon-yyyy hh:mm:ss +zzzz"``; the day is two digits,
  zero-padded (``date-day-fixed = (SP DIGIT) / 2DIGIT``, RFC 9051 §9, allows
  both; the digit form survives naive tokenizers). English month names
  regardless of locale; the datetime's own offset, ``+0000`` for UTC or naive.
* ``RFC822.SIZE`` is :attr:`MessageInfo.size`: no file is read for it.
* Section contents (``BODY[...]``, ``RFC822*``) are literals ``{n}``; an empty
  result (a part that does not exist, a partial beyond the end) is ``""``
  (RFC 9051 §6.4.5). 8-bit octets go as they are (a literal is ``*CHAR8``).
  NUL is no CHAR8, so a NUL in a ``BODY[...]`` or ``RFC822*`` literal is sent
  as octet 0x80, as Dovecot does: sizes and partial offsets stay those of the
  stored message, and ``BINARY[...]`` (RFC 3516), which may use ``literal8``,
  delivers the true octets.
* ``BINARY[part]`` decodes the part's Content-Transfer-Encoding (base64
  leniently: characters outside the alphabet are skipped and a broken last
  quantum dropped; quoted-printable; 7bit, 8bit, binary or none as they are);
  any other encoding raises :class:`UnknownCte`, which the session answers
  ``NO [UNKNOWN-CTE]`` (RFC 9051 §6.4.5, §7.1). ``BINARY[]`` (no part) is the
  message as stored, there being no encoding of the whole message to undo.
  The result is a ``literal8`` ``~{n}`` when it holds NUL, else a literal (or
  ``""``). ``BINARY.SIZE[part]`` is the length of the decoded part.
* ``MODSEQ`` is ``MODSEQ (n)`` from :attr:`MessageInfo.modseq` (RFC 7162 §3.3.1).
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Callable, Iterable
from datetime import datetime

from conformance.wire.imap import FetchAtt
from reference_server.imap.message import SECTION_TEXTS, ParsedMessage, Section, partial
from reference_server.storage.mailbox_index import MessageInfo

__all__ = [
    "FetchPlan",
    "UnknownCte",
    "check_items",
    "compile_plan",
    "fetch_response",
    "flags_response",
    "format_flags",
    "internaldate",
    "needs_body",
    "sets_seen",
]

# Items whose value comes from the message file, not from MessageInfo.
_BODY_ITEMS = frozenset(
    {
        "ENVELOPE",
        "BODY",
        "BODYSTRUCTURE",
        "RFC822",
        "RFC822.HEADER",
        "RFC822.TEXT",
        "BINARY",
        "BINARY.SIZE",
    }
)
_INFO_ITEMS = frozenset({"UID", "FLAGS", "INTERNALDATE", "RFC822.SIZE", "MODSEQ"})
_KNOWN_ITEMS = _BODY_ITEMS | _INFO_ITEMS
_WITH_SECTION = frozenset({"BODY", "BINARY", "BINARY.SIZE"})

_SYSTEM_ORDER = ("\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft")
_SYSTEM_RANK = {flag: rank for rank, flag in enumerate(_SYSTEM_ORDER)}
# RFC 9051 §9: flag-keyword = atom; ATOM-CHAR = any CHAR (7-bit, not NUL) except atom-specials.
_KEYWORD = re.compile(r'[^\x00-\x20\x7f-\U0010ffff(){%*"\\\]]+')
_MONTHS = (
    b"Jan",
    b"Feb",
    b"Mar",
    b"Apr",
    b"May",
    b"Jun",
    b"Jul",
    b"Aug",
    b"Sep",
    b"Oct",
    b"Nov",
    b"Dec",
)


class UnknownCte(Exception):
    """``BINARY[...]`` of a part whose Content-Transfer-Encoding is not known.

    RFC 9051 §6.4.5 / RFC 3516 §4.3: the server fails the command with the
    ``UNKNOWN-CTE`` response code (``NO [UNKNOWN-CTE] ...``). :attr:`code` is
    that code; the message names the encoding.
    """

    code = "UNKNOWN-CTE"


# -- questions about the items ----------------------------------------------------------------


def needs_body(items: Iterable[FetchAtt]) -> bool:
    """Whether any item needs the message's octets (everything but UID, FLAGS,
    INTERNALDATE, RFC822.SIZE and MODSEQ, which :class:`MessageInfo` answers)."""
    return any(att.name in _BODY_ITEMS for att in items)


def sets_seen(items: Iterable[FetchAtt]) -> bool:
    """Whether fetching the items sets ``\\Seen`` (RFC 3501 §6.4.5, RFC 3516 §4.2).

    ``BODY[...]`` and ``BINARY[...]`` without ``.PEEK``, ``RFC822`` and
    ``RFC822.TEXT`` do; ``RFC822.HEADER``, ``BINARY.SIZE`` and the structure
    items do not. (Whether it changes anything, e.g. in a read-only mailbox,
    is the session's business.)
    """
    for att in items:
        name = att.name
        if name in ("RFC822", "RFC822.TEXT"):
            return True
        if name in ("BODY", "BINARY") and att.section is not None and not att.peek:
            return True
    return False


def check_items(items: Iterable[FetchAtt]) -> str | None:
    """A reason to answer BAD, or ``None`` when every item can be served.

    Refused: unknown item names; ``BODY[...]`` sections that are invalid
    (a text other than HEADER, HEADER.FIELDS[.NOT], TEXT, MIME; MIME without
    a part number; a part number below 1; HEADER.FIELDS without fields);
    BINARY and BINARY.SIZE with anything but part numbers or without a
    section; a partial on BINARY.SIZE or on an item without a section.
    """
    for att in items:
        name = att.name
        if name not in _KNOWN_ITEMS:
            return f"FETCH: unknown item {name}"
        section = att.section
        if section is None:
            if name in ("BINARY", "BINARY.SIZE"):
                return f"FETCH: {name} needs a section (RFC 9051 §6.4.5)"
            if att.partial is not None:
                return f"FETCH: a partial <origin.count> needs a section ({name})"
            continue
        if name not in _WITH_SECTION:
            return f"FETCH: {name} takes no section"
        if any(number < 1 for number in section.part):
            return f"FETCH: part numbers start at 1 ({att.response_name})"
        if name == "BODY":
            text = section.text.upper() if section.text is not None else None
            if text is not None and text not in SECTION_TEXTS:
                return f"FETCH: unknown section text {section.text}"
            if text == "MIME" and not section.part:
                return "FETCH: MIME needs a part number (RFC 9051 §6.4.5)"
            if text in ("HEADER.FIELDS", "HEADER.FIELDS.NOT") and not section.fields:
                return f"FETCH: {text} needs a list of field names"
        else:
            if section.text is not None or section.fields:
                return f"FETCH: {name} takes part numbers only (RFC 9051 §6.4.5)"
            if name == "BINARY.SIZE" and att.partial is not None:
                return "FETCH: BINARY.SIZE takes no partial"
    return None


# -- values -----------------------------------------------------------------------------------

_flags_cache: dict[tuple[frozenset[str], bool], bytes] = {}
_FLAGS_CACHE_MAX = 4096


def _flag_key(flag: str) -> tuple[int, str]:
    return (_SYSTEM_RANK.get(flag, len(_SYSTEM_ORDER)), flag)


def format_flags(flags: Iterable[str], recent: bool) -> bytes:
    """A ``flag-list``: ``(\\Seen \\Answered \\Recent kw)``.

    System flags in the order ``\\Seen \\Answered \\Flagged \\Deleted \\Draft``,
    then ``\\Recent`` when ``recent``, then the keywords sorted. A ``\\Recent``
    among ``flags`` is ignored (``recent`` decides), and so is a keyword that is
    not an ``atom`` of RFC 9051 §9 (7-bit, no specials): a client could not
    parse it, and a flag list has no way to quote one.
    """
    frozen = flags if isinstance(flags, frozenset) else frozenset(flags)
    key = (frozen, recent)
    cached = _flags_cache.get(key)
    if cached is not None:
        return cached
    ordered = sorted(
        (flag for flag in frozen if flag in _SYSTEM_RANK or _KEYWORD.fullmatch(flag)),
        key=_flag_key,
    )
    if recent:
        at = sum(1 for flag in ordered if flag in _SYSTEM_RANK)
        ordered.insert(at, "\\Recent")
    value = b"(" + " ".join(ordered).encode("utf-8") + b")"
    if len(_flags_cache) >= _FLAGS_CACHE_MAX:
        _flags_cache.clear()
    _flags_cache[key] = value
    return value


def internaldate(dt: datetime) -> str:
    """``date-time`` without the quotes: ``"07-Jul-1996 02:44:25 +0000"`` (RFC 9051 §9).

    The day is zero-padded to two digits; the month is English whatever the
    locale; the zone is the datetime's own offset (``+0000`` when naive),
    seconds of it dropped.
    """
    return _date_time(dt).decode("ascii")


def _date_time(dt: datetime) -> bytes:
    offset = dt.utcoffset()
    if not offset:
        zone = b"+0000"
    else:
        seconds = int(offset.total_seconds())
        hours, minutes = divmod(abs(seconds) // 60, 60)
        zone = b"%s%02d%02d" % (b"-" if seconds < 0 else b"+", hours, minutes)
    return b"%02d-%s-%04d %02d:%02d:%02d %s" % (
        dt.day,
        _MONTHS[dt.month - 1],
        dt.year,
        dt.hour,
        dt.minute,
        dt.second,
        zone,
    )


def _nstring(data: bytes) -> bytes:
    """Section contents as a literal (``""`` when empty), NUL sent as 0x80 (see above)."""
    if not data:
        return b'""'
    if b"\x00" in data:
        data = data.replace(b"\x00", b"\x80")
    return b"{%d}\r\n" % len(data) + data


def _binary_string(data: bytes) -> bytes:
    """Decoded contents: ``literal8`` when they hold NUL, else a literal (``""`` when empty)."""
    if not data:
        return b'""'
    if b"\x00" in data:
        return b"~{%d}\r\n" % len(data) + data
    return b"{%d}\r\n" % len(data) + data


# -- BINARY: undoing the Content-Transfer-Encoding ---------------------------------------------

_CTE_FIELD = re.compile(
    rb"^content-transfer-encoding[ \t]*:((?:[^\r\n]|\r?\n[ \t])*)", re.IGNORECASE | re.MULTILINE
)
_CTE_TOKEN = re.compile(rb"[^\s()]+")
_IDENTITY = frozenset({b"7bit", b"8bit", b"binary"})
_NOT_BASE64 = bytes(
    c for c in range(256) if not (chr(c).isascii() and (chr(c).isalnum() or chr(c) in "+/"))
)


def _cte(mime_header: bytes) -> bytes:
    """The Content-Transfer-Encoding named in a MIME header block, lower-case; 7bit if none."""
    found = _CTE_FIELD.search(mime_header)
    if found is None:
        return b"7bit"
    token = _CTE_TOKEN.search(found.group(1))
    return b"7bit" if token is None else token.group().lower()


def _base64(data: bytes) -> bytes:
    try:
        return binascii.a2b_base64(data)
    except binascii.Error:
        pass
    clean = data.translate(None, _NOT_BASE64)
    clean = clean[: len(clean) - (1 if len(clean) % 4 == 1 else 0)]
    clean += b"=" * (-len(clean) % 4)
    return binascii.a2b_base64(clean)


def _decoded(message: ParsedMessage, part: tuple[int, ...]) -> bytes:
    """BINARY[part]: the part's contents with its transfer encoding undone."""
    if not part:
        return message.data
    content = message.section(Section(part))
    if not content:
        return b""
    cte = _cte(message.section(Section(part, "MIME")) or b"")
    if cte in _IDENTITY:
        return content
    if cte == b"base64":
        return _base64(content)
    if cte == b"quoted-printable":
        return binascii.a2b_qp(content)
    raise UnknownCte(
        f"BINARY[{'.'.join(map(str, part))}]: unknown Content-Transfer-Encoding "
        f"{cte.decode('ascii', errors='replace')}"
    )


# -- the plan ---------------------------------------------------------------------------------

# One response item: (info, recent, message) -> the item's bytes, name included.
_Item = Callable[[MessageInfo, bool, "ParsedMessage | None"], bytes]


def _need(message: ParsedMessage | None) -> ParsedMessage:
    if message is None:
        raise ValueError("FETCH: these items need the message (see needs_body)")
    return message


def _uid(info: MessageInfo, recent: bool, message: ParsedMessage | None) -> bytes:
    return b"UID %d" % info.uid


def _flags(info: MessageInfo, recent: bool, message: ParsedMessage | None) -> bytes:
    return b"FLAGS " + format_flags(info.flags, recent)


def _size(info: MessageInfo, recent: bool, message: ParsedMessage | None) -> bytes:
    return b"RFC822.SIZE %d" % info.size


def _modseq(info: MessageInfo, recent: bool, message: ParsedMessage | None) -> bytes:
    return b"MODSEQ (%d)" % info.modseq


def _internaldate(info: MessageInfo, recent: bool, message: ParsedMessage | None) -> bytes:
    return b'INTERNALDATE "%s"' % _date_time(info.internaldate)


def _envelope(info: MessageInfo, recent: bool, message: ParsedMessage | None) -> bytes:
    return b"ENVELOPE " + _need(message).envelope()


def _body(info: MessageInfo, recent: bool, message: ParsedMessage | None) -> bytes:
    return b"BODY " + _need(message).bodystructure(False)


def _bodystructure(info: MessageInfo, recent: bool, message: ParsedMessage | None) -> bytes:
    return b"BODYSTRUCTURE " + _need(message).bodystructure(True)


def _section_item(att: FetchAtt, label: bytes) -> _Item:
    """BODY[section]<partial> and the RFC822 aliases: the section's octets as a literal."""
    wire = att.section
    spec = Section() if wire is None else Section(wire.part, wire.text, wire.fields)
    if att.name == "RFC822.HEADER":
        spec = Section(text="HEADER")
    elif att.name == "RFC822.TEXT":
        spec = Section(text="TEXT")
    window = att.partial
    prefix = label + b" "

    def item(info: MessageInfo, recent: bool, message: ParsedMessage | None) -> bytes:
        data = _need(message).section(spec)
        if data is None:
            raise ValueError(f"FETCH: invalid section {label!r} (see check_items)")
        if window is not None:
            data = partial(data, window[0], window[1])
        return prefix + _nstring(data)

    return item


def _binary_item(att: FetchAtt, label: bytes) -> _Item:
    part = () if att.section is None else att.section.part
    window = att.partial
    prefix = label + b" "

    if att.name == "BINARY.SIZE":

        def size(info: MessageInfo, recent: bool, message: ParsedMessage | None) -> bytes:
            return prefix + b"%d" % len(_decoded(_need(message), part))

        return size

    def item(info: MessageInfo, recent: bool, message: ParsedMessage | None) -> bytes:
        data = _decoded(_need(message), part)
        if window is not None:
            data = partial(data, window[0], window[1])
        return prefix + _binary_string(data)

    return item


_SIMPLE: dict[str, _Item] = {
    "UID": _uid,
    "FLAGS": _flags,
    "RFC822.SIZE": _size,
    "MODSEQ": _modseq,
    "INTERNALDATE": _internaldate,
    "ENVELOPE": _envelope,
    "BODYSTRUCTURE": _bodystructure,
}


def _compile_item(att: FetchAtt) -> _Item:
    name = att.name
    if name == "BODY" and att.section is None:
        return _body
    simple = _SIMPLE.get(name)
    if simple is not None:
        return simple
    label = att.response_name.encode("utf-8", errors="surrogateescape")
    if name in ("BINARY", "BINARY.SIZE"):
        return _binary_item(att, label)
    if name in ("BODY", "RFC822", "RFC822.HEADER", "RFC822.TEXT"):
        return _section_item(att, label)
    raise ValueError(f"FETCH: unknown item {name} (see check_items)")


class FetchPlan:
    """FETCH items compiled for building many responses (see :func:`compile_plan`)."""

    __slots__ = ("_items", "needs_body", "sets_seen")

    def __init__(
        self,
        items: Iterable[FetchAtt],
        *,
        include_uid: bool = False,
        include_flags: bool = False,
        modseq: bool = False,
    ) -> None:
        atts = tuple(items)
        self.needs_body = needs_body(atts)
        self.sets_seen = sets_seen(atts)
        seen: set[tuple[str, object, object]] = set()
        ordered: list[FetchAtt] = []
        for att in atts:
            key = (att.name, att.section, att.partial)
            if key not in seen:
                seen.add(key)
                ordered.append(att)
        names = {att.name for att in ordered}
        if include_uid and "UID" not in names:
            ordered.insert(0, FetchAtt("UID"))
        if include_flags and "FLAGS" not in names:
            ordered.append(FetchAtt("FLAGS"))
        if modseq and "MODSEQ" not in names:
            ordered.append(FetchAtt("MODSEQ"))
        self._items = tuple(_compile_item(att) for att in ordered)

    def response(
        self, seq: int, info: MessageInfo, *, recent: bool, message: ParsedMessage | None
    ) -> bytes:
        """``* seq FETCH (...)\\r\\n``, literals inline.

        Raises:
            ValueError: ``message`` is ``None`` but an item needs it, or an
                item :func:`check_items` refuses got this far.
            UnknownCte: ``BINARY`` of a part in an unknown encoding.
        """
        return (
            b"* %d FETCH (" % seq
            + b" ".join([item(info, recent, message) for item in self._items])
            + b")\r\n"
        )


def compile_plan(
    items: Iterable[FetchAtt],
    *,
    include_uid: bool = False,
    include_flags: bool = False,
    modseq: bool = False,
) -> FetchPlan:
    """Compile ``items`` once for a whole FETCH; same meaning as :func:`fetch_response`'s."""
    return FetchPlan(items, include_uid=include_uid, include_flags=include_flags, modseq=modseq)


# The plans of the last items object: (items, {(include_uid, include_flags, modseq): plan}).
# One tuple, replaced at once, so concurrent sessions at worst compile again.
_last: tuple[object, dict[tuple[bool, bool, bool], FetchPlan]] | None = None


def fetch_response(
    seq: int,
    info: MessageInfo,
    items: Iterable[FetchAtt],
    *,
    recent: bool,
    message: ParsedMessage | None,
    include_uid: bool,
    include_flags: bool,
    modseq: bool,
) -> bytes:
    """One complete ``* seq FETCH (...)\\r\\n`` for the message ``info`` (and ``message``).

    Args:
        seq: the message sequence number.
        info: UID, flags, INTERNALDATE, RFC822.SIZE and MODSEQ come from here.
        items: the FETCH items (macros expanded), answered in this order.
        recent: add ``\\Recent`` to FLAGS.
        message: the parsed message; needed only when :func:`needs_body`.
        include_uid: put ``UID`` first unless asked for (UID FETCH, RFC 9051 §6.4.9).
        include_flags: add ``FLAGS`` unless asked for (after an implicit ``\\Seen``).
        modseq: add ``MODSEQ (n)`` unless asked for (CONDSTORE enabled, RFC 7162 §3.2).

    The plans compiled for the last ``items`` object (one per combination of
    the three options) are reused while the same object comes back, so pass
    the command's tuple itself, not a copy per message; or hold a
    :func:`compile_plan` for the whole command.

    Raises:
        ValueError: ``message`` is ``None`` but needed, or an item
            :func:`check_items` refuses.
        UnknownCte: ``BINARY`` of a part in an unknown encoding.
    """
    global _last
    last = _last
    options = (include_uid, include_flags, modseq)
    if last is not None and last[0] is items:
        plans = last[1]
    else:
        plans = {}
        _last = (items, plans)
    plan = plans.get(options)
    if plan is None:
        plan = FetchPlan(items, include_uid=include_uid, include_flags=include_flags, modseq=modseq)
        plans[options] = plan
    return plan.response(seq, info, recent=recent, message=message)


def flags_response(seq: int, info: MessageInfo, *, recent: bool, uid: bool, modseq: bool) -> bytes:
    """``* seq FETCH ([UID u ]FLAGS (...)[ MODSEQ (m)])\\r\\n``: STORE results, flag updates."""
    flags = format_flags(info.flags, recent)
    head = b"* %d FETCH (UID %d FLAGS " % (seq, info.uid) if uid else b"* %d FETCH (FLAGS " % seq
    tail = b" MODSEQ (%d))\r\n" % info.modseq if modseq else b")\r\n"
    return head + flags + tail
