"""Interop: the shipped suites against private Dovecot and Postfix instances.

Starts both peers (:mod:`interop.peers`: Postfix as mx, submission and submissions,
Dovecot as imap, imaps, pop3 and pop3s, on loopback, from a temporary directory), runs
``mailharness check`` against them through the command line, and checks that the
scenarios that fail are exactly those in ``interop/expected-failures.yaml`` (RFC
departures of the peers, and scenarios reported as wrong). See docs/interop.md.

Needs the Debian packages (``bash interop/install.sh``) and root; without them the
test is skipped, and under CI it fails instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from interop.peers import running_peers, why_unavailable  # noqa: E402
from interop.run import (  # noqa: E402
    compare,
    load_expected,
    mailharness_command,
    rerun_unexpected,
)

pytestmark = [pytest.mark.interop, pytest.mark.slow]


def _require_peers() -> None:
    why = why_unavailable()
    if why is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"Dovecot/Postfix interop cannot run under CI: {why}")
    pytest.skip(why)


def test_suites_fail_exactly_the_expected_scenarios(tmp_path: Path) -> None:
    _require_peers()
    expected = load_expected()
    results = tmp_path / "results.json"
    with running_peers() as peers:
        proc = subprocess.run(
            [
                *mailharness_command(),
                "check",
                "--target",
                str(peers.target_file),
                "--no-progress",
                "--json",
                str(results),
                "--fail-on",
                "must",
            ],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            cwd=REPO,
            timeout=240,
        )
        logs = peers.log_tails()
        assert proc.returncode in (0, 1), f"check exited {proc.returncode}\n{proc.stderr}\n{logs}"
        result = compare(results, expected)
        # a failure that is not listed is run again alone: races between scenarios
        # running side by side on one real server are not what the list records
        rerun_unexpected(result, peers.target_file, tmp_path)
    assert result.results, "the check ran no scenario"
    assert result.ok, (
        f"{result.summary()}\n{result.table()}\n"
        "a new failure: judge it against the RFC and list it in "
        "interop/expected-failures.yaml (or report the scenario); a listed one that "
        "passes: remove it"
    )
