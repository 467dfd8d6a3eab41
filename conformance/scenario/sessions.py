"""Protocol-aware client sessions: a channel plus the matching sans-IO reader.

A session knows how to read *one response* of its protocol (an SMTP reply;
a POP3 status line and maybe a body; an IMAP exchange up to a tagged status
or continuation), how to STARTTLS and how to log in. It never judges a
response: that is :mod:`.match`. Malformed server bytes surface as
:class:`~conformance.wire.RemoteProtocolError`, which the runner reports as
a failed check, not a harness crash.
"""

from __future__ import annotations

import base64
import re
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..transport import Channel, ReadTimeout
from ..wire import NEED_DATA, ConnectionClosed, RemoteProtocolError
from ..wire.imap import ContinuationRequest, ImapResponseReader, TaggedResponse, UntaggedResponse
from ..wire.pop3 import Pop3Continuation, Pop3Response, Pop3ResponseReader
from ..wire.smtp import Reply, SmtpReplyReader, parse_ehlo
from .model import Protocol

__all__ = ["Closed", "ImapExchange", "Session", "StepFailure", "StepTimeout", "make_session"]


class StepFailure(Exception):
    """The server's behaviour failed a check; the message says how, in one line."""


class StepTimeout(StepFailure):
    """Nothing (or not enough) arrived before the step's deadline."""


@dataclass(frozen=True)
class Closed:
    """The server closed the connection instead of answering."""


@dataclass
class ImapExchange:
    """One IMAP command's answer: untagged data, then a tagged status or a continuation."""

    untagged: list[UntaggedResponse] = field(default_factory=list)
    tagged: TaggedResponse | None = None
    continuation: ContinuationRequest | None = None

    @property
    def text(self) -> str:
        parts = [u.line for u in self.untagged]
        if self.continuation is not None:
            parts.append(f"+ {self.continuation.text}")
        if self.tagged is not None:
            parts.append(self.tagged.raw.decode("utf-8", "surrogateescape").rstrip("\r\n"))
        return "\n".join(parts)


Response = Reply | Pop3Response | Pop3Continuation | ImapExchange | UntaggedResponse | Closed


def response_text(resp: object) -> str:
    """The text regexes and captures are applied to."""
    if isinstance(resp, Reply):
        return resp.text
    if isinstance(resp, Pop3Response):
        head = resp.raw.split(b"\r\n", 1)[0].decode("utf-8", "surrogateescape")
        if resp.lines is None:
            return head
        body = b"\n".join(resp.lines).decode("utf-8", "surrogateescape")
        return f"{head}\n{body}"
    if isinstance(resp, Pop3Continuation):
        return resp.text
    if isinstance(resp, ImapExchange):
        return resp.text
    if isinstance(resp, UntaggedResponse):
        return resp.line
    return ""


_B64 = base64.b64encode


def _b64(text: str) -> bytes:
    return _B64(text.encode("utf-8"))


def _sasl_plain(user: str, password: str) -> bytes:
    # RFC 4616 §2: message = [authzid] UTF8NUL authcid UTF8NUL passwd
    return _B64(b"\0" + user.encode("utf-8") + b"\0" + password.encode("utf-8"))


class Session:
    """Base class: a channel, a reader, and how long to wait for answers."""

    protocol: Protocol
    reader: Any

    def __init__(self, channel: Channel):
        self.channel = channel
        self.greeted = False
        self.capabilities: set[str] = set()
        self.reset_reader()

    def reset_reader(self) -> None:
        raise NotImplementedError

    async def _next(self, timeout: float) -> Any:
        """Next event from the reader, reading from the channel as needed."""
        while True:
            try:
                event = self.reader.next_event()
            except RemoteProtocolError as exc:
                raise StepFailure(f"malformed response from the server: {exc}") from None
            if event is not NEED_DATA:
                if not isinstance(event, ConnectionClosed):
                    self.channel.record_received(event.raw)
                return event
            try:
                data = await self.channel.read(timeout)
            except ReadTimeout as exc:
                partial = self.reader.pending
                if partial:
                    self.channel.transcript.data(self.channel.name, "S", partial)
                raise StepTimeout(f"{exc} (waiting for a response)") from None
            self.reader.receive_data(data)

    async def expect_closed(self, timeout: float) -> None:
        try:
            event = await self._next(timeout)
        except StepTimeout:
            raise StepFailure(
                "expected the server to close the connection, "
                f"but it was still open after {timeout:g}s"
            ) from None
        if not isinstance(event, ConnectionClosed):
            raise StepFailure(f"expected the server to close the connection, got {event.raw!r}")

    async def expect_silence(self, seconds: float) -> None:
        if self.reader.pending:
            raise StepFailure(f"expected silence, but the server had sent {self.reader.pending!r}")
        try:
            data = await self.channel.read(seconds)
        except ReadTimeout:
            return
        if not data:
            raise StepFailure(
                f"expected silence for {seconds:g}s, but the server closed the connection"
            )
        self.channel.record_received(data)
        raise StepFailure(f"expected silence for {seconds:g}s, but the server sent {data!r}")

    async def send_line(self, line: bytes) -> None:
        await self.channel.send(line + b"\r\n")

    def note_sent(self, data: bytes) -> None:
        """Called for every send so the session can track what answer to expect."""

    async def start_tls(self) -> None:
        leftover = self.reader.pending
        if leftover:
            raise StepFailure(
                f"server sent {leftover!r} after its STARTTLS reply and before the TLS handshake "
                "(a response injection risk: RFC 3207 §4.2, RFC 2595 §4, RFC 9051 §6.2.1)"
            )
        await self.channel.start_tls()
        self.reset_reader()
        self.capabilities = set()

    async def read_greeting(self, timeout: float) -> Response:
        raise NotImplementedError

    async def starttls_command(self, timeout: float) -> Response:
        """Ask for TLS: STARTTLS (SMTP, IMAP) or STLS (POP3); returns the answer."""
        raise NotImplementedError


class SmtpSession(Session):
    protocol = Protocol.SMTP

    def reset_reader(self) -> None:
        self.reader = SmtpReplyReader()

    async def read_reply(self, timeout: float) -> Reply | Closed:
        event = await self._next(timeout)
        if isinstance(event, ConnectionClosed):
            return Closed()
        assert isinstance(event, Reply)
        return event

    async def read_greeting(self, timeout: float) -> Response:
        self.greeted = True
        return await self.read_reply(timeout)

    async def command(self, line: str, timeout: float) -> Reply:
        await self.send_line(line.encode("utf-8"))
        reply = await self.read_reply(timeout)
        if isinstance(reply, Closed):
            raise StepFailure(f"server closed the connection in answer to {line.split()[0]}")
        return reply

    async def ehlo(self, timeout: float, name: str = "harness.mailharness.test") -> Reply:
        reply = await self.command(f"EHLO {name}", timeout)
        if reply.code == 250:
            self.capabilities = capability_set_smtp(reply)
        return reply

    async def starttls_command(self, timeout: float) -> Response:
        return await self.command("STARTTLS", timeout)

    async def authenticate(
        self, mech: str, user: str, password: str, initial: bool, timeout: float
    ) -> Response:
        """RFC 4954 §4: AUTH mech [initial-response], then 334 challenges."""
        if mech == "PLAIN":
            token = _sasl_plain(user, password)
            if initial:
                return await self.command(f"AUTH PLAIN {token.decode()}", timeout)
            reply = await self.command("AUTH PLAIN", timeout)
            if reply.code != 334:
                return reply
            return await self.command(token.decode(), timeout)
        reply = await self.command("AUTH LOGIN", timeout)
        for secret in (user, password):
            if reply.code != 334:
                return reply
            reply = await self.command(_b64(secret).decode(), timeout)
        return reply


def capability_set_smtp(reply: Reply) -> set[str]:
    """EHLO keywords, plus ``KEYWORD=PARAM`` for each parameter.

    Read leniently: a legacy line such as ``AUTH=PLAIN LOGIN`` (which breaks
    RFC 5321 §4.1.1.1 ehlo-line) still yields AUTH, so one odd line does not
    fail every unrelated capability check; the EHLO syntax scenario reports it.
    """
    caps: set[str] = set()
    for keyword, params in parse_ehlo(reply, strict=False).items():
        caps.add(keyword)
        caps.update(f"{keyword}={p.upper()}" for p in params)
    return caps


_POP3_MULTI_ALWAYS = {"CAPA", "RETR", "TOP"}
_POP3_MULTI_NO_ARG = {"LIST", "UIDL"}


class Pop3Session(Session):
    protocol = Protocol.POP3

    def reset_reader(self) -> None:
        self.reader = Pop3ResponseReader()
        self._in_sasl = False
        self._shapes: deque[bool] = deque()  # multiline? for each command sent, in order
        self._armed = False  # the reader holds the shape of the response being read
        self._line = b""  # a command line sent in pieces, so far

    def note_sent(self, data: bytes) -> None:
        """Queue the shape of the answer to each command line, in order.

        RFC 2449 §6.6 PIPELINING: answers come in the order of the commands.
        Lines may arrive in pieces (a command sent in fragments counts once,
        when its line ends), and a reply to a SASL "+ " challenge is not a command.
        """
        self._line += data
        *lines, self._line = self._line.split(b"\n")
        for line in lines:
            if self._in_sasl:
                continue
            words = line.split()
            verb = words[0].upper().decode("ascii", "replace") if words else ""
            multi = verb in _POP3_MULTI_ALWAYS or (verb in _POP3_MULTI_NO_ARG and len(words) == 1)
            self._shapes.append(multi)
            if verb == "AUTH":
                self._in_sasl = True

    async def read_response(self, timeout: float, multiline: bool | None = None) -> Response:
        """Read one response; ``multiline`` (from the scenario) overrides the inferred shape."""
        if not self._armed:
            inferred = self._shapes.popleft() if self._shapes else False
            self.reader.expect(multiline=inferred if multiline is None else multiline)
            self._armed = True
        event = await self._next(timeout)
        if isinstance(event, ConnectionClosed):
            return Closed()
        if isinstance(event, Pop3Response):
            self._in_sasl = False
            self._armed = False
        return event

    async def read_greeting(self, timeout: float) -> Response:
        self.greeted = True
        return await self.read_response(timeout, multiline=False)

    async def command(self, line: str, timeout: float) -> Response:
        data = line.encode("utf-8") + b"\r\n"
        self.note_sent(data)
        await self.channel.send(data)
        return await self.read_response(timeout)

    async def capa(self, timeout: float) -> Response:
        resp = await self.command("CAPA", timeout)
        if isinstance(resp, Pop3Response) and resp.ok and resp.lines is not None:
            self.capabilities = capability_set_pop3(resp)
        return resp

    async def starttls_command(self, timeout: float) -> Response:
        return await self.command("STLS", timeout)

    async def authenticate(
        self, mech: str, user: str, password: str, initial: bool, timeout: float
    ) -> Response:
        if mech == "native":  # RFC 1939 §7 USER/PASS
            resp = await self.command(f"USER {user}", timeout)
            if not (isinstance(resp, Pop3Response) and resp.ok):
                return resp
            return await self.command(f"PASS {password}", timeout)
        # RFC 5034 §4: AUTH mech [initial-response]; "+ " challenges
        if mech == "PLAIN":
            token = _sasl_plain(user, password).decode()
            if initial:
                return await self.command(f"AUTH PLAIN {token}", timeout)
            resp = await self.command("AUTH PLAIN", timeout)
            if not isinstance(resp, Pop3Continuation):
                return resp
            return await self.command(token, timeout)
        resp = await self.command("AUTH LOGIN", timeout)
        for secret in (user, password):
            if not isinstance(resp, Pop3Continuation):
                return resp
            resp = await self.command(_b64(secret).decode(), timeout)
        return resp


def capability_set_pop3(resp: Pop3Response) -> set[str]:
    caps: set[str] = set()
    for raw in resp.lines or ():
        words = raw.decode("utf-8", "replace").split()
        if not words:
            continue
        caps.add(words[0].upper())
        caps.update(f"{words[0].upper()}={w.upper()}" for w in words[1:])
    return caps


_IMAP_TAGGED_CMD = re.compile(rb"^([\x21\x23\x24\x26\x27\x2c-\x5b\x5d-\x7a\x7c\x7e]+) [A-Za-z]")
_LITERAL_END = re.compile(rb"~?\{(\d+)\+?\}\r?\n$")


class ImapSession(Session):
    protocol = Protocol.IMAP

    def reset_reader(self) -> None:
        self.reader = ImapResponseReader()
        self.last_tag: str | None = None
        self.pending_tags: list[str] = []
        self.stash: dict[str, TaggedResponse] = {}
        self._line = b""  # a command line sent in pieces, so far
        self._literal_left = 0  # bytes of literal data still to be sent
        self._continuing = False  # the next line carries on a command after a literal
        self._counter = 0

    def next_tag(self) -> str:
        self._counter += 1
        return f"h{self._counter}"

    def note_sent(self, data: bytes) -> None:
        """Track which tags wait for a tagged response.

        A command is a line that starts a new command: not one that carries on
        after a literal, and not the N bytes of a literal announced by
        ``{N}`` or ``{N+}`` at the end of the line before (RFC 9051 §4.3,
        RFC 7888). The bytes are counted, since literal data may hold lines of
        its own (an APPENDed message's "Subject: hi" is not a command).
        """
        pos = 0
        while pos < len(data):
            if self._literal_left:
                take = min(self._literal_left, len(data) - pos)
                self._literal_left -= take
                pos += take
                continue
            end = data.find(b"\n", pos)
            chunk = data[pos:] if end < 0 else data[pos : end + 1]
            pos += len(chunk)
            self._line += chunk
            if end < 0:
                break
            line, self._line = self._line, b""
            if not self._continuing:
                m = _IMAP_TAGGED_CMD.match(line)
                if m:
                    tag = m.group(1).decode("ascii")
                    self.last_tag = tag
                    self.pending_tags.append(tag)
            literal = _LITERAL_END.search(line)
            self._literal_left = int(literal.group(1)) if literal else 0
            self._continuing = literal is not None

    async def read_exchange(
        self,
        timeout: float,
        *,
        tag: str | None,
        until_continuation: bool,
        until_untagged: list[Any] | None = None,
    ) -> ImapExchange | Closed:
        """Read responses until the tagged status for ``tag``, a continuation, or (when
        ``until_untagged`` is given and no command is waiting) until every pattern matched."""
        exchange = ImapExchange()
        if tag is not None and tag in self.stash and not until_continuation:
            exchange.tagged = self.stash.pop(tag)
            return exchange
        while True:
            if (
                until_untagged is not None
                and not until_continuation
                and _all_matched(until_untagged, exchange)
            ):
                return exchange
            event = await self._next(timeout)
            if isinstance(event, ConnectionClosed):
                if exchange.untagged:
                    return exchange
                return Closed()
            if isinstance(event, UntaggedResponse):
                exchange.untagged.append(event)
                if tag is None and until_untagged is None and not until_continuation:
                    return exchange  # a lone response (the greeting, or unsolicited data)
                continue
            if isinstance(event, ContinuationRequest):
                exchange.continuation = event
                return exchange
            assert isinstance(event, TaggedResponse)
            if event.tag in self.pending_tags:
                self.pending_tags.remove(event.tag)
            if tag is None or event.tag == tag:
                exchange.tagged = event
                return exchange
            self.stash[event.tag] = event  # a pipelined command's answer; kept for its own expect

    async def read_greeting(self, timeout: float) -> Response:
        self.greeted = True
        exchange = await self.read_exchange(timeout, tag=None, until_continuation=False)
        if isinstance(exchange, ImapExchange) and exchange.untagged:
            greeting = exchange.untagged[0]
            if greeting.code == "CAPABILITY" and greeting.code_args:
                self.capabilities = capability_set_imap(greeting.code_args.split())
        return exchange

    async def command(self, line: str, timeout: float) -> ImapExchange | Closed:
        tag = self.next_tag()
        data = f"{tag} {line}\r\n".encode()
        self.note_sent(data)
        await self.channel.send(data)
        return await self.read_exchange(timeout, tag=tag, until_continuation=False)

    async def capability(self, timeout: float) -> Response:
        exchange = await self.command("CAPABILITY", timeout)
        if isinstance(exchange, ImapExchange):
            for u in exchange.untagged:
                if u.keyword == "CAPABILITY" and u.data:
                    self.capabilities = capability_set_imap(str(c) for c in u.data)
        return exchange

    async def starttls_command(self, timeout: float) -> Response:
        return await self.command("STARTTLS", timeout)

    async def authenticate(
        self, mech: str, user: str, password: str, initial: bool, timeout: float
    ) -> Response:
        if mech == "native":  # RFC 9051 §6.2.3 LOGIN with quoted strings
            return await self.command(f"LOGIN {_imap_quote(user)} {_imap_quote(password)}", timeout)
        tag = self.next_tag()
        if mech == "PLAIN" and initial:  # RFC 4959 SASL-IR
            line = f"{tag} AUTHENTICATE PLAIN {_sasl_plain(user, password).decode()}"
            secrets: list[bytes] = []
        elif mech == "PLAIN":
            line, secrets = f"{tag} AUTHENTICATE PLAIN", [_sasl_plain(user, password)]
        else:
            line, secrets = f"{tag} AUTHENTICATE LOGIN", [_b64(user), _b64(password)]
        data = line.encode() + b"\r\n"
        self.note_sent(data)
        await self.channel.send(data)
        while True:
            exchange = await self.read_exchange(timeout, tag=tag, until_continuation=True)
            if isinstance(exchange, Closed) or exchange.continuation is None:
                if isinstance(exchange, ImapExchange) and exchange.tagged is None:
                    return await self.read_exchange(timeout, tag=tag, until_continuation=False)
                return exchange
            await self.channel.send((secrets.pop(0) if secrets else b"*") + b"\r\n")


def capability_set_imap(names: Iterable[str]) -> set[str]:
    """IMAP capability names, upper-cased; a valued one (``APPENDLIMIT=67108864``,
    ``AUTH=PLAIN``) also gives its bare name, so ``requires: [APPENDLIMIT]`` holds
    whatever the value (as EHLO keywords do for SMTP)."""
    caps: set[str] = set()
    for name in names:
        upper = name.upper()
        caps.add(upper)
        bare, sep, _ = upper.partition("=")
        if sep and bare:
            caps.add(bare)
    return caps


def _imap_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _all_matched(patterns: list[Any], exchange: ImapExchange) -> bool:
    lines = [u.line for u in exchange.untagged]
    used: set[int] = set()
    for pat in patterns:
        hit = next((i for i, line in enumerate(lines) if i not in used and pat.search(line)), None)
        if hit is None:
            return False
        used.add(hit)
    return True


def make_session(protocol: Protocol, channel: Channel) -> Session:
    cls: type[Session] = {
        Protocol.SMTP: SmtpSession,
        Protocol.POP3: Pop3Session,
        Protocol.IMAP: ImapSession,
    }[protocol]
    return cls(channel)
