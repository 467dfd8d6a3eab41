"""JUnit XML, the format every CI system shows as test results.

One ``testcase`` per scenario, grouped in one ``testsuite``; failures carry
the one-line reason as ``message`` and the transcript as the body, so the CI
page shows the evidence without opening artifacts. Not-applicable scenarios
are ``skipped`` with the reason.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from ..results import RunResult, Status
from ..transport import TranscriptEntry

__all__ = ["write_junit"]


def _transcript(entries: list[TranscriptEntry]) -> str:
    return "\n".join(e.render() for e in entries)


def write_junit(run: RunResult, path: Path) -> None:
    suite = ET.Element(
        "testsuite",
        name="mailharness",
        tests=str(len(run.results)),
        failures=str(run.count(Status.FAILED)),
        errors=str(run.count(Status.ERROR)),
        skipped=str(run.count(Status.NOT_APPLICABLE)),
        time=f"{run.duration:.3f}",
        timestamp=run.started_at,
    )
    props = ET.SubElement(suite, "properties")
    for key, value in run.target.items():
        ET.SubElement(props, "property", name=f"target.{key}", value=str(value))
    for r in run.results:
        case = ET.SubElement(
            suite,
            "testcase",
            classname=r.id.rsplit(".", 1)[0] if "." in r.id else r.id,
            name=r.id,
            file=r.path,
            time=f"{r.duration:.3f}",
        )
        if r.line:
            case.set("line", str(r.line))
        if r.status is Status.FAILED:
            el = ET.SubElement(case, "failure", message=r.message or "failed", type="failure")
            el.text = f"{r.title}\n{r.location}: {r.message}\n\n{_transcript(r.transcript)}"
        elif r.status is Status.ERROR:
            el = ET.SubElement(case, "error", message=r.message or "error", type="error")
            el.text = f"{r.title}\n{r.message}\n\n{_transcript(r.transcript)}"
        elif r.status is Status.NOT_APPLICABLE:
            ET.SubElement(case, "skipped", message=f"not applicable: {r.message}")
    root = ET.Element("testsuites")
    root.append(suite)
    tree = ET.ElementTree(root)
    ET.indent(tree)
    path.parent.mkdir(parents=True, exist_ok=True)
    tree.write(path, encoding="utf-8", xml_declaration=True)
