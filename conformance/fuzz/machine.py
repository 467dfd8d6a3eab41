"""The dialogue as a Hypothesis ``RuleBasedStateMachine``: one machine run is one
connection, one rule step plays one piece of the dialogue on it.

Theory of operation. :func:`dialogue_machine` builds a machine class for a protocol
and a target. Its ``__init__`` opens a :class:`~conformance.fuzz.oracle.LiveDialogue`
(the greeting and the login prefix, judged as always); each step then runs one rule:

- ``command``: a step drawn from the protocol's ``steps`` strategy, whatever the
  state: a command, well-formed or a near-miss, or a ready-made block of a few
  (the model judges any command in any state, so this rule needs no precondition);
- one rule per :class:`~conformance.fuzz.dialogue.StateStep` of the protocol, with
  the step's precondition over the session model and its sends drawn from what the
  model knows now (an SMTP recipient inside a transaction, a POP3 message number
  below STAT's count, an IMAP sequence number below EXISTS or a UID it has seen).

Every answer is judged as it arrives (the oracle's invariants: the reply parses, its
class fits the model, the server answers within the deadline and stays up, UIDs only
grow); a broken one raises its :class:`~conformance.fuzz.dialogue.Finding` from the
rule, and Hypothesis shrinks the run of rules (fewer steps, simpler draws). The
invariants that need the whole dialogue are checked in ``teardown``, after the
close: a message acknowledged is retrievable (SMTP, with a retrieval check). With a
second target, each step is also played there (not judged) and the answer classes
are compared after every step.

A step after the dialogue ended (QUIT, LOGOUT, a bare CR/LF, the server's close) is a
no-op, so Hypothesis can end a run anywhere; the shrinker drops such steps. Because
the state rules draw from what the server answered, a seed reproduces a run against
the same server behaviour, not against any server.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule

from conformance.fuzz.dialogue import Finding, Login, ProtocolFuzz, Send, StateStep
from conformance.fuzz.oracle import (
    Connector,
    DialogueStats,
    LiveDialogue,
    check_retrieval,
    compare_dialogues,
)
from conformance.fuzz.retrieve import RetrieveCheck
from conformance.targets import Target

__all__ = ["SecondSide", "dialogue_machine"]


class SecondSide:
    """The second target of a differential run: where, its login prefix, and how the
    first target's sends are made its own (account addresses)."""

    def __init__(
        self,
        connector: Connector,
        login: Login | None,
        translate: Callable[[list[Send]], list[Send]],
    ) -> None:
        self.connector, self.login, self.translate = connector, login, translate


def dialogue_machine(
    proto: ProtocolFuzz,
    target: Target,
    where: Connector,
    *,
    deadline: float,
    stats: DialogueStats,
    login: Login | None = None,
    retrieve: RetrieveCheck | None = None,
    second: SecondSide | None = None,
    skip: Callable[[], bool] = lambda: False,
    on_failure: Callable[[], None] = lambda: None,
    on_done: Callable[[], None] = lambda: None,
) -> type[RuleBasedStateMachine]:
    """A machine class whose runs are dialogues with ``where``.

    Args:
        skip: asked as a run starts; true (out of time) makes the run open nothing
            and every step a no-op.
        on_failure: called when a step or the teardown finds something (the engine
            lets runs go on past the time budget while it shrinks).
        on_done: called after each run that found nothing (progress).
    """
    if proto.steps is None:
        raise ValueError(f"{proto.name}: no steps strategy for the state machine")
    steps = proto.steps(target)

    def __init__(self: Any) -> None:
        RuleBasedStateMachine.__init__(self)
        self.live = None
        self.other = None
        self.failed = False
        if skip():
            return
        try:  # the greeting is judged too
            self.live = LiveDialogue(proto, where, deadline=deadline, stats=stats, login=login)
        except Finding:
            self.failed = True
            on_failure()
            raise
        if second is not None:
            try:
                self.other = LiveDialogue(
                    proto, second.connector, deadline=deadline, login=second.login
                )
            except Finding as judged:  # not judged: only the answer classes count
                self.other = judged
            except BaseException:
                self.live.close()
                raise

    def play(self: Any, sends: list[Send]) -> None:
        live: LiveDialogue | None = self.live
        if live is None or live.ended:
            return
        numbered = proto.number(sends, live.sent)
        try:
            live.play(numbered)
            if second is not None:
                _play_second(self, second.translate(numbered))
                differs = compare_dialogues(proto, live.records, _records(self.other))
                if differs is not None:
                    live.ended = True
                    raise differs
        except Finding:
            self.failed = True
            on_failure()
            raise

    def teardown(self: Any) -> None:
        live: LiveDialogue | None = self.live
        if live is None:
            return
        live.close()
        if isinstance(self.other, LiveDialogue):
            self.other.close()
        if self.failed:
            return
        try:
            check_retrieval(live, retrieve)
        except Finding:
            on_failure()
            raise
        on_done()

    namespace: dict[str, Any] = {
        "__init__": __init__,
        "__doc__": f"{proto.name.upper()} dialogues with the target, one rule per step.",
        "play": play,
        "teardown": teardown,
        "command": rule(sends=steps)(lambda self, sends: self.play(sends)),
    }
    for step in proto.state_steps(target):
        namespace[step.name] = _state_rule(step)
    return type(f"{proto.name.capitalize()}Dialogue", (RuleBasedStateMachine,), namespace)


def _state_rule(step: StateStep) -> Any:
    def applies(self: Any) -> bool:
        live: LiveDialogue | None = self.live
        return live is not None and not live.ended and step.applies(live.model)

    def run(self: Any, data: st.DataObject) -> None:
        self.play(data.draw(step.sends(self.live.model), label=step.name))

    run.__name__ = step.name
    return precondition(applies)(rule(data=st.data())(run))


def _play_second(machine: Any, sends: list[Send]) -> None:
    other = machine.other
    if isinstance(other, LiveDialogue) and not other.ended:
        with contextlib.suppress(Finding):  # not judged: its records so far are compared
            other.play(sends)


def _records(other: Any) -> list[Any]:
    if isinstance(other, LiveDialogue):
        return other.records
    if isinstance(other, Finding):
        return other.records
    return []
