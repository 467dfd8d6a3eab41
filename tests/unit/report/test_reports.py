"""Reports render from a saved run: per-RFC summary, MUST failures first, SARIF rules by id."""

from __future__ import annotations

import copy
import json
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from conformance.report.markdown import render_markdown
from conformance.report.render import format_for, render, write_report
from conformance.report.sarif import render_sarif
from conformance.report.summary import summarize
from conformance.requirements import CatalogueError, Level, Severity, load_catalogue

REQS = {
    "R-1": {"rfc": "RFC 5321", "cite": "RFC 5321 §4.1", "level": "MUST", "summary": "must thing"},
    "R-2": {"rfc": "RFC 5321", "cite": "RFC 5321 §4.2", "level": "SHOULD", "summary": "should"},
    "R-3": {"rfc": "RFC 9051", "cite": "RFC 9051 §6", "level": "MUST", "summary": "imap <thing>"},
}


def result(rid: str, status: str, covers: list[str], severity: str = "must") -> dict[str, Any]:
    return {
        "id": rid,
        "title": f"title of {rid}",
        "path": f"scenarios/{rid}.yaml",
        "status": status,
        "message": f"expected x, got <script>{rid}</script>" if status == "failed" else None,
        "step": 1 if status == "failed" else None,
        "line": 9 if status == "failed" else None,
        "duration": 0.01,
        "covers": covers,
        "tags": [],
        "rfc": ["RFC 5321 §4"],
        "severity": severity,
        "transcript": [
            {"t": 0.0, "conn": "main", "dir": "C", "text": "EHLO harness.example"},
            {"t": 0.01, "conn": "main", "dir": "S", "text": "502 no <b>"},
        ],
    }


def run_data() -> dict[str, Any]:
    results = [
        result("a.pass", "passed", ["R-1"]),
        result("b.should", "failed", ["R-2"], "should"),
        result("c.must", "failed", ["R-1"]),
        result("d.na", "not_applicable", ["R-3"]),
        result("e.error", "error", []),
    ]
    return {
        "tool": {"name": "mailharness", "version": "9.9"},
        "python": "3.11",
        "platform": "linux",
        "argv": ["check"],
        "target": {"host": "127.0.0.1", "services": {"mx": "127.0.0.1:25/starttls"}},
        "started_at": "2026-11-27T00:00:00+00:00",
        "duration": 1.5,
        "summary": {"passed": 1, "failed": 2, "error": 1, "not_applicable": 1},
        "failed_by_severity": {"must": 1, "should": 1, "may": 0},
        "fail_on": "should",
        "ok": False,
        "requirements": REQS,
        "results": results,
    }


def test_a_requirement_takes_the_worst_verdict_and_failures_come_must_first() -> None:
    report = summarize(run_data())
    assert [g.rfc for g in report.groups] == ["RFC 5321", "RFC 9051"]
    rows = {r.id: r for g in report.groups for r in g.rows}
    assert rows["R-1"].status == "failed"  # one pass, one fail
    assert rows["R-1"].scenarios == ["a.pass", "c.must"]
    assert rows["R-3"].status == "not_applicable"
    smtp = report.groups[0]
    assert (smtp.count("failed"), smtp.judged, smtp.must_failed) == (2, 2, 1)
    assert report.groups[1].score == 1.0  # nothing judged
    assert [f["id"] for f in report.failures] == ["c.must", "b.should", "e.error"]


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.external: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name == "id" and value:
                self.ids.add(value)
            if name in ("src", "href") and value and not value.startswith("#"):
                self.external.append(value)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_html_is_one_self_contained_escaped_page() -> None:
    page = render(run_data(), "html")
    parser = _Collector()
    parser.feed(page)
    assert parser.external == []  # no stylesheet, script or image from elsewhere
    assert {"summary", "failures", "fail-c.must", "fail-b.should"} <= parser.ids
    assert "<script>" not in page  # scenario text is escaped
    text = " ".join(parser.text)
    assert "expected x, got <script>c.must</script>" in text
    assert "EHLO harness.example" in text and "502 no <b>" in text
    assert page.index("fail-c.must") < page.index("fail-b.should")  # MUST first
    assert "R-1" in text and "must thing" in text
    assert 'style="width: 0.0%"' in page  # RFC 5321: 0 of 2 judged passed


def test_markdown_has_the_table_failures_and_transcripts() -> None:
    text = render_markdown(run_data())
    assert text.startswith("# Conformance report: 127.0.0.1 — FAIL")
    assert "| RFC 5321 | ░░░░░░░░░░ 0/2 | 0 | 2 | 1 | 0 |" in text
    assert text.index("### MUST `c.must`") < text.index("### SHOULD `b.should`")
    assert "- **R-1** (MUST, RFC 5321 §4.1): must thing" in text
    assert "   0.000 main C: EHLO harness.example" in text


def test_sarif_rules_are_requirement_ids_and_levels_follow_severity() -> None:
    sarif = render_sarif(run_data())
    assert sarif["version"] == "2.1.0"
    (run,) = sarif["runs"]
    rules = run["tool"]["driver"]["rules"]
    assert [r["id"] for r in rules] == ["R-2", "R-1", "e.error"]
    assert rules[1]["defaultConfiguration"]["level"] == "error"
    assert rules[0]["defaultConfiguration"]["level"] == "warning"
    levels = {(r["ruleId"], r["level"]) for r in run["results"]}
    assert levels == {("R-2", "warning"), ("R-1", "error"), ("e.error", "error")}
    for r in run["results"]:
        assert rules[r["ruleIndex"]]["id"] == r["ruleId"]
    located = next(r for r in run["results"] if r["ruleId"] == "R-1")
    physical = located["locations"][0]["physicalLocation"]
    assert physical == {
        "artifactLocation": {"uri": "scenarios/c.must.yaml"},
        "region": {"startLine": 9},
    }


def test_a_passing_run_has_no_sarif_results_and_says_so_in_html() -> None:
    data = run_data()
    data["results"] = [result("a.pass", "passed", ["R-1"])]
    data.update(ok=True, summary={"passed": 1, "failed": 0, "error": 0, "not_applicable": 0})
    assert render_sarif(data)["runs"][0]["results"] == []
    page = render(data, "html")
    assert "None: every applicable check passed." in page and ">PASS<" in page


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("r.html", "html"),
        ("R.HTM", "html"),
        ("r.md", "md"),
        ("r.sarif", "sarif"),
        ("r.sarif.json", "sarif"),
        ("r.json", "json"),
    ],
)
def test_the_format_follows_the_file_name(name: str, fmt: str) -> None:
    assert format_for(Path(name)) == fmt


def test_an_unknown_extension_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"r\.txt: cannot tell the report format"):
        write_report(run_data(), tmp_path / "r.txt")


def test_rendering_does_not_change_the_data() -> None:
    data = run_data()
    before = copy.deepcopy(data)
    for fmt in ("html", "md", "sarif", "json"):
        render(data, fmt)
    assert data == before
    assert json.loads(render(data, "json")) == before


# -- the catalogue ----------------------------------------------------------------------


def test_the_shipped_catalogue_loads_with_unique_ids() -> None:
    catalogue = load_catalogue()
    assert len(catalogue) >= 240
    entry = catalogue["SMTP-5321-4.1.1.1-b"]
    assert entry.rfc == "RFC 5321" and entry.cite == "RFC 5321 §4.1.1.1"
    assert catalogue["IMAP-4315-3-a"].cite == "RFC 4315 §3"
    assert catalogue.severity_of(["SMTP-5321-4.1.1.1-b"]) is Severity.MUST
    assert catalogue.severity_of([]) is Severity.MUST  # an uncatalogued check is taken at its word
    assert Level.BCP.severity is Severity.SHOULD and Level.MAY.severity is Severity.MAY


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("title: x\n", "expected 'title' and a list 'requirements'"),
        (
            "requirements:\n- {id: A, rfc: RFC 1, section: '1', level: MUSTY, summary: s}\n",
            "requirements[0]: level 'MUSTY' is not one of MUST, MUST NOT",
        ),
        (
            "requirements:\n- {id: A, rfc: RFC 1, section: '1', level: MUST, summary: s}\n"
            "- {id: A, rfc: RFC 1, section: '2', level: MAY, summary: t}\n",
            "requirements[1]: id A is also in a.yaml",
        ),
        ("requirements:\n- {id: A, rfc: RFC 1, level: MUST, summary: s}\n", "'section' must be"),
        (
            "requirements:\n- {id: A, rfc: RFC 1, section: '1', level: MUST, summary: s, x: 1}\n",
            "unknown field(s) x",
        ),
    ],
)
def test_catalogue_errors_name_the_file_and_entry(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "a.yaml").write_text(text)
    with pytest.raises(CatalogueError, match=r"a\.yaml: ") as info:
        load_catalogue(tmp_path)
    assert message in str(info.value)
