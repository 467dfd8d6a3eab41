"""--fail-on, --report/--sarif, `mailharness report` and `mailharness requirements` end to end."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from engine_helpers import run_cli


def scenario(tmp_path: Path, name: str, covers: str, code: int) -> Path:
    path = tmp_path / "suite" / f"{name}.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(
        textwrap.dedent(
            f"""\
            id: t.{name}
            protocol: smtp
            service: mx
            title: NOOP answered {code}
            covers: [{covers}]
            steps:
              - send: NOOP
                expect: {{code: {code}}}
            """
        )
    )
    return path


def test_fail_on_chooses_which_failures_fail_the_exit_code(toy_servers, tmp_path):
    target = toy_servers.target_yaml(tmp_path / "target.yaml")
    # SMTP-5321-4.1.1-a is a SHOULD; the toy answers NOOP with 250, never 299
    scenario(tmp_path, "should", "SMTP-5321-4.1.1-a", 299)
    scenario(tmp_path, "passes", "SMTP-5321-4.1.4-e", 250)
    suite = str(tmp_path / "suite")
    code, output = run_cli("run", suite, "--target", str(target))
    assert code == 1
    assert "FAILED [SHOULD] t.should" in output
    assert "1 passed, 1 failed (1 SHOULD)" in output
    code, output = run_cli("run", suite, "--target", str(target), "--fail-on", "must")
    assert code == 0, output
    assert "failures below MUST level do not fail the run" in output
    # a MUST failure fails the run whatever --fail-on says
    scenario(tmp_path, "must", "SMTP-5321-4.1.1.1-b", 299)
    code, output = run_cli("run", suite, "--target", str(target), "--fail-on", "must")
    assert code == 1
    assert "2 failed (1 MUST, 1 SHOULD)" in output


def test_reports_from_a_run_and_re_rendered_from_its_json_are_the_same(toy_servers, tmp_path):
    target = toy_servers.target_yaml(tmp_path / "target.yaml")
    scenario(tmp_path, "must", "SMTP-5321-4.1.1.1-b", 299)
    out = tmp_path / "out"
    code, _ = run_cli(
        "run",
        str(tmp_path / "suite"),
        "--target",
        str(target),
        "--json",
        str(out / "r.json"),
        "--report",
        str(out / "r.html"),
        "--report",
        str(out / "r.md"),
        "--sarif",
        str(out / "code-scanning.json"),
    )
    assert code == 1
    data = json.loads((out / "r.json").read_text())
    assert data["failed_by_severity"] == {"must": 1, "should": 0, "may": 0}
    assert data["requirements"]["SMTP-5321-4.1.1.1-b"]["level"] == "MUST"
    sarif = json.loads((out / "code-scanning.json").read_text())
    assert sarif["runs"][0]["results"][0]["ruleId"] == "SMTP-5321-4.1.1.1-b"
    code, output = run_cli(
        "report", str(out / "r.json"), "-o", str(out / "again.html"), "-o", str(out / "again.md")
    )
    assert code == 0, output
    assert (out / "again.html").read_text() == (out / "r.html").read_text()
    assert (out / "again.md").read_text() == (out / "r.md").read_text()


def test_bad_report_names_and_files_are_usage_errors(toy_servers, tmp_path):
    target = toy_servers.target_yaml(tmp_path / "target.yaml")
    scenario(tmp_path, "passes", "SMTP-5321-4.1.4-e", 250)
    code, output = run_cli(
        "run", str(tmp_path / "suite"), "--target", str(target), "--report", "r.pdf"
    )
    assert code == 2
    assert "--report r.pdf: cannot tell the report format from the name" in output
    (tmp_path / "junk.json").write_text("[1, 2]")
    code, output = run_cli("report", str(tmp_path / "junk.json"), "-o", str(tmp_path / "x.html"))
    assert code == 2 and "not a mailharness results file" in output


def test_requirements_lists_the_catalogue_with_coverage():
    code, output = run_cli("requirements", "--rfc", "5321")
    assert code == 0
    assert "SMTP-5321-4.1.1.1-b" in output and "smtp.ehlo.multiline-250" in output
    assert "RFC 5321" in output.splitlines()[-2]
    code, output = run_cli("requirements", "--json", "--rfc", "RFC 1939")
    rows = json.loads(output)
    assert rows and all(r["rfc"] == "RFC 1939" for r in rows)
    assert any(r["scenarios"] for r in rows)
    code, output = run_cli("requirements", "--uncovered", "--json")
    assert all(not r["scenarios"] for r in json.loads(output))
