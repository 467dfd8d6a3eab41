"""IMAP as the server sees it: command bytes in, framed commands and literal requests out.

Why this exists: a client may send anything, and nothing it sends may end the
session or confuse the server about where the next command starts. The
reference server, the fuzzer and scripted test servers all need the same
answer to "what did the client send", so framing lives here, without I/O,
and the typed per-command grammar lives in :mod:`._commands`.

Theory of operation
-------------------
A command is a line (RFC 9051 §2.2.1): ``tag SP command-name [SP arguments]``
ending in CRLF. If a line ends with a literal announcement the command goes
on: ``{n}`` (synchronising), ``{n+}`` (non-synchronising, RFC 7888) or
``~{n}`` (literal8, RFC 3516) is followed by CRLF and exactly *n* octets of
anything, and then by another line, which may announce another literal.

* A synchronising literal makes the reader stop with a :class:`LiteralRequest`.
  The client sends nothing until the server answers, so the server decides:
  :meth:`~ImapCommandReader.accept_literal` (and the server sends ``+ ...``)
  or :meth:`~ImapCommandReader.reject_literal` (the server sends a tagged NO
  or BAD; the client abandons the command, and the reader drops it too).
* A non-synchronising literal is read at once. Its octets arrive whatever the
  server thinks of them, so a command that is refused (no LITERAL+, a literal
  over the budget, any error found earlier on its first line) is *drained*:
  its remaining literals are read and thrown away up to its real end, and
  only then is it reported, so the octets can never be mistaken for commands
  (the command-injection hole of servers that answer BAD and read the
  literal as the next command). RFC 7888 §4 and §5: a non-synchronising
  literal the server will not take is answered with a tagged BAD carrying the
  TOOBIG response code (RFC 4469), which :attr:`ImapBadCommand.code` holds;
  as its octets come anyway, the server either reads and discards them or
  closes the connection. This reader reads and discards, so the session
  goes on (a server that would rather close can do so on the event).
* Over-long lines are read to their end and reported, never truncated
  (their head is kept for the tag, their tail for a literal announcement).

Bad input is an event, never an exception: :class:`ImapBadCommand` says what
was wrong and which rule says so, and the reader goes on with the next line.
Exceptions are only for the *server's* mistakes (:class:`LocalProtocolError`:
reading on without answering a :class:`LiteralRequest`, say).

The reader checks the tag and the command name (so an unknown command is
refused before its literals are asked for); arguments are checked by
:func:`~conformance.wire.imap.parse_command`, which walks a complete
:class:`ImapCommand` with the same :class:`Cursor` the client side uses.

:func:`quote` and :func:`format_list` are the other direction: strings and
lists in responses.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeAlias

from conformance.wire._errors import LocalProtocolError
from conformance.wire._events import NEED_DATA, ConnectionClosed, NeedData
from conformance.wire.imap._lexer import MAX_NUMBER64, TAG, Cursor, Literal

__all__ = [
    "COMMANDS",
    "LITERAL_MINUS_MAX",
    "UID_COMMANDS",
    "ImapBadCommand",
    "ImapCommand",
    "ImapCommandReader",
    "LiteralRequest",
    "format_list",
    "quote",
]

COMMANDS: frozenset[str] = frozenset(
    {
        # RFC 9051 §6.1 (any state), §6.2 (not authenticated)
        "CAPABILITY",
        "NOOP",
        "LOGOUT",
        "STARTTLS",
        "AUTHENTICATE",
        "LOGIN",
        # §6.3 (authenticated)
        "ENABLE",
        "SELECT",
        "EXAMINE",
        "CREATE",
        "DELETE",
        "RENAME",
        "SUBSCRIBE",
        "UNSUBSCRIBE",
        "LIST",
        "NAMESPACE",
        "STATUS",
        "APPEND",
        "IDLE",
        # §6.4 (selected)
        "CLOSE",
        "UNSELECT",
        "EXPUNGE",
        "SEARCH",
        "FETCH",
        "STORE",
        "COPY",
        "MOVE",
        # RFC 3501 only
        "LSUB",
        "CHECK",
        # RFC 2971
        "ID",
    }
)
"""Command names the reader accepts by default (every one has a parser in :mod:`._commands`)."""

UID_COMMANDS: frozenset[str] = frozenset({"COPY", "MOVE", "FETCH", "SEARCH", "STORE", "EXPUNGE"})
"""RFC 9051 §9: ``uid = "UID" SP (copy / move / fetch / search / store / uid-expunge)``."""

LITERAL_MINUS_MAX = 4096
"""RFC 7888 §5 (and RFC 9051 §4.3): the largest non-synchronising literal under LITERAL-."""

MAX_LITERALS = 1000
"""Literals one command may carry: each costs an entry in the literal map, even if empty."""

_CR = 0x0D
_HEAD = 100  # of an over-long line, kept for its tag
_TAIL = 40  # of an over-long line, kept for a literal announcement ("~{" 20 digits "+}")
# RFC 9051 §9 (and RFC 3516 §4.4, RFC 7888 §8):
#   literal  = "{" number64 ["+"] "}" CRLF *CHAR8
#   literal8 = "~{" number64 ["+"] "}" CRLF *OCTET
_MARKER = re.compile(rb"(~?)\{([0-9]{1,25})(\+?)\}\Z")
# RFC 9051 §9: command names are atoms (x-command = "X" atom <experimental command arguments>).
_NAME = re.compile(rb'[^(){ %*"\\\]\x00-\x1f\x7f-\xff]+')
_REASON_FORBIDDEN = re.compile(r"[\x00\r\n]")


@dataclass(frozen=True, kw_only=True)
class ImapCommand:
    """One complete command, literals included, ready for :func:`parse_command`.

    Attributes:
        tag: the client's tag.
        name: the command name, upper-cased; ``"FETCH"`` for ``UID FETCH``.
        uid: whether the command came as ``UID <name>``.
        line: the whole command without its final CRLF, every literal's
            announcement, CRLF and octets inlined where they came.
        args_at: offset in :attr:`line` where the arguments start (the SP
            after the name, or the end of the line if there are none).
        literals: where each literal sits: the offset of its ``{`` (``~``
            for literal8) in :attr:`line`, mapped to its octets' span.
    """

    tag: str
    name: str
    uid: bool = False
    line: bytes
    args_at: int
    literals: Mapping[int, Literal] = field(default_factory=dict)

    @property
    def args(self) -> bytes:
        """The bytes after the command name (from the SP on), literals inlined."""
        return self.line[self.args_at :]

    @property
    def raw(self) -> bytes:
        """The exact bytes received for this command, final CRLF included."""
        return self.line + b"\r\n"

    def cursor(self, *, max_depth: int = 64) -> Cursor:
        """A :class:`Cursor` at the start of the arguments, for the command productions."""
        return Cursor(self.line, self.literals, max_depth, self.args_at, noun="command")


@dataclass(frozen=True, kw_only=True)
class LiteralRequest:
    """The client announced a synchronising literal and waits for ``+`` (RFC 9051 §7.5).

    Answer with :meth:`ImapCommandReader.accept_literal` (then send a
    continuation request) or :meth:`ImapCommandReader.reject_literal` (then
    send a tagged NO or BAD; ``NO [TOOBIG]`` if :attr:`too_big`).

    Attributes:
        tag: the command's tag.
        name: the command's name (``"APPEND"``), upper-cased.
        uid: whether the command came as ``UID <name>``.
        size: the octets announced.
        binary: announced as literal8 (``~{n}``, RFC 3516).
        too_big: over ``max_literal`` or the command budget; cannot be accepted.
    """

    tag: str
    name: str
    uid: bool = False
    size: int
    binary: bool = False
    too_big: bool = False


@dataclass(frozen=True, kw_only=True)
class ImapBadCommand:
    """Input that is no valid command: answer ``tag BAD [code] reason`` (or ``* BAD``) and go on.

    Attributes:
        tag: the tag, if the line started with a valid one; ``None`` means
            answer with an untagged ``* BAD`` (RFC 9051 §7.1.3).
        reason: what was wrong and the rule that says so; safe to send as
            resp-text (no CR, LF or NUL).
        code: a response code for the BAD (``"TOOBIG"``), or ``None``.
        name: the command name if it was read (``"UID FETCH"`` reads as ``"FETCH"``).

    Raises:
        LocalProtocolError: at construction, if the reason holds CR, LF or NUL.
    """

    tag: str | None
    reason: str
    code: str | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        if _REASON_FORBIDDEN.search(self.reason):
            raise LocalProtocolError(f"BAD reason must be one line of text: {self.reason!r}")


ServerEvent: TypeAlias = ImapCommand | LiteralRequest | ImapBadCommand


class _Mode(enum.Enum):
    LINE = "LINE"  # reading a line
    LITERAL = "LITERAL"  # reading a literal's octets into the command
    DRAIN = "DRAIN"  # reading a literal's octets of a refused command, to drop them
    DECIDE = "DECIDE"  # a LiteralRequest waits for accept_literal() / reject_literal()


@dataclass(slots=True)
class _Line:
    content: bytes  # without the terminator; the tail only if too_long
    crlf: bool
    too_long: bool
    head: bytes  # the line's first bytes (its tag), even if too long


@dataclass(slots=True)
class _Partial:
    tag: str
    name: str
    uid: bool
    args_at: int
    data: bytearray
    literals: dict[int, Literal]


class ImapCommandReader:
    """Reads what an IMAP client sends, for a server.

    Args:
        max_line: the longest line (between literals), terminator excluded.
            RFC 7162 §4 asks servers to accept at least 8192 octets.
        max_literal: the largest literal accepted. A larger synchronising one
            gives ``LiteralRequest(too_big=True)``; a larger non-synchronising
            one is drained and reported as ``ImapBadCommand(code="TOOBIG")``.
        literal_plus: accept ``{n+}`` of any size (LITERAL+, RFC 7888 §3).
        literal_minus: without ``literal_plus``, accept ``{n+}`` up to 4096
            octets (LITERAL-, RFC 7888 §5; part of IMAP4rev2, RFC 9051 §4.3).
            With neither, every ``{n+}`` is a bad command.
        max_command: the most bytes one command may take, lines and literals
            together; defaults to ``max_literal + max_line``.
        commands: the command names accepted; others are reported as unknown.

    Raises:
        ValueError: a limit below what the protocol needs.
    """

    def __init__(
        self,
        *,
        max_line: int = 65536,
        max_literal: int = 64 * 1024 * 1024,
        literal_plus: bool = True,
        literal_minus: bool = False,
        max_command: int | None = None,
        commands: Collection[str] = COMMANDS,
    ) -> None:
        if max_line < _HEAD:
            raise ValueError(f"max_line must be at least {_HEAD}, not {max_line}")
        if max_literal < 0:
            raise ValueError(f"max_literal must not be negative, not {max_literal}")
        self.max_line = max_line
        self.max_literal = max_literal
        self.literal_plus = literal_plus
        self.literal_minus = literal_minus
        self.max_command = max_literal + max_line if max_command is None else max_command
        self.commands = frozenset(name.upper() for name in commands)
        self._buf = bytearray()
        self._scan = 0  # where to resume searching for LF
        self._eof = False
        self._mode = _Mode.LINE
        self._overflow = False  # the line being read is over max_line
        self._head = b""
        self._want = 0  # octets still to read in LITERAL / DRAIN mode
        self._cmd: _Partial | None = None
        self._skip: ImapBadCommand | None = None  # reported once the refused command ends
        self._request: LiteralRequest | None = None

    # -- the reader contract -------------------------------------------------------------

    @property
    def pending(self) -> bytes:
        """Bytes received and not yet consumed (the command being assembled is not included)."""
        return bytes(self._buf)

    @property
    def awaiting_decision(self) -> LiteralRequest | None:
        """The :class:`LiteralRequest` not yet answered, if any."""
        return self._request

    def discard_pending(self) -> bytes:
        """Drop and return unread bytes (STARTTLS: nothing sent before the handshake may run).

        RFC 9051 §6.2.1: the client must wait for the STARTTLS response; bytes
        that came with the command would otherwise be read as if protected.
        """
        dropped = bytes(self._buf)
        self._buf.clear()
        self._scan = 0
        self._overflow = False
        self._mode = _Mode.LINE
        self._want = 0
        self._cmd = None
        self._skip = None
        self._request = None
        return dropped

    def receive_data(self, data: bytes) -> None:
        """Add bytes from the client; ``b""`` means the client closed its side.

        Raises:
            LocalProtocolError: data after EOF.
        """
        if self._eof and data:
            raise LocalProtocolError("receive_data() called with data after EOF (b'')")
        if data:
            self._buf += data
        else:
            self._eof = True

    def next_event(self) -> ServerEvent | NeedData | ConnectionClosed:
        """The next command, literal request or bad command; NEED_DATA; or ConnectionClosed.

        A command cut off by EOF is dropped: ConnectionClosed follows.

        Raises:
            LocalProtocolError: a :class:`LiteralRequest` is still unanswered.
        """
        if self._mode is _Mode.DECIDE:
            raise LocalProtocolError(
                "answer the LiteralRequest with accept_literal() or reject_literal() before "
                "reading on"
            )
        while True:
            if self._mode is not _Mode.LINE:
                if not self._read_octets():
                    return self._starved()
                continue
            line = self._read_line()
            if line is None:
                return self._starved()
            event = self._on_line(line)
            if event is not None:
                return event

    def next_line(self) -> bytes | ImapBadCommand | NeedData | ConnectionClosed:
        """One line as it is, CRLF cut off: a SASL response (RFC 9051 §6.2.2) or IDLE's ``DONE``.

        Such lines are no commands, so only the line rules apply (CRLF, no NUL
        or bare CR, ``max_line``); a bad line comes back as an untagged
        :class:`ImapBadCommand`.

        Raises:
            LocalProtocolError: called in the middle of a command.
        """
        if self._mode is not _Mode.LINE or self._cmd is not None or self._skip is not None:
            raise LocalProtocolError("next_line() called in the middle of a command")
        line = self._read_line()
        if line is None:
            return self._starved()
        problem = _line_problem(line, self.max_line)
        if problem is not None:
            return ImapBadCommand(tag=None, reason=problem)
        return line.content

    def accept_literal(self) -> None:
        """Read the literal the pending :class:`LiteralRequest` announced (send ``+`` too).

        Raises:
            LocalProtocolError: no request is pending, or it is ``too_big``.
        """
        request = self._decision("accept_literal")
        if request.too_big:
            raise LocalProtocolError(
                f"the {request.size}-octet literal is over the reader's budget "
                f"(max_literal={self.max_literal}, max_command={self.max_command}); reject it"
            )
        self._request = None
        self._mode = _Mode.LITERAL
        self._want = request.size

    def reject_literal(self) -> None:
        """Refuse the pending literal: the command is dropped (send a tagged NO or BAD).

        RFC 9051 §7.5: after a tagged response instead of ``+``, the client
        does not send the literal, so the next line is a new command.

        Raises:
            LocalProtocolError: no request is pending.
        """
        self._decision("reject_literal")
        self._request = None
        self._cmd = None
        self._mode = _Mode.LINE

    # -- framing ---------------------------------------------------------------------------

    def _decision(self, what: str) -> LiteralRequest:
        if self._request is None:
            raise LocalProtocolError(f"{what}() called without a pending LiteralRequest")
        return self._request

    def _starved(self) -> NeedData | ConnectionClosed:
        return ConnectionClosed() if self._eof else NEED_DATA

    def _read_octets(self) -> bool:
        """Read literal octets (keep or drop them); True once all have arrived."""
        buf = self._buf
        n = min(self._want, len(buf))
        if self._mode is _Mode.LITERAL:
            assert self._cmd is not None
            self._cmd.data += buf[:n]
        del buf[:n]
        self._want -= n
        if self._want:
            return False
        self._mode = _Mode.LINE
        self._scan = 0
        return True

    def _read_line(self) -> _Line | None:
        buf = self._buf
        end = buf.find(b"\n", self._scan)
        if end < 0:
            # Content of max_line octets may still be followed by CR before the LF.
            if len(buf) > self.max_line + 1:
                if not self._overflow:
                    self._overflow = True
                    self._head = bytes(buf[:_HEAD])
                del buf[: len(buf) - _TAIL]
            self._scan = len(buf)
            return None
        crlf = end > 0 and buf[end - 1] == _CR
        content = bytes(buf[: end - 1 if crlf else end])
        del buf[: end + 1]
        self._scan = 0
        if self._overflow or len(content) > self.max_line:
            head = self._head if self._overflow else content[:_HEAD]
            self._overflow = False
            return _Line(content[-_TAIL:], crlf, True, head)
        return _Line(content, crlf, False, content[:_HEAD])

    def _on_line(self, line: _Line) -> ServerEvent | None:
        marker = _MARKER.search(line.content, max(0, len(line.content) - _TAIL))
        if self._skip is not None:
            return self._skip_line(marker)
        cmd = self._cmd
        problem = _line_problem(line, self.max_line)
        if cmd is None:
            tag = _tag_of(line.head)
            if problem is not None:
                return self._refuse(ImapBadCommand(tag=tag, reason=problem), marker)
            started = self._start(line.content, tag)
            if isinstance(started, ImapBadCommand):
                return self._refuse(started, marker)
            cmd = self._cmd = started
        else:
            if problem is not None:
                bad = ImapBadCommand(tag=cmd.tag, reason=problem, name=cmd.name)
                return self._refuse(bad, marker)
            if len(cmd.data) + len(line.content) > self.max_command:
                bad = ImapBadCommand(
                    tag=cmd.tag,
                    reason=f"command longer than max_command={self.max_command} octets",
                    name=cmd.name,
                )
                return self._refuse(bad, marker)
            cmd.data += line.content
        if marker is None:
            return self._complete(cmd)
        return self._literal(cmd, marker)

    def _start(self, content: bytes, tag: str | None) -> _Partial | ImapBadCommand:
        """Read ``tag SP command-name`` (or ``tag SP "UID" SP command-name``) off a first line."""
        if tag is None:
            if not content:
                reason = "empty line; a command is tag SP command-name (RFC 9051 §9 command)"
            else:
                reason = (
                    'a command starts with a tag (1*<any ASTRING-CHAR except "+">) and SP '
                    "(RFC 9051 §9 tag)"
                )
            return ImapBadCommand(tag=None, reason=reason)
        at = len(tag) + 1
        name, at = _word(content, at)
        if name is None:
            return ImapBadCommand(
                tag=tag,
                reason=f"expected SP and a command name after the tag at column {at} "
                "(RFC 9051 §9 command)",
            )
        uid = name == "UID"
        if uid:
            name, at = _word(content, at + 1)
            if name not in UID_COMMANDS:
                return ImapBadCommand(
                    tag=tag,
                    reason="UID must be followed by SP and one of "
                    f"{', '.join(sorted(UID_COMMANDS))} (RFC 9051 §6.4.9)",
                    name="UID",
                )
        elif name not in self.commands:
            return ImapBadCommand(
                tag=tag, reason=f"unknown command {name} (RFC 9051 §6)", name=name
            )
        assert name is not None
        return _Partial(tag, name, uid, at, bytearray(content), {})

    def _literal(self, cmd: _Partial, marker: re.Match[bytes]) -> ServerEvent | None:
        binary = bool(marker.group(1))
        size = int(marker.group(2))
        sync = not marker.group(3)
        offset = len(cmd.data) - len(marker.group())
        cmd.data += b"\r\n"
        start = len(cmd.data)
        too_big = (
            size > self.max_literal
            or size > MAX_NUMBER64
            or start + size > self.max_command
            or len(cmd.literals) >= MAX_LITERALS
        )
        if sync:
            cmd.literals[offset] = Literal(start, start + size, binary)
            self._request = LiteralRequest(
                tag=cmd.tag, name=cmd.name, uid=cmd.uid, size=size, binary=binary, too_big=too_big
            )
            self._mode = _Mode.DECIDE
            return self._request
        refusal: str | None = None
        code: str | None = "TOOBIG"
        if not self.literal_plus and not self.literal_minus:
            refusal = "non-synchronizing literal {n+} but LITERAL+ is not offered (RFC 7888 §3)"
            code = None
        elif not self.literal_plus and size > LITERAL_MINUS_MAX:
            refusal = (
                f"non-synchronizing literal of {size} octets; LITERAL- allows at most "
                f"{LITERAL_MINUS_MAX} (RFC 7888 §5)"
            )
        elif too_big:
            refusal = (
                f"literal of {size} octets is over this server's limit "
                f"(max_literal={self.max_literal}, max_command={self.max_command}, at most "
                f"{MAX_LITERALS} literals); it was read and discarded (RFC 7888 §4)"
            )
        if refusal is not None:
            bad = ImapBadCommand(tag=cmd.tag, reason=refusal, code=code, name=cmd.name)
            return self._refuse(bad, marker)
        cmd.literals[offset] = Literal(start, start + size, binary)
        self._mode = _Mode.LITERAL
        self._want = size
        return None

    def _complete(self, cmd: _Partial) -> ImapCommand:
        self._cmd = None
        return ImapCommand(
            tag=cmd.tag,
            name=cmd.name,
            uid=cmd.uid,
            line=bytes(cmd.data),
            args_at=cmd.args_at,
            literals=cmd.literals,
        )

    def _refuse(self, bad: ImapBadCommand, marker: re.Match[bytes] | None) -> ImapBadCommand | None:
        """Drop the command; report it now, or after draining the literal its line announced."""
        self._cmd = None
        if marker is None or not marker.group(3):
            # No literal follows (a synchronising one waits for a "+" that never comes).
            return bad
        self._skip = bad
        self._drain(marker)
        return None

    def _skip_line(self, marker: re.Match[bytes] | None) -> ImapBadCommand | None:
        """A line of a refused command: drain its literal, or end the command and report."""
        if marker is not None and marker.group(3):
            self._drain(marker)
            return None
        bad = self._skip
        self._skip = None
        return bad

    def _drain(self, marker: re.Match[bytes]) -> None:
        self._mode = _Mode.DRAIN
        self._want = int(marker.group(2))


def _word(content: bytes, at: int) -> tuple[str | None, int]:
    """The atom after the SP at ``at``, upper-cased, and the offset just past it."""
    if content[at - 1 : at] != b" ":
        return None, at
    found = _NAME.match(content, at)
    if found is None:
        return None, at + 1
    end = found.end()
    if end < len(content) and content[end] != 0x20:
        return None, end + 1
    return found.group().decode("ascii").upper(), end


def _tag_of(head: bytes) -> str | None:
    """The tag a line starts with, if it is a valid one and SP or the line end follows."""
    sp = head.find(b" ")
    word = head if sp < 0 else head[:sp]
    if sp < 0 and len(head) >= _HEAD:
        return None  # the tag may go on past what was kept
    if not TAG.fullmatch(word):
        return None
    return word.decode("ascii")


def _line_problem(line: _Line, max_line: int) -> str | None:
    """Why a line cannot be part of a command (outside literals), or None."""
    if line.too_long:
        return (
            f"line longer than max_line={max_line} octets; it was read to its end and ignored "
            "(RFC 7162 §4 asks servers to accept 8192)"
        )
    if not line.crlf:
        return "bare LF; IMAP lines end with CRLF (RFC 9051 §2.2)"
    content = line.content
    if b"\x00" in content:
        return (
            f"NUL at column {content.index(0) + 1}; NUL is allowed only inside a literal "
            "(RFC 9051 §9 CHAR, RFC 3516 literal8)"
        )
    if b"\r" in content:
        return f"bare CR at column {content.index(13) + 1} (RFC 9051 §2.2)"
    return None


# -- responses ------------------------------------------------------------------------------

# RFC 9051 §9:
#   quoted       = DQUOTE *QUOTED-CHAR DQUOTE
#   QUOTED-CHAR  = <any TEXT-CHAR except quoted-specials> / "\" quoted-specials /
#                  UTF8-2 / UTF8-3 / UTF8-4
_UNQUOTABLE = re.compile(rb"[\x00\r\n]")
_UNQUOTABLE_7BIT = re.compile(rb"[\x00\r\n\x80-\xff]")
_TOKEN_FORBIDDEN = re.compile(r'[^\x21-\x7e]|[ ()"{]')

ListItem: TypeAlias = "str | bytes | int | Sequence[ListItem] | None"


def quote(value: str | bytes, *, utf8: bool = False) -> bytes:
    """``value`` as an IMAP string: quoted when it can be, a literal otherwise.

    RFC 9051 §4.3: a quoted string cannot hold CR, LF or NUL; 8-bit octets
    only after ``ENABLE UTF8=ACCEPT`` (RFC 9051 §6.3.1, RFC 6855), hence
    ``utf8``. Everything else becomes a synchronising-form literal ``{n}``
    (servers never send ``{n+}``). NUL is not valid even in a literal (CHAR8);
    only literal8 in a BINARY response may carry it, which is not this helper's job.
    """
    data = value.encode("utf-8") if isinstance(value, str) else value
    unquotable = _UNQUOTABLE if utf8 else _UNQUOTABLE_7BIT
    if unquotable.search(data) is None:
        return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d}\r\n" % len(data) + data


def format_list(items: Iterable[ListItem], *, utf8: bool = False) -> bytes:
    """A parenthesised list for a response: ``(\\Seen "a b" 12 NIL (x))``.

    Items: ``str`` is a token sent as it is (an atom, a flag, a number
    written by the caller), ``bytes`` is a string (see :func:`quote`),
    ``int`` a number, ``None`` is NIL, a list or tuple a nested list.

    Raises:
        ValueError: a ``str`` token that is not one (empty, or holding SP,
            parentheses, quotes, ``{``, control or 8-bit characters).
    """
    parts: list[bytes] = []
    for item in items:
        if item is None:
            parts.append(b"NIL")
        elif isinstance(item, bool):
            raise ValueError("format_list: a bool is no IMAP value")
        elif isinstance(item, int):
            parts.append(b"%d" % item)
        elif isinstance(item, bytes):
            parts.append(quote(item, utf8=utf8))
        elif isinstance(item, str):
            if not item or _TOKEN_FORBIDDEN.search(item):
                raise ValueError(f"format_list: {item!r} is not a token; pass bytes for a string")
            parts.append(item.encode("ascii"))
        else:
            parts.append(format_list(item, utf8=utf8))
    return b"(" + b" ".join(parts) + b")"
