"""The HTML report, opened in headless Chromium, renders its summary and a failure's transcript.

Chromium comes from Debian (.ci/run installs it); without it the test is skipped,
except under CI, where a missing browser is a failure.
"""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import pytest
from browser_support import CHROMIUM, CHROMIUM_FLAGS, unavailable
from click.testing import CliRunner

from conformance.cli import main

FLAGS = ["--headless", *CHROMIUM_FLAGS, "--window-size=1280,2400"]

pytestmark = pytest.mark.slow


@pytest.fixture
def chromium() -> str:
    if CHROMIUM is None:
        unavailable("chromium is not installed")
    return CHROMIUM


def browse(
    chromium: str, page: Path, profile: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [chromium, *FLAGS, f"--user-data-dir={profile}", *args, page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


def test_the_html_report_renders_summary_and_a_failure_transcript(chromium, toy_servers, tmp_path):
    target = toy_servers.target_yaml(tmp_path / "target.yaml")
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "fails.yaml").write_text(
        textwrap.dedent(
            """\
            id: t.noop-299
            protocol: smtp
            service: mx
            title: NOOP answered 299 (no server does that)
            covers: [SMTP-5321-4.1.1.1-b]
            steps:
              - send: EHLO harness.example
                expect: {code: 250}
              - send: NOOP
                expect: {code: 299}
            """
        )
    )
    page = tmp_path / "report.html"
    result = CliRunner().invoke(
        main, ["run", str(suite), "--target", str(target), "--report", str(page)]
    )
    assert result.exit_code == 1, result.output
    dom = browse(chromium, page, tmp_path / "profile", "--dump-dom").stdout
    assert 'id="summary"' in dom and "MUST failures" in dom
    assert 'id="fail-t.noop-299"' in dom
    assert "C: NOOP" in dom and "expected reply code 299" in dom
    shot = tmp_path / "report.png"
    browse(chromium, page, tmp_path / "profile2", f"--screenshot={shot}")
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 30_000  # a rendered page, not a blank one
