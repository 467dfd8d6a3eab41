"""Run one dialogue against a live service and judge every step.

The invariants, checked at each step (docs/fuzzing.md):

- the answer parses with the protocol's strict reader (else :class:`BadReply`);
- it arrives within the deadline (else :class:`Hang`);
- the connection is not dropped, unless the model allowed a close (else :class:`Crash`);
- its code is one the model allowed (else :class:`WrongReply`);
- after an answer that must be followed by a close (SMTP 221, POP3 QUIT's +OK,
  IMAP LOGOUT), the server closes (else :class:`NoClose`);
- the answer's data keeps the session's invariants, as the model checks them
  (IMAP: UIDs only grow, EXISTS never negative, no BYE but on LOGOUT; else
  :class:`Inconsistent`);
- SMTP, with a :class:`~conformance.fuzz.retrieve.RetrieveCheck`: a message that got
  2xx for an account of the target is in its INBOX after the dialogue (else
  :class:`LostMessage`).

A :class:`~conformance.fuzz.dialogue.Login` prefix (STARTTLS, then a login) is
played first on every connection and must succeed; it is not judged, but the
model learns from it (it then starts in POP3 TRANSACTION or IMAP authenticated
state). ``{run}`` in a send is replaced by a token new for each dialogue (IMAP
mailbox names), as a scenario's ``{run}`` variable is.

Blocking sockets keep this small and fast (one dialogue is a few milliseconds on
loopback); the readers are the same sans-IO cores the asyncio runner uses.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from conformance.fuzz.dialogue import (
    Answer,
    AnswerClosed,
    AnswerMalformed,
    AnswerTimeout,
    BadReply,
    Crash,
    Differential,
    Expectation,
    Finding,
    Hang,
    Inconsistent,
    Login,
    LoginFailed,
    NoClose,
    ProtocolFuzz,
    Reader,
    Send,
    StepRecord,
    Violation,
    WrongReply,
)
from conformance.targets import Service
from conformance.wire import NEED_DATA, ConnectionClosed, RemoteProtocolError

if TYPE_CHECKING:
    from conformance.fuzz.retrieve import RetrieveCheck

__all__ = [
    "Channel",
    "Connector",
    "DialogueStats",
    "LiveDialogue",
    "SocketChannel",
    "SocketConnector",
    "answer_class",
    "compare_dialogues",
    "run_dialogue",
]

_GREETING = Send(verb="(greeting)", wire=b"")


@dataclass
class DialogueStats:
    """What the engine counts over all dialogues."""

    dialogues: int = 0
    steps: int = 0
    verbs: dict[str, int] = field(default_factory=dict)
    states: set[str] = field(default_factory=set)
    codes: dict[int | str, int] = field(default_factory=dict)


_Closed, _Timeout, _Malformed = AnswerClosed, AnswerTimeout, AnswerMalformed


class Channel(Protocol):
    """The byte pipe of one dialogue: a socket, or the reference server in memory."""

    def send(self, data: bytes) -> None:
        """Send ``data``; may raise OSError (the read that follows says what happened)."""
        ...

    def recv(self, timeout: float) -> bytes:
        """What arrived (at least one byte), ``b""`` at EOF or a reset.

        Raises:
            TimeoutError: nothing arrived within ``timeout`` seconds.
        """
        ...

    def starttls(self, login: Login, deadline: float) -> None:
        """Switch to TLS after a STARTTLS/STLS that succeeded (raises LoginFailed)."""
        ...

    def close(self) -> None: ...


class Connector(Protocol):
    """Opens a :class:`Channel` to the service under test, one per dialogue."""

    def open(self) -> Channel:
        """A new connection (raises ConnectionError/OSError if unreachable)."""
        ...


class SocketChannel:
    """A blocking TCP socket (TCP_NODELAY: one command a segment, no Nagle delay)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._timeout: float | None = -1.0

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self, timeout: float) -> bytes:
        if timeout != self._timeout:  # settimeout is a syscall (fcntl): only when it changes
            self.sock.settimeout(timeout)
            self._timeout = timeout
        try:
            return self.sock.recv(65536)
        except TimeoutError:
            raise
        except OSError:  # reset: the server dropped the connection
            return b""

    def starttls(self, login: Login, deadline: float) -> None:
        if login.context is None:
            raise LoginFailed("STARTTLS in the login prefix needs a TLS context")
        self.sock.settimeout(deadline)
        self._timeout = deadline
        try:
            self.sock = login.context.wrap_socket(
                self.sock, server_hostname=login.server_name or None
            )
        except OSError as exc:
            raise LoginFailed(f"TLS handshake after STARTTLS failed: {exc}") from None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


@dataclass(frozen=True)
class SocketConnector:
    """Dialogues over TCP to a target's service."""

    service: Service
    connect_timeout: float = 5.0

    def open(self) -> Channel:
        sock = socket.create_connection(
            (self.service.host, self.service.port), timeout=self.connect_timeout
        )
        return SocketChannel(sock)


def _read_event(chan: Channel, reader: Reader, deadline: float) -> Any:
    while True:
        try:
            event = reader.next_event()
        except RemoteProtocolError as exc:
            raise _Malformed(str(exc)) from None
        if event is not NEED_DATA:
            if isinstance(event, ConnectionClosed):
                raise _Closed
            return event
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _Timeout
        try:
            data = chan.recv(remaining)
        except TimeoutError:
            raise _Timeout from None
        reader.receive_data(data)


class _Conn:
    """The channel (plain, then maybe TLS) and the reader of one dialogue."""

    def __init__(self, proto: ProtocolFuzz, chan: Channel, run: bytes) -> None:
        self.proto, self.chan, self.run = proto, chan, run
        self.reader = proto.new_reader()

    def send(self, send: Send) -> None:
        if self.proto.prepare is not None:
            self.proto.prepare(self.reader, send)
        with contextlib.suppress(OSError):  # gone? the read that follows says how
            self.chan.send(send.wire.replace(b"{run}", self.run))

    def answer(self, send: Send, deadline: float) -> Any:
        until = time.monotonic() + deadline

        def next_event() -> Any:
            return _read_event(self.chan, self.reader, until)

        return self.proto.read_answer(next_event, send)

    def starttls(self, login: Login, deadline: float) -> None:
        self.chan.starttls(login, deadline)
        self.reader = self.proto.new_reader()


def _play_login(
    proto: ProtocolFuzz, conn: _Conn, model: Any, login: Login, deadline: float
) -> None:
    for send in proto.login_sends(login):
        conn.send(send)
        try:
            answer = conn.answer(send, deadline)
        except (_Closed, _Timeout, _Malformed) as exc:
            raise LoginFailed(
                f"login prefix: {_show(send)} got no usable answer ({exc!r})"
            ) from None
        code = proto.code_of(answer)
        if not proto.succeeded(code):
            raise LoginFailed(f"login prefix: {proto.describe(answer)} to {_show(send)}")
        model.observe(send, code, answer)
        if send.verb == "STARTTLS":
            conn.starttls(login, deadline)


class LiveDialogue:
    """One connection played a piece at a time: the greeting (and the login prefix) when
    it opens, then :meth:`play` for each piece of the dialogue, each answer judged.

    :func:`run_dialogue` plays a whole list with it; the state machine
    (:mod:`conformance.fuzz.machine`) one rule's sends per step. ``records`` holds
    every step so far; ``ended`` says the dialogue is over (a close the model
    allowed, QUIT/LOGOUT, a line after which nothing is judged): :meth:`play` is then
    a no-op. A broken invariant raises a :class:`~conformance.fuzz.dialogue.Finding`
    carrying the records, and also ends the dialogue.

    Raises (on opening):
        ConnectionError: the service could not be reached at all (not a finding);
            :class:`LoginFailed` if the login prefix did not succeed.
    """

    def __init__(
        self,
        proto: ProtocolFuzz,
        where: Service | Connector,
        *,
        deadline: float,
        connect_timeout: float = 5.0,
        stats: DialogueStats | None = None,
        login: Login | None = None,
    ) -> None:
        self.proto, self.deadline, self.login = proto, deadline, login
        self.stats = stats if stats is not None else DialogueStats()
        self.stats.dialogues += 1
        self.model = proto.new_model()
        self.records: list[StepRecord] = []
        self.sent = 0  # sends played (the login prefix not counted)
        self.ended = False
        connector = SocketConnector(where, connect_timeout) if isinstance(where, Service) else where
        self.conn = _Conn(proto, connector.open(), secrets.token_hex(5).encode())
        try:
            self._step(_GREETING)
        except BaseException:
            self.close()
            raise

    @property
    def run(self) -> bytes:
        """This dialogue's ``{run}`` token."""
        return self.conn.run

    def play(self, sends: list[Send]) -> None:
        """Each send in turn, with what the model sends after it (message data after a
        354, a literal after a continuation); stops where the dialogue ends."""
        for send in sends:
            current: Send | None = send
            while current is not None and not self.ended:
                current = self._step(current)

    def close(self) -> None:
        self.ended = True
        self.conn.chan.close()

    def _step(self, current: Send) -> Send | None:
        """One send and its answer, judged; the model's follow-up send, if any."""
        try:
            return self._judged(current)
        except Finding:
            self.ended = True
            raise

    def _judged(self, current: Send) -> Send | None:
        proto, conn, model, records, stats = (
            self.proto,
            self.conn,
            self.model,
            self.records,
            self.stats,
        )
        deadline = self.deadline
        greeting = current is _GREETING
        expectation = model.greeting() if greeting else model.expect(current)
        state = model.state()
        stats.states.add(state)
        if not greeting:
            self.sent += 1
            stats.steps += 1
            stats.verbs[current.verb] = stats.verbs.get(current.verb, 0) + 1
            conn.send(current)
        try:
            event = conn.answer(current, deadline)
        except _Timeout:
            records.append(_record(current, expectation, "no answer (timeout)", state))
            raise Hang(f"no answer within {deadline:g}s to {_show(current)}", records) from None
        except _Malformed as exc:
            records.append(_record(current, expectation, f"malformed: {exc}", state))
            raise BadReply(f"malformed answer to {_show(current)}: {exc}", records) from None
        except _Closed:
            records.append(_record(current, expectation, "connection closed", state))
            if expectation.may_close:
                self.ended = True
                return None
            raise Crash(
                f"the server dropped the connection after {_show(current)} "
                f"(expected {expectation.why})",
                records,
            ) from None
        code = proto.code_of(event)
        stats.codes[code] = stats.codes.get(code, 0) + 1
        records.append(_record(current, expectation, proto.describe(event), state, code))
        if not expectation.accepts(code):
            raise WrongReply(
                f"{proto.describe(event)} to {_show(current)}; expected {expectation.why}",
                records,
            )
        if (greeting and not proto.greeting_ok(code)) or code in proto.final:
            # refused: nothing to fuzz; SMTP 421 (RFC 5321 §3.8), IMAP BYE: the server closes
            self.ended = True
            return None
        if expectation.closes or code in proto.closing:  # SMTP 221 (RFC 5321 §4.2.2)
            self.ended = True
            try:
                _read_event(conn.chan, conn.reader, time.monotonic() + deadline)
            except (_Closed, _Malformed):
                return None
            except _Timeout:
                pass
            raise NoClose(
                f"the connection stayed open after {proto.describe(event)} to "
                f"{_show(current)} ({expectation.why})",
                records,
            )
        if greeting:
            if self.login is not None:
                _play_login(proto, conn, model, self.login, deadline)
            return None
        try:
            follow = model.observe(current, code, event)
        except Violation as bad:
            records[-1] = StepRecord(
                send=current,
                expectation=expectation,
                outcome=records[-1].outcome,
                state=state,
                code=code,
                extra_expect=bad.expect,
            )
            raise Inconsistent(f"{bad.message} (after {_show(current)})", records) from None
        if current.terminal:
            self.ended = True
            return None
        return follow


def run_dialogue(
    proto: ProtocolFuzz,
    where: Service | Connector,
    sends: list[Send],
    *,
    deadline: float,
    connect_timeout: float = 5.0,
    stats: DialogueStats | None = None,
    login: Login | None = None,
    retrieve: RetrieveCheck | None = None,
) -> list[StepRecord]:
    """Play ``sends`` on a new connection; return the records, or raise a Finding.

    ``where`` is a target's service (reached over TCP) or any :class:`Connector`
    (:class:`conformance.fuzz.memory.MemoryConnector`: the reference server in memory).
    With ``retrieve`` (SMTP), after the connection is closed, every message that got
    2xx for an account of the target must be in its INBOX (else :class:`LostMessage`).

    Raises:
        Finding: a subclass naming the invariant that broke at the last record.
        ConnectionError: the service could not be reached at all (not a finding);
            :class:`LoginFailed` if the login prefix did not succeed.
    """
    live = LiveDialogue(
        proto, where, deadline=deadline, connect_timeout=connect_timeout, stats=stats, login=login
    )
    try:
        live.play(sends)
    finally:
        live.close()
    check_retrieval(live, retrieve)
    return live.records


def check_retrieval(live: LiveDialogue, retrieve: RetrieveCheck | None) -> None:
    """SMTP: every message that got 2xx for an account is in its INBOX (after the close)."""
    delivered = getattr(live.model, "delivered", None)
    if retrieve is not None and delivered:
        retrieve.check(live.run, delivered, live.records)


def answer_class(proto: ProtocolFuzz, record: StepRecord) -> str:
    """What a differential run compares: the answer's class, or ``closed`` / ``timeout`` /
    ``malformed`` when there was no answer."""
    if record.code is not None:
        return proto.class_of(record.code)
    return {"c": "closed", "n": "timeout", "m": "malformed"}.get(record.outcome[:1], "?")


def compare_dialogues(
    proto: ProtocolFuzz, first: list[StepRecord], second: list[StepRecord]
) -> Differential | None:
    """The first step where the two targets' answers differ in class, as a finding.

    Its records are the first target's up to that step; the last one's expectation is
    the first target's answer class (so the written scenario passes against the first
    target and fails against the second) and its outcome names both answers.
    """
    for i, (a, b) in enumerate(zip(first, second, strict=False)):
        ca, cb = answer_class(proto, a), answer_class(proto, b)
        if ca == cb:
            continue
        why = f"as the first target answered ({ca}; the second target: {b.outcome})"
        expectation = a.expectation
        if a.code is not None:
            expectation = Expectation(codes=proto.class_members(a.code), why=why)
        last = StepRecord(
            send=a.send,
            expectation=expectation,
            outcome=f"{a.outcome}; second target: {b.outcome}",
            state=a.state,
            code=a.code,
        )
        message = (
            f"the targets differ at {_show(a.send)}: first {a.outcome!r} ({ca}), "
            f"second {b.outcome!r} ({cb})"
        )
        return Differential(message, [*first[:i], last], second[: i + 1])
    return None


def _record(
    send: Send, expectation: Expectation, outcome: str, state: str, code: Answer | None = None
) -> StepRecord:
    return StepRecord(send=send, expectation=expectation, outcome=outcome, state=state, code=code)


def _show(send: Send) -> str:
    if send.verb == "(greeting)":
        return "the greeting"
    if send.kind == "data":
        return "the message data"
    text = send.wire.rstrip(b"\r\n").decode("utf-8", "backslashreplace")
    text = text.encode("unicode_escape").decode("ascii")
    return repr(text if len(text) <= 60 else text[:60] + "…")
