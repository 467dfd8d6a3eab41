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
from dataclasses import dataclass, field

from hypothesis import HealthCheck, Phase, given, seed, settings

from conformance.fuzz.dialogue import Finding, Login, ProtocolFuzz, Send
from conformance.fuzz.oracle import DialogueStats, run_dialogue
from conformance.targets import Service, Target

__all__ = ["FuzzReport", "fuzz"]


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
            :class:`~conformance.fuzz.dialogue.LoginFailed` if the prefix fails.
    """
    report = FuzzReport(seed=seed_value)
    started = time.monotonic()
    if login is not None:  # fail fast (not a finding): wrong password, no STARTTLS
        run_dialogue(
            proto,
            service,
            [],
            deadline=deadline,
            connect_timeout=target.connect_timeout,
            login=login,
        )
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
            run_dialogue(
                proto,
                service,
                sends,
                deadline=deadline,
                connect_timeout=target.connect_timeout,
                stats=report.stats,
                login=login,
            )
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
    report.elapsed = time.monotonic() - started
    return report
