"""A blocking IMAP client over :class:`conformance.wire.ImapResponseReader`, one step per command.

Public API (stable; ``loadtest.delivery`` builds on it)::

    imap = ImapDriver(Endpoint.from_target(target, "imap"), recorder=recorder)
    imap.start(username="alice", password="...")      # connect, STARTTLS, LOGIN
    box = imap.select("INBOX")                         # MailboxInfo(exists=3, uidnext=17, ...)
    uids = imap.search("ALL", uid=True)                # [14, 15, 16]
    msgs = imap.fetch("14:16", "(UID FLAGS BODY.PEEK[])", uid=True)  # [FetchedMessage]
    imap.store("14", ["\\\\Seen"], uid=True)
    imap.idle()                                        # IDLE, up to the "+" continuation
    pushed = imap.idle_wait(30.0, until=lambda r: r.keyword == "EXISTS")
    imap.done()                                        # DONE, up to the tagged OK
    imap.logout()

Steps reported to the recorder, with protocol ``"IMAP"``: ``connect`` (TCP,
implicit TLS, greeting), ``CAPABILITY``, ``STARTTLS`` (command and
handshake), ``LOGIN``, ``SELECT`` (``EXAMINE`` when read-only), ``SEARCH``,
``FETCH``, ``STORE``, ``EXPUNGE``, ``APPEND``, ``NOOP``, ``IDLE`` (from the
command to the continuation), ``DONE`` (from DONE to the tagged OK),
``LOGOUT``. ``idle_wait`` is not a step: it is the time the connection is
held, not a server response time.

Tags are ``a1``, ``a2``, ... per connection. Strings go out quoted when they
can (RFC 9051 §4.3) and as literals otherwise: ``{n+}`` when the server
offers LITERAL+ (RFC 7888), ``{n}`` with a wait for the continuation if not.
A tagged NO or BAD raises :class:`ImapReplyError` (``NO [TRYCREATE] no such
mailbox``) and closes the connection; so does anything else that breaks a
step (see :mod:`loadtest.drivers`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from conformance.targets import TlsMode
from conformance.wire import to_crlf
from conformance.wire.imap import (
    ContinuationRequest,
    ImapResponseReader,
    ImapToken,
    TaggedResponse,
    UntaggedResponse,
)

from ._base import (
    ConnectionLost,
    DriverBase,
    DriverError,
    DriverTimeout,
    Endpoint,
    ProtocolViolation,
    ReplyError,
    StepMeta,
    StepRecorder,
    TlsError,
)

__all__ = ["FetchedMessage", "ImapDriver", "ImapReplyError", "MailboxInfo"]

PROTOCOL = "IMAP"
# RFC 7888 §5: LITERAL- allows non-synchronizing literals up to 4096 octets
_LITERAL_MINUS_MAX = 4096
# RFC 9051 §4.3: a quoted string holds no CR, LF or NUL, and (without UTF8=ACCEPT) no 8-bit
_QUOTABLE = frozenset(range(0x01, 0x80)) - {0x0A, 0x0D}


class ImapReplyError(ReplyError):
    """A tagged NO or BAD (or a BYE where an answer was due); ``response`` is what came."""

    def __init__(self, response: TaggedResponse | UntaggedResponse, *, step: str) -> None:
        status = response.status if isinstance(response, TaggedResponse) else response.keyword
        code = ""
        if response.code:
            code = f"[{response.code}{' ' + response.code_args if response.code_args else ''}] "
        super().__init__(
            f"{status} {code}{response.text}".rstrip(),
            code=status,
            protocol=PROTOCOL,
            step=step,
        )
        self.response = response


@dataclass(frozen=True)
class MailboxInfo:
    """What SELECT/EXAMINE told about a mailbox (RFC 9051 §6.3.2)."""

    name: str
    exists: int = 0
    recent: int = 0
    uidvalidity: int | None = None
    uidnext: int | None = None
    read_only: bool = False


@dataclass(frozen=True)
class FetchedMessage:
    """One ``* n FETCH (...)`` response.

    Attributes:
        seq: the message sequence number.
        items: item name, upper-cased as sent (``"UID"``, ``"FLAGS"``,
            ``"BODY[]"``, ``"RFC822.SIZE"``) -> its value as the reader parsed it.
    """

    seq: int
    items: dict[str, ImapToken] = field(default_factory=dict)

    @property
    def uid(self) -> int | None:
        value = self.items.get("UID")
        return value if isinstance(value, int) else None

    @property
    def flags(self) -> tuple[str, ...]:
        value = self.items.get("FLAGS")
        return tuple(v for v in value if isinstance(v, str)) if isinstance(value, tuple) else ()

    @property
    def body(self) -> bytes | None:
        """The first message-content item (``BODY[...]``, ``BINARY[...]``, ``RFC822``)."""
        for name, value in self.items.items():
            if name.startswith(("BODY[", "BINARY[", "RFC822")) and isinstance(value, bytes):
                return value
        return None


class _Literal:
    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


Part = bytes | _Literal


def _astring(value: str | bytes) -> Part:
    data = value.encode("utf-8") if isinstance(value, str) else value
    if data and all(b in _QUOTABLE for b in data):
        return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return _Literal(data)


class ImapDriver(DriverBase):
    """One IMAP client connection. Not thread-safe; one greenlet per driver.

    Args:
        endpoint: where to connect, and how.
        recorder: times each step (default: records nothing).

    Attributes:
        capabilities: the last capability list seen (greeting, CAPABILITY, or a
            ``[CAPABILITY ...]`` code), upper-cased.
        selected: the selected mailbox, if any.
    """

    def __init__(self, endpoint: Endpoint, *, recorder: StepRecorder | None = None) -> None:
        super().__init__(endpoint, PROTOCOL, recorder)
        self.capabilities: frozenset[str] = frozenset()
        self.selected: MailboxInfo | None = None
        self._reader = ImapResponseReader(strict=False)
        self._counter = 0
        self._idle_tag: str | None = None

    # -- state --------------------------------------------------------------------------

    @property
    def idling(self) -> bool:
        return self._idle_tag is not None

    # -- plumbing -----------------------------------------------------------------------

    @contextlib.contextmanager
    def _step(self, name: str) -> Iterator[StepMeta]:
        """Time step ``name``; a failure in it closes the connection."""
        with self.recorder.step(PROTOCOL, name) as meta:
            self._chan.step = name
            try:
                yield meta
            except DriverError:
                self.close()
                raise

    def _next_tag(self) -> str:
        self._counter += 1
        return f"a{self._counter}"

    def _note_capabilities(self, code: str | None, args: str | None) -> None:
        if code == "CAPABILITY" and args:
            self.capabilities = frozenset(args.upper().split())

    def _fail(self, exc: DriverError) -> DriverError:
        self.close()
        return exc

    def _await_tagged(
        self, tag: str, step: str, meta: StepMeta, untagged: list[UntaggedResponse]
    ) -> TaggedResponse:
        """Read until the tagged response to ``tag``; untagged responses go to ``untagged``."""
        while True:
            event = self._chan.read_event(self._reader)
            meta.response_length += len(event.raw)
            if isinstance(event, UntaggedResponse):
                if event.keyword == "BYE" and step not in ("LOGOUT", "connect"):
                    raise self._fail(ImapReplyError(event, step=step))
                if event.keyword == "CAPABILITY" and event.data is not None:
                    self.capabilities = frozenset(str(c).upper() for c in event.data)
                self._note_capabilities(event.code, event.code_args)
                untagged.append(event)
            elif isinstance(event, TaggedResponse):
                if event.tag != tag:
                    raise self._fail(
                        ProtocolViolation(
                            f"tagged response for {event.tag!r} while waiting for {tag!r}",
                            protocol=PROTOCOL,
                            step=step,
                        )
                    )
                self._note_capabilities(event.code, event.code_args)
                if event.status != "OK":
                    raise self._fail(ImapReplyError(event, step=step))
                return event
            # a stray continuation outside a literal or IDLE: nothing to send, read on

    def _await_continuation(
        self, tag: str, step: str, meta: StepMeta, untagged: list[UntaggedResponse]
    ) -> ContinuationRequest:
        while True:
            event = self._chan.read_event(self._reader)
            meta.response_length += len(event.raw)
            if isinstance(event, ContinuationRequest):
                return event
            if isinstance(event, TaggedResponse):
                if event.status != "OK" or event.tag != tag:
                    raise self._fail(ImapReplyError(event, step=step))
                raise self._fail(
                    ProtocolViolation(
                        f"{step}: tagged OK before the continuation request",
                        protocol=PROTOCOL,
                        step=step,
                    )
                )
            if event.keyword == "BYE":
                raise self._fail(ImapReplyError(event, step=step))
            untagged.append(event)

    def _send_command(
        self,
        tag: str,
        parts: Sequence[Part],
        step: str,
        meta: StepMeta,
        untagged: list[UntaggedResponse],
    ) -> int:
        """Send ``tag SP parts CRLF``, handling literals; returns the literal bytes sent."""
        buf = tag.encode("ascii") + b" "
        sent = 0
        for part in parts:
            if isinstance(part, bytes):
                buf += part
                continue
            size = len(part.data)
            plus = "LITERAL+" in self.capabilities or (
                "LITERAL-" in self.capabilities and size <= _LITERAL_MINUS_MAX
            )
            if plus:
                buf += b"{%d+}\r\n" % size + part.data
            else:
                self._chan.send(buf + b"{%d}\r\n" % size)
                self._await_continuation(tag, step, meta, untagged)
                buf = part.data
            sent += size
        self._chan.send(buf + b"\r\n")
        return sent

    def command(self, step: str, *parts: Part) -> tuple[TaggedResponse, list[UntaggedResponse]]:
        """Run one command as step ``step``: ``command("NOOP", b"NOOP")``.

        ``parts`` are joined as given; a string argument that may need a
        literal is best built with :meth:`astring`.

        Returns:
            The tagged OK and the untagged responses that came before it.
        """
        untagged: list[UntaggedResponse] = []
        with self._step(step) as meta:
            tag = self._next_tag()
            self._send_command(tag, parts, step, meta, untagged)
            tagged = self._await_tagged(tag, step, meta, untagged)
        return tagged, untagged

    @staticmethod
    def astring(value: str | bytes) -> Part:
        """``value`` as a quoted string, or a literal when quoting cannot carry it."""
        return _astring(value)

    # -- steps --------------------------------------------------------------------------

    def connect(self) -> UntaggedResponse:
        """Open the connection and read the greeting (``* OK`` or ``* PREAUTH``)."""
        self.close()
        self._reader = ImapResponseReader(strict=False)
        self._counter = 0
        self.capabilities = frozenset()
        self.selected = None
        with self._step("connect") as meta:
            self._chan.open()
            event = self._chan.read_event(self._reader)
            meta.response_length = len(event.raw)
            if not isinstance(event, UntaggedResponse) or event.keyword not in ("OK", "PREAUTH"):
                raise self._fail(
                    ProtocolViolation(
                        f"greeting is not '* OK' or '* PREAUTH': {event.raw[:80]!r}",
                        protocol=PROTOCOL,
                        step="connect",
                    )
                    if not isinstance(event, UntaggedResponse) or event.keyword != "BYE"
                    else ImapReplyError(event, step="connect")
                )
        self._note_capabilities(event.code, event.code_args)
        return event

    def capability(self) -> frozenset[str]:
        """CAPABILITY; returns (and keeps) the capabilities, upper-cased."""
        self.command("CAPABILITY", b"CAPABILITY")
        return self.capabilities

    def starttls(self) -> None:
        """STARTTLS (RFC 9051 §6.2.1) and the handshake; capabilities are forgotten."""
        with self._step("STARTTLS") as meta:
            tag = self._next_tag()
            untagged: list[UntaggedResponse] = []
            self._chan.send(tag.encode("ascii") + b" STARTTLS\r\n")
            self._await_tagged(tag, "STARTTLS", meta, untagged)
            if self._reader.pending:
                raise self._fail(
                    TlsError(
                        "the server sent bytes after its OK to STARTTLS, before the handshake "
                        "(command injection risk)",
                        protocol=PROTOCOL,
                        step="STARTTLS",
                    )
                )
            self._chan.start_tls()
        self._reader = ImapResponseReader(strict=False)
        self.capabilities = frozenset()

    def login(self, username: str, password: str) -> TaggedResponse:
        """LOGIN (RFC 9051 §6.2.3)."""
        tagged, _ = self.command("LOGIN", b"LOGIN ", _astring(username), b" ", _astring(password))
        return tagged

    def start(
        self,
        *,
        username: str | None = None,
        password: str | None = None,
        starttls: bool | None = None,
    ) -> None:
        """connect, STARTTLS when the endpoint says so (or ``starttls``), LOGIN if a username."""
        self.connect()
        if starttls is None:
            starttls = self.endpoint.tls is TlsMode.STARTTLS
        if starttls:
            self.starttls()
        if username is not None:
            self.login(username, password or "")

    def select(self, mailbox: str = "INBOX", *, readonly: bool = False) -> MailboxInfo:
        """SELECT (or EXAMINE with ``readonly``); returns what the server reported."""
        verb = "EXAMINE" if readonly else "SELECT"
        tagged, untagged = self.command(verb, verb.encode() + b" ", _astring(mailbox))
        exists = recent = 0
        uidvalidity = uidnext = None
        for resp in untagged:
            if resp.keyword == "EXISTS" and resp.number is not None:
                exists = resp.number
            elif resp.keyword == "RECENT" and resp.number is not None:
                recent = resp.number
            elif resp.code == "UIDVALIDITY" and resp.code_args and resp.code_args.isdigit():
                uidvalidity = int(resp.code_args)
            elif resp.code == "UIDNEXT" and resp.code_args and resp.code_args.isdigit():
                uidnext = int(resp.code_args)
        info = MailboxInfo(
            name=mailbox,
            exists=exists,
            recent=recent,
            uidvalidity=uidvalidity,
            uidnext=uidnext,
            read_only=readonly or tagged.code == "READ-ONLY",
        )
        self.selected = info
        return info

    def search(self, criteria: str = "ALL", *, uid: bool = False) -> list[int]:
        """SEARCH (or UID SEARCH) with ``criteria`` written as IMAP (``"UNSEEN"``,
        ``'HEADER X-Mailharness-Token "abc"'``); returns the numbers found."""
        verb = b"UID SEARCH " if uid else b"SEARCH "
        _, untagged = self.command("SEARCH", verb + criteria.encode("utf-8"))
        found: list[int] = []
        for resp in untagged:
            if resp.keyword == "SEARCH" and resp.data:
                found.extend(v for v in resp.data if isinstance(v, int))
        return found

    def fetch(self, sequence_set: str, items: str, *, uid: bool = False) -> list[FetchedMessage]:
        """FETCH (or UID FETCH): ``fetch("1:*", "(UID FLAGS RFC822.SIZE)")``.

        Returns:
            One :class:`FetchedMessage` per FETCH response, in arrival order
            (flag updates pushed by the server among them too).
        """
        return self.fetch_with_updates(sequence_set, items, uid=uid)[0]

    def fetch_with_updates(
        self, sequence_set: str, items: str, *, uid: bool = False
    ) -> tuple[list[FetchedMessage], list[UntaggedResponse]]:
        """:meth:`fetch`, and every untagged response that came with it: a server
        announces new mail (``* n EXISTS``) in the answer to any command
        (RFC 9051 §7), so a caller watching for mail must look at those too."""
        verb = b"UID FETCH " if uid else b"FETCH "
        _, untagged = self.command(
            "FETCH", verb + sequence_set.encode("ascii") + b" " + items.encode("ascii")
        )
        out: list[FetchedMessage] = []
        for resp in untagged:
            if resp.keyword != "FETCH" or resp.number is None or not resp.data:
                continue
            atts = resp.data[0]
            if not isinstance(atts, tuple):
                continue
            pairs = {str(atts[i]).upper(): atts[i + 1] for i in range(0, len(atts) - 1, 2)}
            out.append(FetchedMessage(seq=resp.number, items=pairs))
        return out, untagged

    def store(
        self,
        sequence_set: str,
        flags: Iterable[str],
        *,
        action: str = "+FLAGS",
        uid: bool = False,
        silent: bool = True,
    ) -> list[UntaggedResponse]:
        """STORE: ``store("3", ["\\\\Seen"])`` adds the flag (``action`` ``-FLAGS``, ``FLAGS``)."""
        if action.upper() not in ("+FLAGS", "-FLAGS", "FLAGS"):
            raise ValueError(f"STORE action {action!r}: use +FLAGS, -FLAGS or FLAGS")
        verb = b"UID STORE " if uid else b"STORE "
        item = action.upper() + (".SILENT" if silent else "")
        _, untagged = self.command(
            "STORE",
            verb
            + sequence_set.encode("ascii")
            + b" "
            + item.encode("ascii")
            + b" ("
            + " ".join(flags).encode("ascii")
            + b")",
        )
        return untagged

    def expunge(self) -> list[int]:
        """EXPUNGE; returns the sequence numbers reported expunged, in order."""
        _, untagged = self.command("EXPUNGE", b"EXPUNGE")
        return [r.number for r in untagged if r.keyword == "EXPUNGE" and r.number is not None]

    def append(self, mailbox: str, message: bytes, *, flags: Iterable[str] = ()) -> TaggedResponse:
        """APPEND ``message`` (line ends made CRLF) to ``mailbox``; response_length is its size."""
        data = to_crlf(message)
        flag_list = " ".join(flags)
        parts: list[Part] = [b"APPEND ", _astring(mailbox), b" "]
        if flag_list:
            parts.append(b"(" + flag_list.encode("ascii") + b") ")
        parts.append(_Literal(data))
        untagged: list[UntaggedResponse] = []
        with self._step("APPEND") as meta:
            tag = self._next_tag()
            sent = self._send_command(tag, parts, "APPEND", meta, untagged)
            tagged = self._await_tagged(tag, "APPEND", meta, untagged)
            meta.response_length = sent
        return tagged

    def noop(self) -> list[UntaggedResponse]:
        """NOOP; returns the untagged updates it collected (EXISTS, EXPUNGE, FETCH)."""
        _, untagged = self.command("NOOP", b"NOOP")
        return untagged

    def idle(self) -> list[UntaggedResponse]:
        """IDLE (RFC 2177): send it and wait for the continuation; returns untagged
        responses that came first. Then :meth:`idle_wait`, and :meth:`done`."""
        if self._idle_tag is not None:
            raise RuntimeError("already idling; call done() first")
        untagged: list[UntaggedResponse] = []
        with self._step("IDLE") as meta:
            tag = self._next_tag()
            self._chan.send(tag.encode("ascii") + b" IDLE\r\n")
            self._await_continuation(tag, "IDLE", meta, untagged)
        self._idle_tag = tag
        return untagged

    def idle_wait(
        self,
        timeout: float,
        *,
        until: Callable[[UntaggedResponse], bool] | None = None,
    ) -> list[UntaggedResponse]:
        """While idling, collect what the server pushes for at most ``timeout`` seconds.

        Args:
            until: return as soon as a response satisfies it (default: the first
                response of any kind). Pass ``lambda r: False`` to hold the full time.

        Returns:
            The untagged responses received (possibly none).

        Raises:
            ConnectionLost: the server closed the connection (e.g. its autologout).
        """
        if self._idle_tag is None:
            raise RuntimeError("idle_wait() outside IDLE; call idle() first")
        deadline_left = timeout
        got: list[UntaggedResponse] = []
        end = time.monotonic() + timeout
        self._chan.step = "IDLE"
        while deadline_left > 0:
            try:
                event = self._chan.read_event(self._reader, timeout=deadline_left)
            except DriverTimeout:
                break
            if isinstance(event, UntaggedResponse):
                if event.keyword == "BYE":
                    self.close()
                    raise ConnectionLost(
                        f"the server ended the IDLE: BYE {event.text}",
                        protocol=PROTOCOL,
                        step="IDLE",
                    )
                got.append(event)
                if until is None or until(event):
                    break
            elif isinstance(event, TaggedResponse):
                self._idle_tag = None
                raise self._fail(ImapReplyError(event, step="IDLE"))
            deadline_left = end - time.monotonic()
        return got

    def done(self) -> list[UntaggedResponse]:
        """DONE: end IDLE and read its tagged OK; returns untagged responses read meanwhile."""
        tag = self._idle_tag
        if tag is None:
            raise RuntimeError("done() outside IDLE; call idle() first")
        self._idle_tag = None
        untagged: list[UntaggedResponse] = []
        with self._step("DONE") as meta:
            self._chan.send(b"DONE\r\n")
            self._await_tagged(tag, "DONE", meta, untagged)
        return untagged

    def logout(self) -> None:
        """LOGOUT and close. Does nothing if not connected; ends an IDLE first."""
        if not self.is_connected:
            return
        try:
            if self._idle_tag is not None:
                self.done()
            self.command("LOGOUT", b"LOGOUT")
        finally:
            self.close()

    def close(self) -> None:
        """Drop the connection without LOGOUT (safe to call at any time)."""
        self._idle_tag = None
        self.selected = None
        super().close()
