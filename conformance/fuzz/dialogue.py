"""The vocabulary of a fuzzed dialogue, shared by every protocol.

A dialogue is a list of :class:`Send` (bytes for one command line, drawn by a
protocol's strategies). A protocol's *session model* predicts, before each send,
an :class:`Expectation` for the answer and learns from the answer it got. The
oracle records each step as a :class:`StepRecord`; when an invariant breaks it
raises a :class:`Finding` that carries the records, so the scenario writer can
replay the dialogue and state the expectation that failed.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from hypothesis.strategies import SearchStrategy

from conformance.targets import Account, Target

__all__ = [
    "Answer",
    "AnswerClosed",
    "AnswerMalformed",
    "AnswerTimeout",
    "Differential",
    "Expectation",
    "Finding",
    "Login",
    "LoginFailed",
    "LostMessage",
    "ProtocolFuzz",
    "Reader",
    "Send",
    "SessionModel",
    "StateStep",
    "StepRecord",
    "Violation",
]

#: An answer's class as a model judges it: an SMTP reply code (``250``), a POP3
#: status (``"+OK"`` / ``"-ERR"``), an IMAP tagged status (``"OK"`` / ``"NO"`` /
#: ``"BAD"``), or a protocol's own marker (``"+"``: a continuation request;
#: ``"BYE"``: an IMAP ``* BYE`` followed by the close).
Answer = int | str


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
    tag: str = ""  # IMAP: the tag whose tagged response answers this send ("" = none valid)


@dataclass(frozen=True, kw_only=True)
class Expectation:
    """The answers the model allows for one step.

    ``codes`` is the protocol's set of acceptable answers (:data:`Answer`: SMTP
    reply codes, POP3 ``+OK``/``-ERR``, IMAP ``OK``/``NO``/``BAD``);
    ``closes`` means the server must close after answering, ``may_close`` that it
    may close instead of (or after) answering. ``why`` names the rule, with its RFC.
    """

    codes: frozenset[Answer]
    why: str
    closes: bool = False
    may_close: bool = False

    def accepts(self, code: Answer) -> bool:
        return code in self.codes


@dataclass(frozen=True, kw_only=True)
class StepRecord:
    """One step as it happened: what was sent, what the model allowed, what came back."""

    send: Send
    expectation: Expectation
    outcome: str  # "reply 250 ...", "closed", "timeout", "malformed: ..."
    state: str  # the model's state before the step
    code: Answer | None = None  # the answer's class as the model saw it (None: no answer)
    extra_expect: dict[str, Any] = field(default_factory=dict)  # a Violation's scenario check


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


class Inconsistent(Finding):
    """The answer had the right status, but its data broke a session invariant."""

    kind = "inconsistent"


class LostMessage(Finding):
    """A message got 2xx at the end of its data for an account of the target, yet the
    retrieval check did not find it in that account's INBOX within ``within`` seconds.
    ``records`` are the whole dialogue; ``account`` is the account's name, ``index``
    the message's number in the dialogue and ``token`` the text searched for in its
    Message-ID (with ``{run}`` unfilled, as in the data sent); ``service`` is the IMAP
    service searched, reached with STARTTLS when ``starttls``."""

    kind = "lost-message"

    def __init__(
        self,
        message: str,
        records: list[StepRecord],
        *,
        account: str,
        index: int,
        token: str,
        within: float,
        service: str,
        starttls: bool,
    ) -> None:
        super().__init__(message, records)
        self.account, self.index, self.token, self.within = account, index, token, within
        self.service, self.starttls = service, starttls


class Differential(Finding):
    """Two targets answered the same step with answers of different classes
    (SMTP: the first digit; POP3: +OK/-ERR; IMAP: OK/NO/BAD; or a close, a timeout,
    a malformed answer). ``records`` are the first target's, up to that step."""

    kind = "differential"

    def __init__(self, message: str, records: list[StepRecord], other: list[StepRecord]) -> None:
        super().__init__(message, records)
        self.other = list(other)


class Violation(Exception):
    """Raised by a model's ``observe``: the answer's data breaks an invariant.

    ``expect`` is the scenario expectation (extra keys such as ``untagged_absent``)
    that fails on exactly this answer, so the written scenario replays the finding.
    """

    def __init__(self, message: str, expect: dict[str, Any]) -> None:
        super().__init__(message)
        self.message = message
        self.expect = expect


@dataclass(frozen=True, kw_only=True)
class Login:
    """The fixed prefix of every dialogue: STARTTLS (when ``starttls``), then a login.

    ``context`` is the target's client TLS context and ``server_name`` the name it
    checks; ``account`` is ``None`` for a prefix of STARTTLS alone.
    """

    account: Account | None
    starttls: bool
    context: ssl.SSLContext | None = None
    server_name: str = ""


class LoginFailed(ConnectionError):
    """The prefix (STARTTLS or the login) failed: not a finding, the run cannot go on."""


class AnswerClosed(Exception):
    """Raised by a reader's ``next_event``: the server closed the connection."""


class AnswerTimeout(Exception):
    """Raised by ``next_event``: nothing (more) arrived within the deadline."""


class AnswerMalformed(Exception):
    """Raised by ``next_event``: the strict reader refused what arrived."""


def _one_event(next_event: Callable[[], Any], send: Send) -> Any:
    return next_event()


class Reader(Protocol):
    """A sans-IO reply reader from conformance.wire (receive_data / next_event)."""

    def receive_data(self, data: bytes) -> None: ...

    def next_event(self) -> Any: ...


class SessionModel(Protocol):
    """A protocol's model of one session, fed the answers the server actually gave.

    A model may also have a ``delivered`` list (SMTP: the messages acknowledged, as
    :class:`~conformance.fuzz.smtp_model.Delivered`), which the retrieval check reads
    after the dialogue.
    """

    def state(self) -> str:
        """A short name of the current state, for statistics and scenario text."""
        ...

    def greeting(self) -> Expectation: ...

    def expect(self, send: Send) -> Expectation: ...

    def observe(self, send: Send, code: Answer, answer: Any = None) -> Send | None:
        """Learn from the answer; return what must be sent next (message data), if any.

        ``answer`` is the protocol's whole answer (``read_answer``'s result).

        Raises:
            Violation: the answer's data breaks an invariant of the session.
        """
        ...


@dataclass(frozen=True, kw_only=True)
class StateStep:
    """A rule of the state machine that fits only some states of the session: its
    sends are drawn from what the model knows there (message numbers that exist, the
    UIDs seen), which a draw made up front cannot know.

    Attributes:
        name: the rule's name (Hypothesis shows it in a failing example).
        applies: the rule's precondition, over the session model.
        sends: the sends for the model's current state.
    """

    name: str
    applies: Callable[[Any], bool]
    sends: Callable[[Any], SearchStrategy[list[Send]]]


def _same(sends: list[Send], sent: int) -> list[Send]:
    return sends


@dataclass(frozen=True, kw_only=True)
class ProtocolFuzz:
    """What a protocol plugs into the protocol-neutral engine."""

    name: str
    default_service: str
    commands: Callable[[Target], SearchStrategy[list[Send]]]
    new_model: Callable[[], SessionModel]
    new_reader: Callable[[], Reader]
    code_of: Callable[[Any], Answer]  # an answer -> its class for the model
    describe: Callable[[Any], str]  # an answer -> one line for transcripts
    expect_yaml: Callable[[Expectation, Send], dict[str, Any]]  # for the scenario writer
    verbs: tuple[str, ...] = field(default=())
    #: reads one whole answer to ``send`` with ``next_event`` (which raises the
    #: ``Answer*`` exceptions); SMTP and POP3: one event, IMAP: up to the tagged response
    read_answer: Callable[[Callable[[], Any], Send], Any] = _one_event
    #: called with the reader before ``send`` goes out (POP3 declares the answer's shape)
    prepare: Callable[[Any, Send], None] | None = None
    greeting_ok: Callable[[Answer], bool] = lambda code: code == 220
    #: answers after which the server closes and nothing more is judged (SMTP 421)
    final: frozenset[Answer] = frozenset({421})
    #: answers that must be followed by a close (SMTP 221, RFC 5321 §4.2.2)
    closing: frozenset[Answer] = frozenset({221})
    #: the login prefix as sends (each must succeed, see ``succeeded``; a send whose
    #: verb is ``STARTTLS`` is followed by the TLS handshake) and as scenario steps
    login_sends: Callable[[Login], list[Send]] = lambda login: []
    login_steps: Callable[[Login], list[dict[str, Any]]] = lambda login: []
    succeeded: Callable[[Answer], bool] = lambda code: isinstance(code, int) and code < 400
    #: the class a differential run compares (SMTP ``"2xx"``; POP3 and IMAP: the status)
    class_of: Callable[[Answer], str] = str
    #: every answer of ``code``'s class (SMTP: all 2xx codes), for a differential's expect
    class_members: Callable[[Answer], frozenset[Answer]] = lambda code: frozenset({code})
    #: one step of the state machine: a command, or a ready-made block of a few
    #: (``commands`` is a list of these, for whole dialogues drawn up front)
    steps: Callable[[Target], SearchStrategy[list[Send]]] | None = None
    #: the rules that fit only some states (see :class:`StateStep`)
    state_steps: Callable[[Target], tuple[StateStep, ...]] = lambda target: ()
    #: a step's sends as they go out after ``sent`` others (IMAP: the next tags)
    number: Callable[[list[Send], int], list[Send]] = _same
