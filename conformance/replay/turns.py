"""A captured TCP stream cut into turns: what the client sent, and the server's answer.

Theory of operation. The client's bytes and the server's bytes of a
:class:`~conformance.capture.TcpStream` are each joined into one byte string
(up to the first gap, if the stream has one). The server's side is framed
into responses by the same sans-IO readers the runner uses
(:mod:`conformance.wire`); the client's side is cut into items by a small
per-protocol splitter that knows where a command's bytes end:

- SMTP (RFC 5321): one line per command; after ``DATA`` answered ``354``
  the message up to ``CRLF.CRLF`` (RFC 5321 §4.5.2); ``BDAT n`` carries n
  octets after its line (RFC 3030); after an ``AUTH`` answered ``334`` each
  line is a SASL response (RFC 4954). Every item gets exactly one reply, in
  order, which is how SMTP pipelining (RFC 2920) stays paired too.
- POP3 (RFC 1939, RFC 2449, RFC 5034): one line per command; the answer is
  multiline for ``CAPA``, ``RETR``, ``TOP`` and ``LIST``/``UIDL`` without
  argument; an ``AUTH`` answered ``+`` takes SASL response lines.
- IMAP (RFC 9051): the answer to a tagged command is every response up to
  its tagged status, or up to a continuation request (``+``). What the client
  sends after a continuation carries the same command on: the octets of a
  synchronising literal ``{n}`` and the rest of its line, a SASL response, or
  ``DONE`` ending IDLE (RFC 2177). Non-synchronising literals ``{n+}``
  (RFC 7888) stay inside their command's item.

A server that answers ``STARTTLS``/``STLS`` positively ends the cleartext:
the splitter stops there and marks the turns ``tls_cut``. The frame number
and time of a turn are those of the capture chunk holding its first byte.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Any, Literal

from conformance.capture import Chunk, Direction, TcpStream
from conformance.wire import (
    NEED_DATA,
    ConnectionClosed,
    ContinuationRequest,
    ImapResponseReader,
    Pop3Continuation,
    Pop3Response,
    Pop3ResponseReader,
    RemoteProtocolError,
    Reply,
    SmtpReplyReader,
    TaggedResponse,
)

__all__ = ["Split", "Turn", "TurnKind", "split_stream"]

TurnKind = Literal["greeting", "command", "data", "sasl", "continued", "unsolicited"]

_POP3_MULTILINE = {"CAPA", "RETR", "TOP"}
_LITERAL_AT_END = re.compile(rb"\{(\d+)(\+?)\}\r?\n$")


@dataclass
class Turn:
    """One thing the client sent (or nothing, for a greeting) and what came back.

    Attributes:
        kind: ``greeting`` (no client bytes), ``command`` (a command line, with a
            BDAT chunk or non-synchronising literals it carries), ``data`` (an SMTP
            message after 354, dot-stuffed and with its ``CRLF.CRLF``), ``sasl`` (a
            SASL response line), ``continued`` (IMAP: what follows a continuation
            request: literal octets and the rest of the line, or ``DONE``), or
            ``unsolicited`` (server responses after the client's last item).
        sent: the exact client bytes.
        verb: the command's verb, upper-cased (IMAP: the word after the tag; ``UID
            FETCH`` for UID commands); for other kinds the verb of the command they
            carry on.
        tag: IMAP: the tag of the command this turn belongs to.
        answer: the server's responses (wire events), in order.
        answer_raw: their exact bytes.
        client_frame, client_time: where the first client byte is in the capture.
        server_frame, server_time: where the first answer byte is.
        answer_time: where the last answer byte is (its chunk's time).
    """

    kind: TurnKind
    sent: bytes = b""
    verb: str = ""
    tag: str | None = None
    answer: list[Any] = field(default_factory=list)
    answer_raw: bytes = b""
    client_frame: int | None = None
    client_time: float | None = None
    server_frame: int | None = None
    server_time: float | None = None
    answer_time: float | None = None

    @property
    def line(self) -> bytes:
        """The first line of what was sent, without its line end."""
        first = self.sent.split(b"\n", 1)[0]
        return first[:-1] if first.endswith(b"\r") else first

    @property
    def frames(self) -> list[int]:
        return [f for f in (self.client_frame, self.server_frame) if f is not None]


@dataclass
class Split:
    """The turns of one stream, and what stopped the splitting early, if anything.

    Attributes:
        turns: in order.
        tls_cut: the server accepted STARTTLS/STLS; what follows is TLS.
        problem: a reason the turns end before the stream does (a malformed
            response, bytes after the cleartext that could not be framed), or None.
    """

    turns: list[Turn]
    tls_cut: bool = False
    problem: str | None = None


class _Side:
    """One direction's bytes, joined, with the chunk each offset came from."""

    def __init__(self, chunks: list[Chunk]) -> None:
        self.data = b"".join(c.data for c in chunks)
        self.starts: list[int] = []
        self.chunks = chunks
        pos = 0
        for c in chunks:
            self.starts.append(pos)
            pos += len(c.data)

    def chunk_at(self, offset: int) -> Chunk | None:
        if not self.chunks or offset >= len(self.data):
            return self.chunks[-1] if self.chunks and offset == len(self.data) else None
        return self.chunks[bisect_right(self.starts, offset) - 1]


def _usable_chunks(stream: TcpStream, direction: Direction) -> list[Chunk]:
    """The direction's chunks up to the first gap (never joined across a hole)."""
    first_gap = min((g.before_chunk for g in stream.gaps), default=len(stream.chunks))
    return [c for c in stream.chunks[:first_gap] if c.direction == direction]


class _Splitter:
    def __init__(self, stream: TcpStream, reader: Any) -> None:
        self.client = _Side(_usable_chunks(stream, "client"))
        self.server = _Side(_usable_chunks(stream, "server"))
        self.cpos = 0
        self.spos = 0  # server bytes consumed by events taken so far
        self.reader = reader
        reader.receive_data(self.server.data)
        reader.receive_data(b"")
        self.turns: list[Turn] = []
        self.tls_cut = False
        self.problem: str | None = None
        self.server_done = False

    # -- client side ---------------------------------------------------------

    def more_client(self) -> bool:
        return self.cpos < len(self.client.data)

    def take_line(self) -> bytes:
        data = self.client.data
        end = data.find(b"\n", self.cpos)
        stop = len(data) if end < 0 else end + 1
        line = data[self.cpos : stop]
        self.cpos = stop
        return line

    def take_octets(self, count: int) -> bytes:
        chunk = self.client.data[self.cpos : self.cpos + count]
        self.cpos += len(chunk)
        return chunk

    def start_turn(self, kind: TurnKind, verb: str = "", tag: str | None = None) -> Turn:
        chunk = self.client.chunk_at(self.cpos)
        turn = Turn(kind=kind, verb=verb, tag=tag)
        if chunk is not None and kind not in ("greeting", "unsolicited"):
            turn.client_frame, turn.client_time = chunk.frame, chunk.time
        self.turns.append(turn)
        return turn

    # -- server side ---------------------------------------------------------

    def next_event(self) -> Any:
        """The next server response, or None when there is none (end, or malformed)."""
        if self.server_done:
            return None
        try:
            event = self.reader.next_event()
        except RemoteProtocolError as exc:
            self.problem = f"a malformed response from the server: {exc}"
            self.server_done = True
            return None
        if event is NEED_DATA or isinstance(event, ConnectionClosed):
            self.server_done = True
            return None
        return event

    def answer(self, turn: Turn, event: Any) -> None:
        """Add one server event to ``turn``'s answer."""
        raw: bytes = getattr(event, "raw", b"")
        chunk = self.server.chunk_at(self.spos)
        if not turn.answer and chunk is not None:
            turn.server_frame, turn.server_time = chunk.frame, chunk.time
        self.spos += len(raw)
        end = self.server.chunk_at(max(self.spos - 1, 0))
        if end is not None:
            turn.answer_time = end.time
        turn.answer.append(event)
        turn.answer_raw += raw

    def rest_unsolicited(self) -> None:
        while (event := self.next_event()) is not None:
            turn = self.start_turn("unsolicited")
            self.answer(turn, event)


def _verb(line: bytes, words: int = 1) -> str:
    parts = line.strip().split(None, words)
    return parts[words - 1].decode("ascii", "replace").upper() if len(parts) >= words else ""


def _split_smtp(stream: TcpStream) -> Split:
    sp = _Splitter(stream, SmtpReplyReader(strict=False))
    greeting = sp.next_event()
    if greeting is not None:
        sp.answer(sp.start_turn("greeting"), greeting)
    while sp.more_client():
        turn = sp.start_turn("command")
        line = sp.take_line()
        turn.verb = _verb(line)
        turn.sent = line
        if turn.verb == "BDAT":
            size = line.split()[1:2]
            if size and size[0].isdigit():
                turn.sent += sp.take_octets(int(size[0]))
        reply = sp.next_event()
        if reply is None:
            continue
        sp.answer(turn, reply)
        if turn.verb == "DATA" and reply.code == 354 and sp.more_client():
            body = sp.start_turn("data", "DATA")
            data = sp.client.data
            end = data.find(b"\r\n.\r\n", sp.cpos)
            if data[sp.cpos : sp.cpos + 3] == b".\r\n":  # an empty message
                stop = sp.cpos + 3
            else:
                stop = len(data) if end < 0 else end + 5
            body.sent = sp.take_octets(stop - sp.cpos)
            if (reply := sp.next_event()) is not None:
                sp.answer(body, reply)
        while turn.verb == "AUTH" and isinstance(reply, Reply) and reply.code == 334:
            if not sp.more_client():
                break
            sasl = sp.start_turn("sasl", "AUTH")
            sasl.sent = sp.take_line()
            if (reply := sp.next_event()) is None:
                break
            sp.answer(sasl, reply)
        if turn.verb == "STARTTLS" and isinstance(reply, Reply) and reply.code == 220:
            sp.tls_cut = True
            return Split(sp.turns, tls_cut=True, problem=sp.problem)
    sp.rest_unsolicited()
    return Split(sp.turns, problem=sp.problem)


def _pop3_multiline(line: bytes) -> bool:
    words = line.split()
    verb = words[0].decode("ascii", "replace").upper() if words else ""
    return verb in _POP3_MULTILINE or (verb in ("LIST", "UIDL") and len(words) == 1)


def _split_pop3(stream: TcpStream) -> Split:
    reader = Pop3ResponseReader(strict=False)
    sp = _Splitter(stream, reader)
    greeting = sp.next_event()
    if greeting is not None:
        sp.answer(sp.start_turn("greeting"), greeting)
    while sp.more_client():
        turn = sp.start_turn("command")
        line = sp.take_line()
        turn.sent, turn.verb = line, _verb(line)
        reader.expect(multiline=_pop3_multiline(line))
        event = sp.next_event()
        if event is None:
            continue
        sp.answer(turn, event)
        while isinstance(event, Pop3Continuation) and sp.more_client():
            sasl = sp.start_turn("sasl", turn.verb)
            sasl.sent = sp.take_line()
            if (event := sp.next_event()) is None:
                break
            sp.answer(sasl, event)
        if turn.verb == "STLS" and isinstance(event, Pop3Response) and event.ok:
            return Split(sp.turns, tls_cut=True, problem=sp.problem)
    sp.rest_unsolicited()
    return Split(sp.turns, problem=sp.problem)


def _imap_command(sp: _Splitter) -> bytes:
    """A line, plus non-synchronising literals and the lines after them (RFC 7888)."""
    line = sp.take_line()
    while (m := _LITERAL_AT_END.search(line)) and m.group(2) == b"+" and sp.more_client():
        line += sp.take_octets(int(m.group(1)))
        line += sp.take_line()
    return line


def _split_imap(stream: TcpStream) -> Split:
    sp = _Splitter(stream, ImapResponseReader(strict=False))
    greeting = sp.next_event()
    if greeting is not None:
        sp.answer(sp.start_turn("greeting"), greeting)
    stash: dict[str, list[Any]] = {}  # tagged responses that came before their turn
    carry: Turn | None = None  # the turn whose answer ended with a continuation request
    while sp.more_client():
        if carry is not None:
            base = _command_of(sp.turns, carry)
            turn = sp.start_turn("continued", base.verb, base.tag)
            literal = _LITERAL_AT_END.search(carry.sent)
            synchronising = literal is not None and literal.group(2) == b""
            turn.sent = sp.take_octets(int(literal.group(1))) if literal and synchronising else b""
            turn.sent += _imap_command(sp)
        else:
            turn = sp.start_turn("command")
            turn.sent = _imap_command(sp)
            words = turn.sent.split(None, 3)
            turn.tag = words[0].decode("ascii", "replace") if words else ""
            turn.verb = _verb(turn.sent, 2)
            if turn.verb == "UID" and len(words) > 2:
                turn.verb = "UID " + words[2].decode("ascii", "replace").upper()
        carry = None
        event: Any = None
        if turn.tag in stash:
            for event in stash.pop(turn.tag or ""):
                sp.answer(turn, event)
            continue
        while (event := sp.next_event()) is not None:
            if isinstance(event, TaggedResponse) and event.tag != turn.tag:
                stash.setdefault(event.tag, []).append(event)  # a pipelined command's
                continue
            sp.answer(turn, event)
            if isinstance(event, ContinuationRequest):
                carry = turn
                break
            if isinstance(event, TaggedResponse):
                break
        if (
            _command_of(sp.turns, turn).verb == "STARTTLS"
            and isinstance(event, TaggedResponse)
            and event.status == "OK"
        ):
            return Split(sp.turns, tls_cut=True, problem=sp.problem)
    for events in stash.values():  # tagged responses no command of the capture claimed
        for event in events:
            sp.answer(sp.start_turn("unsolicited"), event)
    sp.rest_unsolicited()
    return Split(sp.turns, problem=sp.problem)


def _command_of(turns: list[Turn], turn: Turn) -> Turn:
    """The ``command`` turn a ``continued`` turn carries on."""
    for candidate in reversed(turns[: turns.index(turn) + 1]):
        if candidate.kind == "command":
            return candidate
    return turn


_SPLITTERS = {"smtp": _split_smtp, "pop3": _split_pop3, "imap": _split_imap}


def split_stream(stream: TcpStream, protocol: str | None = None) -> Split:
    """Cut ``stream`` into turns as ``protocol`` (default: ``stream.protocol``).

    Raises:
        ValueError: the protocol is not smtp, pop3 or imap.
    """
    proto = protocol or stream.protocol
    if proto not in _SPLITTERS:
        raise ValueError(f"cannot split a stream of protocol {proto!r}")
    return _SPLITTERS[proto](stream)
