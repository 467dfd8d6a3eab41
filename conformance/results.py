"""Results of a run: the verdict per scenario with its evidence.

The JSON form (``RunResult.to_json``) is the source every reporter can be
rebuilt from, so it carries the tool version, the target, the command line
and timing, which makes a saved run reproducible and comparable.
"""

from __future__ import annotations

import platform
import sys
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from . import __version__
from .transport import TranscriptEntry

__all__ = ["FAIL_ON", "RunResult", "ScenarioResult", "Status"]

FAIL_ON = ("must", "should", "may")  # --fail-on: the weakest severity whose failure fails a run


class Status(StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    ERROR = "error"  # the scenario could not run to a verdict (setup failed, unreachable)
    NOT_APPLICABLE = "not_applicable"


@dataclass
class ScenarioResult:
    id: str
    title: str
    path: str
    status: Status
    message: str | None = None
    step: int | None = None  # 0-based index of the failing step
    line: int | None = None  # its line in the file
    duration: float = 0.0
    transcript: list[TranscriptEntry] = field(default_factory=list)
    covers: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    rfc: tuple[str, ...] = ()
    # the strongest level among the covered requirements: "must", "should" or "may"
    severity: str = "must"

    @property
    def location(self) -> str:
        return f"{self.path}:{self.line}" if self.line else self.path

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "path": self.path,
            "status": self.status.value,
            "message": self.message,
            "step": self.step,
            "line": self.line,
            "duration": round(self.duration, 6),
            "covers": list(self.covers),
            "tags": list(self.tags),
            "rfc": list(self.rfc),
            "severity": self.severity,
            "transcript": [
                {"t": round(e.t, 6), "conn": e.conn, "dir": e.direction, "text": e.text}
                for e in self.transcript
            ],
        }


@dataclass
class RunResult:
    results: list[ScenarioResult]
    target: dict[str, Any]
    started_at: str
    duration: float
    argv: list[str] = field(default_factory=list)
    fail_on: str = "should"
    requirements: dict[str, dict[str, str]] = field(default_factory=dict)  # covered ids

    def count(self, status: Status) -> int:
        return sum(1 for r in self.results if r.status is status)

    def failed(self, severity: str) -> int:
        """Failed scenarios of exactly this severity."""
        return sum(1 for r in self.results if r.status is Status.FAILED and r.severity == severity)

    @property
    def ok(self) -> bool:
        """No error, and no failure at or above the ``fail_on`` severity."""
        counted = FAIL_ON[: FAIL_ON.index(self.fail_on) + 1]
        return not any(
            r.status is Status.ERROR or (r.status is Status.FAILED and r.severity in counted)
            for r in self.results
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "tool": {"name": "mailharness", "version": __version__},
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "argv": self.argv,
            "target": self.target,
            "started_at": self.started_at,
            "duration": round(self.duration, 6),
            "summary": {s.value: self.count(s) for s in Status},
            "failed_by_severity": {sev: self.failed(sev) for sev in FAIL_ON},
            "fail_on": self.fail_on,
            "ok": self.ok,
            "requirements": self.requirements,
            "results": [r.to_json() for r in self.results],
        }
