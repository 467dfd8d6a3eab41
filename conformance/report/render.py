"""Writing a saved run as HTML, Markdown or SARIF; the format follows the file name.

All three render from the run's JSON form (:meth:`conformance.results.RunResult.to_json`),
so ``mailharness report results.json -o report.html`` gives the same file a live
run's ``--report report.html`` does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jinja2

from .markdown import render_markdown
from .sarif import render_sarif
from .summary import summarize

__all__ = ["FORMATS", "format_for", "render", "write_report"]

FORMATS = ("html", "md", "sarif", "json")

_env = jinja2.Environment(
    loader=jinja2.PackageLoader("conformance.report", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def format_for(path: Path) -> str:
    """The format a file name asks for; ValueError if none."""
    name = path.name.lower()
    for suffix, fmt in (
        (".html", "html"),
        (".htm", "html"),
        (".md", "md"),
        (".markdown", "md"),
        (".sarif", "sarif"),
        (".sarif.json", "sarif"),
        (".json", "json"),
    ):
        if name.endswith(suffix):
            return fmt
    raise ValueError(
        f"{path}: cannot tell the report format from the name; "
        "use .html, .md, .sarif (or .sarif.json) or .json"
    )


def render(data: dict[str, Any], fmt: str) -> str:
    """The report text of a saved run in ``fmt`` (one of :data:`FORMATS`)."""
    if fmt == "html":
        report = summarize(data)
        target = data.get("target", {})
        name = str(target.get("host") or target.get("domain") or "target")
        return _env.get_template("report.html.j2").render(
            data=data,
            report=report,
            requirements=data.get("requirements", {}),
            target_name=name,
        )
    if fmt == "md":
        return render_markdown(data)
    if fmt == "sarif":
        return json.dumps(render_sarif(data), indent=2, ensure_ascii=False) + "\n"
    if fmt == "json":
        return json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    raise ValueError(f"unknown report format {fmt!r}; expected one of {', '.join(FORMATS)}")


def write_report(data: dict[str, Any], path: Path, fmt: str | None = None) -> None:
    """Render and write; the parent directory is created."""
    text = render(data, fmt or format_for(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
