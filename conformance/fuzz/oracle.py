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
  :class:`Inconsistent`).

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
from typing import Any

from conformance.fuzz.dialogue import (
    AnswerClosed,
    AnswerMalformed,
    AnswerTimeout,
    BadReply,
    Crash,
    Expectation,
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

__all__ = ["DialogueStats", "run_dialogue"]

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


def _read_event(sock: socket.socket, reader: Reader, deadline: float) -> Any:
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
        sock.settimeout(remaining)
        try:
            data = sock.recv(65536)
        except TimeoutError:
            raise _Timeout from None
        except OSError:  # reset: the server dropped the connection
            data = b""
        reader.receive_data(data)


class _Conn:
    """The socket (plain, then maybe TLS) and the reader of one dialogue."""

    def __init__(self, proto: ProtocolFuzz, sock: socket.socket, run: bytes) -> None:
        self.proto, self.sock, self.run = proto, sock, run
        self.reader = proto.new_reader()

    def send(self, send: Send) -> None:
        if self.proto.prepare is not None:
            self.proto.prepare(self.reader, send)
        with contextlib.suppress(OSError):  # gone? the read that follows says how
            self.sock.sendall(send.wire.replace(b"{run}", self.run))

    def answer(self, send: Send, deadline: float) -> Any:
        until = time.monotonic() + deadline

        def next_event() -> Any:
            return _read_event(self.sock, self.reader, until)

        return self.proto.read_answer(next_event, send)

    def starttls(self, login: Login, deadline: float) -> None:
        if login.context is None:
            raise LoginFailed("STARTTLS in the login prefix needs a TLS context")
        self.sock.settimeout(deadline)
        try:
            self.sock = login.context.wrap_socket(
                self.sock, server_hostname=login.server_name or None
            )
        except OSError as exc:
            raise LoginFailed(f"TLS handshake after STARTTLS failed: {exc}") from None
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


def run_dialogue(
    proto: ProtocolFuzz,
    service: Service,
    sends: list[Send],
    *,
    deadline: float,
    connect_timeout: float = 5.0,
    stats: DialogueStats | None = None,
    login: Login | None = None,
) -> list[StepRecord]:
    """Play ``sends`` on a new connection; return the records, or raise a Finding.

    Raises:
        Finding: a subclass naming the invariant that broke at the last record.
        ConnectionError: the service could not be reached at all (not a finding);
            :class:`LoginFailed` if the login prefix did not succeed.
    """
    stats = stats if stats is not None else DialogueStats()
    stats.dialogues += 1
    model = proto.new_model()
    records: list[StepRecord] = []
    sock = socket.create_connection((service.host, service.port), timeout=connect_timeout)
    with contextlib.suppress(OSError):  # one command a segment: no Nagle delay per step
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn = _Conn(proto, sock, secrets.token_hex(5).encode())
    try:
        queue = list(sends)
        current, expectation = _GREETING, model.greeting()
        while True:
            state = model.state()
            stats.states.add(state)
            if current is not _GREETING:
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
                    return records
                raise Crash(
                    f"the server dropped the connection after {_show(current)} "
                    f"(expected {expectation.why})",
                    records,
                ) from None
            code = proto.code_of(event)
            stats.codes[code] = stats.codes.get(code, 0) + 1
            records.append(_record(current, expectation, proto.describe(event), state))
            if not expectation.accepts(code):
                raise WrongReply(
                    f"{proto.describe(event)} to {_show(current)}; expected {expectation.why}",
                    records,
                )
            if current is _GREETING and not proto.greeting_ok(code):  # refused: nothing to fuzz
                return records
            if code in proto.final:  # SMTP 421 (RFC 5321 §3.8), IMAP BYE: the server closes
                return records
            if expectation.closes or code in proto.closing:  # SMTP 221 (RFC 5321 §4.2.2)
                try:
                    _read_event(conn.sock, conn.reader, time.monotonic() + deadline)
                except (_Closed, _Malformed):
                    return records
                except _Timeout:
                    pass
                raise NoClose(
                    f"the connection stayed open after {proto.describe(event)} to "
                    f"{_show(current)} ({expectation.why})",
                    records,
                )
            if current is _GREETING:
                if login is not None:
                    _play_login(proto, conn, model, login, deadline)
                follow = None
            else:
                try:
                    follow = model.observe(current, code, event)
                except Violation as bad:
                    records[-1] = StepRecord(
                        send=current,
                        expectation=expectation,
                        outcome=records[-1].outcome,
                        state=state,
                        extra_expect=bad.expect,
                    )
                    raise Inconsistent(f"{bad.message} (after {_show(current)})", records) from None
            if current is not _GREETING and current.terminal:
                return records
            if follow is not None:
                current = follow
            elif queue:
                current = queue.pop(0)
            else:
                return records
            expectation = model.expect(current)
    finally:
        with contextlib.suppress(OSError):
            conn.sock.close()


def _record(send: Send, expectation: Expectation, outcome: str, state: str) -> StepRecord:
    return StepRecord(send=send, expectation=expectation, outcome=outcome, state=state)


def _show(send: Send) -> str:
    if send.verb == "(greeting)":
        return "the greeting"
    if send.kind == "data":
        return "the message data"
    text = send.wire.rstrip(b"\r\n").decode("utf-8", "backslashreplace")
    text = text.encode("unicode_escape").decode("ascii")
    return repr(text if len(text) <= 60 else text[:60] + "…")
