"""What the HTML and Markdown reports show, computed from a saved run (its JSON form).

Theory of operation: reports are rendered from the dictionary
:meth:`conformance.results.RunResult.to_json` writes, never from live objects,
so ``mailharness report results.json`` re-renders a saved run exactly. A
requirement's verdict is the worst verdict of the scenarios that cover it
(failed, then error, then passed, then not applicable); an RFC's score is the
share of its judged requirements that passed. Failures are listed MUST first,
then SHOULD, then MAY, then errors.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Report", "RequirementRow", "RfcGroup", "summarize"]

_WORST = {"failed": 3, "error": 2, "passed": 1, "not_applicable": 0}
_SEVERITY_ORDER = {"must": 0, "should": 1, "may": 2}


@dataclass
class RequirementRow:
    id: str
    cite: str
    level: str
    summary: str
    status: str = "not_applicable"
    scenarios: list[str] = field(default_factory=list)


@dataclass
class RfcGroup:
    rfc: str
    rows: list[RequirementRow] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(1 for r in self.rows if r.status == status)

    @property
    def judged(self) -> int:
        return len(self.rows) - self.count("not_applicable")

    @property
    def score(self) -> float:
        """Passed share of the judged requirements, 0..1 (1 when none was judged)."""
        return self.count("passed") / self.judged if self.judged else 1.0

    @property
    def must_failed(self) -> int:
        return sum(1 for r in self.rows if r.status == "failed" and r.level.startswith("MUST"))


@dataclass
class Report:
    data: dict[str, Any]
    groups: list[RfcGroup]
    failures: list[dict[str, Any]]  # failed and error results, MUST first

    @property
    def ok(self) -> bool:
        return bool(self.data.get("ok", self.data["summary"].get("failed", 0) == 0))


def summarize(data: dict[str, Any]) -> Report:
    """The per-RFC groups and the ordered failures of one saved run."""
    requirements: dict[str, dict[str, str]] = data.get("requirements", {})
    rows: dict[str, RequirementRow] = {}
    for result in data["results"]:
        for rid in result.get("covers", []):
            info = requirements.get(rid, {})
            row = rows.setdefault(
                rid,
                RequirementRow(
                    id=rid,
                    cite=info.get("cite", rid),
                    level=info.get("level", "?"),
                    summary=info.get("summary", "(not in the catalogue)"),
                ),
            )
            row.scenarios.append(result["id"])
            if _WORST[result["status"]] > _WORST[row.status] or len(row.scenarios) == 1:
                row.status = result["status"]
    by_rfc: dict[str, RfcGroup] = defaultdict(lambda: RfcGroup(rfc=""))
    for rid, row in rows.items():
        rfc = requirements.get(rid, {}).get("rfc", "uncatalogued")
        group = by_rfc[rfc]
        group.rfc = rfc
        group.rows.append(row)
    groups = sorted(by_rfc.values(), key=lambda g: _rfc_key(g.rfc))
    for group in groups:
        group.rows.sort(key=lambda r: (-_WORST[r.status], r.id))
    failures = [r for r in data["results"] if r["status"] in ("failed", "error")]
    failures.sort(
        key=lambda r: (
            r["status"] == "error",
            _SEVERITY_ORDER.get(r.get("severity", "must"), 0),
            r["id"],
        )
    )
    return Report(data=data, groups=groups, failures=failures)


def _rfc_key(rfc: str) -> tuple[int, str]:
    digits = "".join(ch for ch in rfc if ch.isdigit())
    return (int(digits) if digits else 1_000_000, rfc)
