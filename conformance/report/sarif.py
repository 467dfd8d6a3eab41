"""The report as SARIF 2.1.0, for code-scanning dashboards.

Rules are catalogue requirement ids, so a dashboard groups findings by
requirement; each failed (or errored) scenario gives one result per requirement
it covers, located at the scenario file and the failing step's line. MUST
failures are ``error``, SHOULD and BCP ones ``warning``, MAY ones ``note``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SARIF_SCHEMA", "render_sarif"]

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
_LEVEL = {"must": "error", "should": "warning", "may": "note"}
_RULE_LEVEL = {"MUST": "error", "MUST NOT": "error", "SHOULD": "warning", "SHOULD NOT": "warning"}


def render_sarif(data: dict[str, Any]) -> dict[str, Any]:
    requirements: dict[str, dict[str, str]] = data.get("requirements", {})
    rule_ids: list[str] = []
    results: list[dict[str, Any]] = []
    for r in data["results"]:
        if r["status"] not in ("failed", "error"):
            continue
        level = "error" if r["status"] == "error" else _LEVEL.get(r.get("severity", "must"))
        region = {"startLine": r["line"]} if r.get("line") else {}
        location = {
            "physicalLocation": {
                "artifactLocation": {"uri": r["path"]},
                **({"region": region} if region else {}),
            }
        }
        for rid in r.get("covers") or [r["id"]]:
            if rid not in rule_ids:
                rule_ids.append(rid)
            results.append(
                {
                    "ruleId": rid,
                    "ruleIndex": rule_ids.index(rid),
                    "level": level,
                    "message": {"text": f"{r['id']}: {r.get('message') or r['status']}"},
                    "locations": [location],
                    "properties": {"scenario": r["id"], "status": r["status"]},
                }
            )
    rules = []
    for rid in rule_ids:
        q = requirements.get(rid, {})
        rules.append(
            {
                "id": rid,
                "name": rid.replace("-", "_"),
                "shortDescription": {"text": q.get("summary", rid)},
                "fullDescription": {
                    "text": f"{q.get('cite', '')} ({q.get('level', '?')}): "
                    f"{q.get('summary', '')} Check: {q.get('check', '')}".strip()
                },
                "defaultConfiguration": {"level": _RULE_LEVEL.get(q.get("level", ""), "warning")},
                "properties": {"rfc": q.get("rfc", ""), "level": q.get("level", "")},
            }
        )
    return {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "mailharness",
                        "version": data["tool"]["version"],
                        "rules": rules,
                    }
                },
                "invocations": [
                    {
                        "executionSuccessful": True,
                        "commandLine": "mailharness " + " ".join(data.get("argv", [])),
                        "startTimeUtc": data["started_at"],
                    }
                ],
                "results": results,
            }
        ],
    }
