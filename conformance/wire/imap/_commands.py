"""IMAP command arguments by recursive descent: a framed command in, a typed command out.

Theory of operation
-------------------
:class:`~conformance.wire.imap.ImapCommandReader` frames a command (tag,
name, the bytes after the name with literals inlined); :func:`parse_command`
walks those bytes with the :class:`Cursor` of the client side, one function
per ABNF production of RFC 9051 §9 (and of the extensions each command
cites), each preceded by the rule it implements.

Each production is wrapped by :func:`_production`, which names the rule on
any :class:`ImapSyntaxError` passing through it that does not name one yet,
so the innermost rule wins, and the BAD reason says what was expected where
and which rule says so: ``FETCH: expected nz-number or '*', found b'x' at
column 10 (RFC 9051 §9 sequence-set)``. Nothing raises out of
:func:`parse_command`: every failure is an :class:`ImapBadCommand`.

Recursion (search keys, nested lists) is bounded by ``max_depth``: a hostile
``NOT NOT NOT ...`` or ``((((...`` costs a bounded amount of stack.

Values are normalised once, here, so the server never has to: names and
keywords of the protocol upper-cased, system flags in their canonical case
(``\\seen`` is ``\\Seen``), ``INBOX`` in any case is ``"INBOX"``, ``4:2`` is
``2:4``, dates are :mod:`datetime` values. Mailbox names are returned as
UTF-8 text, not decoded from modified UTF-7 (:mod:`._mutf7` is for the
storage layer, which knows whether the client enabled UTF8=ACCEPT).
"""

from __future__ import annotations

import datetime
import functools
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

from conformance.wire._errors import LocalProtocolError
from conformance.wire.imap._lexer import MAX_NUMBER, Cursor, ImapSyntaxError
from conformance.wire.imap._server import ImapBadCommand, ImapCommand

__all__ = [
    "Append",
    "Authenticate",
    "CopyMove",
    "Create",
    "Enable",
    "Expunge",
    "Fetch",
    "FetchAtt",
    "Id",
    "ListCommand",
    "Login",
    "MailboxCommand",
    "NoArguments",
    "ParsedCommand",
    "Rename",
    "Search",
    "SearchKey",
    "Section",
    "Select",
    "SequenceSet",
    "Status",
    "Store",
    "parse_command",
]

_RFC9051 = "RFC 9051 §9"

P = ParamSpec("P")
R = TypeVar("R")


def _production(rule: str, ref: str = _RFC9051) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Name ``rule`` (of ``ref``) on syntax errors raised while matching it."""

    def wrap(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def inner(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return fn(*args, **kwargs)
            except ImapSyntaxError as exc:
                if exc.rule is None:
                    exc.rule = f"{ref} {rule}"
                raise

        return inner

    return wrap


# -- value types ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SequenceSet:
    """``sequence-set`` (RFC 9051 §9), as ranges, with ``*`` as ``None``.

    Ranges keep the client's order but are normalised: ``4:2`` is
    ``(2, 4)``, ``*:4`` is ``(4, None)``, ``7`` is ``(7, 7)``, ``*`` is
    ``(None, None)``. ``$`` (RFC 5182 SEARCHRES: the saved search result) is
    ``saved=True`` with no ranges; the server substitutes it, or refuses it.

    RFC 9051 §9:
        sequence-set = (seq-number / seq-range) ["," sequence-set]
        seq-range    = seq-number ":" seq-number
        seq-number   = nz-number / "*"
    RFC 5182 §4: ``sequence-set =/ seq-last-command``, ``seq-last-command = "$"``.

    Raises:
        LocalProtocolError: at construction, for 0, numbers over 2^32-1,
            ranges not normalised, or ``saved`` mixed with ranges.
    """

    ranges: tuple[tuple[int | None, int | None], ...] = ()
    saved: bool = False

    def __post_init__(self) -> None:
        if self.saved == bool(self.ranges):
            raise LocalProtocolError("a SequenceSet is either '$' (saved) or some ranges")
        for low, high in self.ranges:
            for n in (low, high):
                if n is not None and not 1 <= n <= MAX_NUMBER:
                    raise LocalProtocolError(f"sequence number {n} is not an nz-number")
            if (low is None and high is not None) or (
                low is not None and high is not None and low > high
            ):
                raise LocalProtocolError(f"range {(low, high)} is not normalised (low, high)")

    @classmethod
    def parse(cls, text: str) -> SequenceSet:
        """Parse ``"1:4,7,9:*"``.

        Raises:
            ValueError: not a sequence-set; the message says where.
        """
        cur = Cursor(text.encode("utf-8", errors="surrogateescape"), {}, 1, noun="sequence-set")
        try:
            found = sequence_set(cur)
            cur.end()
        except ImapSyntaxError as exc:
            raise ValueError(f"{exc.message} at offset {exc.pos} of {text!r}") from None
        return found

    def __str__(self) -> str:
        if self.saved:
            return "$"
        return ",".join(_format_range(low, high) for low, high in self.ranges)

    def ranges_for(self, max_value: int) -> list[tuple[int, int]]:
        """The numbers meant when the largest in use is ``max_value``: sorted, merged ranges.

        ``*`` is ``max_value`` (RFC 9051 §9: the largest number in use), and
        ``5:*`` with a largest of 3 is ``3:5``, so it holds 3. Numbers over
        ``max_value`` exist in no mailbox, so they are cut off; an empty
        mailbox gives ``[]``.

        Raises:
            LocalProtocolError: the set is ``$``; substitute the saved result first.
        """
        if self.saved:
            raise LocalProtocolError("substitute the saved search result ($, RFC 5182) first")
        spans: list[tuple[int, int]] = []
        for low, high in self.ranges:
            a = max_value if low is None else low
            b = max_value if high is None else high
            a, b = min(a, b), min(max(a, b), max_value)
            a = max(a, 1)
            if a <= b:
                spans.append((a, b))
        spans.sort()
        merged: list[tuple[int, int]] = []
        for a, b in spans:
            if merged and a <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(merged[-1][1], b))
            else:
                merged.append((a, b))
        return merged

    def resolve(self, max_value: int) -> Iterator[int]:
        """Each number of the set up to ``max_value``, once, ascending."""
        for a, b in self.ranges_for(max_value):
            yield from range(a, b + 1)

    def contains(self, n: int, max_value: int) -> bool:
        """Whether ``n`` is in the set when the largest number in use is ``max_value``."""
        return any(a <= n <= b for a, b in self.ranges_for(max_value))


def _format_range(low: int | None, high: int | None) -> str:
    text = "*" if low is None else str(low)
    if low == high:
        return text
    return f"{text}:{'*' if high is None else high}"


@dataclass(frozen=True)
class Section:
    """``section-spec`` of ``BODY[...]`` / ``BINARY[...]``: part numbers, then a text part.

    Attributes:
        part: ``(1, 2)`` for ``1.2``; ``()`` for the whole message.
        text: ``"HEADER"``, ``"HEADER.FIELDS"``, ``"HEADER.FIELDS.NOT"``,
            ``"TEXT"``, ``"MIME"``, or ``None``.
        fields: the header-list of ``HEADER.FIELDS[.NOT]``, as sent.
    """

    part: tuple[int, ...] = ()
    text: str | None = None
    fields: tuple[str, ...] = ()

    def __str__(self) -> str:
        pieces = [str(n) for n in self.part]
        if self.text is not None:
            pieces.append(self.text)
        spec = ".".join(pieces)
        if self.fields:
            spec += " (" + " ".join(_astring_text(name) for name in self.fields) + ")"
        return spec


_ASTRING_TEXT = re.compile(r'[^(){ %*"\\\x00-\x1f\x7f-\U0010ffff]+')


def _astring_text(name: str) -> str:
    if _ASTRING_TEXT.fullmatch(name):
        return name
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True)
class FetchAtt:
    """One ``fetch-att``.

    Attributes:
        name: ``"UID"``, ``"FLAGS"``, ``"INTERNALDATE"``, ``"RFC822.SIZE"``,
            ``"ENVELOPE"``, ``"BODY"``, ``"BODYSTRUCTURE"``, ``"RFC822"``,
            ``"RFC822.HEADER"``, ``"RFC822.TEXT"``, ``"BINARY"``,
            ``"BINARY.SIZE"`` or ``"MODSEQ"``; ``.PEEK`` is in :attr:`peek`.
        section: for ``BODY[...]``, ``BINARY[...]``, ``BINARY.SIZE[...]``;
            ``None`` for plain ``BODY`` (the structure).
        partial: ``(origin, count)`` of ``<origin.count>``, or ``None``.
        peek: ``BODY.PEEK`` / ``BINARY.PEEK``: do not set ``\\Seen``.
    """

    name: str
    section: Section | None = None
    partial: tuple[int, int] | None = None
    peek: bool = False

    @property
    def response_name(self) -> str:
        """The item's name in the FETCH response: ``BODY[1.TEXT]<0>`` (RFC 9051 §7.5.2).

        ``.PEEK`` is dropped and a partial shows only its origin.
        """
        if self.section is None:
            return self.name
        text = f"{self.name}[{self.section}]"
        if self.partial is not None:
            text += f"<{self.partial[0]}>"
        return text


@dataclass(frozen=True)
class SearchKey:
    """One node of a SEARCH program (RFC 9051 §6.4.4, RFC 3501 §6.4.4).

    Attributes:
        name: the key upper-cased (``"FROM"``, ``"SINCE"``, ``"NOT"``, ...);
            ``"AND"`` for a parenthesised list or several top-level keys;
            ``"SEQUENCE"`` for a bare sequence set.
        value: the argument: ``str`` for strings and keywords,
            :class:`datetime.date` for dates, ``int`` for sizes and
            mod-sequences, :class:`SequenceSet` for ``UID`` and ``SEQUENCE``.
        field: ``HEADER``'s field name; ``MODSEQ``'s entry name, if given.
        children: the operands of ``AND``, ``NOT`` (one) and ``OR`` (two).
    """

    name: str
    value: str | int | datetime.date | SequenceSet | None = None
    field: str | None = None
    children: tuple[SearchKey, ...] = ()


# -- typed commands -----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ParsedCommand:
    """What every typed command has: its tag, its name (upper-cased), and whether UID came first."""

    tag: str
    name: str
    uid: bool = False


@dataclass(frozen=True, kw_only=True)
class NoArguments(ParsedCommand):
    """CAPABILITY, NOOP, LOGOUT, STARTTLS, NAMESPACE, IDLE, CHECK, CLOSE, UNSELECT."""


@dataclass(frozen=True, kw_only=True)
class Authenticate(ParsedCommand):
    """``AUTHENTICATE mechanism [initial-response]`` (RFC 9051 §6.2.2, SASL-IR RFC 4959).

    Attributes:
        mechanism: upper-cased (``"PLAIN"``).
        initial_response: the base64 text, ``""`` for ``=`` (an empty
            response), ``None`` if absent (send an empty continuation).
    """

    mechanism: str
    initial_response: str | None = None


@dataclass(frozen=True, kw_only=True)
class Login(ParsedCommand):
    """``LOGIN userid password`` (RFC 9051 §6.2.3); octets that are not UTF-8 kept as surrogates."""

    username: str
    password: str


@dataclass(frozen=True, kw_only=True)
class Enable(ParsedCommand):
    """``ENABLE capability...`` (RFC 5161, RFC 9051 §6.3.1), upper-cased."""

    capabilities: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class Select(ParsedCommand):
    """SELECT or EXAMINE (RFC 9051 §6.3.2, §6.3.3), with RFC 7162's ``(CONDSTORE)``."""

    mailbox: str
    condstore: bool = False

    @property
    def readonly(self) -> bool:
        return self.name == "EXAMINE"


@dataclass(frozen=True, kw_only=True)
class Create(ParsedCommand):
    """``CREATE mailbox [(USE (\\Sent ...))]`` (RFC 9051 §6.3.4, RFC 6154 §3)."""

    mailbox: str
    special_use: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class MailboxCommand(ParsedCommand):
    """DELETE, SUBSCRIBE, UNSUBSCRIBE: a mailbox name and nothing else."""

    mailbox: str


@dataclass(frozen=True, kw_only=True)
class Rename(ParsedCommand):
    """``RENAME existing new`` (RFC 9051 §6.3.6)."""

    source: str
    destination: str


@dataclass(frozen=True, kw_only=True)
class ListCommand(ParsedCommand):
    """LIST (RFC 9051 §6.3.9, LIST-EXTENDED RFC 5258) or LSUB (RFC 3501 §6.3.9).

    Attributes:
        reference: the reference name, as sent (not INBOX-normalised).
        patterns: one or more ``list-mailbox`` patterns (with ``*``, ``%``).
        selection: selection options, upper-cased (``"SUBSCRIBED"``,
            ``"REMOTE"``, ``"RECURSIVEMATCH"``, ``"SPECIAL-USE"``).
        return_options: return options other than STATUS, upper-cased
            (``"SUBSCRIBED"``, ``"CHILDREN"``, ``"SPECIAL-USE"``).
        status_items: the items of ``RETURN (STATUS (...))`` (RFC 5819), or ``None``.
        extended: the RFC 5258 syntax was used (options or a pattern list).
    """

    reference: str
    patterns: tuple[str, ...]
    selection: tuple[str, ...] = ()
    return_options: tuple[str, ...] = ()
    status_items: tuple[str, ...] | None = None
    extended: bool = False


@dataclass(frozen=True, kw_only=True)
class Status(ParsedCommand):
    """``STATUS mailbox (items)`` (RFC 9051 §6.3.11), items upper-cased."""

    mailbox: str
    items: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class Append(ParsedCommand):
    """``APPEND mailbox [flags] [date-time] literal`` (RFC 9051 §6.3.12).

    Attributes:
        internal_date: the date-time given, timezone-aware, or ``None``.
        message: the literal's octets.
        binary: sent as literal8 (``~{n}``, RFC 3516 §4.4): may hold NUL and
            unencoded binary; refuse it unless BINARY is offered.
    """

    mailbox: str
    flags: tuple[str, ...] = ()
    internal_date: datetime.datetime | None = None
    message: bytes
    binary: bool = False


@dataclass(frozen=True, kw_only=True)
class Expunge(ParsedCommand):
    """EXPUNGE, or UID EXPUNGE with its set (RFC 9051 §6.4.3, §6.4.9; RFC 4315)."""

    sequence: SequenceSet | None = None


@dataclass(frozen=True, kw_only=True)
class Search(ParsedCommand):
    """SEARCH / UID SEARCH (RFC 9051 §6.4.4, ESEARCH RFC 4731, RFC 3501 §6.4.4).

    Attributes:
        criteria: the program as one tree (several top-level keys make an AND).
        charset: after ``CHARSET``, upper-cased, or ``None``; strings are
            decoded as UTF-8 (bytes that are not UTF-8 kept as surrogates),
            so the server answers ``NO [BADCHARSET]`` for others.
        return_options: ``None`` without ``RETURN`` (the RFC 3501 SEARCH
            response); otherwise the options upper-cased (``()`` means ALL,
            RFC 4731 §3.1): MIN, MAX, ALL, COUNT, SAVE (RFC 5182).
    """

    criteria: SearchKey
    charset: str | None = None
    return_options: tuple[str, ...] | None = None


@dataclass(frozen=True, kw_only=True)
class Fetch(ParsedCommand):
    """FETCH / UID FETCH (RFC 9051 §6.4.5, CONDSTORE RFC 7162 §3.1.4).

    Attributes:
        items: the attributes, macros expanded (RFC 9051 §6.4.5: ALL, FAST, FULL).
        macro: the macro used, or ``None``.
        changedsince: the ``(CHANGEDSINCE n)`` modifier, or ``None``.
    """

    sequence: SequenceSet
    items: tuple[FetchAtt, ...]
    macro: str | None = None
    changedsince: int | None = None


@dataclass(frozen=True, kw_only=True)
class Store(ParsedCommand):
    """STORE / UID STORE (RFC 9051 §6.4.6, CONDSTORE RFC 7162 §3.1.3).

    Attributes:
        action: ``"set"`` (FLAGS), ``"add"`` (+FLAGS) or ``"remove"`` (-FLAGS).
        silent: ``.SILENT``: no untagged FETCH back.
        flags: system flags in canonical case, keywords as sent.
        unchangedsince: the ``(UNCHANGEDSINCE n)`` modifier, or ``None``.
    """

    sequence: SequenceSet
    action: str
    silent: bool = False
    flags: tuple[str, ...] = ()
    unchangedsince: int | None = None


@dataclass(frozen=True, kw_only=True)
class CopyMove(ParsedCommand):
    """COPY (RFC 9051 §6.4.7) or MOVE (§6.4.8, RFC 6851); :attr:`name` says which."""

    sequence: SequenceSet
    mailbox: str


@dataclass(frozen=True, kw_only=True)
class Id(ParsedCommand):
    """``ID ("name" "value" ...)`` or ``ID NIL`` (RFC 2971 §3.1): the pairs, or ``None``."""

    parameters: tuple[tuple[str, str | None], ...] | None


# -- entry point --------------------------------------------------------------------------------


def parse_command(cmd: ImapCommand, *, max_depth: int = 64) -> ParsedCommand | ImapBadCommand:
    """The typed form of ``cmd``, or the ImapBadCommand to answer it with.

    Never raises: every way the arguments can be wrong is a BAD reason naming
    the column and the rule.

    Args:
        cmd: a command from :class:`ImapCommandReader`.
        max_depth: how deeply lists and search keys may nest.
    """
    label = f"UID {cmd.name}" if cmd.uid else cmd.name
    parser = _PARSERS.get((cmd.name, cmd.uid))
    if parser is None:
        how = "with UID " if cmd.uid else ""
        return ImapBadCommand(
            tag=cmd.tag, reason=f"{label}: no parser for {cmd.name} {how}here", name=cmd.name
        )
    cur = cmd.cursor(max_depth=max_depth)
    try:
        return parser(cur, cmd)
    except ImapSyntaxError as exc:
        rule = exc.rule or _RFC9051
        reason = f"{label}: {exc.message} at column {exc.pos + 1} ({rule})"
        return ImapBadCommand(tag=cmd.tag, reason=_one_line(reason), name=cmd.name)


def _one_line(text: str) -> str:
    return text.replace("\r", "\\r").replace("\n", "\\n").replace("\x00", "\\x00")


def _end(cur: Cursor) -> None:
    if not cur.at_end():
        cur.fail("end of command (CRLF)")


# -- leaf productions ---------------------------------------------------------------------------


def _text(value: str | bytes) -> str:
    return value if isinstance(value, str) else value.decode("utf-8", errors="surrogateescape")


def _peek_word(cur: Cursor) -> str:
    """The atom at the cursor, upper-cased, without consuming it ("" if none)."""
    found = _WORD.match(cur.buf, cur.pos)
    return found.group().decode("ascii").upper() if found else ""


_WORD = re.compile(rb'[^(){ %*"\\\]\x00-\x1f\x7f-\xff]+')
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@_production("mailbox")
def mailbox(cur: Cursor) -> str:
    """``mailbox = "INBOX" / astring``: UTF-8 text, ``INBOX`` in any case as ``"INBOX"``.

    RFC 9051 §5.1: mailbox names are UTF-8 (Net-Unicode, so no control
    characters); ``INBOX`` is case-insensitive.
    """
    start = cur.pos
    value = cur.astring()
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ImapSyntaxError(
                start,
                f"expected a mailbox name in UTF-8, but octet {exc.start + 1} of it is not "
                "(RFC 9051 §5.1)",
            ) from None
    if _CONTROL.search(value):
        raise ImapSyntaxError(
            start, "expected a mailbox name without control characters (RFC 9051 §5.1)"
        )
    return "INBOX" if value.upper() == "INBOX" else value


# RFC 9051 §9:
#   list-mailbox = 1*list-char / string
#   list-char    = ATOM-CHAR / list-wildcards / resp-specials
_LIST_CHARS = re.compile(rb'[^(){ "\\\x00-\x1f\x7f-\xff]+')


@_production("list-mailbox")
def list_mailbox(cur: Cursor) -> str:
    """``list-mailbox = 1*list-char / string``, as UTF-8 text (non-UTF-8 kept as surrogates)."""
    if cur.peek() == 0x22 or cur.pos in cur.literals:
        return _text(cur.string())
    return cur.match(_LIST_CHARS, "a mailbox pattern (list-mailbox)").decode("ascii")


@_production("sequence-set")
def sequence_set(cur: Cursor) -> SequenceSet:
    """``sequence-set`` (and RFC 5182's ``$``), normalised."""
    if cur.accept(b"$"):
        return SequenceSet(saved=True)
    ranges: list[tuple[int | None, int | None]] = []
    while True:
        low = _seq_number(cur)
        high = _seq_number(cur) if cur.accept(b":") else low
        if low is None or (high is not None and high < low):
            low, high = high, low
        ranges.append((low, high))
        if not cur.accept(b","):
            return SequenceSet(tuple(ranges))


def _seq_number(cur: Cursor) -> int | None:
    # seq-number = nz-number / "*"
    if cur.accept(b"*"):
        return None
    if not cur.at_digit():
        cur.fail("nz-number or '*'")
    return cur.nz_number()


_MONTHS = {
    m: i
    for i, m in enumerate(
        ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"),
        start=1,
    )
}
# RFC 9051 §9:
#   date       = date-text / DQUOTE date-text DQUOTE
#   date-text  = date-day "-" date-month "-" date-year
#   date-day   = 1*2DIGIT
_DATE = re.compile(rb'(")?([0-9]{1,2})-([A-Za-z]{3})-([0-9]{4})(?(1)")')
#   date-time      = DQUOTE date-day-fixed "-" date-month "-" date-year
#                    SP time SP zone DQUOTE
#   date-day-fixed = (SP DIGIT) / 2DIGIT
#   time           = 2DIGIT ":" 2DIGIT ":" 2DIGIT
#   zone           = ("+" / "-") 4DIGIT
_DATE_TIME = re.compile(
    rb'"( [0-9]|[0-9]{2})-([A-Za-z]{3})-([0-9]{4}) ([0-9]{2}):([0-9]{2}):([0-9]{2}) '
    rb'([+-])([0-9]{2})([0-9]{2})"'
)


@_production("date")
def date(cur: Cursor) -> datetime.date:
    """``date``: ``1-Feb-1994`` or ``"1-Feb-1994"``."""
    found = _DATE.match(cur.buf, cur.pos)
    if found is None:
        cur.fail("a date (d-Mon-yyyy, e.g. 1-Feb-1994)")
    month = _MONTHS.get(found.group(3).decode("ascii").upper())
    try:
        if month is None:
            raise ValueError("no such month")
        value = datetime.date(int(found.group(4)), month, int(found.group(2)))
    except ValueError:
        cur.fail("a date that exists (d-Mon-yyyy)")
    cur.pos = found.end()
    return value


@_production("date-time")
def date_time(cur: Cursor) -> datetime.datetime:
    """``date-time``: ``"17-Jul-1996 02:44:25 -0700"``, as an aware datetime."""
    found = _DATE_TIME.match(cur.buf, cur.pos)
    if found is None:
        cur.fail('date-time ("dd-Mon-yyyy hh:mm:ss +zzzz")')
    day, mon, year, hour, minute, second, sign, zh, zm = (g.decode("ascii") for g in found.groups())
    month = _MONTHS.get(mon.upper())
    try:
        if month is None or int(zm) > 59:
            raise ValueError("bad month or zone")
        offset = datetime.timedelta(hours=int(zh), minutes=int(zm))
        zone = datetime.timezone(-offset if sign == "-" else offset)
        value = datetime.datetime(
            int(year), month, int(day), int(hour), int(minute), int(second), tzinfo=zone
        )
    except ValueError:
        cur.fail("a date-time that exists (month, hour < 24, zone under 24 hours)")
    cur.pos = found.end()
    return value


_SYSTEM_FLAGS = {
    f.upper(): f for f in ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
}


@_production("flag")
def flag(cur: Cursor) -> str:
    """``flag``, system flags in canonical case; ``\\Recent`` refused.

    RFC 3501 §2.3.2: ``\\Recent`` is set by the server only; RFC 9051 §9
    ``store-att-flags`` and ``append`` take ``flag``, which has no ``\\Recent``.
    """
    start = cur.pos
    value = cur.flag()
    if not value.startswith("\\"):
        return value
    if value.upper() == "\\RECENT":
        error = ImapSyntaxError(start, "\\Recent is set by the server only, never by a client")
        error.rule = "RFC 3501 §2.3.2"
        raise error
    return _SYSTEM_FLAGS.get(value.upper(), value)


@_production("flag-list")
def flag_list(cur: Cursor) -> tuple[str, ...]:
    """``flag-list = "(" [flag *(SP flag)] ")"``."""
    cur.open_list()
    flags: list[str] = []
    if cur.peek() != 0x29:
        flags.append(flag(cur))
        while cur.accept(b" "):
            flags.append(flag(cur))
    cur.close_list()
    return tuple(flags)


def _atom_list(cur: Cursor) -> list[str]:
    # "(" [atom *(SP atom)] ")", upper-cased; callers check the words
    cur.open_list()
    words: list[str] = []
    if cur.peek() != 0x29:
        words.append(cur.atom().upper())
        while cur.accept(b" "):
            words.append(cur.atom().upper())
    cur.close_list()
    return words


def _check_words(start: int, words: list[str], allowed: frozenset[str], what: str) -> None:
    for word in words:
        if word not in allowed:
            raise ImapSyntaxError(
                start, f"expected {what} {', '.join(sorted(allowed))}; found {word}"
            )


# -- commands -----------------------------------------------------------------------------------


@_production("command")
def _no_arguments(cur: Cursor, cmd: ImapCommand) -> NoArguments:
    # "CAPABILITY" / "LOGOUT" / "NOOP" / "STARTTLS" / "CHECK" / "CLOSE" / "UNSELECT" /
    # "NAMESPACE" (RFC 2342) / idle = "IDLE" CRLF "DONE" (RFC 2177)
    if not cur.at_end():
        cur.fail(f"end of command ({cmd.name} takes no arguments)")
    return NoArguments(tag=cmd.tag, name=cmd.name)


_BASE64 = re.compile(rb"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")


@_production("authenticate")
def _authenticate(cur: Cursor, cmd: ImapCommand) -> Authenticate:
    # authenticate = "AUTHENTICATE" SP auth-type [SP initial-resp] *(CRLF base64)
    # auth-type    = atom
    # initial-resp = (base64 / "=")        ; RFC 4959 §7
    cur.sp()
    mechanism = cur.atom().upper()
    response: str | None = None
    if cur.accept(b" "):
        response = _initial_response(cur)
    _end(cur)
    return Authenticate(tag=cmd.tag, name=cmd.name, mechanism=mechanism, initial_response=response)


@_production("initial-resp", "RFC 4959 §7")
def _initial_response(cur: Cursor) -> str:
    if cur.accept(b"="):
        return ""
    found = _BASE64.match(cur.buf, cur.pos)
    if found is None or found.end() == cur.pos or found.end() != len(cur.buf):
        cur.fail("base64 or '=' (an empty initial response)")
    cur.pos = found.end()
    return found.group().decode("ascii")


@_production("login")
def _login(cur: Cursor, cmd: ImapCommand) -> Login:
    # login = "LOGIN" SP userid SP password ; userid = astring ; password = astring
    cur.sp()
    user = _text(cur.astring())
    cur.sp()
    password = _text(cur.astring())
    _end(cur)
    return Login(tag=cmd.tag, name=cmd.name, username=user, password=password)


@_production("enable")
def _enable(cur: Cursor, cmd: ImapCommand) -> Enable:
    # enable     = "ENABLE" 1*(SP capability)
    # capability = ("AUTH=" auth-type) / atom
    caps = []
    cur.sp()
    caps.append(cur.atom().upper())
    while cur.accept(b" "):
        caps.append(cur.atom().upper())
    _end(cur)
    return Enable(tag=cmd.tag, name=cmd.name, capabilities=tuple(caps))


@_production("select")
def _select(cur: Cursor, cmd: ImapCommand) -> Select:
    # select = "SELECT" SP mailbox [select-params] ; examine likewise
    cur.sp()
    name = mailbox(cur)
    condstore = False
    if cur.accept(b" "):
        condstore = _select_params(cur)
    _end(cur)
    return Select(tag=cmd.tag, name=cmd.name, mailbox=name, condstore=condstore)


_SELECT_PARAMS = frozenset({"CONDSTORE"})


@_production("select-params", "RFC 4466 §2.1")
def _select_params(cur: Cursor) -> bool:
    # select-params = SP "(" select-param *(SP select-param) ")"
    # select-param  = select-param-name [SP select-param-value]
    # RFC 7162 §7: select-param =/ condstore-param ; condstore-param = "CONDSTORE"
    # RFC 4466 §2.1: a parameter the server does not know is a BAD.
    cur.open_list()
    while True:
        word = _peek_word(cur)
        if word not in _SELECT_PARAMS:
            cur.fail(f"a select parameter this server knows: {', '.join(sorted(_SELECT_PARAMS))}")
        cur.pos += len(word)
        if not cur.accept(b" "):
            break
    cur.close_list()
    return True


_USE_ATTRS = {
    a.upper(): a
    for a in ("\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk", "\\Sent", "\\Trash")
}


@_production("create")
def _create(cur: Cursor, cmd: ImapCommand) -> Create:
    # create = "CREATE" SP mailbox [create-params]
    cur.sp()
    name = mailbox(cur)
    use: tuple[str, ...] = ()
    if cur.accept(b" "):
        use = _create_params(cur)
    _end(cur)
    return Create(tag=cmd.tag, name=cmd.name, mailbox=name, special_use=use)


@_production("create-param", "RFC 6154 §6")
def _create_params(cur: Cursor) -> tuple[str, ...]:
    # create-params = SP "(" create-param *( SP create-param) ")"     ; RFC 4466
    # create-param  =/ "USE" SP "(" [use-attr *(SP use-attr)] ")"     ; RFC 6154
    # use-attr      = "\All" / "\Archive" / "\Drafts" / "\Flagged" / "\Junk" /
    #                 "\Sent" / "\Trash" / use-attr-ext ; use-attr-ext = "\" atom
    cur.open_list()
    attrs: list[str] = []
    while True:
        start = cur.pos
        if _peek_word(cur) != "USE":
            cur.fail("USE (the only create-param this server knows)", start)
        cur.atom()
        cur.sp()
        cur.open_list()
        if cur.peek() != 0x29:
            while True:
                attr_at = cur.pos
                cur.expect(b"\\", "a use-attr ('\\' atom)")
                word = "\\" + cur.atom()
                attrs.append(_USE_ATTRS.get(word.upper(), word))
                if word.upper() == "\\RECENT":
                    cur.fail("a special-use attribute", attr_at)
                if not cur.accept(b" "):
                    break
        cur.close_list()
        if not cur.accept(b" "):
            break
    cur.close_list()
    return tuple(attrs)


@_production("mailbox")
def _mailbox_only(cur: Cursor, cmd: ImapCommand) -> MailboxCommand:
    # delete = "DELETE" SP mailbox ; subscribe / unsubscribe likewise
    cur.sp()
    name = mailbox(cur)
    _end(cur)
    return MailboxCommand(tag=cmd.tag, name=cmd.name, mailbox=name)


@_production("rename")
def _rename(cur: Cursor, cmd: ImapCommand) -> Rename:
    # rename = "RENAME" SP mailbox SP mailbox
    cur.sp()
    source = mailbox(cur)
    cur.sp()
    destination = mailbox(cur)
    _end(cur)
    return Rename(tag=cmd.tag, name=cmd.name, source=source, destination=destination)


_SELECT_OPTS = frozenset({"SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"})
_RETURN_OPTS = frozenset({"SUBSCRIBED", "CHILDREN", "SPECIAL-USE", "STATUS"})


@_production("list")
def _list(cur: Cursor, cmd: ImapCommand) -> ListCommand:
    # list = "LIST" [SP list-select-opts] SP mailbox SP mbox-or-pat [SP list-return-opts]
    # mbox-or-pat = list-mailbox / patterns
    # patterns    = "(" list-mailbox *(SP list-mailbox) ")"
    cur.sp()
    selection: tuple[str, ...] = ()
    extended = False
    if cur.peek() == 0x28:
        selection = _list_select_opts(cur)
        extended = True
        cur.sp()
    reference = _text(cur.astring())
    cur.sp()
    if cur.peek() == 0x28:
        extended = True
        cur.open_list()
        patterns = [list_mailbox(cur)]
        while cur.accept(b" "):
            patterns.append(list_mailbox(cur))
        cur.close_list()
    else:
        patterns = [list_mailbox(cur)]
    returns: tuple[str, ...] = ()
    status: tuple[str, ...] | None = None
    if cur.accept(b" "):
        extended = True
        returns, status = _list_return_opts(cur)
    _end(cur)
    return ListCommand(
        tag=cmd.tag,
        name=cmd.name,
        reference=reference,
        patterns=tuple(patterns),
        selection=selection,
        return_options=returns,
        status_items=status,
        extended=extended,
    )


@_production("list-select-opts", "RFC 5258 §6")
def _list_select_opts(cur: Cursor) -> tuple[str, ...]:
    # list-select-opts = "(" [ (*(list-select-mod-opt SP) list-select-base-opt
    #                    *(SP list-select-opt)) / (list-select-independent-opt
    #                    *(SP list-select-independent-opt)) ] ")"
    # list-select-base-opt = "SUBSCRIBED" / option-extension  (RFC 6154: "SPECIAL-USE")
    # list-select-independent-opt = "REMOTE" / option-extension
    # list-select-mod-opt = "RECURSIVEMATCH" / option-extension
    # RFC 5258 §3: an unknown option is a BAD; RECURSIVEMATCH needs a base option.
    start = cur.pos
    words = _atom_list(cur)
    _check_words(start, words, _SELECT_OPTS, "a selection option this server knows:")
    if "RECURSIVEMATCH" in words and not {"SUBSCRIBED", "SPECIAL-USE"} & set(words):
        raise ImapSyntaxError(
            start,
            "expected SUBSCRIBED or SPECIAL-USE with RECURSIVEMATCH (list-select-base-opt)",
        )
    return tuple(words)


@_production("list-return-opts", "RFC 5258 §6")
def _list_return_opts(cur: Cursor) -> tuple[tuple[str, ...], tuple[str, ...] | None]:
    # list-return-opts = "RETURN" SP "(" [return-option *(SP return-option)] ")"
    # return-option    = "SUBSCRIBED" / "CHILDREN" / status-option / option-extension
    # status-option    = "STATUS" SP "(" status-att *(SP status-att) ")"   ; RFC 5819
    if _peek_word(cur) != "RETURN":
        cur.fail("RETURN")
    cur.atom()
    cur.sp()
    cur.open_list()
    options: list[str] = []
    status: tuple[str, ...] | None = None
    if cur.peek() != 0x29:
        while True:
            word_at = cur.pos
            word = cur.atom().upper()
            _check_words(word_at, [word], _RETURN_OPTS, "a return option this server knows:")
            if word == "STATUS":
                cur.sp()
                status = _status_atts(cur)
            else:
                options.append(word)
            if not cur.accept(b" "):
                break
    cur.close_list()
    return tuple(options), status


@_production("lsub", "RFC 3501 §9")
def _lsub(cur: Cursor, cmd: ImapCommand) -> ListCommand:
    # lsub = "LSUB" SP mailbox SP list-mailbox
    cur.sp()
    reference = _text(cur.astring())
    cur.sp()
    pattern = list_mailbox(cur)
    _end(cur)
    return ListCommand(tag=cmd.tag, name=cmd.name, reference=reference, patterns=(pattern,))


_STATUS_ATTS = frozenset(
    {
        "MESSAGES",
        "UIDNEXT",
        "UIDVALIDITY",
        "UNSEEN",
        "DELETED",
        "SIZE",
        "RECENT",  # RFC 3501
        "HIGHESTMODSEQ",  # RFC 7162
        "APPENDLIMIT",  # RFC 7889 §5
    }
)


@_production("status-att")
def _status_atts(cur: Cursor) -> tuple[str, ...]:
    # "(" status-att *(SP status-att) ")"
    # status-att = "MESSAGES" / "UIDNEXT" / "UIDVALIDITY" / "UNSEEN" / "DELETED" / "SIZE"
    #              ; RFC 3501 "RECENT", RFC 7162 "HIGHESTMODSEQ"
    start = cur.pos
    words = _atom_list(cur)
    if not words:
        cur.fail("a status-att", start + 1)
    _check_words(start, words, _STATUS_ATTS, "status items:")
    return tuple(words)


@_production("status")
def _status(cur: Cursor, cmd: ImapCommand) -> Status:
    # status = "STATUS" SP mailbox SP "(" status-att *(SP status-att) ")"
    cur.sp()
    name = mailbox(cur)
    cur.sp()
    items = _status_atts(cur)
    _end(cur)
    return Status(tag=cmd.tag, name=cmd.name, mailbox=name, items=items)


@_production("append")
def _append(cur: Cursor, cmd: ImapCommand) -> Append:
    # append = "APPEND" SP mailbox [SP flag-list] [SP date-time] SP literal
    # RFC 3516 §4.4 / RFC 4466: append-data = literal / literal8
    cur.sp()
    name = mailbox(cur)
    cur.sp()
    flags: tuple[str, ...] = ()
    when: datetime.datetime | None = None
    if cur.peek() == 0x28:
        flags = flag_list(cur)
        cur.sp()
    if cur.peek() == 0x22:
        when = date_time(cur)
        cur.sp()
    found = cur.literals.get(cur.pos)
    if found is None:
        cur.fail("the message as a literal ({n} or ~{n})")
    message = cur.literal(allow_literal8=True)
    if not cur.at_end():
        cur.fail("end of command (MULTIAPPEND and CATENATE are not supported)")
    return Append(
        tag=cmd.tag,
        name=cmd.name,
        mailbox=name,
        flags=flags,
        internal_date=when,
        message=message,
        binary=found.binary,
    )


@_production("expunge")
def _expunge(cur: Cursor, cmd: ImapCommand) -> Expunge:
    # "EXPUNGE" ; uid-expunge = "EXPUNGE" SP sequence-set (RFC 4315 §3)
    sequence: SequenceSet | None = None
    if cmd.uid:
        cur.sp()
        sequence = sequence_set(cur)
    _end(cur)
    return Expunge(tag=cmd.tag, name=cmd.name, uid=cmd.uid, sequence=sequence)


@_production("copy")
def _copy_move(cur: Cursor, cmd: ImapCommand) -> CopyMove:
    # copy = "COPY" SP sequence-set SP mailbox ; move = "MOVE" SP sequence-set SP mailbox
    cur.sp()
    sequence = sequence_set(cur)
    cur.sp()
    name = mailbox(cur)
    _end(cur)
    return CopyMove(tag=cmd.tag, name=cmd.name, uid=cmd.uid, sequence=sequence, mailbox=name)


# -- SEARCH ---------------------------------------------------------------------------------------

_SEARCH_RETURN = frozenset({"MIN", "MAX", "ALL", "COUNT", "SAVE"})
_SEARCH_BARE = frozenset(
    {
        "ALL", "ANSWERED", "DELETED", "DRAFT", "FLAGGED", "SEEN",
        "UNANSWERED", "UNDELETED", "UNDRAFT", "UNFLAGGED", "UNSEEN",
        "NEW", "OLD", "RECENT",  # RFC 3501 only
    }
)  # fmt: skip
_SEARCH_STRING = frozenset({"BCC", "BODY", "CC", "FROM", "SUBJECT", "TEXT", "TO"})
_SEARCH_DATE = frozenset({"BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE"})
_SEARCH_WITH_ARGUMENT = (
    _SEARCH_STRING
    | _SEARCH_DATE
    | {"LARGER", "SMALLER", "KEYWORD", "UNKEYWORD", "HEADER", "UID", "MODSEQ"}
)
_ENTRY_TYPES = frozenset({"PRIV", "SHARED", "ALL"})


@_production("search")
def _search(cur: Cursor, cmd: ImapCommand) -> Search:
    # search             = "SEARCH" [search-return-opts] SP search-program
    # search-return-opts = SP "RETURN" SP "(" [search-return-opt *(SP search-return-opt)] ")"
    # search-program     = ["CHARSET" SP charset SP] search-key *(SP search-key)
    cur.sp()
    returns: tuple[str, ...] | None = None
    if _peek_word(cur) == "RETURN":
        returns = _search_return_opts(cur)
        cur.sp()
    charset: str | None = None
    if _peek_word(cur) == "CHARSET":
        cur.atom()
        cur.sp()
        charset = _charset(cur)
        cur.sp()
    keys = [search_key(cur)]
    while cur.accept(b" "):
        keys.append(search_key(cur))
    _end(cur)
    criteria = keys[0] if len(keys) == 1 else SearchKey("AND", children=tuple(keys))
    return Search(
        tag=cmd.tag,
        name=cmd.name,
        uid=cmd.uid,
        criteria=criteria,
        charset=charset,
        return_options=returns,
    )


@_production("search-return-opts")
def _search_return_opts(cur: Cursor) -> tuple[str, ...]:
    # search-return-opt = "MIN" / "MAX" / "ALL" / "COUNT" / "SAVE" (RFC 5182) / search-ret-opt-ext
    cur.atom()
    cur.sp()
    start = cur.pos
    words = _atom_list(cur)
    _check_words(start, words, _SEARCH_RETURN, "search return options:")
    return tuple(words)


@_production("charset")
def _charset(cur: Cursor) -> str:
    # charset = atom / quoted
    if cur.peek() == 0x22:
        return _text(cur.quoted()).upper()
    return cur.atom().upper()


@_production("search-key")
def search_key(cur: Cursor) -> SearchKey:
    """One ``search-key`` (RFC 9051 §9, RFC 3501 §9, RFC 7162 §7 MODSEQ)."""
    byte = cur.peek()
    if byte == 0x28:
        # "(" search-key *(SP search-key) ")"
        cur.open_list()
        keys = [search_key(cur)]
        while cur.accept(b" "):
            keys.append(search_key(cur))
        cur.close_list()
        return SearchKey("AND", children=tuple(keys))
    if byte == 0x2A or byte == 0x24 or cur.at_digit():
        return SearchKey("SEQUENCE", value=sequence_set(cur))
    start = cur.pos
    word = _peek_word(cur)
    if not word:
        cur.fail("a search key")
    cur.pos += len(word)
    if word in _SEARCH_BARE:
        return SearchKey(word)
    if word in ("NOT", "OR"):
        cur.sp()
        cur.depth += 1
        if cur.depth > cur.max_depth:
            raise ImapSyntaxError(start, f"search keys nested deeper than {cur.max_depth}")
        children = [search_key(cur)]
        if word == "OR":
            cur.sp()
            children.append(search_key(cur))
        cur.depth -= 1
        return SearchKey(word, children=tuple(children))
    if word not in _SEARCH_WITH_ARGUMENT:
        cur.fail("a search key", start)
    cur.sp()
    if word in _SEARCH_STRING:
        return SearchKey(word, value=_text(cur.astring()))
    if word in _SEARCH_DATE:
        return SearchKey(word, value=date(cur))
    if word in ("LARGER", "SMALLER"):
        return SearchKey(word, value=cur.number64())
    if word in ("KEYWORD", "UNKEYWORD"):
        # flag-keyword = "$MDNSent" / "$Forwarded" / "$Junk" / "$NotJunk" / "$Phishing" / atom
        return SearchKey(word, value=cur.atom())
    if word == "HEADER":
        # "HEADER" SP header-fld-name SP astring
        field = _text(cur.astring())
        cur.sp()
        return SearchKey(word, value=_text(cur.astring()), field=field)
    if word == "UID":
        return SearchKey(word, value=sequence_set(cur))
    return _search_modseq(cur)


@_production("search-modsequence", "RFC 7162 §7")
def _search_modseq(cur: Cursor) -> SearchKey:
    # search-modsequence = "MODSEQ" [search-modseq-ext] SP mod-sequence-valzer
    # search-modseq-ext  = SP entry-name SP entry-type-req
    # entry-name         = entry-flag-name ; DQUOTE "/flags/" attr-flag DQUOTE
    # entry-type-req     = entry-type-resp / "all" ; "priv" / "shared"
    entry: str | None = None
    if cur.peek() == 0x22:
        entry = _text(cur.quoted())
        cur.sp()
        start = cur.pos
        if cur.atom().upper() not in _ENTRY_TYPES:
            cur.fail("priv, shared or all (entry-type-req)", start)
        cur.sp()
    return SearchKey("MODSEQ", value=cur.number64(), field=entry)


# -- FETCH ----------------------------------------------------------------------------------------

_FETCH_MACROS = {
    "ALL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"),
    "FAST": ("FLAGS", "INTERNALDATE", "RFC822.SIZE"),
    "FULL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"),
}
_FETCH_SIMPLE = frozenset(
    {
        "ENVELOPE", "FLAGS", "INTERNALDATE", "RFC822.SIZE", "BODY", "BODYSTRUCTURE", "UID",
        "RFC822", "RFC822.HEADER", "RFC822.TEXT",  # RFC 3501
        "MODSEQ",  # RFC 7162
    }
)  # fmt: skip
_FETCH_SECTIONED = frozenset({"BODY", "BODY.PEEK", "BINARY", "BINARY.PEEK", "BINARY.SIZE"})


@_production("fetch")
def _fetch(cur: Cursor, cmd: ImapCommand) -> Fetch:
    # fetch = "FETCH" SP sequence-set SP ("ALL" / "FULL" / "FAST" /
    #         fetch-att / "(" fetch-att *(SP fetch-att) ")") [fetch-modifiers]
    cur.sp()
    sequence = sequence_set(cur)
    cur.sp()
    macro: str | None = None
    if cur.peek() == 0x28:
        cur.open_list()
        items = [fetch_att(cur)]
        while cur.accept(b" "):
            items.append(fetch_att(cur))
        cur.close_list()
    elif _peek_word(cur) in _FETCH_MACROS:
        macro = _peek_word(cur)
        cur.pos += len(macro)
        items = [FetchAtt(name) for name in _FETCH_MACROS[macro]]
    else:
        items = [fetch_att(cur)]
    changedsince: int | None = None
    if cur.accept(b" "):
        changedsince = _fetch_modifiers(cur)
    _end(cur)
    return Fetch(
        tag=cmd.tag,
        name=cmd.name,
        uid=cmd.uid,
        sequence=sequence,
        items=tuple(items),
        macro=macro,
        changedsince=changedsince,
    )


@_production("fetch-modifiers", "RFC 7162 §7")
def _fetch_modifiers(cur: Cursor) -> int:
    # fetch-modifiers    = SP "(" fetch-modifier *(SP fetch-modifier) ")"  ; RFC 4466
    # chgsince-fetch-mod = "CHANGEDSINCE" SP mod-sequence-value            ; RFC 7162
    # mod-sequence-value = 1*DIGIT ; Positive unsigned 63-bit integer
    cur.open_list()
    start = cur.pos
    if cur.atom().upper() != "CHANGEDSINCE":
        cur.fail("CHANGEDSINCE (the only fetch modifier this server knows)", start)
    cur.sp()
    start = cur.pos
    value = cur.number64()
    if value == 0:
        cur.fail("a positive mod-sequence-value", start)
    cur.close_list()
    return value


@_production("fetch-att")
def fetch_att(cur: Cursor) -> FetchAtt:
    """One ``fetch-att``.

    RFC 9051 §9:
        fetch-att = "ENVELOPE" / "FLAGS" / "INTERNALDATE" / "RFC822.SIZE" /
                    "BODY" ["STRUCTURE"] / "UID" /
                    "BODY" section [partial] / "BODY.PEEK" section [partial] /
                    "BINARY" [".PEEK"] section-binary [partial] /
                    "BINARY.SIZE" section-binary
        partial   = "<" number64 "." nz-number64 ">"
    RFC 3501 adds ``"RFC822" [".HEADER" / ".TEXT"]``; RFC 7162 ``"MODSEQ"``.
    """
    start = cur.pos
    word = cur.atom_before_bracket().upper()
    if cur.peek() == 0x5B and word in _FETCH_SECTIONED:
        binary = word.startswith("BINARY")
        section = _section_binary(cur) if binary else _section(cur)
        partial: tuple[int, int] | None = None
        if word != "BINARY.SIZE" and cur.accept(b"<"):
            origin = cur.number64()
            cur.expect(b".", "'.' and the octet count (partial)")
            count_at = cur.pos
            count = cur.number64()
            if count == 0:
                cur.fail("a non-zero octet count (nz-number64)", count_at)
            cur.expect(b">", "'>' closing the partial")
            partial = (origin, count)
        name = word.removesuffix(".PEEK")
        return FetchAtt(name, section=section, partial=partial, peek=word.endswith(".PEEK"))
    if word in _FETCH_SIMPLE:
        return FetchAtt(word)
    if word in _FETCH_SECTIONED:
        cur.fail(f"'[' and a section after {word}")
    cur.fail("a fetch attribute", start)


@_production("section")
def _section(cur: Cursor) -> Section:
    # section         = "[" [section-spec] "]"
    # section-spec    = section-msgtext / (section-part ["." section-text])
    # section-msgtext = "HEADER" / "HEADER.FIELDS" [".NOT"] SP header-list / "TEXT"
    # section-part    = nz-number *("." nz-number)
    # section-text    = section-msgtext / "MIME"
    cur.expect(b"[", "'['")
    section = Section()
    if cur.at_digit():
        part = _section_part(cur)
        section = Section(part)
        if cur.accept(b"."):
            text, fields = _section_text(cur, allow_mime=True)
            section = Section(part, text, fields)
    elif cur.peek() != 0x5D:
        text, fields = _section_text(cur, allow_mime=False)
        section = Section((), text, fields)
    cur.expect(b"]", "']' closing the section")
    return section


@_production("section-binary")
def _section_binary(cur: Cursor) -> Section:
    # section-binary = "[" [section-part] "]"
    cur.expect(b"[", "'['")
    part: tuple[int, ...] = ()
    if cur.peek() != 0x5D:
        part = _section_part(cur)
    cur.expect(b"]", "']' closing the section (section-binary has only part numbers)")
    return Section(part)


@_production("section-part")
def _section_part(cur: Cursor) -> tuple[int, ...]:
    parts = [cur.nz_number()]
    while cur.buf[cur.pos : cur.pos + 1] == b"." and cur.buf[cur.pos + 1 : cur.pos + 2].isdigit():
        cur.pos += 1
        parts.append(cur.nz_number())
    return tuple(parts)


_SECTION_WORD = re.compile(rb"[A-Za-z.]+")


@_production("section-text")
def _section_text(cur: Cursor, *, allow_mime: bool) -> tuple[str, tuple[str, ...]]:
    start = cur.pos
    found = _SECTION_WORD.match(cur.buf, cur.pos)
    word = found.group().decode("ascii").upper() if found else ""
    fields: tuple[str, ...] = ()
    if word in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
        cur.pos += len(word)
        cur.sp()
        fields = _header_list(cur)
    elif word in ("HEADER", "TEXT") or (allow_mime and word == "MIME"):
        cur.pos += len(word)
    else:
        expected = "HEADER, HEADER.FIELDS, HEADER.FIELDS.NOT, TEXT" + (
            " or MIME" if allow_mime else " or a part number"
        )
        cur.fail(expected, start)
    return word, fields


@_production("header-list")
def _header_list(cur: Cursor) -> tuple[str, ...]:
    # header-list = "(" header-fld-name *(SP header-fld-name) ")" ; header-fld-name = astring
    cur.open_list()
    names = [_text(cur.astring())]
    while cur.accept(b" "):
        names.append(_text(cur.astring()))
    cur.close_list()
    return tuple(names)


# -- STORE ----------------------------------------------------------------------------------------

_STORE_ATT = re.compile(r"([+-]?)FLAGS(\.SILENT)?")


@_production("store")
def _store(cur: Cursor, cmd: ImapCommand) -> Store:
    # store           = "STORE" SP sequence-set [store-modifiers] SP store-att-flags
    # store-att-flags = (["+" / "-"] "FLAGS" [".SILENT"]) SP (flag-list / (flag *(SP flag)))
    cur.sp()
    sequence = sequence_set(cur)
    cur.sp()
    unchangedsince: int | None = None
    if cur.peek() == 0x28:
        unchangedsince = _store_modifiers(cur)
        cur.sp()
    start = cur.pos
    found = _STORE_ATT.fullmatch(cur.atom().upper())
    if found is None:
        cur.fail("FLAGS, +FLAGS or -FLAGS, optionally .SILENT (store-att-flags)", start)
    action = {"": "set", "+": "add", "-": "remove"}[found.group(1)]
    cur.sp()
    if cur.peek() == 0x28:
        flags = flag_list(cur)
    else:
        flags_found = [flag(cur)]
        while cur.accept(b" "):
            flags_found.append(flag(cur))
        flags = tuple(flags_found)
    _end(cur)
    return Store(
        tag=cmd.tag,
        name=cmd.name,
        uid=cmd.uid,
        sequence=sequence,
        action=action,
        silent=bool(found.group(2)),
        flags=flags,
        unchangedsince=unchangedsince,
    )


@_production("store-modifiers", "RFC 7162 §7")
def _store_modifiers(cur: Cursor) -> int:
    # store-modifiers = SP "(" store-modifier *(SP store-modifier) ")"   ; RFC 4466
    # store-modifier  =/ "UNCHANGEDSINCE" SP mod-sequence-valzer          ; RFC 7162
    cur.open_list()
    start = cur.pos
    if cur.atom().upper() != "UNCHANGEDSINCE":
        cur.fail("UNCHANGEDSINCE (the only store modifier this server knows)", start)
    cur.sp()
    value = cur.number64()
    cur.close_list()
    return value


# -- ID -------------------------------------------------------------------------------------------


@_production("id", "RFC 2971 §4")
def _id(cur: Cursor, cmd: ImapCommand) -> Id:
    # id             ::= "ID" SPACE id_params_list
    # id_params_list ::= "(" #(string SPACE nstring) ")" / nil
    cur.sp()
    params: tuple[tuple[str, str | None], ...] | None = None
    if cur.at_nil():
        cur.nil()
    else:
        cur.open_list()
        pairs: list[tuple[str, str | None]] = []
        if cur.peek() != 0x29:
            while True:
                key = _text(cur.string())
                cur.sp()
                value = cur.nstring()
                pairs.append((key, None if value is None else _text(value)))
                if not cur.accept(b" "):
                    break
        cur.close_list()
        params = tuple(pairs)
    _end(cur)
    return Id(tag=cmd.tag, name=cmd.name, parameters=params)


_Parser = Callable[[Cursor, ImapCommand], ParsedCommand]

_PARSERS: dict[tuple[str, bool], _Parser] = {
    ("CAPABILITY", False): _no_arguments,
    ("NOOP", False): _no_arguments,
    ("LOGOUT", False): _no_arguments,
    ("STARTTLS", False): _no_arguments,
    ("NAMESPACE", False): _no_arguments,
    ("IDLE", False): _no_arguments,
    ("CHECK", False): _no_arguments,
    ("CLOSE", False): _no_arguments,
    ("UNSELECT", False): _no_arguments,
    ("AUTHENTICATE", False): _authenticate,
    ("LOGIN", False): _login,
    ("ENABLE", False): _enable,
    ("SELECT", False): _select,
    ("EXAMINE", False): _select,
    ("CREATE", False): _create,
    ("DELETE", False): _mailbox_only,
    ("SUBSCRIBE", False): _mailbox_only,
    ("UNSUBSCRIBE", False): _mailbox_only,
    ("RENAME", False): _rename,
    ("LIST", False): _list,
    ("LSUB", False): _lsub,
    ("STATUS", False): _status,
    ("APPEND", False): _append,
    ("EXPUNGE", False): _expunge,
    ("EXPUNGE", True): _expunge,
    ("SEARCH", False): _search,
    ("SEARCH", True): _search,
    ("FETCH", False): _fetch,
    ("FETCH", True): _fetch,
    ("STORE", False): _store,
    ("STORE", True): _store,
    ("COPY", False): _copy_move,
    ("COPY", True): _copy_move,
    ("MOVE", False): _copy_move,
    ("MOVE", True): _copy_move,
    ("ID", False): _id,
}
