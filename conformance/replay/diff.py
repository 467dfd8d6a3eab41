"""Replaying converted sessions and saying which exchanges answered differently.

Theory of operation. The scenarios converted from a capture run on the
ordinary :class:`~conformance.scenario.runner.Runner`, one after another in
the order the sessions began (a later session may read what an earlier one
delivered), with one change: :class:`ReplayRunner` does not stop a scenario at
the first expectation that fails. It records the step's problems and the
response it got, and goes on, so one replay lists every exchange that
differs. What still ends a session early (no answer in time, the connection
closed, a TLS handshake that failed) is recorded as a difference at the step
where it happened, and the rest of that session did not run.

A :class:`Difference` is reported with the capture's frame numbers, kept
beside each converted step (:class:`~.convert.StepOrigin`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from conformance.results import ScenarioResult, Status
from conformance.scenario.model import Step
from conformance.scenario.responses import show_response
from conformance.scenario.runner import Runner, _capture, _Execution
from conformance.scenario.sessions import ImapExchange
from conformance.transport import show_bytes

from .convert import Converted, StepOrigin, session_label

__all__ = ["Difference", "ReplayRunner", "SessionReport", "session_reports"]


@dataclass(frozen=True)
class Difference:
    """One exchange that answered otherwise than in the capture.

    Attributes:
        step: 0-based index of the scenario step.
        frames: the capture's frames of that exchange.
        sent: what the capture's client sent there (shown).
        expected: the capture's answer (its first line).
        got: the replay's answer (its first line), or how the session ended.
        problems: each expectation that failed, as "expected X, got Y".
        ended: the session stopped here (the steps after it did not run).
    """

    step: int
    frames: tuple[int, ...]
    sent: str
    expected: str
    got: str
    problems: tuple[str, ...]
    ended: bool = False

    def render(self) -> str:
        where = f"frame {self.frames[0]}" if self.frames else f"step {self.step + 1}"
        sent = f"sent {self.sent!r}  " if self.sent else ""
        expected = self.expected or "; ".join(self.problems)
        line = f"{where}: {sent}expected {expected}  got {self.got}"
        if self.expected == self.got and self.problems:  # the difference is in what is hidden
            line += f"  ({'; '.join(self.problems)})"
        return line + ("  (the session stopped here)" if self.ended else "")

    def to_json(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "frames": list(self.frames),
            "sent": self.sent,
            "expected": self.expected,
            "got": self.got,
            "problems": list(self.problems),
            "ended": self.ended,
        }


class ReplayRunner(Runner):
    """A runner that records failed expectations instead of stopping at the first."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # scenario id -> (step index, problems, response)
        self.mismatches: dict[str, list[tuple[int, list[str], object]]] = {}

    def _conclude(  # type: ignore[override]
        self, ex: _Execution, step: Step, resp: object, problems: list[str]
    ) -> None:
        if problems:
            self.mismatches.setdefault(ex.scenario.id, []).append((step.index, problems, resp))
            return
        _capture(ex, step, "")  # converted scenarios capture nothing; kept for symmetry


@dataclass
class SessionReport:
    """A replayed session: the result and its differences."""

    converted: Converted
    result: ScenarioResult
    differences: list[Difference] = field(default_factory=list)

    @property
    def same(self) -> bool:
        return not self.differences and self.result.status is Status.PASSED

    def render(self) -> list[str]:
        head = session_label(self.converted.stream)
        if self.same:
            return [f"{head}: same"]
        if not self.differences:
            return [f"{head}: {self.result.status.value}: {self.result.message}"]
        lines = [f"{head}: {len(self.differences)} difference(s)"]
        return lines + [f"  {d.render()}" for d in self.differences]


def _origin(conv: Converted, step: int) -> StepOrigin:
    if 0 <= step < len(conv.origins):
        return conv.origins[step]
    return StepOrigin((), "", "")


def session_reports(
    runner: ReplayRunner, converted: list[Converted], results: list[ScenarioResult]
) -> list[SessionReport]:
    """Join results with the capture's origins; mark results with differences failed."""
    by_id = {r.id: r for r in results}
    reports: list[SessionReport] = []
    for conv in converted:
        if conv.document is None:
            continue
        result = by_id[conv.document["id"]]
        report = SessionReport(conv, result)
        for step, problems, resp in runner.mismatches.get(result.id, []):
            origin = _origin(conv, step)
            report.differences.append(
                Difference(
                    step,
                    origin.frames,
                    origin.sent,
                    origin.expected,
                    _shown(resp),
                    tuple(problems),
                )
            )
        if result.status is Status.FAILED and result.step is not None:
            origin = _origin(conv, result.step)
            report.differences.append(
                Difference(
                    result.step,
                    origin.frames,
                    origin.sent,
                    origin.expected,
                    result.message or "failed",
                    (result.message or "failed",),
                    ended=True,
                )
            )
        if report.differences and result.status is Status.PASSED:
            result.status = Status.FAILED
            first = report.differences[0]
            result.step = first.step
            result.message = f"{len(report.differences)} difference(s); first: {first.render()}"
        reports.append(report)
    return reports


def _shown(resp: object) -> str:
    """The first line of a response as the server sent it (code or status included)."""
    if isinstance(resp, ImapExchange):
        event = resp.tagged or resp.continuation or (resp.untagged[0] if resp.untagged else None)
        raw = event.raw if event is not None else b""
    else:
        raw = getattr(resp, "raw", b"")
    if raw:
        return show_bytes(raw.split(b"\r\n", 1)[0])
    return show_response(resp)
