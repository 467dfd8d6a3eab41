"""The vocabulary of a fuzzed dialogue, shared by every protocol.

A dialogue is a list of :class:`Send` (bytes for one command line, drawn by a
protocol's strategies). A protocol's *session model* predicts, before each send,
an :class:`Expectation` for the answer and learns from the answer it got. The
oracle records each step as a :class:`StepRecord`; when an invariant breaks it
raises a :class:`Finding` that carries the records, so the scenario writer can
replay the dialogue and state the expectation that failed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from hypothesis.strategies import SearchStrategy

from conformance.targets import Target

__all__ = [
    "Expectation",
    "Finding",
    "ProtocolFuzz",
    "Reader",
    "Send",
    "SessionModel",
    "StepRecord",
]


@dataclass(frozen=True, kw_only=True)
class Send:
    """One thing the client sends: a command line (CRLF included) or message data.

    ``verb`` is the canonical (upper-case) verb the model reasons about, even when
    the wire form is a near-miss such as ``mail`` or ``MAIL\\x00``. ``wellformed`` is
    false for near-misses that break the command's grammar. ``terminal`` ends the
    dialogue after its answer (a line with a bare CR or LF inside: the server may
    see two lines, so nothing after it can be judged). ``kind`` is ``line`` or
    ``data`` (message content after a 354, written as a ``data:`` step).
    """

    verb: str
    wire: bytes
    wellformed: bool = True
    terminal: bool = False
    kind: str = "line"
    text: str = ""  # for kind == "data": the message as a scenario's data: step writes it


@dataclass(frozen=True, kw_only=True)
class Expectation:
    """The answers the model allows for one step.

    ``codes`` is the protocol's set of acceptable answer codes (SMTP reply codes);
    ``closes`` means the server must close after answering, ``may_close`` that it
    may close instead of (or after) answering. ``why`` names the rule, with its RFC.
    """

    codes: frozenset[int]
    why: str
    closes: bool = False
    may_close: bool = False

    def accepts(self, code: int) -> bool:
        return code in self.codes


@dataclass(frozen=True, kw_only=True)
class StepRecord:
    """One step as it happened: what was sent, what the model allowed, what came back."""

    send: Send
    expectation: Expectation
    outcome: str  # "reply 250 ...", "closed", "timeout", "malformed: ..."
    state: str  # the model's state before the step


class Finding(Exception):
    """An invariant broke at the last step of ``records``."""

    kind = "finding"

    def __init__(self, message: str, records: list[StepRecord]) -> None:
        super().__init__(message)
        self.message = message
        self.records = list(records)

    def shrunk_form(self) -> tuple[bytes, ...]:
        """What de-duplicates findings: the bytes sent and the kind of failure."""
        return (self.kind.encode(), *(r.send.wire for r in self.records))


class Hang(Finding):
    kind = "hang"


class Crash(Finding):
    kind = "crash"


class BadReply(Finding):
    kind = "malformed-reply"


class WrongReply(Finding):
    kind = "wrong-reply"


class NoClose(Finding):
    kind = "no-close"


class Reader(Protocol):
    """A sans-IO reply reader from conformance.wire (receive_data / next_event)."""

    def receive_data(self, data: bytes) -> None: ...

    def next_event(self) -> Any: ...


class SessionModel(Protocol):
    """A protocol's model of one session, fed the answers the server actually gave."""

    def state(self) -> str:
        """A short name of the current state, for statistics and scenario text."""
        ...

    def greeting(self) -> Expectation: ...

    def expect(self, send: Send) -> Expectation: ...

    def observe(self, send: Send, code: int) -> Send | None:
        """Learn from the answer; return what must be sent next (message data), if any."""
        ...


@dataclass(frozen=True, kw_only=True)
class ProtocolFuzz:
    """What a protocol plugs into the protocol-neutral engine."""

    name: str
    default_service: str
    commands: Callable[[Target], SearchStrategy[list[Send]]]
    new_model: Callable[[], SessionModel]
    new_reader: Callable[[], Reader]
    code_of: Callable[[Any], int]  # an event of the reader -> its answer code
    describe: Callable[[Any], str]  # an event of the reader -> one line for transcripts
    expect_yaml: Callable[[Expectation], dict[str, Any]]  # for the scenario writer
    verbs: tuple[str, ...] = field(default=())
