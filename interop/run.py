"""Run the shipped suites against private Dovecot and Postfix, and hold them to a list.

    python -m interop.run [--json FILE] [--report FILE] [--log FILE] [--jobs N]

starts the peers (:mod:`interop.peers`), runs ``mailharness check --target <file>
--no-progress --json FILE --report FILE --fail-on must`` against them, and compares the
scenarios that did not pass (failed or error) with ``interop/expected-failures.yaml``
(scenario id -> one-line reason with the RFC section; a reason that starts with
``flaky:`` marks a scenario whose result varies from run to run, which may then pass or
fail). It prints a table and exits:

- 0 when the scenarios that fail are exactly the listed ones;
- 1 when a scenario fails that is not listed, or a listed one now passes, is not
  applicable or no longer exists (so the list stays true), or the check itself broke
  (an exit code other than 0 or 1, or no results file);
- 2 when the peers cannot run here (not installed, not root).

The check's own exit code is printed but does not decide: Dovecot and Postfix depart
from some RFCs on purpose, and those departures are what the list records.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from interop.peers import PeerError, running_peers, versions, why_unavailable  # noqa: E402

EXPECTED_FILE = Path(__file__).resolve().parent / "expected-failures.yaml"
NOT_PASSED = ("failed", "error")
FLAKY = "flaky:"  # a reason starting with this: the scenario may pass or fail


def load_expected(path: Path = EXPECTED_FILE) -> dict[str, str]:
    """The expected failures: scenario id -> reason (an empty file is an empty list)."""
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        raise ValueError(f"{path}: expected a mapping of scenario id -> one-line reason")
    return data


def mailharness_command() -> list[str]:
    """``mailharness`` of this environment (beside the interpreter), else ``-m conformance``."""
    script = Path(sys.executable).parent / "mailharness"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "conformance"]


@dataclasses.dataclass
class Comparison:
    """The run's results held against the expected failures."""

    results: dict[str, dict[str, Any]]  # scenario id -> result (from the --json file)
    expected: dict[str, str]
    # failed although not listed, then passed when run again alone (see rerun_unexpected)
    passed_on_rerun: set[str] = dataclasses.field(default_factory=set)

    @property
    def failing(self) -> set[str]:
        return {i for i, r in self.results.items() if r["status"] in NOT_PASSED}

    @property
    def unexpected(self) -> set[str]:
        """Failing, not listed, and failing again when run alone."""
        return self.failing - set(self.expected) - self.passed_on_rerun

    @property
    def flaky(self) -> set[str]:
        return {i for i, why in self.expected.items() if why.startswith(FLAKY)}

    @property
    def stale(self) -> set[str]:
        """Listed, but passed, not applicable (unless flaky), or not run at all."""
        not_run = set(self.expected) - set(self.results)
        return (set(self.expected) - self.flaky - self.failing) | not_run

    @property
    def ok(self) -> bool:
        return not self.unexpected and not self.stale

    def table(self) -> str:
        ids = sorted(self.failing | set(self.expected))
        rows = [("scenario", "result", "level", "listed", "verdict")]
        for sid in ids:
            r = self.results.get(sid)
            status = r["status"] if r else "not run"
            level = (r.get("severity") or "-") if r else "-"
            if sid in self.unexpected:
                verdict = "NEW FAILURE: " + ((r or {}).get("message") or "")[:100]
            elif sid in self.passed_on_rerun:
                verdict = (
                    "FLAKY: passed when run again alone; " + ((r or {}).get("message") or "")[:80]
                )
            elif sid in self.stale:
                verdict = "LISTED, BUT " + status.upper() + ": remove it from the list"
            else:
                verdict = self.expected[sid]
            rows.append((sid, status, level, "yes" if sid in self.expected else "no", verdict))
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        lines = []
        for n, row in enumerate(rows):
            lines.append("  ".join(c.ljust(w) for c, w in zip(row[:4], widths, strict=True)))
            lines[-1] += "  " + row[4]
            if n == 0:
                lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 7)
        return "\n".join(lines)

    def summary(self) -> str:
        counts: dict[str, int] = {}
        for r in self.results.values():
            counts[r["status"]] = counts.get(r["status"], 0) + 1
        parts = [f"{n} {s.replace('_', ' ')}" for s, n in sorted(counts.items())]
        verdict = (
            "as expected"
            if self.ok
            else (
                f"{len(self.unexpected)} unexpected failure(s), {len(self.stale)} stale entr(y/ies)"
            )
        )
        flaky = f" ({len(self.passed_on_rerun)} passed on a re-run)" if self.passed_on_rerun else ""
        return f"{', '.join(parts)}; {len(self.failing)} not passed{flaky}, {verdict}"


def compare(results_json: Path, expected: dict[str, str]) -> Comparison:
    data = json.loads(results_json.read_text(encoding="utf-8"))
    results = {r["id"]: r for r in data["results"]}
    return Comparison(results, expected)


def run_check(
    target: Path,
    json_file: Path,
    reports: list[Path],
    log: Path,
    jobs: int | None,
    patterns: list[str] | None = None,
) -> int:
    """``mailharness check`` against ``target``; its output goes to ``log``."""
    cmd = [
        *mailharness_command(),
        "check",
        "--target",
        str(target),
        "--no-progress",
        "--json",
        str(json_file),
        "--fail-on",
        "must",
    ]
    for report in reports:
        cmd += ["--report", str(report)]
    if jobs is not None:
        cmd += ["--jobs", str(jobs)]
    for pattern in patterns or []:
        cmd += ["-k", pattern]
    with log.open("wb") as out:
        proc = subprocess.run(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO
        )
    return proc.returncode


def rerun_unexpected(result: Comparison, target: Path, workdir: Path) -> None:
    """Run each unexpected failure again, alone and one at a time (``--jobs 1``).

    Real servers have races the suites can trip over when scenarios run side by side
    (Dovecot answered CREATE with NO [ALREADYEXISTS] for a mailbox its DELETE had just
    called nonexistent, once in several runs, while other sessions of the same user
    created mailboxes). A scenario that then passes is noted in ``passed_on_rerun``,
    shown as FLAKY, and does not fail the run; one that fails again stays unexpected.
    """
    ids = sorted(result.unexpected)
    if not ids:
        return
    json_file = workdir / "rerun.json"
    code = run_check(target, json_file, [], workdir / "rerun.log", 1, ids)
    if code not in (0, 1) or not json_file.exists():
        return
    again = json.loads(json_file.read_text(encoding="utf-8"))["results"]
    result.passed_on_rerun |= {r["id"] for r in again if r["id"] in ids and r["status"] == "passed"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m interop.run",
        description="Run the suites against private Dovecot and Postfix instances and "
        "compare the failures with interop/expected-failures.yaml.",
    )
    parser.add_argument("--json", type=Path, default=Path("interop-results.json"))
    parser.add_argument("--report", type=Path, action="append", help="default: interop-report.md")
    parser.add_argument("--log", type=Path, default=Path("interop-check.log"))
    parser.add_argument("--expected", type=Path, default=EXPECTED_FILE)
    parser.add_argument("--jobs", type=int)
    parser.add_argument(
        "--defaults",
        action="store_true",
        help="run the peers without the RFC settings (the comparison is then informative)",
    )
    args = parser.parse_args(argv)
    reports = args.report or [Path("interop-report.md")]

    why = why_unavailable()
    if why:
        print(f"interop: {why}", file=sys.stderr)
        return 2
    expected = load_expected(args.expected)
    v = versions()
    print(f"interop: Dovecot {v['dovecot']}, Postfix {v['postfix']}", flush=True)
    start = time.monotonic()
    json_file = args.json.absolute()
    json_file.unlink(missing_ok=True)
    try:
        with running_peers(rfc_settings=not args.defaults) as peers:
            print(peers.describe(), flush=True)
            up = time.monotonic()
            code = run_check(
                peers.target_file,
                json_file,
                [r.absolute() for r in reports],
                args.log.absolute(),
                args.jobs,
            )
            checked = time.monotonic()
            if code not in (0, 1) or not json_file.exists():
                print(f"interop: mailharness check exited {code}; see {args.log}", file=sys.stderr)
                print(peers.log_tails(), file=sys.stderr)
                return 1
            result = compare(json_file, expected)
            rerun_unexpected(result, peers.target_file, peers.root)
    except PeerError as e:
        print(f"interop: the peers did not start: {e}", file=sys.stderr)
        return 1
    print()
    print(result.table())
    print()
    print(
        f"interop: peers up in {up - start:.1f}s, suites ran in {checked - up:.1f}s, "
        f"{time.monotonic() - start:.1f}s in all; mailharness check exited {code} "
        f"(--fail-on must); results in {args.json}, {', '.join(map(str, reports))}, "
        f"output in {args.log}"
    )
    print(f"interop: {result.summary()}")
    if not result.ok:
        print(
            "interop: FAILED. A new failure: look it up in the RFC, then fix the scenario "
            "(report it) or add it to interop/expected-failures.yaml with the section; a "
            "listed scenario that passes: remove it.",
            file=sys.stderr,
        )
    return 0 if result.ok else 1


if __name__ == "__main__":
    os.umask(0o022)
    sys.exit(main())
