"""IMAP SEARCH: evaluate a search program, format SEARCH and ESEARCH responses.

Sources: RFC 3501 §6.4.4 and RFC 9051 §6.4.4 (the search keys), RFC 7162
§3.1.5 (MODSEQ), RFC 4731 (ESEARCH result options), RFC 5182 (SAVE and ``$``).

Theory of operation
-------------------
The wire layer parses the program into a tree of
:class:`~conformance.wire.imap.SearchKey`. :class:`Program` compiles that tree
once per command into nested closures, resolving everything that does not
depend on the message first: sequence and UID sets become sorted, merged
ranges (``*`` is the largest number in use, ``5:*`` with a largest of 3 holds
3: :meth:`SequenceSet.ranges_for`), strings are case-folded, and the operands
of every AND and OR are put in order of cost: keys answered from the
:class:`MessageInfo` (flags, size, dates, UIDs, sequence numbers, mod-sequences)
first, then keys that read the header, then BODY and TEXT. Evaluation
short-circuits, and the message is read (the ``message`` callable) only when a
content key is reached, at most once per message. A program of cheap keys
never reads a file: ``SEARCH UNSEEN`` over 10,000 messages is a loop over
their flag sets.

Semantics (RFC 9051 §6.4.4 unless noted):

* BEFORE, ON, SINCE compare the calendar date of INTERNALDATE *in UTC*, the
  reference server's time zone for this purpose; SENTBEFORE, SENTON,
  SENTSINCE the date of the Date field in its own zone
  (:meth:`ParsedMessage.sent_date`); a message without a usable Date field
  matches none of them (nor is it "before" anything).
* BCC, CC, FROM, SUBJECT, TO and HEADER are case-insensitive (Unicode
  casefold) substring matches on the decoded field values
  (:meth:`ParsedMessage.header_contains`); an empty string matches every
  message that has the field. BODY and TEXT use
  :meth:`ParsedMessage.text_contains`.
* LARGER and SMALLER compare RFC822.SIZE (``MessageInfo.size``), strictly.
* NEW is RECENT and not ``\\Seen``; OLD is not RECENT (RFC 3501 §6.4.4).
* KEYWORD and UNKEYWORD compare keywords case-insensitively.
* MODSEQ n matches mod-sequences >= n (RFC 7162 §3.1.5). The optional entry
  name is ignored: the store keeps one mod-sequence per message, which is the
  one every flag's entry shares.
* ``$`` (RFC 5182) in a sequence set or a UID set is the saved result, given
  as a set of UIDs (``saved``); without one it is the empty set.
* When the message file is gone (``message`` returns ``None``), content keys
  do not match (so ``NOT FROM x`` does).

The charset (``CHARSET`` in the command) is checked by :func:`check_charset`:
US-ASCII and UTF-8 only, as RFC 9051 §6.4.4 requires; the parser has already
decoded the strings as UTF-8.
"""

from __future__ import annotations

import bisect
import datetime
from collections.abc import Callable, Collection, Iterable, Sequence

from conformance.wire.imap import SearchKey, SequenceSet, quote
from reference_server.imap.message import ParsedMessage
from reference_server.storage.mailbox_index import MessageInfo

__all__ = [
    "BADCHARSET",
    "CONTENT_KEYS",
    "SUPPORTED_CHARSETS",
    "Program",
    "check_charset",
    "format_esearch",
    "format_search",
    "format_sequence_set",
    "matches",
    "needs_message",
    "saved_result",
    "search",
    "search_flag",
    "single_flag",
    "uses_modseq",
]

SUPPORTED_CHARSETS = ("UTF-8", "US-ASCII")
"""The ``CHARSET`` values SEARCH accepts (RFC 9051 §6.4.4: US-ASCII and UTF-8 are required)."""

BADCHARSET = "BADCHARSET (UTF-8 US-ASCII)"
"""The response code (inside the brackets) for an unsupported charset (RFC 9051 §7.1)."""

_HEADER_KEYS = {"BCC": "bcc", "CC": "cc", "FROM": "from", "SUBJECT": "subject", "TO": "to"}
_SENT_KEYS = frozenset({"SENTBEFORE", "SENTON", "SENTSINCE"})
_BODY_KEYS = frozenset({"BODY", "TEXT"})
CONTENT_KEYS = frozenset({*_HEADER_KEYS, "HEADER", *_SENT_KEYS, *_BODY_KEYS})
"""The keys that need the message contents; every other key is answered from ``MessageInfo``."""

_FLAG_KEYS = {
    "ANSWERED": ("\\Answered", True),
    "DELETED": ("\\Deleted", True),
    "DRAFT": ("\\Draft", True),
    "FLAGGED": ("\\Flagged", True),
    "SEEN": ("\\Seen", True),
    "UNANSWERED": ("\\Answered", False),
    "UNDELETED": ("\\Deleted", False),
    "UNDRAFT": ("\\Draft", False),
    "UNFLAGGED": ("\\Flagged", False),
    "UNSEEN": ("\\Seen", False),
}

# Evaluation cost classes: MessageInfo only, the header, the body.
_FREE, _HEADER, _BODY = range(3)

# seq, info, recent, message -> whether the key matches
_Test = Callable[[int, MessageInfo, bool, "_Content"], bool]


# -- the charset -------------------------------------------------------------------------------


def check_charset(charset: str | None) -> str | None:
    """Whether SEARCH can use ``charset`` (RFC 9051 §6.4.4).

    Returns:
        ``None`` when it can: no ``CHARSET``, ``US-ASCII`` or ``UTF-8`` (any
        case). Otherwise the human-readable text of the tagged ``NO``, which
        goes with the response code :data:`BADCHARSET`:
        ``<tag> NO [BADCHARSET (UTF-8 US-ASCII)] <text>``. The text is
        printable ASCII (the charset's other characters shown as ``?``).
    """
    if charset is None or charset.upper() in SUPPORTED_CHARSETS:
        return None
    shown = "".join(c if 0x20 < ord(c) < 0x7F else "?" for c in charset[:64]) or '""'
    return f"charset {shown} is not supported; use UTF-8 or US-ASCII"


# -- what a program needs ----------------------------------------------------------------------


def _cost(key: SearchKey) -> int:
    if key.name in _BODY_KEYS:
        return _BODY
    if key.name in CONTENT_KEYS:
        return _HEADER
    return max((_cost(child) for child in key.children), default=_FREE)


def needs_message(key: SearchKey) -> bool:
    """Whether evaluating ``key`` may need the message contents (see :data:`CONTENT_KEYS`)."""
    return _cost(key) != _FREE


def uses_modseq(key: SearchKey) -> bool:
    """Whether the program has a MODSEQ key, so the response carries a mod-sequence (RFC 7162)."""
    return key.name == "MODSEQ" or any(uses_modseq(child) for child in key.children)


# -- compiling ---------------------------------------------------------------------------------


class _Content:
    """The message, read on first use and kept (``None``: the file is gone)."""

    __slots__ = ("_load", "_message", "_read")

    def __init__(self, load: Callable[[], ParsedMessage | None]) -> None:
        self._load = load
        self._read = False
        self._message: ParsedMessage | None = None

    def get(self) -> ParsedMessage | None:
        if not self._read:
            self._read = True
            self._message = self._load()
        return self._message


def _nothing() -> ParsedMessage | None:
    return None  # Program.matches without a message: as if the file were gone


_NO_CONTENT = _Content(_nothing)


def _internal_day(info: MessageInfo) -> datetime.date:
    """INTERNALDATE's calendar date in UTC (a naive datetime counts as UTC)."""
    when = info.internaldate
    if when.tzinfo is not None:
        when = when.astimezone(datetime.UTC)
    return when.date()


def _value(key: SearchKey, kind: type, what: str) -> object:
    if not isinstance(key.value, kind):
        raise ValueError(f"SEARCH {key.name} needs {what}, not {key.value!r}")
    return key.value


def _string(key: SearchKey) -> str:
    value = _value(key, str, "a string")
    assert isinstance(value, str)
    return value


def _number(key: SearchKey) -> int:
    value = _value(key, int, "a number")
    assert isinstance(value, int)
    return value


def _day(key: SearchKey) -> datetime.date:
    value = _value(key, datetime.date, "a date")
    assert isinstance(value, datetime.date)
    return value.date() if isinstance(value, datetime.datetime) else value


def _set(key: SearchKey) -> SequenceSet:
    value = _value(key, SequenceSet, "a sequence set")
    assert isinstance(value, SequenceSet)
    return value


def _in_ranges(ranges: list[tuple[int, int]]) -> Callable[[int], bool]:
    """A membership test for sorted, merged, inclusive ranges."""
    if not ranges:
        return lambda n: False
    if len(ranges) == 1:
        low, high = ranges[0]
        return lambda n: low <= n <= high
    starts = [a for a, _ in ranges]
    ends = [b for _, b in ranges]

    def inside(n: int) -> bool:
        index = bisect.bisect_right(starts, n) - 1
        return index >= 0 and n <= ends[index]

    return inside


def _compare(relation: str, day: datetime.date) -> Callable[[datetime.date], bool]:
    if relation == "BEFORE":
        return lambda d: d < day
    if relation == "ON":
        return lambda d: d == day
    return lambda d: d >= day  # SINCE


class Program:
    """A search program compiled for one mailbox state.

    Args:
        key: the program (``Search.criteria``).
        max_seq: the highest message sequence number (the message count);
            ``*`` in a sequence set means it.
        max_uid: the highest UID in the mailbox as the session sees it; ``*``
            in a UID set means it (0 for an empty mailbox).
        saved: the saved search result as UIDs, for ``$`` (RFC 5182);
            ``None`` (no saved result) makes ``$`` the empty set.

    Raises:
        ValueError: an unknown key, or a value of the wrong type (the parser
            never produces either).
    """

    __slots__ = ("_test", "max_seq", "max_uid", "needs_message", "uses_modseq")

    def __init__(
        self,
        key: SearchKey,
        *,
        max_seq: int,
        max_uid: int,
        saved: Collection[int] | None = None,
    ) -> None:
        self.max_seq = max_seq
        self.max_uid = max_uid
        self.needs_message = needs_message(key)
        self.uses_modseq = uses_modseq(key)
        self._test = self._compile(key, frozenset(saved or ()))
        # the commonest programs (UNSEEN, DELETED, NOT ...) test one flag: no calls per message

    def matches(
        self,
        seq: int,
        info: MessageInfo,
        recent: bool,
        message: Callable[[], ParsedMessage | None] | None = None,
    ) -> bool:
        """Whether message ``seq`` matches; ``message`` is called at most once, and only if needed.

        ``message`` may be ``None`` when the program does not need the
        contents (``not self.needs_message``); otherwise a missing one counts
        as a message whose file is gone.
        """
        content = _NO_CONTENT if message is None else _Content(message)
        return self._test(seq, info, recent, content)

    def search(
        self,
        entries: Iterable[tuple[int, MessageInfo, bool]],
        load: Callable[[MessageInfo], bytes | None],
        *,
        uid: bool = False,
    ) -> list[int]:
        """The sequence numbers (``uid``: the UIDs) of the matching entries, in their order.

        ``entries`` are ``(sequence number, info, recent)``; ``load`` reads a
        message's bytes (``None`` if its file is gone) and is called only for
        messages a content key has to look at.
        """
        test = self._test
        found: list[int] = []
        if not self.needs_message:
            for seq, info, recent in entries:
                if test(seq, info, recent, _NO_CONTENT):
                    found.append(info.uid if uid else seq)
            return found
        for seq, info, recent in entries:
            content = _Content(_loader(load, info))
            if test(seq, info, recent, content):
                found.append(info.uid if uid else seq)
        return found

    # -- the compiler --------------------------------------------------------------------------

    def _compile(self, key: SearchKey, saved: frozenset[int]) -> _Test:
        name = key.name
        if name in ("AND", "OR"):
            tests = [
                self._compile(child, saved) for child in sorted(key.children, key=_cost)
            ]  # sorted() is stable: equal costs keep the client's order
            return _all(tests) if name == "AND" else _any(tests)
        if name == "NOT":
            if len(key.children) != 1:
                raise ValueError(f"SEARCH NOT needs one operand, not {len(key.children)}")
            inner = self._compile(key.children[0], saved)
            return lambda s, i, r, c: not inner(s, i, r, c)
        if name == "ALL":
            return lambda s, i, r, c: True
        if name in _FLAG_KEYS:
            flag, present = _FLAG_KEYS[name]
            if present:
                return lambda s, i, r, c: flag in i.flags
            return lambda s, i, r, c: flag not in i.flags
        if name == "RECENT":
            return lambda s, i, r, c: r
        if name == "OLD":
            return lambda s, i, r, c: not r
        if name == "NEW":
            return lambda s, i, r, c: r and "\\Seen" not in i.flags
        if name in ("KEYWORD", "UNKEYWORD"):
            return _keyword(_string(key).casefold(), name == "KEYWORD")
        if name == "LARGER":
            larger = _number(key)
            return lambda s, i, r, c: i.size > larger
        if name == "SMALLER":
            smaller = _number(key)
            return lambda s, i, r, c: i.size < smaller
        if name == "MODSEQ":
            modseq = _number(key)
            return lambda s, i, r, c: i.modseq >= modseq
        if name in ("BEFORE", "ON", "SINCE"):
            internal = _compare(name, _day(key))
            return lambda s, i, r, c: internal(_internal_day(i))
        if name in ("UID", "SEQUENCE"):
            numbers = _set(key)
            if numbers.saved:
                return lambda s, i, r, c: i.uid in saved
            if name == "UID":
                uids = _in_ranges(numbers.ranges_for(self.max_uid))
                return lambda s, i, r, c: uids(i.uid)
            seqs = _in_ranges(numbers.ranges_for(self.max_seq))
            return lambda s, i, r, c: seqs(s)
        return _content_test(key)


def _all(tests: list[_Test]) -> _Test:
    if len(tests) == 1:
        return tests[0]
    if len(tests) == 2:
        first, second = tests
        return lambda s, i, r, c: first(s, i, r, c) and second(s, i, r, c)

    def every(s: int, i: MessageInfo, r: bool, c: _Content) -> bool:
        return all(test(s, i, r, c) for test in tests)

    return every


def _any(tests: list[_Test]) -> _Test:
    if len(tests) == 2:
        first, second = tests
        return lambda s, i, r, c: first(s, i, r, c) or second(s, i, r, c)

    def some(s: int, i: MessageInfo, r: bool, c: _Content) -> bool:
        return any(test(s, i, r, c) for test in tests)

    return some


def _keyword(folded: str, present: bool) -> _Test:
    def has(info: MessageInfo) -> bool:
        return any(flag.casefold() == folded for flag in info.flags if flag[:1] != "\\")

    if present:
        return lambda s, i, r, c: has(i)
    return lambda s, i, r, c: not has(i)


def _content_test(key: SearchKey) -> _Test:
    name = key.name
    if name in _HEADER_KEYS:
        return _header(_HEADER_KEYS[name], _string(key))
    if name == "HEADER":
        if not isinstance(key.field, str):
            raise ValueError("SEARCH HEADER needs a field name")
        return _header(key.field, _string(key))
    if name in _BODY_KEYS:
        needle = _string(key)
        body_only = name == "BODY"

        def text(s: int, i: MessageInfo, r: bool, c: _Content) -> bool:
            message = c.get()
            return message is not None and message.text_contains(needle, body_only)

        return text
    if name in _SENT_KEYS:
        sent = _compare(name[4:], _day(key))

        def dated(s: int, i: MessageInfo, r: bool, c: _Content) -> bool:
            message = c.get()
            day = None if message is None else message.sent_date()
            return day is not None and sent(day)

        return dated
    raise ValueError(f"unknown SEARCH key {name!r}")


def _header(field: str, needle: str) -> _Test:
    def contains(s: int, i: MessageInfo, r: bool, c: _Content) -> bool:
        message = c.get()
        return message is not None and message.header_contains(field, needle)

    return contains


def _loader(
    load: Callable[[MessageInfo], bytes | None], info: MessageInfo
) -> Callable[[], ParsedMessage | None]:
    def parsed() -> ParsedMessage | None:
        data = load(info)
        return None if data is None else ParsedMessage.parse(data)

    return parsed


# -- the one-call forms ------------------------------------------------------------------------


def matches(
    key: SearchKey,
    *,
    seq: int,
    info: MessageInfo,
    recent: bool,
    max_seq: int,
    max_uid: int,
    message: Callable[[], ParsedMessage | None],
    saved: Collection[int] | None = None,
) -> bool:
    """Whether one message matches ``key`` (compiles the program each call; see :class:`Program`).

    ``message`` is called at most once, and only when a content key is
    reached; ``None`` from it means the file is gone.
    """
    program = Program(key, max_seq=max_seq, max_uid=max_uid, saved=saved)
    return program.matches(seq, info, recent, message)


def search(
    key: SearchKey,
    entries: Iterable[tuple[int, MessageInfo, bool]],
    *,
    max_seq: int,
    max_uid: int,
    load: Callable[[MessageInfo], bytes | None],
    saved: Collection[int] | None = None,
    uid: bool = False,
) -> list[int]:
    """The matching sequence numbers (``uid=True``: UIDs) of ``entries``, in their order.

    ``entries`` are ``(sequence number, info, recent)``. ``load`` reads a
    message (``None``: its file is gone); it is called only when the program
    has content keys, and only for messages that get past the cheap keys
    before them, at most once each.
    """
    program = Program(key, max_seq=max_seq, max_uid=max_uid, saved=saved)
    return program.search(entries, load, uid=uid)


# -- responses ---------------------------------------------------------------------------------


def search_flag(key: SearchKey, infos: Sequence[MessageInfo], *, uid: bool) -> list[int] | None:
    """A program that tests one system flag (``UNSEEN``, ``DELETED`` ...), run over
    ``infos`` (the whole mailbox, in sequence order) with no call per message.

    Returns:
        The matching sequence numbers (``uid``: UIDs), or ``None`` if the program
        is not such a test (then use :class:`Program`).
    """
    flag = single_flag(key)
    if flag is None:
        return None
    name, present = flag
    if uid:
        return [m.uid for m in infos if (name in m.flags) is present]
    return [n for n, m in enumerate(infos, 1) if (name in m.flags) is present]


def single_flag(key: SearchKey) -> tuple[str, bool] | None:
    """``(flag, present)`` if the program tests one system flag (``UNSEEN``: ``\\Seen``, False)."""
    single = key.children[0] if key.name == "AND" and len(key.children) == 1 else key
    return _FLAG_KEYS.get(single.name)


def format_search(numbers: Iterable[int], *, modseq: int | None = None) -> bytes:
    """The untagged SEARCH response (RFC 3501 §7.2.5): ``* SEARCH 2 5 9\\r\\n``.

    ``modseq`` is the highest mod-sequence of the messages returned, for a
    program with a MODSEQ key (RFC 7162 §3.1.5: ``* SEARCH 2 5 (MODSEQ 917)``);
    it is left out when nothing matched, as the grammar has it only after a
    number (RFC 7162 §7 ``search-sort-mod-seq``).
    """
    found = " ".join(map(str, numbers)).encode()
    line = b"* SEARCH " + found if found else b"* SEARCH"
    if modseq is not None and found:
        line += b" (MODSEQ %d)" % modseq
    return line + b"\r\n"


def format_sequence_set(numbers: Iterable[int]) -> str:
    """Numbers as a compact ``sequence-set``: ``[9, 2, 5, 6, 7, 8]`` gives ``"2,5:9"``.

    No numbers give ``""`` (which is no sequence-set: leave the item out).
    """
    ordered = sorted(set(numbers))
    pieces: list[str] = []
    index = 0
    while index < len(ordered):
        start = end = ordered[index]
        index += 1
        while index < len(ordered) and ordered[index] == end + 1:
            end = ordered[index]
            index += 1
        pieces.append(str(start) if start == end else f"{start}:{end}")
    return ",".join(pieces)


def _requested(options: Sequence[str]) -> set[str]:
    wanted = {option.upper() for option in options}
    return wanted or {"ALL"}  # RFC 4731 §3.1: RETURN () means RETURN (ALL)


def format_esearch(
    tag: str | None,
    numbers: Sequence[int],
    options: Sequence[str],
    *,
    uid: bool,
    modseqs: Sequence[int] | None = None,
) -> bytes:
    """The ESEARCH response for ``SEARCH RETURN (options)`` (RFC 4731 §3.1, RFC 9051 §7.3.4).

    ``* ESEARCH (TAG "a1") UID MIN 2 MAX 9 COUNT 3 ALL 2,5:9 MODSEQ 917``: the
    correlator when ``tag`` is given, ``UID`` for UID SEARCH, then the
    requested items in the order MIN, MAX, COUNT, ALL. ``()`` means ALL. MIN,
    MAX and ALL are left out when nothing matched (COUNT 0 is not). ALL is a
    sequence set with ranges (:func:`format_sequence_set`).

    ``modseqs`` (the mod-sequence of each of ``numbers``, in the same order)
    is given when the program had a MODSEQ key; ``MODSEQ`` then follows, as
    RFC 4731 §3.2 computes it: the mod-sequence of the one message MIN or MAX
    returned, the higher of the two when both are returned without ALL or
    COUNT, else the highest of all matching messages. It is left out when
    nothing matched.

    SAVE (RFC 5182) is not a result item: ``RETURN (SAVE)`` alone gets no
    ESEARCH response at all, so this returns ``b""``.
    """
    wanted = _requested(options)
    if wanted == {"SAVE"}:
        return b""
    if modseqs is not None and len(modseqs) != len(numbers):
        raise ValueError("format_esearch: modseqs must have one entry per number")
    line = b"* ESEARCH"
    if tag is not None:
        line += b" (TAG " + quote(tag) + b")"
    if uid:
        line += b" UID"
    pairs = sorted(set(zip(numbers, modseqs or [0] * len(numbers), strict=True)))
    if pairs and "MIN" in wanted:
        line += b" MIN %d" % pairs[0][0]
    if pairs and "MAX" in wanted:
        line += b" MAX %d" % pairs[-1][0]
    if "COUNT" in wanted:
        line += b" COUNT %d" % len(pairs)
    if pairs and "ALL" in wanted:
        line += b" ALL " + format_sequence_set(n for n, _ in pairs).encode("ascii")
    if pairs and modseqs is not None:
        if wanted & {"ALL", "COUNT"} or not wanted & {"MIN", "MAX"}:
            returned = pairs
        else:
            returned = []
            if "MIN" in wanted:
                returned.append(pairs[0])
            if "MAX" in wanted:
                returned.append(pairs[-1])
        line += b" MODSEQ %d" % max(modseq for _, modseq in returned)
    return line + b"\r\n"


def saved_result(numbers: Sequence[int], options: Sequence[str]) -> list[int]:
    """What ``RETURN (SAVE ...)`` keeps for ``$`` (RFC 5182), from the matching ``numbers``.

    With MIN and/or MAX but neither ALL nor COUNT, only the messages those
    return; otherwise every match. Pass UIDs to get the UIDs to keep.
    """
    ordered = sorted(set(numbers))
    wanted = _requested(options)
    if not ordered or wanted & {"ALL", "COUNT"} or not wanted & {"MIN", "MAX"}:
        return ordered
    kept: list[int] = []
    if "MIN" in wanted:
        kept.append(ordered[0])
    if "MAX" in wanted and ordered[-1] not in kept:
        kept.append(ordered[-1])
    return kept
