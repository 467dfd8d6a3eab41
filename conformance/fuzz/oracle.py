"""Run one dialogue against a live service and judge every step.

The invariants, checked at each step (docs/fuzzing.md):

- the answer parses with the protocol's strict reader (else :class:`BadReply`);
- it arrives within the deadline (else :class:`Hang`);
- the connection is not dropped, unless the model allowed a close (else :class:`Crash`);
- its code is one the model allowed (else :class:`WrongReply`);
- after an answer that must be followed by a close (SMTP 221), the server closes
  (else :class:`NoClose`).

Blocking sockets keep this small and fast (one dialogue is a few milliseconds on
loopback); the readers are the same sans-IO cores the asyncio runner uses.
"""

from __future__ import annotations

import contextlib
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from conformance.fuzz.dialogue import (
    BadReply,
    Crash,
    Expectation,
    Hang,
    NoClose,
    ProtocolFuzz,
    Reader,
    Send,
    StepRecord,
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
    codes: dict[int, int] = field(default_factory=dict)


class _Closed(Exception):
    pass


class _Timeout(Exception):
    pass


class _Malformed(Exception):
    pass


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


def run_dialogue(
    proto: ProtocolFuzz,
    service: Service,
    sends: list[Send],
    *,
    deadline: float,
    connect_timeout: float = 5.0,
    stats: DialogueStats | None = None,
) -> list[StepRecord]:
    """Play ``sends`` on a new connection; return the records, or raise a Finding.

    Raises:
        Finding: a subclass naming the invariant that broke at the last record.
        ConnectionError: the service could not be reached at all (not a finding).
    """
    stats = stats if stats is not None else DialogueStats()
    stats.dialogues += 1
    model = proto.new_model()
    reader = proto.new_reader()
    records: list[StepRecord] = []
    sock = socket.create_connection((service.host, service.port), timeout=connect_timeout)
    try:
        queue = list(sends)
        current, expectation = _GREETING, model.greeting()
        while True:
            state = model.state()
            stats.states.add(state)
            if current is not _GREETING:
                stats.steps += 1
                stats.verbs[current.verb] = stats.verbs.get(current.verb, 0) + 1
                with contextlib.suppress(OSError):  # gone? the read below says how
                    sock.sendall(current.wire)
            try:
                event = _read_event(sock, reader, time.monotonic() + deadline)
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
            if current is _GREETING and code != 220:  # refused: nothing more to fuzz
                return records
            if code == 421:  # RFC 5321 §3.8: the server is closing; nothing more to judge
                return records
            if expectation.closes or code == 221:  # 221: "closing" (RFC 5321 §4.2.2)
                try:
                    _read_event(sock, reader, time.monotonic() + deadline)
                except (_Closed, _Malformed):
                    return records
                except _Timeout:
                    pass
                raise NoClose(
                    f"the connection stayed open after {proto.describe(event)} to "
                    f"{_show(current)} ({expectation.why})",
                    records,
                )
            follow = model.observe(current, code) if current is not _GREETING else None
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
            sock.close()


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
