"""The report as Markdown: for a CI job summary or a pull-request comment."""

from __future__ import annotations

from typing import Any

from .summary import summarize

__all__ = ["render_markdown"]

_TAIL = 30  # transcript lines per failure


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(data: dict[str, Any]) -> str:
    report = summarize(data)
    summary, by_sev = data["summary"], data.get("failed_by_severity", {})
    target = data.get("target", {})
    verdict = "PASS" if report.ok else "FAIL"
    out = [
        f"# Conformance report: {target.get('host', 'target')} — {verdict}",
        "",
        f"mailharness {data['tool']['version']}, started {data['started_at']}, "
        f"{data['duration']:.2f} s, fails on {data.get('fail_on', 'should').upper()} and errors.",
        "",
        f"**{summary['passed']} passed**, {by_sev.get('must', 0)} MUST failures, "
        f"{by_sev.get('should', 0)} SHOULD failures, {by_sev.get('may', 0)} MAY notes, "
        f"{summary['error']} errors, {summary['not_applicable']} not applicable.",
        "",
        "## Per RFC",
        "",
        "| RFC | score | passed | failed | MUST failed | not applicable |",
        "|---|---|---|---|---|---|",
    ]
    for g in report.groups:
        blocks = round(g.score * 10)
        bar = "█" * blocks + "░" * (10 - blocks)
        out.append(
            f"| {_cell(g.rfc)} | {bar} {g.count('passed')}/{g.judged} | {g.count('passed')} "
            f"| {g.count('failed') + g.count('error')} | {g.must_failed} "
            f"| {g.count('not_applicable')} |"
        )
    out += ["", f"## Failures ({len(report.failures)})", ""]
    if not report.failures:
        out.append("None: every applicable check passed.")
    requirements = data.get("requirements", {})
    for r in report.failures:
        kind = "ERROR" if r["status"] == "error" else r.get("severity", "must").upper()
        where = r["path"] + (f":{r['line']}" if r.get("line") else "")
        out += [f"### {kind} `{r['id']}`", "", f"{r['title']} ({where})", ""]
        for rid in r.get("covers", []):
            q = requirements.get(rid, {})
            out.append(
                f"- **{rid}** ({q.get('level', '?')}, {q.get('cite', '')}): "
                f"{q.get('summary', '(not in the catalogue)')}"
            )
        out += ["", "```text", str(r.get("message") or ""), "```", ""]
        lines = r.get("transcript", [])[-_TAIL:]
        if lines:
            out += ["<details><summary>transcript</summary>", "", "```text"]
            out += [f"{e['t']:8.3f} {e['conn']} {e['dir']}: {e['text']}" for e in lines]
            out += ["```", "", "</details>", ""]
    return "\n".join(out).rstrip() + "\n"
