"""The Hypothesis run: draw dialogues, play them, shrink what fails.

One example is one dialogue on a fresh connection. Examples are drawn up front
(``@given`` over a command list) rather than by a ``RuleBasedStateMachine``: the
model already answers "what may the server say to this command in this state" for
every command in every state, so no precondition is needed, and a list shrinks
well (drop commands, simplify each one) and draws the same examples for the same
seed whatever the server answers, which keeps runs reproducible.

Every finding is a :class:`~conformance.fuzz.dialogue.Finding` subclass raised
from the oracle; with ``report_multiple_bugs`` Hypothesis shrinks each kind on
its own and hands all of them back.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from hypothesis import HealthCheck, Phase, given, seed, settings

from conformance.fuzz.dialogue import Finding, Login, ProtocolFuzz, Send
from conformance.fuzz.oracle import (
    Connector,
    DialogueStats,
    SocketConnector,
    compare_dialogues,
    run_dialogue,
)
from conformance.fuzz.retrieve import RetrieveCheck
from conformance.targets import Service, Target

__all__ = ["FuzzReport", "SecondTarget", "fuzz"]


@dataclass(frozen=True)
class SecondTarget:
    """The other side of a differential run: where it is, its target file, its prefix.

    Each dialogue is played there too, with the first target's account addresses
    replaced by the second's (accounts matched by name), and not judged by the
    model: only the answer classes are compared with the first target's.
    """

    connector: Connector
    target: Target
    login: Login | None = None


def _translator(first: Target, second: Target) -> Callable[[list[Send]], list[Send]]:
    pairs = [
        (acc.address.encode(), second.accounts[name].address.encode())
        for name, acc in first.accounts.items()
        if name in second.accounts and acc.address != second.accounts[name].address
    ]

    def translate(sends: list[Send]) -> list[Send]:
        if not pairs:
            return sends
        out = []
        for send in sends:
            wire = send.wire
            for old, new in pairs:
                wire = wire.replace(old, new)
            out.append(send if wire == send.wire else replace(send, wire=wire))
        return out

    return translate


@dataclass
class FuzzReport:
    seed: int
    stats: DialogueStats = field(default_factory=DialogueStats)
    findings: list[Finding] = field(default_factory=list)
    elapsed: float = 0.0
    out_of_time: bool = False


def _flatten(exc: BaseException) -> list[Finding]:
    if isinstance(exc, Finding):
        return [exc]
    if isinstance(exc, BaseExceptionGroup):
        found: list[Finding] = []
        for sub in exc.exceptions:
            found.extend(_flatten(sub))
        return found
    return []


def fuzz(
    proto: ProtocolFuzz,
    target: Target,
    service: Service,
    *,
    seed_value: int,
    max_examples: int = 200,
    time_budget: float | None = None,
    deadline: float = 2.0,
    progress: Callable[[DialogueStats], None] | None = None,
    login: Login | None = None,
    connector: Connector | None = None,
    second: SecondTarget | None = None,
    retrieve: RetrieveCheck | None = None,
) -> FuzzReport:
    """Fuzz one service; return the shrunk findings (de-duplicated by the caller's writer).

    Args:
        proto: the protocol plug-in (:data:`conformance.fuzz.PROTOCOLS`).
        seed_value: the Hypothesis seed: the same seed draws the same dialogues.
        max_examples: dialogues to generate (shrinking adds more).
        time_budget: seconds after which no new dialogue is played (those left are
            skipped without a connection); shrinking of a finding already made
            still completes.
        deadline: seconds a server has for each answer (the hang oracle).
        login: the prefix played on every connection before the dialogue (STARTTLS,
            login); it is tried once up front, so a login that fails ends the run
            before Hypothesis starts.

    Raises:
        ConnectionError: the service could not be reached;
            :class:`~conformance.fuzz.dialogue.LoginFailed` if the prefix fails (or the
            retrieval check's login: :class:`~conformance.fuzz.retrieve.RetrieveFailed`).
    """
    report = FuzzReport(seed=seed_value)
    started = time.monotonic()
    where = connector or SocketConnector(service, target.connect_timeout)
    # fail fast (not a finding): unreachable, wrong password, no STARTTLS
    if login is not None or second is not None:
        run_dialogue(proto, where, [], deadline=deadline, login=login)
    if retrieve is not None:
        retrieve.probe()
    if second is not None:
        run_dialogue(proto, second.connector, [], deadline=deadline, login=second.login)
        translate = _translator(target, second.target)
    shrinking = {"on": False}

    @seed(seed_value)
    @settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        derandomize=False,
        report_multiple_bugs=True,
        phases=(Phase.explicit, Phase.generate, Phase.shrink),
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    @given(proto.commands(target))
    def one_dialogue(sends: list[Send]) -> None:
        over = time_budget is not None and time.monotonic() - started > time_budget
        if over and not shrinking["on"]:
            report.out_of_time = True
            return
        try:
            records = run_dialogue(
                proto,
                where,
                sends,
                deadline=deadline,
                stats=report.stats,
                login=login,
                retrieve=retrieve,
            )
            if second is not None:
                try:
                    other = run_dialogue(
                        proto,
                        second.connector,
                        translate(sends),
                        deadline=deadline,
                        login=second.login,
                    )
                except Finding as judged:  # not judged here: only the classes count
                    other = judged.records
                differs = compare_dialogues(proto, records, other)
                if differs is not None:
                    raise differs
        except Finding:
            shrinking["on"] = True
            raise
        if progress is not None:
            progress(report.stats)

    try:
        one_dialogue()
    except (Finding, BaseExceptionGroup) as exc:
        found = _flatten(exc)
        if not found:
            raise
        report.findings = found
    finally:
        if retrieve is not None:
            retrieve.close()
    report.elapsed = time.monotonic() - started
    return report
