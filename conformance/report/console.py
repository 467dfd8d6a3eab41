"""What a person at a terminal sees: failures with their evidence, then a summary."""

from __future__ import annotations

from typing import TextIO

from ..results import RunResult, ScenarioResult, Status

__all__ = ["print_result", "print_summary"]

_TAIL = 40  # transcript lines shown per failure unless --verbose


def print_result(r: ScenarioResult, out: TextIO, *, verbose: bool = False) -> None:
    label = {Status.FAILED: "FAILED", Status.ERROR: "ERROR"}.get(r.status)
    if label is None:
        if verbose:
            extra = f": {r.message}" if r.message else ""
            print(f"{r.status.value.upper().replace('_', ' ')} {r.id}{extra}", file=out)
        return
    step = f" step {r.step + 1}" if r.step is not None else ""
    if label == "FAILED":
        label = f"FAILED [{r.severity.upper()}]"
    print(f"{label} {r.id} ({r.location}){step}: {r.message}", file=out)
    entries = r.transcript if verbose else r.transcript[-_TAIL:]
    if len(entries) < len(r.transcript):
        print(
            f"    ... {len(r.transcript) - len(entries)} earlier transcript lines (use -v)",
            file=out,
        )
    show_conn = len({e.conn for e in r.transcript}) > 1
    for e in entries:
        print("    " + e.render(show_conn=show_conn), file=out)


def print_summary(run: RunResult, out: TextIO) -> None:
    failed = f"{run.count(Status.FAILED)} failed"
    if run.count(Status.FAILED):
        split = [f"{run.failed(sev)} {sev.upper()}" for sev in ("must", "should", "may")]
        failed += f" ({', '.join(n for n in split if not n.startswith('0 '))})"
    parts = [f"{run.count(Status.PASSED)} passed", failed]
    if run.count(Status.NOT_APPLICABLE):
        parts.append(f"{run.count(Status.NOT_APPLICABLE)} not applicable")
    if run.count(Status.ERROR):
        parts.append(f"{run.count(Status.ERROR)} errors")
    print(f"{', '.join(parts)} in {run.duration:.2f}s", file=out)
    if run.count(Status.FAILED) and run.ok:
        print(
            f"(failures below {run.fail_on.upper()} level do not fail the run: --fail-on)", file=out
        )
