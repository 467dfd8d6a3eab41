"""The Hypothesis run: play dialogues as a state machine, shrink what fails.

One example is one dialogue on a fresh connection, run as a
``RuleBasedStateMachine`` (:mod:`conformance.fuzz.machine`): each rule step plays
a command (or a ready-made block) drawn by the protocol's strategies, some rules only
in the states where they fit, with arguments from what the session model knows.
Every answer is judged as it comes; a broken invariant raises its
:class:`~conformance.fuzz.dialogue.Finding`, and Hypothesis shrinks the steps. With
``report_multiple_bugs`` each kind of finding is shrunk on its own and all of them
come back.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from hypothesis import HealthCheck, Phase, Verbosity, seed, settings
from hypothesis.stateful import run_state_machine_as_test

from conformance.fuzz.dialogue import Finding, Login, ProtocolFuzz, Send
from conformance.fuzz.machine import SecondSide, dialogue_machine
from conformance.fuzz.oracle import Connector, DialogueStats, SocketConnector, run_dialogue
from conformance.fuzz.retrieve import RetrieveCheck
from conformance.targets import Service, Target

__all__ = ["DEFAULT_EXAMPLES", "FuzzReport", "SecondTarget", "fuzz"]

#: dialogues a run generates unless told otherwise: the hidden-bug tests find each of
#: their bugs within it (tests/integration/test_fuzz_*.py)
DEFAULT_EXAMPLES = 1000


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
    max_examples: int = DEFAULT_EXAMPLES,
    time_budget: float | None = None,
    deadline: float = 2.0,
    progress: Callable[[DialogueStats], None] | None = None,
    login: Login | None = None,
    connector: Connector | None = None,
    second: SecondTarget | None = None,
    retrieve: RetrieveCheck | None = None,
    max_steps: int = 8,
) -> FuzzReport:
    """Fuzz one service; return the shrunk findings (de-duplicated by the caller's writer).

    Args:
        proto: the protocol plug-in (:data:`conformance.fuzz.PROTOCOLS`).
        seed_value: the Hypothesis seed: the same seed plays the same dialogues against a
            server that answers the same way (state rules draw from the answers).
        max_examples: dialogues to generate (shrinking adds more).
        max_steps: the most rule steps (commands or blocks) in one dialogue.
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
    shrinking = {"on": False}

    def out_of_time() -> bool:
        over = time_budget is not None and time.monotonic() - started > time_budget
        if over and not shrinking["on"]:
            report.out_of_time = True
            return True
        return False

    def finding_seen() -> None:
        shrinking["on"] = True

    def done() -> None:
        if progress is not None:
            progress(report.stats)

    machine = dialogue_machine(
        proto,
        target,
        where,
        deadline=deadline,
        stats=report.stats,
        login=login,
        retrieve=retrieve,
        second=None
        if second is None
        else SecondSide(second.connector, second.login, _translator(target, second.target)),
        skip=out_of_time,
        on_failure=finding_seen,
        on_done=done,
    )
    machine_settings = settings(
        max_examples=max_examples,
        stateful_step_count=max_steps,
        deadline=None,
        database=None,
        derandomize=False,
        report_multiple_bugs=True,
        phases=(Phase.generate, Phase.shrink),
        suppress_health_check=list(HealthCheck),
        print_blob=False,
        verbosity=Verbosity.quiet,
    )

    try:
        run_state_machine_as_test(seed(seed_value)(machine), settings=machine_settings)
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
