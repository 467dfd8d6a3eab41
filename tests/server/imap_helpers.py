"""A raw IMAP client for the server tests: bytes on a real socket, strict framing.

Written without ``conformance.wire`` on purpose: the server frames and parses
commands with ``conformance.wire.imap``, so a client built on the same package
could share (and hide) its bugs. The reader here checks the response syntax of
RFC 9051 §7 / §9 as it goes: every line ends in CRLF and holds no other CR or
LF, a literal ``{n}`` (or ``~{n}``) is followed by CRLF and exactly ``n``
octets, quoted strings use only the ``\\"`` and ``\\\\`` escapes, tokens are
separated by exactly one SP, and a command's completion carries its own tag.

A response is tokenized into plain Python values: atoms and numbers are
``str`` (``\\Seen``, ``42``, ``BODY[HEADER.FIELDS (SUBJECT)]<0>``), quoted
strings and literals are ``bytes``, ``NIL`` is ``None`` and a parenthesised
list is a ``list``.

Also here: sessions against a RunningServer (tests/conftest.py) over STARTTLS
or implicit TLS, imapclient sessions, a module-wide server, and small helpers
for FETCH and INTERNALDATE values.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import itertools
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

from raw_socket import IO_TIMEOUT, RawSocketClient

#: the two ways to a TLS session: STARTTLS on ``imap``, or the implicit-TLS ``imaps``
TLS_MODES = ("starttls", "imaps")

Token: TypeAlias = "str | bytes | list[Token] | None"

_STATUS = ("OK", "NO", "BAD", "BYE", "PREAUTH")
_LITERAL_AT_END = re.compile(rb"~?\{([0-9]+)\}\r\n$")
# RFC 9051 §9: tag = 1*<any ASTRING-CHAR except "+">
_TAG = re.compile(rb'[^\x00-\x20\x7f-\xff(){%*"\\+]+')
# RFC 9051 §9: atom-specials are ( ) { SP CTL list-wildcards quoted-specials resp-specials;
# a flag may start with "\" and "\*" is a flag; "*" and "%" appear in sequence sets here.
_ATOM_STOP = frozenset(b' (){"\r\n')


class ServerClosed(Exception):
    """The server closed the connection before a complete response arrived."""


class ImapSyntaxError(AssertionError):
    """The server sent something that is not a valid IMAP response (RFC 9051 §9)."""


@dataclass(frozen=True)
class Literal:
    """A literal argument for :meth:`RawImap.command`: ``{n}`` (waits for ``+``) or ``{n+}``."""

    data: bytes
    plus: bool = False


@dataclass(frozen=True)
class Response:
    """One server response, as read from the wire."""

    raw: bytes  # the exact octets, literals and CRLFs included
    tag: str  # "*", "+", or the tag of a completion
    status: str | None = None  # OK NO BAD BYE PREAUTH for status responses
    code: str | None = None  # the response code without its brackets
    text: str = ""  # human-readable text (status responses and "+")
    data: tuple[Token, ...] = ()  # the tokens of an untagged data response

    @property
    def kind(self) -> str:
        """``EXISTS`` for ``* 3 EXISTS``, ``FETCH``, ``LIST``, ...; the status for a status."""
        if self.status is not None:
            return self.status
        if self.tag == "+":
            return "+"
        first = self.data[0] if self.data else ""
        if isinstance(first, str) and first.isdigit() and len(self.data) > 1:
            second = self.data[1]
            return second.upper() if isinstance(second, str) else ""
        return first.upper() if isinstance(first, str) else ""

    @property
    def number(self) -> int:
        """The leading number of ``* n EXISTS`` / ``* n FETCH (...)``."""
        first = self.data[0]
        assert isinstance(first, str) and first.isdigit(), self.raw
        return int(first)

    @property
    def code_name(self) -> str | None:
        return None if self.code is None else self.code.split(" ", 1)[0].upper()

    @property
    def code_args(self) -> str:
        assert self.code is not None, self.raw
        return self.code.split(" ", 1)[1] if " " in self.code else ""


@dataclass
class Result:
    """A command's untagged responses and its completion."""

    tag: str
    untagged: list[Response] = field(default_factory=list)
    completion: Response | None = None
    continuations: list[Response] = field(default_factory=list)

    @property
    def tagged(self) -> Response:
        assert self.completion is not None, "no completion read"
        return self.completion

    @property
    def status(self) -> str:
        assert self.tagged.status is not None
        return self.tagged.status

    @property
    def ok(self) -> bool:
        return self.status == "OK"

    @property
    def code(self) -> str | None:
        return self.tagged.code

    @property
    def code_name(self) -> str | None:
        return self.tagged.code_name

    @property
    def code_args(self) -> str:
        return self.tagged.code_args

    @property
    def text(self) -> str:
        return self.tagged.text

    @property
    def raw(self) -> bytes:
        return b"".join(r.raw for r in [*self.untagged, self.tagged])

    def of(self, kind: str) -> list[Response]:
        """The untagged responses of one kind (``FETCH``, ``EXISTS``, ``LIST``, ``OK``...)."""
        return [r for r in self.untagged if r.kind == kind.upper()]

    def one(self, kind: str) -> Response:
        found = self.of(kind)
        assert len(found) == 1, (kind, self.raw)
        return found[0]

    def codes(self) -> dict[str, str]:
        """Response codes of the untagged status responses and the completion: name -> args."""
        out: dict[str, str] = {}
        for r in [*self.untagged, self.tagged]:
            if r.code is not None:
                out[r.code_name or ""] = r.code_args
        return out

    def fetches(self) -> dict[int, dict[str, Token]]:
        """``* n FETCH (...)`` responses merged per message number (RFC 9051 §7.5.2)."""
        out: dict[int, dict[str, Token]] = {}
        for r in self.of("FETCH"):
            out.setdefault(r.number, {}).update(fetch_items(r))
        return out

    def search(self) -> list[int]:
        """The numbers of the ``* SEARCH`` responses, in the order sent."""
        numbers: list[int] = []
        for r in self.of("SEARCH"):
            for token in r.data[1:]:
                assert isinstance(token, str) and token.isdigit(), r.raw
                numbers.append(int(token))
        return numbers

    def expunged(self) -> list[int]:
        return [r.number for r in self.of("EXPUNGE")]


def fetch_items(response: Response) -> dict[str, Token]:
    """The name -> value pairs of one FETCH response; names upper-cased, quotes dropped."""
    assert response.kind == "FETCH", response.raw
    assert len(response.data) == 3, f"FETCH takes one list: {response.raw!r}"
    items = response.data[2]
    assert isinstance(items, list), response.raw
    assert len(items) % 2 == 0, f"FETCH items are name/value pairs: {response.raw!r}"
    out: dict[str, Token] = {}
    for name, value in _pairs(items):
        assert isinstance(name, str), f"a FETCH item name is an atom: {response.raw!r}"
        key = item_key(name)
        assert key not in out, f"FETCH item {name} twice: {response.raw!r}"
        out[key] = value
    return out


def _pairs(items: list[Token]) -> Iterator[tuple[Token, Token]]:
    for i in range(0, len(items), 2):
        yield items[i], items[i + 1]


def item_key(name: str) -> str:
    """A FETCH item name normalised for lookups: upper case, no quotes."""
    return name.upper().replace('"', "")


# -- tokenizing --------------------------------------------------------------------------------


class _Tokens:
    """A strict tokenizer over one response (without its final CRLF)."""

    def __init__(self, data: bytes, raw: bytes) -> None:
        self.data = data
        self.raw = raw
        self.pos = 0

    def fail(self, why: str) -> ImapSyntaxError:
        return ImapSyntaxError(f"{why} at offset {self.pos} of {self.raw!r}")

    def items(self, closing: int | None) -> list[Token]:
        """Tokens up to ``closing`` (``)``) or the end, separated by single spaces."""
        out: list[Token] = []
        data = self.data
        while True:
            if self.pos >= len(data):
                if closing is not None:
                    raise self.fail("unterminated list")
                return out
            if closing is not None and data[self.pos] == closing:
                self.pos += 1
                return out
            if out:
                # lists of addresses and of body parts follow each other without SP
                # (RFC 9051 §9: env-to = "(" 1*address ")", body-type-mpart = 1*body SP ...)
                adjacent = data[self.pos] == 0x28 and data[self.pos - 1] == 0x29
                if not adjacent:
                    if data[self.pos] != 0x20:
                        raise self.fail("expected SP between tokens")
                    self.pos += 1
            out.append(self.token())

    def token(self) -> Token:
        data = self.data
        if self.pos >= len(data):
            raise self.fail("expected a token")
        ch = data[self.pos]
        if ch == 0x28:  # (
            self.pos += 1
            return self.items(0x29)
        if ch == 0x22:  # "
            return self.quoted()
        if ch == 0x7B or (ch == 0x7E and data[self.pos + 1 : self.pos + 2] == b"{"):
            return self.literal()
        return self.atom()

    def quoted(self) -> bytes:
        data = self.data
        self.pos += 1
        out = bytearray()
        while True:
            if self.pos >= len(data):
                raise self.fail("unterminated quoted string")
            ch = data[self.pos]
            if ch in (0x0D, 0x0A, 0x00):
                raise self.fail("CR, LF or NUL in a quoted string")
            if ch > 0x7F:  # RFC 3501 §9: QUOTED-CHAR is 7-bit (8-bit text needs a literal)
                raise self.fail("8-bit octet in a quoted string")
            if ch == 0x22:
                self.pos += 1
                return bytes(out)
            if ch == 0x5C:
                nxt = data[self.pos + 1 : self.pos + 2]
                if nxt not in (b'"', b"\\"):
                    raise self.fail('quoted string escapes only \\ and "')
                out += nxt
                self.pos += 2
                continue
            out.append(ch)
            self.pos += 1

    def literal(self) -> bytes:
        m = re.compile(rb"~?\{([0-9]+)\}\r\n").match(self.data, self.pos)
        if m is None:
            raise self.fail("bad literal header")
        size = int(m.group(1))
        start = m.end()
        if start + size > len(self.data):
            raise self.fail("literal shorter than announced")
        self.pos = start + size
        return self.data[start : self.pos]

    def atom(self) -> str | None:
        data = self.data
        start = self.pos
        while self.pos < len(data):
            ch = data[self.pos]
            if ch == 0x5B:  # [ ... ] (a section, possibly with spaces and parentheses)
                end = data.find(b"]", self.pos)
                if end < 0:
                    raise self.fail("unterminated [")
                self.pos = end + 1
                continue
            if ch in _ATOM_STOP or ch < 0x20 or ch == 0x7F:
                break
            self.pos += 1
        if self.pos == start:
            raise self.fail(f"unexpected {bytes([data[start]])!r}")
        text = data[start : self.pos]
        try:
            word = text.decode("ascii")
        except UnicodeDecodeError:
            raise self.fail("8-bit octets in an atom") from None
        return None if word.upper() == "NIL" else word


def tokenize(data: bytes, raw: bytes | None = None) -> list[Token]:
    """The tokens of ``data`` (one response's payload, no final CRLF)."""
    return _Tokens(data, raw if raw is not None else data).items(None)


def parse_response(raw: bytes) -> Response:
    """Parse one complete response (with literals and its final CRLF) strictly."""
    assert raw.endswith(b"\r\n"), raw
    body = raw[:-2]
    if body == b"+" or body.startswith(b"+ "):
        return Response(raw, "+", text=body[2:].decode("utf-8", "replace"))
    tag, sp, rest = body.partition(b" ")
    if not sp or not rest:
        raise ImapSyntaxError(f"no SP after the tag: {raw!r}")
    if tag != b"*" and not _TAG.fullmatch(tag):
        raise ImapSyntaxError(f"bad tag: {raw!r}")
    word, _, after = rest.partition(b" ")
    status = word.decode("ascii", "replace").upper()
    if status in _STATUS:
        if tag != b"*" and status not in ("OK", "NO", "BAD"):
            raise ImapSyntaxError(f"a completion is OK, NO or BAD: {raw!r}")
        if len(word) != len(rest) and rest[len(word) : len(word) + 1] != b" ":
            raise ImapSyntaxError(f"no SP after {status}: {raw!r}")
        code = None
        text = after
        if text.startswith(b"["):
            end = text.find(b"]")
            if end < 0:
                raise ImapSyntaxError(f"unterminated response code: {raw!r}")
            code = text[1:end].decode("utf-8")
            if not code or code != code.strip():
                raise ImapSyntaxError(f"empty or padded response code: {raw!r}")
            text = text[end + 1 :]
            if text and not text.startswith(b" "):
                raise ImapSyntaxError(f"no SP after the response code: {raw!r}")
            text = text[1:]
        if b"\r" in text or b"\n" in text:
            raise ImapSyntaxError(f"CR or LF inside a status response: {raw!r}")
        return Response(
            raw, tag.decode("ascii"), status=status, code=code, text=text.decode("utf-8")
        )
    if tag != b"*":
        raise ImapSyntaxError(f"a tagged response must be OK, NO or BAD: {raw!r}")
    return Response(raw, "*", data=tuple(tokenize(rest, raw)))


# -- the client --------------------------------------------------------------------------------


class RawImap(RawSocketClient):
    """A blocking IMAP client on a real socket that speaks bytes."""

    upgrade_reply = "STARTTLS completion"

    def __init__(self, host: str, port: int, *, timeout: float = IO_TIMEOUT) -> None:
        super().__init__(host, port, timeout=timeout)
        self._tags = (f"A{n:03d}" for n in itertools.count(1))

    def next_tag(self) -> str:
        return next(self._tags)

    # -- sending ------------------------------------------------------------------------

    def cmd(self, line: str | bytes, *, tag: str | None = None) -> Result:
        """Send ``tag SP line CRLF`` and read up to its completion."""
        return self.command(line, tag=tag)

    def command(self, *parts: str | bytes | Literal, tag: str | None = None) -> Result:
        """A command from pieces: text as given, :class:`Literal` as ``{n}``/``{n+}``.

        A synchronising literal is sent only after the server's ``+``; if the
        server answers the command instead (a refused literal), that answer is
        returned and the rest is not sent.
        """
        tag = tag or self.next_tag()
        result = Result(tag)
        pending = tag.encode() + b" "
        for part in parts:
            if isinstance(part, Literal):
                if part.plus:
                    pending += b"{%d+}\r\n" % len(part.data) + part.data
                    continue
                self.send(pending + b"{%d}\r\n" % len(part.data))
                pending = b""
                reply = self.read_response()
                if reply.tag == "+":
                    result.continuations.append(reply)
                    pending = part.data
                    continue
                self._collect(result, reply)
                if result.completion is not None:
                    return result
                return self.read_result(result)
            pending += part.encode("utf-8") if isinstance(part, str) else part
        self.send(pending + b"\r\n")
        return self.read_result(result)

    def _collect(self, result: Result, reply: Response) -> None:
        if reply.tag == "*":
            result.untagged.append(reply)
        elif reply.tag == "+":
            raise AssertionError(f"unexpected continuation request: {reply.raw!r}")
        elif reply.tag == result.tag:
            result.completion = reply
        else:
            raise AssertionError(f"completion for another tag ({result.tag}): {reply.raw!r}")

    def read_result(self, result: Result | str) -> Result:
        """Responses up to the completion tagged ``result.tag``."""
        if isinstance(result, str):
            result = Result(result)
        while result.completion is None:
            self._collect(result, self.read_response())
        return result

    def login(self, user: str, password: str) -> Result:
        return self.cmd(f"LOGIN {quoted(user)} {quoted(password)}")

    # -- receiving ----------------------------------------------------------------------

    def _line(self) -> bytes:
        while True:
            end = self.buf.find(b"\n")
            if end >= 0:
                line, self.buf = self.buf[: end + 1], self.buf[end + 1 :]
                if not line.endswith(b"\r\n") or b"\r" in line[:-2]:
                    raise ImapSyntaxError(f"line not ended by CRLF alone: {line!r}")
                return line
            if not self._fill():
                raise ServerClosed(f"connection closed; partial line {self.buf!r}")

    def _octets(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise ServerClosed(f"connection closed inside a literal ({len(self.buf)}/{n})")
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def read_raw_response(self) -> bytes:
        """One response's octets: a line, and after each ``{n}`` CRLF its literal and more."""
        raw = b""
        while True:
            line = self._line()
            raw += line
            m = _LITERAL_AT_END.search(line)
            if m is None:
                return raw
            raw += self._octets(int(m.group(1)))

    def read_response(self) -> Response:
        return parse_response(self.read_raw_response())

    def read_greeting(self) -> Response:
        greeting = self.read_response()
        assert greeting.tag == "*" and greeting.status in ("OK", "PREAUTH", "BYE"), greeting
        return greeting

    # -- TLS and closing ----------------------------------------------------------------


def quoted(text: str) -> str:
    """An IMAP quoted string (RFC 9051 §4.3)."""
    assert "\r" not in text and "\n" not in text, text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def plain(user: str, password: str, authzid: str = "") -> str:
    """A SASL PLAIN response, base64 (RFC 4616 §2)."""
    return base64.b64encode(f"{authzid}\0{user}\0{password}".encode()).decode("ascii")


def capabilities(result_or_response: Result | Response) -> set[str]:
    """Upper-cased capability names from ``* CAPABILITY`` or a ``[CAPABILITY ...]`` code."""
    if isinstance(result_or_response, Result):
        resp = result_or_response.one("CAPABILITY")
        words = [w for w in resp.data[1:] if isinstance(w, str)]
        assert len(words) == len(resp.data) - 1, resp.raw
    else:
        assert result_or_response.code_name == "CAPABILITY", result_or_response.raw
        words = result_or_response.code_args.split(" ")
    upper = [w.upper() for w in words]
    assert len(set(upper)) == len(upper), f"capability listed twice: {words}"
    return set(upper)


# -- values ------------------------------------------------------------------------------------

_MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
_DATE_TIME = re.compile(
    r"([ 0-9][0-9])-([A-Z][a-z]{2})-([0-9]{4}) ([0-9]{2}):([0-9]{2}):([0-9]{2}) ([+-][0-9]{4})"
)


def parse_internaldate(value: Token) -> datetime.datetime:
    """An RFC 9051 §9 ``date-time`` (the quoted string of INTERNALDATE), strictly."""
    assert isinstance(value, bytes), f"INTERNALDATE is a quoted string: {value!r}"
    m = _DATE_TIME.fullmatch(value.decode("ascii"))
    assert m is not None, f"not a date-time: {value!r}"
    day, month, year, hh, mm, ss, zone = m.groups()
    assert month in _MONTHS, value
    sign = -1 if zone[0] == "-" else 1
    offset = datetime.timedelta(hours=int(zone[1:3]), minutes=int(zone[3:5])) * sign
    return datetime.datetime(
        int(year),
        _MONTHS.index(month) + 1,
        int(day),
        int(hh),
        int(mm),
        int(ss),
        tzinfo=datetime.timezone(offset),
    )


def flag_set(value: Token) -> set[str]:
    """A FLAGS list as a set of flags (case kept)."""
    assert isinstance(value, list), value
    assert all(isinstance(f, str) for f in value), value
    return {f for f in value if isinstance(f, str)}


def as_int(value: Token) -> int:
    assert isinstance(value, str) and value.isdigit(), value
    return int(value)


# -- sessions against a RunningServer (tests/conftest.py) -----------------------------------------


def raw_imap(srv: Any, listener: str = "imap", *, greeting: bool = True) -> RawImap:
    """A raw client on ``listener`` (``imaps``: after the handshake); closed at teardown."""
    host, port = srv.addr(listener)
    client = RawImap(host, port)
    srv.track(client)
    if listener == "imaps":
        client.starttls(srv.tls_context())
    if greeting:
        client.read_greeting()
    return client


def tls_imap(srv: Any, mode: str = "imaps", user: str | None = None) -> RawImap:
    """A raw client inside TLS (``mode`` one of :data:`TLS_MODES`), logged in if ``user``."""
    if mode == "starttls":
        client = raw_imap(srv, "imap")
        result = client.cmd("STARTTLS")
        assert result.ok, result.raw
        client.starttls(srv.tls_context())
    else:
        assert mode == "imaps", mode
        client = raw_imap(srv, "imaps")
    if user is not None:
        result = client.login(user, srv.passwords[user])
        assert result.ok, result.raw
    return client


class _Shutdown:
    """Close an imapclient/imaplib session's socket at teardown (``close()`` is CLOSE)."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def close(self) -> None:
        self.client.shutdown()


def imapclient_session(srv: Any, user: str | None = "alice", *, mode: str = "imaps") -> Any:
    """An ``imapclient.IMAPClient`` over implicit TLS or STARTTLS, logged in if ``user``."""
    import imapclient  # type: ignore[import-untyped]

    host, port = srv.addr("imaps" if mode == "imaps" else "imap")
    client = imapclient.IMAPClient(
        host,
        port=port,
        ssl=mode == "imaps",
        ssl_context=srv.tls_context(),
        timeout=IO_TIMEOUT,
    )
    srv.track(_Shutdown(client))
    if mode == "starttls":
        client.starttls(srv.tls_context())
    if user is not None:
        client.login(user, srv.passwords[user])
    return client


# -- one server for a whole module -------------------------------------------------------------


def shared_imap_server(
    dev_setup: Any, data_dir: Path, *, auth_failure_delay: float = 0.05, **imap: Any
) -> Iterator[Any]:
    """A RunningServer with the ``start_server`` defaults, for a module-scoped fixture.

    ``imap`` overrides fields of ``ImapSettings``. Tests sharing it keep out of
    each other's way by working in mailboxes of their own (:func:`unique_name`).
    """
    from conftest import running_server

    yield from running_server(
        dev_setup, data_dir, limits={"auth_failure_delay": auth_failure_delay}, imap=imap
    )


def end_sessions(srv: Any) -> None:
    """Close the test's clients and wait for their sessions to end."""
    srv.close_clients()
    srv.wait_idle()


_names = itertools.count(1)


def unique_name(prefix: str = "T") -> str:
    """A mailbox name no other test in this process uses."""
    return f"{prefix}{next(_names)}x{int(time.monotonic() * 1000) % 100000}"


# -- messages ------------------------------------------------------------------------------------


def message(
    subject: str,
    body: bytes = b"Hello.\r\n",
    *,
    sender: str = "Sender <sender@remote.test>",
    to: str = "Alice <alice@example.test>",
    date: str = "Mon, 07 Jun 2021 10:00:00 +0000",
    extra: Sequence[str] = (),
) -> bytes:
    """A small RFC 5322 message with CRLF line ends."""
    head = [f"From: {sender}", f"To: {to}", f"Subject: {subject}", f"Date: {date}", *extra]
    return "".join(h + "\r\n" for h in head).encode() + b"\r\n" + body


def append(client: RawImap, mailbox: str, data: bytes, flags: str = "", date: str = "") -> int:
    """APPEND (LITERAL+) that must succeed; the UID from APPENDUID (RFC 4315 §3)."""
    args = quoted(mailbox) + (f" ({flags})" if flags else "") + (f' "{date}"' if date else "")
    result = client.command(f"APPEND {args} ", Literal(data, plus=True))
    assert result.ok, result.raw
    assert result.code_name == "APPENDUID", result.raw
    return int(result.code_args.split(" ")[1])


@contextlib.contextmanager
def socket_timeout(client: RawImap, seconds: float) -> Iterator[None]:
    client.sock.settimeout(seconds)
    try:
        yield
    finally:
        client.sock.settimeout(IO_TIMEOUT)
